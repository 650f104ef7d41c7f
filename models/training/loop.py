"""Training: `TrainConfig` (every default in one block) and `train(cfg)` (one loop).

Faithful by default to the original (docs/ORIGINAL.md, "Training setup"): per-GPU batch 2, AdamW lr 1e-4 and weight
decay 0.01, 2500 epochs, fp32, no gradient clipping, constant learning rate, the frame-conditioned
eps objective with CLIP + VAE-latent context. What the original lacked is added around it: a seeded
per-rank generator for every random draw, `set_epoch` each epoch, EMA weights, atomic resumable
checkpoints and a guard against non-finite losses.

Resume by rerunning the same command (EDM2 style): `resume='auto'` continues from the newest
checkpoint in `output_dir`. A checkpoint holds weights, optimizer, scheduler, scaler, EMA, step, the
data position (epoch and batch within it) and every rank's RNG states, so a resumed run follows the
same trajectory as an uninterrupted one. `output_dir` must be visible to every rank (shared storage
for multi-node runs).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..core.config import DEFAULT_FPS, ModelConfig, get_preset
from ..core.distributed import DistEnv, all_gather_objects, all_reduce_mean, barrier, cleanup_distributed, setup_distributed
from ..core.outputs import RunLock, ensure_writable_dir
from ..core.precision import MASTER_PRECISIONS, PRECISIONS, autocast, check_precision, check_training_precision, compute_precision
from ..core.progress import progress_bar
from ..data.dataset import unet_layout
from ..data.video_io import encode_gif, write_mp4
from ..diffusion.schedule import NoiseSchedule, frame_conditioned_loss
from ..networks.checkpoint import (
    CheckpointError,
    atomic_write,
    build_models,
    checkpoint_candidates,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    unwrap,
)
from .distill import METHODS, distillation_objective, load_teacher, most_steps, student_sampler
from .master_weights import MasterWeightAdamW, trained_copy
from .report import checkpoint_line, loss_line, start_block, summary_block, validation_line
from .step_tuning import MAX_AUTO_BATCH, StepProbe, StepSettings, apply_checkpointing, default_budget_bytes, tune_step_settings
from .validation import validation_loss

CHECKPOINT_PREFIX = "step_"


@dataclass
class TrainConfig:
    # data and output folders (the original's names)
    dataset_vae: str = "fashion_dataset_tensor"  # projected latents: <name>.pt, <name>_image.pt, manifest.jsonl
    val_dataset_vae: str | None = None  # held-out projected clips (e.g. of fashion_dataset/test): validation, samples
    output_dir: str = "checkpoint"
    log_dir: str = "video_progress"
    sample_dir: str = "training_sample"
    # model: a fresh run builds get_preset(preset) with these overrides; a resumed run takes the checkpoint's
    preset: str = "paper"
    preprocessing: str | None = None
    vae: str | None = None  # where the frozen encoders are loaded from (default: the model config's ids)
    clip: str | None = None
    frames: int | None = None  # clip length taken from each projected video; default: the model config's
    # optimisation (docs/ORIGINAL.md, "Training setup")
    batch_size: int | str = 2  # per process; 'auto': the fastest that fits the memory budget (training/step_tuning.py)
    lr: float = 1e-4
    weight_decay: float = 0.01
    epochs: int = 2500
    max_steps: int | None = None  # optimizer steps; overrides `epochs` when set
    grad_accum: int = 1
    warmup_steps: int = 0  # linear warm-up, then constant (the original: constant, no warm-up)
    grad_clip: float | None = None  # max global gradient norm; None or 0 = off (the original has none)
    ema_decay: float = 0.9999  # 0 = no EMA; ramped up as min(decay, (1 + n) / (10 + n)) over the first updates
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler) | bf16_master (bf16 weights, fp32 masters)
    grad_checkpointing: bool = False
    checkpoint_levels: str = "all"  # with grad_checkpointing: 'all' or the UNet levels recomputed, e.g. '0,1' or '0,mid'
    adamw: str = "auto"  # auto (fused on CUDA and the CPU, foreach elsewhere) | fused | foreach
    compile: bool = False  # torch.compile the training objective (forward and backward)
    memory_budget: float | None = None  # GiB per process: checkpointing (with batch 'auto', the batch too) chosen to fit
    # bookkeeping
    seed: int = 0
    resume: str = "auto"  # 'auto' (newest checkpoint in output_dir, else fresh), 'none', or a checkpoint path
    checkpoint_every: int = 1000  # optimizer steps; the last step is always saved
    keep_last: int = 3  # step checkpoints kept in output_dir (0 = keep all)
    log_every: int = 10
    val_every: int = 1000  # optimizer steps between validation losses (the last step is always validated)
    sample_every: int = 5000  # 0 = no sample videos
    sample_sampler: str | None = None  # default: the pipeline's fast default
    sample_steps: int | None = None
    max_nonfinite: int = 5  # consecutive skipped steps before giving up
    num_workers: int = 2
    device: str | None = None  # default: this rank's GPU, else CPU
    progress: bool = True
    export_safetensors: bool = False  # also write <output_dir>/final.safetensors (EMA weights when on)
    # distillation (models/training/distill.py): a few-step student of a trained model, instead of the original objective
    distill_from: str | None = None  # the teacher: a checkpoint of either format or a pipeline folder; None = no
    distill_steps: int = 4  # the student's default sampling steps, recorded in its checkpoint
    distill_method: str = "consistency"  # or "progressive": one halving round, the teacher at 2 x distill_steps
    teacher_precision: str = "fp32"  # the frozen teacher's weights: fp32, bf16 or fp16


class ResumableSampler(Sampler):
    """A shuffling `DistributedSampler` whose epoch can start part-way (the first `skip` indices are dropped).

    Skipping slices the index list, so resuming mid-epoch loads no data it does not train on.
    """

    def __init__(self, dataset, *, num_replicas: int, rank: int, seed: int):
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(self.inner)[self.skip :])

    def __len__(self) -> int:
        return max(len(self.inner) - self.skip, 0)


def epoch_batches(loader: DataLoader, sampler: ResumableSampler, *, epoch: int, start_batch: int):
    """Yield `(epoch, index of the batch within its epoch, batch)` forever, from batch `start_batch` of `epoch`."""
    while True:
        sampler.set_epoch(epoch, skip=start_batch * loader.batch_size)
        for index, batch in enumerate(loader, start=start_batch):
            yield epoch, index, batch
        epoch, start_batch = epoch + 1, 0


class TrainingObjective(nn.Module):
    """UNet and adapter under one DDP wrapper; `forward` returns the original's loss for one batch."""

    def __init__(self, unet: nn.Module, adapter: nn.Module, schedule: NoiseSchedule):
        super().__init__()
        self.unet, self.adapter, self.schedule = unet, adapter, schedule

    def sample_timesteps(self, batch: int, *, generator=None, device="cpu") -> torch.Tensor:
        return self.schedule.sample_timesteps(batch, generator=generator, device=device)

    def forward(self, latents, clip_hidden, image_latent, t, noise):  # latents [b, c, f, h, w]
        context = self.adapter(clip_hidden, image_latent)
        return frame_conditioned_loss(self.unet, latents, context, self.schedule, t=t, noise=noise)


class EMA:
    """Exponential moving average of the unet and adapter weights (kept on their device, in fp32)."""

    def __init__(self, unet: nn.Module, adapter: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.unet = copy.deepcopy(unwrap(unet)).eval().requires_grad_(False)
        self.adapter = copy.deepcopy(unwrap(adapter)).eval().requires_grad_(False)

    def update(self, unet: nn.Module, adapter: nn.Module) -> None:
        # warm-up so early EMA weights are not dominated by the random initialisation
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        # a `with` block, not a decorator: mutmut (bench/mutation.sh) leaves decorated functions unmutated
        with torch.no_grad():
            for ema, live in ((self.unet, unwrap(unet)), (self.adapter, unwrap(adapter))):
                ema_params, live_params = list(ema.parameters()), list(live.parameters())
                torch._foreach_lerp_(ema_params, live_params, 1 - decay)
                for ema_buf, live_buf in zip(ema.buffers(), live.buffers()):
                    ema_buf.copy_(live_buf)

    def state_dict(self) -> dict:
        return {"net": self.unet.state_dict(), "adapter": self.adapter.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict, *, path) -> None:
        load_weights(self.unet, self.adapter, state, path=path, what="EMA ")
        self.updates = int(state.get("updates", 0))


def rank_generator(seed: int, rank: int) -> torch.Generator:
    """The generator behind every random draw of one rank (timesteps, noise, the VAE's latent sample)."""
    return torch.Generator().manual_seed(seed * 65_536 + rank)


def weights_digest(*modules: nn.Module) -> str:
    """SHA-256 of all parameters and buffers: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in unwrap(module).state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def resolve_resume(resume: str, output_dir, say) -> tuple[Path | None, dict | None]:
    """(path, checkpoint) to resume from: none, the file `resume` names, or for 'auto' the newest readable
    checkpoint in `output_dir` (saying which newer ones could not be read, and why)."""
    if resume in ("", "none"):
        return None, None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {resume}: no such checkpoint; use 'auto', 'none' or an existing .pth file")
        return path, read_checkpoint(path)
    output_dir = Path(output_dir)
    link = output_dir / "latest.pth"
    if link.is_symlink() and not link.exists():
        say(f"{link} points to {os.readlink(link)}, which no longer exists; resuming from the newest readable checkpoint")
    unreadable = []
    for path in checkpoint_candidates(output_dir):
        try:
            return path, read_checkpoint(path)
        except (FileNotFoundError, CheckpointError) as error:
            say(f"not resuming from {path}: {error}")
            unreadable.append(f"{path.name}: {error}")
    if unreadable:
        raise CheckpointError(
            f"none of the {len(unreadable)} checkpoints in {output_dir} can be read; move them away to start afresh, "
            "or pass --resume with a readable checkpoint. " + " | ".join(unreadable)
        )
    return None, None


@contextlib.contextmanager
def claim_outputs(cfg: TrainConfig):
    """Hold the lock on `output_dir` and check every other folder the run writes to (rank 0 writes them all),
    before any work, so that an unusable folder cannot cost the steps trained before the first save."""
    with RunLock(ensure_writable_dir(cfg.output_dir, "--output_dir")):
        ensure_writable_dir(cfg.log_dir, "--log_dir")
        if cfg.sample_every:
            ensure_writable_dir(cfg.sample_dir, "--sample_dir")
        yield


def check_config(cfg: TrainConfig, env: DistEnv) -> None:
    check_training_precision(cfg.precision, "--precision")
    if cfg.adamw not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(f"--adamw must be one of {ADAMW_IMPLEMENTATIONS}, got {cfg.adamw!r}")
    if cfg.precision == "fp16" and env.device.type == "cpu":
        raise ValueError("--precision fp16 needs a GPU (CPU autocast runs in bf16); use --precision bf16 or fp32 on CPU")
    if cfg.batch_size != "auto" and not (isinstance(cfg.batch_size, int) and cfg.batch_size >= 1):
        raise ValueError(f"--batch_size must be a whole number of at least 1 or 'auto', got {cfg.batch_size!r}")
    if cfg.memory_budget is not None and cfg.memory_budget <= 0:
        raise ValueError(f"--memory_budget is in GiB and must be positive, got {cfg.memory_budget}")
    for name in ("grad_accum", "log_every", "val_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.checkpoint_every < 1:
        raise ValueError(f"--checkpoint_every must be at least 1, got {cfg.checkpoint_every}")
    if not 0 <= cfg.ema_decay < 1:
        raise ValueError(f"--ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.distill_from is not None:
        check_precision(cfg.teacher_precision, "--teacher_precision")
        if cfg.distill_method not in METHODS:
            raise ValueError(f"--distill_method must be one of {METHODS}, got {cfg.distill_method!r}")
        most = most_steps(cfg.distill_method)
        if not 1 <= cfg.distill_steps <= most:
            raise ValueError(f"--distill_steps must be between 1 and {most}, got {cfg.distill_steps}")
        if not Path(cfg.distill_from).exists():
            raise FileNotFoundError(f"--distill_from {cfg.distill_from}: no such teacher checkpoint or pipeline folder")


def model_config_for(cfg: TrainConfig, ckpt: dict | None, teacher_config: ModelConfig | None = None) -> ModelConfig:
    """The checkpoint's architecture on resume, else the teacher's when distilling, else the preset; with the
    flags' overrides on a fresh run."""
    if ckpt is None:
        overrides = {k: getattr(cfg, k) for k in ("preprocessing", "vae", "clip") if getattr(cfg, k) is not None}
        return teacher_config.replace(**overrides) if teacher_config else get_preset(cfg.preset, **overrides)
    config = ckpt["config"]
    if cfg.preprocessing is not None and cfg.preprocessing != config.preprocessing:
        raise ValueError(
            f"--preprocessing {cfg.preprocessing} conflicts with the checkpoint being resumed, which was trained with "
            f"'{config.preprocessing}'; drop the flag or start a fresh run in another --output_dir"
        )
    return config


def open_dataset(cfg: TrainConfig, config: ModelConfig, image_size: tuple[int, int], root=None):
    """The projected clips in `root` (default: the training set), each checked against the model's latent shape and
    the images its VAE encodes."""
    from ..data.dataset import LatentVideoDataset

    frames = config.resolve_frames(cfg.frames)
    if frames % config.frame_multiple:
        raise ValueError(f"--frames {frames} must be divisible by {config.frame_multiple} for this model")
    return LatentVideoDataset(
        root or cfg.dataset_vae,
        frames=frames,
        preprocessing=config.preprocessing,
        latent_shape=(config.channels, *config.latent_size),
        image_size=image_size,
    )


def collect_rng_states(generator: torch.Generator, device: torch.device) -> dict:
    """Every rank's RNG states (a collective: call on all ranks), as lists indexed by rank."""
    local = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    gathered = all_gather_objects(local)
    return {key: [g[key] for g in gathered] for key in local}


def restore_rng_states(rng: dict, generator: torch.Generator, env: DistEnv) -> bool:
    """This rank's saved states; False when the checkpoint came from a run with another world size."""
    if len(rng.get("generator", [])) != env.world_size:
        return False
    generator.set_state(rng["generator"][env.rank])
    torch.set_rng_state(rng["torch"][env.rank])
    if env.device.type == "cuda" and rng["cuda"][env.rank] is not None:
        torch.cuda.set_rng_state(rng["cuda"][env.rank], env.device)
    return True


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for old in sorted(output_dir.glob(f"{CHECKPOINT_PREFIX}*.pth"))[:-keep_last]:
        old.unlink(missing_ok=True)


def remove_partial_writes(output_dir: Path) -> None:
    """Temporary files a killed run left mid-write (atomic_write renames only complete files into place)."""
    for tmp in output_dir.glob(f".{CHECKPOINT_PREFIX}*.tmp"):
        tmp.unlink(missing_ok=True)


def point_latest(output_dir: Path, target: Path) -> None:
    """`latest.pth` -> newest checkpoint, replaced atomically (a symlink, so no second copy of the weights)."""
    link = output_dir / "latest.pth"
    tmp = output_dir / ".latest.pth.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target.name, tmp)
        os.replace(tmp, link)
    except OSError:  # filesystems without symlinks: latest_checkpoint() still finds the newest step file
        tmp.unlink(missing_ok=True)


def add_gif(writer, tag: str, video: torch.Tensor, step: int, *, fps: int = DEFAULT_FPS) -> None:
    """Animated GIF of `video` [f, 3, h, w] in [0, 1] as a TensorBoard image (TensorBoard plays GIF images;
    tensorboardX's add_video would need moviepy only to make the same GIF)."""
    from tensorboardX.proto.summary_pb2 import Summary

    h, w = video.shape[-2:]
    image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=encode_gif(video, fps=fps, name=tag))
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


@contextlib.contextmanager
def evaluating(*modules: nn.Module):
    """The modules in eval mode for the block, each back in its own mode after it."""
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


ADAMW_IMPLEMENTATIONS = ("auto", "fused", "foreach")
FUSED_ADAMW_DEVICES = ("cuda", "cpu")  # where torch has a fused AdamW kernel 'auto' takes


def make_optimizer(params, *, lr: float, weight_decay: float, impl: str = "auto", model_params=None) -> torch.optim.AdamW:
    """AdamW with one fused kernel per update (`impl='fused'`), or the multi-tensor `foreach` one (torch's default);
    'auto' fuses on a GPU and on the CPU (torch's fused CPU kernel: 1.6 ms an update of the quickstart's model on 2
    cores, against 6.6 ms for foreach). With `model_params` (their half-precision copies in the network that runs)
    `params` are fp32 master weights (`MasterWeightAdamW`)."""
    params = list(params)
    if impl not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(f"--adamw must be one of {ADAMW_IMPLEMENTATIONS}, got {impl!r}")
    fused = impl == "fused" or (impl == "auto" and all(p.device.type in FUSED_ADAMW_DEVICES for p in params))
    options = dict(lr=lr, weight_decay=weight_decay, fused=fused, foreach=None if fused else True)
    if model_params is not None:
        return MasterWeightAdamW(params, model_params=model_params, **options)
    return torch.optim.AdamW(params, **options)


def checkpoint_levels(cfg: TrainConfig) -> list[str] | None:
    """The UNet levels `--checkpoint_levels` names (None: all of them)."""
    if cfg.checkpoint_levels.strip() == "all":
        return None
    return [level.strip() for level in cfg.checkpoint_levels.split(",") if level.strip()]


def training_autocast(cfg: TrainConfig, device: torch.device, weights_dtype: torch.dtype = torch.float32):
    """Autocast in the run's precision around networks of `weights_dtype`: none around bf16_master's bf16 networks,
    bf16 around fp32 ones (its masters and EMA, when validating)."""
    return autocast(device, compute_precision(cfg.precision), weights_dtype)


@torch.no_grad()
def write_sample(cfg: TrainConfig, writer, unet, adapter, encoders, config: ModelConfig, image, step: int) -> Path:
    """A video from one photo with the project's pipeline: TensorBoard GIF and an mp4 in `sample_dir`."""
    from ..pipeline.pipeline import FashionFlowPipeline

    # a student samples as it will be used
    default = student_sampler(cfg.distill_steps, cfg.distill_method) if cfg.distill_from else {}
    sampler, steps = cfg.sample_sampler or default.get("name"), cfg.sample_steps or default.get("steps")
    options = {k: v for k, v in (("sampler", sampler), ("steps", steps)) if v is not None}
    pipeline = FashionFlowPipeline.from_parts(unet, adapter, encoders)
    with evaluating(unet, adapter):
        video = pipeline(
            image[None],
            generator=torch.Generator().manual_seed(cfg.seed),
            progress=False,
            precision=compute_precision(cfg.precision),
            num_frames=config.resolve_frames(cfg.frames),
            output_type="pt",
            **options,
        ).frames
    writer.add_image("sample/input", image.clamp(0, 1).cpu(), step)
    add_gif(writer, "sample/video", video[0], step)
    return write_mp4(video[0], Path(cfg.sample_dir) / f"step_{step:07d}.mp4")


def train(cfg: TrainConfig, *, local_rank: int | None = None) -> dict:
    """Train (or resume) as described by `cfg`; returns a summary (step, last loss, checkpoint, rank digests)."""
    env = setup_distributed(cfg.device, local_rank)
    try:
        check_config(cfg, env)
        with claim_outputs(cfg) if env.is_main else contextlib.nullcontext():
            return _train(cfg, env)
    finally:
        cleanup_distributed()


@dataclass
class TrainingRun:
    """What one training run holds: built by `start_run`, advanced by the loop in `_train`."""

    cfg: TrainConfig
    env: DistEnv
    config: ModelConfig
    unet: nn.Module
    adapter: nn.Module
    objective: nn.Module  # TrainingObjective, or DistillationObjective when distilling
    model: nn.Module  # the objective, wrapped in DistributedDataParallel when there is a process group
    opt: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: EMA | None
    encoders: nn.Module
    loader: DataLoader
    sampler: ResumableSampler
    batches_per_epoch: int
    total_steps: int
    generator: torch.Generator  # every random draw of this rank
    say: object  # prints on rank 0 only
    writer: object = None  # TensorBoard, rank 0 only
    step: int = 0
    epoch: int = 0
    start_batch: int = 0  # the batch of `epoch` to read next
    loss: float = math.nan  # of the last finite step, averaged over ranks
    last_saved: Path | None = None
    validation: object = None  # the held-out clips (a LatentVideoDataset), when --val_dataset_vae names them
    step_settings: dict | None = None  # how --batch_size auto / --memory_budget chose (training/step_tuning.py)
    val_last: tuple[int, float] | None = None  # (step, validation loss), rank 0 only
    val_best: tuple[int, float] | None = None
    start_step: int = 0  # of this process's run
    started: float = 0.0  # time.perf_counter() when this process's run started

    @property
    def params(self) -> list[nn.Parameter]:
        """The optimizer's weights: the objective's trainable ones, or with --precision bf16_master their fp32 masters."""
        return [p for group in self.opt.param_groups for p in group["params"]]

    @property
    def weights_dtype(self) -> torch.dtype:
        """The dtype of the networks the forward and backward run."""
        return next(self.objective.parameters()).dtype

    @property
    def sample_weights(self) -> tuple[nn.Module, nn.Module]:
        """The weights samples, validation and exports use: the EMA's when there is one."""
        return (self.ema.unet, self.ema.adapter) if self.ema is not None else (self.unet, self.adapter)

    @property
    def sample_source(self) -> str:
        return f"held-out clip {self.validation.names[0]}" if self.validation is not None else "the latest training batch"

    def sample_image(self, result: dict) -> torch.Tensor:
        """The photo sample videos start from: the first held-out clip's (the same at every step) when there are
        held-out clips, else the latest training batch's."""
        return self.validation[0]["image"] if self.validation is not None else result["image"][0]


def choose_resume(cfg: TrainConfig, env: DistEnv, say) -> tuple[Path | None, dict | None]:
    """Rank 0 picks the checkpoint to resume from (after clearing a killed run's partial writes); every rank
    then reads that same file."""
    if env.is_main:
        remove_partial_writes(Path(cfg.output_dir))
    path, ckpt = resolve_resume(cfg.resume, cfg.output_dir, say) if env.is_main else (None, None)
    path = all_gather_objects(path)[0]
    if ckpt is None and path is not None:
        ckpt = read_checkpoint(path, map_location="cpu")
    return path, ckpt


def build_trainables(cfg: TrainConfig, env: DistEnv, config: ModelConfig, ckpt: dict | None, path, teacher=None) -> dict:
    """UNet and adapter (seeded, so identical on every rank; the checkpoint's live weights on resume, a fresh
    student the teacher's), the objective (the original's, or distillation from `teacher`) over them or, with
    --precision bf16_master, over their bf16 copies (training/master_weights.py), its DDP wrapper, AdamW (over the
    fp32 UNet and adapter, the masters), the learning-rate schedule, the fp16 gradient scaler and the EMA."""
    torch.manual_seed(cfg.seed)
    unet, adapter = build_models(config)
    if ckpt is not None:
        load_weights(unet, adapter, ckpt, path=path)  # the EMA's weights are restored with the training state
    elif teacher is not None:
        unet.load_state_dict({k: v.float() for k, v in teacher[0].state_dict().items()})
        adapter.load_state_dict({k: v.float() for k, v in teacher[1].state_dict().items()})
    unet, adapter = unet.to(env.device), adapter.to(env.device)
    trained = [trained_copy(module, cfg.precision) for module in (unet, adapter)]  # the masters themselves, or bf16
    trained[0].enable_gradient_checkpointing(cfg.grad_checkpointing, levels=checkpoint_levels(cfg))
    if teacher is None:
        objective = TrainingObjective(*trained, NoiseSchedule())
    else:
        objective = distillation_objective(cfg.distill_method, *trained, teacher, NoiseSchedule(), cfg.distill_steps)
    objective = objective.to(env.device).train()
    model = objective
    if env.distributed:
        # buffers are fixed at init and identical on every rank: no per-forward buffer broadcast (as the original);
        # gradients live in the all-reduce buckets (no copy in or out); every step uses every parameter in the same
        # order, so the graph is static, except across the no_sync() micro-batches of gradient accumulation
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        model = DistributedDataParallel(
            objective, device_ids=device_ids, forward_sync_buffers=False, gradient_as_bucket_view=True,
            static_graph=cfg.grad_accum == 1 and cfg.distill_from is None,  # distillation calls the student twice
        )  # fmt: skip
    if cfg.compile:
        model = torch.compile(model)  # the backward too (AOTAutograd); DDP's buckets split the graph
    params = [p for p in objective.parameters() if p.requires_grad]  # the masters themselves but with bf16_master
    masters = [p for module in (unet, adapter) for p in module.parameters() if p.requires_grad]
    copies = params if cfg.precision in MASTER_PRECISIONS else None
    opt = make_optimizer(masters, lr=cfg.lr, weight_decay=cfg.weight_decay, impl=cfg.adamw, model_params=copies)
    warmup = (lambda s: min(1.0, (s + 1) / cfg.warmup_steps)) if cfg.warmup_steps > 0 else (lambda s: 1.0)
    return dict(
        unet=unet,
        adapter=adapter,
        objective=objective,
        model=model,
        opt=opt,
        lr_scheduler=torch.optim.lr_scheduler.LambdaLR(opt, warmup),
        scaler=torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "fp16"),
        ema=EMA(unet, adapter, cfg.ema_decay) if cfg.ema_decay > 0 else None,
    )


def open_loader(cfg: TrainConfig, env: DistEnv, dataset) -> dict:
    """The projected clips behind one resumable sampler (distributed or not), and how many steps to train."""
    sampler = ResumableSampler(dataset, num_replicas=env.world_size, rank=env.rank, seed=cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=True,
        pin_memory=env.device.type == "cuda",
    )
    batches_per_epoch = len(sampler.inner) // cfg.batch_size
    if batches_per_epoch == 0:
        raise ValueError(
            f"{cfg.dataset_vae} holds {len(dataset)} videos: too few for {env.world_size} process(es) x batch "
            f"{cfg.batch_size}; project more videos or lower --batch_size"
        )
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * batches_per_epoch // cfg.grad_accum
    return dict(loader=loader, sampler=sampler, batches_per_epoch=batches_per_epoch, total_steps=total_steps)


def open_validation(cfg: TrainConfig, config: ModelConfig, encoders):
    """The held-out clips of `--val_dataset_vae`, checked like the training set's; None without the flag."""
    if cfg.val_dataset_vae is None:
        return None
    return open_dataset(cfg, config, encoders.image_size(config.latent_size), cfg.val_dataset_vae)


def settle_step_settings(cfg: TrainConfig, env: DistEnv, trainables: dict, encoders, dataset, ckpt, say):
    """`--batch_size auto` and `--memory_budget`: the resumed checkpoint's choice, else a probe's (rank 0's on every
    rank); the config with that batch and checkpointing, and the record the checkpoints keep. Without either flag,
    the config as it is."""
    if cfg.batch_size != "auto" and cfg.memory_budget is None:
        return cfg, None
    record = (ckpt or {}).get("step_settings")
    if record is not None:
        say(f"step settings of the checkpoint resumed: {StepSettings(**record['chosen']).describe()}")
    else:
        objective, config = trainables["objective"], trainables["config"]
        unet = objective.unet  # the network that runs: with --precision bf16_master the masters' bf16 copy
        shape = dict(
            channels=config.channels,
            frames=dataset.frames,
            latent_size=config.latent_size,
            context_tokens=config.context_tokens,
            context_dim=config.context_dim,
        )
        masters = [trainables["unet"], trainables["adapter"]]  # the objective's own networks but with bf16_master
        resident = [objective, *masters, encoders, *getattr(objective, "teacher", ())]
        autocast = training_autocast(cfg, env.device, next(objective.parameters()).dtype)
        probe = StepProbe(objective, unet, resident=resident, shape=shape, autocast=autocast, device=env.device)
        budget = round(cfg.memory_budget * 2**30) if cfg.memory_budget else default_budget_bytes(env.device)
        record = tune_step_settings(
            probe,
            batch_size=None if cfg.batch_size == "auto" else cfg.batch_size,
            max_batch=max(1, min(MAX_AUTO_BATCH, len(dataset) // env.world_size)),
            levels=len(unet.downs),
            budget=budget,
            say=say,
        )
        record = all_gather_objects(record)[0]  # every rank trains with rank 0's choice
    chosen = StepSettings(**record["chosen"])
    apply_checkpointing(trainables["objective"].unet, chosen.checkpointing)
    levels = "all" if chosen.checkpointing in ("off", "all") else chosen.checkpointing
    cfg = replace(cfg, batch_size=chosen.batch_size, grad_checkpointing=chosen.checkpointing != "off", checkpoint_levels=levels)
    return cfg, record


def config_text(run: TrainingRun) -> str:
    """The run's settings and model configuration for TensorBoard's text tab (an indented block: JSON kept as is)."""
    text = json.dumps({"train": asdict(run.cfg), "model": run.config.to_dict(), "world_size": run.env.world_size}, indent=2)
    return "\n".join("    " + line for line in text.splitlines())


def start_run(cfg: TrainConfig, env: DistEnv) -> TrainingRun:
    """Everything the loop needs, from a checkpoint when resuming; rank 0 says what the run is about to do."""
    from tqdm.auto import tqdm

    from ..networks.encoders import FrozenEncoders

    say = tqdm.write if env.is_main else (lambda message: None)
    path, ckpt = choose_resume(cfg, env, say)
    teacher = None
    if cfg.distill_from is not None:
        teacher = load_teacher(cfg.distill_from, preset=cfg.preset, dtype=PRECISIONS[cfg.teacher_precision])
    config = model_config_for(cfg, ckpt, teacher[2] if teacher else None)
    if teacher is not None and teacher[2].replace(vae="", clip="") != config.replace(vae="", clip=""):
        raise ValueError(f"--distill_from {cfg.distill_from}: the teacher's model configuration differs from the student's")
    encoders = FrozenEncoders.from_config(config, vae=cfg.vae, clip=cfg.clip, device=env.device)
    encoders.check_config(config)
    dataset = open_dataset(cfg, config, encoders.image_size(config.latent_size))
    trainables = build_trainables(cfg, env, config, ckpt, path, teacher[:2] if teacher else None)
    cfg, step_settings = settle_step_settings(cfg, env, {**trainables, "config": config}, encoders, dataset, ckpt, say)
    run = TrainingRun(
        cfg=cfg,
        env=env,
        config=config,
        encoders=encoders,
        generator=rank_generator(cfg.seed, env.rank),
        say=say,
        **trainables,
        **open_loader(cfg, env, dataset),
        validation=open_validation(cfg, config, encoders),
        step_settings=step_settings,
    )
    if ckpt is not None:
        started_from = restore_training_state(run, ckpt, path)
    else:
        started_from = "a fresh run" + ("" if cfg.resume in ("", "none") else f" (no checkpoint in {cfg.output_dir})")
    say(start_block(run, started_from))
    if run.step >= run.total_steps:
        say(f"step {run.step} reaches the {run.total_steps} steps asked for: nothing to train; raise --max_steps to go on")
    if env.is_main:
        run.writer = open_log_writer(cfg.log_dir)
        run.writer.add_text("config", config_text(run), run.step)
    run.start_step, run.started = run.step, time.perf_counter()
    return run


def restore_training_state(run: TrainingRun, ckpt: dict, path: Path) -> str:
    """Optimizer, schedule, scaler, EMA, position, validation record and RNG streams from `ckpt`; a file without
    training state (a released or exported checkpoint) only initialises the weights. Says where the run starts."""
    if "step" not in ckpt:
        return f"the weights of {path} (it holds no training state), at step 0"
    run.opt.load_state_dict(ckpt["opt"])
    run.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    if run.scaler.is_enabled() and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    if run.ema is not None and ckpt.get("ema"):
        run.ema.load_state_dict(ckpt["ema"], path=path)
    run.step, run.epoch, run.start_batch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
    run.loss, run.last_saved = ckpt.get("loss", run.loss), path
    validation = ckpt.get("validation") or {}
    run.val_last, run.val_best = (tuple(validation[k]) if validation.get(k) else None for k in ("last", "best"))
    same_layout = ckpt.get("world_size") == run.env.world_size and ckpt.get("batch_size") == run.cfg.batch_size
    if not (same_layout and restore_rng_states(ckpt.get("rng", {}), run.generator, run.env)):
        run.say(
            f"{path} was written by a run with another world size or batch size: continuing from the next "
            "epoch with fresh random streams (the trajectory will differ from an uninterrupted run)"
        )
        run.generator = rank_generator(run.cfg.seed + run.step, run.env.rank)
        run.epoch, run.start_batch = run.epoch + 1, 0
    return f"resuming from {path} at step {run.step} (epoch {run.epoch}, batch {run.start_batch})"


def open_log_writer(log_dir: str):
    """A TensorBoard writer with an event file of its own. tensorboardX names the file by the second and the host
    only, so a run resumed within the second of the previous one's start would truncate that run's file."""
    from tensorboardX import SummaryWriter

    return SummaryWriter(log_dir, filename_suffix=f".{os.getpid()}.{time.time_ns()}")


def accumulate_gradients(run: TrainingRun, batches) -> dict:
    """Forward and backward over `grad_accum` micro-batches; the loss's mean (and whether it was finite) over
    ranks, the clip names, the last conditioning image and where the data stands after them."""
    cfg, dev = run.cfg, run.env.device
    autocast = training_autocast(cfg, dev, run.weights_dtype)
    loss_sum, names, waited = torch.zeros((), device=dev), [], 0.0
    for micro in range(cfg.grad_accum):
        asked = time.perf_counter()
        epoch, index, batch = next(batches)
        waited += time.perf_counter() - asked  # the loader behind: the device may be idle meanwhile
        image = batch["image"].to(dev, non_blocking=True)  # [b, 3, H, W] in [0, 1]
        latents = unet_layout(batch["latents"]).to(dev, non_blocking=True)
        names += list(batch["name"])
        with torch.no_grad():  # frozen encoders; the VAE latent is a sample, as in the original
            clip_hidden = run.encoders.encode_clip(image)
            image_latent = run.encoders.encode_frames(image, generator=run.generator).to(dev)
        t = run.objective.sample_timesteps(latents.shape[0], generator=run.generator, device=dev)
        noise = torch.randn(latents.shape, generator=run.generator).to(dev)
        syncing = micro == cfg.grad_accum - 1 or not run.env.distributed  # DDP all-reduces on the last one only
        with contextlib.nullcontext() if syncing else run.model.no_sync():
            with autocast:
                loss = run.model(latents, clip_hidden, image_latent, t, noise)
            run.scaler.scale(loss / cfg.grad_accum).backward()
        loss_sum += loss.detach().float()
    mean, nonfinite = all_reduce_mean(torch.stack([loss_sum / cfg.grad_accum, (~torch.isfinite(loss_sum)).float()]))
    position = (epoch + 1, 0) if index + 1 == run.batches_per_epoch else (epoch, index + 1)  # the next batch to read
    return dict(loss=mean, finite=bool(nonfinite == 0), names=names, image=image, position=position, data_wait=waited)


def optimizer_step(run: TrainingRun, result: dict, nonfinite_run: int) -> tuple[torch.Tensor, int]:
    """Clip, step, schedule and update the EMA, or skip a non-finite step (stopping after `max_nonfinite` in a
    row); returns the gradient norm and the new count of consecutive skipped steps."""
    cfg = run.cfg
    run.scaler.unscale_(run.opt)
    if isinstance(run.opt, MasterWeightAdamW):
        run.opt.take_grads()  # the bf16 gradients into the fp32 masters', so the norm and the clipping are fp32
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip or math.inf)
    # fp16: GradScaler skips steps with inf/nan gradients itself and lowers its scale
    if result["finite"] and (cfg.precision == "fp16" or bool(torch.isfinite(grad_norm))):
        run.scaler.step(run.opt)
        run.lr_scheduler.step()
        if run.ema is not None:
            run.ema.update(run.unet, run.adapter)
        run.loss, nonfinite_run = result["loss"].item(), 0
    else:
        nonfinite_run += 1
        names = sorted(n for rank_names in all_gather_objects(result["names"]) for n in rank_names)
        run.say(
            f"step {run.step + 1}: non-finite loss or gradient (loss {result['loss'].item():.4g}, grad norm "
            f"{grad_norm.item():.4g}) on videos {names}; skipped this update, weights unchanged"
        )
        if nonfinite_run >= cfg.max_nonfinite:
            raise FloatingPointError(
                f"{nonfinite_run} consecutive non-finite steps (last at step {run.step + 1}, videos {names}); "
                "stopping. Check those videos' projected latents, or try a lower --lr, --precision fp32 "
                "or --grad_clip 1.0"
            )
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)
    return grad_norm, nonfinite_run


def log_scalars(run: TrainingRun, losses: list[float], grad_norm: torch.Tensor, seconds: float, data_wait: float) -> dict:
    """Mean loss over the steps since the last log, learning rate, gradient norm, throughput and the share of the
    time spent waiting for the data loader, to TensorBoard (rank 0); returns them by tag."""
    samples = run.cfg.batch_size * run.cfg.grad_accum * run.env.world_size * len(losses)
    scalars = {
        "train/loss": sum(losses) / len(losses),
        "train/lr": run.opt.param_groups[0]["lr"],
        "train/grad_norm": grad_norm.item(),
        "train/samples_per_sec": samples / max(seconds, 1e-9),
        "train/data_wait_fraction": min(1.0, data_wait / max(seconds, 1e-9)),
    }
    for tag, value in scalars.items():
        run.writer.add_scalar(tag, value, run.step)
    return scalars


def validate(run: TrainingRun) -> None:
    """The validation loss of the sample weights (the EMA's when on) on the held-out clips, to TensorBoard and the
    console (rank 0)."""
    unet, adapter = run.sample_weights
    with evaluating(unet, adapter):
        loss = validation_loss(
            TrainingObjective(unet, adapter, run.objective.schedule), run.validation, run.encoders, seed=run.cfg.seed,
            batch_size=run.cfg.batch_size, device=run.env.device, autocast=training_autocast(run.cfg, run.env.device),
        )  # fmt: skip
    run.val_last = (run.step, loss)
    if run.val_best is None or loss < run.val_best[1]:
        run.val_best = run.val_last
    run.writer.add_scalar("val/loss", loss, run.step)
    run.say(validation_line(run))


def save_run(run: TrainingRun) -> None:
    """Checkpoint every piece of training state (a collective: every rank takes part), after checking that the
    ranks' weights are bit-identical; rank 0 writes it atomically, points latest.pth at it and prunes old ones."""
    digests = all_gather_objects(weights_digest(run.unet, run.adapter))
    if len(set(digests)) != 1:
        raise RuntimeError(f"step {run.step}: the ranks' weights diverged (digests {digests}); this is a bug")
    rng = collect_rng_states(run.generator, run.env.device)
    if run.env.is_main:
        output_dir = Path(run.cfg.output_dir)
        run.last_saved = save_checkpoint(
            output_dir / f"{CHECKPOINT_PREFIX}{run.step:07d}.pth",
            run.unet,
            run.adapter,
            run.config,
            opt=run.opt.state_dict(),
            lr_scheduler=run.lr_scheduler.state_dict(),
            scaler=run.scaler.state_dict(),
            ema=run.ema.state_dict() if run.ema is not None else None,
            step=run.step,
            epoch=run.epoch,
            batch_in_epoch=run.start_batch,
            world_size=run.env.world_size,
            batch_size=run.cfg.batch_size,
            rng=rng,
            loss=run.loss,
            validation={"last": run.val_last, "best": run.val_best},
            train_config=asdict(run.cfg),
            sampler=student_sampler(run.cfg.distill_steps, run.cfg.distill_method) if run.cfg.distill_from else None,
            step_settings=run.step_settings,
        )
        point_latest(output_dir, run.last_saved)
        prune_checkpoints(output_dir, run.cfg.keep_last)
        run.say(checkpoint_line(run))
    barrier()


def finish_run(run: TrainingRun) -> dict:
    """The run's summary (also `train_summary.json` and the console on rank 0), after the optional safetensors
    export. Validation losses are rank 0's (None elsewhere)."""
    (val_step, val_loss), (best_step, best_loss) = run.val_last or (None, None), run.val_best or (None, None)
    summary = {
        "step": run.step,
        "epoch": run.epoch,
        "steps_this_run": run.step - run.start_step,
        "seconds": time.perf_counter() - run.started,
        "loss": run.loss if math.isfinite(run.loss) else None,
        "val_loss": val_loss,
        "val_step": val_step,
        "best_val_loss": best_loss,
        "best_val_step": best_step,
        "checkpoint": str(run.last_saved) if run.last_saved else None,
        "rank_weight_digests": all_gather_objects(weights_digest(run.unet, run.adapter)),
        "world_size": run.env.world_size,
    }
    if run.env.is_main:
        output_dir = Path(run.cfg.output_dir)
        if run.cfg.export_safetensors:
            from ..networks.checkpoint import export_safetensors

            summary["safetensors"] = str(export_safetensors(output_dir / "final.safetensors", *run.sample_weights, run.config))
        run.writer.close()
        text = json.dumps(summary, indent=2, allow_nan=False)
        atomic_write(output_dir / "train_summary.json", lambda tmp: Path(tmp).write_text(text))
        run.say(summary_block(summary, run.cfg))
    return summary


def _train(cfg: TrainConfig, env: DistEnv) -> dict:
    run = start_run(cfg, env)
    batches = epoch_batches(run.loader, run.sampler, epoch=run.epoch, start_batch=run.start_batch)
    bar = progress_bar(total=run.total_steps, initial=run.step, disable=not (env.is_main and cfg.progress), desc="train")
    nonfinite_run, losses, log_start, data_wait = 0, [], time.perf_counter(), 0.0
    while run.step < run.total_steps:
        result = accumulate_gradients(run, batches)
        grad_norm, nonfinite_run = optimizer_step(run, result, nonfinite_run)
        losses += [run.loss] if nonfinite_run == 0 else []
        data_wait += result["data_wait"]
        run.step += 1
        run.epoch, run.start_batch = result["position"]
        bar.update(1)
        last = run.step == run.total_steps

        if env.is_main and (run.step % cfg.log_every == 0 or last) and losses:
            scalars = log_scalars(run, losses, grad_norm, time.perf_counter() - log_start, data_wait)
            if bar.disable:  # --no-progress: the loss still reaches the console
                run.say(loss_line(run, scalars))
            else:
                bar.set_postfix(loss=f"{scalars['train/loss']:.4f}", epoch=run.epoch)
            losses, log_start, data_wait = [], time.perf_counter(), 0.0
        if run.validation is not None and (run.step % cfg.val_every == 0 or last):
            if env.is_main:
                validate(run)
            barrier()
        if cfg.sample_every and (run.step % cfg.sample_every == 0 or last):
            if env.is_main:
                image = run.sample_image(result)
                path = write_sample(cfg, run.writer, *run.sample_weights, run.encoders, run.config, image, run.step)
                run.say(f"step {run.step}: sample video {path} from {run.sample_source}")
            barrier()
        if run.step % cfg.checkpoint_every == 0 or last:
            save_run(run)
    bar.close()
    return finish_run(run)
