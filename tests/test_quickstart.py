"""The offline quickstart, shortened: every stage runs through the real scripts with a few steps each."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.core.config import get_preset
from models.data.synthetic import clip_params, render_clip
from models.data.video_io import read_video_frames
from models.evaluation.metrics import psnr, ssim
from models.networks.checkpoint import read_checkpoint
from models.serving import quickstart
from models.serving.quickstart import (
    LABELS,
    METHODS,
    PACKAGED_VAE,
    PACKAGED_VAE_DATA_SEED,
    QuickstartConfig,
    build_encoders,
    closing_message,
    figure_weights,
    garment_colour_error,
    garment_colour_errors,
    make_vae,
    motion_magnitude,
    run,
)

SIZE = (64, 48)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quickstart")
    cfg = QuickstartConfig(
        workdir=str(root / "work"),
        result_dir=str(root / "result"),
        n_train=4,
        n_test=2,
        video_frames=10,
        clips_per_video=1,
        vae_steps=3,
        vae_batch=8,
        train_steps=4,
        batch_size=2,
        sample_every=4,
        sample_steps=5,
        progress=False,
    )
    torch.manual_seed(0)
    return cfg, run(cfg)


def test_outputs_are_playable_files(short_run):
    cfg, report = short_run
    work, result = Path(cfg.workdir), Path(cfg.result_dir)
    for method in ("trained", "untrained"):
        videos = sorted((result / method).glob("*_sample0.mp4"))
        assert [v.name for v in videos] == ["synthetic_0000_sample0.mp4", "synthetic_0001_sample0.mp4"]
        for video in videos:
            frames = read_video_frames(video)
            assert frames.shape == (8, 3, *SIZE)  # the tiny preset's clip length
            assert video.with_suffix(".gif").is_file()
    assert list((work / "video_progress").glob("events.out.tfevents.*"))
    assert (work / "training_sample" / "step_0000004.mp4").is_file()
    assert Path(report["trained_checkpoint"]).is_file()
    trained_config = read_checkpoint(report["trained_checkpoint"])["config"]
    assert trained_config.self_attns == get_preset("quickstart").self_attns == (True, True)  # not the tiny preset's
    assert (work / "encoders" / "vae" / "config.json").is_file() and (work / "encoders" / "clip" / "config.json").is_file()
    assert json.loads((result / "report.json").read_text())["methods"].keys() == set(METHODS)
    md = (result / "report.md").read_text()
    assert all(f"| {LABELS.get(method, method)} |" in md for method in METHODS)
    assert "| ground truth through the VAE |" in md and "| method | frame 1 | frame 2 |" in md
    frames = report["frames"]
    for row in report["methods"].values():
        assert len(row["garment_colour_error_per_frame"]) == len(row["psnr_per_frame"]) == frames - 1
    grid = Image.open(report["grid"])
    assert grid.size[0] > frames * SIZE[1] and grid.size[1] > 2 * 4 * SIZE[0]  # 2 clips x 4 rows, 8 frames a row
    assert "grid.png" in md
    assert f"Measured on {report['machine']}, seed 0: this run took" in md and "torch threads" in report["machine"]
    message = closing_message(cfg, report)
    assert str(result / "report.md") in message and "tensorboard --logdir" in message and "--vae DIR" in message


def test_report_numbers_are_computed_from_the_videos(short_run):
    cfg, report = short_run
    rows = report["per_video"]
    for index, source in enumerate(sorted((Path(cfg.workdir) / "fashion_dataset" / "test").glob("*.mp4"))):
        truth = read_video_frames(source, count=8, size=SIZE)
        _, masks = render_clip(clip_params(cfg.seed, "test", index), 8, SIZE, garment_masks=True)
        videos = {
            "trained": read_video_frames(rows["trained"][index]["video"]),
            "untrained": read_video_frames(rows["untrained"][index]["video"]),
            "static": truth[:1].repeat(8, 1, 1, 1),
            "vae": read_video_frames(rows["vae"][index]["video"]),
        }
        for method, video in videos.items():
            row = rows[method][index]
            assert row["psnr"] == pytest.approx(psnr(video[1:], truth[1:]).mean().item(), rel=1e-5)
            assert row["ssim"] == pytest.approx(ssim(video[1:], truth[1:]).mean().item(), rel=1e-5)
            colour_error = garment_colour_error(video[1:], truth[1:], masks[1:])
            assert row["garment_colour_error"] == pytest.approx(colour_error, rel=1e-5)
            assert row["motion"] == pytest.approx(motion_magnitude(video), rel=1e-5)
            per_frame = garment_colour_errors(video[1:], truth[1:], masks[1:])
            assert row["garment_colour_error_per_frame"] == pytest.approx(per_frame, rel=1e-5)
            assert row["psnr_per_frame"] == pytest.approx(psnr(video[1:], truth[1:]).tolist(), rel=1e-5)
    assert rows["static"][0]["motion"] == 0
    assert report["input_frame_scored"] is False and "frame 0, the conditioning image itself, left out" in report["scored_frames"]
    means = report["methods"]["trained"]
    assert means["psnr"] == pytest.approx(np.mean([r["psnr"] for r in rows["trained"]]))
    assert means["motion_ratio"] == pytest.approx(means["motion"] / report["ground_truth_motion"])
    verdicts = report["verdicts"]
    assert verdicts["trained_beats_static_psnr"] == (means["psnr"] > report["methods"]["static"]["psnr"])


def test_rerun_reuses_every_stage(short_run):
    cfg, report = short_run
    work, result = Path(cfg.workdir), Path(cfg.result_dir)
    watched = [
        work / "fashion_dataset" / "train" / "synthetic_0000.mp4",
        work / "encoders" / "vae" / "diffusion_pytorch_model.safetensors",
        work / "fashion_dataset_tensor" / "synthetic_0000.pt",
        Path(report["trained_checkpoint"]),
        work / "untrained.pth",
        result / "trained" / "synthetic_0000_sample0.mp4",
    ]
    before = [p.stat().st_mtime_ns for p in watched]
    again = run(cfg)
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert again["methods"] == report["methods"]


def test_the_animations_take_the_sampling_steps_asked_for(short_run, tmp_path, capsys):
    cfg, report = short_run
    assert report["sampling_steps"] == 5 and "sampled with 5 DDPM steps" in (Path(cfg.result_dir) / "report.md").read_text()
    fewer = replace(cfg, sample_steps=3)
    videos = quickstart.animate(fewer, Path(report["trained_checkpoint"]), tmp_path / "trained")
    assert [json.loads(v.with_suffix(".json").read_text())["steps"] for v in videos] == [3, 3]
    default = read_video_frames(report["per_video"]["trained"][0]["video"])
    assert not torch.equal(read_video_frames(videos[0]), default)
    assert quickstart.build_parser().parse_args([]).sample_steps == QuickstartConfig().sample_steps == 100
    assert quickstart.build_parser().parse_args(["--sample_steps", "25"]).sample_steps == 25
    with pytest.raises(SystemExit):
        quickstart.build_parser().parse_args(["--sample_steps", "0"])  # not silently the default
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err


def test_garment_masks_follow_the_garment():
    params = clip_params(0, "test", 1)
    clip, masks = render_clip(params, 3, SIZE, garment_masks=True)
    assert masks.shape == (3, *SIZE) and 0.03 < masks.mean() < 0.5
    again, masks_again = render_clip(params, 3, SIZE, garment_masks=True)
    assert np.array_equal(clip, again) and np.array_equal(masks, masks_again)
    assert np.array_equal(clip, render_clip(params, 3, SIZE))  # asking for masks does not change the frames
    # the figure is in the middle: no garment in the outer columns or the top rows (the head)
    assert not masks[:, :, :4].any() and not masks[:, :, -4:].any() and not masks[:, :6].any()


def test_figure_weights_cover_the_figure_not_the_backdrop():
    clip, masks = render_clip(clip_params(0, "train", 2), 2, SIZE, garment_masks=True)
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1
    weights = figure_weights(frames, boost=12.0)
    assert weights.shape == (2, 1, *SIZE) and set(weights.unique().tolist()) == {1.0, 13.0}
    on_figure = weights[:, 0] > 1
    assert on_figure[torch.from_numpy(masks)].float().mean() > 0.99  # the garment is part of the figure
    assert 0.05 < on_figure.float().mean() < 0.4  # most of the frame is backdrop
    assert not on_figure[:, :, :3].any() and not on_figure[:, :3].any()  # outer columns and the top rows


def test_opt_in_distillation_adds_the_students_row(short_run, tmp_path):
    """`--distill` reuses the run's model, distils a student on its latents and scores its 4-step videos."""
    import dataclasses

    cfg, _ = short_run
    cfg = dataclasses.replace(cfg, distill=True, distill_train_steps=2, result_dir=str(tmp_path / "result"))
    report = run(cfg)
    assert list(report["methods"]) == ["trained", "untrained", "student", "static", "vae"]
    videos = sorted((tmp_path / "result" / "student").glob("*_sample0.mp4"))
    assert len(videos) == 2 and read_video_frames(videos[0]).shape == (8, 3, *SIZE)
    sidecar = json.loads(videos[0].with_suffix(".json").read_text())
    assert (sidecar["sampler"], sidecar["steps"]) == ("lcm", 4)
    assert "| student |" in (tmp_path / "result" / "report.md").read_text()
    assert (Path(cfg.workdir) / "student" / "checkpoint" / "latest.pth").is_file()


def held_out_vae_scores(vae_dir) -> tuple[float, float]:
    """PSNR and garment colour error of `vae_dir`'s reconstructions of seed 0's held-out clips, through the loader
    `--vae` uses."""
    from models.networks.encoders import FrozenEncoders

    encoders = FrozenEncoders.from_pretrained(vae=str(vae_dir), clip=None, preprocessing="standard")
    psnrs, errors = [], []
    for index in range(4):
        clip, masks = render_clip(clip_params(0, "test", index), 8, SIZE, garment_masks=True)
        frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            recon = encoders.decode_latents(encoders.encode_posterior(frames).mode() * encoders.latent_scale)
        psnrs.append(psnr(recon, frames).mean().item())
        errors.append(garment_colour_error(recon, frames, masks))
    return float(np.mean(psnrs)), float(np.mean(errors))


def test_the_packaged_vae_keeps_held_out_garment_colours():
    """The tiny VAE that ships with the package never saw the quickstart's clips (its own seed's videos) and gives
    them back with their colours: what a committed refit must still do."""
    info = json.loads((PACKAGED_VAE / "fit.json").read_text())
    assert info["vae"] == "packaged" and info["fit"]["data_seed"] == PACKAGED_VAE_DATA_SEED
    reconstruction_psnr, colour_error = held_out_vae_scores(PACKAGED_VAE)
    assert reconstruction_psnr > 26 and colour_error < 20, (reconstruction_psnr, colour_error)


def test_make_vae_writes_what_the_quickstart_loads(tmp_path, monkeypatch):
    info = make_vae(tmp_path / "vae", workdir=tmp_path / "videos", n_videos=2, steps=3, batch=4, progress=False)
    assert info["vae"] == "packaged" and info["vae_steps"] == 3 and info["fit"]["n_videos"] == 2
    assert json.loads((tmp_path / "vae" / "fit.json").read_text()) == info
    assert len(list((tmp_path / "videos" / "train").glob("*.mp4"))) == 2
    monkeypatch.setattr(quickstart, "PACKAGED_VAE", tmp_path / "vae")
    cfg = QuickstartConfig(workdir=str(tmp_path / "work"), progress=False)
    assert build_encoders(cfg, [], SIZE) == info  # vae_steps 0: the packaged VAE is copied, not fitted
    assert (cfg.vae_dir / "diffusion_pytorch_model.safetensors").read_bytes() == (
        tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()
    held_out_vae_scores(cfg.vae_dir)  # loads through --vae's loader


def test_an_incomplete_packaged_vae_says_what_to_do(tmp_path, monkeypatch):
    folder = tmp_path / "quickstart_vae"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(quickstart, "PACKAGED_VAE", folder)
    cfg = QuickstartConfig(workdir=str(tmp_path / "work"), progress=False)
    with pytest.raises(FileNotFoundError, match="lacks diffusion_pytorch_model.safetensors, fit.json.*--vae_steps 400"):
        build_encoders(cfg, [], SIZE)
    assert not cfg.vae_dir.exists()  # nothing half-copied left to be reused
