import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from models.core.manifest import merge_manifests, read_manifest
from models.data.dataset import LatentVideoDataset
from models.data.projection import choose_starts, project_dataset
from models.data.video_io import count_frames, read_video_frames, write_mp4
from models.networks.encoders import FrozenEncoders
from models.networks.tiny_components import build_tiny_vae, save_tiny_encoders
from project_latent_space import main

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 48)  # the tiny preset's frames (H, W)
BAD = {
    "empty.mp4": "empty or not a video",
    "notavideo.mp4": "not a video",
    "truncated.mp4": "truncated",
    "short.mp4": "too short: 3 frames, need 8",
}


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    vae, _ = save_tiny_encoders(tmp_path_factory.mktemp("encoders"))
    return vae


@pytest.fixture(scope="module")
def good_videos(samples_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    for video in sorted((samples_dir / "videos").glob("*.mp4")):
        shutil.copy(video, folder / video.name)
    assert len(list(folder.iterdir())) >= 2
    return folder


@pytest.fixture(scope="module")
def mixed_videos(good_videos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    for video in good_videos.iterdir():
        shutil.copy(video, folder / video.name)
    real = sorted(good_videos.iterdir())[0].read_bytes()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "truncated.mp4").write_bytes(real[: int(len(real) * 0.3)])
    (folder / "notavideo.mp4").write_text("these are shopping notes, not a video\n")
    write_mp4(torch.rand(3, 3, *SIZE, generator=torch.Generator().manual_seed(0)), folder / "short.mp4")
    return folder


def project(dataset, output, vae_dir, *extra) -> int:
    argv = ["--dataset", str(dataset), "--output_dir", str(output), "--preset", "tiny", "--vae", str(vae_dir)]
    return main([*argv, "--device", "cpu", "--no_progress", *extra])


@pytest.fixture(scope="module")
def mixed_run(mixed_videos, vae_dir, tmp_path_factory):
    """The script as a user runs it, on real clips and broken files."""
    output = tmp_path_factory.mktemp("projected")
    command = [sys.executable, "project_latent_space.py", "--dataset", str(mixed_videos), "--output_dir", str(output),
               "--preset", "tiny", "--vae", str(vae_dir), "--device", "cpu", "--batch_size", "3"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    return result, output


def test_script_projects_good_videos_and_names_each_bad_one(mixed_run, mixed_videos):
    result, output = mixed_run
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    for name, reason in BAD.items():
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(name))
        assert reason in line, (name, line)
        assert not (output / f"{name[:-4]}.pt").exists()
    assert "projected     2 clips" in result.stdout and "skipped       4 videos" in result.stdout, log
    assert sorted(p.name for p in output.iterdir()) == sorted(
        ["blue01.pt", "blue01_image.pt", "green03.pt", "green03_image.pt", "manifest.jsonl"]
    )  # no temporary files left behind


def test_outputs_match_the_source_frames_and_the_manifest(mixed_run, mixed_videos):
    _, output = mixed_run
    manifest = read_manifest(output)
    assert sorted(manifest) == ["blue01", "green03"]
    for name, entry in manifest.items():
        assert entry["source"] == str(mixed_videos / f"{name}.mp4")
        assert (entry["frames"], entry["size"], entry["latent_shape"]) == (8, [64, 48], [8, 4, 16, 12])
        assert (entry["preprocessing"], entry["seed"], entry["clip_index"]) == ("standard", 0, 0)
        assert 0 <= entry["start_frame"] <= 70 - 8
        image = torch.load(output / f"{name}_image.pt", weights_only=True)
        latents = torch.load(output / f"{name}.pt", weights_only=True)
        assert image.shape == (3, 64, 48) and image.dtype == torch.float32
        assert latents.shape == (8, 4, 16, 12) and torch.isfinite(latents).all()
        first = read_video_frames(entry["source"], start=entry["start_frame"], count=1, size=SIZE)[0]
        torch.testing.assert_close(image, first, atol=0, rtol=0)  # the clip really starts at start_frame
    assert manifest["blue01"]["start_frame"] != manifest["green03"]["start_frame"]
    dataset = LatentVideoDataset(output, frames=8, preprocessing="standard")
    assert [dataset[i]["latents"].shape for i in range(len(dataset))] == [(8, 4, 16, 12)] * 2


def point_posterior_vae(directory: Path) -> Path:
    """A tiny VAE whose log-variance is -30 everywhere, so any posterior sample is its mean (to 3e-7 of a unit)."""
    vae = build_tiny_vae(0)
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:] = 0
        vae.quant_conv.bias[channels:] = -30
    vae.save_pretrained(directory)
    return directory


def frames_read_the_originals_way(video: Path, start: int, count: int) -> torch.Tensor:
    """[count, 3, 640, 512] as the original's projection built them: seek each frame, RGB, torchvision's bilinear
    Resize of a PIL image, ToTensor (a contiguous copy), stacked."""
    cap = cv2.VideoCapture(str(video))
    frames = []
    for index in range(start, start + count):
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
        assert ok, (video, index)
        image = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)).resize((512, 640), Image.BILINEAR)
        frames.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().float().div(255))
    cap.release()
    return torch.stack(frames)


def test_projected_latents_equal_the_originals_projection_of_a_real_clip(good_videos, tmp_path):
    # channels-last frames made the CPU GroupNorm cancel digits: these latents were 4% of their scale off (issue 12)
    vae_dir = point_posterior_vae(tmp_path / "vae")
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(good_videos / "blue01.mp4", folder / "blue01.mp4")
    encoders = FrozenEncoders.from_pretrained(vae=vae_dir, clip=None, preprocessing="legacy")
    # batch_size 1 encodes frame by frame as the original did; batching only reorders float32 sums (~5e-5 of the scale)
    summary = project_dataset(folder, tmp_path / "out", encoders, frames=2, batch_size=1, size=(640, 512),
                              preprocessing="legacy", vae=str(vae_dir), progress=False)  # fmt: skip
    assert summary.projected == ["blue01"]
    saved = torch.load(tmp_path / "out" / "blue01.pt", weights_only=True)
    start = read_manifest(tmp_path / "out")["blue01"]["start_frame"]
    with torch.no_grad():
        direct = torch.cat([
            encoders.vae.encode(frame[None]).latent_dist.sample() * encoders.vae.config.scaling_factor
            for frame in frames_read_the_originals_way(folder / "blue01.mp4", start, 2)
        ])  # fmt: skip
    assert saved.shape == direct.shape == (2, 4, 160, 128)
    error = (saved - direct).abs().max() / direct.abs().max()
    assert error <= 1e-5, f"projected latents differ from the original's by {error:.2e} of their scale"


def test_rerun_resumes_and_is_deterministic(good_videos, vae_dir, tmp_path, capsys):
    assert project(good_videos, tmp_path, vae_dir, "--clips_per_video", "2") == 0
    names = ["blue01", "blue01_clip1", "green03", "green03_clip1"]
    assert sorted(read_manifest(tmp_path)) == names
    first = {n: torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in names}
    starts = {n: e["start_frame"] for n, e in read_manifest(tmp_path).items()}
    for stem in ("blue01", "green03"):  # two clips of 8 in 70 frames never overlap
        assert abs(starts[stem] - starts[f"{stem}_clip1"]) >= 8
    # a crash after writing green03_clip1's tensors but mid-way through its manifest line
    manifest = tmp_path / "manifest.jsonl"
    kept = [line for line in manifest.read_text().splitlines() if '"green03_clip1"' not in line]
    manifest.write_text("\n".join(kept) + '\n{"name": "green03_cl')
    (tmp_path / "blue01.pt").touch()
    before = (tmp_path / "blue01.pt").stat().st_mtime_ns
    capsys.readouterr()
    with pytest.warns(UserWarning, match="manifest.jsonl:4: ignoring a line"):  # the closed-off partial line
        assert project(good_videos, tmp_path, vae_dir, "--clips_per_video", "2") == 0
    report = capsys.readouterr().out
    assert "projected     1 clips" in report and "already done  3 clips" in report
    assert (tmp_path / "blue01.pt").stat().st_mtime_ns == before  # done clips are not rewritten
    assert sorted(read_manifest(tmp_path)) == names
    for n in names:  # seeded per video: the re-projected clip is the same as the first time
        torch.testing.assert_close(torch.load(tmp_path / f"{n}.pt", weights_only=True), first[n])


def test_other_settings_into_the_same_folder_are_refused(good_videos, vae_dir, tmp_path):
    assert project(good_videos, tmp_path, vae_dir) == 0
    with pytest.raises(ValueError, match=r"frames=8 \(now 16\).*new --output_dir"):
        project(good_videos, tmp_path, vae_dir, "--frames", "16")
    with pytest.raises(ValueError, match=r"frames=8 \(now 16\), preprocessing='standard' \(now 'legacy'\)\);"):
        project(good_videos, tmp_path, vae_dir, "--frames", "16", "--preprocessing", "legacy")


def test_the_same_vae_folder_spelled_differently_resumes(good_videos, vae_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(vae_dir.parent)
    assert project(good_videos, tmp_path, vae_dir.name) == 0  # relative
    capsys.readouterr()
    assert project(good_videos, tmp_path, vae_dir.resolve()) == 0  # absolute: the same folder
    assert "already done  2 clips" in capsys.readouterr().out


def test_only_bad_videos_exit_nonzero(mixed_videos, vae_dir, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in BAD:
        shutil.copy(mixed_videos / name, folder / name)
    assert project(folder, tmp_path / "out", vae_dir) == 1
    report = capsys.readouterr().out
    assert "skipped       4 videos" in report
    for name, reason in BAD.items():  # in-process too, so that mutation testing counts these checks
        assert any(line.strip().startswith(f"{name}: ") and reason in line for line in report.splitlines()), name


def test_a_video_exactly_one_clip_long_is_projected(vae_dir, tmp_path):
    folder = tmp_path / "videos"
    write_mp4(torch.rand(8, 3, *SIZE, generator=torch.Generator().manual_seed(0)), folder / "eight.mp4")
    encoders = FrozenEncoders.from_pretrained(vae=vae_dir, clip=None, preprocessing="standard")
    summary = project_dataset(folder, tmp_path / "out", encoders, frames=8, size=SIZE, preprocessing="standard",
                              vae=str(vae_dir), progress=False)  # fmt: skip
    assert summary.projected == ["eight"] and read_manifest(tmp_path / "out")["eight"]["start_frame"] == 0


def test_a_container_that_understates_its_length_is_counted(good_videos, vae_dir, tmp_path, monkeypatch):
    import models.data.projection
    from models.data.video_io import VideoInfo

    real = models.data.projection.probe_video
    monkeypatch.setattr(models.data.projection, "probe_video", lambda path: VideoInfo(3, *list(vars(real(path)).values())[1:]))
    encoders = FrozenEncoders.from_pretrained(vae=vae_dir, clip=None, preprocessing="standard")
    summary = project_dataset(good_videos, tmp_path / "out", encoders, frames=8, size=SIZE, preprocessing="standard",
                              vae=str(vae_dir), progress=False)  # fmt: skip
    assert summary.projected == ["blue01", "green03"] and not summary.skipped


def test_a_finished_video_is_not_opened_again(good_videos, vae_dir, tmp_path, monkeypatch):
    import models.data.projection

    encoders = FrozenEncoders.from_pretrained(vae=vae_dir, clip=None, preprocessing="standard")
    options = dict(frames=8, clips_per_video=2, size=SIZE, preprocessing="standard", vae=str(vae_dir), progress=False)
    assert len(project_dataset(good_videos, tmp_path, encoders, **options).projected) == 4

    def no_opening(path):
        raise AssertionError(f"{path} was opened although all its clips are done")

    monkeypatch.setattr(models.data.projection, "probe_video", no_opening)
    monkeypatch.setattr(models.data.projection, "iter_video_frames", no_opening)
    again = project_dataset(good_videos, tmp_path, encoders, **options)
    assert sorted(again.already_done) == ["blue01", "blue01_clip1", "green03", "green03_clip1"]
    assert not again.projected and not again.failed


def test_videos_cut_short_are_skipped_or_reframed_in_process(vae_dir, tmp_path, capsys):
    # our mp4s keep their index at the front (faststart), so a cut file still advertises its 20 frames
    full = write_mp4(torch.rand(20, 3, *SIZE, generator=torch.Generator().manual_seed(0)), tmp_path / "full.mp4")
    data = full.read_bytes()
    folder = tmp_path / "cut"
    folder.mkdir()
    for percent in (10, 30, 70):
        (folder / f"cut{percent}.mp4").write_bytes(data[: len(data) * percent // 100])
    encoders = FrozenEncoders.from_pretrained(vae=vae_dir, clip=None, preprocessing="standard")
    summary = project_dataset(folder, tmp_path / "out", encoders, frames=8, size=SIZE, preprocessing="standard",
                              vae=str(vae_dir), progress=False)  # fmt: skip
    assert sorted(summary.skipped) == ["cut10.mp4", "cut30.mp4"] and not summary.failed
    assert summary.skipped["cut10.mp4"] == "empty or not a video: no frame could be decoded"
    log = capsys.readouterr()
    assert "skipped cut10.mp4: empty or not a video" in log.err and "cut10" not in log.out  # logged on stderr
    decodable = count_frames(folder / "cut30.mp4")
    assert 0 < decodable < 8
    assert summary.skipped["cut30.mp4"] == f"truncated: decoding stopped at frame {decodable} of 20 advertised"
    # decodes fewer frames than advertised, but enough: the clip is placed again inside what decodes
    assert summary.projected == ["cut70"]
    entry = read_manifest(tmp_path / "out")["cut70"]
    assert entry["start_frame"] + 8 <= count_frames(folder / "cut70.mp4") < 20


class FailingOnce:
    """Real encoders that fail on the first clip, as a driver error would."""

    def __init__(self, encoders):
        self.encoders, self.calls = encoders, 0

    def latent_size(self, height, width):
        return self.encoders.latent_size(height, width)

    def encode_frames(self, frames, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("device lost")
        return self.encoders.encode_frames(frames, **kwargs)


class Recording:
    """Real encoders that record what each clip is encoded from: its frames, its noise seed, its chunk size."""

    def __init__(self, encoders):
        self.encoders, self.calls = encoders, []

    def latent_size(self, height, width):
        return self.encoders.latent_size(height, width)

    def encode_frames(self, frames, *, generator, chunk_size):
        self.calls.append({"frames": frames.clone(), "seed": generator.initial_seed(), "chunk_size": chunk_size})
        return self.encoders.encode_frames(frames, generator=generator, chunk_size=chunk_size)


def test_each_clip_is_its_source_frames_with_its_own_noise(good_videos, vae_dir, tmp_path):
    def run(seed, out):
        encoders = Recording(FrozenEncoders.from_pretrained(vae=vae_dir, clip=None, preprocessing="standard"))
        project_dataset(good_videos, out, encoders, frames=8, clips_per_video=2, seed=seed, batch_size=3, size=SIZE,
                        preprocessing="standard", vae=str(vae_dir), progress=False)  # fmt: skip
        entries = sorted(read_manifest(out).values(), key=lambda e: (e["source"], e["clip_index"]))
        return encoders.calls, entries

    calls, entries = run(0, tmp_path / "a")
    assert len(calls) == len(entries) == 4
    for call, entry in zip(calls, entries):
        source = read_video_frames(entry["source"], start=entry["start_frame"], count=8, size=SIZE)
        torch.testing.assert_close(call["frames"], source, atol=0, rtol=0)  # frames start_frame .. start_frame + 7
        assert call["chunk_size"] == 3  # --batch_size
        stem = Path(entry["source"]).stem
        assert entry == {
            "name": stem if entry["clip_index"] == 0 else f"{stem}_clip1",
            "source": str(good_videos / f"{stem}.mp4"),
            "start_frame": entry["start_frame"],
            "frames": 8,
            "size": [64, 48],
            "latent_shape": [8, 4, 16, 12],
            "seed": 0,
            "clip_index": entry["clip_index"],
            "preprocessing": "standard",
            "vae": str(vae_dir),
        }
        image = torch.load(tmp_path / "a" / f"{entry['name']}_image.pt", weights_only=True)
        torch.testing.assert_close(image, source[0], atol=0, rtol=0)
        assert torch.load(tmp_path / "a" / f"{entry['name']}.pt", weights_only=True).shape == (8, 4, 16, 12)
    assert sorted(e["clip_index"] for e in entries) == [0, 0, 1, 1]
    seeds = [call["seed"] for call in calls]
    assert len(set(seeds)) == 4, "two clips share their VAE noise"
    assert [call["seed"] for call in run(0, tmp_path / "b")[0]] == seeds  # reproducible
    other_calls, other_entries = run(1, tmp_path / "c")
    assert not set(seeds) & {call["seed"] for call in other_calls}  # --seed changes every clip's noise
    # and where clips start: per video and per seed
    starts = [[e["start_frame"] for e in entries if e["source"].endswith(f"{stem}.mp4")] for stem in ("blue01", "green03")]
    assert starts[0] != starts[1]
    assert [e["start_frame"] for e in other_entries] != [e["start_frame"] for e in entries]


def test_with_decoding_one_video_ahead_each_clip_still_comes_from_its_own_video(vae_dir, tmp_path):
    folder = tmp_path / "videos"
    for i in range(4):  # enough videos that the one decoded ahead is never the last
        write_mp4(torch.rand(10, 3, *SIZE, generator=torch.Generator().manual_seed(i)), folder / f"v{i}.mp4")
    encoders = Recording(FrozenEncoders.from_pretrained(vae=vae_dir, clip=None, preprocessing="standard"))
    summary = project_dataset(folder, tmp_path / "out", encoders, frames=8, size=SIZE, preprocessing="standard",
                              vae=str(vae_dir), progress=False)  # fmt: skip
    assert summary.projected == ["v0", "v1", "v2", "v3"] and summary.frames_encoded == 32
    manifest = read_manifest(tmp_path / "out")
    for call, name in zip(encoders.calls, summary.projected):
        entry = manifest[name]
        assert entry["source"] == str(folder / f"{name}.mp4")
        source = read_video_frames(entry["source"], start=entry["start_frame"], count=8, size=SIZE)
        torch.testing.assert_close(call["frames"], source, atol=0, rtol=0)


def test_an_unexpected_error_fails_that_video_only(good_videos, vae_dir, tmp_path, capsys):
    encoders = FailingOnce(FrozenEncoders.from_pretrained(vae=vae_dir, clip=None, preprocessing="standard"))
    summary = project_dataset(good_videos, tmp_path, encoders, frames=8, size=SIZE, preprocessing="standard",
                              vae=str(vae_dir), progress=False)  # fmt: skip
    assert list(summary.failed) == ["blue01.mp4"]
    # the error and where it was raised (the last frame of its traceback: FailingOnce.encode_frames, above)
    assert re.fullmatch(r"RuntimeError: device lost \(at test_projection\.py:\d+\)", summary.failed["blue01.mp4"])
    assert summary.projected == ["green03"] and summary.exit_code == 1
    assert "blue01.mp4: RuntimeError: device lost" in summary.report()
    log = capsys.readouterr().err  # the whole traceback, for the bug report
    assert "FAILED blue01.mp4:\nTraceback (most recent call last):\n" in log
    assert "RuntimeError: device lost\n" in log and "device lost\n\n" not in log


def test_ranks_split_the_videos_with_the_same_result(good_videos, vae_dir, tmp_path):
    encoders = FrozenEncoders.from_pretrained(vae=vae_dir, clip=None, preprocessing="standard")
    options = dict(frames=8, size=SIZE, preprocessing="standard", vae=str(vae_dir), progress=False)
    single = project_dataset(good_videos, tmp_path / "one", encoders, **options)
    parts = [project_dataset(good_videos, tmp_path / "two", encoders, rank=r, world_size=2, **options) for r in (0, 1)]
    assert [p.projected for p in parts] == [["blue01"], ["green03"]] and single.projected == ["blue01", "green03"]
    assert sorted(p.name for p in (tmp_path / "two").glob("manifest*")) == ["manifest.rank0.jsonl", "manifest.rank1.jsonl"]
    merge_manifests(tmp_path / "two")
    assert [p.name for p in (tmp_path / "two").glob("manifest*")] == ["manifest.jsonl"]
    one, two = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    assert one == two
    for name in one:
        torch.testing.assert_close(
            torch.load(tmp_path / "one" / f"{name}.pt", weights_only=True),
            torch.load(tmp_path / "two" / f"{name}.pt", weights_only=True),
        )


def test_clashing_output_names_are_skipped(good_videos, vae_dir, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(good_videos / "blue01.mp4", folder / "blue01.mp4")
    shutil.copy(good_videos / "blue01.mp4", folder / "blue01.mov")
    encoders = FrozenEncoders.from_pretrained(vae=vae_dir, clip=None, preprocessing="standard")
    summary = project_dataset(folder, tmp_path / "out", encoders, frames=8, size=SIZE, preprocessing="standard",
                              vae=str(vae_dir), progress=False)  # fmt: skip
    assert summary.projected == ["blue01"]
    assert "clash with blue01.mov" in summary.skipped["blue01.mp4"]


@pytest.mark.parametrize("length,frames,clips", [(70, 8, 1), (70, 8, 3), (70, 8, 8), (241, 70, 3), (16, 8, 2)])
def test_choose_starts_places_non_overlapping_clips_inside_the_video(length, frames, clips):
    for seed in range(200):
        starts = choose_starts(length, frames, clips, random.Random(seed))
        assert len(starts) == clips and starts == sorted(starts)
        assert starts[0] >= 0 and starts[-1] + frames <= length
        assert all(b - a >= frames for a, b in zip(starts, starts[1:]))
    firsts = {choose_starts(length, frames, 1, random.Random(s))[0] for s in range(3000)}
    assert firsts == set(range(length - frames + 1))  # every start can be drawn


def test_choose_starts_when_clips_must_overlap():
    starts = choose_starts(10, 8, 5, random.Random(0))
    assert starts == [0, 1, 2]  # only three distinct starts exist
    assert choose_starts(7, 8, 1, random.Random(0)) == []
    assert choose_starts(8, 8, 3, random.Random(0)) == [0]  # one clip's worth of frames: one start
    overlapping = choose_starts(20, 8, 3, random.Random(0))
    assert overlapping == [0, 6, 12] and np.all(np.diff(overlapping) > 0)


def test_user_errors_print_one_message_without_a_traceback(good_videos, vae_dir, tmp_path):
    not_a_folder = tmp_path / "out.txt"
    not_a_folder.write_text("")
    base = [sys.executable, "project_latent_space.py", "--dataset", str(good_videos), "--preset", "tiny", "--vae", str(vae_dir)]
    for extra, expected in [
        (["--output_dir", str(not_a_folder)], f"project_latent_space.py: error: --output_dir {not_a_folder} is a file"),
        (["--output_dir", str(tmp_path / "out"), "--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
        (["--output_dir", str(tmp_path / "out"), "--frames", "0"], "argument --frames: expected an integer >= 1, got 0"),
    ]:
        run = subprocess.run([*base, *extra, "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert expected in run.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


# ---- nothing lost, nothing overwritten

KILL_AT_SECOND_TENSOR = """
import os, signal, sys, torch
import project_latent_space

save, saved = torch.save, []

def save_half_then_die(obj, path, *args, **kwargs):
    save(obj, path, *args, **kwargs)
    saved.append(path)
    if len(saved) == 2:  # the first video's latents, after its image
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_half_then_die
project_latent_space.main(sys.argv[1:])
"""


def test_kill_9_mid_write_leaves_no_broken_tensor_and_a_rerun_finishes_the_same(good_videos, vae_dir, tmp_path):
    killed = tmp_path / "killed"
    argv = ["--dataset", str(good_videos), "--output_dir", str(killed), "--preset", "tiny", "--vae", str(vae_dir)]
    run = subprocess.run([sys.executable, "-c", KILL_AT_SECOND_TENSOR, *argv, "--device", "cpu", "--no_progress"], cwd=ROOT)
    assert run.returncode == -signal.SIGKILL
    assert len(list(killed.glob(".blue01.pt.*.tmp"))) == 1, "not killed mid-write"
    for tensor in killed.glob("*.pt"):  # every complete name holds a complete tensor
        torch.load(tensor, weights_only=True)
    assert project(good_videos, killed, vae_dir) == 0
    assert project(good_videos, tmp_path / "straight", vae_dir) == 0
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in (tmp_path / "straight").iterdir())
    assert read_manifest(killed) == read_manifest(tmp_path / "straight")
    for name in read_manifest(killed):
        for suffix in (".pt", "_image.pt"):
            torch.testing.assert_close(
                torch.load(killed / f"{name}{suffix}", weights_only=True),
                torch.load(tmp_path / "straight" / f"{name}{suffix}", weights_only=True),
                rtol=0, atol=0,
            )  # fmt: skip


def test_long_names_and_entries_that_are_not_videos_are_reported(good_videos, vae_dir, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    fits, too_long = "b" * 245, "c" * 250  # `<name>_image.pt` is 254 and 259 bytes
    shutil.copy(good_videos / "blue01.mp4", folder / f"{fits}.mp4")
    shutil.copy(good_videos / "blue01.mp4", folder / f"{too_long}.mp4")
    (folder / "folder.mp4").mkdir()
    (folder / "loop.mp4").symlink_to("loop.mp4")
    encoders = FrozenEncoders.from_pretrained(vae=vae_dir, clip=None, preprocessing="standard")
    summary = project_dataset(folder, tmp_path / "out", encoders, frames=8, size=SIZE, preprocessing="standard",
                              vae=str(vae_dir), progress=False)  # fmt: skip
    assert summary.projected == [fits] and summary.failed == {}
    assert LatentVideoDataset(tmp_path / "out", frames=8).names == [fits]
    assert "file name too long" in summary.skipped[f"{too_long}.mp4"]
    assert summary.skipped["folder.mp4"] == "a folder, not a file"
    assert summary.skipped["loop.mp4"] == "a broken symbolic link or a link loop"
    assert "skipped       3 videos" in summary.report()


def test_the_summary_of_several_ranks_adds_up_and_reads_as_printed():
    from models.data.projection import ProjectionSummary

    parts = [
        ProjectionSummary(projected=["a"], already_done=["b"], skipped={"x.mp4": "too short"}, frames_encoded=8),
        ProjectionSummary(projected=["c", "d"], failed={"y.mp4": "RuntimeError: boom"}, frames_encoded=16),
    ]
    total = ProjectionSummary.merge(parts)
    assert (total.projected, total.already_done, total.frames_encoded) == (["a", "c", "d"], ["b"], 24)
    assert total.skipped == {"x.mp4": "too short"} and total.failed == {"y.mp4": "RuntimeError: boom"}
    assert total.exit_code == 1 and parts[0].exit_code == 0
    assert total.report() == (
        "projection summary\n"
        "  projected     3 clips (24 frames encoded)\n"
        "  already done  1 clips\n"
        "  skipped       1 videos\n"
        "    x.mp4: too short\n"
        "  failed        1 videos (unexpected errors)\n"
        "    y.mp4: RuntimeError: boom"
    )


def test_a_setting_is_the_same_folder_only_when_both_spellings_exist(tmp_path, monkeypatch):
    from models.core.manifest import same_setting

    monkeypatch.chdir(tmp_path)
    assert same_setting("org/vae", "org/vae") and not same_setting("org/vae", "./org/vae")  # hub ids: the text
    (tmp_path / "org" / "vae").mkdir(parents=True)
    assert same_setting("org/vae", str(tmp_path / "org" / "vae"))  # a folder: wherever it is spelled from
    assert not same_setting([64, 48], [64, 40]) and same_setting([64, 48], [64, 48])


def test_the_video_list_skips_hidden_files_and_keeps_folders_to_name_them(tmp_path):
    from models.data.projection import _unusable, list_videos

    for name in ("b.mp4", "a.mov", ".a.mp4.part"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "c_subfolder").mkdir()
    videos = list_videos(tmp_path)
    assert [p.name for p in videos] == ["a.mov", "b.mp4", "c_subfolder"]  # a folder is reported, not silently dropped
    assert _unusable(videos, 1, tmp_path) == {"c_subfolder": "a folder, not a file"}


def test_every_video_whose_outputs_would_overwrite_anothers_is_named(tmp_path):
    from models.data.projection import _unusable

    videos = [tmp_path / n for n in ("a.mov", "a.mp4", "b.mp4", "b_image.mp4", "c.mp4", "c_clip1.mp4", "d.mp4")]
    for video in videos:
        video.write_bytes(b"")
    assert sorted(_unusable(videos, 1, tmp_path)) == ["a.mp4", "b_image.mp4"]  # c_clip1.pt is free with one clip
    clashes = _unusable(videos, 2, tmp_path)
    assert sorted(clashes) == ["a.mp4", "b_image.mp4", "c_clip1.mp4"]
    assert "clash with c.mp4's" in clashes["c_clip1.mp4"] and "clash with b.mp4's" in clashes["b_image.mp4"]


def test_projection_encoders_take_the_asked_preprocessing_precision_and_device(vae_dir, monkeypatch):
    import models.networks.encoders
    from models.core.config import get_preset

    def vae_only(preprocessing, **kwargs):  # what projection.project loads: the VAE alone
        return FrozenEncoders.from_config(
            get_preset("tiny", preprocessing=preprocessing), vae=str(vae_dir), with_clip=False, **kwargs
        )

    encoders = vae_only("standard", dtype=torch.bfloat16)
    assert (encoders.preprocessing, encoders.dtype, encoders.device.type) == ("standard", torch.bfloat16, "cpu")
    assert encoders.clip is None
    asked, real_load = [], models.networks.encoders.load_vae

    def spy(name, *, device, dtype):  # the device reaches the loader; the weights stay on this CPU-only machine
        asked.append((device, dtype))
        return real_load(name, device="cpu", dtype=dtype)

    monkeypatch.setattr(models.networks.encoders, "load_vae", spy)
    vae_only("legacy", device="cuda:1", dtype=torch.float16)
    assert asked == [("cuda:1", torch.float16)]


def test_project_dataset_defaults_and_argument_checks(good_videos, vae_dir, tmp_path, capsys):
    encoders = Recording(FrozenEncoders.from_pretrained(vae=vae_dir, clip=None, preprocessing="standard"))
    output = tmp_path / "nested" / "one"  # made with its parents
    summary = project_dataset(good_videos, output, encoders, frames=1, size=SIZE, preprocessing="standard",
                              vae=str(vae_dir))  # fmt: skip
    assert summary.projected == ["blue01", "green03"]  # one-frame clips are clips too
    assert [e["seed"] for e in read_manifest(output).values()] == [0, 0]  # seed 0 by default
    assert [call["chunk_size"] for call in encoders.calls] == [8, 8]  # 8 frames per VAE call by default
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]
    assert "2/2" in bar and ("video/s" in bar or "s/video" in bar)  # a progress bar by default, counting videos
    assert "frames=2" in bar and summary.frames_encoded == 2  # and the frames encoded so far
    options = dict(preprocessing="standard", vae=str(vae_dir), progress=False)
    assert project_dataset(good_videos, tmp_path / "two", encoders, frames=1, batch_size=1, size=SIZE, **options).projected
    assert "2/2" not in capsys.readouterr().err  # progress=False: no bar
    for bad in ({"frames": 0}, {"clips_per_video": 0}, {"batch_size": 0}, {"size": (64,)}, {"size": (0, 48)}):
        with pytest.raises(ValueError, match="must be at least 1|size must be"):
            project_dataset(good_videos, tmp_path / "bad", encoders, **{"frames": 8, "size": SIZE, **bad}, **options)
