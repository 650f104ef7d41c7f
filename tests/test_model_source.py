"""`ModelSource`: where the model comes from, its defaults (worked out in one place), what sidecars record of it, and
the frames default of the model config."""

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

import models
from models.core.config import get_preset
from models.core.distributed import pick_device
from models.pipeline.model_source import ModelSource


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_defaults_are_the_checkpoints_own_and_the_ones_of_this_device(no_cuda):
    source = ModelSource("ckpt.pth")
    assert (source.vae, source.clip, source.preprocessing, source.preset) == (None, None, None, None)
    assert (source.device, source.precision, source.autocast, source.use_ema) == (None, None, False, True)
    assert source.resolved() == dataclasses.replace(source, device="cpu", precision="fp32")
    with pytest.warns(UserWarning, match="fp16 autocast needs CUDA"):
        assert ModelSource("ckpt.pth", precision="fp16").resolved().precision == "fp32"
    assert ModelSource("ckpt.pth", precision="bf16").dtype == torch.bfloat16
    assert ModelSource("ckpt.pth", precision="bf16", autocast=True).dtype == torch.float32  # fp32 weights under autocast
    assert models.ModelSource is ModelSource


def test_the_device_default_is_this_ranks_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device() == torch.device("cuda", 1)
    assert ModelSource("ckpt.pth").resolved() == ModelSource("ckpt.pth", device="cuda:1", precision="fp16")
    assert pick_device("cpu") == torch.device("cpu")


def test_it_is_frozen_and_records_what_sidecars_always_recorded():
    source = ModelSource(Path("checkpoint/ours.pth"), vae=Path("encoders/vae"), preset="tiny", use_ema=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        source.device = "cpu"
    # the keys and values of inference.py's sidecars before ModelSource: videos made then still count as complete
    assert source.record() == dict(checkpoint="checkpoint/ours.pth", preset="tiny", vae="encoders/vae", clip=None, ema=False)


def test_load_builds_the_pipeline_on_the_device_in_the_dtype(parts, no_cuda):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on the way: the precision is worked out once
        pipe = ModelSource(parts["ours"], precision="bf16").load()
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.bfloat16
    assert pipe.model_config.frames == get_preset("tiny").frames


def test_frames_default_to_the_trained_length():
    tiny = get_preset("tiny")
    assert tiny.resolve_frames() == tiny.resolve_frames(None) == tiny.frames == 8
    assert tiny.resolve_frames(20) == 20
