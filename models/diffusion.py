"""Noise schedule, training objective and samplers.

The schedule is the original's (docs/ORIGINAL.md, "Diffusion"): 1000 betas rising from 1e-4 to 0.02 along a half
cosine. Sampling goes through diffusers schedulers built with those betas (`trained_betas`), so any
step count works; frame 0 holds the clean latent of the input photo throughout (local conditioning).

Latent layout here: [b, c, f, h, w].
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Sequence

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


class PrefetchedNoise:
    """The ancestral noise of a sampling loop, drawn ahead in a background thread.

    Each of `count` draws is what diffusers' `randn_tensor` would draw inside the step: one [1, ...] tensor per
    video from its CPU generator, concatenated (one generator draws the whole batch). Drawn on the CPU while the
    device runs the previous step, pinned and copied without blocking, so a loop on a GPU never waits for the host
    (a pageable copy would synchronise every step). `close()` stops the thread and puts each generator back where
    the loop's own draws left it.
    """

    def __init__(self, generators: Sequence[torch.Generator], shape, dtype, device, count: int, ahead: int = 2):
        self.generators, self.dtype = list(generators), dtype
        self.shape = tuple(shape) if len(self.generators) == 1 else (1, *shape[1:])
        self.device, self.count = torch.device(device), count
        self.pin = self.device.type == "cuda"
        self._ready: queue.Queue = queue.Queue(maxsize=ahead)
        self._states: list[list[torch.Tensor]] = []  # generator states before each draw
        self._stop = threading.Event()
        self._taken = 0
        self._thread = threading.Thread(target=self._draw_all, name="ancestral-noise", daemon=True)
        self._thread.start()

    def _draw_all(self) -> None:
        try:
            for _ in range(self.count):
                self._states.append([g.get_state() for g in self.generators])
                noise = torch.cat([torch.randn(self.shape, generator=g, dtype=self.dtype) for g in self.generators])
                if not self._offer(noise.pin_memory() if self.pin else noise):
                    return
        except BaseException as error:  # handed to the loop, which raises it
            self._offer(error)

    def _offer(self, item) -> bool:
        """Queue `item` unless the loop has closed us meanwhile (then False)."""
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> torch.Tensor:
        drawn = self._ready.get()
        if isinstance(drawn, BaseException):
            raise drawn
        self._taken += 1
        return drawn.to(self.device, non_blocking=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._taken < len(self._states):  # drawn ahead but not used: rewind
            for g, state in zip(self.generators, self._states[self._taken]):
                g.set_state(state)


def sample_latents(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    scheduler,
    *,
    first_frame: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: Callable[[int, int, torch.Tensor], torch.Tensor | None] | None = None,
    interrupt: Callable[[], bool] | None = None,
    prefetch_noise: bool | None = None,
) -> torch.Tensor:
    """Run `scheduler` from noise `latents` [b, c, f, h, w]; `eps_model(x, t [b] float) -> eps`.

    Frame 0 is re-imposed before the first and after every step, as in the original. `callback(i, total, latents)`
    runs after every step; latents it returns replace the current ones. Sampling ends early, with the latents of
    the last step taken, once `interrupt()` is true before a step. Runs without autograd.

    `prefetch_noise` (default: on an accelerator, for the DDPM sampler with CPU generators) draws the ancestral noise
    ahead in a thread (`PrefetchedNoise`): the same numbers, and no host synchronisation inside the loop.
    """
    timesteps = scheduler.timesteps
    generators = [generator] if isinstance(generator, torch.Generator) else generator
    can_prefetch = bool(generators) and all(g is not None and g.device.type == "cpu" for g in generators)
    can_prefetch = can_prefetch and takes_given_noise(scheduler)
    if prefetch_noise is None:
        prefetch_noise = can_prefetch and latents.device.type != "cpu"
    elif prefetch_noise and not can_prefetch:
        raise ValueError("prefetch_noise needs the DDPM sampler and one CPU generator per video")
    noise = None
    if prefetch_noise:
        draws = sum(1 for t in timesteps if t > 0)
        noise = PrefetchedNoise(generators, latents.shape, latents.dtype, latents.device, draws)
    try:
        with torch.no_grad():  # a block, not a decorator: mutmut (bench/mutation.sh) leaves decorated functions unmutated
            latents = condition_first_frame(latents * scheduler.init_noise_sigma, first_frame)
            for i, t in enumerate(timesteps):
                if interrupt is not None and interrupt():
                    break
                t_batch = torch.full((latents.shape[0],), float(t), device=latents.device)
                eps = eps_model(scheduler.scale_model_input(latents, t), t_batch).to(latents.dtype)
                if noise is None:
                    latents = scheduler.step(eps, t, latents, generator=generator).prev_sample
                else:
                    latents = ddpm_step(scheduler, eps, t, latents, noise.next() if t > 0 else None)
                latents = condition_first_frame(latents, first_frame)
                if callback is not None:
                    replaced = callback(i, len(timesteps), latents)
                    latents = latents if replaced is None else replaced
    finally:
        if noise is not None:
            noise.close()
    return latents
