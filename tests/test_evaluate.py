"""Evaluation: SSIM/PSNR against scikit-image, the Fréchet distance against its closed form, the feature networks
through their real loaders (small, randomly initialised), pairing, and the command end to end."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from traps import assert_refused_and_explained

from models.core.files import UnsafeCheckpointError
from models.data.video_io import read_video_frames, write_mp4
from models.evaluation.evaluate import main, pair_videos, read_sidecar
from models.evaluation.feature_nets import (
    LPIPS,
    WEIGHTS,
    FIDInceptionV3,
    InceptionI3d,
    MissingWeightsError,
    load_i3d,
    load_inception,
    load_lpips,
    resolve_weights,
)
from models.evaluation.metrics import FeatureStats, frechet_distance, psnr, ssim

SIZE = (128, 96)  # (H, W) the end-to-end runs compare at, to stay fast on CPU


def _hwc(frame: torch.Tensor) -> np.ndarray:
    return frame.permute(1, 2, 0).double().numpy()


def _skimage_ssim(a, b) -> float:
    return structural_similarity(
        _hwc(a), _hwc(b), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1
    )


# --- SSIM / PSNR -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_frames(samples_dir):
    blue = read_video_frames(samples_dir / "videos" / "blue01.mp4", count=6)
    green = read_video_frames(samples_dir / "videos" / "green03.mp4", count=1)
    noisy = (blue[0] + 0.05 * torch.randn(blue[0].shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return [(blue[0], blue[5]), (blue[0], noisy), (blue[2], green[0])]


def test_ssim_and_psnr_match_scikit_image_on_real_frames(real_frames):
    for a, b in real_frames:
        assert ssim(a, b).item() == pytest.approx(_skimage_ssim(a, b), abs=1e-5)
        assert psnr(a, b).item() == pytest.approx(peak_signal_noise_ratio(_hwc(a), _hwc(b), data_range=1), abs=1e-4)
    a, b = real_frames[0]
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    assert psnr(a, a).item() == pytest.approx(100.0)  # identical frames: MSE floored, not infinite


def test_ssim_and_psnr_are_per_frame_over_leading_axes(real_frames):
    crops = [(a[:, 200:360, 150:270], b[:, 200:360, 150:270]) for a, b in real_frames]
    x, y = torch.stack([a for a, _ in crops]), torch.stack([b for _, b in crops])
    batched = ssim(x.unsqueeze(0), y.unsqueeze(0))
    assert batched.shape == (1, 3)
    torch.testing.assert_close(batched[0], torch.stack([ssim(a, b) for a, b in crops]))
    torch.testing.assert_close(psnr(x, y), torch.stack([psnr(a, b) for a, b in crops]))
    with pytest.raises(ValueError, match="one shape"):
        ssim(x, y[:, :, :-1])


# --- Fréchet distance --------------------------------------------------------------------------------


def _closed_form(mu1, mu2, eig1, eig2) -> float:
    # commuting covariances (shared eigenvectors): tr sqrt(S1 S2) = sum sqrt(eig1 * eig2)
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(eig1) - np.sqrt(eig2)) ** 2))


def test_frechet_distance_matches_closed_form_for_diagonal_and_commuting_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    eig1, eig2 = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = _closed_form(mu1, mu2, eig1, eig2)
    assert frechet_distance(mu1, np.diag(eig1), mu2, np.diag(eig2)) == pytest.approx(expected, rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    sigma1, sigma2 = q @ np.diag(eig1) @ q.T, q @ np.diag(eig2) @ q.T
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)
    # one-dimensional Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)


def test_frechet_distance_general_case_and_rank_deficient_identity():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    sigma1, sigma2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)  # non-commuting
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)
    low_rank = rng.normal(size=(40, 3)) @ rng.normal(size=(3, 40))  # features of 3 samples in 40 dims
    sigma = low_rank @ low_rank.T
    assert abs(frechet_distance(mu1[:1].repeat(40), sigma, mu1[:1].repeat(40), sigma)) < 1e-6 * np.trace(sigma)
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(mu1, sigma1, mu2[:4], sigma2[:4, :4])


def test_feature_stats_streamed_in_chunks_equal_numpy():
    features = np.random.default_rng(2).normal(size=(37, 8)) * 3 + 5
    stats = FeatureStats()
    for chunk in np.array_split(features, 4):
        stats.update(torch.from_numpy(chunk).float())
    mean, cov = stats.mean_cov()
    np.testing.assert_allclose(mean, features.astype(np.float32).mean(0), rtol=1e-6)
    np.testing.assert_allclose(cov, np.cov(features.astype(np.float32), rowvar=False), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats().mean_cov()


# --- feature networks ---------------------------------------------------------------------------------


def test_full_size_architectures_have_the_published_parameter_counts():
    # torchvision inception_v3 (27,161,264) less its aux head (3,326,696), with pytorch-fid's 1008-way fc
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 23_850_960
    lpips = LPIPS()
    assert sum(p.numel() for p in lpips.features.parameters()) == 2_469_696  # torchvision AlexNet `features`
    assert [head.model[1].weight.shape[1] for head in lpips.heads.values()] == [64, 192, 384, 256, 256]


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random BatchNorm statistics too, so a load that dropped them would change the outputs."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def test_i3d_loads_from_torchscript_and_from_a_state_dict(tmp_path):
    model = _randomised(InceptionI3d(width=1 / 32, num_classes=7), seed=0)
    torch.jit.script(model).save(str(tmp_path / "i3d_torchscript.pt"))
    torch.save(model.state_dict(), tmp_path / "rgb_imagenet.pt")
    clip = torch.randint(0, 256, (1, 3, 16, 40, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(clip, rescale=True, resize=True, return_features=True)
        scripted = load_i3d(tmp_path / "i3d_torchscript.pt")
        assert isinstance(scripted, torch.jit.ScriptModule)
        torch.testing.assert_close(scripted(clip, rescale=True, resize=True, return_features=True), expected)
        from_state = load_i3d(tmp_path / "rgb_imagenet.pt")
        torch.testing.assert_close(from_state(clip, rescale=True, resize=True, return_features=True), expected)
    assert expected.shape == (1, 7)
    torch.save({"unrelated.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is neither"):
        load_i3d(tmp_path / "other.pt")


def test_inception_and_lpips_load_strictly_from_their_files(tmp_path):
    inception = _randomised(FIDInceptionV3(width=1 / 8), seed=1)
    torch.save(inception.state_dict(), tmp_path / "inception.pth")
    frames = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(load_inception(tmp_path / "inception.pth")(frames), inception(frames))
    assert inception(frames).shape == (2, inception.feature_dim)
    broken = {k: v for k, v in inception.state_dict().items() if not k.startswith("Mixed_7c.branch_pool")}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="broken.pth does not hold FID Inception weights"):
        load_inception(tmp_path / "broken.pth")

    lpips = _randomised(LPIPS(width=1 / 4), seed=2)
    backbone = {f"features.{k}": v for k, v in lpips.features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(4, 4)  # the torchvision file also carries the classifier
    torch.save(backbone, tmp_path / "alexnet.pth")
    torch.save(lpips.heads.state_dict(), tmp_path / "alex.pth")
    assert sorted(lpips.heads.state_dict()) == [f"lin{i}.model.1.weight" for i in range(5)]
    loaded = load_lpips(tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    a, b = torch.rand(2, 2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(a, b), lpips(a, b))
        torch.testing.assert_close(loaded(a, b), loaded(b, a))
        assert torch.all(loaded(a, b) > 0) and torch.allclose(loaded(a, a), torch.zeros(2))


def test_missing_weights_name_the_file_and_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("FASHIONFLOW_METRIC_WEIGHTS", raising=False)
    info = WEIGHTS["inception"]
    with pytest.raises(MissingWeightsError) as error:
        resolve_weights("inception", weights_dir=tmp_path)
    assert info.filename in str(error.value) and info.url in str(error.value) and "--inception" in str(error.value)
    with pytest.raises(MissingWeightsError, match="nowhere.pt: no such file"):
        resolve_weights("i3d", tmp_path / "nowhere.pt")
    (tmp_path / "rgb_imagenet.pt").write_bytes(b"")  # the pytorch-i3d name is found when the TorchScript is absent
    assert resolve_weights("i3d", weights_dir=tmp_path) == tmp_path / "rgb_imagenet.pt"
    monkeypatch.setenv("FASHIONFLOW_METRIC_WEIGHTS", str(tmp_path))
    (tmp_path / info.filename).write_bytes(b"")
    assert resolve_weights("inception") == tmp_path / info.filename


# --- pairing ------------------------------------------------------------------------------------------


def _touch(directory, *names):
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"")


def test_pairing_by_sidecar_and_by_name_reports_unmatched(tmp_path):
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    _touch(ref, "blue01.mp4", "green03.mp4", "red10.mp4", "a.mp4", "a1.mp4", "unused.mp4", "notes.txt")
    _touch(gen, "blue01.mp4", "green03_sample2.mp4", "a12.mp4", "x_0007.mp4", "y.mp4", "zzz.mp4", "blue01_final.mp4")
    (gen / "x_0007.json").write_text(json.dumps({"source": "/data/test/red10.mp4", "start_frame": 8, "frames": 16}))
    (gen / "y.json").write_text(json.dumps({"source": "nothere.mp4", "start_frame": 0, "frames": 16}))
    (gen / "metrics.json").write_text("{}")  # no video of that name: not a sidecar
    pairs, unmatched_gen, unmatched_ref = pair_videos(gen, ref)
    found = {p.generated.name: (p.reference.name, p.start_frame, p.frames, p.matched_by) for p in pairs}
    assert found == {
        "blue01.mp4": ("blue01.mp4", 0, None, "name"),
        "green03_sample2.mp4": ("green03.mp4", 0, None, "name"),
        "a12.mp4": ("a1.mp4", 0, None, "name"),  # the longest reference stem wins over a + "12"
        "x_0007.mp4": ("red10.mp4", 8, 16, "sidecar"),
    }
    assert sorted(p.name for p in unmatched_gen) == ["blue01_final.mp4", "y.mp4", "zzz.mp4"]
    assert sorted(p.name for p in unmatched_ref) == ["a.mp4", "unused.mp4"]


def test_an_mp4_and_a_gif_of_one_sample_pair_once_mp4_first(tmp_path):
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    _touch(ref, "blue01.mp4", "green03.mp4")
    _touch(gen, "blue01_sample0.mp4", "blue01_sample0.gif", "blue01_sample1.gif", "green03_sample0.gif")
    pairs, unmatched, _ = pair_videos(gen, ref)
    assert [p.generated.name for p in pairs] == ["blue01_sample0.mp4", "blue01_sample1.gif", "green03_sample0.gif"]
    assert unmatched == []


def test_bad_sidecar_and_missing_folder_are_reported(tmp_path):
    (tmp_path / "v.json").write_text(json.dumps({"source": "v.mp4", "start_frame": -1}))
    with pytest.raises(ValueError, match="v.json: need start_frame >= 0"):
        read_sidecar(tmp_path / "v.json")
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(ValueError, match="w.json"):
        read_sidecar(tmp_path / "w.json")
    with pytest.raises(FileNotFoundError, match="missing_dir does not exist"):
        pair_videos(tmp_path / "missing_dir", tmp_path)


# --- the command end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_dirs(samples_dir, tmp_path_factory):
    """References: the two sample clips plus one nobody generated. Generated: a re-encoded, downscaled window
    (frames 4..20 of blue01, with a sidecar), an exact copy of green03 (paired by name) and an orphan."""
    root = tmp_path_factory.mktemp("videos")
    ref, gen = root / "test", root / "result"
    ref.mkdir()
    gen.mkdir()
    for name in ("blue01.mp4", "green03.mp4"):
        shutil.copy(samples_dir / "videos" / name, ref / name)
    shutil.copy(samples_dir / "videos" / "blue01.mp4", ref / "white05.mp4")
    window = read_video_frames(ref / "blue01.mp4", start=4, count=17, size=(320, 256))
    write_mp4(window, gen / "0000_blue01.mp4")
    sidecar = {"source": "fashion_dataset/test/blue01.mp4", "start_frame": 4, "frames": 17, "fps": 25, "sample_index": 0}
    (gen / "0000_blue01.json").write_text(json.dumps({**sidecar, "seed": 3}))
    shutil.copy(ref / "green03.mp4", gen / "green03.mp4")
    shutil.copy(ref / "green03.mp4", gen / "orphan.mp4")
    return ref, gen


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Small, randomly initialised networks of the real architectures, saved under the usual file names."""
    directory = tmp_path_factory.mktemp("weights")
    torch.save(_randomised(FIDInceptionV3(width=1 / 8), seed=3).state_dict(), directory / WEIGHTS["inception"].filename)
    torch.jit.script(_randomised(InceptionI3d(width=1 / 32), seed=4)).save(str(directory / WEIGHTS["i3d"].filename))
    lpips = _randomised(LPIPS(width=1 / 4), seed=5)
    torch.save({f"features.{k}": v for k, v in lpips.features.state_dict().items()}, directory / WEIGHTS["lpips_alex"].filename)
    torch.save(lpips.heads.state_dict(), directory / WEIGHTS["lpips_lin"].filename)
    return directory


def _run(video_dirs, tmp_path, *extra):
    ref, gen = video_dirs
    argv = ["--generated", str(gen), "--reference", str(ref), "--output", str(tmp_path / "metrics"), "--device", "cpu"]
    return main([*argv, "--resolution", f"{SIZE[0]}x{SIZE[1]}", "--frames", "17", *extra])


def test_evaluate_end_to_end_with_all_metrics(video_dirs, weights_dir, tmp_path):
    ref, gen = video_dirs
    results = _run(video_dirs, tmp_path, "--weights_dir", str(weights_dir), "--batch_size", "8")
    assert results["skipped"] == {}
    videos = {Path(v["generated"]).name: v for v in results["videos"]}
    assert set(videos) == {"0000_blue01.mp4", "green03.mp4"}
    assert results["unmatched_generated"] == [str(gen / "orphan.mp4")]
    assert results["unmatched_reference"] == [str(ref / "white05.mp4")]

    # the sidecar's window is the one compared, less its frame 0 (the conditioning image): frames 5..20 of the reference
    blue = videos["0000_blue01.mp4"]
    assert (blue["matched_by"], blue["start_frame"], blue["frames"], blue["seed"], blue["fvd_clips"]) == ("sidecar", 4, 16, 3, 1)
    assert blue["length_mismatch"] is None
    expected = ssim(
        read_video_frames(gen / "0000_blue01.mp4", size=SIZE)[1:],
        read_video_frames(ref / "blue01.mp4", start=5, count=16, size=SIZE),
    )
    assert blue["ssim"] == pytest.approx(expected.mean().item(), abs=1e-6)
    assert 0.8 < blue["ssim"] < 1
    green = videos["green03.mp4"]  # an exact copy, compared from frame 0
    assert (green["matched_by"], green["ssim"], green["psnr"], green["lpips"]) == ("name", pytest.approx(1.0), 100.0, 0.0)

    metrics = results["metrics"]
    assert metrics["ssim"]["frames"] == 32 and metrics["ssim"]["mean"] == pytest.approx((blue["ssim"] + 1) / 2)
    assert (metrics["fid"]["generated"], metrics["fid"]["reference"]) == (32, 32)
    assert (metrics["fvd"]["generated"], metrics["fvd"]["reference"], metrics["fvd"]["feature_dim"]) == (2, 2, 400)
    assert metrics["fid"]["value"] > 0 and metrics["fvd"]["value"] > 0

    protocol = results["protocol"]
    assert protocol["resolution"] == ["128x96"] and protocol["frames_total"] == 32
    assert protocol["input_frame_scored"] is False and protocol["length_mismatches"] == 0
    assert "16-frame clips" in protocol["fvd"] and set(protocol["weights"]) == {"inception", "i3d", "lpips_alex", "lpips_lin"}
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == metrics
    table = (tmp_path / "metrics.md").read_text()
    assert "| SSIM ↑ | PSNR (dB) ↑ | LPIPS ↓ | FID ↓ | FVD ↓ |" in table
    assert f"{metrics['fid']['value']:.2f}" in table and "orphan.mp4" in table


def test_the_input_frame_is_scored_only_when_asked(video_dirs, tmp_path):
    ref, gen = video_dirs
    results = _run(video_dirs, tmp_path, "--metrics", "ssim,psnr", "--include_input_frame")
    blue = next(v for v in results["videos"] if v["generated"].endswith("0000_blue01.mp4"))
    expected = ssim(
        read_video_frames(gen / "0000_blue01.mp4", size=SIZE), read_video_frames(ref / "blue01.mp4", start=4, count=17, size=SIZE)
    )
    assert blue["frames"] == 17 and blue["ssim"] == pytest.approx(expected.mean().item(), abs=1e-6)
    assert results["protocol"]["input_frame_scored"] is True
    assert "frame 0, the conditioning image itself, included" in (tmp_path / "metrics.md").read_text()


def test_length_mismatches_are_named_per_video_and_in_the_summary(samples_dir, tmp_path, capsys):
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    shutil.copy(samples_dir / "videos" / "blue01.mp4", ref / "blue01.mp4")  # 70 frames
    clip = read_video_frames(ref / "blue01.mp4", start=60, count=10, size=(64, 48))
    cases = {  # name: (frames written, sidecar start_frame, sidecar frames)
        "short": (6, 60, 8),
        "long": (10, 60, 8),
        "past_the_end": (8, 66, 8),
        "exact": (8, 60, 8),
    }
    for name, (count, start, frames) in cases.items():
        write_mp4(clip[:count], gen / f"{name}.mp4")
        (gen / f"{name}.json").write_text(json.dumps({"source": "blue01.mp4", "start_frame": start, "frames": frames}))
    argv = ["--generated", str(gen), "--reference", str(ref), "--output", str(tmp_path / "m"), "--metrics", "ssim,psnr"]
    results = main([*argv, "--device", "cpu", "--resolution", "64x48"])
    videos = {Path(v["generated"]).stem: v for v in results["videos"]}
    assert videos["short"]["length_mismatch"] == (
        "the generated video has 6 frames but its sidecar records a window of 8; compared on the first 6"
    )
    assert "longer than the window of 8 frames its sidecar records" in videos["long"]["length_mismatch"]
    assert videos["past_the_end"]["length_mismatch"] == (
        "blue01.mp4 from frame 66 has only 4 frames, the generated video more; compared on the first 4"
    )
    assert videos["exact"]["length_mismatch"] is None
    assert [videos[name]["frames"] for name in ("short", "long", "past_the_end", "exact")] == [5, 7, 3, 7]
    assert results["protocol"]["length_mismatches"] == 3
    summary = capsys.readouterr().out
    assert "3 of 4 generated videos differ in length from their reference window" in summary
    assert "## Length mismatches" in (tmp_path / "m.md").read_text()


def test_distribution_metrics_vanish_for_identical_sets(video_dirs, weights_dir, tmp_path):
    ref, _ = video_dirs
    same = tmp_path / "same"
    same.mkdir()
    for name in ("blue01.mp4", "green03.mp4"):
        shutil.copy(ref / name, same / f"{name[:-4]}_sample0.mp4")
    results = main([
        "--generated", str(same), "--reference", str(ref), "--output", str(tmp_path / "m"), "--device", "cpu",
        "--resolution", "64x48", "--frames", "17", "--metrics", "fid,fvd", "--weights_dir", str(weights_dir),
    ])  # fmt: skip
    assert results["metrics"]["fid"]["value"] == pytest.approx(0, abs=1e-6)
    assert results["metrics"]["fvd"]["value"] == pytest.approx(0, abs=1e-6)


def test_missing_weights_skip_unless_asked_for(video_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("FASHIONFLOW_METRIC_WEIGHTS", raising=False)
    empty = tmp_path / "no_weights"
    empty.mkdir()
    results = _run(video_dirs, tmp_path, "--weights_dir", str(empty))
    assert set(results["metrics"]) == {"ssim", "psnr"}
    console = capsys.readouterr().out  # the table's "–" cells come with their reasons
    assert f"fid skipped: {results['skipped']['fid']}" in console and "lpips skipped: " in console
    assert WEIGHTS["inception"].filename in results["skipped"]["fid"]
    assert WEIGHTS["i3d"].url in results["skipped"]["fvd"] and "alexnet-owt" in results["skipped"]["lpips"]
    assert "## Skipped" in (tmp_path / "metrics.md").read_text()
    with pytest.raises(MissingWeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        _run(video_dirs, tmp_path, "--weights_dir", str(empty), "--metrics", "ssim,fid")


def test_pickled_code_in_a_weights_file_never_runs(video_dirs, tmp_path, pickle_trap):
    trap = tmp_path / "inception.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": pickle_trap}, trap)
    with pytest.raises(UnsafeCheckpointError) as caught:
        _run(video_dirs, tmp_path, "--metrics", "fid", "--inception", str(trap))
    assert_refused_and_explained(str(caught.value), trap)
    assert not pickle_trap.sprung
