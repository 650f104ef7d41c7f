"""Wall-clock timing and peak memory, the same way on a GPU and on the CPU (bench scripts, sidecar JSON)."""

from __future__ import annotations

import collections
import resource
import sys
import time
import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: most memory allocated by tensors since the last reset. CPU: the process's peak resident set (no
    reset exists for it, so it is the peak since the process started)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def memory_kind(device: torch.device) -> str:
    return "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"


@contextmanager
def timed(device: torch.device, into: dict, key: str):
    """Add the seconds the block takes (device work included) to `into[key]`."""
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        into[key] = into.get(key, 0.0) + time.perf_counter() - start


class DispatchCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it (views and detach left out) and follows the bytes of the tensors
    they make while those live: `peak` is the most held at once. On any device, so a CPU can measure what a step
    of a training configuration holds."""

    SKIPPED = {torch.ops.aten.detach.default, torch.ops.aten.lift_fresh.default}

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.live, self.refs = {}, collections.Counter()  # storage -> bytes; storage -> tensors on it
        self.bytes = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func not in self.SKIPPED:
            self.ops[func.overloadpacket.__name__] += 1
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t, new=not func.is_view)
        return out

    def _track(self, t: torch.Tensor, *, new: bool) -> None:
        key = t.untyped_storage().data_ptr()
        if key not in self.live:
            if not new or key == 0:  # a view of a tensor made before, or an empty one
                return
            self.live[key] = t.untyped_storage().nbytes()
            self.bytes += self.live[key]
            self.peak = max(self.peak, self.bytes)
        self.refs[key] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.bytes -= self.live.pop(key)
