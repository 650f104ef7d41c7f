"""Animate fashion photos with a trained FashionFlow model.

    python inference.py                                   # frame 0 of each video in fashion_dataset/test
    python inference.py --image photo.jpg                 # one photo (also: a folder, a glob, several)
    python inference.py --image shoots/ --num_of_vid 3 --gif --seed 7
    python inference.py --sampler ddpm --steps 1000       # the original's procedure (slow)

For each input, `--output_dir` receives the conditioning image `<stem>_input.png` and, per sample k,
`<stem>_sample<k>.mp4` (H.264, plays in browsers and on phones) with a sidecar `<stem>_sample<k>.json`
(source, start frame, frames, fps, seed, sampler, ...), optionally `.gif` and a `_frames/` folder of pngs.

Dataset mode animates frame `--start_frame` (default 0) of each video; `--start_frame random` draws one per
video from `--seed` so that the `--frames` window fits in the video (the original drew from [0, 171],
assuming 241-frame videos). Inputs that cannot be read are reported by name and skipped; the exit status
is 1 when any input failed, 2 when nothing could start.

Precision: on CUDA the networks' weights are cast to fp16 (the precision the original's UNet ran in, under
autocast over fp32 weights: `--autocast` does that); on the CPU the default is fp32, bf16 works, and fp16
falls back to fp32 with a warning. `--low_memory` keeps the encoders off the GPU while the UNet works and
decodes two frames at a time; the sidecar records the peak memory either way.

A released checkpoint ({'net', 'adapter'}) means the paper configuration; `--preset` names another one
for such files (our checkpoints record their own). Videos depend only on (--seed, input index, sample
index), not on --batch_size or the device's random state.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import RELEASED_CHECKPOINT_URL
from models.cli import USER_ERRORS, non_negative_int, positive_int, print_user_error, run_command
from models.config import PREPROCESSING_MODES, PRESETS
from models.diffusion import SAMPLERS


def start_frame_arg(text: str):
    if text == "random":
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a frame index >= 0 or 'random', got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    from models.pipeline import DEFAULT_SAMPLER, DEFAULT_STEPS, ORIGINAL_STEPS, PRECISIONS
    from models.video_io import RESIZE_MODES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--pretrained_model",
        default="checkpoint/FashionFlow_checkpoint.pth",
        help="checkpoint: the released FashionFlow_checkpoint.pth or one of ours (.pth / .safetensors)",
    )
    p.add_argument(
        "--dataset",
        default="fashion_dataset/test",
        help="folder of videos whose frame --start_frame is animated (used when --image is not given)",
    )
    p.add_argument(
        "--image", nargs="+", metavar="PATH", help="photo(s) to animate: files, folders (their images) or quoted glob patterns"
    )
    p.add_argument("--num_of_vid", type=positive_int, default=1, help="videos per input, each from its own seed")
    p.add_argument("--output_dir", default="result", help="where videos, input images and sidecars are written")
    p.add_argument(
        "--resize_mode",
        choices=RESIZE_MODES,
        default="resize",
        help="photos of another size/aspect: 'resize' stretches (as the original), 'crop' keeps the aspect and centre-crops",
    )
    p.add_argument(
        "--start_frame",
        type=start_frame_arg,
        default=0,
        help="dataset mode: frame to animate (an index, or 'random' drawn from --seed)",
    )
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER, help="denoising sampler")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=f"denoising steps (default: {DEFAULT_STEPS}; --sampler ddpm --steps {ORIGINAL_STEPS} is the original's procedure)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="base seed (>= 0); video k of input i uses (seed, i, k)")
    p.add_argument(
        "--frames",
        type=positive_int,
        default=None,
        help="frames per video, frame 0 being the input (default: the checkpoint's, 70 for the paper)",
    )
    p.add_argument("--fps", type=positive_int, default=25, help="frame rate of the written videos")
    p.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default=None,
        help="network precision: the weights' dtype (default: fp16 on CUDA, fp32 elsewhere)",
    )
    p.add_argument(
        "--autocast",
        action="store_true",
        help="keep fp32 weights and run --precision under autocast, as the original did (slower)",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the UNet and the VAE decoder (pays off over many videos)"
    )
    p.add_argument(
        "--low_memory",
        action="store_true",
        help="encoders off the GPU while idle and 2-frame decode chunks (a 70-frame 640x512 video in under 12 GB)",
    )
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--batch_size", type=positive_int, default=1, help="videos denoised together")
    p.add_argument(
        "--decode_chunk_size", type=positive_int, default=8, help="frames per VAE decode call (lower it to save memory)"
    )
    p.add_argument("--vae", default=None, help="VAE: hub id or local folder (default: what the checkpoint records)")
    p.add_argument("--clip", default=None, help="CLIP vision model: hub id or local folder (default: the checkpoint's)")
    p.add_argument(
        "--preprocessing",
        choices=PREPROCESSING_MODES,
        default=None,
        help="pixel mapping for the encoders (default: the checkpoint's; 'legacy' for the released one)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="model config for released-format checkpoints, which record none (default: paper)",
    )
    p.add_argument("--no_ema", action="store_true", help="use the raw weights even if the checkpoint holds EMA ones")
    p.add_argument("--gif", action="store_true", help="also write <stem>_sample<k>.gif")
    p.add_argument("--png_frames", action="store_true", help="also write the frames to <stem>_sample<k>_frames/")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def check_checkpoint(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found. Download the released checkpoint from {RELEASED_CHECKPOINT_URL} into "
            "checkpoint/, train your own (`python -m models.quickstart` makes a tiny one offline), or pass "
            "--pretrained_model <path>"
        )


def default_precision(device: torch.device) -> str:
    return "fp16" if device.type == "cuda" else "fp32"


def pick_start_frame(item, args, item_index: int, frames: int) -> int:
    """The dataset frame to animate; 'random' keeps the window [start, start + frames) inside the video."""
    from models.video_io import count_frames, probe_video

    if args.start_frame != "random":
        return args.start_frame
    total = probe_video(item.path).frames or count_frames(item.path)
    return int(np.random.default_rng([args.seed, item_index]).integers(0, max(total - frames, 0) + 1))


def load_input(item, args, item_index: int, size, frames: int):
    """(conditioning image [3, H, W], start frame) of one input; raises ImageReadError / VideoReadError."""
    from models.video_io import ImageReadError, VideoReadError, load_image, read_video_frames

    if item.error is not None:
        raise (ImageReadError if item.kind == "image" else VideoReadError)(item.path, item.error)
    if item.kind == "image":
        return load_image(item.path, size=size, resize_mode=args.resize_mode), 0
    start = pick_start_frame(item, args, item_index, frames)
    return read_video_frames(item.path, start=start, count=1, size=size)[0], start


def write_outputs(video: torch.Tensor, job: dict, args, record: dict) -> Path:
    from models.inference_io import sample_stem, write_sidecar
    from models.video_io import write_gif, write_mp4, write_png_frames

    out = Path(args.output_dir)
    stem = sample_stem(job["stem"], job["sample_index"])
    mp4 = write_mp4(video, out / f"{stem}.mp4", fps=args.fps)
    if args.gif:
        write_gif(video, out / f"{stem}.gif", fps=args.fps)
    if args.png_frames:
        write_png_frames(video, out / f"{stem}_frames", prefix="frame")
    write_sidecar(
        out / f"{stem}.json",
        {
            **record,
            "source": str(job["path"]),
            "start_frame": job["start_frame"],
            "sample_index": job["sample_index"],
            "input_index": job["input_index"],
        },
    )
    return mp4


def iter_jobs(inputs, args, size, frames: int, failures: list, say):
    """One job per (input, sample); an input that cannot be read is reported and recorded in `failures`."""
    from models.inference_io import input_image_path
    from models.video_io import ImageReadError, VideoReadError, save_image

    for index, item in enumerate(inputs):
        try:
            image, start = load_input(item, args, index, size, frames)
        except (ImageReadError, VideoReadError) as err:
            failures.append(item.path)
            say(f"skipped {item.path}: {err}")
            yield None  # lets the caller count the input as done
            continue
        save_image(image, input_image_path(args.output_dir, item.stem))
        for k in range(args.num_of_vid):
            yield dict(image=image, path=item.path, stem=item.stem, input_index=index, sample_index=k, start_frame=start)


def batches(jobs, batch_size: int):
    batch = []
    for job in jobs:
        if job is None:
            yield None
            continue
        batch.append(job)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        pipeline, inputs, frames, steps, precision = setup(args)
    except USER_ERRORS as error:
        print_user_error("inference.py", error)
        return 2
    return generate(pipeline, inputs, args, frames=frames, steps=steps, precision=precision)


def setup(args):
    from models.inference_io import image_inputs, video_inputs
    from models.outputs import ensure_writable_dir
    from models.pipeline import DEFAULT_STEPS, LOW_MEMORY_DECODE_CHUNK, PRECISIONS, FashionFlowPipeline, resolve_precision

    checkpoint = Path(args.pretrained_model)
    check_checkpoint(checkpoint)
    ensure_writable_dir(args.output_dir, "--output_dir")
    inputs = image_inputs(args.image) if args.image else video_inputs(args.dataset)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(args.precision or default_precision(device), device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every video has the same shapes: autotuned kernels pay off
    pipeline = FashionFlowPipeline.from_checkpoint(
        checkpoint,
        vae=args.vae,
        clip=args.clip,
        preprocessing=args.preprocessing,
        preset=args.preset,
        device=device,
        dtype=torch.float32 if args.autocast else PRECISIONS[precision],
        use_ema=not args.no_ema,
    )
    if args.low_memory:
        pipeline.enable_encoder_offload()
        args.decode_chunk_size = min(args.decode_chunk_size, LOW_MEMORY_DECODE_CHUNK)
    if args.compile:
        pipeline.compile()
    frames = args.frames or pipeline.config.frames
    pipeline.check_num_frames(frames)
    steps = args.steps or DEFAULT_STEPS
    return pipeline, inputs, frames, steps, precision


def generate(pipeline, inputs, args, *, frames: int, steps: int, precision: str) -> int:
    from tqdm.auto import tqdm

    from models.inference_io import BackgroundWriter
    from models.pipeline import sample_generator
    from models.profiling import memory_kind, peak_memory_mb, reset_peak_memory

    record = dict(
        frames=frames,
        fps=args.fps,
        seed=args.seed,
        sampler=args.sampler,
        steps=steps,
        checkpoint=str(args.pretrained_model),
        preprocessing=pipeline.encoders.preprocessing,
        precision=precision,
        weights_dtype=str(pipeline.dtype).removeprefix("torch."),
        low_memory=args.low_memory,
    )
    failures, written = [], []
    bar = tqdm(total=len(inputs) * args.num_of_vid, desc="videos", unit="video", disable=args.no_progress)

    def write_batch(videos, batch, record):
        for video, job in zip(videos, batch):
            written.append(write_outputs(video, job, args, record))
            bar.update()

    # mp4 encoding of one batch overlaps the denoising of the next
    with BackgroundWriter() as writer:
        for batch in batches(iter_jobs(inputs, args, pipeline.image_size, frames, failures, tqdm.write), args.batch_size):
            if batch is None:
                bar.update(args.num_of_vid)
                continue
            reset_peak_memory(pipeline.device)
            generators = [sample_generator(args.seed, job["input_index"], job["sample_index"]) for job in batch]
            videos = pipeline(
                torch.stack([job["image"] for job in batch]),
                num_frames=frames,
                sampler=args.sampler,
                steps=steps,
                generator=generators,
                precision=precision,
                decode_chunk_size=args.decode_chunk_size,
                progress=not args.no_progress,
            )
            peak = {memory_kind(pipeline.device) + "_mb": round(peak_memory_mb(pipeline.device), 1)}
            writer.submit(write_batch, videos, batch, {**record, **peak})
    bar.close()
    print(f"wrote {len(written)} video(s) to {args.output_dir}")
    if failures:
        print(f"{len(failures)} input(s) failed: " + ", ".join(str(p) for p in failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_command("inference.py", main))
