"""Train FashionFlow on projected latents (see project_latent_space.py).

    python train.py                                             # one process (GPU if there is one)
    torchrun --nproc_per_node=4 train.py                        # 4 GPUs on this machine
    python -m torch.distributed.launch --nproc_per_node=4 train.py   # the original's launcher
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 train.py

Rerun the same command to resume: `--resume auto` (the default) continues from the newest checkpoint in
`--output_dir`. Defaults are the paper's (TrainConfig in models/training/loop.py); `--preset tiny` is a model small
enough for a laptop CPU.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..core.cli import run_command
from ..core.config import PREPROCESSING_MODES, PRESETS
from ..core.distributed import add_local_rank_argument
from ..core.precision import PRECISIONS, TRAINING_PRECISIONS

HELP = {
    "dataset_vae": "folder of projected latents written by project_latent_space.py",
    "val_dataset_vae": "held-out projected clips (e.g. the projection of fashion_dataset/test): a validation loss with "
    "fixed timesteps and noise, and the sample videos' photo",
    "output_dir": "checkpoint folder (step_<n>.pth, latest.pth); on several nodes it must be shared storage",
    "log_dir": "TensorBoard event folder",
    "sample_dir": "folder for the periodic sample videos (mp4)",
    "preset": "model configuration for a fresh run: 'paper', 'tiny' or 'quickstart' (a resumed run keeps its checkpoint's)",
    "preprocessing": "encoder input convention: 'legacy' (the released checkpoint's) or 'standard'; default: the preset's",
    "vae": "VAE to load (hub id or local folder); default: the model config's",
    "clip": "CLIP vision model to load (hub id or local folder); default: the model config's",
    "frames": "frames per training clip; default: the model config's (70 for the paper)",
    "batch_size": "videos per process per micro-batch, or 'auto': the most clips per second that fit --memory_budget, "
    "measured by a short probe at the start and kept in the checkpoints (a resumed run reuses it)",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "epochs": "passes over the dataset (ignored when --max_steps is set)",
    "max_steps": "stop after this many optimizer steps",
    "grad_accum": "micro-batches accumulated per optimizer step",
    "warmup_steps": "linear learning-rate warm-up steps (0 = constant learning rate, as the original)",
    "grad_clip": "clip the global gradient norm to this value (default off, as the original)",
    "ema_decay": "decay of the EMA weights used for samples and exports (0 = no EMA)",
    "precision": "fp32, bf16 or fp16 autocast (fp16 needs a GPU and uses a GradScaler), or bf16_master: bf16 weights "
    "and gradients without autocast, fp32 master weights and AdamW state in the optimizer (checkpoints hold the fp32 "
    "masters)",
    "grad_checkpointing": "recompute UNet activations in the backward pass to save memory",
    "checkpoint_levels": "with --grad_checkpointing, the UNet levels recomputed: 'all', or a comma list of levels "
    "counted from the top (highest resolution) and 'mid', e.g. '0' or '0,1' (the top levels hold most activations)",
    "adamw": "AdamW implementation: 'fused' (one kernel per update), 'foreach', or 'auto' (fused on a GPU and the CPU, "
    "else foreach)",
    "memory_budget": "GiB one process may use: gradient checkpointing (and with --batch_size auto, the batch) is chosen "
    "by a probe at the start as the fastest setting that fits; with --batch_size auto and no budget, 90%% of the GPU "
    "(half the machine's memory on a CPU)",
    "compile": "torch.compile the training step's forward and backward (off until a GPU shows it pays)",
    "seed": "seed for the weights, the data order and every random draw",
    "resume": "'auto' (newest checkpoint in --output_dir, else a fresh run), 'none', or a checkpoint path",
    "checkpoint_every": "write a checkpoint every this many optimizer steps (and at the last step)",
    "keep_last": "how many step checkpoints to keep (0 = all)",
    "log_every": "log the loss (averaged over ranks and steps), lr, gradient norm and throughput every N steps (to "
    "TensorBoard, and to the console with --no-progress)",
    "val_every": "compute the validation loss every N steps (and at the last step); needs --val_dataset_vae",
    "sample_every": "generate a sample video every N steps (0 = never), from the first held-out clip's photo when "
    "--val_dataset_vae is given, else from a training image",
    "sample_sampler": "sampler for the sample videos; default: the pipeline's",
    "sample_steps": "denoising steps for the sample videos; default: the pipeline's",
    "max_nonfinite": "stop after this many consecutive steps with a non-finite loss or gradient",
    "num_workers": "data-loading worker processes per rank",
    "device": "cpu, cuda, cuda:1, ...; default: this rank's GPU, else the CPU",
    "progress": "show a progress bar on rank 0 (refreshed at most every few seconds when the output is not a terminal)",
    "export_safetensors": "also write <output_dir>/final.safetensors at the end",
    "distill_from": "distil a few-step student from this teacher (a checkpoint of either format or a pipeline folder) "
    "instead of training with the original objective; the student starts as the teacher (see --distill_method)",
    "distill_steps": "the student's default sampling steps, recorded in its checkpoint (1 to 50 for consistency; for "
    "progressive, N of one halving round: the teacher samples with DDIM at 2N steps, the student at N)",
    "distill_method": "consistency: latent consistency distillation, the student samples with LCMScheduler; "
    "progressive: one round of progressive distillation (Salimans & Ho 2022), the student samples with DDIMScheduler "
    "at --distill_steps; chain rounds by distilling from the previous student with half its steps",
    "teacher_precision": "the frozen teacher's weights: fp32, bf16 or fp16 (half precision saves memory and time)",
}
CHOICES = {
    "preset": sorted(PRESETS),
    "preprocessing": PREPROCESSING_MODES,
    "precision": TRAINING_PRECISIONS,
    "teacher_precision": sorted(PRECISIONS),
    "adamw": ("auto", "fused", "foreach"),
}
TYPES = {"str": str, "int": int, "float": float}


def batch_size_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or 'auto', not {text!r}") from None


ARG_TYPES = {"batch_size": batch_size_arg}


def build_parser() -> argparse.ArgumentParser:
    from ..training.distill import METHODS
    from ..training.loop import TrainConfig

    choices = CHOICES | {"distill_method": METHODS}
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(TrainConfig):
        default = field.default
        kind = field.type.split("|")[0].strip()  # "int | None" -> "int"
        if kind == "bool":
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=default, help=HELP[field.name])
        else:
            parser.add_argument(
                f"--{field.name}",
                type=ARG_TYPES.get(field.name, TYPES[kind]),
                default=default,
                choices=choices.get(field.name),
                help=f"{HELP[field.name]} (default: {default})",
            )
    add_local_rank_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    from ..training.loop import TrainConfig, train

    args = vars(build_parser().parse_args(argv))
    local_rank = args.pop("local_rank")
    return train(TrainConfig(**args), local_rank=local_rank)


def run(argv=None) -> int:
    """The command-line entry point: `train.py`, `python -m models train` and `fashionflow-train`."""
    return run_command("train.py", lambda: main(argv))
