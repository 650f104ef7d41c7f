"""Paper scale, measured: one 70-frame 640x512 video and one training step, phase by phase.

    python bench/bench_paper.py                       # CPU: what is feasible, extrapolated and labelled so
    python bench/bench_paper.py --device cuda --sections all --compile --report bench/results/paper_gpu.md
    python bench/bench_paper.py --smoke               # the same code at tiny sizes, in seconds (run by a test)

The networks are the paper's: the SpaceTimeUnet and adapter at the paper config (random weights) and the
stand-in SD v1-4 VAE and CLIP ViT-B/32 (models/networks/standins.py, random weights: every video is noise, the timings
and memory are real). Sections:

- inference: ours (the default sampler and precision: half-precision weights on CUDA, decode in chunks)
  phase by phase (CLIP, VAE encode, each UNet call, VAE decode, mp4), then end to end; the original
  procedure (1000 DDPM steps under fp16 autocast over fp32 weights, every frame decoded on its own in fp32)
  timed for a few steps and frames and extrapolated, labelled so.
- unet: one UNet call in fp32, the original's fp16 autocast, fp16 and bf16 weights; with --compile, ours compiled
  whole and region by region (bench/bench_compile.py, each in a fresh process with an empty cache).
- decoder: frames decoded the original's way and ours, with PSNR of half-precision decodes against fp32; with
  --compile, compiled whole and region by region as for the UNet.
- sdpa: which attention kernels a UNet call runs.
- golden: the golden test case of ../shared/reference on this device, error in fp32 / bf16 / fp16.
- train: one optimizer step at batch 2 x 70 frames, original settings (fp32, no checkpointing) against ours
  (bf16 + gradient checkpointing), and the largest batch of ours that fits.
- memory: peak memory of one video with the default and the --low_memory settings, and by decode chunk.
- offload: one whole video with `enable_model_cpu_offload()` and with --low_memory against the default: peak
  memory and time.
- sync: whether the sampling loop waits for the GPU (one `FashionFlowPipeline.denoise` under
  `torch.cuda.set_sync_debug_mode`, each synchronising call counted by where our code made it), and the loop's
  overhead against the same UNet calls back to back.
- compiled (with --compile): end to end with the UNet and the decoder compiled (inference.py --compile full, then
  --compile regional, in this process: the second compiles with the first's kernels cached).

Figures are written after every section (--json, --report). A SIGTERM (the time limit of bench/gpu_suite.sh)
ends the section running, records it as stopped along with what it had measured, and writes them; the exit
status is non-zero when a section failed or stopped.

FLOPs per phase are counted with torch.utils.flop_counter on the meta device; the fraction of peak divides the
achieved rate by a large matrix product's rate measured here in the phase's precision.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.core.config import DEFAULT_FPS, get_preset  # noqa: E402
from models.core.precision import MASTER_PRECISIONS, PRECISIONS, autocast, compute_precision  # noqa: E402
from models.core.profiling import memory_kind, peak_memory_mb, reset_peak_memory, synchronize, timed  # noqa: E402
from models.data.video_io import Mp4Writer, write_mp4  # noqa: E402
from models.diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, ORIGINAL_STEPS, make_scheduler  # noqa: E402
from models.diffusion.sampling import sample_latents  # noqa: E402
from models.diffusion.schedule import NoiseSchedule  # noqa: E402
from models.networks.checkpoint import build_models  # noqa: E402
from models.networks.encoders import FrozenEncoders  # noqa: E402
from models.pipeline.pipeline import LOW_MEMORY_DECODE_CHUNK, FashionFlowPipeline  # noqa: E402
from models.training.loop import TrainingObjective, make_optimizer  # noqa: E402
from models.training.master_weights import trained_copy  # noqa: E402

STUDENT_STEPS = 4  # the few-step student's default (models/training/loop.py TrainConfig.distill_steps)
# the order of --sections all; the compiling ones last
SECTIONS = (
    "inference", "offload", "sync", "kernels", "memory", "train", "batch_auto", "attention_batch", "golden", "sdpa",
    "unet", "decoder", "compiled",
)  # fmt: skip
KERNELS_SHOWN = 15  # rows of the kernel table
SHARED = Path(os.environ.get("FASHIONFLOW_SHARED", ROOT.parent / "shared"))
HALF = {name: dtype for name, dtype in PRECISIONS.items() if name != "fp32"}
ORIGINAL_UNET = "original: fp32 weights (under fp16 autocast on a GPU)"


# ---------------------------------------------------------------------------------------------------- set-up


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny preset and tiny encoders: seconds, for the test")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', ...")
    p.add_argument("--sections", default=None, help=f"comma-separated of {SECTIONS} or 'all' (default: CPU-feasible ones)")
    p.add_argument("--encoders", default="standins", help="folder with vae/ and clip/ (stand-ins are written there if absent)")
    p.add_argument("--precision", choices=sorted(HALF) + ["fp32"], default=None, help="ours (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--unet_calls", type=int, default=None, help="UNet calls of ours to time (default: all on GPU, 2 on CPU)")
    p.add_argument("--decode_frames", type=int, default=None, help="frames of ours to decode (default: all on GPU, 4 on CPU)")
    p.add_argument("--original_calls", type=int, default=3, help="UNet calls of the original procedure timed")
    p.add_argument("--original_frames", type=int, default=None, help="frames decoded the original's way (default 4, CPU 2)")
    p.add_argument("--decode_chunk_size", type=int, default=8, help="our decode chunk")
    p.add_argument("--repeats", type=int, default=3, help="end-to-end videos timed (median)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile variants (minutes of compiling)")
    p.add_argument("--train_batch", type=int, default=2, help="batch of the training step")
    p.add_argument("--max_train_batch", type=int, default=64, help="largest batch tried when searching what fits")
    p.add_argument("--json", default=None, help="write all figures here")
    p.add_argument("--report", default=None, help="write the markdown report here")
    return p.parse_args(argv)


def pick_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def encoder_dirs(args) -> tuple[Path, Path]:
    folder = Path(args.encoders)
    if args.smoke:
        from models.networks.tiny_components import save_tiny_encoders

        return save_tiny_encoders(Path(tempfile.mkdtemp(prefix="bench_smoke_")))
    if not (folder / "vae" / "config.json").is_file() or not (folder / "clip" / "config.json").is_file():
        from models.networks.standins import save_standins

        print(f"writing stand-in encoders to {folder} (once)")
        save_standins(folder)
    return folder / "vae", folder / "clip"


class Bench:
    """The paper (or smoke) configuration on one device, with the shared inputs every section uses."""

    def __init__(self, args):
        self.args, self.device = args, pick_device(args.device)
        self.config = get_preset("tiny" if args.smoke else "paper")
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        self.precision = args.precision or ("fp16" if self.cuda else "fp32")
        self.vae_dir, self.clip_dir = encoder_dirs(args)
        torch.manual_seed(0)
        unet, adapter = build_models(self.config)
        self.weights = {"net": unet.state_dict(), "adapter": adapter.state_dict()}
        encoders = FrozenEncoders.from_pretrained(vae=self.vae_dir, clip=self.clip_dir, preprocessing=self.config.preprocessing)
        unet, adapter = unet.eval().requires_grad_(False), adapter.eval().requires_grad_(False)
        self.pipeline = FashionFlowPipeline.from_parts(unet, adapter, encoders)
        self.frames = self.config.frames
        self.latent_shape = (1, self.config.channels, self.frames, *self.config.latent_size)
        self.image = torch.rand(1, 3, *self.pipeline.image_size, generator=torch.Generator().manual_seed(0))
        self.flops = count_flops(self)
        self.peaks = {}
        self.partial = {}  # section -> figures measured so far, kept if the section fails or is stopped

    def dtype(self, precision: str) -> torch.dtype:
        return HALF.get(precision, torch.float32)

    def ours(self) -> FashionFlowPipeline:
        return self.pipeline.to(self.device, self.dtype(self.precision))

    def original(self) -> FashionFlowPipeline:
        return self.pipeline.to(self.device, torch.float32)

    def peak(self, dtype: torch.dtype) -> float:
        """FLOP/s of a large matrix product in `dtype` on this device (measured once per dtype)."""
        if dtype not in self.peaks:
            n = 8192 if self.cuda else 1024
            a, b = (torch.randn(n, n, device=self.device, dtype=dtype) for _ in range(2))
            tf32 = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 convolutions run in TF32 by default: compare like with like
            try:
                seconds = median_seconds(self.device, lambda: a @ b, repeats=10 if self.cuda else 3)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = tf32
            self.peaks[dtype] = 2 * n**3 / seconds
        return self.peaks[dtype]

    def utilisation(self, flops: float, seconds: float, dtype: torch.dtype) -> float:
        return flops / seconds / self.peak(dtype)


def median_seconds(device, fn, *, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = {}
        with timed(device, t, "s"):
            fn()
        times.append(t["s"])
    return statistics.median(times)


def count_flops(bench: Bench) -> dict:
    """FLOPs of each phase for one video, counted on the meta device (no compute, no memory)."""
    from models.networks.standins import build_standin_clip, build_standin_vae
    from models.networks.tiny_components import build_tiny_clip, build_tiny_vae

    def flops(fn) -> float:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return float(counter.get_total_flops())

    config = bench.config
    with torch.device("meta"):
        unet, adapter = build_models(config)
        vae = build_tiny_vae() if bench.args.smoke else build_standin_vae()
        clip = build_tiny_clip() if bench.args.smoke else build_standin_clip()
        x = torch.empty(*bench.latent_shape)
        context = torch.empty(1, config.context_tokens, config.context_dim)
        latent = torch.empty(1, config.channels, *config.latent_size)
        image = torch.empty(1, 3, *bench.pipeline.image_size)
        clip_size = clip.config.image_size
        return {
            "clip": flops(lambda: clip(pixel_values=torch.empty(1, 3, clip_size, clip_size))),
            "vae_encode": flops(lambda: vae.encode(image)),
            "unet_call": flops(lambda: unet(x, context, timestep=torch.empty(1))),
            "vae_decode_frame": flops(lambda: vae.decode(latent)),
            "adapter": flops(lambda: adapter(torch.empty(1, config.context_tokens, config.context_dim), latent)),
        }


# ---------------------------------------------------------------------------------------------------- sections


def phases_of_one_video(
    bench: Bench, pipeline, *, precision, sampler, steps, unet_calls, decode_frames, chunk, decode_precision=None
) -> dict:
    """Seconds per phase of one video; UNet calls beyond `unet_calls` and frames beyond `decode_frames` are
    extrapolated from the ones timed (the result says how many were)."""
    dev, times = bench.device, {}
    generator = torch.Generator().manual_seed(0)
    encoders = pipeline.encoders
    with torch.inference_mode():
        with timed(dev, times, "clip"):
            clip_hidden = encoders.encode_clip(bench.image)
        with timed(dev, times, "vae_encode"):
            latent = encoders.encode_frames(bench.image, generator=generator)
        with timed(dev, times, "adapter"):
            context = pipeline.adapter(clip_hidden.to(pipeline.dtype), latent.to(pipeline.dtype))
        noise = pipeline.prepare_latents(1, bench.frames, generator=generator)
        scheduler = make_scheduler(sampler, steps)
        scheduler.timesteps = scheduler.timesteps[:unet_calls]
        calls = []

        def eps_model(x, t):
            step = {}
            with timed(dev, step, "s"), pipeline_autocast(pipeline, precision):
                out = pipeline.unet(x.to(pipeline.dtype), context.to(pipeline.dtype), timestep=t).float()
            calls.append(step["s"])
            return out

        with timed(dev, times, "sampling_loop_timed_part"):
            latents = sample_latents(eps_model, noise, scheduler, first_frame=latent.float(), generator=[generator])
        frames = latents[:, :, :decode_frames]
        with timed(dev, times, "vae_decode_timed_part"):
            video = pipeline.decode_latents(frames, chunk, precision=decode_precision or precision)[0]
        with tempfile.TemporaryDirectory() as tmp, timed(dev, times, "mp4_timed_part"):
            write_mp4(video, Path(tmp) / "video.mp4")
    # the first call pays for cuDNN autotuning: the median is the steady state
    call = statistics.median(calls[1:] if len(calls) > 2 else calls)
    per_frame_decode = times["vae_decode_timed_part"] / decode_frames
    result = {
        "clip": times["clip"],
        "vae_encode": times["vae_encode"] + times["adapter"],
        "unet_call": call,
        "unet_calls_timed": len(calls),
        "unet_total": call * steps,
        "loop_overhead": max(times["sampling_loop_timed_part"] - sum(calls), 0.0) / len(calls) * steps,
        "vae_decode": per_frame_decode * bench.frames,
        "decode_frames_timed": decode_frames,
        "mp4": times["mp4_timed_part"] / decode_frames * bench.frames,
        "extrapolated": len(calls) < steps or decode_frames < bench.frames,
    }
    result["total"] = sum(result[k] for k in ("clip", "vae_encode", "unet_total", "loop_overhead", "vae_decode", "mp4"))
    return result


def pipeline_autocast(pipeline, precision):
    from models.core.precision import autocast

    return autocast(pipeline.device, precision, pipeline.dtype)


def section_inference(bench: Bench) -> dict:
    args, cuda = bench.args, bench.cuda
    steps = DEFAULT_STEPS if not args.smoke else 4
    unet_calls = min(args.unet_calls or (steps if cuda or args.smoke else 2), steps)
    decode_frames = min(args.decode_frames or (bench.frames if cuda or args.smoke else 4), bench.frames)
    ours_pipe = bench.ours()
    phases_of_one_video(  # warm-up: cuDNN autotuning, lazy initialisation
        bench, ours_pipe, precision=bench.precision, sampler=DEFAULT_SAMPLER, steps=steps,
        unet_calls=min(unet_calls, 2), decode_frames=min(decode_frames, args.decode_chunk_size), chunk=args.decode_chunk_size,
    )  # fmt: skip
    ours = phases_of_one_video(
        bench, ours_pipe, precision=bench.precision, sampler=DEFAULT_SAMPLER, steps=steps,
        unet_calls=unet_calls, decode_frames=decode_frames, chunk=args.decode_chunk_size,
    )  # fmt: skip
    ours.update(
        sampler=DEFAULT_SAMPLER,
        steps=steps,
        precision=bench.precision,
        weights=str(ours_pipe.dtype),
        chunk=args.decode_chunk_size,
    )
    bench.partial["inference"] = {"ours": ours}  # the end to end figure joins it when measured
    if not ours["extrapolated"]:
        ours["end_to_end"] = end_to_end_seconds(bench, ours_pipe, steps, before=True)
        # a distilled student samples with LCMScheduler in 4 steps (train.py --distill_from); random weights time it truly
        ours["student_end_to_end"] = end_to_end_seconds(bench, ours_pipe, STUDENT_STEPS, sampler="lcm")

    original_steps = ORIGINAL_STEPS if not args.smoke else 50
    original_precision = "fp16" if cuda else "fp32"
    original_pipe = bench.original()
    original = phases_of_one_video(
        bench, original_pipe, precision=original_precision, sampler="ddpm", steps=original_steps,
        unet_calls=min(args.original_calls, original_steps),
        decode_frames=min(args.original_frames or (4 if cuda else 2), bench.frames), chunk=1, decode_precision="fp32",
    )  # fmt: skip
    original.update(
        sampler="ddpm",
        steps=original_steps,
        precision=f"{original_precision} autocast" if cuda else "fp32",
        weights="torch.float32",
        chunk=1,
    )

    flops = bench.flops
    for result, dtype in ((ours, bench.dtype(bench.precision)), (original, torch.float16 if cuda else torch.float32)):
        result["flops"] = {
            "unet_call": flops["unet_call"],
            "clip": flops["clip"],
            "vae_encode": flops["vae_encode"] + flops["adapter"],
            "unet_total": flops["unet_call"] * result["steps"],
            "vae_decode": flops["vae_decode_frame"] * bench.frames,
        }
        result["utilisation"] = {
            k: bench.utilisation(f, result[k], dtype if k != "vae_decode" or result is ours else torch.float32)
            for k, f in result["flops"].items()
            if result[k] > 0
        }
    speedup = original["total"] / (ours["end_to_end"]["latency"] if "end_to_end" in ours else ours["total"])
    return {"ours": ours, "original": original, "speedup": speedup, "video_seconds": bench.frames / DEFAULT_FPS}


def end_to_end_seconds(
    bench: Bench, pipeline, steps: int, repeats: int | None = None, before: bool = False, sampler=DEFAULT_SAMPLER
) -> dict:
    """Photo -> mp4 through FashionFlowPipeline.__call__ as inference.py runs it, each decode chunk's frames going
    to the encoder (on the writer thread) as it finishes: medians over `repeats` videos on their own of the seconds
    from the call to the first frame at the encoder, to the end of decoding and to the mp4's last byte (`latency`),
    and the per-video time of back-to-back videos, each mp4's end overlapping the next video. `before`: the same
    for the mp4 written after the last frame is decoded, as inference.py did before, side by side."""
    from models.serving.animate import WRITES_IN_FLIGHT
    from models.serving.inference_io import BackgroundWriter

    repeats = repeats or bench.args.repeats
    tmp = Path(tempfile.mkdtemp(prefix="bench_e2e_"))

    def make_video(i: int, **options):
        return pipeline(
            bench.image, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(i),
            precision=bench.precision, decode_chunk_size=bench.args.decode_chunk_size, progress=False, **options,
        ).frames  # fmt: skip

    def streamed(i: int, writer: BackgroundWriter, times: dict, start: float) -> None:
        mp4 = Mp4Writer(tmp / f"video{i}.mp4")

        def on_frames(video, frames):
            times.setdefault("first_frame", time.perf_counter() - start)
            writer.submit(mp4.write, frames)

        make_video(i, output_type=None, on_frames=on_frames)
        times["decode_end"] = time.perf_counter() - start
        writer.submit(mp4.close)

    def one_streamed() -> dict:
        times, start = {}, time.perf_counter()
        with BackgroundWriter(max_pending=WRITES_IN_FLIGHT) as writer:
            streamed(0, writer, times, start)
        return times | {"last_byte": time.perf_counter() - start}

    def one_after_decode() -> dict:
        start = time.perf_counter()
        frames = make_video(0, output_type="pt")[0]
        times = {"first_frame": time.perf_counter() - start}
        times["decode_end"] = times["first_frame"]
        write_mp4(frames, tmp / "after.mp4")
        return times | {"last_byte": time.perf_counter() - start}

    def medians(runs: list[dict]) -> dict:
        out = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        out["mp4_after_decode"] = statistics.median(run["last_byte"] - run["decode_end"] for run in runs)
        return out | {"latency": out["last_byte"]}

    if before:  # side by side: one warm-up (the first call pays lazy set-up), then the two ways in turn
        make_video(0, output_type=None)
        runs = [(one_streamed(), one_after_decode()) for _ in range(repeats)]
        result = medians([streamed for streamed, _ in runs]) | {"before": medians([after for _, after in runs])}
    else:
        result = medians([one_streamed() for _ in range(repeats)])
    start = time.perf_counter()
    with BackgroundWriter(max_pending=WRITES_IN_FLIGHT) as writer:
        for i in range(repeats):
            streamed(i, writer, {}, start)
    return result | {"per_video_overlapped": (time.perf_counter() - start) / repeats, "videos": repeats}


def section_compiled(bench: Bench) -> dict:
    """End to end with the UNet and the decoder compiled (inference.py --compile), per mode; the first video compiles.

    'full' and 'graphs' (the UNet's calls as CUDA graphs; GPU only) first, as their wrappers can be taken off again;
    'regional' compiles the blocks in place, for good.
    """
    steps = DEFAULT_STEPS if not bench.args.smoke else 4
    pipeline = bench.ours()
    unet, decoder = pipeline.unet, pipeline.encoders.vae.decoder
    results = bench.partial.setdefault("compiled", {})  # mode by mode: a run stopped in 'regional' keeps 'full'
    for mode in ("full", "graphs", "regional") if bench.cuda else ("full", "regional"):
        torch.compiler.reset()
        pipeline.compile(regional=mode == "regional", graphs=mode == "graphs")
        try:
            start = time.perf_counter()
            end_to_end_seconds(bench, pipeline, steps, repeats=1)
            first = time.perf_counter() - start
            results[mode] = {**end_to_end_seconds(bench, pipeline, steps), "first_videos_seconds": first}
        finally:
            pipeline.unet, pipeline.encoders.vae.decoder = unet, decoder
    return results


def compiled_in_fresh_process(bench: Bench, network: str, mode: str, repeats: int, **options) -> dict:
    """bench/bench_compile.py's measurement of `network` at this bench's size, device and precision: compile seconds
    on an empty cache, graphs, seconds per call compiled and eager."""
    from bench_compile import run_worker

    size = "tiny" if bench.args.smoke else "paper"
    return run_worker(network, size, mode, device=str(bench.device), calls=repeats, precision=bench.precision, **options)


def section_unet(bench: Bench) -> dict:
    """One UNet call at 70 frames in each precision (and compiled), with PyTorch's defaults (TF32 convolutions)."""
    pipeline, dev = bench.pipeline, bench.device
    x = torch.randn(*bench.latent_shape, device=dev)
    context = torch.randn(1, bench.config.context_tokens, bench.config.context_dim, device=dev)
    t = torch.full((1,), 500.0, device=dev)
    repeats = 5 if bench.cuda or bench.args.smoke else 1
    if bench.cuda:  # the original ran its UNet under fp16 autocast on a GPU
        variants = [(ORIGINAL_UNET, torch.float32, "fp16"), ("fp32", torch.float32, "fp32")]
        variants += [(f"{p} weights", HALF[p], p) for p in ("fp16", "bf16")]
    else:
        variants = [(ORIGINAL_UNET, torch.float32, "fp32"), ("bf16 weights", torch.bfloat16, "bf16")]
    results = {}
    try:
        for name, dtype, precision in variants:
            unet, xd, cd = pipeline.unet.to(dev, dtype), x.to(dtype), context.to(dtype)
            with torch.inference_mode(), pipeline_autocast_for(dev, precision, dtype):
                seconds = median_seconds(dev, lambda u=unet, xd=xd, cd=cd: u(xd, cd, timestep=t), repeats=repeats)
            results[name] = {
                "seconds": seconds,
                "utilisation": bench.utilisation(bench.flops["unet_call"], seconds, HALF.get(precision, torch.float32)),
            }
        for mode in ("full", "regional") if bench.args.compile else ():
            r = compiled_in_fresh_process(bench, "unet", mode, repeats)
            results[f"{bench.precision} weights + torch.compile, {mode}"] = {
                "seconds": r["seconds_per_call"],
                "compile_seconds": r["compile_seconds"],
                "graphs": r["graphs"],
                "eager_seconds_same_process": r["eager_seconds_per_call"],
                "utilisation": bench.utilisation(bench.flops["unet_call"], r["seconds_per_call"], bench.dtype(bench.precision)),
            }
    finally:
        pipeline.unet.float()
    base = results[ORIGINAL_UNET]["seconds"]
    for r in results.values():
        r["speedup_vs_original"] = base / r["seconds"]
    return results


def section_kernels(bench: Bench) -> dict:
    """Where one UNet call's time goes: its kernels by total time (on a CPU, its CPU ops), eager and, with
    --compile, compiled whole (on CUDA also with CUDA graphs, torch.compile's 'reduce-overhead'), and the kernel
    launches a call makes. The compiled variants compile in this process (a warm inductor cache helps)."""
    from torch.profiler import ProfilerActivity, profile

    pipeline, dev, dtype = bench.pipeline, bench.device, bench.dtype(bench.precision)
    unet = pipeline.unet.to(dev, dtype)
    x = torch.randn(*bench.latent_shape, device=dev, dtype=dtype)
    context = torch.randn(1, bench.config.context_tokens, bench.config.context_dim, device=dev, dtype=dtype)
    t = torch.full((1,), 500.0, device=dev)
    variants = {"eager": unet}
    if bench.args.compile:
        variants["compiled"] = torch.compile(unet)
        if bench.cuda:
            variants["compiled, CUDA graphs"] = torch.compile(unet, mode="reduce-overhead")
    calls = 3 if bench.cuda or bench.args.smoke else 1
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.cuda else [])
    time_of = (lambda e: e.self_device_time_total) if bench.cuda else (lambda e: e.self_cpu_time_total)
    results = bench.partial.setdefault("kernels", {})
    try:
        for name, fn in variants.items():
            with torch.inference_mode():
                for _ in range(3):  # warm-up: compiling, autotuning, graph capture
                    fn(x, context, timestep=t)
                sync(dev)
                with profile(activities=activities) as prof:
                    for _ in range(calls):
                        fn(x, context, timestep=t)
                    sync(dev)
            events = [e for e in prof.key_averages() if time_of(e) > 0]
            total = sum(time_of(e) for e in events)
            launches = sum(e.count for e in prof.key_averages() if e.key in LAUNCHES)
            results[name] = {
                "ms_per_call": total / 1e3 / calls,
                "launches_per_call": launches / calls,
                "top": [
                    {"name": e.key[:90], "ms_per_call": time_of(e) / 1e3 / calls, "share": time_of(e) / total,
                     "calls_per_call": e.count / calls}
                    for e in sorted(events, key=time_of, reverse=True)[:KERNELS_SHOWN]
                ],
            }  # fmt: skip
    finally:
        pipeline.unet.float()
    return results


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernels_markdown(kernels: dict, frames: int) -> list[str]:
    what = "kernels" if any(r["launches_per_call"] for r in kernels.values()) else "CPU ops"
    lines = ["", f"## Where one UNet call's time goes ({frames} frames; {what} by total time)"]
    for name, r in kernels.items():
        launches = f", {r['launches_per_call']:.0f} kernel launches per call" if what == "kernels" else ""
        lines += ["", f"**{name}**: {fmt_s(r['ms_per_call'] / 1e3)} of {what} per call{launches}", "",
                  "| | ms per call | share | calls per UNet call |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
        lines += [
            f"| `{row['name']}` | {row['ms_per_call']:.3f} | {row['share']:.1%} | {row['calls_per_call']:.0f} |"
            for row in r["top"]
        ]
    return lines


def pipeline_autocast_for(device, precision, dtype):
    from models.core.precision import autocast

    return autocast(device, precision, dtype)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    from models.evaluation.metrics import psnr as psnr_metric

    return float(psnr_metric(a, b).mean())  # mean over frames


def section_decoder(bench: Bench) -> dict:
    """Decoding frames: the original's (fp32, one frame per call) against ours, with quality of half precision."""
    pipeline, dev, args = bench.pipeline, bench.device, bench.args
    frames = min(args.decode_chunk_size, bench.frames)
    latents = torch.randn(1, bench.config.channels, frames, *bench.config.latent_size, generator=torch.Generator().manual_seed(2))
    repeats = 3 if bench.cuda or args.smoke else 1
    results = {}
    reference = true_fp32_decode(pipeline, latents.to(dev), frames)
    variants = [
        ("original: fp32, 1 frame per call", torch.float32, 1, False),
        (f"fp32, {frames} per call", torch.float32, frames, False),
    ]
    half = list(HALF) if bench.cuda else ["bf16"]
    variants += [(f"{p} weights, {frames} per call", HALF[p], frames, False) for p in half]
    if bench.cuda:
        variants += [(f"{p} weights, {frames} per call, channels_last", HALF[p], frames, True) for p in half]
    try:
        for name, dtype, chunk, channels_last in variants:
            vae = nn.Module.to(pipeline.encoders.vae, dev, dtype)  # nn.Module.to: see FashionFlowPipeline.to
            vae.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            out = {}

            def decode(chunk=chunk, out=out):
                out["video"] = pipeline.decode_latents(latents.to(dev), chunk)

            seconds = median_seconds(dev, decode, repeats=repeats)
            entry = {"seconds_per_frame": seconds / frames}
            entry["utilisation"] = bench.utilisation(bench.flops["vae_decode_frame"] * frames, seconds, dtype)
            entry["psnr_vs_fp32_db"] = psnr(out["video"], reference)
            entry["finite"] = bool(torch.isfinite(out["video"]).all())
            results[name] = entry
            del vae
        if args.compile:
            results.update(compiled_decoder(bench, repeats))
    finally:
        pipeline.encoders.vae.float().to(memory_format=torch.contiguous_format)
    base = results["original: fp32, 1 frame per call"]["seconds_per_frame"]
    for r in results.values():
        r["speedup_vs_original"] = base / r["seconds_per_frame"]
    return results


def true_fp32_decode(pipeline, latents, chunk: int) -> torch.Tensor:
    """The quality reference: fp32 weights and fp32 arithmetic (cuDNN's TF32 off)."""
    pipeline.encoders.vae.float()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        return pipeline.decode_latents(latents, chunk)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def compiled_decoder(bench: Bench, repeats: int) -> dict:
    """The decoder compiled whole and region by region (fresh processes), channels_last as our fastest eager decode."""
    dtype = bench.dtype(bench.precision)
    results = {}
    for mode in ("full", "regional"):
        r = compiled_in_fresh_process(bench, "decoder", mode, repeats, channels_last=True)
        frames, seconds = r["calls_per_run"], r["seconds_per_call"]
        results[f"{bench.precision} weights, {frames} per call, channels_last + torch.compile, {mode}"] = {
            "seconds_per_frame": seconds / frames,
            "compile_seconds": r["compile_seconds"],
            "graphs": r["graphs"],
            "max_error_vs_eager_rel": r["max_error_rel"],
            "utilisation": bench.utilisation(bench.flops["vae_decode_frame"] * frames, seconds, dtype),
        }
    return results


def section_sdpa(bench: Bench) -> dict:
    """The attention kernels one half-precision UNet call launches, with their share of the call's GPU time."""
    from torch.profiler import ProfilerActivity, profile

    dev = bench.device
    dtype = bench.dtype(bench.precision)
    unet = bench.pipeline.unet.to(dev, dtype)
    x = torch.randn(*bench.latent_shape, device=dev, dtype=dtype)
    context = torch.randn(1, bench.config.context_tokens, bench.config.context_dim, device=dev, dtype=dtype)
    t = torch.full((1,), 500.0, device=dev)
    activities = [ProfilerActivity.CUDA] if bench.cuda else [ProfilerActivity.CPU]
    with torch.inference_mode():
        unet(x, context, timestep=t)
        with profile(activities=activities) as prof:
            unet(x, context, timestep=t)
            synchronize(dev)
    unet.float()
    kernels = {}
    for event in prof.key_averages():
        device_time = getattr(event, "device_time_total", 0) if bench.cuda else event.cpu_time_total
        kernels[event.key] = kernels.get(event.key, 0) + device_time
    total = sum(v for k, v in kernels.items() if not k.startswith("aten::")) if bench.cuda else sum(kernels.values())
    words = ("flash", "fmha", "attention", "efficient", "cudnn_sdpa", "sdpa", "softmax")
    attention = {k: v for k, v in kernels.items() if any(w in k.lower() for w in words)}
    top = sorted(attention.items(), key=lambda kv: -kv[1])[:8]
    return {"kernels": [{"name": k[:120], "share": v / max(total, 1)} for k, v in top], "dtype": str(dtype)}


def attention_step_seconds(dev, qkv, bias, max_batch: int) -> float:
    """Seconds of `attend` forward and backward (after one untimed call)."""
    from models.networks.unet import attend

    times = {}
    try:
        for key in ("warm-up", "s"):
            with timed(dev, times, key):
                attend(*qkv, bias, max_batch=max_batch).sum().backward()
        return times["s"]
    finally:
        for t in (*qkv, bias):
            t.grad = None


def section_attention_batch(bench: Bench) -> dict:
    """The top level's temporal attention, forward and backward, at the pixel batches that training batches make
    (batch x h x w sequences of `frames`): one call against slices below CUDA's grid limit (`attend`). Past 65,535
    sequences torch leaves the memory-efficient kernel; whether that explains batch 32's slow steps is measured here."""
    from models.networks.unet import SDPA_MAX_BATCH

    dev, config = bench.device, bench.config
    dtype = torch.bfloat16 if bench.cuda else torch.float32
    (h, w), f = config.latent_size, bench.frames
    limit = SDPA_MAX_BATCH if bench.cuda else 64  # on the CPU (a dry run) the slicing is exercised at small sizes
    results = {}
    for batch in (8, 12, 16) if bench.cuda else (1, 2):
        n = batch * h * w
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (
            torch.randn(n, config.attn_heads, f, config.attn_dim_head, device=dev, dtype=dtype, generator=g).requires_grad_()
            for _ in range(3)
        )
        # learned (ContinuousPositionBias), so its gradient is computed too, as in training
        bias = torch.randn(config.attn_heads, f, f, device=dev, dtype=dtype, generator=g).requires_grad_()
        row = {"sequences": n}
        for name, max_batch in (("one call", n), ("sliced", limit)):
            try:
                seconds = attention_step_seconds(dev, (q, k, v), bias, max_batch)
                row[name] = {"seconds": seconds, "per_video_ms": seconds / batch * 1e3}
            except (torch.OutOfMemoryError, RuntimeError) as error:
                row[name] = {"error": str(error).splitlines()[0][:200]}
        results[f"batch {batch}"] = row
        del q, k, v, bias
        if bench.cuda:
            torch.cuda.empty_cache()
    return results


def section_golden(bench: Bench) -> dict:
    """The reference's golden UNet case on this device: error relative to the output's max, per precision."""
    import importlib.util

    reference = SHARED / "reference"
    if not (reference / "golden_unet.pt").is_file():
        return {"skipped": f"no golden file under {reference} (set FASHIONFLOW_SHARED)"}
    spec = importlib.util.spec_from_file_location("filler", reference / "filler.py")
    filler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(filler)
    unet, adapter = build_models(get_preset("paper"))
    unet.load_state_dict(filler.deterministic_state_dict(unet.state_dict()))
    adapter.load_state_dict(filler.deterministic_state_dict(adapter.state_dict()))
    case = torch.load(reference / "golden_unet.pt", weights_only=True)[0]
    dev, results = bench.device, {}
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        precisions = ("fp32", "bf16", "fp16") if bench.cuda else ("fp32", "bf16")  # CPUs have no fast fp16 kernels
        for name in precisions:
            dtype = HALF.get(name, torch.float32)
            u, a = unet.to(dev, dtype).eval(), adapter.to(dev, dtype).eval()
            with torch.inference_mode():
                context = a(case["clip_hidden_states"].to(dev, dtype), case["vae_latent"].to(dev, dtype))
                out = u(case["noisy_latents"].to(dev, dtype), case["context"].to(dev, dtype), timestep=case["timesteps"].to(dev))
            results[name] = {
                "unet_max_error_rel": float(
                    (out.float().cpu() - case["noise_pred"]).abs().max() / case["noise_pred"].abs().max()
                ),
                "adapter_max_error_rel": float(
                    (context.float().cpu() - case["context"]).abs().max() / case["context"].abs().max()
                ),
            }
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    return results


def train_step_figures(
    bench: Bench, *, batch: int, precision: str, checkpointing: bool, steps: int = 2, levels=None, adamw="foreach",
    compiled=False,
) -> dict:  # fmt: skip
    """One AdamW step of the training objective at `batch` x frames, fresh models; seconds of the last step (and of
    the first, which compiles when `compiled`). `levels`: the UNet levels checkpointed (None: all); `adamw`: foreach
    (torch's default on a GPU, the original's) or fused; `precision` bf16_master: a bf16 copy trains, fp32 masters."""
    dev, config = bench.device, bench.config
    torch.manual_seed(0)
    masters = TrainingObjective(*build_models(config), NoiseSchedule()).to(dev).train()
    objective = trained_copy(masters, precision)  # the masters themselves but with bf16_master
    objective.unet.enable_gradient_checkpointing(checkpointing, levels=levels)
    model_params = list(objective.parameters()) if precision in MASTER_PRECISIONS else None
    opt = make_optimizer(masters.parameters(), lr=1e-4, weight_decay=0.01, impl=adamw, model_params=model_params)
    model = torch.compile(objective) if compiled else objective
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, config.channels, bench.frames, *config.latent_size, generator=g).to(dev)
    clip_hidden = torch.randn(batch, config.context_tokens, config.context_dim, generator=g).to(dev)
    image_latent = latents[:, :, 0].clone()
    noise = torch.randn(latents.shape, generator=g).to(dev)
    t = torch.randint(0, 1000, (batch,), generator=g).to(dev)
    cast = autocast(dev, compute_precision(precision), next(objective.parameters()).dtype)
    times = {}
    reset_peak_memory(dev)
    try:
        for step in range(steps):
            with timed(dev, times, "first" if step == 0 else "s"):
                with cast:
                    loss = model(latents, clip_hidden, image_latent, t, noise)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        seconds = times.get("s", times["first"])
        return {
            "seconds": seconds,
            "first_step_seconds": times["first"],
            "peak_memory_mb": peak_memory_mb(dev),
            "loss": loss.item(),
        }
    finally:
        del objective, masters, model, opt
        if bench.cuda:
            torch.cuda.empty_cache()


def train_settings(b: int, *, compiled: bool) -> dict:
    """The training settings compared at batch `b`: the original's, ours before issue 24 (every level checkpointed),
    and checkpointing only where memory needs it with fused AdamW, with bf16 autocast or bf16 weights and fp32
    masters (--precision bf16_master), eager and (with --compile) compiled."""
    ours = dict(precision="bf16", checkpointing=True, adamw="fused")
    master = dict(ours, precision="bf16_master")
    settings = {
        f"original: fp32, no checkpointing, batch {b}": dict(precision="fp32", checkpointing=False),
        f"ours: bf16 + checkpointing, batch {b}": dict(precision="bf16", checkpointing=True),
        f"ours: bf16 + checkpointing of level 0, fused AdamW, batch {b}": dict(ours, levels=["0"]),
        f"ours: bf16 + checkpointing of levels 0 and 1, fused AdamW, batch {b}": dict(ours, levels=["0", "1"]),
        f"ours: bf16_master + checkpointing of level 0, fused AdamW, batch {b}": dict(master, levels=["0"]),
        f"ours: bf16_master + checkpointing of levels 0 and 1, fused AdamW, batch {b}": dict(master, levels=["0", "1"]),
    }
    if compiled:
        settings[f"ours: bf16 + checkpointing of levels 0 and 1, fused AdamW, compiled, batch {b}"] = dict(
            ours, levels=["0", "1"], compiled=True
        )
    return settings


def section_train(bench: Bench) -> dict:
    b = bench.args.train_batch
    results = {}
    for name, settings in train_settings(b, compiled=bench.args.compile).items():
        try:
            results[name] = train_step_figures(bench, batch=b, **settings)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            results[name] = {"out_of_memory": True}
    if bench.cuda:
        results["largest_batch_ours"] = largest_batch(bench)
    return results


def section_batch_auto(bench: Bench) -> dict:
    """What `train.py --batch_size auto --precision bf16` picks here, at the default budget (90% of a GPU), by the
    same probe (models/training/step_tuning.py), and every setting it measured."""
    from models.training.step_tuning import StepProbe, default_budget_bytes, tune_step_settings

    dev, config = bench.device, bench.config
    torch.manual_seed(0)
    unet, adapter = build_models(config)
    objective = TrainingObjective(unet, adapter, NoiseSchedule()).to(dev).train()
    shape = dict(
        channels=config.channels,
        frames=bench.frames,
        latent_size=config.latent_size,
        context_tokens=config.context_tokens,
        context_dim=config.context_dim,
    )
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16)
    probe = StepProbe(objective, unet, resident=[objective], shape=shape, autocast=autocast, device=dev)
    try:
        started = time.perf_counter()
        record = tune_step_settings(
            probe,
            batch_size=None,
            max_batch=bench.args.max_train_batch,
            levels=len(unet.downs),
            budget=default_budget_bytes(dev),
            say=print,
        )
        return {**record, "probe_seconds": time.perf_counter() - started}
    finally:
        del probe, objective, unet, adapter
        if bench.cuda:
            torch.cuda.empty_cache()


def largest_batch(bench: Bench) -> dict:
    """Double the batch of ours (bf16 + checkpointing) until a step runs out of memory."""
    fits, batch = None, bench.args.train_batch * 2
    while batch <= bench.args.max_train_batch:
        try:
            fits = {"batch": batch, **train_step_figures(bench, batch=batch, precision="bf16", checkpointing=True, steps=1)}
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return {**fits, "next_failed": batch} if fits else {"batch": None, "next_failed": batch}
        batch *= 2
    return {**fits, "limit": f"stopped at --max_train_batch {bench.args.max_train_batch}"} if fits else {}


def section_memory(bench: Bench) -> dict:
    """Peak memory of one whole video: default settings against --low_memory (encoders offloaded, 2-frame chunks)."""
    args, dev = bench.args, bench.device
    steps = 2  # peak memory does not depend on the number of steps
    results = {}
    variants = [(f"default (decode chunk {args.decode_chunk_size})", False, args.decode_chunk_size)]
    variants += [(f"decode chunk {c}", False, c) for c in (7, 14, 35) if c < bench.frames and c != args.decode_chunk_size]
    variants += [
        (f"--low_memory (encoders offloaded, decode chunk {LOW_MEMORY_DECODE_CHUNK})", True, LOW_MEMORY_DECODE_CHUNK),
        ("encoders offloaded, decode chunk 1", True, 1),
    ]
    for name, offload, chunk in variants:
        pipeline = bench.ours()
        pipeline.enable_encoder_offload(offload)
        if not offload:
            pipeline.encoders.to(dev)

        def video(chunk=chunk, pipeline=pipeline):
            pipeline(bench.image, steps=steps, generator=torch.Generator().manual_seed(0), precision=bench.precision,
                     decode_chunk_size=chunk, progress=False, output_type="pt")  # fmt: skip

        video()  # cuDNN autotuning of new shapes allocates workspaces beyond the steady state
        if bench.cuda:
            torch.cuda.empty_cache()
        reset_peak_memory(dev)
        t = {}
        with timed(dev, t, "s"):
            video()
        results[name] = {"peak_memory_mb": peak_memory_mb(dev), "seconds_2_steps": t["s"]}
        pipeline.enable_encoder_offload(False)
        pipeline.encoders.to(dev)
    return results


def section_offload(bench: Bench) -> dict:
    """One whole video (every step, every frame) with networks waiting in CPU memory, against the default:
    `enable_model_cpu_offload()` (each network on the device only for its stage) and --low_memory (the encoders
    offloaded, small decode chunks; models/serving/animate.py). Peak device memory and seconds, measured after a warm-up."""
    args, dev = bench.args, bench.device
    steps = DEFAULT_STEPS if not args.smoke else 4
    chunk = args.decode_chunk_size
    results = bench.partial.setdefault("offload", {})  # row by row: a run stopped midway keeps the rows it measured
    variants = (
        (f"default (all on the device, decode chunk {chunk})", "none", chunk),
        (f"--low_memory (encoders offloaded, decode chunk {LOW_MEMORY_DECODE_CHUNK})", "encoders", LOW_MEMORY_DECODE_CHUNK),
        (f"enable_model_cpu_offload() (decode chunk {chunk})", "model", chunk),
    )
    pipeline = bench.ours()
    try:
        for name, offload, decode_chunk in variants:
            if offload == "model":
                pipeline.enable_model_cpu_offload(device=dev)
            else:
                pipeline.enable_encoder_offload(offload == "encoders")

            def video(n_steps, decode_chunk=decode_chunk):
                pipeline(bench.image, sampler=DEFAULT_SAMPLER, steps=n_steps, generator=torch.Generator().manual_seed(0),
                         precision=bench.precision, decode_chunk_size=decode_chunk, progress=False, output_type="pt")  # fmt: skip

            video(2)  # cuDNN autotuning of the shapes, lazy initialisation: not part of a steady video
            if bench.cuda:
                torch.cuda.empty_cache()
            reset_peak_memory(dev)
            t = {}
            with timed(dev, t, "s"):
                video(steps)
            peak = {"peak_memory_mb": peak_memory_mb(dev), "memory": memory_kind(dev)}
            results[name] = {"offload": offload, **peak, "seconds": t["s"], "steps": steps}
    finally:
        pipeline.enable_encoder_offload(False)  # nothing offloaded: every network back on the device
    return results


def sync_calls(fn) -> dict:
    """Run `fn` under torch.cuda.set_sync_debug_mode("warn"): the synchronising CUDA calls it makes, counted by
    the innermost line of this project's models/ that led to each (and the line that made the call, if elsewhere)."""
    where = collections.Counter()
    models = str(ROOT / "models")

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return shown(message, category, filename, lineno, file, line)
        ours = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(models)]
        caller = f"{short_path(filename)}:{lineno}"
        inner = f"{short_path(ours[-1].filename)}:{ours[-1].lineno}" if ours else None
        where[caller if inner in (None, caller) else f"{inner} (via {caller})"] += 1

    shown, mode = warnings.showwarning, torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(mode)
    return {"applicable": True, "syncs": sum(where.values()), "where": dict(where.most_common())}


def short_path(filename: str) -> str:
    """A path relative to the repository or to site-packages, for the report."""
    path = Path(filename)
    if path.is_relative_to(ROOT):
        return str(path.relative_to(ROOT))
    parts = path.parts
    return str(Path(*parts[parts.index("site-packages") + 1 :])) if "site-packages" in parts else filename


def section_sync(bench: Bench) -> dict:
    """Whether the sampling loop makes the host wait for the GPU: one `FashionFlowPipeline.denoise` (every step) under
    torch.cuda.set_sync_debug_mode("warn"), with the synchronising calls it makes (CUDA only). Then the loop's own
    cost: denoise against the same number of UNet calls back to back, each timed with one synchronisation at the
    end, and how soon denoise hands control back to the host (long before the GPU finishes, if nothing waits)."""
    args, dev = bench.args, bench.device
    steps = DEFAULT_STEPS if not args.smoke else 4
    pipeline = bench.ours()
    generator = torch.Generator().manual_seed(0)
    context, image_latent = pipeline.encode_image(bench.image, generator)
    noise = pipeline.prepare_latents(1, bench.frames, generator=generator)
    t = torch.full((1,), 500.0, device=dev)

    def denoise():
        return pipeline.denoise(noise, context, image_latent, sampler=DEFAULT_SAMPLER, steps=steps,
                                generator=torch.Generator().manual_seed(1), precision=bench.precision)  # fmt: skip

    @torch.inference_mode()
    def unet_calls():
        x, c = noise.to(pipeline.dtype), context.to(pipeline.dtype)
        with pipeline_autocast(pipeline, bench.precision):
            for _ in range(steps):
                pipeline.unet(x, c, timestep=t)

    denoise()  # warm-up: cuDNN autotuning, the scheduler's first set-up
    results = bench.partial.setdefault("sync", {"sampler": DEFAULT_SAMPLER, "steps": steps})
    if bench.cuda:
        results["sync_check"] = sync_calls(denoise)
    else:
        results["sync_check"] = {"applicable": False, "why": "not applicable on the CPU: every operation waits for its result"}
    loops, unets, returns = [], [], []
    for _ in range(min(args.repeats, 3)):
        synchronize(dev)
        start = time.perf_counter()
        denoise()
        returns.append(time.perf_counter() - start)
        synchronize(dev)
        loops.append(time.perf_counter() - start)
        times = {}
        with timed(dev, times, "s"):
            unet_calls()
        unets.append(times["s"])
    loop, unet = statistics.median(loops), statistics.median(unets)
    results.update(
        loop_seconds=loop,
        unet_calls_seconds=unet,
        overhead_per_step=max(loop - unet, 0.0) / steps,
        host_back_after_seconds=statistics.median(returns),
    )
    return results


# ---------------------------------------------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def fmt_flops(x: float) -> str:
    return f"{x / 1e12:.3g} TFLOP" if x >= 1e11 else f"{x / 1e9:.3g} GFLOP"


def fmt_s(x: float) -> str:
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s" if x < 600 else f"{x / 60:.1f} min"


def compile_note(r: dict) -> str:
    """What a compiled variant's row adds to its name: compile time on an empty cache and graphs compiled."""
    if "compile_seconds" not in r:
        return ""
    return f" (compiling took {r['compile_seconds']:.0f} s, {r['graphs']} graph{'s' if r['graphs'] != 1 else ''})"


def mp4_lines(e2e: dict) -> list[str]:
    """When the frames reach the encoder and the mp4 its last byte, streamed while decoding (and written after)."""
    if "first_frame" not in e2e:
        return []
    rows = [("streamed while decoding (inference.py)", e2e)]
    if "before" in e2e:
        rows.append(("written after decoding", e2e["before"]))
    lines = ["", "| mp4 | first frame at the encoder | decoding done | last byte | last byte after decoding |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, r in rows:
        lines.append(f"| {name} | {fmt_s(r['first_frame'])} | {fmt_s(r['decode_end'])} | {fmt_s(r['last_byte'])} | "
                     f"{fmt_s(r['mp4_after_decode'])} |")  # fmt: skip
    return lines


def compiled_lines(compiled: dict, original_total: float | None = None) -> list[str]:
    """The end-to-end figures of the compiled section, a paragraph per mode ('full', 'regional')."""
    lines = []
    for mode, c in compiled.items():
        after = " (after `full` in the same process, its kernels cached)" if mode == "regional" else ""
        ratio = f"{original_total / c['latency']:.1f}x the original; " if original_total else ""
        lines += ["", f"With `--compile {mode}` (UNet and decoder): **{fmt_s(c['latency'])}** for one video, {ratio}"
                  f"{fmt_s(c['per_video_overlapped'])} per video back to back. "
                  f"The first video took {fmt_s(c['first_videos_seconds'])} with compiling{after}."]  # fmt: skip
        lines += mp4_lines(c)
    return lines


def report_markdown(results: dict) -> str:
    meta = results["meta"]
    commands = ", ".join(f"`{c}`" for c in meta.get("commands", [meta["command"]]))  # several: merged runs
    lines = [
        f"# {'Smoke run (tiny preset)' if meta['smoke'] else 'Paper scale'}: {meta['device']}",
        "",
        f"{commands} on {meta['date']} (torch {meta['torch']}). Paper configuration: {meta['frames']} frames at "
        f"{meta['image_size'][0]}x{meta['image_size'][1]}, SpaceTimeUnet (random weights) and the stand-in SD v1-4 VAE and "
        "CLIP ViT-B/32 (random weights: timings and memory are real, the videos are noise). Fraction of peak: achieved "
        "FLOP/s over a large matrix product's FLOP/s measured in the same run and precision (fp32 as TF32 on a GPU, "
        "where cuDNN runs fp32 convolutions in TF32 by default) "
        f"({', '.join(f'{k}: {fmt_flops(v)}/s' for k, v in meta['matmul_peak'].items())}).",
        "",
        "FLOPs counted with torch.utils.flop_counter: "
        + ", ".join(f"{k} {fmt_flops(v)}" for k, v in meta["flops"].items())
        + ".",
    ]
    if "inference" in results:
        inf = results["inference"]
        ours, orig = inf["ours"], inf["original"]
        lines += [
            "",
            "## One video",
            "",
            f"Ours: {ours['sampler']} {ours['steps']} steps, weights {ours['weights']}, decode chunk {ours['chunk']}"
            + (
                f" (timed {ours['unet_calls_timed']} UNet calls and {ours['decode_frames_timed']} frames, rest extrapolated)"
                if ours["extrapolated"]
                else ""
            )
            + f". Original: ddpm {orig['steps']} steps, {orig['precision']}, every frame decoded alone in fp32 "
            f"(timed {orig['unet_calls_timed']} UNet calls and {orig['decode_frames_timed']} frames, extrapolated).",
            "",
            "| phase | original | ours | ratio | ours: fraction of peak |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for key, label in (("clip", "CLIP"), ("vae_encode", "VAE encode + adapter"), ("unet_call", "one UNet call"),
                           ("unet_total", "all UNet calls"), ("loop_overhead", "sampler loop overhead"),
                           ("vae_decode", "VAE decode, all frames"), ("mp4", "mp4 writing"), ("total", "total")):  # fmt: skip
            util = ours["utilisation"].get(key)
            ratio = orig[key] / ours[key] if ours[key] > 0 else float("nan")
            lines.append(
                f"| {label} | {fmt_s(orig[key])} | {fmt_s(ours[key])} | {ratio:.1f}x | {f'{util:.0%}' if util else '-'} |"
            )
        if "end_to_end" in ours:
            e2e = ours["end_to_end"]
            lines += ["", f"End to end (photo -> mp4 through `FashionFlowPipeline`): **{fmt_s(e2e['latency'])}** for one "
                      f"{inf['video_seconds']:.1f} s clip on its own (median of {e2e['videos']}), "
                      f"**{inf['speedup']:.1f}x** the original procedure; {fmt_s(e2e['per_video_overlapped'])} per video "
                      "back to back, each mp4's end overlapping the next video as in inference.py."]  # fmt: skip
            lines += mp4_lines(e2e)
            if "student_end_to_end" in ours:
                student = ours["student_end_to_end"]
                lines += ["", f"A distilled student's {STUDENT_STEPS}-step video (LCMScheduler, `train.py --distill_from`): "
                          f"**{fmt_s(student['latency'])}** end to end (median of {student['videos']}), "
                          f"{fmt_s(student['per_video_overlapped'])} per video back to back."]  # fmt: skip
            lines += compiled_lines(results.get("compiled", {}), orig["total"])
        else:
            lines += [
                "",
                f"Ours, extrapolated: {fmt_s(ours['total'])} per video; "
                f"{inf['speedup']:.1f}x the original procedure (extrapolated).",
            ]
    if "compiled" in results and "end_to_end" not in results.get("inference", {}).get("ours", {}):
        # measured without the eager end to end (another run, or its section failed)
        lines += ["", "## One video, compiled", *compiled_lines(results["compiled"])]
    kernels = results.get("kernels") or results.get("partial", {}).get("kernels")
    if kernels:
        lines += kernels_markdown(kernels, meta["frames"])
    if "unet" in results:
        lines += [
            "",
            f"## One UNet call ({meta['frames']} frames)",
            "",
            "| variant | time | vs original | fraction of peak |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, r in results["unet"].items():
            extra = compile_note(r)
            lines.append(f"| {name}{extra} | {fmt_s(r['seconds'])} | {r['speedup_vs_original']:.2f}x | {r['utilisation']:.0%} |")
    if "decoder" in results:
        lines += [
            "",
            "## VAE decode",
            "",
            "PSNR against the same frames decoded in true fp32 (TF32 off).",
            "",
            "| variant | per frame | vs original | fraction of peak | PSNR vs fp32 |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, r in results["decoder"].items():
            extra = compile_note(r)
            q = (
                f"{r['psnr_vs_fp32_db']:.1f} dB" + ("" if r.get("finite", True) else " (non-finite!)")
                if "psnr_vs_fp32_db" in r
                else f"- (max error {r['max_error_vs_eager_rel']:.1e} of eager's)"
                if "max_error_vs_eager_rel" in r
                else "-"
            )
            speed = f"{fmt_s(r['seconds_per_frame'])} | {r['speedup_vs_original']:.2f}x | {r['utilisation']:.0%}"
            lines.append(f"| {name}{extra} | {speed} | {q} |")
    if "sdpa" in results:
        lines += ["", f"## Attention kernels ({results['sdpa']['dtype']} UNet call)", ""]
        lines += [f"- `{k['name']}`: {k['share']:.1%} of the call's kernel time" for k in results["sdpa"]["kernels"]] or [
            "- none found"
        ]
    if "golden" in results:
        g = results["golden"]
        lines += ["", "## Golden case on this device", ""]
        lines += [f"- skipped: {g['skipped']}"] if "skipped" in g else [
            f"- {k}: UNet max error {v['unet_max_error_rel']:.2e}, adapter {v['adapter_max_error_rel']:.2e} "
            "(relative to the output's max; the test allows 1e-4 in fp32)"
            for k, v in g.items()
        ]  # fmt: skip
    if "train" in results:
        lines += [
            "",
            f"## Training step ({meta['frames']} frames)",
            "",
            "| settings | step time | peak memory |",
            "| --- | ---: | ---: |",
        ]
        for name, r in results["train"].items():
            if name == "largest_batch_ours":
                continue
            if r.get("out_of_memory"):
                lines.append(f"| {name} | out of memory | - |")
                continue
            lines.append(f"| {name} | {fmt_s(r['seconds'])} | {r['peak_memory_mb'] / 1024:.2f} GiB |")
        largest = results["train"].get("largest_batch_ours")
        if largest and largest.get("batch"):
            tail = f"batch {largest['next_failed']} ran out of memory" if "next_failed" in largest else largest.get("limit", "")
            lines += ["", f"Largest batch of ours that fits: **{largest['batch']}** ({fmt_s(largest['seconds'])} per step, "
                      f"{largest['peak_memory_mb'] / 1024:.1f} GiB; {tail})."]  # fmt: skip
    if "attention_batch" in results:
        lines += [
            "",
            "## Temporal attention at training batches (top level, forward and backward)",
            "",
            "| training batch | sequences | one call, ms per video | in slices (`attend`; 65,535 on a GPU), ms per video |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, row in results["attention_batch"].items():
            cells = [
                f"{row[k]['per_video_ms']:.1f}" if "per_video_ms" in row[k] else row[k]["error"] for k in ("one call", "sliced")
            ]
            lines.append(f"| {name.split()[-1]} | {row['sequences']:,} | {cells[0]} | {cells[1]} |")
    if "batch_auto" in results:
        lines += batch_auto_markdown(results["batch_auto"], results.get("train", {}))
    if "memory" in results:
        lines += ["", "## Inference peak memory (one video)", "", "| settings | peak | time (2 steps) |", "| --- | ---: | ---: |"]
        for name, r in results["memory"].items():
            lines.append(f"| {name} | {r['peak_memory_mb'] / 1024:.2f} GiB | {fmt_s(r['seconds_2_steps'])} |")
    if "offload" in results:
        lines += offload_markdown(results["offload"])
    if "sync" in results:
        lines += sync_markdown(results["sync"])
    for name, error in results.get("errors", {}).items():
        lines += ["", f"Section `{name}` did not finish: `{error}`"]
        if name in results.get("partial", {}):
            lines += ["", f"What it had measured: `{json.dumps(results['partial'][name], default=str)}`"]
    return "\n".join(lines) + "\n"


def batch_auto_markdown(record: dict, train: dict) -> list[str]:
    """The settings `--batch_size auto` measured and chose, its clips per second against the original's settings."""
    from models.training.step_tuning import Probe, StepSettings

    probes = [Probe(StepSettings(p["batch_size"], p["checkpointing"]), p["need_bytes"], p["seconds"]) for p in record["probes"]]
    chosen = StepSettings(**record["chosen"])
    lines = [
        "",
        f"## `--batch_size auto` (bf16, a {record['budget_bytes'] / 2**30:.1f} GiB budget; "
        f"{record['probe_seconds']:.0f} s of probing)",
        "",
        *(f"- {p.line()}" for p in probes),
        "",
        f"Chosen: **{chosen.describe()}**.",
    ]
    best = next(p for p in probes if p.settings == chosen)
    original = next((r for name, r in train.items() if name.startswith("original") and "seconds" in r), None)
    if original is not None:
        batch = int(next(name for name in train if name.startswith("original")).rsplit(" ", 1)[-1])
        ratio = best.samples_per_second / (batch / original["seconds"])
        lines[-1] += (
            f" {best.samples_per_second:.2f} clips/s in the probe's forward and backward, {ratio:.2f}x the original's "
            "settings' clips/s (their whole step, AdamW included)."
        )
    return lines


def offload_markdown(rows: dict) -> list[str]:
    first = next(iter(rows.values()))
    peak = "peak" if first["memory"] == "cuda_max_allocated" else "process peak RSS (since it started)"
    lines = ["", f"## Offloading (one whole video, {first['steps']} steps)", ""]
    lines += [f"| settings | {peak} | time | time vs default |", "| --- | ---: | ---: | ---: |"]
    base = next((r["seconds"] for r in rows.values() if r["offload"] == "none"), None)
    for name, r in rows.items():
        ratio = f"{r['seconds'] / base:.2f}x" if base else "-"
        lines.append(f"| {name} | {r['peak_memory_mb'] / 1024:.2f} GiB | {fmt_s(r['seconds'])} | {ratio} |")
    return lines


def sync_markdown(r: dict) -> list[str]:
    check = r["sync_check"]
    lines = ["", f"## Host synchronisation in the sampling loop ({r['sampler']} {r['steps']} steps)", ""]
    if not check["applicable"]:
        lines.append(f"- sync check: {check['why']}")
    elif check["syncs"] == 0:
        lines.append("- **no synchronising CUDA call** in `FashionFlowPipeline.denoise` (`torch.cuda.set_sync_debug_mode`)")
    else:
        lines.append(f"- **{check['syncs']} synchronising CUDA calls** in `FashionFlowPipeline.denoise` "
                     f"({check['syncs'] / r['steps']:.1f} per step; `torch.cuda.set_sync_debug_mode`), made at:")  # fmt: skip
        lines += [f"  - `{where}`: {n}" for where, n in check["where"].items()]
    if "loop_seconds" in r:
        lines.append(
            f"- denoise {fmt_s(r['loop_seconds'])}, the same UNet calls back to back {fmt_s(r['unet_calls_seconds'])}: "
            f"the loop costs **{fmt_s(r['overhead_per_step'])} per step**; denoise handed control back to the host after "
            f"{fmt_s(r['host_back_after_seconds'])}"
        )
    return lines


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    default = ["inference", "unet", "decoder", "golden"] if device.type == "cpu" and not args.smoke else list(SECTIONS)
    sections = default if args.sections is None else list(SECTIONS) if args.sections == "all" else args.sections.split(",")
    if not args.compile and "compiled" in sections:
        sections.remove("compiled")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {SECTIONS}")
    bench = Bench(args)
    results = {"errors": {}, "partial": {}}
    runners = {name: globals()[f"section_{name}"] for name in SECTIONS}
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        for name in sections:
            print(f"== {name}", flush=True)
            start = time.perf_counter()
            try:
                results[name] = runners[name](bench)
            except Exception as error:  # one failing section must not cost the others' figures
                results["errors"][name] = f"{type(error).__name__}: {error}"[:500]
                print(f"section {name} failed: {results['errors'][name]}", flush=True)
            except Stopped:
                results["errors"][name] = f"stopped by SIGTERM (a time limit) after {time.perf_counter() - start:.0f} s"
                print(f"section {name}: {results['errors'][name]}", flush=True)
            if name in results["errors"] and bench.partial.get(name):
                results["partial"][name] = bench.partial[name]
            print(f"   {time.perf_counter() - start:.1f} s", flush=True)
            if args.json or args.report:  # after every section, so a run cut short keeps what it measured
                write_outputs(bench, results, sections, args)
            if name in results["errors"] and results["errors"][name].startswith("stopped"):
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
    write_outputs(bench, results, sections, args)
    print(report_markdown(with_meta(bench, results, args)))
    return results


class Stopped(BaseException):
    """SIGTERM during a section (bench/gpu_suite.sh's time limit): a BaseException, so that no section's own
    `except Exception` swallows it."""


def stop_on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the figures are being written
    raise Stopped()


def with_meta(bench: Bench, results: dict, args) -> dict:
    results["meta"] = {
        "device": device_name(bench.device),
        "command": "python bench/bench_paper.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "frames": bench.frames,
        "image_size": list(bench.pipeline.image_size),
        "flops": bench.flops,
        "matmul_peak": {str(k).removeprefix("torch."): v for k, v in bench.peaks.items()},
        "repeats": args.repeats,
        "smoke": args.smoke,
    }
    return results


def write_outputs(bench: Bench, results: dict, sections, args) -> None:
    results = with_meta(bench, results, args)
    if args.json:
        write_atomically(Path(args.json), json.dumps(results, indent=1, default=str))
    if args.report:
        write_atomically(Path(args.report), report_markdown(results))


def write_atomically(path: Path, text: str) -> None:
    """A reader (or a kill midway) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def merge_results(runs: list[dict]) -> dict:
    """Several runs' JSON (bench/gpu_suite.sh runs sections in separate processes) as one, for report_markdown:
    the sections of all, the meta of the first with every run's command and matrix peak."""
    merged = {"errors": {}, "partial": {}}
    metas = [run["meta"] for run in runs if "meta" in run]
    for run in runs:
        for key, value in run.items():
            if key in ("errors", "partial"):
                merged[key].update(value)
            elif key != "meta":
                merged[key] = value
    if metas:
        merged["meta"] = {
            **metas[0],
            "commands": [m["command"] for m in metas],
            "matmul_peak": {k: v for m in metas for k, v in m["matmul_peak"].items()},
        }
    return merged


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
