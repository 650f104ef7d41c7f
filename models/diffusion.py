"""Noise schedule, training objective and samplers.

The schedule is the original's (docs/ORIGINAL.md, "Diffusion"): 1000 betas rising from 1e-4 to 0.02 along a half
cosine. Sampling goes through diffusers schedulers built with those betas (`trained_betas`), so any
step count works; frame 0 holds the clean latent of the input photo throughout (local conditioning).

Latent layout here: [b, c, f, h, w].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

NUM_TRAIN_TIMESTEPS = 1000
SAMPLERS = ("ddpm", "ddim", "dpmsolver++")


def fashionflow_betas(num_steps: int = NUM_TRAIN_TIMESTEPS, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """beta_k = start + (end - start) * (1 + cos(pi * i / (T - 1))) / 2 for i = T-1, ..., 0 (float32, as the original)."""
    i = torch.arange(num_steps - 1, -1, -1, dtype=torch.float64)
    betas = start + 0.5 * (end - start) * (1 + torch.cos(i / (num_steps - 1) * math.pi))
    return betas.float()


class NoiseSchedule:
    """Forward process q(x_t | x_0) for training, in float32 like the original."""

    def __init__(self, betas: torch.Tensor | None = None):
        self.betas = fashionflow_betas() if betas is None else betas.float()
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    def sample_timesteps(self, batch: int, *, generator=None, device="cpu") -> torch.Tensor:
        return torch.randint(0, self.num_steps, (batch,), generator=generator).to(device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ac = self.alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.ndim - 1)))
        return ac.sqrt() * x0 + (1 - ac).sqrt() * noise


def condition_first_frame(latents: torch.Tensor, first_frame: torch.Tensor) -> torch.Tensor:
    """Hold clean frames in `latents` [b, c, f, h, w]: the input photo's latent [b, c, h, w] goes into frame 0.

    `first_frame` may also be [b, c, f, h, w]: clean latents for every frame to hold, NaN in the free ones (a
    long video's window holds its overlap with the previous window and, looping, its last frame; models/long_video.py).
    """
    if first_frame.ndim == latents.ndim:
        return torch.where(first_frame.isnan(), latents, first_frame.to(latents.dtype))
    latents = latents.clone()
    latents[:, :, 0] = first_frame.to(latents.dtype)
    return latents


def frame_conditioned_loss(
    unet: Callable,
    latents: torch.Tensor,
    context: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """The original objective: eps-prediction MSE per frame, summed over frames; frame 0 is clean and its target 0."""
    noisy = condition_first_frame(schedule.add_noise(latents, noise, t), latents[:, :, 0])
    target = noise.clone()
    target[:, :, 0] = 0
    pred = unet(noisy, context, timestep=t.float())
    per_frame = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(0, 1, 3, 4))  # [f]
    return per_frame.sum()


def set_steps(scheduler, num_steps: int):
    """`scheduler` with `num_steps` inference timesteps set (between 1 and its training steps)."""
    train_steps = scheduler.config.num_train_timesteps
    if not 1 <= num_steps <= train_steps:
        raise ValueError(f"steps must be between 1 and {train_steps}, got {num_steps}")
    scheduler.set_timesteps(num_steps)
    return scheduler


def make_scheduler(name: str, num_steps: int, *, betas: torch.Tensor | None = None):
    """A diffusers scheduler over the FashionFlow betas with `num_steps` inference steps set.

    `ddpm` with 1000 steps is the original's ancestral sampler (posterior variance, no clipping).
    Timesteps are spaced "trailing", so fewer steps still start from pure noise (t = 999).
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")
    betas = fashionflow_betas() if betas is None else betas
    common = dict(num_train_timesteps=len(betas), trained_betas=betas.tolist(), prediction_type="epsilon")
    if name == "ddpm":
        scheduler = DDPMScheduler(**common, variance_type="fixed_small", clip_sample=False, timestep_spacing="trailing")
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


def sample_latents(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    scheduler,
    *,
    first_frame: torch.Tensor,
    generator: torch.Generator | None = None,
    callback: Callable[[int, int, torch.Tensor], torch.Tensor | None] | None = None,
    interrupt: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Run `scheduler` from noise `latents` [b, c, f, h, w]; `eps_model(x, t [b] float) -> eps`.

    Frame 0 is re-imposed before the first and after every step, as in the original. `callback(i, total, latents)`
    runs after every step; latents it returns replace the current ones. Sampling ends early, with the latents of
    the last step taken, once `interrupt()` is true before a step. Runs without autograd.
    """
    with torch.no_grad():  # a block, not a decorator: mutmut (bench/mutation.sh) leaves decorated functions unmutated
        latents = condition_first_frame(latents * scheduler.init_noise_sigma, first_frame)
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            if interrupt is not None and interrupt():
                break
            t_batch = torch.full((latents.shape[0],), float(t), device=latents.device)
            eps = eps_model(scheduler.scale_model_input(latents, t), t_batch).to(latents.dtype)
            latents = scheduler.step(eps, t, latents, generator=generator).prev_sample
            latents = condition_first_frame(latents, first_frame)
            if callback is not None:
                replaced = callback(i, len(timesteps), latents)
                latents = latents if replaced is None else replaced
    return latents
