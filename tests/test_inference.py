"""inference.py end to end with tiny components on the CPU: both checkpoint formats, seeds, odd photos, errors."""

import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from traps import assert_refused_and_explained

import inference
from models.diffusion.samplers import DEFAULT_SAMPLER

ROOT = Path(__file__).resolve().parents[1]


def read_back(path: Path):
    """(frames [F, H, W, 3] uint8, fps) as OpenCV decodes them."""
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return np.stack(frames), fps


def args_for(parts, out, *extra):
    return [
        "--pretrained_model",
        str(parts["ours"]),
        "--output_dir",
        str(out),
        "--steps",
        "2",
        "--frames",
        "4",
        "--fps",
        "10",
        "--no_progress",
        *extra,
    ]


def test_released_format_in_dataset_mode_as_a_subprocess(parts, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "inference.py",
        "--pretrained_model",
        str(parts["released"]),
        "--preset",
        "tiny",
        "--vae",
        parts["vae"],
        "--clip",
        parts["clip"],
        "--dataset",
        str(parts["dataset"]),
        "--output_dir",
        str(out),
        "--steps",
        "2",
        "--frames",
        "4",
        "--fps",
        "10",
        "--num_of_vid",
        "2",
        "--no_progress",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for stem in ("clip0", "clip1"):
        assert (out / f"{stem}_input.png").is_file()
        for k in range(2):
            frames, fps = read_back(out / f"{stem}_sample{k}.mp4")
            assert frames.shape == (4, 64, 48, 3) and fps == 10
            meta = json.loads((out / f"{stem}_sample{k}.json").read_text())
            assert meta["source"] == str(parts["dataset"] / f"{stem}.mp4")
            assert (meta["start_frame"], meta["frames"], meta["fps"], meta["sample_index"]) == (0, 4, 10, k)
            assert (meta["sampler"], meta["steps"], meta["seed"], meta["preprocessing"]) == (DEFAULT_SAMPLER, 2, 0, "standard")
            assert meta["checkpoint"] == str(parts["released"])
    samples = [read_back(out / f"clip0_sample{k}.mp4")[0] for k in range(2)]
    assert np.abs(samples[0][1:].astype(int) - samples[1][1:]).mean() > 1  # each sample has its own seed


def test_our_format_photo_with_gif_png_and_default_frames(parts, tmp_path):
    photo = tmp_path / "look.jpg"
    Image.new("RGB", (500, 700), (200, 30, 60)).save(photo)
    args = [
        "--pretrained_model",
        str(parts["ours"]),
        "--image",
        str(photo),
        "--output_dir",
        str(tmp_path / "o"),
        "--steps",
        "2",
        "--gif",
        "--png_frames",
        "--no_progress",
    ]
    assert inference.main(args) == 0
    frames, fps = read_back(tmp_path / "o" / "look_sample0.mp4")
    assert frames.shape == (8, 64, 48, 3) and fps == 25  # the checkpoint's frame count, the original's fps
    assert len(Image.open(tmp_path / "o" / "look_sample0.gif").getdata()) == 64 * 48
    assert len(list((tmp_path / "o" / "look_sample0_frames").glob("frame_*.png"))) == 8
    assert Image.open(tmp_path / "o" / "look_input.png").size == (48, 64)


def test_same_seed_same_video_whatever_the_batch(parts, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(photos / f"p{i}.png")

    def video(name, *extra):
        assert inference.main(args_for(parts, tmp_path / name, "--image", str(photos), *extra)) == 0
        return read_back(tmp_path / name / "p1_sample0.mp4")[0].astype(int)

    first, again = video("a", "--seed", "3"), video("b", "--seed", "3", "--batch_size", "2")
    other = video("c", "--seed", "4")
    assert np.abs(first - again).max() <= 1  # one uint8 step of leeway for float rounding across batch shapes
    assert np.abs(first[1:] - other[1:]).mean() > 1


def odd_photos(folder: Path) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 90), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (80, 60, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.new("CMYK", (50, 70), (10, 200, 30, 0)).save(folder / "cmyk.jpg")
    Image.new("RGB", (3, 2), (0, 255, 0)).save(folder / "tiny.png")
    Image.new("RGB", (3000, 2200), (0, 0, 255)).save(folder / "huge.jpg", quality=50)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (255, 255, 0)).save(buffer, format="JPEG", exif=exif)
    (folder / "rotated.jpg").write_bytes(buffer.getvalue())
    (folder / "notes.jpg").write_text("this is not a photo")
    return ["gray", "rgba", "cmyk", "tiny", "huge", "rotated"]


def test_odd_photos_and_a_text_file_named_jpg(parts, tmp_path, capsys):
    good = odd_photos(tmp_path / "odd")
    code = inference.main(args_for(parts, tmp_path / "out", "--image", str(tmp_path / "odd"), "--resize_mode", "crop"))
    assert code == 1
    err = capsys.readouterr()
    assert "notes.jpg" in err.out + err.err and "not an image" in err.out + err.err
    for stem in good:
        frames, _ = read_back(tmp_path / "out" / f"{stem}_sample0.mp4")
        assert frames.shape == (4, 64, 48, 3)
    assert not list((tmp_path / "out").glob("notes*"))


def test_broken_video_is_skipped_and_random_start_frame(parts, tmp_path, capsys):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for name in ("clip0.mp4", "clip1.mp4"):
        (dataset / name).write_bytes((parts["dataset"] / name).read_bytes())
    (dataset / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    out = tmp_path / "out"
    assert inference.main(args_for(parts, out, "--dataset", str(dataset), "--start_frame", "random", "--seed", "1")) == 1
    assert "broken.mp4" in capsys.readouterr().out
    starts = [json.loads((out / f"clip{i}_sample0.json").read_text())["start_frame"] for i in range(2)]
    assert all(0 <= s <= 2 for s in starts)  # 6-frame clips, 4-frame windows
    assert (
        inference.main(args_for(parts, tmp_path / "again", "--dataset", str(dataset), "--start_frame", "random", "--seed", "1"))
        == 1
    )
    assert starts == [json.loads((tmp_path / "again" / f"clip{i}_sample0.json").read_text())["start_frame"] for i in range(2)]


def test_start_frame_past_the_end_fails_that_video(parts, tmp_path, capsys):
    assert inference.main(args_for(parts, tmp_path / "o", "--dataset", str(parts["dataset"]), "--start_frame", "9")) == 1
    assert "too short" in capsys.readouterr().out


def test_setup_errors_exit_2_with_a_clear_message(parts, tmp_path, capsys):
    assert inference.main(["--pretrained_model", str(tmp_path / "missing.pth"), "--image", "x.jpg"]) == 2
    assert "dropbox.com" in capsys.readouterr().err
    page = tmp_path / "FashionFlow_checkpoint.pth"  # what a dl=0 link downloads
    page.write_text("<!DOCTYPE html>\n<html><head><title>Dropbox</title></head></html>\n")
    assert inference.main(["--pretrained_model", str(page), "--image", "x.jpg"]) == 2
    err = capsys.readouterr().err
    assert "is not a checkpoint but an HTML page" in err and "dl=1" in err and "weights_only" not in err
    assert inference.main(args_for(parts, tmp_path / "o", "--image", "x.jpg", "--frames", "5")) == 2
    assert "multiple of 2" in capsys.readouterr().err
    assert inference.main(args_for(parts, tmp_path / "o", "--dataset", str(tmp_path / "nowhere"))) == 2
    assert "does not exist" in capsys.readouterr().err
    assert inference.main(args_for(parts, tmp_path / "o", "--image", "x.jpg", "--vae", str(tmp_path / "novae"))) == 2
    assert "--vae" in capsys.readouterr().err


def test_missing_photo_and_empty_glob_are_reported(parts, tmp_path, capsys):
    photo = tmp_path / "ok.png"
    Image.new("RGB", (48, 64)).save(photo)
    code = inference.main(
        args_for(parts, tmp_path / "o", "--image", str(photo), str(tmp_path / "gone.jpg"), str(tmp_path / "*.webp"))
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "gone.jpg" in out and "no such file" in out and "no file matches" in out
    assert (tmp_path / "o" / "ok_sample0.mp4").is_file()


def test_pickled_code_in_the_checkpoint_never_runs(parts, tmp_path, pickle_trap):
    trap = tmp_path / "trap.pth"
    torch.save({"net": pickle_trap, "adapter": {}}, trap)
    argv = [*args_for(parts, tmp_path / "out", "--image", "x.jpg"), "--pretrained_model", str(trap)]
    run = subprocess.run([sys.executable, "inference.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert_refused_and_explained(run.stderr, trap)
    assert not pickle_trap.sprung


# ---- nothing lost, nothing overwritten


def photo(path: Path, colour) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 64), colour).save(path)
    return path


def test_unusable_output_dir_and_negative_seed_are_refused_before_any_work(parts, tmp_path, capsys):
    photo_path = photo(tmp_path / "p.png", (0, 0, 0))
    not_a_folder = tmp_path / "out.txt"
    not_a_folder.write_text("")
    assert inference.main(args_for(parts, not_a_folder, "--image", str(photo_path))) == 2
    assert f"--output_dir {not_a_folder} is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        inference.main(args_for(parts, tmp_path / "out", "--image", str(photo_path), "--seed", "-5"))
    assert "argument --seed: expected an integer >= 0, got -5" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def assert_each_input_kept_its_outputs(out: Path, photos: list[Path]):
    """One sidecar per input, naming it, next to an input png of that photo's own colour."""
    sidecars = sorted(out.glob("*_sample0.json"))
    sources = {json.loads(s.read_text())["source"]: s for s in sidecars}
    assert len(sidecars) == len(photos) and set(sources) == {str(p) for p in photos}
    for source, sidecar in sources.items():
        stem = sidecar.name.removesuffix("_sample0.json")
        own = np.asarray(Image.open(source))[0, 0]
        assert np.abs(np.asarray(Image.open(out / f"{stem}_input.png"))[0, 0].astype(int) - own).max() <= 2, source


def test_inputs_with_colliding_names_each_keep_their_outputs(parts, tmp_path):
    photos = [
        photo(tmp_path / "d1" / "a.jpg", (250, 0, 0)),
        photo(tmp_path / "d2" / "a.jpg", (0, 250, 0)),
        photo(tmp_path / "d1" / "a_2.jpg", (0, 0, 250)),
        photo(tmp_path / "d3" / "A.png", (250, 250, 0)),  # the same name where the filesystem ignores case
    ]
    assert inference.main(args_for(parts, tmp_path / "out", "--image", *map(str, photos))) == 0
    assert_each_input_kept_its_outputs(tmp_path / "out", photos)


def test_long_names_neither_stop_the_run_nor_collide(parts, tmp_path):
    folder = tmp_path / "photos"
    photos = [
        photo(folder / f"{'x' * 236}.png", (250, 0, 0)),  # the temporary file of `<stem>_input.png` did not fit
        photo(folder / f"{'y' * 245}_1.png", (0, 250, 0)),  # `<stem>_sample0.json` itself does not fit
        photo(folder / f"{'y' * 245}_2.png", (0, 0, 250)),  # nor does this one, and both are cut to the same start
        photo(folder / "z.png", (250, 250, 0)),
    ]
    assert inference.main(args_for(parts, tmp_path / "out", "--image", str(folder))) == 0
    assert_each_input_kept_its_outputs(tmp_path / "out", photos)


def test_unusable_folder_entries_are_reported_and_the_rest_animated(parts, tmp_path, capsys):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "clip0.mp4").write_bytes((parts["dataset"] / "clip0.mp4").read_bytes())
    (dataset / "folder.mp4").mkdir()
    (dataset / "loop.mp4").symlink_to("loop.mp4")
    assert inference.main(args_for(parts, tmp_path / "out", "--dataset", str(dataset))) == 1
    said = capsys.readouterr()
    assert "folder.mp4: a folder, not a file" in said.out and "loop.mp4: a broken symbolic link or a link loop" in said.out
    assert "failed    2 input(s)" in said.out and (tmp_path / "out" / "clip0_sample0.mp4").is_file()


def test_compile_flag_picks_full_by_default_or_regional(parts):
    """--compile alone compiles each network whole, --compile regional their repeated blocks in place; both lazily,
    so loading costs nothing here (test_pipeline.py runs a compiled pipeline)."""
    from models.pipeline.model_source import ModelSource
    from models.serving.animate import load_pipeline

    parse = inference.build_parser().parse_args
    assert parse([]).compile is None and parse(["--compile"]).compile == "full"
    assert parse(["--compile", "regional"]).compile == "regional"
    regional, _ = load_pipeline(ModelSource(parts["ours"], device="cpu"), compile="regional")
    assert type(regional.unet).__name__ == "SpaceTimeUnet" and regional.static_decode_shapes
    assert regional.unet.mid_attn._compiled_call_impl is not None
    full, _ = load_pipeline(ModelSource(parts["ours"], device="cpu"), compile="full")
    assert type(full.unet).__name__ == "OptimizedModule" and full.static_decode_shapes
    with pytest.raises(ValueError, match="compile mode must be one of"):
        load_pipeline(ModelSource(parts["ours"], device="cpu"), compile="max-autotune")
