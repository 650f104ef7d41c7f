"""What a training run tells its console (rank 0 only): the facts of the run in a block at the start; a line per
checkpoint saved, per validation and, without a progress bar, per logged step; a summary at the end.

Text only: `training.py` holds the facts and decides when to say them.
"""

from __future__ import annotations

import math


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `2 h 07 min`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`1 step`, `3 steps`; `2 processes` with its plural given."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _block(title: str, rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows) + 2
    return "\n".join([title] + [f"  {name:<{width}}{text}" for name, text in rows])


def step_settings_rows(run) -> list[tuple[str, str]]:
    """How --batch_size auto / --memory_budget chose the batch and checkpointing (nothing without them)."""
    if not run.step_settings:
        return []
    budget, probes = run.step_settings["budget_bytes"] / 2**30, len(run.step_settings["probes"])
    return [("step settings", f"chosen for a {budget:.2f} GiB budget out of {count(probes, 'measured setting')}")]


def start_block(run, started_from: str) -> str:
    """The run's facts before the first step: data, processes, batch, steps, precision, where things go, and where it
    starts from."""
    cfg, env = run.cfg, run.env
    per_step = cfg.batch_size * cfg.grad_accum * env.world_size
    kept = "every one kept" if cfg.keep_last == 0 else f"the newest {cfg.keep_last} kept"
    validation = (
        f"{len(run.validation)} held-out clips in {cfg.val_dataset_vae}, every {cfg.val_every} steps and at the end"
        if run.validation is not None
        else "none (--val_dataset_vae DIR adds a validation loss on held-out projected clips)"
    )
    samples = (
        f"{cfg.sample_dir}/step_<n>.mp4 every {cfg.sample_every} steps and at the end, from {run.sample_source}"
        if cfg.sample_every
        else "none (--sample_every 0)"
    )
    rows = [
        ("data", f"{len(run.loader.dataset)} clips of {run.loader.dataset.frames} frames in {cfg.dataset_vae}"),
        ("validation", validation),
        ("processes", f"{env.world_size} on {env.device.type} ({env.backend or 'no process group'})"),
        (
            "batch",
            f"{cfg.batch_size} per process x {cfg.grad_accum} accumulated x {count(env.world_size, 'process', 'processes')} = "
            f"{per_step} clips per step",
        ),
        ("steps", f"{run.batches_per_epoch / cfg.grad_accum:g} per epoch; training to step {run.total_steps}"),
        (
            "precision",
            cfg.precision
            + (" with gradient checkpointing" if cfg.grad_checkpointing else "")
            + ("" if cfg.checkpoint_levels == "all" or not cfg.grad_checkpointing else f" of levels {cfg.checkpoint_levels}"),
        ),
        ("step", f"{'fused' if run.opt.defaults.get('fused') else 'foreach'} AdamW, {'compiled' if cfg.compile else 'eager'}"),
        *step_settings_rows(run),
        ("checkpoints", f"{cfg.output_dir}/step_<n>.pth every {cfg.checkpoint_every} steps and at the end, {kept}"),
        ("logs", f"tensorboard --logdir {cfg.log_dir} (loss every {cfg.log_every} steps)"),
        ("samples", samples),
        ("start", started_from),
    ]
    return _block("training", rows)


def loss_line(run, scalars: dict) -> str:
    return (
        f"step {run.step}/{run.total_steps}: loss {scalars['train/loss']:.4f}, lr {scalars['train/lr']:.3g}, "
        f"grad norm {scalars['train/grad_norm']:.3g}, {scalars['train/samples_per_sec']:.3g} clips/s, "
        f"{scalars['train/data_wait_fraction']:.0%} waiting for data"
    )


def checkpoint_line(run) -> str:
    return f"step {run.step}: saved {run.last_saved}"


def validation_line(run) -> str:
    (step, loss), (best_step, best) = run.val_last, run.val_best
    return f"step {step}: validation loss {loss:.4f} (best {best:.4f}, at step {best_step})"


def summary_block(summary: dict, cfg) -> str:
    """The end of the run: steps and time, last train loss, last and best validation loss, where things are."""
    loss = summary["loss"]
    validation = (
        f"{summary['val_loss']:.4f} at step {summary['val_step']}, best {summary['best_val_loss']:.4f} at step "
        f"{summary['best_val_step']}"
        if summary["val_loss"] is not None
        else "none (--val_dataset_vae DIR adds one)"
    )
    rows = [
        ("train loss", f"{loss:.4f} (the last step's)" if loss is not None and math.isfinite(loss) else "none"),
        ("validation", validation),
        ("checkpoints", f"{cfg.output_dir}/, the last {summary['checkpoint']}"),
        ("logs", f"tensorboard --logdir {cfg.log_dir}"),
    ]
    if summary.get("safetensors"):
        rows.append(("safetensors", summary["safetensors"]))
    title = (
        f"training done: step {summary['step']}, {count(summary['steps_this_run'], 'step')} in {duration(summary['seconds'])} "
        f"(epoch {summary['epoch']})"
    )
    return _block(title, rows)
