"""The original's noise schedule and training objective.

The schedule is the original's (docs/ORIGINAL.md, "Diffusion"): 1000 betas rising from 1e-4 to 0.02 along a half
cosine; frame 0 holds the clean latent of the input photo (local conditioning). Latent layout: [b, c, f, h, w].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

NUM_TRAIN_TIMESTEPS = 1000


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
    long video's window holds its overlap with the previous window and, looping, its last frame; models/pipeline/long_video.py).
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
