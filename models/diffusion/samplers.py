"""Samplers: diffusers schedulers over the FashionFlow betas (`trained_betas`), their defaults, and which other
diffusers schedulers can sample the UNet (`scheduler_misfit`).

Any step count works; `ddpm` with 1000 steps is the original's procedure, 25 steps our default.
"""

from __future__ import annotations

import copy
import inspect

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


STEP_ARGUMENTS = ("model_output", "timestep", "sample")  # what the sampling loop passes every scheduler's step


def scheduler_misfit(scheduler) -> str | None:
    """Why `scheduler` cannot sample the FashionFlow UNet, or None where it can.

    The UNet predicts the noise (epsilon) at the 1000 timesteps of the FashionFlow betas, so a diffusers scheduler
    fits when its step takes (model_output, timestep, sample), its noise levels (`alphas_cumprod`) are those betas'
    (`trained_betas`), it is set to epsilon predictions and it goes from noise to data. Flow-matching, EDM,
    consistency-model and score-SDE schedulers, inversion and inpainting schedulers and those of other model
    families fail one of these.
    """
    step = getattr(scheduler, "step", None)
    if step is None:
        return "it has no step(model_output, timestep, sample) (a predictor-corrector sampler)"
    needed = [
        p.name
        for p in inspect.signature(step).parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in STEP_ARGUMENTS
    ]
    if needed:
        return f"its step needs {', '.join(needed)} besides {', '.join(STEP_ARGUMENTS)}, which this pipeline does not have"
    if "trained_betas" not in inspect.signature(type(scheduler).__init__).parameters:
        return "it takes no trained_betas: its noise levels are its own, not the FashionFlow betas the UNet learnt"
    expected = torch.cumprod(1.0 - fashionflow_betas(), dim=0)
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if not isinstance(alphas_cumprod, torch.Tensor):
        return "it keeps no alphas_cumprod: its trained_betas are not the noise levels of training timesteps"
    if alphas_cumprod.shape != expected.shape or not torch.allclose(alphas_cumprod.float(), expected, rtol=1e-5):
        return (
            "its noise levels (alphas_cumprod) are not the FashionFlow betas': build it with "
            "from_config(pipe.scheduler.config), without options that shift them (snr_shift_scale, rescale_betas_zero_snr)"
        )
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        return f"it is set to {prediction} predictions, and the FashionFlow UNet predicts the noise (epsilon)"
    probe = copy.deepcopy(scheduler)
    probe.set_timesteps(min(4, len(expected)))
    if probe.timesteps[0] < probe.timesteps[-1]:
        return "its timesteps rise: it inverts data into noise, and sampling goes from noise to a video"
    return None


def check_scheduler(scheduler) -> None:
    """Refuse, by name, a diffusers scheduler that cannot sample the FashionFlow UNet (`scheduler_misfit`)."""
    why = scheduler_misfit(scheduler)
    if why is not None:
        raise ValueError(
            f"{type(scheduler).__name__} cannot sample FashionFlow: {why}; use one of the samplers {SAMPLERS} or "
            "another diffusers scheduler that takes trained_betas, built with from_config(pipe.scheduler.config)"
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
