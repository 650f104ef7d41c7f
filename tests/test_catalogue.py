"""Animating a catalogue: ranks split the inputs with the same videos, reruns resume, the manifest and summary,
inputs listed lazily. Tiny components on the CPU; multi-process runs use torchrun with gloo."""

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import inference
from models.core.distributed import rank_share
from models.core.manifest import read_manifest
from models.pipeline.model_source import ModelSource
from models.serving.animate import AnimateSettings, animate, load_pipeline
from models.serving.catalogue import CatalogueSummary, animate_share, check_same_inputs
from models.serving.inference_io import image_inputs

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("seconds", "cpu_peak_rss_mb")  # how long and how much memory: differ from run to run


def photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        pixels = np.random.default_rng([seed, i]).integers(0, 255, (64, 48, 3), dtype=np.uint8)
        paths.append(folder / f"look{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def write_list(path: Path, lines) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def script_args(parts, out: Path, *extra) -> list[str]:
    return ["--pretrained_model", str(parts["ours"]), "--output_dir", str(out), "--steps", "2", "--frames", "4",
            "--no_progress", *extra]  # fmt: skip


def without(record: dict, keys) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def assert_same_outputs(a: Path, b: Path):
    """The same files: videos and pngs byte for byte, sidecars and manifest lines but for what was measured."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name.endswith((".mp4", ".png")):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
        elif name.endswith(".json"):  # sidecars
            assert without(json.loads((a / name).read_text()), MEASURED) == without(json.loads((b / name).read_text()), MEASURED)
    ours, theirs = read_manifest(a), read_manifest(b)
    assert {k: without(v, ("seconds", "status")) for k, v in ours.items()} == {
        k: without(v, ("seconds", "status")) for k, v in theirs.items()
    }


@pytest.fixture(scope="module")
def pipeline(parts):
    return load_pipeline(ModelSource(parts["ours"], device="cpu"))[0]


def settings_for(out: Path, **changes) -> AnimateSettings:
    base = dict(output_dir=str(out), num_videos=2, frames=4, steps=2, progress=False, record={"checkpoint": "tiny"})
    return AnimateSettings(**{**base, **changes})


# ---- ranks


def test_two_gloo_processes_write_the_same_bytes_as_one(parts, tmp_path):
    listed = write_list(tmp_path / "photos.txt", [*photos(tmp_path / "photos", 3), tmp_path / "gone.jpg"])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # torchrun's threads per process, for both
    one = subprocess.run(
        [sys.executable, "inference.py", *script_args(parts, tmp_path / "one", "--image_list", str(listed), "--num_of_vid", "2")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "inference.py"]
    two = subprocess.run(
        [*torchrun, *script_args(parts, tmp_path / "two", "--image_list", str(listed), "--num_of_vid", "2")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == two.returncode == 1, two.stderr[-4000:]  # the missing photo fails, the rest are made
    assert "made      6 videos" in one.stdout and "on 1 process(es)" in one.stdout
    assert "made      6 videos" in two.stdout and "on 2 process(es)" in two.stdout
    assert "gone.jpg: cannot read image" in two.stdout and "no such file" in two.stdout
    assert_same_outputs(tmp_path / "one", tmp_path / "two")
    manifest = read_manifest(tmp_path / "two")
    assert [p.name for p in (tmp_path / "two").glob("manifest*")] == ["manifest.jsonl"]  # the rank files merged
    assert sorted(manifest) == sorted(f"{stem}_sample{k}" for stem in ("look0", "look1", "look2", "gone") for k in (0, 1))
    assert [manifest[f"gone_sample{k}"]["status"] for k in (0, 1)] == ["failed", "failed"]
    assert manifest["look1_sample1"]["outputs"] == ["look1_input.png", "look1_sample1.mp4", "look1_sample1.json"]


def test_ranks_split_the_inputs_and_make_the_videos_one_process_makes(pipeline, tmp_path):
    inputs = image_inputs([str(p) for p in photos(tmp_path / "photos", 3)])
    whole = list(animate(pipeline, inputs, settings_for(tmp_path / "one", num_videos=1)))
    shares = [list(animate(pipeline, inputs, settings_for(tmp_path / "two", num_videos=1, rank=r, world_size=2))) for r in (0, 1)]
    assert [[r.index for r in share] for share in shares] == [[0, 2], [1]]
    assert [r.item.stem for r in whole] == [r.item.stem for r in sorted(sum(shares, []), key=lambda r: r.index)]
    assert_same_outputs(tmp_path / "one", tmp_path / "two")


def test_ranks_that_list_different_inputs_stop_before_any_work(monkeypatch, tmp_path):
    inputs = image_inputs([str(p) for p in photos(tmp_path, 2)])
    monkeypatch.setattr("models.serving.catalogue.all_gather_objects", lambda mine: [mine, (3, "another listing")])
    with pytest.raises(ValueError, match=r"ranks list different inputs \(inputs per rank: rank 0: 2, rank 1: 3\)"):
        check_same_inputs(inputs)


# ---- resuming


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_a_rerun_skips_complete_videos_and_makes_the_rest(pipeline, tmp_path, monkeypatch):
    inputs = image_inputs([str(p) for p in photos(tmp_path / "photos", 3)])
    out = tmp_path / "out"
    assert [r.skipped for r in animate(pipeline, inputs, settings_for(out))] == [0, 0, 0]
    first = mtimes(out)
    (out / "look1_sample1.mp4").unlink()  # a video without its mp4 is not complete
    Image.new("RGB", (40, 60), (9, 9, 9)).save(tmp_path / "photos" / "look2.png")  # a new photo under the same name
    again = list(animate(pipeline, inputs, settings_for(out)))
    assert [r.skipped for r in again] == [2, 1, 0] and all(r.ok and len(r.videos) == 2 for r in again)
    assert all(mtimes(out)[name] == first[name] for name in first if name.startswith("look0"))
    assert (
        json.loads((out / "look2_sample0.json").read_text())["source_bytes"] == (tmp_path / "photos" / "look2.png").stat().st_size
    )
    assert [r.skipped for r in animate(pipeline, inputs, settings_for(out, steps=3))] == [0, 0, 0]  # other settings
    assert [r.skipped for r in animate(pipeline, inputs, settings_for(out, steps=3))] == [2, 2, 2]
    assert [r.skipped for r in animate(pipeline, inputs, settings_for(out, steps=3, overwrite=True))] == [0, 0, 0]
    assert [r.skipped for r in animate(pipeline, inputs, settings_for(out, steps=3, low_memory=True))] == [2, 2, 2]

    def no_room(path, record):
        raise OSError(f"no space left on device: {path}")

    # a run with other settings that writes the first photo's mp4s but not their sidecars (killed in between)
    monkeypatch.setattr("models.serving.animate.write_sidecar", no_room)
    assert not next(animate(pipeline, image_inputs([str(tmp_path / "photos" / "look0.png")]), settings_for(out))).ok
    monkeypatch.undo()
    remade = {r.item.stem: r.skipped for r in animate(pipeline, inputs, settings_for(out, steps=3))}
    assert remade == {"look0": 0, "look1": 2, "look2": 2}  # its mp4s changed: not complete with steps=3 any more


def test_seeded_by_name_a_photo_added_to_the_folder_changes_no_other_video(parts, pipeline, tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "out"
    photos(folder, 2)
    by_name = settings_for(out, num_videos=1, seed_by="name")
    assert [r.skipped for r in animate(pipeline, image_inputs([str(folder)]), by_name)] == [0, 0]
    first = mtimes(out)
    Image.new("RGB", (48, 64), (200, 30, 30)).save(folder / "a_new.png")  # listed first: the others' indices shift
    again = list(animate(pipeline, image_inputs([str(folder)]), by_name))
    assert sorted((r.index, r.item.stem, r.skipped) for r in again) == [(0, "a_new", 0), (1, "look0", 1), (2, "look1", 1)]
    assert all(mtimes(out)[name] == first[name] for name in first)
    sidecar = json.loads((out / "look1_sample0.json").read_text())
    assert sidecar["seed_by"] == "name" and "input_index" not in sidecar
    # the same video as look1 animated on its own, the first input there
    alone = tmp_path / "alone"
    assert inference.main(script_args(parts, alone, "--image", str(folder / "look1.png"), "--seed_by", "name")) == 0
    assert (alone / "look1_sample0.mp4").read_bytes() == (out / "look1_sample0.mp4").read_bytes()
    # seeded by index (the default), the shift makes them again, differently
    assert [r.skipped for r in animate(pipeline, image_inputs([str(folder)]), settings_for(out, num_videos=1))] == [0, 0, 0]
    assert (alone / "look1_sample0.mp4").read_bytes() != (out / "look1_sample0.mp4").read_bytes()


KILL_IN_THE_SECOND_SIDECAR = """
import os, signal, sys
import inference
import models.serving.animate
from models.core.files import atomic_write

write_sidecar, written = models.serving.animate.write_sidecar, []

def die_half_written(path, record):
    written.append(path)
    if len(written) == 2:  # the second video's mp4 is complete, its sidecar half written
        atomic_write(path, lambda tmp: (open(tmp, "w").write('{"checkpoint": '), os.kill(os.getpid(), signal.SIGKILL)))
    return write_sidecar(path, record)

models.serving.animate.write_sidecar = die_half_written
sys.exit(inference.main(sys.argv[1:]))
"""


def test_kill_9_mid_run_then_rerun_gives_the_files_of_an_uninterrupted_run(parts, tmp_path, capsys):
    args = ["--image", str(tmp_path / "photos"), "--gif"]
    photos(tmp_path / "photos", 3)
    killed = tmp_path / "killed"
    run = subprocess.run([sys.executable, "-c", KILL_IN_THE_SECOND_SIDECAR, *script_args(parts, killed, *args)], cwd=ROOT)
    assert run.returncode == -signal.SIGKILL
    assert [p.name for p in killed.glob("*.json")] == ["look0_sample0.json"]
    assert (killed / "look1_sample0.mp4").is_file() and len(list(killed.glob(".look1_sample0.json.*.tmp"))) == 1
    assert inference.main(script_args(parts, killed, *args)) == 0
    said = capsys.readouterr().out
    assert "made      2 videos" in said and "skipped   1 videos" in said
    assert inference.main(script_args(parts, tmp_path / "straight", *args)) == 0
    assert_same_outputs(killed, tmp_path / "straight")
    assert read_manifest(killed)["look0_sample0"]["status"] == "skipped"


# ---- inputs, manifest, summary


def test_broken_photos_are_named_in_the_manifest_and_never_stop_the_rank(pipeline, tmp_path):
    good = photos(tmp_path / "photos", 2)
    (tmp_path / "notes.jpg").write_text("not a photo")
    (tmp_path / "folder.jpg").mkdir()
    listed = write_list(
        tmp_path / "list.txt", [good[0], tmp_path / "gone.jpg", tmp_path / "notes.jpg", "", tmp_path / "folder.jpg", good[1]]
    )
    out = tmp_path / "out"
    summary = animate_share(pipeline, image_inputs([], listed), settings_for(out, num_videos=1))
    assert (summary.made, summary.skipped) == (2, 0)
    reasons = {"gone.jpg": "no such file", "notes.jpg": "not an image", "folder.jpg": "a folder, not a file"}
    assert sorted(summary.failed) == sorted(str(tmp_path / name) for name in reasons)
    for name, reason in reasons.items():
        assert f"cannot read image {tmp_path / name}: {reason}" in summary.failed[str(tmp_path / name)]
    manifest = read_manifest(out)
    assert {name: entry["status"] for name, entry in manifest.items()} == {
        "look0_sample0": "done", "gone_sample0": "failed", "notes_sample0": "failed", "folder_sample0": "failed",
        "look1_sample0": "done",
    }  # fmt: skip
    assert manifest["look1_sample0"]["input_index"] == 4 and manifest["look1_sample0"]["seconds"] > 0
    assert manifest["notes_sample0"]["outputs"] == [] and "not an image" in manifest["notes_sample0"]["error"]
    assert manifest["look0_sample0"]["settings"]["steps"] == 2 and manifest["look0_sample0"]["settings"]["checkpoint"] == "tiny"


def test_in_a_log_every_progress_bar_refreshes_at_most_every_few_seconds(pipeline, tmp_path, monkeypatch):
    """Batch inference's stderr is often a file (torchrun, a redirected job log), where tqdm's own bars write a line
    per step: its bars are models/core/progress.py's (tests/test_training.py checks what that gives)."""
    from tqdm import tqdm

    from models.core.progress import NON_TTY_REFRESH_SECONDS

    bars, init = [], tqdm.__init__

    def recorded(bar, *args, **kwargs):
        init(bar, *args, **kwargs)
        bars.append(bar)

    monkeypatch.setattr(tqdm, "__init__", recorded)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log, even under pytest -s
    inputs = image_inputs([str(p) for p in photos(tmp_path / "photos", 2)])
    assert all(r.ok for r in animate(pipeline, inputs, settings_for(tmp_path / "out", num_videos=1, progress=True)))
    assert sorted(bar.desc for bar in bars) == ["denoising", "denoising", "videos"]
    assert all(bar.mininterval == NON_TTY_REFRESH_SECONDS for bar in bars)


def test_the_summary_of_several_ranks_adds_up():
    ranks = [
        CatalogueSummary(made=4, skipped=1, failed={"a.jpg": "no such file"}, seconds=60.0, processes=2),
        CatalogueSummary(made=2, skipped=3, failed={"b.jpg": "not an image"}, seconds=90.0, processes=2),
    ]
    total = CatalogueSummary.merge(ranks)
    assert (total.made, total.skipped, total.seconds, total.processes, total.exit_code) == (6, 4, 90.0, 2, 1)
    assert total.videos_per_hour == 240.0  # 6 videos in the slowest rank's 90 s
    assert total.report().splitlines() == [
        "inference summary",
        "  made      6 videos in 90.0 s on 2 process(es): 240 videos per hour",
        "  skipped   4 videos already made with these settings (--overwrite makes them again)",
        "  failed    2 input(s)",
        "    a.jpg: no such file",
        "    b.jpg: not an image",
    ]
    assert CatalogueSummary().exit_code == 0 and CatalogueSummary().videos_per_hour == 0.0


def test_output_stems_are_unique_and_the_same_on_every_rank(tmp_path):
    names = ["d1/a.jpg", "d2/a.jpg", "d1/a_2.jpg", "d3/A.png", "b.png", "c/b.jpg"]
    inputs = image_inputs([str(write_list(tmp_path / "list.txt", names))])  # --image list.txt is --image_list list.txt
    assert [item.stem for item in inputs] == ["a", "a_3", "a_2", "A_4", "b", "b_2"]
    shares = [list(rank_share(enumerate(inputs), rank, 4)) for rank in range(4)]
    assert sorted((i, item.stem) for share in shares for i, item in share) == list(enumerate(item.stem for item in inputs))


def test_a_long_image_list_is_listed_without_touching_a_file_and_keeps_no_path(tmp_path, monkeypatch):
    count, deep = 20_000, "/catalogue/" + "d" * 200

    def listing_peak(folder: str) -> int:
        """Peak memory of listing `count` photos in `folder` and picking rank 1's share of 8."""
        listed = write_list(tmp_path / "list.txt", (f"{folder}/product_{i:07d}_front.jpg" for i in range(count)))
        tracemalloc.start()
        try:
            inputs = image_inputs([], listed)
            share = [item.stem for _, item in rank_share(enumerate(inputs), 1, 8)]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(inputs) == count and len(share) == count // 8 and share[0] == "product_0000001_front"
        return peak

    stat = pathlib.Path.stat

    def stat_all_but_the_catalogue(path, **kwargs):
        assert not str(path).startswith("/catalogue"), f"listing touched {path}"
        return stat(path, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat_all_but_the_catalogue)
    monkeypatch.setattr(Image, "open", lambda *_: pytest.fail("listing opened a photo"))
    # pathlib (Python < 3.12) interns every path part: the process-wide table it grows would be measured too
    monkeypatch.setattr(sys, "intern", lambda text: text)
    listing_peak("/catalogue")  # once first: the first listing also imports PIL's image plugins
    extra = (listing_peak(deep) - listing_peak("/catalogue")) / count
    assert extra < 16, f"{extra:.0f} more bytes per photo for 200 more characters of path: the listing keeps paths"


def test_image_list_errors_name_the_file(parts, tmp_path, capsys):
    assert inference.main(script_args(parts, tmp_path / "o", "--image_list", str(tmp_path / "missing.txt"))) == 2
    assert f"--image_list {tmp_path / 'missing.txt'} not found" in capsys.readouterr().err
    assert (
        inference.main(script_args(parts, tmp_path / "o", "--image_list", str(write_list(tmp_path / "empty.txt", ["", " "]))))
        == 2
    )
    assert "is empty; pass photos with --image" in capsys.readouterr().err
