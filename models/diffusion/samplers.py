"""Samplers: diffusers schedulers over the FashionFlow betas (`trained_betas`), and their defaults.

Any step count works; `ddpm` with 1000 steps is the original's procedure, 25 steps our default.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, LCMScheduler

from .schedule import fashionflow_betas

SAMPLERS = ("ddpm", "ddim", "dpmsolver++", "lcm")  # lcm: for students distilled by train.py --distill_from
# Fast default, chosen by bench/bench_inference.py (bench/results/inference_cpu.md): ancestral DDPM over 25
# trailing-spaced steps scored like the original's 1000 steps against ground truth (40x fewer UNet calls),
# while the deterministic DDIM and DPM-Solver++ lost 1.5 to 2 dB at any step count from 10 to 50.
DEFAULT_SAMPLER = "ddpm"
DEFAULT_STEPS = 25
# The original's procedure (docs/ORIGINAL.md, "Sampling"): ancestral DDPM over all 1000 steps.
ORIGINAL_SAMPLER, ORIGINAL_STEPS = "ddpm", 1000


def set_steps(scheduler, num_steps: int):
    """`scheduler` with `num_steps` inference timesteps set (between 1 and its training steps)."""
    train_steps = scheduler.config.num_train_timesteps
    if not 1 <= num_steps <= train_steps:
        raise ValueError(f"steps must be between 1 and {train_steps}, got {num_steps}")
    scheduler.set_timesteps(num_steps)
    return scheduler


def make_scheduler(name: str, num_steps: int, *, betas: torch.Tensor | None = None, original_inference_steps: int = 50):
    """A diffusers scheduler over the FashionFlow betas with `num_steps` inference steps set.

    `ddpm` with 1000 steps is the original's ancestral sampler (posterior variance, no clipping).
    Timesteps are spaced "trailing", so fewer steps still start from pure noise (t = 999). `lcm` is the
    multistep consistency sampler of a distilled student, over the skipping schedule it was distilled on
    (`original_inference_steps` of the 1000 training timesteps; models/training/distill.py).
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")
    betas = fashionflow_betas() if betas is None else betas
    common = dict(num_train_timesteps=len(betas), trained_betas=betas.tolist(), prediction_type="epsilon")
    if name == "ddpm":
        scheduler = DDPMScheduler(**common, variance_type="fixed_small", clip_sample=False, timestep_spacing="trailing")
    elif name == "lcm":
        scheduler = LCMScheduler(**common, original_inference_steps=original_inference_steps, clip_sample=False)
    elif name == "ddim":
        scheduler = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    else:
        scheduler = DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
            solver_order=2,
            timestep_spacing="trailing",
            final_sigmas_type="zero",
            lower_order_final=True,
        )
    return set_steps(scheduler, num_steps)


SCHEDULER_NAMES = {
    DDPMScheduler: "ddpm", DDIMScheduler: "ddim", DPMSolverMultistepScheduler: "dpmsolver++", LCMScheduler: "lcm"
}  # fmt: skip


def sampler_name(scheduler) -> str:
    """The `SAMPLERS` name of a scheduler (another scheduler class goes by its class name)."""
    return SCHEDULER_NAMES.get(type(scheduler), type(scheduler).__name__)


def scheduler_from_record(record: dict):
    """The scheduler a checkpoint's `sampler` record names: {"name", "steps", and make_scheduler's options}."""
    options = {k: v for k, v in record.items() if k not in ("name", "steps")}
    return make_scheduler(record["name"], record["steps"], **options)


def takes_given_noise(scheduler) -> bool:
    """Whether `ddpm_step` reproduces `scheduler.step`: the ancestral DDPM sampler as `make_scheduler` builds it."""
    config = scheduler.config
    return (
        type(scheduler) is DDPMScheduler
        and config.prediction_type == "epsilon"
        and config.variance_type == "fixed_small"
        and not config.clip_sample
        and not config.thresholding
    )


def ddpm_step(scheduler: DDPMScheduler, eps: torch.Tensor, t, sample: torch.Tensor, noise: torch.Tensor | None):
    """`scheduler.step(eps, t, sample, generator).prev_sample` with the ancestral noise given instead of drawn.

    The same arithmetic in the same order (formula 7 of Ho et al.), so with the noise the scheduler would have drawn
    the result is bit-identical. `noise` is ignored at t = 0, where the scheduler draws none.
    """
    prev_t = scheduler.previous_timestep(t)
    alpha_prod_t = scheduler.alphas_cumprod[t]
    alpha_prod_t_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.one
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t
    x0 = (sample - beta_prod_t ** (0.5) * eps) / alpha_prod_t ** (0.5)
    x0_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
    sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
    mean = x0_coeff * x0 + sample_coeff * sample
    if t > 0:
        variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
        return mean + variance ** (0.5) * noise
    return mean
