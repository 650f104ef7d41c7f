"""The offline quickstart: FashionFlow end to end on a laptop CPU, no GPU and no hub access.

    python -m models quickstart                      # about 5 minutes on 2 CPU cores; rerun to reuse what is built
    python -m models quickstart --train_steps 3000   # train longer (resumes the run in quickstart/checkpoint)

Stages, each through the code path a paper-scale run uses, each skipped on a rerun when its output exists:
1. a seeded synthetic fashion-video dataset (models/data/synthetic.py) in the `fashion_dataset/{train,test}` layout;
2. tiny real encoders: the package's pretrained `AutoencoderKL` (`models/serving/quickstart_vae/`, fitted once on
   synthetic videos of its own seed by `--make_vae`, as Stable Diffusion's VAE was fitted once on other images;
   `--vae_steps N` fits one on this run's videos instead) and a seeded `CLIPVisionModel`, written with
   `save_pretrained` and loaded back through `--vae` / `--clip` like the real ones;
3. projection, training (the `quickstart` preset: the tiny one with self-attention at both levels; TensorBoard,
   checkpoints, sample videos) and animation of the held-out
   test stills, for the trained model and for an untrained one, through the package functions that
   `project_latent_space.py`, `train.py` and `inference.py` call (`projection.project`, `training.train`,
   `animate.animate`);
4. a report (`report.md`, `report.json` beside the videos): PSNR/SSIM against the ground truth, garment
   colour error and motion magnitude, for trained, untrained, a static copy of the input frame and the ground
   truth through the VAE (the decoder's ceiling); per-frame colour error and PSNR; `grid.png`, every clip's frames.
The exit status is 1 when the trained model does not clearly beat the untrained one or moves implausibly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.cli import positive_int
from ..evaluation.metrics import psnr as metric_psnr
from ..evaluation.scoring import ScoredFrames, mean_psnr_ssim

METHODS = ("trained", "untrained", "static", "vae")
STUDENT = "student"  # the report's row of the distilled student (--distill)
VAE_ROW = "vae"  # the ground truth encoded and decoded by the tiny VAE: what its decoder allows at best
LABELS = {VAE_ROW: "ground truth through the VAE"}  # report rows named other than by their key
GRID_SCALE = 2  # the picture's pixels per video pixel
MOTION_RANGE = (0.25, 4.0)  # generated / ground-truth motion counted as plausible
CLEAR_MARGIN_DB = 1.0  # how much higher the trained model's PSNR must be than the untrained one's
SCORED = ScoredFrames()  # the evaluation protocol's default: frame 0, the input, is not scored


@dataclass
class QuickstartConfig:
    workdir: str = "quickstart"  # dataset, encoders, latents, checkpoints, logs
    result_dir: str = "result/quickstart"  # videos and the report
    seed: int = 0
    n_train: int = 48
    n_test: int = 12  # held-out videos scored (the first 4 alone are easy ones: colour error 40.6 there, 70.6 on 12)
    video_frames: int = 24  # frames per synthetic video; the tiny model samples 8-frame clips from them
    clips_per_video: int = 2
    preset: str = "quickstart"  # the model trained (models/core/config.py, QUICKSTART)
    vae_steps: int = 0  # 0: the packaged pretrained tiny VAE (`make_vae`); N: fit one on this run's videos for N steps
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    vae_figure_boost: float = 12.0  # extra weight of the figure's pixels in the VAE's reconstruction loss
    train_steps: int = 1200  # what the 6-minute first command holds (docs/DESIGN.md, "The quickstart's garment colours")
    batch_size: int = 4
    lr: float = 2e-3
    # the EMA's warm-up decay (1 + n) / (10 + n) stays below this until step 1790, so at 1200 steps any decay above
    # 0.9925 acts the same: an average over about the last 135 steps
    ema_decay: float = 0.995
    sample_every: int = 400
    # DDPM steps of the animations (None: the pipeline's 25). Within the 6 minutes they keep the garment better than
    # training steps do: colour error 22.5 with 1200 training steps and 100 here, 28.3 with 1300 and 25 (DESIGN.md)
    sample_steps: int | None = 100
    distill: bool = False  # also distil a few-step student from the trained model (train.py --distill_from)
    distill_train_steps: int = 600
    distill_lr: float = 2e-4
    student_steps: int = 4
    progress: bool = True

    @property
    def work(self) -> Path:
        return Path(self.workdir)

    @property
    def dataset(self) -> Path:
        return self.work / "fashion_dataset"

    @property
    def vae_dir(self) -> Path:
        return self.work / "encoders" / "vae"

    @property
    def clip_dir(self) -> Path:
        return self.work / "encoders" / "clip"


def _tiny_image_size() -> tuple[int, int]:
    from ..core.config import get_preset
    from ..networks.encoders import image_size_for, vae_downscale
    from ..networks.tiny_components import tiny_vae_config

    return image_size_for(get_preset("tiny").latent_size, vae_downscale(tiny_vae_config()))


def _write_folder_atomically(directory: Path, write) -> None:
    """`write(folder)` into a sibling folder, then rename it to `directory`: an interrupted write never looks complete."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)


def _save_pretrained_atomically(model, directory: Path) -> None:
    _write_folder_atomically(directory, model.save_pretrained)


# ---- stage 2: tiny real encoders


def figure_weights(frames: torch.Tensor, boost: float, threshold: float = 0.1) -> torch.Tensor:
    """Per-pixel loss weights `[N, 1, H, W]` for frames `[N, 3, H, W]`: 1 on the backdrop, 1 + boost on the figure.

    The synthetic backdrop is plain and lit from above, so each row's backdrop colour is read off the frame's
    outer columns; a pixel further than `threshold` from it in any channel belongs to the figure.
    """
    backdrop = torch.cat([frames[..., :2], frames[..., -2:]], dim=-1).mean(-1, keepdim=True)  # [N, 3, H, 1]
    return 1 + boost * ((frames - backdrop).abs().amax(1, keepdim=True) > threshold).float()


def fit_tiny_vae(
    videos: list[Path], *, size, steps: int, batch: int, lr: float, kl_weight: float, figure_boost: float, seed: int,
    lr_floor: float | None = None, progress=True,
):  # fmt: skip
    """A tiny AutoencoderKL fitted to the frames of `videos` (reconstruction + a small KL term), eval mode.

    The reconstruction error counts `1 + figure_boost` times on the figure: the backdrop fills most of each
    frame, and without the boost a minute of fitting spends itself there and leaves garment colours off.
    The learning rate is constant, or with `lr_floor` decays along a cosine to `lr_floor * lr` (a short fit is
    far from converged and only slows with a decay; a long one settles with it).
    Its `scaling_factor` is set to 1 / std of the latents, as Stable Diffusion's 0.18215 was, so the diffusion
    model sees latents of unit variance. Frames go in on [-1, 1], the 'standard' preprocessing of the tiny preset.
    """
    from ..core.progress import progress_bar
    from ..data.video_io import read_video_frames
    from ..evaluation.metrics import psnr
    from ..networks.tiny_components import build_tiny_vae

    frames = torch.cat([read_video_frames(p, size=size) for p in videos]) * 2 - 1  # [N, 3, H, W]
    weights = figure_weights(frames, figure_boost)
    vae = build_tiny_vae(seed).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    decay = (lambda s: lr_floor + (1 - lr_floor) * (1 + math.cos(math.pi * s / steps)) / 2) if lr_floor is not None else None
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, decay) if decay else None
    g = torch.Generator().manual_seed(seed)
    bar = progress_bar(range(steps), desc="fit tiny VAE", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, len(frames), (min(batch, len(frames)),), generator=g)
        x = frames[idx]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        mse = ((recon - x) ** 2 * weights[idx]).mean()
        loss = mse + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if schedule is not None:
            schedule.step()
        bar.set_postfix(mse=f"{mse.item():.4f}")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in frames.split(64)])
        recon = torch.cat([vae.decode(chunk).sample for chunk in latents.split(64)])
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    return vae, float(psnr((recon.clamp(-1, 1) + 1) / 2, (frames + 1) / 2).mean())


PACKAGED_VAE = Path(__file__).with_name("quickstart_vae")  # the tiny VAE that ships with the package (`make_vae`)
PACKAGED_VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "fit.json")
PACKAGED_VAE_DATA_SEED = 777  # its fitting videos' seed: other figures and garments than any quickstart seed's clips


def make_vae(
    directory: Path, *, workdir: Path, n_videos: int = 200, steps: int = 3000, batch: int = 32, lr: float = 2e-3,
    lr_floor: float = 0.1, seed: int = 0, progress: bool = True,
) -> dict:  # fmt: skip
    """Fit the quickstart's pretrained tiny VAE, as `python -m models quickstart --make_vae DIR` does, into `directory`
    (`save_pretrained` and `fit.json`, how it was made): `n_videos` synthetic videos of their own seed
    (`PACKAGED_VAE_DATA_SEED`, written under `workdir`), `steps` steps with a cosine decay. The package's copy
    (`PACKAGED_VAE`) was made by this function with its defaults; the quickstart then only loads it, as a
    paper-scale run loads Stable Diffusion's VAE."""
    from ..data.synthetic import make_synthetic_dataset

    defaults = QuickstartConfig()
    size = _tiny_image_size()
    videos = make_synthetic_dataset(workdir, n_train=n_videos, n_test=0, frames=defaults.video_frames, size=size,
                                    seed=PACKAGED_VAE_DATA_SEED)["train"]  # fmt: skip
    start = time.perf_counter()
    vae, psnr = fit_tiny_vae(
        videos, size=size, steps=steps, batch=batch, lr=lr, kl_weight=defaults.vae_kl_weight,
        figure_boost=defaults.vae_figure_boost, seed=seed, lr_floor=lr_floor, progress=progress,
    )  # fmt: skip
    info = {
        "vae": "packaged",
        "vae_reconstruction_psnr_db": psnr,  # on its own fitting frames
        "vae_steps": steps,
        "scaling_factor": vae.config.scaling_factor,
        "fit": dict(n_videos=n_videos, data_seed=PACKAGED_VAE_DATA_SEED, frames_per_video=defaults.video_frames,
                    batch=batch, lr=lr, lr_floor=lr_floor, seed=seed, seconds=round(time.perf_counter() - start)),
        "made_by": f"python -m models quickstart --make_vae DIR ({machine()})",
    }  # fmt: skip
    _save_pretrained_atomically(vae, directory)
    (directory / "fit.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _copy_packaged_vae(directory: Path) -> dict:
    """The package's pretrained tiny VAE into `directory`; its `fit.json`."""
    missing = [name for name in PACKAGED_VAE_FILES if not (PACKAGED_VAE / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the quickstart's pretrained tiny VAE is incomplete: {PACKAGED_VAE} lacks {', '.join(missing)}. Restore it "
            "from the repository (git checkout -- models/serving/quickstart_vae), reinstall the package, or fit one "
            "in this run with --vae_steps 400"
        )
    _write_folder_atomically(directory, lambda folder: shutil.copytree(PACKAGED_VAE, folder))
    return json.loads((directory / "fit.json").read_text())


def build_encoders(cfg: QuickstartConfig, train_videos: list[Path], size) -> dict:
    """The tiny VAE (the packaged one, or with `cfg.vae_steps` one fitted here on `train_videos`) and a seeded tiny
    CLIP, under `cfg.work / 'encoders'`; reused when there."""
    from ..networks.tiny_components import build_tiny_clip

    info_path = cfg.vae_dir.parent / "fit.json"
    if (cfg.vae_dir / "config.json").is_file() and (cfg.clip_dir / "config.json").is_file() and info_path.is_file():
        print(f"encoders: reusing {cfg.vae_dir} and {cfg.clip_dir}")
        return json.loads(info_path.read_text())
    start = time.perf_counter()
    if cfg.vae_steps:
        vae, psnr = fit_tiny_vae(
            train_videos,
            size=size,
            steps=cfg.vae_steps,
            batch=cfg.vae_batch,
            lr=cfg.vae_lr,
            kl_weight=cfg.vae_kl_weight,
            figure_boost=cfg.vae_figure_boost,
            seed=cfg.seed,
            progress=cfg.progress,
        )
        _save_pretrained_atomically(vae, cfg.vae_dir)
        info = {"vae": "fitted", "vae_reconstruction_psnr_db": psnr, "vae_steps": cfg.vae_steps,
                "scaling_factor": vae.config.scaling_factor}  # fmt: skip
        said = f"tiny VAE fitted in {time.perf_counter() - start:.0f} s, reconstruction PSNR {psnr:.1f} dB"
    else:
        info = _copy_packaged_vae(cfg.vae_dir)
        said = f"the packaged tiny VAE ({PACKAGED_VAE}; fitted for {info['vae_steps']} steps, `--make_vae`)"
    _save_pretrained_atomically(build_tiny_clip(cfg.seed), cfg.clip_dir)
    info_path.write_text(json.dumps(info, indent=2))
    print(f"encoders: {said}")
    return info


# ---- stages 3-5: what the project's three scripts do, through the package functions they call


def project(cfg: QuickstartConfig) -> Path:
    """What `project_latent_space.py --preset tiny` does, on the training videos."""
    from ..data.projection import project as project_videos

    latents = cfg.work / "fashion_dataset_tensor"
    print(f"\nprojecting {cfg.dataset / 'train'} -> {latents}", flush=True)
    summary = project_videos(
        cfg.dataset / "train", latents, preset="tiny", vae=str(cfg.vae_dir), clips_per_video=cfg.clips_per_video,
        seed=cfg.seed, device="cpu", progress=cfg.progress,
    )  # fmt: skip
    if summary.exit_code != 0:
        raise RuntimeError("projecting the synthetic videos failed; see the summary above")
    return latents


def _train_run(cfg: QuickstartConfig, latents: Path, folder: Path, steps: int, what: str, **options) -> Path:
    """What train.py does, in `folder` (checkpoint/, video_progress/, training_sample/) for `steps` steps; a run that
    got that far is reused, a shorter one resumed. `options`: TrainConfig fields beyond the quickstart's."""
    from ..networks.checkpoint import latest_checkpoint, read_checkpoint
    from ..training.loop import TrainConfig
    from ..training.loop import train as train_model

    latest = latest_checkpoint(folder / "checkpoint")
    if latest is not None and read_checkpoint(latest).get("step", 0) >= steps:
        print(f"{what}: reusing {latest} (step >= {steps}; raise the steps to train on)")
        return latest
    print(f"\n{what}: the {cfg.preset} preset on {latents} for {steps} steps", flush=True)
    summary = train_model(
        TrainConfig(
            preset=cfg.preset, dataset_vae=str(latents), vae=str(cfg.vae_dir), clip=str(cfg.clip_dir),
            output_dir=str(folder / "checkpoint"), log_dir=str(folder / "video_progress"),
            sample_dir=str(folder / "training_sample"), max_steps=steps, batch_size=cfg.batch_size,
            ema_decay=cfg.ema_decay, seed=cfg.seed, checkpoint_every=max(steps // 3, 1), log_every=10,
            sample_every=cfg.sample_every, num_workers=0, device="cpu", progress=cfg.progress, **options,
        )
    )  # fmt: skip
    return Path(summary["checkpoint"])


def train(cfg: QuickstartConfig, latents: Path) -> Path:
    return _train_run(cfg, latents, cfg.work, cfg.train_steps, "training", lr=cfg.lr)


def distill(
    cfg: QuickstartConfig, teacher: Path, latents: Path, *, steps: int | None = None, method: str = "consistency",
    student_steps: int | None = None, folder: str = "student",
) -> Path:  # fmt: skip
    """What `train.py --distill_from <trained> --distill_steps <student_steps> --distill_method <method>` does: a
    few-step student of `teacher` on the same latents, in `workdir/<folder>/`."""
    student_steps = student_steps or cfg.student_steps
    what = f"distilling a {student_steps}-step student from {teacher} ({method})"
    return _train_run(
        cfg, latents, cfg.work / folder, steps or cfg.distill_train_steps, what, lr=cfg.distill_lr,
        distill_from=str(teacher), distill_steps=student_steps, distill_method=method,
    )  # fmt: skip


def untrained_checkpoint(cfg: QuickstartConfig, trained: Path) -> Path:
    """The trained run's configuration with freshly initialised (seeded) weights."""
    from ..networks.checkpoint import build_models, read_checkpoint, save_checkpoint

    path = cfg.work / "untrained.pth"
    if not path.is_file():
        config = read_checkpoint(trained)["config"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            unet, adapter = build_models(config)
        save_checkpoint(path, unet, adapter, config, step=0)
    return path


def animate(cfg: QuickstartConfig, checkpoint: Path, out_dir: Path, *, sampler=None, steps=None) -> list[Path]:
    """What inference.py does on frame 0 of every test video (the default sampler for `cfg.sample_steps`, or `sampler`
    and `steps`), all in one batch (the very same videos as one at a time, in a third of the time); reuses videos
    already made from this checkpoint with these settings."""
    from ..diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS
    from ..pipeline.model_source import ModelSource
    from .animate import AnimateSettings, load_pipeline
    from .animate import animate as animate_inputs
    from .inference_io import sample_stem, video_inputs

    tests = sorted((cfg.dataset / "test").glob("*.mp4"))
    sidecars = [out_dir / f"{sample_stem(p.stem, 0)}.json" for p in tests]
    sampler, steps = sampler or DEFAULT_SAMPLER, steps or cfg.sample_steps or DEFAULT_STEPS
    wanted = {"checkpoint": str(checkpoint), "sampler": sampler, "steps": steps}

    def made_as_wanted(sidecar: Path) -> bool:
        return sidecar.is_file() and all(json.loads(sidecar.read_text()).get(k) == v for k, v in wanted.items())

    done = all(made_as_wanted(s) for s in sidecars)
    if not done:
        print(f"\nanimating frame 0 of every video in {cfg.dataset / 'test'} with {checkpoint}", flush=True)
        source = ModelSource(checkpoint, vae=str(cfg.vae_dir), clip=str(cfg.clip_dir), device="cpu")
        pipeline, precision = load_pipeline(source)
        settings = AnimateSettings(
            output_dir=str(out_dir), seed=cfg.seed, precision=precision, gif=True, progress=cfg.progress,
            record=source.record(), sampler=sampler, steps=steps, batch_size=max(len(tests), 1),
        )  # fmt: skip
        failed = [r for r in animate_inputs(pipeline, video_inputs(cfg.dataset / "test"), settings) if not r.ok]
        if failed:
            raise RuntimeError("animating failed for " + "; ".join(f"{r.item.path}: {r.error}" for r in failed))
    return [s.with_suffix(".mp4") for s in sidecars]


# ---- stage 6: the report


def motion_magnitude(video: torch.Tensor) -> float:
    """Mean absolute change between consecutive frames of `[F, 3, H, W]` in [0, 1], on the 0-255 scale."""
    return float((video[1:] - video[:-1]).abs().mean() * 255)


def garment_colour_errors(video: torch.Tensor, truth: torch.Tensor, masks: np.ndarray) -> list[float]:
    """Per frame, the RGB distance (0-255) between the garment's mean colour in `video` and in `truth`.

    Both means are taken over the ground truth's visible-garment pixels of each frame (`masks [F, H, W]`); a frame
    without any is NaN.
    """
    errors = []
    for t in range(len(truth)):
        mask = torch.from_numpy(masks[t])
        distance = torch.linalg.vector_norm(video[t][:, mask].mean(1) - truth[t][:, mask].mean(1)) * 255
        errors.append(float(distance) if mask.any() else float("nan"))
    return errors


def garment_colour_error(video: torch.Tensor, truth: torch.Tensor, masks: np.ndarray) -> float:
    """`garment_colour_errors` averaged over the frames that show the garment (NaN where none does)."""
    errors = [e for e in garment_colour_errors(video, truth, masks) if not np.isnan(e)]
    return float(np.mean(errors)) if errors else float("nan")


def score_video(video: torch.Tensor, truth: torch.Tensor, masks: np.ndarray, scored: ScoredFrames) -> dict:
    """Per-video scores of `video` against `truth` (`[F, 3, H, W]` in [0, 1]) on the scored frames; the motion
    is the whole clip's, frame 0 included, since a jump away from the input is motion too. The per-frame lists
    hold the scored frames' PSNR and colour error in order, so drift over the clip shows."""
    psnr, ssim = mean_psnr_ssim(video, truth, scored)
    chosen, truth_chosen, masks_chosen = scored.select(video), scored.select(truth), masks[scored.first :]
    colour_errors = garment_colour_errors(chosen, truth_chosen, masks_chosen)
    return {
        "psnr": psnr,
        "ssim": ssim,
        "garment_colour_error": garment_colour_error(chosen, truth_chosen, masks_chosen),
        "motion": motion_magnitude(video),
        "psnr_per_frame": metric_psnr(chosen, truth_chosen).tolist(),
        "garment_colour_error_per_frame": colour_errors,
    }


def vae_reconstruction(cfg: QuickstartConfig, truth: torch.Tensor, path: Path) -> Path:
    """`truth [F, 3, H, W]` encoded (posterior mean) and decoded by the quickstart's VAE, written to `path` as an mp4
    the way generated videos are, so its row shows what the decoder and the video file allow at best."""
    from ..data.video_io import write_mp4
    from ..networks.encoders import FrozenEncoders

    encoders = FrozenEncoders.from_pretrained(vae=str(cfg.vae_dir), clip=None, preprocessing="standard")
    latents = encoders.encode_posterior(truth).mode() * encoders.latent_scale
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_mp4(encoders.decode_latents(latents), path)


def held_out_truth(cfg: QuickstartConfig, source: Path, start: int, frames: int, size) -> tuple[torch.Tensor, np.ndarray]:
    """The ground-truth frames `[F, 3, H, W]` of a held-out synthetic video and its garment masks `[F, H, W]`."""
    from ..data.synthetic import clip_params, render_clip
    from ..data.video_io import read_video_frames

    truth = read_video_frames(source, start=start, count=frames, size=size)
    split_index = int(source.stem.rsplit("_", 1)[1])  # synthetic_0003 -> 3
    _, masks = render_clip(clip_params(cfg.seed, "test", split_index), start + frames, size, garment_masks=True)
    return truth, masks[start:]


def evaluate(cfg: QuickstartConfig, videos: dict[str, list[Path]], size, *, grid: Path | None = None) -> dict:
    """Scores of every method on every test clip, their means, and the verdicts; with `grid`, also the picture of
    every clip's frames there (`comparison_grid`)."""
    from ..data.video_io import read_video_frames

    methods = [*videos, "static", VAE_ROW]  # trained, untrained (and the student), the still input, the VAE's ceiling
    per_video = {method: [] for method in methods}
    truth_motion, shown = [], []
    for index, trained_path in enumerate(videos["trained"]):
        sidecar = json.loads(trained_path.with_suffix(".json").read_text())
        source, start, frames = Path(sidecar["source"]), sidecar["start_frame"], sidecar["frames"]
        truth, masks = held_out_truth(cfg, source, start, frames, size)
        truth_motion.append(motion_magnitude(truth))
        reconstruction = trained_path.parent.parent / VAE_ROW / f"{source.stem}.mp4"
        if not reconstruction.is_file():
            vae_reconstruction(cfg, truth, reconstruction)
        paths = {method: made[index] for method, made in videos.items()} | {"static": source, VAE_ROW: reconstruction}
        candidates = {method: read_video_frames(paths[method], size=size) for method in [*videos, VAE_ROW]}
        candidates["static"] = truth[:1].expand_as(truth)
        for method, video in candidates.items():
            scores = score_video(video, truth, masks, SCORED)
            per_video[method].append({"video": str(paths[method]), **scores})
        shown.append({"ground truth": truth, **{m: candidates[m] for m in (VAE_ROW, *videos)}})
    if grid is not None:
        comparison_grid(shown, grid)

    gt_motion = float(np.mean(truth_motion))
    summary = {}
    for method, rows in per_video.items():
        means = {key: float(np.mean([r[key] for r in rows])) for key in ("psnr", "ssim", "garment_colour_error", "motion")}
        means["motion_ratio"] = means["motion"] / gt_motion
        for key in ("psnr_per_frame", "garment_colour_error_per_frame"):
            means[key] = np.nanmean([r[key] for r in rows], axis=0).tolist()
        summary[method] = means
    trained, untrained, static = summary["trained"], summary["untrained"], summary["static"]
    verdicts = {
        "trained_beats_untrained": trained["psnr"] >= untrained["psnr"] + CLEAR_MARGIN_DB
        and trained["ssim"] > untrained["ssim"]
        and trained["garment_colour_error"] < untrained["garment_colour_error"],
        "motion_plausible": MOTION_RANGE[0] <= trained["motion_ratio"] <= MOTION_RANGE[1],
        "trained_beats_static_psnr": trained["psnr"] > static["psnr"],
        "trained_beats_static_ssim": trained["ssim"] > static["ssim"],
    }
    return {
        "ground_truth_motion": gt_motion,
        "methods": summary,
        "per_video": per_video,
        "verdicts": verdicts,
        **SCORED.record(),
    }


def comparison_grid(clips: list[dict[str, torch.Tensor]], path: Path) -> Path:
    """One PNG of every clip: a row per video (`name -> [F, 3, H, W]` in [0, 1]: ground truth first, whose frame 0
    is the input photo, then each method's), a column per frame, a row's name at its left and a gap between clips."""
    from PIL import Image, ImageDraw

    from ..data.video_io import frames_to_uint8

    frames, height, width = next(iter(clips[0].values())).shape[0], *next(iter(clips[0].values())).shape[-2:]
    cell_h, cell_w, label_w, gap = height * GRID_SCALE, width * GRID_SCALE, 150, 2
    rows = sum(len(clip) for clip in clips)
    canvas = Image.new("RGB", (label_w + frames * (cell_w + gap), rows * (cell_h + gap) + len(clips) * 3 * gap), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for clip in clips:
        for name, video in clip.items():
            draw.text((4, y + cell_h // 2 - 6), LABELS.get(name, name), fill="black")
            for t, frame in enumerate(frames_to_uint8(video[:frames])):
                tile = Image.fromarray(frame).resize((cell_w, cell_h), Image.NEAREST)
                canvas.paste(tile, (label_w + t * (cell_w + gap), y))
            y += cell_h + gap
        y += 3 * gap
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _per_frame_table(methods: dict, key: str, first: int, digits: int) -> list[str]:
    count = len(next(iter(methods.values()))[key])
    lines = [
        "| method | " + " | ".join(f"frame {first + i}" for i in range(count)) + " |",
        "| --- |" + " ---: |" * count,
    ]
    for method, r in methods.items():
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(f"{v:.{digits}f}" for v in r[key]) + " |")
    return lines


def vae_description(info: dict) -> str:
    """Which tiny VAE a run used, from its encoders' `fit.json`."""
    if info.get("vae") == "packaged":
        fit = info["fit"]
        return (f"the packaged pretrained one, fitted for {info['vae_steps']} steps on {fit['n_videos']} synthetic videos "
                "of its own (`--make_vae`)")  # fmt: skip
    return f"fitted on this run's training videos for {info['vae_steps']} steps (`--vae_steps`)"


def report_markdown(report: dict) -> str:
    m, v = report["methods"], report["verdicts"]
    lines = [
        "# FashionFlow quickstart report",
        "",
        f"{report['test_clips']} held-out synthetic clips of {report['frames']} frames at {report['size'][0]}x"
        f"{report['size'][1]}, sampled with {report['sampling_steps']} DDPM steps; scored: {report['scored_frames']}. "
        f"Trained: {report['train_steps']} steps of the "
        f"{report['config']['preset']} preset; untrained: the same configuration freshly initialised; static: the input "
        "frame repeated."
        + (
            f" Student: {report['config']['student_steps']}-step sampling (LCM) of a student distilled from the trained "
            f"model for {report['config']['distill_train_steps']} steps (`--distill`)."
            if STUDENT in m
            else ""
        )
        + f" VAE: {vae_description(report['encoders'])}.",
        "",
        f"Measured on {report['machine']}, seed {report['config']['seed']}: this run took {report['seconds']:.0f} s ("
        + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in report["stage_seconds"].items())
        + "; a stage reused from an earlier run takes about nothing).",
        "",
        "| method | PSNR (dB) | SSIM | garment colour error | motion | motion / ground truth |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method in m:
        r = m[method]
        lines.append(
            f"| {LABELS.get(method, method)} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['garment_colour_error']:.1f} | "
            f"{r['motion']:.2f} | {r['motion_ratio']:.2f} |"
        )
    lines += [
        f"| ground truth | | | | {report['ground_truth_motion']:.2f} | 1.00 |",
        "",
        "Garment colour error: distance (0-255 RGB) between the mean colour inside the ground truth's garment mask "
        "in the generated and the real frame. Motion: mean absolute change between consecutive frames (0-255). "
        "Ground truth through the VAE: the real frames encoded and decoded by the quickstart's VAE, the best the "
        "decoder allows.",
        "",
        "Garment colour error per frame (mean over the clips; drift shows as a rising row):",
        "",
        *_per_frame_table(m, "garment_colour_error_per_frame", report["first_scored_frame"], 1),
        "",
        "PSNR (dB) per frame:",
        "",
        *_per_frame_table(m, "psnr_per_frame", report["first_scored_frame"], 2),
        "",
        f"Every clip's frames side by side: `{report['grid']}` (rows: ground truth, whose frame 0 is the input photo, "
        "then each method).",
        "",
        f"- trained clearly beats untrained (PSNR +{CLEAR_MARGIN_DB:g} dB or more, higher SSIM, lower colour "
        f"error): **{'yes' if v['trained_beats_untrained'] else 'NO'}**",
        f"- trained motion is of plausible size ({MOTION_RANGE[0]:g}x to {MOTION_RANGE[1]:g}x the ground truth's): "
        f"**{'yes' if v['motion_plausible'] else 'NO'}**",
        f"- against the static copy of the input: PSNR {m['trained']['psnr']:.2f} vs {m['static']['psnr']:.2f} dB "
        f"({'above' if v['trained_beats_static_psnr'] else 'below'}), SSIM {m['trained']['ssim']:.3f} vs "
        f"{m['static']['ssim']:.3f} ({'above' if v['trained_beats_static_ssim'] else 'below'}). A still frame scores "
        "well on per-frame metrics for slow motion; the tiny model has to predict where the figure turns, so it "
        "is not expected to beat it after a few minutes of CPU training.",
    ]
    return "\n".join(lines) + "\n"


def machine() -> str:
    """The machine a report was measured on, named in its "Measured on" line."""
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


class Stopwatch:
    """Seconds per stage, in order: `with watch("training"): ...` adds to `watch.seconds["training"]`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def build_trained_model(cfg: QuickstartConfig, watch: Stopwatch | None = None) -> tuple[Path, dict, list[Path]]:
    """Stages 1-3 up to training: (trained checkpoint, encoder fit info, held-out test videos)."""
    from ..data.synthetic import make_synthetic_dataset

    watch = watch or Stopwatch()
    size = _tiny_image_size()
    with watch("dataset"):
        data = make_synthetic_dataset(
            cfg.dataset, n_train=cfg.n_train, n_test=cfg.n_test, frames=cfg.video_frames, size=size, seed=cfg.seed
        )
    print(f"dataset: {cfg.dataset} ({data['written']} videos written, {data['reused']} reused)")
    with watch("encoders"):
        encoder_info = build_encoders(cfg, data["train"], size)
    with watch("projection"):
        latents = project(cfg)
    with watch("training"):
        trained = train(cfg, latents)
    return trained, encoder_info, data["test"]


def run(cfg: QuickstartConfig) -> dict:
    """All stages; returns the report (also written to `result_dir/report.{md,json}`)."""
    started, watch = time.perf_counter(), Stopwatch()
    trained, encoder_info, _ = build_trained_model(cfg, watch)
    result = Path(cfg.result_dir)
    with watch("animation"):
        videos = {
            "trained": animate(cfg, trained, result / "trained"),
            "untrained": animate(cfg, untrained_checkpoint(cfg, trained), result / "untrained"),
        }
    if cfg.distill:
        with watch("distillation"):
            student = distill(cfg, trained, cfg.work / "fashion_dataset_tensor")
            videos[STUDENT] = animate(cfg, student, result / STUDENT, sampler="lcm", steps=cfg.student_steps)
    size = _tiny_image_size()
    with watch("report"):
        report = evaluate(cfg, videos, size, grid=result / "grid.png")
    sidecar = json.loads(videos["trained"][0].with_suffix(".json").read_text())  # how the trained videos were made
    report.update(
        grid=str(result / "grid.png"),
        first_scored_frame=SCORED.first,
        test_clips=len(videos["trained"]),
        frames=sidecar["frames"],
        sampling_steps=sidecar["steps"],
        size=list(size),
        train_steps=cfg.train_steps,
        trained_checkpoint=str(trained),
        encoders=encoder_info,
        config=asdict(cfg),
        machine=machine(),
        seconds=time.perf_counter() - started,
        stage_seconds=watch.seconds,
    )
    result.mkdir(parents=True, exist_ok=True)
    (result / "report.json").write_text(json.dumps(report, indent=2))
    (result / "report.md").write_text(report_markdown(report))
    return report


def closing_message(cfg: QuickstartConfig, report: dict) -> str:
    from ..networks.checkpoint import RELEASED_CHECKPOINT_URL

    result, work = Path(cfg.result_dir), cfg.work
    return f"""
{report_markdown(report)}
Done in {report["seconds"]:.0f} s.
  videos:       {result / "trained"}/ and {result / "untrained"}/ (mp4 and gif; *_input.png is the photo animated)
  report:       {result / "report.md"} and report.json
  TensorBoard:  tensorboard --logdir {work / "video_progress"}   (training samples also in {work / "training_sample"}/)
  checkpoints:  {work / "checkpoint"}/ (rerun with a larger --train_steps to continue training)

The real model: download the released checkpoint,
  curl -L -o checkpoint/FashionFlow_checkpoint.pth '{RELEASED_CHECKPOINT_URL}'
then run `python inference.py --image photo.jpg`. It loads the Stable Diffusion v1-4 VAE and
openai/clip-vit-base-patch32 from the hub on first use; on an offline machine pass local copies with
--vae DIR --clip DIR. A GPU makes it practical (70 frames at 640x512).
"""


def build_parser() -> argparse.ArgumentParser:
    defaults = QuickstartConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=defaults.workdir, help="dataset, encoders, latents, checkpoints and logs")
    p.add_argument("--result_dir", default=defaults.result_dir, help="videos and the report")
    p.add_argument("--train_steps", type=int, default=defaults.train_steps, help="training steps of the tiny model")
    p.add_argument(
        "--vae_steps",
        type=int,
        default=defaults.vae_steps,
        help="fit the tiny VAE on this run's videos for this many steps (default 0: load the packaged one)",
    )
    p.add_argument("--make_vae", metavar="DIR", help="only fit a pretrained tiny VAE, the packaged one's way, into DIR "
                   "(its videos in DIR.videos/; the packaged one took 58 minutes on 2 shared cores), then stop")  # fmt: skip
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the dataset, encoders and training")
    p.add_argument("--distill", action="store_true", help="also distil a few-step student and add its row to the report")
    p.add_argument("--student_steps", type=int, default=defaults.student_steps, help="the student's sampling steps")
    p.add_argument(
        "--sample_steps",
        type=positive_int,
        default=defaults.sample_steps,
        help=f"DDPM steps of the animations (default: {defaults.sample_steps}; a rerun with another count animates "
        "again and reuses the rest)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.make_vae:
        target = Path(args.make_vae)
        info = make_vae(target, workdir=target.with_name(target.name + ".videos"), progress=not args.no_progress)
        print(f"wrote {target}: reconstruction PSNR {info['vae_reconstruction_psnr_db']:.2f} dB on its fitting frames")
        return 0
    cfg = QuickstartConfig(
        workdir=args.workdir,
        result_dir=args.result_dir,
        train_steps=args.train_steps,
        vae_steps=args.vae_steps,
        seed=args.seed,
        distill=args.distill,
        student_steps=args.student_steps,
        sample_steps=args.sample_steps,
        progress=not args.no_progress,
    )
    report = run(cfg)
    print(closing_message(cfg, report))
    verdicts = report["verdicts"]
    return 0 if verdicts["trained_beats_untrained"] and verdicts["motion_plausible"] else 1


if __name__ == "__main__":
    sys.exit(main())
