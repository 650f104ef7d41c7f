"""Training step time and peak memory with and without gradient checkpointing (of every level or some), bf16 and fused AdamW.

    python bench/bench_training.py                                   # CPU, a small config (minutes)
    python bench/bench_training.py --preset paper --frames 70 --batch_size 2 --device cuda

Each variant runs in a fresh process (so peak memory is its own): warm-up steps, then timed steps of the
training objective (adapter + UNet forward, backward, AdamW step) on random latents and conditioning; the
frozen encoders are left out, as they cost the same in every variant. Peak memory is
`torch.cuda.max_memory_allocated` on a GPU and the growth of the peak resident set size (ru_maxrss) past
the model set-up on CPU. Results, with ratios to fp32 without checkpointing, go to
bench/results/training_<device>.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (precision, checkpointed UNet levels: 'off', 'all' or a comma list, AdamW implementation)
VARIANTS = [
    ("fp32", "off", "foreach"),
    ("fp32", "all", "foreach"),
    ("bf16", "off", "foreach"),
    ("bf16", "all", "foreach"),
    ("bf16", "0", "fused"),
    ("bf16", "0,1", "fused"),
]


def measure(args) -> dict:
    """One variant in this process: seconds per step and peak memory in MiB."""
    sys.path.insert(0, str(ROOT))
    import torch

    from models.core.config import get_preset
    from models.core.distributed import pick_device
    from models.core.precision import PRECISIONS
    from models.diffusion.schedule import NoiseSchedule
    from models.networks.checkpoint import build_models
    from models.training.loop import TrainingObjective, make_optimizer

    device = pick_device(args.device)
    torch.manual_seed(0)
    overrides = {"frames": args.frames} if args.frames else {}
    if args.latent_size:
        overrides["latent_size"] = tuple(args.latent_size)
    config = get_preset(args.preset, **overrides)
    unet, adapter = build_models(config)
    levels = None if args.checkpointing in ("off", "all") else args.checkpointing.split(",")
    unet.enable_gradient_checkpointing(args.checkpointing != "off", levels=levels)
    objective = TrainingObjective(unet, adapter, NoiseSchedule()).to(device).train()
    opt = make_optimizer(objective.parameters(), lr=1e-4, weight_decay=0.01, impl=args.adamw)
    b, (h, w) = args.batch_size, config.latent_size
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(b, config.channels, config.frames, h, w, generator=g).to(device)
    clip_hidden = torch.randn(b, config.context_tokens, config.context_dim, generator=g).to(device)
    image_latent = latents[:, :, 0].clone()
    dtype = PRECISIONS[args.precision]

    def step():
        t = torch.randint(0, 1000, (b,), generator=g).to(device)
        noise = torch.randn(latents.shape, generator=g).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=args.precision != "fp32"):
            loss = objective(latents, clip_hidden, image_latent, t, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return {
        "seconds_per_step": seconds,
        "peak_mib": peak,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "shape": [b, config.channels, config.frames, h, w],
    }


def run_variant(args, precision: str, checkpointing: str, adamw: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        "--precision",
        precision,
        "--preset",
        args.preset,
        "--batch_size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    cmd += ["--checkpointing", checkpointing, "--adamw", adamw]
    cmd += ["--frames", str(args.frames)] if args.frames else []
    cmd += ["--latent_size", *map(str, args.latent_size)] if args.latent_size else []
    cmd += ["--device", args.device] if args.device else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(args, rows: list[tuple[str, str, str, dict]]) -> str:
    base = rows[0][3]
    info = base
    lines = [
        "# Training step: gradient checkpointing, bf16 and fused AdamW",
        "",
        f"Device: {info['device']} ({info['device_name'] or 'unknown'}, {info['threads']} threads). "
        f"Preset `{args.preset}`, latents [b, c, f, h, w] = {info['shape']}; {args.steps} timed steps after "
        f"{args.warmup} warm-up. Step = adapter + UNet forward, backward, AdamW (encoders excluded).",
        "Peak memory: "
        + (
            "`torch.cuda.max_memory_allocated`."
            if info["device"].startswith("cuda")
            else "growth of the peak resident set size past the set-up: activations, gradients, optimizer state (CPU; coarse)."
        ),
        "Step times on a shared CPU vary from run to run (up to about 2x here); the memory ratios are stable."
        if not info["device"].startswith("cuda")
        else "",
        "",
        "| precision | grad checkpointing (levels) | AdamW | s / step | peak MiB | time ratio | memory ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for precision, checkpointing, adamw, r in rows:
        lines.append(
            f"| {precision} | {checkpointing} | {adamw} | {r['seconds_per_step']:.3f} | {r['peak_mib']:.0f} "
            f"| {r['seconds_per_step'] / base['seconds_per_step']:.2f} | {r['peak_mib'] / max(base['peak_mib'], 1e-9):.2f} |"
        )
    lines += ["", f"Command: `python bench/bench_training.py {' '.join(sys.argv[1:])}`", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (default: 16; the paper's is 70)")
    parser.add_argument(
        "--latent_size",
        type=int,
        nargs=2,
        default=[64, 48],
        metavar=("H", "W"),
        help="latent height and width (default: 64 48; the paper's is 80 64)",
    )
    parser.add_argument("--batch_size", type=int, default=2, help="videos per step (default: 2, the paper's per GPU)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: a GPU if there is one)")
    parser.add_argument("--output", default=None, help="results file (default: bench/results/training_<device>.md)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", default="off", help=argparse.SUPPRESS)
    parser.add_argument("--adamw", default="foreach", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.preset == "paper" and args.latent_size == [64, 48]:
        args.latent_size = None  # the paper's own 80x64
    if args.one:
        print(json.dumps(measure(args)))
        return
    rows = []
    for precision, checkpointing, adamw in VARIANTS:
        rows.append((precision, checkpointing, adamw, run_variant(args, precision, checkpointing, adamw)))
        print(f"{precision} checkpointing={checkpointing} adamw={adamw}: {rows[-1][3]}", flush=True)
    text = report(args, rows)
    kind = "cuda" if rows[0][3]["device"].startswith("cuda") else "cpu"
    output = Path(args.output) if args.output else ROOT / "bench" / "results" / f"training_{kind}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
