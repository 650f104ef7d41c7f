"""bench/results/gpu_goals.json: where each of the GPU path's goals stands (issue 24), one object per goal,
`{"value", "unit", "device", "date", "command"}`, each from the newest GPU run that measured it.

    python bench/gpu_goals.py bench/results/gpu_H200_run1.json bench/results/gpu_H200_run2.json   # re-read old runs

bench/gpu_suite_report.py updates the file after every GPU suite run; a figure a run did not measure keeps the
value of the run that did.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOALS_PATH = Path(__file__).resolve().parent / "results" / "gpu_goals.json"
# key -> (unit, the goal in words)
GOALS = {
    "video_compiled_s": ("s", "photo -> mp4 with --compile, default sampler, < 1.5 s on one H100"),
    "video_eager_s": ("s", "photo -> mp4 eager, default sampler, <= 3.0 s"),
    "compile_warm_s": ("s", "compiling on a warm inductor cache, <= 60 s"),
    "unet_call_ms": ("ms", "one paper-scale UNet call, the fastest configuration, <= 12 ms"),
    "decode_frame_ms": ("ms", "VAE decode per frame, the fastest configuration, <= 10 ms"),
    "mp4_after_decode_s": ("s", "time from the decode's end to the mp4's last byte, <= 0.1 s"),
    "train_speed_vs_original": ("x", "training samples per second, ours over the original's settings, >= 2"),
    "train_memory_vs_original": ("x", "training peak memory, ours over the original's, <= 1/3"),
}


def _latency(figure) -> float | None:
    """An end-to-end figure: a number (older runs) or {"latency": ...}."""
    if isinstance(figure, dict):
        return figure.get("latency")
    return figure


def goal_figures(results: dict) -> dict[str, float]:
    """The goals' values a (merged) bench_paper.py result holds, in their units; stopped sections count too."""

    def section(name: str) -> dict:
        return results.get(name) or results.get("partial", {}).get(name, {})

    found = {}
    ours = section("inference").get("ours", {})
    if _latency(ours.get("end_to_end")) is not None:
        found["video_eager_s"] = _latency(ours["end_to_end"])
    streamed = ours.get("end_to_end") if isinstance(ours.get("end_to_end"), dict) else {}
    if {"last_byte", "decode_end"} <= set(streamed):  # streamed writing: the tail after the last decoded frame
        found["mp4_after_decode_s"] = streamed["last_byte"] - streamed["decode_end"]
    elif ours.get("mp4") is not None:  # writing after decoding (runs before streaming): all of it
        found["mp4_after_decode_s"] = ours["mp4"]
    rows = {name: [row for row in section(name).values() if isinstance(row, dict)] for name in ("compiled", "unet", "decoder")}
    compiled = [_latency(row) for row in rows["compiled"] if _latency(row) is not None]
    if compiled:
        found["video_compiled_s"] = min(compiled)
    warm = [row["warm_compile_seconds"] for row in rows["compiled"] if "warm_compile_seconds" in row]
    if warm:
        found["compile_warm_s"] = min(warm)
    unet = [row["seconds"] for row in rows["unet"] if "seconds" in row]
    if unet:
        found["unet_call_ms"] = min(unet) * 1e3
    decoder = [row["seconds_per_frame"] for row in rows["decoder"] if "seconds_per_frame" in row]
    if decoder:
        found["decode_frame_ms"] = min(decoder) * 1e3
    train = section("train")
    original = next((row for name, row in train.items() if name.startswith("original")), None)
    mine = [row for name, row in train.items() if name.startswith("ours") and isinstance(row, dict)]
    if original and mine:
        # one configuration for both goals: the fastest of ours within a third of the original's memory, if any
        lean = [row for row in mine if row["peak_memory_mb"] <= original["peak_memory_mb"] / 3] or mine
        best = min(lean, key=lambda row: row["seconds"] / row.get("batch", 2))  # per sample; rows say batch 2 by default
        speed = best.get("batch", 2) / best["seconds"] / (original.get("batch", 2) / original["seconds"])
        found["train_speed_vs_original"] = speed
        found["train_memory_vs_original"] = best["peak_memory_mb"] / original["peak_memory_mb"]
    return found


def update_goals(results: dict, *, device: str, date: str, command: str, path: Path = GOALS_PATH) -> dict:
    """Write the goals a run measured over those of earlier runs; returns the file's content."""
    goals = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in goal_figures(results).items():
        goals[key] = {"value": round(value, 4), "unit": GOALS[key][0], "device": device, "date": date, "command": command}
    ordered = {key: goals[key] for key in GOALS if key in goals}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ordered, indent=2) + "\n")
    return ordered


def main(argv=None) -> int:
    """Re-read bench_paper.py JSON files, oldest first, into the goals file."""
    for name in argv if argv is not None else sys.argv[1:]:
        run = json.loads(Path(name).read_text())
        meta = run["meta"]
        update_goals(run, device=meta["device"], date=meta["date"], command=meta["command"])
    print(GOALS_PATH.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
