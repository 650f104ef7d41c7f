"""Long and looping videos (models/pipeline/long_video.py): drift window by window and the size of the joins.

    python bench/bench_long_video.py                     # CPU: the quickstart's trained tiny model (8-frame windows)
    python bench/bench_long_video.py --frames 36 --samples 2

The quickstart's trained model (models/serving/quickstart.py, in `--workdir`; built there first if missing) animates frame
0 of its held-out synthetic test figures for `--frames` frames, several times its 8-frame trained length, and the
synthetic renderer draws the same figures for as long as the ground truth (models/data/synthetic.py). Configurations:
the windows with overlap 1 (the conditioning frame alone: no overlap), and with wider overlaps held or
cross-faded; the UNet run once over all the frames (no windows); and looping. Reported against the ground truth,
per span of 7 frames (one 8-frame window's new frames): garment colour error (RGB distance of its mean colour,
0-255, as the quickstart report), sharpness (mean absolute Laplacian of the grey frame, as a ratio to the ground
truth's) and PSNR. Joins: the largest frame-to-frame change (mean absolute, 0-255) among the frames a window joins
with, against the mean change between the other frames; looping: the change from the last frame back to the first.
Results go to bench/results/long_video_<device>.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.bench_inference import _shown, device_name  # noqa: E402
from models.diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS  # noqa: E402
from models.evaluation.metrics import psnr  # noqa: E402
from models.pipeline.long_video import plan_windows, sample_long_video  # noqa: E402
from models.pipeline.pipeline import FashionFlowPipeline, sample_generator  # noqa: E402
from models.serving.quickstart import garment_colour_error  # noqa: E402

# (label, overlap, overlap mode, loop); overlap None: no windows, the UNet over every frame at once
CONFIGS = [
    ("windows, overlap 1 (no overlap)", 1, "hold", False),
    ("windows, overlap 2, held", 2, "hold", False),
    ("windows, overlap 2, cross-faded", 2, "crossfade", False),
    ("windows, overlap 4, held", 4, "hold", False),
    ("windows, overlap 4, cross-faded", 4, "crossfade", False),
    ("one pass over all frames (no windows)", None, None, False),
    ("windows, overlap 4, cross-faded, --loop", 4, "crossfade", True),
]
SPAN = 7  # frames per reported span: the new frames of one 8-frame window


def ground_truth(seed: int, count: int, frames: int, size) -> tuple[torch.Tensor, np.ndarray]:
    """The quickstart's held-out figures rendered for `frames` frames: ([N, F, 3, H, W] in [0, 1], masks [N, F, H, W])."""
    from models.data.synthetic import clip_params, render_clip
    from models.data.video_io import frames_to_tensor

    clips, masks = zip(*(render_clip(clip_params(seed, "test", i), frames, size, garment_masks=True) for i in range(count)))
    return torch.stack([frames_to_tensor(c) for c in clips]), np.stack(masks)


def sharpness(frames: torch.Tensor) -> torch.Tensor:
    """Mean absolute Laplacian of the grey image, per frame of `[F, 3, H, W]` in [0, 1]: [F]."""
    grey = frames.mean(1, keepdim=True)
    kernel = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    return F.conv2d(grey, kernel).abs().mean((1, 2, 3))


def changes(video: torch.Tensor) -> torch.Tensor:
    """Mean absolute change (0-255) from frame j - 1 to frame j of `[F, 3, H, W]`, for j = 1..F-1: [F - 1]."""
    return (video[1:] - video[:-1]).abs().mean((1, 2, 3)) * 255


def join_frames(frames: int, window: int, overlap: int | None, loop: bool) -> list[list[int]]:
    """For each window join, the frames j whose change from j - 1 crosses from one window into the next."""
    if overlap is None:
        return []
    joins = [range(w.start + 1, w.start + w.overlap + 1) for w in plan_windows(frames + int(loop), window, overlap)[1:]]
    return [[j for j in join if j < frames] for join in joins]


def generate(pipe, images, generators, *, frames, overlap, mode, loop, steps):
    if overlap is None:  # the UNet over all frames at once, through the pipeline's stages
        context, latent = pipe.encode_image(images, generators)
        noise = pipe.prepare_latents(len(images), frames, generator=generators)
        latents = pipe.denoise(noise, context, latent, sampler=DEFAULT_SAMPLER, steps=steps, generator=generators)
        return pipe.decode_latents(latents)
    return sample_long_video(
        pipe, images, generators, window=pipe.model_config.frames, num_frames=frames, loop=loop, overlap=overlap,
        overlap_mode=mode, sampler=DEFAULT_SAMPLER, steps=steps, progress=False,
    )  # fmt: skip


def score(videos, truth, masks, *, window, overlap, loop, spans) -> dict:
    """Per-span colour error, sharpness ratio and PSNR, and the join and loop changes, averaged over the videos."""
    rows = {"colour": [], "sharpness": [], "psnr": []}
    for span in spans:
        colour = [garment_colour_error(v[span], t[span], m[span]) for v, t, m in zip(videos, truth, masks)]
        rows["colour"].append(float(np.nanmean(colour)))
        rows["sharpness"].append(
            float(torch.stack([sharpness(v[span]).mean() / sharpness(t[span]).mean() for v, t in zip(videos, truth)]).mean())
        )
        rows["psnr"].append(float(torch.stack([psnr(v[span], t[span]).mean() for v, t in zip(videos, truth)]).mean()))
    joins = join_frames(videos.shape[1], window, overlap, loop)
    in_join = {j for join in joins for j in join}
    steps = torch.stack([changes(v) for v in videos])  # [N, F - 1]; column j - 1 is the change into frame j
    ordinary = steps[:, [j - 1 for j in range(1, videos.shape[1]) if j not in in_join]].mean()
    join = (
        torch.stack([steps[:, [j - 1 for j in frames]].amax(1) for frames in joins]).mean()
        if joins
        else torch.tensor(float("nan"))
    )
    wrap = (videos[:, 0] - videos[:, -1]).abs().mean() * 255
    return dict(rows, ordinary=float(ordinary), join=float(join), wrap=float(wrap))


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=36, help="frames per video (the tiny model is trained on 8)")
    p.add_argument("--inputs", type=int, default=4, help="held-out figures animated")
    p.add_argument("--samples", type=int, default=1, help="videos per figure, each from its own seed")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"{DEFAULT_SAMPLER} steps per window")
    p.add_argument("--workdir", default=str(ROOT / "quickstart"), help="the quickstart's folder")
    p.add_argument("--train_steps", type=int, default=None, help="the quickstart's training steps (default: its own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="markdown file (default: bench/results/long_video_<device>.md)")
    args = p.parse_args(argv)

    from models.serving.quickstart import QuickstartConfig, build_trained_model

    # denormal floats slowed the tiny model's CPU training and sampling down several times on the measuring machine
    torch.set_flush_denormal(True)
    cfg = QuickstartConfig(workdir=args.workdir, seed=args.seed, progress=False)
    cfg.train_steps = args.train_steps or cfg.train_steps
    checkpoint, encoders, _ = build_trained_model(cfg)
    pipe = FashionFlowPipeline.from_checkpoint(checkpoint, vae=cfg.vae_dir, clip=cfg.clip_dir, device="cpu")
    window = pipe.model_config.frames
    truth, masks = ground_truth(cfg.seed, args.inputs, args.frames, pipe.image_size)
    truth, masks = truth.repeat_interleave(args.samples, 0), masks.repeat(args.samples, 0)
    images = truth[:, 0]
    generators = lambda: [sample_generator(args.seed, i, k) for i in range(args.inputs) for k in range(args.samples)]  # noqa: E731
    spans = [slice(s, min(s + SPAN, args.frames)) for s in range(1, args.frames, SPAN)]

    still = truth[:, :1].expand_as(truth)
    results = {
        "ground truth": score(truth, truth, masks, window=window, overlap=None, loop=False, spans=spans),
        "the photo held still (reference)": score(still, truth, masks, window=window, overlap=None, loop=False, spans=spans),
    }
    header = [
        f"# Long and looping videos ({device_name(torch.device('cpu'))})",
        "",
        f"Model: the quickstart's tiny model ({_shown(checkpoint)}, trained on {window}-frame clips; tiny VAE fitted "
        f"for {encoders['vae_steps']} steps, reconstruction PSNR {encoders['vae_reconstruction_psnr_db']:.1f} dB). "
        f"{args.inputs} held-out synthetic figures x {args.samples} seed(s), {args.frames} frames at "
        f"{pipe.image_size[0]}x{pipe.image_size[1]}, {DEFAULT_SAMPLER} {args.steps} steps per window, seed {args.seed}; "
        "ground truth rendered for the same length by models/data/synthetic.py.",
        "",
        "Command: `" + " ".join(["python bench/bench_long_video.py", *(sys.argv[1:] if argv is None else argv)]) + "`",
        "",
    ]
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / "long_video_cpu.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    for label, overlap, mode, loop in CONFIGS:
        started = time.perf_counter()
        videos = generate(pipe, images, generators(), frames=args.frames, overlap=overlap, mode=mode, loop=loop, steps=args.steps)
        results[label] = score(videos, truth, masks, window=window, overlap=overlap, loop=loop, spans=spans)
        results[label]["seconds"] = (time.perf_counter() - started) / len(images)
        print(f"{label}: {results[label]}", flush=True)
        out.write_text(report(header, results, spans))  # after every configuration: a long run leaves what it measured
    print(out.read_text())
    return out


def report(header: list[str], results: dict, spans: list[slice]) -> str:
    span_names = [f"{s.start}-{s.stop - 1}" for s in spans]
    lines = list(header)
    for key, title, fmt in (
        ("colour", "Garment colour error (0-255, lower is better) by frames", "{:.1f}"),
        ("sharpness", "Sharpness / ground truth's (1 is right) by frames", "{:.2f}"),
        ("psnr", "PSNR against the ground truth (dB) by frames", "{:.2f}"),
    ):
        lines += [f"## {title}", "", "| configuration | " + " | ".join(span_names) + " |", "|---" * (len(spans) + 1) + "|"]
        rows = [(label, r) for label, r in results.items() if label != "ground truth"]  # 0, 1 and inf against itself
        lines += [f"| {label} | " + " | ".join(fmt.format(v) for v in r[key]) + " |" for label, r in rows]
        lines.append("")
    lines += [
        "## Joins (mean absolute change between frames, 0-255)",
        "",
        "| configuration | ordinary frame-to-frame | at window joins (largest in the join) | join / ordinary "
        "| last -> first | last -> first / ordinary | s / video |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in results.items():
        per_step = r["ordinary"] or float("nan")  # the still photo does not move
        cells = [
            r["ordinary"],
            r["join"],
            r["join"] / per_step,
            r["wrap"],
            r["wrap"] / per_step,
            r.get("seconds", float("nan")),
        ]
        lines.append(f"| {label} | " + " | ".join(f"{c:.2f}" for c in cells).replace("nan", "-") + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
