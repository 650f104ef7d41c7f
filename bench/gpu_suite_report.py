"""The report of bench/gpu_suite.sh, from the raw folder its parts wrote: which figures still wait for a GPU (at the
top), the paper bench's figures (its parts merged into one report), the golden test, the torchrun check, sharded
inference, the environment, and each part's status and time.

    python bench/gpu_suite_report.py --raw DIR --out bench/results/gpu_H100.md [--dry_run]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_paper import merge_results, report_markdown  # noqa: E402
from gpu_goals import GOALS_PATH, update_goals  # noqa: E402

PAPER_PARTS = ("inference", "compiled", "offload_sync", "paper")  # the parts that run bench_paper.py

# What the last GPU session could not measure (bench/results/gpu_H200.md), in the suite's order of value:
# (key, what it is, the part that measures it)
WAITING = (
    ("eager", "eager end to end, photo -> mp4 (the decoder without channels_last)", "inference"),
    ("mp4", "mp4 streamed while decoding: time to the first frame at the encoder and to the last byte", "inference"),
    ("compiled", "end to end with `--compile` (UNet and decoder): the 1.5 s goal on an H100", "compiled"),
    ("torchrun", "1-GPU NCCL `torchrun` training, checkpoint and resume", "torchrun"),
    ("offload", "`enable_model_cpu_offload()` on CUDA: peak memory and time of one video", "offload_sync"),
    ("sync", "whether the sampling loop synchronises with the GPU, and the loop's overhead", "offload_sync"),
    ("sharded", "sharded batch inference over the GPUs present", "sharded_inference"),
    ("kernels", "where a UNet call's time goes: its kernels, eager, compiled and with CUDA graphs", "paper"),
    ("batch_auto", "what `train.py --batch_size auto` picks at paper scale, and its clips/s against the original's", "paper"),
    ("attention_batch", "temporal attention past 65,535 sequences in one call and in slices: the batch-32 slowdown?", "paper"),
)


def read_status(raw: Path) -> dict:
    """part -> {"rc": exit status or "skipped", "seconds": ..., "limit": ...}, from gpu_suite.sh's status.tsv."""
    status = {}
    path = raw / "status.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rc, seconds, limit = line.split("\t")
        status[name] = {"rc": rc, "seconds": int(seconds), "limit": int(limit)}
    return status


def paper_results(raw: Path) -> tuple[dict, list[str]]:
    """The bench_paper.py parts' figures merged, and a note for each JSON that could not be read."""
    runs, notes = [], []
    for part in PAPER_PARTS:
        path = raw / f"paper_{part}.json"
        if path.is_file():
            try:
                runs.append(json.loads(path.read_text()))
            except json.JSONDecodeError as error:
                notes.append(f"`{path.name}` could not be read: {error}")
    return merge_results(runs), notes


def produced(key: str, results: dict, status: dict) -> bool:
    """Whether this run produced the figure `key` of WAITING (on whatever device it ran), in a finished section or
    in what a stopped one had measured."""

    def section(name: str) -> dict:
        return results.get(name) or results.get("partial", {}).get(name, {})

    if key == "eager":
        return "end_to_end" in section("inference").get("ours", {})
    if key == "mp4":
        return "first_frame" in section("inference").get("ours", {}).get("end_to_end", {})
    if key == "compiled":
        return bool(section("compiled"))
    if key == "offload":
        return any(row.get("offload") == "model" for row in section("offload").values())
    if key == "sync":
        return "sync_check" in section("sync")
    if key in ("kernels", "batch_auto", "attention_batch"):
        return bool(section(key))
    part = {"torchrun": "torchrun", "sharded": "sharded_inference"}[key]
    return status.get(part, {}).get("rc") == "0"


def part_outcome(name: str, status: dict, budget: int) -> str:
    if name not in status:
        return "not run (not in PARTS)"
    s = status[name]
    if s["rc"] == "skipped":
        return f"skipped: too little of the {budget} s budget was left"
    if s["rc"] == "0":
        return f"ok, {s['seconds']} s (limit {s['limit']} s)"
    if s["rc"] in ("124", "137"):
        return f"stopped by its time limit of {s['limit']} s"
    return f"failed (exit {s['rc']}) after {s['seconds']} s; see {name}.log"


def waiting_markdown(results: dict, status: dict, budget: int, dry_run: bool) -> list[str]:
    rows = [(what, part, produced(key, results, status)) for key, what, part in WAITING]
    if dry_run:
        lines = ["## Dry run", "", "On the CPU at smoke sizes (`DRY_RUN=1`): it checks that every part of the suite runs "
                 "and measures nothing for a GPU, so every figure below still waits for one. Produced here:", ""]  # fmt: skip
        lines += [f"- {'yes' if done else '**NO**'}: {what} (part `{part}`)" for what, part, done in rows]
        return lines
    left = [(what, part) for what, part, done in rows if not done]
    lines = ["## Still waiting for a GPU after this run", ""]
    for what, part in left:
        outcome = part_outcome(part, status, budget)
        if outcome.startswith("ok"):
            outcome = f"ran ({outcome}) without producing it; see {part}.log and the sections below"
        lines.append(f"- {what}: part `{part}` {outcome}")
    if not left:
        lines.append("- nothing: every figure that waited was measured in this run (below)")
    measured = [what for what, part, done in rows if done]
    if measured:
        lines += ["", "Measured in this run: " + "; ".join(measured) + "."]
    return lines


def log_lines(path: Path, pattern) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if pattern(line)] if path.is_file() else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", required=True, help="the folder gpu_suite.sh's parts wrote (status.tsv, logs, JSON)")
    p.add_argument("--out", required=True, help="the markdown report")
    p.add_argument("--order", default=" ".join(PAPER_PARTS), help="the suite's parts, in the order they run")
    p.add_argument("--budget", type=int, default=480, help="the suite's budget in seconds")
    p.add_argument("--seconds", type=int, default=None, help="the suite's time so far")
    p.add_argument("--dry_run", action="store_true", help="the suite ran on the CPU at smoke sizes")
    args = p.parse_args(argv)
    raw = Path(args.raw)
    status = read_status(raw)
    results, notes = paper_results(raw)
    device = results.get("meta", {}).get("device", "(no paper bench figures)")
    lines = [f"# GPU suite{' dry run' if args.dry_run else ''}: {device}", ""]
    lines += waiting_markdown(results, status, args.budget, args.dry_run)
    if "meta" in results:
        lines += ["", *report_markdown(results).splitlines()[1:]]  # its title is ours
    lines += [f"- {note}" for note in notes]

    lines += ["", "## Golden test (`pytest tests/test_model.py -k golden`)", ""]
    found = log_lines(raw / "golden_test.log", lambda line: any(w in line for w in ("passed", "failed", "error", "collected")))
    lines += [f"    {line}" for line in found[-3:]] or ["(no result; see golden_test.log)"]
    lines += ["", "## 1-GPU torchrun training, checkpoint and resume (`bash bench/gpu_torchrun.sh`)", ""]
    lines += [f"- {line}" for line in log_lines(raw / "torchrun.log", lambda line: line.startswith(("PASS", "FAIL")))] or [
        "(no result; see torchrun.log)"
    ]
    lines += ["", "## Sharded batch inference (`bench/bench_inference_sharded.py`)", ""]
    sharded = raw / "inference_sharded.md"
    lines += sharded.read_text().splitlines()[2:] if sharded.is_file() else ["(no result; see sharded_inference.log)"]

    lines += ["", "## Environment", ""]
    environment = raw / "environment.txt"
    lines += [f"    {line}" for line in (environment.read_text().splitlines() if environment.is_file() else [])]
    lines += ["", f"## Parts (in order; budget {args.budget} s)", ""]
    for name in ["standins", *args.order.split()]:
        if name in status:
            lines.append(f"- {name}: {part_outcome(name, status, args.budget)}")
    if args.seconds is not None:
        lines.append(f"- whole suite: {args.seconds} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    if "meta" in results:  # a dry run's goals stay beside its report, never in bench/results/
        goals = raw / "gpu_goals.json" if args.dry_run else GOALS_PATH
        update_goals(results, device=device, date=results["meta"]["date"], command="bash bench/gpu_suite.sh", path=goals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
