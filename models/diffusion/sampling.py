"""The sampling loop: a scheduler from noise to latents, frame 0 held clean, the ancestral noise drawn ahead.

Latent layout: [b, c, f, h, w].
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import Callable, Sequence

import torch

from .samplers import ddpm_step, takes_given_noise
from .schedule import condition_first_frame


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
    # deterministic schedulers' step (DEIS, UniPC, Heun, ...) takes no generator
    step_options = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
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
                    latents = scheduler.step(eps, t, latents, **step_options).prev_sample
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
