"""Inference speed and quality: the original procedure against our default, same weights, same inputs, one run.

    python bench/bench_inference.py                          # CPU: the quickstart's trained tiny model
    python bench/bench_inference.py --checkpoint my_run/latest.pth --dataset fashion_dataset/test
    python bench/bench_inference.py --preset paper --frames 70 --device cuda --vae <dir> --clip <dir> \
        --checkpoint checkpoint/FashionFlow_checkpoint.pth --dataset fashion_dataset/test

"Original" = 1000-step ancestral DDPM, fp32, each frame decoded on its own (docs/ORIGINAL.md, "Sampling"). "Ours" =
the pipeline's default sampler and steps, chunked decode, `--precision`. Both go through
`FashionFlowPipeline` with the same per-video generators, so they start from the same noise. Reported:
seconds per video (each video alone, batch 1) and the speed-up; per-frame PSNR/SSIM of every candidate
against 1000-step DDPM on the same seed and against the ground-truth clip, on the frames that
models/evaluation/scoring.py scores (frame 0, the input, left out unless --include_input_frame). Ancestral DDPM
adds fresh noise at every step, so "vs DDPM" measures how far a sampler lands from one DDPM draw;
"vs ground truth" of the two is the like-for-like quality comparison.

Without `--checkpoint` it uses the quickstart's trained tiny model and held-out synthetic clips
(models/serving/quickstart.py, in `--workdir`): built there first if missing, reused if present, so the quality
numbers come from a model that has learnt something.
Results go to bench/results/inference_<device>.md.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench._common import write_report  # noqa: E402
from models.diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, ORIGINAL_SAMPLER, ORIGINAL_STEPS  # noqa: E402
from models.evaluation.scoring import ScoredFrames, mean_psnr_ssim  # noqa: E402
from models.pipeline.pipeline import FashionFlowPipeline, sample_generator  # noqa: E402

CANDIDATES = "ddpm:10,ddpm:15,ddpm:50,dpmsolver++:10,dpmsolver++:25,dpmsolver++:50,ddim:25,ddim:50"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _shown(path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def ground_truth(paths, size, frames: int) -> torch.Tensor:
    from models.data.video_io import read_video_frames

    return torch.stack([read_video_frames(p, count=frames, size=size) for p in paths])  # [n, f, 3, h, w]


def generate(pipe, images, *, sampler, steps, precision, chunk, frames, seed, samples) -> tuple[torch.Tensor, float]:
    """`samples` videos per image, each alone (batch 1) from its own generator.

    Returns (videos [n * samples, f, 3, h, w], image-major, and the mean seconds per video).
    """
    videos, seconds = [], []
    for (i, image), k in itertools.product(enumerate(images), range(samples)):
        start = time.perf_counter()
        video = pipe(
            image[None],
            num_frames=frames,
            sampler=sampler,
            steps=steps,
            precision=precision,
            decode_chunk_size=chunk,
            generator=[sample_generator(seed, i, k)],
            progress=False,
            output_type="pt",
        ).frames
        if pipe.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        videos.append(video[0])
    return torch.stack(videos), sum(seconds) / len(seconds)


def parse_candidates(text: str) -> list[tuple[str, int]]:
    pairs = []
    for item in filter(None, text.split(",")):
        name, _, steps = item.partition(":")
        pairs.append((name, int(steps)))
    return pairs


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="trained checkpoint (default: fit a tiny model here)")
    p.add_argument("--preset", default=None, help="config for a released-format --checkpoint")
    p.add_argument("--vae", help="VAE for --checkpoint (default: the checkpoint's)")
    p.add_argument("--clip", help="CLIP for --checkpoint (default: the checkpoint's)")
    p.add_argument("--dataset", help="folder of ground-truth clips for --checkpoint (frame 0 is the input)")
    p.add_argument("--inputs", type=int, default=4, help="input images (test clips) per configuration")
    p.add_argument("--samples", type=int, default=4, help="videos per input, each from its own seed")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: the model's)")
    p.add_argument("--workdir", default=str(ROOT / "quickstart"), help="the quickstart's folder (without --checkpoint)")
    p.add_argument("--precision", default=None, help="ours: autocast precision (default: fp16 on CUDA, else fp32)")
    p.add_argument("--decode_chunk_size", type=int, default=8, help="ours: frames per VAE call")
    p.add_argument("--candidates", default=CANDIDATES, help="extra sampler:steps pairs to score")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--include_input_frame", action="store_true", help="also score frame 0, the conditioning image")
    p.add_argument("--out", default=None, help="markdown file (default: bench/results/inference_<device>.md)")
    args = p.parse_args(argv)
    scored = ScoredFrames(include_input=args.include_input_frame)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    if args.checkpoint:
        from models.serving.inference_io import video_inputs

        pipe = FashionFlowPipeline.from_checkpoint(
            args.checkpoint, vae=args.vae, clip=args.clip, preset=args.preset, device=device
        )
        clips = [item.path for item in video_inputs(args.dataset)] if args.dataset else []
        model = f"checkpoint {args.checkpoint}"
    else:
        from models.serving.quickstart import QuickstartConfig, build_trained_model

        cfg = QuickstartConfig(workdir=args.workdir, seed=args.seed, progress=False)
        checkpoint, _, clips = build_trained_model(cfg)
        pipe = FashionFlowPipeline.from_checkpoint(checkpoint, vae=cfg.vae_dir, clip=cfg.clip_dir, device=device)
        model = f"the quickstart's tiny model ({_shown(checkpoint)}), held-out synthetic clips"
    frames = args.frames or pipe.model_config.frames
    clips = clips[: args.inputs]
    truth = ground_truth(clips, pipe.image_size, frames) if clips else None
    images = (
        truth[:, 0]
        if truth is not None
        else torch.rand(args.inputs, 3, *pipe.image_size, generator=torch.Generator().manual_seed(args.seed))
    )
    run = dict(frames=frames, seed=args.seed, samples=args.samples)
    truth = truth.repeat_interleave(args.samples, 0) if truth is not None else None
    print("original procedure ...", flush=True)
    reference, t_orig = generate(pipe, images, sampler=ORIGINAL_SAMPLER, steps=ORIGINAL_STEPS, precision="fp32", chunk=1, **run)
    rows = [("original: ddpm 1000, fp32, frame-by-frame decode", t_orig, reference)]
    configs = [(DEFAULT_SAMPLER, DEFAULT_STEPS, True)] + [
        (s, n, False) for s, n in parse_candidates(args.candidates) if (s, n) != (DEFAULT_SAMPLER, DEFAULT_STEPS)
    ]
    for sampler, steps, is_default in configs:
        print(f"{sampler} {steps} ...", flush=True)
        videos, t = generate(pipe, images, sampler=sampler, steps=steps, precision=precision, chunk=args.decode_chunk_size, **run)
        label = f"{'ours (default): ' if is_default else ''}{sampler} {steps}, {precision}, decode chunk {args.decode_chunk_size}"
        rows.append((label, t, videos))

    lines = [
        f"# Inference: original procedure vs ours ({device_name(device)})",
        "",
        f"Model: {model}. {len(images)} inputs x {args.samples} seeds = {len(images) * args.samples} videos of "
        f"{frames} frames at {pipe.image_size[0]}x{pipe.image_size[1]} per configuration, batch 1, seed {args.seed}; "
        f"PSNR (dB) / SSIM per frame, scored: {scored.describe()}.",
        "",
        "Command: `" + " ".join(["python bench/bench_inference.py", *(sys.argv[1:] if argv is None else argv)]) + "`",
        "",
        "| configuration | s / video | speed-up | PSNR vs DDPM-1000 | SSIM vs DDPM-1000 | PSNR vs truth | SSIM vs truth |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, t, videos in rows:
        vs_ref = mean_psnr_ssim(videos, reference, scored) if videos is not reference else (float("nan"), float("nan"))
        vs_truth = mean_psnr_ssim(videos, truth, scored) if truth is not None else (float("nan"), float("nan"))
        cells = [
            f"{t:.2f}",
            f"{t_orig / t:.1f}x",
            *(f"{v:.2f}" if i % 2 == 0 else f"{v:.3f}" for i, v in enumerate((*vs_ref, *vs_truth))),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return write_report("\n".join(lines).replace("nan", "-") + "\n", args.out, f"inference_{device.type}.md")


if __name__ == "__main__":
    main()
