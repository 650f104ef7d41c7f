"""`--memory_budget` and `--batch_size auto`: the fastest training-step settings that fit, by a probe at start.

Each candidate (a batch size and the UNet levels recomputed by gradient checkpointing) runs two forward and backward
passes of the real objective on random inputs of the real shapes: the first measures the memory the step needs, the
second its time. The need is what stays resident (weights, encoders; on a GPU everything already allocated), plus
the step's own peak (activations, recomputed activations, gradients), plus AdamW's two moments, which do not exist
yet. On a GPU the step's peak is CUDA's allocator peak; on a CPU the bytes the step's tensors hold at once
(`DispatchCounter`). The probe draws from its own random streams and leaves no gradient behind, so the run after it
is the run the chosen flags would give.

With a fixed batch the least recomputation that fits is the fastest (recomputing only adds work), so the search
stops at the first fit. With `--batch_size auto` it doubles the batch per checkpointing choice while the step
fits and samples per second still rise, and takes the most samples per second; more recomputation is tried only
while memory, not throughput, was the limit.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..core.profiling import DispatchCounter, timed

MAX_AUTO_BATCH = 64
GPU_SHARE = 0.9  # of the GPU's memory, when no budget is given
CPU_SHARE = 0.5  # of the machine's memory


@dataclass(frozen=True)
class StepSettings:
    batch_size: int
    checkpointing: str  # "off", "all", or the levels recomputed: "0", "0,1", ...

    def describe(self) -> str:
        recompute = {"off": "no checkpointing", "all": "checkpointing of every level"}.get(
            self.checkpointing, f"checkpointing of levels {self.checkpointing}"
        )
        return f"batch {self.batch_size}, {recompute}"


@dataclass(frozen=True)
class Probe:
    settings: StepSettings
    need_bytes: int | None  # None: the step ran out of memory
    seconds: float | None = None  # of one forward and backward; None when it did not fit

    @property
    def samples_per_second(self) -> float:
        return self.settings.batch_size / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        if self.need_bytes is None:
            return f"{self.settings.describe()}: out of memory"
        speed = f", {self.seconds * 1e3:.0f} ms a step, {self.samples_per_second:.2f} clips/s" if self.seconds else ""
        return f"{self.settings.describe()}: {self.need_bytes / 2**30:.2f} GiB{speed}"


def default_budget_bytes(device: torch.device) -> int:
    """Most of the GPU's memory, or half the machine's."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * GPU_SHARE)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * CPU_SHARE)


def checkpointing_choices(levels: int) -> list[str]:
    """Least recomputation first: none, the top level, the top two, ..., every level (the middle blocks too)."""
    return ["off", *(",".join(map(str, range(k))) for k in range(1, levels)), "all"]


def apply_checkpointing(unet: nn.Module, checkpointing: str) -> None:
    levels = None if checkpointing in ("off", "all") else checkpointing.split(",")
    unet.enable_gradient_checkpointing(checkpointing != "off", levels=levels)


def resident_bytes(modules: list[nn.Module]) -> int:
    tensors = {id(t): t for m in modules for t in (*m.parameters(), *m.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class StepProbe:
    """Runs candidate settings of one training step (objective's forward and backward, under `autocast`)."""

    def __init__(self, objective: nn.Module, unet: nn.Module, *, resident: list[nn.Module], shape: dict, autocast, device):
        self.objective, self.unet, self.resident, self.shape = objective, unet, resident, shape
        self.autocast, self.device = autocast, torch.device(device)
        trainable = [p for p in objective.parameters() if p.requires_grad]
        self.moment_bytes = 2 * sum(p.numel() * 4 for p in trainable)  # AdamW's exp_avg and exp_avg_sq, fp32

    def inputs(self, batch: int, generator: torch.Generator) -> tuple:
        s, dev = self.shape, self.device
        latents = torch.randn(batch, s["channels"], s["frames"], *s["latent_size"], generator=generator).to(dev)
        clip_hidden = torch.randn(batch, s["context_tokens"], s["context_dim"], generator=generator).to(dev)
        t = self.objective.sample_timesteps(batch, generator=generator, device=dev)
        return latents, clip_hidden, latents[:, :, 0].clone(), t, torch.randn(latents.shape, generator=generator).to(dev)

    def _step(self, inputs) -> None:
        with self.autocast:
            loss = self.objective(*inputs)
        loss.backward()
        self.objective.zero_grad(set_to_none=True)

    def _measured_step(self, inputs) -> int:
        """The bytes the step needs at most, everything resident included."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self._step(inputs)
            peak = torch.cuda.max_memory_allocated(self.device) - before
            resident = before
        else:
            with DispatchCounter() as counter:
                self._step(inputs)
            peak, resident = counter.peak, resident_bytes(self.resident)
        return resident + peak + self.moment_bytes

    def measure(self, settings: StepSettings, budget: int) -> Probe:
        apply_checkpointing(self.unet, settings.checkpointing)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            generator = torch.Generator().manual_seed(0)
            inputs = self.inputs(settings.batch_size, generator)
            try:
                need = self._measured_step(inputs)
                if need > budget:
                    return Probe(settings, need)
                times: dict = {}
                with timed(self.device, times, "step"):
                    self._step(inputs)
                return Probe(settings, need, times["step"])
            except torch.OutOfMemoryError:
                return Probe(settings, None)
            finally:
                self.objective.zero_grad(set_to_none=True)
                del inputs
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()


def fits(probe: Probe) -> bool:
    return probe.seconds is not None


def search(probe: StepProbe, *, batch_size: int | None, max_batch: int, levels: int, budget: int) -> list[Probe]:
    """Every measured candidate, in the order tried (see the module's docstring); `batch_size` None: auto."""
    probes: list[Probe] = []
    start = 0  # log2 of the batch to start doubling from: smaller ones ran faster with less recomputation
    for checkpointing in checkpointing_choices(levels):
        if batch_size is not None:
            probes.append(probe.measure(StepSettings(batch_size, checkpointing), budget))
            if fits(probes[-1]):
                break
            continue
        best, memory_bound = None, True
        for b in (2**k for k in range(start, int(math.log2(max_batch)) + 1)):
            probes.append(probe.measure(StepSettings(b, checkpointing), budget))
            if not fits(probes[-1]):
                break
            if best is not None and probes[-1].samples_per_second <= best.samples_per_second:
                memory_bound = False  # a larger batch no longer pays: more recomputation will not help either
                break
            best = probes[-1]
        else:
            memory_bound = False  # the largest batch the data allows fitted
        if not memory_bound:
            break
        start = int(math.log2(best.settings.batch_size)) if best is not None else start
    return probes


def choose(probes: list[Probe], budget: int) -> StepSettings:
    fitting = [p for p in probes if fits(p)]
    if not fitting:
        least = min((p.need_bytes for p in probes if p.need_bytes is not None), default=None)
        needs = f"the smallest step measured needs {least / 2**30:.2f} GiB" if least else "every step ran out of memory"
        raise ValueError(
            f"no training-step setting fits --memory_budget {budget / 2**30:.2f} GiB ({needs}); raise the budget, "
            "lower --frames, or train on a larger device"
        )
    return max(fitting, key=lambda p: p.samples_per_second).settings


def tune_step_settings(probe: StepProbe, *, batch_size: int | None, max_batch: int, levels: int, budget: int, say) -> dict:
    """The chosen settings and the record of how (for the checkpoint), after printing what was measured."""
    probes = search(probe, batch_size=batch_size, max_batch=max_batch, levels=levels, budget=budget)
    chosen = choose(probes, budget)
    apply_checkpointing(probe.unet, chosen.checkpointing)
    say(
        f"step settings for a {budget / 2**30:.2f} GiB budget, measured:\n"
        + "\n".join(f"  {p.line()}" for p in probes)
        + f"\n  chosen: {chosen.describe()}"
    )
    return {
        "budget_bytes": budget,
        "chosen": asdict(chosen),
        "probes": [{**asdict(p.settings), "need_bytes": p.need_bytes, "seconds": p.seconds} for p in probes],
    }
