"""Few-step students (train.py --distill_from) against their teacher, side by side in one run.

    python bench/bench_distill.py                                  # CPU: the quickstart's trained tiny model as teacher
    python bench/bench_distill.py --distill_train_steps 1200 --seeds 3

The teacher is the quickstart's trained model (models/serving/quickstart.py, in `--workdir`; built there first if
missing); two students are distilled from it on the same projected latents (`quickstart.distill`, i.e. `train.py
--distill_from`; reused on a rerun) with the same total of `--distill_train_steps`: one by latent consistency
distillation (`--distill_method consistency`), and one by progressive distillation (`--distill_method progressive`),
a chain of halving rounds from the teacher's 32-step DDIM grid (32 -> 16 -> 8 -> 4), each round's student the
next one's teacher, the steps split evenly over the rounds. All animate frame 0 of every held-out synthetic test
clip with `--seeds` seeds: the consistency student with LCMScheduler at 1, 2 and 4 steps, the progressive students
with DDIM at 8 and 4 steps, the teacher with DDIM at 4 and 32 steps, with its default ancestral DDPM at 4 and 25
steps and with the original procedure (DDPM, 1000 steps). Scored against the ground truth on frames 1 to the end (the
evaluation protocol): PSNR, SSIM, the quickstart's garment colour error and motion ratio, and seconds per video on
this machine. LPIPS needs AlexNet and LPIPS weight files that an offline machine does not have: it is reported only
when `--lpips_dir` holds them. Results go to bench/results/distill_cpu.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import write_report  # noqa: E402
from bench.bench_inference import device_name  # noqa: E402
from models.diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, ORIGINAL_STEPS  # noqa: E402
from models.pipeline.pipeline import FashionFlowPipeline, sample_generator  # noqa: E402
from models.serving.quickstart import SCORED, score_video  # noqa: E402

PROGRESSIVE_CHAIN = (32, 16, 8, 4)  # the teacher's DDIM grid, then each round's student's steps
CONSISTENCY, PROGRESSIVE = "consistency student, 4 steps", "progressive student, 4 steps"
# (label, which model, sampler (None: the model's own), steps)
CONFIGS = [
    ("consistency student, 1 step", "consistency", None, 1),
    ("consistency student, 2 steps", "consistency", None, 2),
    (CONSISTENCY, "consistency", None, 4),
    ("progressive student, 8 steps (after 2 rounds)", "progressive 8", None, 8),
    (PROGRESSIVE, "progressive 4", None, 4),
    ("teacher, DDIM 4 steps", "teacher", "ddim", 4),
    (f"teacher, DDIM {PROGRESSIVE_CHAIN[0]} steps (the chain's start)", "teacher", "ddim", PROGRESSIVE_CHAIN[0]),
    ("teacher, 4 steps", "teacher", DEFAULT_SAMPLER, 4),
    (f"teacher, {DEFAULT_STEPS} steps (default)", "teacher", DEFAULT_SAMPLER, DEFAULT_STEPS),
    (f"teacher, original procedure ({ORIGINAL_STEPS} steps)", "teacher", "ddpm", ORIGINAL_STEPS),
]
KEYS = ("psnr", "ssim", "garment_colour_error", "motion")


def lpips_scorer(weights_dir: str | None, device):
    """An LPIPS function of two `[F, 3, H, W]` videos in [0, 1], or None without its weight files."""
    if not weights_dir:
        return None
    from models.evaluation.feature_nets import load_lpips

    net = load_lpips(Path(weights_dir) / "alexnet-owt-7be5be79.pth", Path(weights_dir) / "alex.pth", device=device)
    return lambda a, b: float(net(a.to(device), b.to(device)).mean())


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=str(ROOT / "quickstart"), help="the quickstart's folder (teacher, data)")
    p.add_argument("--seed", type=int, default=0, help="the quickstart's seed")
    p.add_argument(
        "--train_steps", type=int, default=None,
        help="the teacher's training steps (default: the quickstart's; a shorter run there is resumed to it)",
    )  # fmt: skip
    p.add_argument("--seeds", type=int, default=3, help="videos per held-out clip and configuration")
    p.add_argument("--original_seeds", type=int, default=1, help="of those, for the 1000-step original procedure (slow)")
    p.add_argument(
        "--distill_train_steps", type=int, default=600,
        help="distillation steps of each student (the progressive one's split evenly over its rounds)",
    )  # fmt: skip
    p.add_argument("--lpips_dir", default=None, help="folder with alexnet-owt-7be5be79.pth and lpips alex.pth")
    p.add_argument("--output", default=None, help="report path (default: bench/results/distill_cpu.md)")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    from models.serving.quickstart import QuickstartConfig, _tiny_image_size, build_trained_model, distill, held_out_truth

    cfg = QuickstartConfig(workdir=args.workdir, seed=args.seed, progress=False)
    if args.train_steps is not None:
        cfg.train_steps = args.train_steps
    teacher_path, _, tests = build_trained_model(cfg)
    latents, seconds = cfg.work / "fashion_dataset_tensor", {}
    started = time.perf_counter()
    paths = {"teacher": teacher_path, "consistency": distill(cfg, teacher_path, latents, steps=args.distill_train_steps)}
    seconds["consistency"] = time.perf_counter() - started
    started, per_round = time.perf_counter(), args.distill_train_steps // (len(PROGRESSIVE_CHAIN) - 1)
    round_teacher = teacher_path
    for steps in PROGRESSIVE_CHAIN[1:]:  # one train.py --distill_method progressive run per halving
        round_teacher = distill(
            cfg, round_teacher, latents, steps=per_round, method="progressive", student_steps=steps,
            folder=f"student_progressive_{steps}",
        )  # fmt: skip
        paths[f"progressive {steps}"] = round_teacher
    seconds["progressive"] = time.perf_counter() - started
    encoders = dict(vae=str(cfg.vae_dir), clip=str(cfg.clip_dir), device="cpu")
    models = {model for _, model, *_ in CONFIGS}
    pipes = {model: FashionFlowPipeline.from_checkpoint(paths[model], **encoders) for model in models}
    size, frames = _tiny_image_size(), pipes["teacher"].model_config.frames
    lpips = lpips_scorer(args.lpips_dir, torch.device("cpu"))

    rows = {label: [] for label, *_ in CONFIGS}
    truth_motion = []
    for clip, source in enumerate(sorted(tests)):
        truth, masks = held_out_truth(cfg, source, 0, frames, size)
        truth_motion.append(float((truth[1:] - truth[:-1]).abs().mean() * 255))
        for label, model, sampler, steps in CONFIGS:
            for seed in range(min(args.seeds, args.original_seeds) if steps == ORIGINAL_STEPS else args.seeds):  # 0: no row
                begin = time.perf_counter()
                video = pipes[model](
                    truth[:1], generator=[sample_generator(seed, clip, 0)], sampler=sampler, num_inference_steps=steps,
                    num_frames=frames, output_type="pt", progress=False,
                ).frames[0]  # fmt: skip
                seconds = time.perf_counter() - begin
                scores = score_video(video, truth, masks, SCORED) | {"seconds": seconds}
                if lpips is not None:
                    scores["lpips"] = lpips(SCORED.select(video), SCORED.select(truth))
                rows[label].append(scores)
        print(f"clip {clip + 1}/{len(tests)} done", flush=True)

    gt_motion = float(np.mean(truth_motion))
    means = {
        label: {key: float(np.mean([r[key] for r in scores])) for key in scores[0]} for label, scores in rows.items() if scores
    }
    for values in means.values():
        values["motion_ratio"] = values["motion"] / gt_motion
    result = {
        "device": device_name(torch.device("cpu")),
        "teacher_train_steps": cfg.train_steps,
        "checkpoints": {model: str(path) for model, path in paths.items()},
        "distill_train_steps": args.distill_train_steps,
        "progressive_chain": list(PROGRESSIVE_CHAIN),
        "progressive_steps_per_round": per_round,
        "distill_seconds_this_run": seconds,
        "clips": len(tests),
        "seeds": args.seeds,
        "original_seeds": min(args.seeds, args.original_seeds),
        "ground_truth_motion": gt_motion,
        "means": means,
        "rows": rows,
    }
    text = report(result, lpips is not None)
    path = write_report(text, args.output, "distill_cpu.md")  # the bench runs on the CPU: tiny models
    path.with_suffix(".json").write_text(json.dumps(result, indent=2))
    return path


def goals(means: dict, label: str) -> list[str]:
    """The issue's goals for the 4-step student of row `label`, each with what it reached."""
    student, teacher4, ddim4 = means[label], means["teacher, 4 steps"], means["teacher, DDIM 4 steps"]
    teacher = means[f"teacher, {DEFAULT_STEPS} steps (default)"]
    psnr_gap, ssim_gap = student["psnr"] - teacher["psnr"], student["ssim"] - teacher["ssim"]
    motion_gap = student["motion_ratio"] / teacher["motion_ratio"] - 1
    verdict = lambda ok: "met" if ok else "not met"  # noqa: E731
    return [
        f"- PSNR within 0.5 dB of the {DEFAULT_STEPS}-step teacher's or above: {psnr_gap:+.2f} dB: {verdict(psnr_gap >= -0.5)}",
        f"- SSIM within 0.01 of it or above: {ssim_gap:+.3f}: {verdict(ssim_gap >= -0.01)}",
        f"- better than the teacher at 4 steps: PSNR {student['psnr']:.2f} vs {teacher4['psnr']:.2f} dB, SSIM "
        f"{student['ssim']:.3f} vs {teacher4['ssim']:.3f}: "
        f"{verdict(student['psnr'] > teacher4['psnr'] and student['ssim'] > teacher4['ssim'])}",
        f"- better than the teacher with DDIM at 4 steps: PSNR {student['psnr']:.2f} vs {ddim4['psnr']:.2f} dB, SSIM "
        f"{student['ssim']:.3f} vs {ddim4['ssim']:.3f}: "
        f"{verdict(student['psnr'] > ddim4['psnr'] and student['ssim'] > ddim4['ssim'])}",
        f"- motion ratio within 10% of the teacher's: {motion_gap:+.0%}: {verdict(abs(motion_gap) <= 0.10)}",
    ]


def report(result: dict, with_lpips: bool) -> str:
    lpips_head = " LPIPS |" if with_lpips else ""
    lines = [
        "# Few-step students against their teacher",
        "",
        f"Written by `bench/bench_distill.py` on {time.strftime('%Y-%m-%d')}, on {result['device']} (tiny models: timings",
        "compare configurations of this run only). Teacher: the quickstart's tiny model trained for",
        f"{result['teacher_train_steps']} steps; students: distilled",
        f"from it for {result['distill_train_steps']} steps in all (`train.py --distill_from`): by latent consistency",
        "distillation (`--distill_method consistency`) and by progressive distillation (`--distill_method progressive`,",
        f"rounds {' -> '.join(map(str, result['progressive_chain']))}, {result['progressive_steps_per_round']} steps each,",
        "each round's student the next one's teacher).",
        f"{result['clips']} held-out synthetic clips x {result['seeds']} seeds per row ({result['original_seeds']} for the "
        "original procedure), frame 0 of each clip as the photo;",
        "scored on frames 1 to the end against the ground truth. Motion / ground truth: mean absolute frame-to-frame",
        f"change relative to the ground truth's ({result['ground_truth_motion']:.2f} on 0-255).",
        "",
        f"| configuration | PSNR (dB) | SSIM |{lpips_head} garment colour error | motion / ground truth | s / video |",
        "| --- | ---: | ---: |" + (" ---: |" if with_lpips else "") + " ---: | ---: | ---: |",
    ]
    for label, m in result["means"].items():
        lpips = f" {m['lpips']:.3f} |" if with_lpips else ""
        lines.append(
            f"| {label} | {m['psnr']:.2f} | {m['ssim']:.3f} |{lpips} {m['garment_colour_error']:.1f} | "
            f"{m['motion_ratio']:.2f} | {m['seconds']:.2f} |"
        )
    for label in (CONSISTENCY, PROGRESSIVE):
        lines += ["", f"Goals for the {label}:", *goals(result["means"], label)]
    if not with_lpips:
        lines += ["", "LPIPS: not measured (its weight files cannot be fetched offline; pass `--lpips_dir`)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
