"""Batch-inference throughput of N processes against 1 (videos per minute, the ratio), measured with the real
`inference.py`: one plain process, then `torchrun --nproc_per_node=N`, on the same photos and tiny model.

    python bench/bench_inference_sharded.py                              # CPU: 1 process vs 2, tiny preset
    python bench/bench_inference_sharded.py --device cuda --processes 8 --photos 256   # 8 GPUs, one per rank

Each configuration runs `--repeats` times into a fresh output folder (`--overwrite`), and the table gives the
spread. Two rates: end to end (photos x videos over the command's wall time, start-up and model loading
included, which is what a user waits for) and steady (videos over the slowest rank's animating time, as the
run's summary prints it). On the CPU the cores are shared out: one process gets `--threads` threads, each of N
processes `--threads / N` (at least one); on CUDA every rank has its own GPU (rank k uses GPU k modulo the GPUs
present). The "same bytes" column says whether the N-process videos equal the 1-process ones byte for byte.
The model is the tiny preset with seeded untrained weights: speed does not depend on what the weights learnt.
Results go to bench/results/inference_sharded_<device>.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import write_report  # noqa: E402

MADE = re.compile(r"made\s+(\d+) videos in ([\d.]+) s on (\d+) process")  # the summary line (models/serving/catalogue.py)


def build_model(work: Path, photos: int, size: tuple[int, int], seed: int) -> tuple[Path, Path]:
    """A seeded tiny-preset checkpoint (with its tiny encoders) and a folder of `photos` random photos."""
    import numpy as np
    import torch
    from PIL import Image

    from models.core.config import get_preset
    from models.networks.checkpoint import build_models, save_checkpoint
    from models.networks.tiny_components import save_tiny_encoders

    vae, clip = save_tiny_encoders(work / "encoders", seed=seed)
    config = get_preset("tiny", vae=str(vae), clip=str(clip))
    torch.manual_seed(seed)
    unet, adapter = build_models(config)
    checkpoint = save_checkpoint(work / "tiny.pth", unet, adapter, config)
    folder = work / "photos"
    folder.mkdir()
    for i in range(photos):
        pixels = np.random.default_rng([seed, i]).integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"look{i:05d}.png")
    return checkpoint, folder


def run_inference(processes: int, threads: int, args, checkpoint: Path, photos: Path, out: Path) -> dict:
    """One `inference.py` command; returns its wall time and the summary's videos and animating seconds."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [
        *(launcher if processes > 1 else [sys.executable]), "inference.py", "--image", str(photos),
        "--pretrained_model", str(checkpoint), "--output_dir", str(out), "--num_of_vid", str(args.videos),
        "--seed", str(args.seed), "--device", args.device, "--batch_size", str(args.batch_size), "--overwrite",
        "--no_progress", *(["--steps", str(args.steps)] if args.steps else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = MADE.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    made, seconds = int(found[1]), float(found[2])
    return {"wall": wall, "made": made, "seconds": seconds, "processes": int(found[3])}


def same_bytes(a: Path, b: Path) -> bool:
    videos = sorted(p.name for p in a.glob("*.mp4"))
    return videos == sorted(p.name for p in b.glob("*.mp4")) and all(
        (a / name).read_bytes() == (b / name).read_bytes() for name in videos
    )


def spread(values: list[float], digits: int = 1) -> str:
    low, high = min(values), max(values)
    return (
        f"{low:.{digits}f}"
        if len(values) == 1 or round(low, digits) == round(high, digits)
        else f"{low:.{digits}f}-{high:.{digits}f}"
    )


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (each rank its own GPU)")
    p.add_argument("--processes", default="2", help="comma-separated process counts to compare with 1, e.g. 2,4")
    p.add_argument("--photos", type=int, default=16, help="photos animated per run")
    p.add_argument("--videos", type=int, default=1, help="videos per photo (--num_of_vid)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: inference.py's)")
    p.add_argument("--batch_size", type=int, default=1, help="videos denoised together, per process")
    p.add_argument("--repeats", type=int, default=2, help="runs of each configuration (the table gives the spread)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads shared out among the processes")
    p.add_argument("--size", default="64x48", help="photo size HxW (inference.py resizes to the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="markdown file (default: bench/results/inference_sharded_<device>.md)")
    args = p.parse_args(argv)
    counts = [1] + [int(n) for n in args.processes.split(",") if int(n) != 1]
    size = tuple(int(v) for v in args.size.split("x"))
    cpu = args.device == "cpu"

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_sharded_") as tmp:
        work = Path(tmp)
        checkpoint, photos = build_model(work, args.photos, size, args.seed)
        for n in counts:
            threads = max(args.threads // n, 1) if cpu else args.threads
            runs = []
            for r in range(args.repeats):
                print(f"{n} process(es), run {r + 1} of {args.repeats} ...", flush=True)
                runs.append(run_inference(n, threads, args, checkpoint, photos, work / f"out_{n}_{r}"))
            rows.append((n, threads, runs, same_bytes(work / "out_1_0", work / f"out_{n}_0")))

    def end_to_end(runs):
        return [60 * run["made"] / run["wall"] for run in runs]

    def steady(runs):
        return [60 * run["made"] / run["seconds"] for run in runs]

    base_e2e, base_steady = end_to_end(rows[0][2]), steady(rows[0][2])
    videos = args.photos * args.videos
    lines = [
        f"# Batch inference: N processes against 1 ({device_name(args.device)})",
        "",
        f"Tiny preset, seeded untrained weights; {args.photos} photos x {args.videos} video(s) = {videos} videos per run, "
        f"batch {args.batch_size} per process, steps {args.steps or 'default'}, {args.repeats} runs per row (ranges are "
        "the spread of the runs; ratios compare the slowest N-process run with the fastest 1-process run and the other "
        "way round).",
        "",
        "Command: `" + " ".join(["python bench/bench_inference_sharded.py", *(sys.argv[1:] if argv is None else argv)]) + "`",
        "",
        "| processes | threads / process | wall s | videos / min, end to end | ratio | videos / min, steady | ratio "
        "| same bytes as 1 process |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]  # fmt: skip
    for n, threads, runs, same in rows:
        e2e, st = end_to_end(runs), steady(runs)
        e2e_ratio = [min(e2e) / max(base_e2e), max(e2e) / min(base_e2e)]
        st_ratio = [min(st) / max(base_steady), max(st) / min(base_steady)]
        cells = [
            str(n), str(threads if cpu else "-"), spread([run["wall"] for run in runs]), spread(e2e),
            spread(e2e_ratio, 2) + "x", spread(st), spread(st_ratio, 2) + "x", "yes" if same else "no",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return write_report("\n".join(lines) + "\n", args.out, f"inference_sharded_{args.device.split(':')[0]}.md")


if __name__ == "__main__":
    main()
