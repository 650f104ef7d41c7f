"""Aten ops dispatched, and the memory they hold, in one training step of the paper UNet at 70 frames (issue 24).

    python bench/bench_dispatch.py                # -> bench/results/dispatch_cpu.md (a few minutes on a CPU)
    python bench/bench_dispatch.py --smoke        # the tiny preset, a seconds-long check of the script

A `TorchDispatchMode` counts every aten op that one step dispatches (forward, backward and the AdamW update), view
and detach ops left out: each is a pass over memory, or a kernel launch on a GPU, so the count tracks what the
settings add (autocast's casts, checkpointing's second forward) independent of the device. The spatial size does not
change the count, so the step runs at a small one on the CPU. The same mode follows the bytes of the tensors the
step's ops create while they live; their peak (activations, gradients, optimizer state made on the first step) is
the step's memory at this size, and the ratio to the original's tracks the ratio at full size. CPU autocast runs
bf16 with CPU's cast lists (CUDA's differ for a few ops, the norms among them). Settings: `original` is the
original's training (fp32, no checkpointing, for-loop-free foreach AdamW, as torch's default), `ours` the default
of ours before issue 24 (bf16 autocast, every block checkpointed), then selective checkpointing and fused AdamW, and
`--precision bf16_master`: bf16 weights without autocast, fp32 master weights in the optimizer
(models/training/master_weights.py).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._common import write_report  # noqa: E402
from models.core.profiling import DispatchCounter  # noqa: E402

# name: (precision, checkpointed levels: None = none, "all" = every level, else a list; AdamW implementation)
SETTINGS = {
    "original: fp32, no checkpointing": ("fp32", None, "foreach"),
    "ours before: bf16 + checkpointing of every level": ("bf16", "all", "foreach"),
    "bf16 + checkpointing of every level, fused AdamW": ("bf16", "all", "fused"),
    "bf16 + checkpointing of level 0, fused AdamW": ("bf16", ["0"], "fused"),
    "bf16 + checkpointing of levels 0 and 1, fused AdamW": ("bf16", ["0", "1"], "fused"),
    "bf16_master + checkpointing of level 0, fused AdamW": ("bf16_master", ["0"], "fused"),
    "bf16_master + checkpointing of levels 0 and 1, fused AdamW": ("bf16_master", ["0", "1"], "fused"),
}


def build(args):
    from models.core.config import get_preset
    from models.diffusion.schedule import NoiseSchedule
    from models.networks.checkpoint import build_models
    from models.training.loop import TrainingObjective

    torch.manual_seed(0)
    config = get_preset(args.preset, frames=args.frames, latent_size=tuple(args.latent_size))
    unet, adapter = build_models(config)
    objective = TrainingObjective(unet, adapter, NoiseSchedule()).train()
    g = torch.Generator().manual_seed(0)
    b = args.batch_size
    latents = torch.randn(b, config.channels, config.frames, *config.latent_size, generator=g)
    inputs = dict(
        latents=latents,
        clip_hidden=torch.randn(b, config.context_tokens, config.context_dim, generator=g),
        image_latent=latents[:, :, 0].clone(),
        t=torch.randint(0, 1000, (b,), generator=g),
        noise=torch.randn(latents.shape, generator=g),
    )
    return config, unet, objective, inputs


def count_step(args, precision: str, levels, adamw: str) -> dict:
    """Ops and peak bytes of the second of two steps (the first makes the optimizer state)."""
    from models.core.precision import MASTER_PRECISIONS, autocast, compute_precision
    from models.training.loop import make_optimizer
    from models.training.master_weights import trained_copy

    config, _, masters, inputs = build(args)
    objective = trained_copy(masters, precision)  # bf16_master: a bf16 copy of the fp32 masters; else the masters
    objective.unet.enable_gradient_checkpointing(levels is not None, levels=None if levels in (None, "all") else levels)
    model_params = list(objective.parameters()) if precision in MASTER_PRECISIONS else None
    opt = make_optimizer(masters.parameters(), lr=1e-4, weight_decay=0.01, impl=adamw, model_params=model_params)
    cast = autocast(torch.device("cpu"), compute_precision(precision), next(objective.parameters()).dtype)

    def step(counter=None):
        with counter or contextlib.nullcontext():
            with cast:
                loss = objective(**inputs)
            loss.backward()
        optimizer_ops = sum(counter.ops.values()) if counter else 0
        with counter or contextlib.nullcontext():
            opt.step()
            opt.zero_grad(set_to_none=True)
        return sum(counter.ops.values()) - optimizer_ops if counter else 0

    step()
    counter = DispatchCounter()
    optimizer_ops = step(counter)
    ops = sum(counter.ops.values())
    grads = sum(p.numel() * p.element_size() for p in objective.parameters())  # made in every setting's backward
    return {
        "ops": ops,
        "optimizer_ops": optimizer_ops,
        "by_op": dict(counter.ops.most_common()),
        "peak_bytes": counter.peak,
        "activation_bytes": counter.peak - grads,
    }


def count_inference(args, precision: str) -> dict:
    config, unet, objective, inputs = build(args)
    unet.eval()
    with torch.no_grad():  # not inference_mode: under it the mode sees ops before autocast's casts and decompositions
        context = objective.adapter(inputs["clip_hidden"], inputs["image_latent"])
        with DispatchCounter() as counter, torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            unet(inputs["noise"], context, timestep=inputs["t"].float())
    return {"ops": sum(counter.ops.values()), "by_op": dict(counter.ops.most_common()), "peak_bytes": counter.peak}


def report(args, rows: dict, inference: dict) -> str:
    base = rows[next(iter(rows))]
    shape = f"{args.batch_size} x {args.frames} frames of {args.latent_size[0]}x{args.latent_size[1]} latents"
    lines = [
        "# Aten ops dispatched per training step (CPU)",
        "",
        f"Preset `{args.preset}`, {shape}, on the CPU (torch {torch.__version__}). One training step = adapter + UNet "
        "forward, backward, AdamW update (the second step: the optimizer state exists); view and detach ops left out. "
        "Peak memory: the most bytes the step's own tensors held at once (activations, gradients, recomputed "
        "activations), at this small size; less the gradients (the same in every setting, and at this size most of "
        "the peak) it is the activations', whose ratio to the original's is what carries over to full size. "
        "Counts do not depend on the CPU's speed or load; run by `bench/bench_dispatch.py`.",
        "",
        "| settings | ops | vs original | of which AdamW | `_to_copy` (casts) | convolutions | peak MiB "
        "| peak less gradients, MiB | that vs original |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        convs = r["by_op"].get("convolution", 0) + r["by_op"].get("convolution_backward", 0)
        lines.append(
            f"| {name} | {r['ops']:,} | {r['ops'] / base['ops']:.2f} | {r['optimizer_ops']:,} "
            f"| {r['by_op'].get('_to_copy', 0):,} | {convs:,} "
            f"| {r['peak_bytes'] / 2**20:.1f} | {r['activation_bytes'] / 2**20:.1f} "
            f"| {r['activation_bytes'] / base['activation_bytes']:.2f} |"
        )
    ratio = {n: r["activation_bytes"] / base["activation_bytes"] for n, r in rows.items()}
    met = [f"{n} ({r['ops']:,} ops at {ratio[n]:.2f})" for n, r in rows.items() if r["ops"] <= base["ops"] and ratio[n] <= 1 / 3]
    lines += [
        "",
        "Goal (issue 24): the step's ops at or below the original's while its memory (peak less gradients) stays at a "
        "third of the original's or less: "
        + (f"met by {', '.join(met)}" if met else "met by no setting here")
        + ". `bf16_master` (`train.py --precision bf16_master`) trains bf16 weights without autocast, so the per-op "
        "casts go; the optimizer keeps fp32 master weights, takes the bf16 gradients in with one `_foreach_copy_` and "
        "rounds the masters back with another (its AdamW column: those, the flat fp32 gradient buffer and the fused "
        "kernel). Its activations are autocast's (both save bf16 tensors): the memory comes from checkpointing, the "
        "ops from the casts gone. Most `_to_copy` left are the CPU's attention with a bias, which computes in fp32, "
        "and its backward; whether a GPU's kernels need them is for the GPU suite to show. Held outside the step: the "
        "fp32 masters and their bf16 copy, 6 bytes a weight against fp32's 4 (the paper model has 72.7 M: 0.14 GiB "
        "more).",
    ]
    lines += ["", "| inference forward (UNet alone) | ops | `_to_copy` |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {r['ops']:,} | {r['by_op'].get('_to_copy', 0):,} |" for name, r in inference.items()]
    lines += ["", "Most dispatched ops per setting:", ""]
    for name, r in rows.items():
        top = ", ".join(f"`{op}` {n}" for op, n in list(r["by_op"].items())[:8])
        lines.append(f"- {name}: {top}")
    lines += ["", f"Command: `python bench/bench_dispatch.py {' '.join(sys.argv[1:])}`", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--frames", type=int, default=70, help="the count is the same at any (run --frames 4 on a slow CPU)")
    parser.add_argument("--latent_size", type=int, nargs=2, default=[16, 16], metavar=("H", "W"))
    parser.add_argument("--batch_size", type=int, default=1, help="videos per step (the count does not depend on it)")
    parser.add_argument("--smoke", action="store_true", help="the tiny preset at 8 frames of 16x16 (report to the temp dir)")
    parser.add_argument("--out", default=None, help="report path (default: bench/results/dispatch_cpu.md)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.frames = "tiny", 8
        args.out = args.out or str(Path(tempfile.gettempdir()) / "dispatch_smoke.md")  # the committed figures stay
    rows = {}
    for name, (precision, levels, adamw) in SETTINGS.items():
        rows[name] = count_step(args, precision, levels, adamw)
        print(f"{name}: {rows[name]['ops']} ops, peak {rows[name]['peak_bytes'] / 2**20:.1f} MiB", flush=True)
    inference = {f"{p}": count_inference(args, p) for p in ("fp32", "bf16")}
    return write_report(report(args, rows, inference), args.out, "dispatch_cpu.md")


if __name__ == "__main__":
    main()
