"""`ModelSource`: where the model comes from and how it is loaded, as one value the scripts, the web demo, the
quickstart and notebooks pass around instead of eight loose arguments.

    source = ModelSource("checkpoint/FashionFlow_checkpoint.pth", precision="bf16")
    pipeline = source.load()                       # on this rank's GPU, else the CPU

The defaults are worked out here once: the device (`core.distributed.pick_device`: the given one, else this rank's
GPU under torchrun, else `cuda`, else the CPU) and the precision (fp16 on CUDA, fp32 elsewhere).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.distributed import pick_device
from ..core.precision import PRECISIONS, default_precision, resolve_precision
from ..networks.checkpoint import RELEASED_CHECKPOINT_URL
from .pipeline import FashionFlowPipeline


def is_pipeline_folder(path) -> bool:
    """A folder written by `save_pretrained` / `python -m models convert` (it holds a `model_index.json`)."""
    return (Path(path) / "model_index.json").is_file()


def check_checkpoint(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found (nor a pipeline folder with a model_index.json). Download the released "
            f"checkpoint from {RELEASED_CHECKPOINT_URL} into "
            "checkpoint/, train your own (`python -m models quickstart` makes a tiny one offline), or pass "
            "--pretrained_model <path>"
        )
    return path


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint of either format (the released one, ours as .pth / .safetensors) or a pipeline folder, and how
    to load it. None means the default: the encoders, preprocessing and config the checkpoint records (`preset` is
    for released-format files, which record none), this rank's device, fp16 on CUDA and fp32 elsewhere."""

    checkpoint: str | os.PathLike
    vae: str | None = None  # hub id or folder
    clip: str | None = None
    preprocessing: str | None = None
    preset: str | None = None
    device: str | None = None
    precision: str | None = None  # the weights' dtype, or with `autocast` the autocast precision over fp32 weights
    autocast: bool = False
    use_ema: bool = True

    def resolved(self) -> ModelSource:
        """This source with its device and precision worked out (fp16 falls back to fp32 off CUDA, with a warning)."""
        device = pick_device(self.device)
        precision = resolve_precision(self.precision or default_precision(device), device)
        return dataclasses.replace(self, device=str(device), precision=precision)

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype: fp32 under `autocast`, else the precision's (of a resolved source)."""
        return torch.float32 if self.autocast else PRECISIONS[self.precision or "fp32"]

    def record(self) -> dict:
        """What a video's sidecar records of its model (with the preprocessing and precision `animate.run_record`
        adds): a rerun whose source differs makes the video again."""
        vae, clip = (None if path is None else str(path) for path in (self.vae, self.clip))
        return dict(checkpoint=str(self.checkpoint), preset=self.preset, vae=vae, clip=clip, ema=self.use_ema)

    def load(self) -> FashionFlowPipeline:
        """The pipeline on the source's device, its weights in `dtype` (`FashionFlowPipeline.from_checkpoint`, or
        `from_pretrained` for a pipeline folder, which fixes its encoders, preprocessing and weights)."""
        source = self.resolved()
        if not is_pipeline_folder(source.checkpoint):
            return FashionFlowPipeline.from_checkpoint(
                check_checkpoint(source.checkpoint), vae=source.vae, clip=source.clip, preprocessing=source.preprocessing,
                preset=source.preset, device=source.device, dtype=source.dtype, use_ema=source.use_ema,
            )  # fmt: skip
        options = dict(vae=source.vae, clip=source.clip, preprocessing=source.preprocessing, preset=source.preset)
        given = [f"--{name}" for name, value in {**options, "no_ema": not source.use_ema}.items() if value]
        if given:
            raise ValueError(
                f"{source.checkpoint} is a pipeline folder, which fixes its encoders, preprocessing and weights: drop "
                f"{', '.join(given)}, or pass the checkpoint it was converted from"
            )
        return FashionFlowPipeline.from_pretrained(source.checkpoint, dtype=source.dtype).to(source.device)
