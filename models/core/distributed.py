"""Process-group set-up and rank bookkeeping shared by training, projection and batch inference.

Works unchanged as a plain single process, under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the
environment) and under `python -m torch.distributed.launch` (which passes `--local_rank` or
`--local-rank` and, in recent torch, also sets LOCAL_RANK). NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from .manifest import merge_manifests

T = TypeVar("T")


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # the process group's, when there is one

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def add_local_rank_argument(parser: argparse.ArgumentParser) -> None:
    """Accept torch.distributed.launch's `--local_rank` / `--local-rank` (LOCAL_RANK wins when both are set)."""
    parser.add_argument(
        "--local_rank",
        "--local-rank",
        dest="local_rank",
        type=int,
        default=None,
        help="set by torch.distributed.launch; torchrun passes LOCAL_RANK in the environment instead",
    )


def pick_device(device: str | None = None, local_rank: int | None = None) -> torch.device:
    """`device` as given ('cpu', 'cuda', 'cuda:1', 'mps'), else this rank's GPU when there is one, else CPU: every
    device default of the project. `local_rank` defaults to the launcher's LOCAL_RANK (0 without one)."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} was asked for but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def setup_distributed(device: str | None = None, local_rank: int | None = None) -> DistEnv:
    """Join the process group when started by a launcher (torchrun sets RANK, even for one process, so a
    1-GPU torchrun run takes the multi-GPU code path) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank if local_rank is not None else 0))
    rank = int(os.environ.get("RANK", local_rank if world_size > 1 else 0))
    dev = pick_device(device, local_rank)
    launched = "RANK" in os.environ and "MASTER_ADDR" in os.environ
    if (launched or world_size > 1) and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    backend = dist.get_backend() if dist.is_initialized() else None
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=dev, backend=backend)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a copy); the tensor itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_gather_objects(obj) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_share(items: Iterable[T], rank: int, world_size: int) -> Iterator[T]:
    """Items `rank`, `rank + world_size`, ... of `items`, lazily: the ranks split any list, each item to one rank."""
    return itertools.islice(items, rank, None, world_size)


def finish_ranks(summary, output_dir):
    """Every rank's summary added up (`type(summary).merge`), returned on every rank so that all exit alike; once
    every rank has finished writing, the main rank merges the per-rank manifests of `output_dir` and prints the
    total (`summary.report()`)."""
    total = type(summary).merge(all_gather_objects(summary))
    barrier()
    if not dist.is_initialized() or dist.get_rank() == 0:
        merge_manifests(output_dir)
        print(total.report())
    return total
