import numpy as np
import pytest

from models.data.synthetic import GARMENTS, PATTERNS, make_synthetic_dataset, render_clip, sample_params
from models.data.video_io import count_frames, probe_video, read_video_frames


def params(seed: int):
    return sample_params(np.random.default_rng(seed))


def test_render_clip_shape_and_determinism():
    clip = render_clip(params(0), 6, (64, 48))
    assert clip.shape == (6, 64, 48, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, render_clip(params(0), 6, (64, 48)))
    assert not np.array_equal(clip, render_clip(params(1), 6, (64, 48)))


def test_clip_shows_motion_smoothly():
    clip = render_clip(params(3), 24, (64, 48)).astype(np.float64) / 255
    steps = np.abs(np.diff(clip, axis=0)).mean(axis=(1, 2, 3))
    assert steps.mean() > 2e-3  # the figure moves every frame
    assert np.abs(clip[-1] - clip[0]).mean() > 4e-3
    assert steps.max() < 0.03  # and smoothly: no cuts or jumps


def test_frame_looks_like_a_figure_on_a_light_background():
    p = params(4)
    frame = render_clip(p, 1, (128, 96))[0].astype(np.float64) / 255
    corners = frame[[2, 2, 40, 40], [2, -3, 2, -3]]
    assert corners.min() > 0.75  # plain light background
    background = np.array(p.background)
    foreground = np.abs(frame - background).max(-1) > 0.15
    rows, cols = np.nonzero(foreground)
    assert rows.max() - rows.min() > 0.8 * 128  # a standing, full-length figure...
    assert 0.2 * 96 < cols.max() - cols.min() < 0.8 * 96  # ...narrower than the frame
    assert abs(cols.mean() - 48) < 10  # and centred
    # the garment colour is the commonest foreground colour around the waist
    waist = frame[int(128 * 0.4), 40:56]
    assert np.abs(waist - np.array(p.colour)).sum(-1).min() < 0.5


def test_looks_vary_across_videos():
    drawn = [params(seed) for seed in range(40)]
    colours = np.array([p.colour for p in drawn])
    assert colours.std(axis=0).min() > 0.1
    assert {p.pattern for p in drawn} == set(PATTERNS)
    assert {p.garment for p in drawn} == set(GARMENTS)
    assert np.array([p.skin for p in drawn]).std(axis=0).min() > 0.05


def test_render_clip_rejects_bad_sizes():
    with pytest.raises(ValueError, match="size"):
        render_clip(params(0), 2, (4, 4))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion_dataset")
    return root, make_synthetic_dataset(root, n_train=3, n_test=2, frames=10, size=(64, 48), seed=7)


def test_dataset_layout(dataset):
    root, result = dataset
    assert sorted(p.name for p in (root / "train").iterdir()) == [f"synthetic_{i:04d}.mp4" for i in range(3)]
    assert len(list((root / "test").glob("*.mp4"))) == 2
    assert result["written"] == 5 and result["reused"] == 0
    assert result["train"][0] == root / "train" / "synthetic_0000.mp4"
    info = probe_video(result["test"][1])
    assert (info.frames, info.fps, info.height, info.width) == (10, 25.0, 64, 48)
    assert count_frames(result["test"][1]) == 10


def test_dataset_is_reused_and_reproducible(dataset, tmp_path):
    root, first = dataset
    again = make_synthetic_dataset(root, n_train=3, n_test=2, frames=10, size=(64, 48), seed=7)
    assert again["reused"] == 5 and again["written"] == 0

    same = make_synthetic_dataset(tmp_path / "a", n_train=1, n_test=0, frames=10, size=(64, 48), seed=7)
    assert same["train"][0].read_bytes() == first["train"][0].read_bytes()
    other = make_synthetic_dataset(tmp_path / "b", n_train=1, n_test=0, frames=10, size=(64, 48), seed=8)
    a, b = read_video_frames(same["train"][0]), read_video_frames(other["train"][0])
    assert (a - b).abs().mean() > 0.02


def test_videos_in_a_dataset_differ(dataset):
    _, result = dataset
    middles = [read_video_frames(p, start=5, count=1)[0] for p in result["train"]]
    garments = [m[:, 22:30, 18:30].mean(dim=(1, 2)) for m in middles]  # around the waist
    for i in range(len(garments)):
        for j in range(i + 1, len(garments)):
            assert (garments[i] - garments[j]).abs().max() > 0.05
