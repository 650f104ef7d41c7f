"""The validation loss: the training objective on held-out projected clips, comparable from step to step.

Each clip's random draws (its photo's VAE latent sample, its timestep, its noise) come from a generator seeded by
(seed, the clip's index) and made anew at every evaluation, so they are the same at every step and on every
machine: the curve moves only because the weights do. Every clip counts once, whatever the batch size.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import unet_layout

VALIDATION_STREAM = 2  # keeps the validation draws apart from any other stream seeded from the same seed


def clip_generator(seed: int, index: int) -> torch.Generator:
    """The generator of every draw for held-out clip `index`."""
    state = np.random.SeedSequence([seed, VALIDATION_STREAM, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def fixed_draws(encoders, schedule, images: torch.Tensor, latents: torch.Tensor, generators: list[torch.Generator]):
    """(VAE latents of `images` [b, c, h, w], timesteps [b], noise shaped like `latents`), one generator per clip."""
    image_latent = torch.cat([encoders.encode_frames(image[None], generator=g) for image, g in zip(images, generators)])
    t = torch.cat([schedule.sample_timesteps(1, generator=g) for g in generators])
    noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators])
    return image_latent, t, noise


@torch.no_grad()
def validation_loss(objective, dataset, encoders, *, seed: int, batch_size: int, device, autocast) -> float:
    """Mean of `objective(latents, clip_hidden, image_latent, t, noise)` over the clips of `dataset`, under
    `autocast`, with each clip's draws fixed by (`seed`, its index)."""
    total = 0.0
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        clips = [dataset[i] for i in indices]
        images = torch.stack([clip["image"] for clip in clips]).to(device)
        latents = unet_layout(torch.stack([clip["latents"] for clip in clips])).to(device)
        generators = [clip_generator(seed, i) for i in indices]
        image_latent, t, noise = fixed_draws(encoders, objective.schedule, images, latents, generators)
        with autocast:
            loss = objective(latents, encoders.encode_clip(images), image_latent.to(device), t.to(device), noise.to(device))
        total += loss.float().item() * len(clips)  # the loss is a mean over its batch
    return total / len(dataset)
