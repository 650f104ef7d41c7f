"""Precisions: their names, what each runs as on a device, and autocast around fp32 networks."""

from __future__ import annotations

import contextlib
import warnings

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# training only: the networks' weights and gradients in the named precision (no autocast, so no per-op casts), fp32
# master weights and AdamW state in the optimizer (Micikevicius et al. 2018, "Mixed Precision Training")
MASTER_PRECISIONS = {"bf16_master": "bf16"}
TRAINING_PRECISIONS = (*sorted(PRECISIONS), *sorted(MASTER_PRECISIONS))


def check_precision(precision: str, flag: str = "precision") -> torch.dtype:
    """The torch dtype of a precision name, or a ValueError naming `flag` and the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"{flag} must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def check_training_precision(precision: str, flag: str = "--precision") -> str:
    """`precision` when training knows it, else a ValueError naming `flag` and the choices."""
    if precision not in TRAINING_PRECISIONS:
        raise ValueError(f"{flag} must be one of {list(TRAINING_PRECISIONS)}, got {precision!r}")
    return precision


def compute_precision(precision: str) -> str:
    """The precision a training precision computes in: a master-weight mode's networks' (bf16_master: bf16)."""
    return MASTER_PRECISIONS.get(precision, precision)


def default_precision(device: torch.device) -> str:
    """Inference's default: fp16 on CUDA, fp32 elsewhere."""
    return "fp16" if device.type == "cuda" else "fp32"


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision actually used: fp16 autocast is a CUDA feature, so on other devices fp16 runs as fp32."""
    check_precision(precision)
    if precision == "fp16" and device.type != "cuda":
        warnings.warn(f"fp16 autocast needs CUDA; running fp32 on {device.type} instead (bf16 also works there)", stacklevel=3)
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str, weights_dtype: torch.dtype = torch.float32):
    """Mixed precision around fp32 networks (the original's fp16 autocast); a no-op for fp32 and for networks
    whose weights are already cast to half precision, where the weights' dtype rules."""
    if precision == "fp32" or weights_dtype != torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])
