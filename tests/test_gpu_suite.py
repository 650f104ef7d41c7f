"""The GPU suite's rot check: bench/gpu_suite.sh runs every part on the CPU (`DRY_RUN=1`), so a lent GPU session
cannot lose its few minutes to a bash or Python error in the suite; and the pieces a CPU cannot reach (the sync
check's CUDA path, a part stopped by its limit, the report of what still waits) run here against stand-ins."""

import json
import os
import signal
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_paper  # noqa: E402
import gpu_goals  # noqa: E402
import gpu_suite_report  # noqa: E402

PARTS = ("inference", "compiled", "torchrun", "offload_sync", "golden_test", "sharded_inference", "paper")


@pytest.mark.gpu_suite
def test_dry_run_runs_every_part_of_the_gpu_suite_on_the_cpu(tmp_path):
    """Every part exits 0 and produces its figures; the paper bench's smoke figures are checked here too (its
    sections at tiny sizes, so that bench cannot rot between GPU sessions)."""
    raw = tmp_path / "raw"
    results_before = sorted(p.name for p in (ROOT / "bench" / "results").iterdir())
    # BUDGET: the suite skips what no longer fits (a failure in a dry run) before this test's own timeout
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "OUT": str(raw), "BUDGET": "840"}
    done = subprocess.run(["bash", "bench/gpu_suite.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    status = gpu_suite_report.read_status(raw)
    assert list(status) and set(status) == set(PARTS), status
    assert all(s["rc"] == "0" for s in status.values()), status
    report = (raw / "gpu_dry_run.md").read_text()
    assert report.startswith("# GPU suite dry run") and "**NO**" not in report
    assert report.count("- yes: ") == len(gpu_suite_report.WAITING)
    assert sorted(p.name for p in (ROOT / "bench" / "results").iterdir()) == results_before  # nothing written there

    figures = {
        part: json.loads((raw / f"paper_{part}.json").read_text()) for part in ("inference", "compiled", "offload_sync", "paper")
    }
    assert {part: f["errors"] for part, f in figures.items()} == dict.fromkeys(figures, {})
    assert all(f["meta"]["smoke"] is True and f["meta"]["flops"]["unet_call"] > 0 for f in figures.values())
    ours, original = figures["inference"]["inference"]["ours"], figures["inference"]["inference"]["original"]
    assert ours["steps"] == 4 and original["steps"] == 50 and original["extrapolated"]
    assert all(ours[k] > 0 for k in ("clip", "vae_encode", "unet_call", "vae_decode", "mp4"))
    assert ours["end_to_end"]["latency"] > 0 and figures["inference"]["inference"]["speedup"] > 0
    assert ours["student_end_to_end"]["latency"] > 0  # the 4-step (LCM) video a distilled student makes
    streamed, before = ours["end_to_end"], ours["end_to_end"]["before"]  # the mp4 while decoding, and after
    assert 0 < streamed["first_frame"] < streamed["decode_end"] <= streamed["last_byte"] == streamed["latency"]
    assert 0 < before["first_frame"] == before["decode_end"] < before["last_byte"]
    assert all(figures["compiled"]["compiled"][mode]["latency"] > 0 for mode in ("full", "regional"))
    rest = figures["paper"]
    eager = [r for r in rest["decoder"].values() if "compile_seconds" not in r]
    compiled = [r for r in rest["decoder"].values() if "compile_seconds" in r]
    assert eager and all(r["psnr_vs_fp32_db"] > 20 for r in eager)
    assert len(compiled) == 2 and all(r["max_error_vs_eager_rel"] < 1e-2 for r in compiled)  # full, regional
    assert set(rest["train"]) == set(bench_paper.train_settings(2, compiled=True))  # the paper part runs --compile
    assert all(r["seconds"] > 0 and r["peak_memory_mb"] > 0 for r in rest["train"].values())
    assert all(r["peak_memory_mb"] > 0 for r in rest["memory"].values())
    auto = rest["batch_auto"]  # --batch_size auto's probe: what it measured and chose
    assert auto["chosen"] in [{k: p[k] for k in ("batch_size", "checkpointing")} for p in auto["probes"] if p["seconds"]]
    assert "## `--batch_size auto`" in report and "Chosen: **batch" in report
    assert {"unet", "sdpa", "golden"} <= set(rest) and "## One video" in report
    offload = figures["offload_sync"]
    assert {row["offload"] for row in offload["offload"].values()} == {"none", "encoders", "model"}
    assert offload["sync"]["sync_check"]["applicable"] is False and offload["sync"]["loop_seconds"] > 0
    assert "PASS: DDP over a process group (gloo)" in (raw / "torchrun.log").read_text()
    assert "## Offloading (one whole video, 4 steps)" in report and "## Host synchronisation" in report
    goals = json.loads((raw / "gpu_goals.json").read_text())  # a dry run keeps its goals beside its report
    assert {"video_eager_s", "video_compiled_s", "unet_call_ms", "decode_frame_ms"} <= set(goals)


def test_sync_check_counts_each_synchronising_call_by_the_line_of_ours_that_made_it(monkeypatch):
    """The CUDA path of section_sync on the CPU: torch.cuda's sync debug mode stood in for, its warning raised
    from a function that lives in models/ (as the sampler's would) and from elsewhere."""
    modes = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    source = "import warnings\ndef step():\n    warnings.warn('called a synchronizing CUDA operation')\n"
    module = types.ModuleType("fake_sampler")
    exec(compile(source, str(ROOT / "models" / "fake_sampler.py"), "exec"), module.__dict__)

    def loop():
        for _ in range(3):
            module.step()
        warnings.warn("called a synchronizing CUDA operation", stacklevel=1)  # not in models/: counted where made
        warnings.warn("something else", stacklevel=1)  # not a sync: shown as usual

    with pytest.warns(UserWarning, match="something else"):
        found = bench_paper.sync_calls(loop)
    assert modes == ["warn", 0]  # on, then back to what it was
    assert found["applicable"] and found["syncs"] == 4
    assert found["where"]["models/fake_sampler.py:3"] == 3
    assert [k for k in found["where"] if k.startswith("tests/test_gpu_suite.py:")], found
    text = "\n".join(bench_paper.sync_markdown({"sampler": "ddpm", "steps": 3, "sync_check": found}))
    assert "**4 synchronising CUDA calls**" in text and "`models/fake_sampler.py:3`: 3" in text
    clean = {"sampler": "ddpm", "steps": 3, "sync_check": {"applicable": True, "syncs": 0, "where": {}}}
    assert "**no synchronising CUDA call**" in "\n".join(bench_paper.sync_markdown(clean))


def test_a_section_stopped_by_sigterm_keeps_what_it_measured(monkeypatch, tmp_path):
    """gpu_suite.sh's time limit sends SIGTERM: the running section ends as 'stopped', its partial figures and the
    sections before it are written, and the ones after it do not start."""
    bench = types.SimpleNamespace(
        device=torch.device("cpu"), frames=8, pipeline=types.SimpleNamespace(image_size=(64, 48)), flops={}, peaks={}, partial={}
    )  # fmt: skip
    monkeypatch.setattr(bench_paper, "Bench", lambda args: bench)
    handler = signal.getsignal(signal.SIGTERM)

    def offload(b):
        b.partial["offload"] = {"default": {"offload": "none", "peak_memory_mb": 1.0, "seconds": 1.0, "steps": 4}}
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the section")

    def sync(b):
        raise AssertionError("a section after a stopped one ran")

    monkeypatch.setattr(bench_paper, "section_golden", lambda b: {"skipped": "not here"})
    monkeypatch.setattr(bench_paper, "section_offload", offload)
    monkeypatch.setattr(bench_paper, "section_sync", sync)
    out = tmp_path / "figures.json"
    results = bench_paper.main(
        ["--smoke", "--sections", "golden,offload,sync", "--json", str(out), "--report", str(tmp_path / "r.md")]
    )
    assert results["errors"]["offload"].startswith("stopped by SIGTERM") and "sync" not in results["errors"]
    written = json.loads(out.read_text())
    assert written["golden"] == {"skipped": "not here"} and written["partial"]["offload"]["default"]["seconds"] == 1.0
    assert "What it had measured" in (tmp_path / "r.md").read_text()
    assert signal.getsignal(signal.SIGTERM) == handler  # put back


def test_the_report_says_which_figures_still_wait_and_why(tmp_path):
    rows = [
        ("inference", "0", 60, 120),
        ("compiled", "skipped", 0, 210),
        ("torchrun", "1", 30, 100),
        ("offload_sync", "124", 90, 90),
    ]
    (tmp_path / "status.tsv").write_text("".join("\t".join(map(str, row)) + "\n" for row in rows))
    (tmp_path / "torchrun.log").write_text("PASS: a\nFAIL: DDP over a process group (nccl)\n")
    stopped = {"errors": {"sync": "stopped by SIGTERM (a time limit) after 50 s"}, "partial": {"sync": {"sync_check": {}}}}
    (tmp_path / "paper_offload_sync.json").write_text(json.dumps(stopped))  # no meta: the run died before its first write
    out = tmp_path / "gpu_test.md"
    assert gpu_suite_report.main(["--raw", str(tmp_path), "--out", str(out), "--order", " ".join(PARTS)]) == 0
    text = out.read_text()
    waiting = text.split("## Still waiting for a GPU after this run")[1].split("\n## ")[0]
    assert "eager end to end" in waiting and "ran (ok, 60 s (limit 120 s)) without producing it" in waiting
    assert "part `compiled` skipped: too little of the 480 s budget was left" in waiting
    assert "part `torchrun` failed (exit 1)" in waiting
    assert "one video: part `offload_sync` stopped by its time limit of 90 s" in waiting  # the offload figure
    assert "Measured in this run: whether the sampling loop synchronises" in waiting  # before its section was stopped
    assert "part `sharded_inference` not run (not in PARTS)" in waiting
    assert "- FAIL: DDP over a process group (nccl)" in text


FAKE_PYTHON = """#!/usr/bin/env bash
# records each command; answers the suite's probe as a 1-GPU machine would; writes the report it is asked for
echo "$*" >>"$CALLS"
case "$1" in
  -c) printf 'H100_80GB_HBM3 1\\ntorch 2.11.0 cuda 13.0 diffusers 0.42.1 transformers 5.17.0\\n' ;;
  bench/gpu_suite_report.py) while [ $# -gt 0 ]; do [ "$1" = --out ] && echo report >"$2"; shift; done ;;
esac
"""


def test_on_a_gpu_the_suite_runs_its_parts_in_order_with_the_gpu_flags(tmp_path):
    """The branch a dry run cannot take, with a stand-in python that records what it is asked to run."""
    bin_dir, raw, calls = tmp_path / "bin", tmp_path / "raw", tmp_path / "calls.txt"
    bin_dir.mkdir()
    for name, text in (("python", FAKE_PYTHON), ("nvidia-smi", "#!/usr/bin/env bash\necho 'H100 80GB HBM3, 81559 MiB'\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PYTHON": str(bin_dir / "python"), "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(raw)}
    env |= {"CALLS": str(calls), "STANDINS": str(tmp_path / "standins"), "REPORT": str(tmp_path / "gpu.md")}
    done = subprocess.run(["bash", "bench/gpu_suite.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(gpu_suite_report.read_status(raw)) == ["standins", *PARTS]
    ran = calls.read_text().splitlines()
    paper = f"bench/bench_paper.py --device cuda --encoders {tmp_path / 'standins'} --sections"
    expected = [
        "-m models standins --output_dir " + str(tmp_path / "standins"),
        f"{paper} inference --json {raw}/paper_inference.json",
        f"{paper} compiled --compile --json {raw}/paper_compiled.json",
        "--device cuda --no_progress",  # gpu_torchrun.sh's projection
        "-m torch.distributed.run --standalone --nproc_per_node=1 train.py",
        f"{paper} offload,sync --json {raw}/paper_offload_sync.json",
        "-m pytest -q -p no:cacheprovider tests/test_model.py -k golden",
        f"bench/bench_inference_sharded.py --device cuda --processes 2 --photos 32 --repeats 1 --out {raw}/inference_sharded.md",
        f"{paper} kernels,memory,sdpa,golden,decoder,unet,train,batch_auto,attention_batch --compile --max_train_batch 32 "
        f"--json {raw}/paper_paper.json",
        f"bench/gpu_suite_report.py --raw {raw} --out {tmp_path / 'gpu.md'}",
    ]
    at = [next((i for i, line in enumerate(ran) if want in line), None) for want in expected]
    assert None not in at and at == sorted(at), list(zip(expected, at))
    assert (raw / "gpu.md").is_file() and "H100 80GB HBM3" in (raw / "environment.txt").read_text()

    calls.unlink()
    env |= {"BUDGET": "30", "PARTS": "inference torchrun"}  # 10 s left after the report's share: every part skipped
    done = subprocess.run(["bash", "bench/gpu_suite.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    status = {k: v["rc"] for k, v in gpu_suite_report.read_status(raw).items()}
    assert status == {"standins": "skipped", "inference": "skipped", "torchrun": "skipped"}
    assert not [line for line in calls.read_text().splitlines() if "bench_paper" in line or "train.py" in line]


def test_goals_come_from_the_newest_run_that_measured_each(tmp_path):
    """gpu_goals.json: the H200 run's figures read back, then a later run that measured only the UNet replaces that
    figure alone; the training ratios compare one configuration of ours with the original's."""
    path = tmp_path / "gpu_goals.json"
    old = json.loads((ROOT / "bench" / "results" / "gpu_H200_run1.json").read_text())
    gpu_goals.update_goals(old, device="NVIDIA H200", date="2026-11-26", command="old", path=path)
    goals = json.loads(path.read_text())
    assert goals["video_eager_s"]["value"] == pytest.approx(4.978, abs=1e-3)
    assert goals["unet_call_ms"] == {
        "value": 24.6926,
        "unit": "ms",
        "device": "NVIDIA H200",
        "date": "2026-11-26",
        "command": "old",
    }
    assert goals["train_speed_vs_original"]["value"] == pytest.approx(0.41994 / 0.67895, abs=1e-3)
    assert goals["train_memory_vs_original"]["value"] == pytest.approx(7141.81 / 92837.51, abs=1e-3)
    new = {"unet": {"fp16 + graphs": {"seconds": 0.011}}, "partial": {}}
    gpu_goals.update_goals(new, device="NVIDIA H100", date="2026-12-08", command="new", path=path)
    goals = json.loads(path.read_text())
    assert goals["unet_call_ms"]["value"] == pytest.approx(11.0) and goals["unet_call_ms"]["device"] == "NVIDIA H100"
    assert goals["video_eager_s"]["device"] == "NVIDIA H200"  # not measured by the new run: kept
    assert set(goals) <= set(gpu_goals.GOALS) and list(goals) == [k for k in gpu_goals.GOALS if k in goals]
