"""The training step's fast paths give the eager, all-or-nothing numbers (issue 24, item 5): selective
checkpointing, fused AdamW and the compiled step, each on a tiny network on the CPU."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.core.config import get_preset  # noqa: E402
from models.diffusion.schedule import NoiseSchedule  # noqa: E402
from models.networks.checkpoint import build_models  # noqa: E402
from models.training.loop import TrainConfig, TrainingObjective, checkpoint_levels, make_optimizer  # noqa: E402


def tiny_objective(**config):
    torch.manual_seed(0)
    unet, adapter = build_models(get_preset("tiny", **config))
    return TrainingObjective(unet, adapter, NoiseSchedule()).train()


def batch(*, frames=8, seed=0):
    config = get_preset("tiny")
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, config.channels, frames, *config.latent_size, generator=g)
    return (
        latents,
        torch.randn(2, config.context_tokens, config.context_dim, generator=g),
        latents[:, :, 0].clone(),
        torch.tensor([10, 900]),
        torch.randn(latents.shape, generator=g),
    )


def loss_and_grads(model, objective, inputs):
    objective.zero_grad(set_to_none=True)
    loss = model(*inputs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in objective.named_parameters()}


@pytest.mark.parametrize("levels", [None, ["0"], ["1", "mid"]])
def test_selective_checkpointing_gives_the_gradients_of_none(levels):
    objective = tiny_objective()
    inputs = batch()
    loss, grads = loss_and_grads(objective, objective, inputs)
    objective.unet.enable_gradient_checkpointing(True, levels=levels)
    checked_loss, checked = loss_and_grads(objective, objective, inputs)
    assert torch.equal(loss, checked_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(checked[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_levels_are_checked_and_parsed():
    objective = tiny_objective()
    with pytest.raises(ValueError, match=r"unknown checkpointing levels \['2'\]; the levels: \['0', '1', 'mid'\]"):
        objective.unet.enable_gradient_checkpointing(True, levels=["0", "2"])
    assert checkpoint_levels(TrainConfig()) is None
    assert checkpoint_levels(TrainConfig(checkpoint_levels="0, mid")) == ["0", "mid"]


def test_fused_adamw_makes_the_update_of_foreach():
    objective = tiny_objective()
    inputs = batch()
    _, grads = loss_and_grads(objective, objective, inputs)
    updated = {}
    for impl in ("foreach", "fused"):
        model = copy.deepcopy(objective)
        for name, p in model.named_parameters():
            p.grad = grads[name].clone()
        opt = make_optimizer(model.parameters(), lr=1e-3, weight_decay=0.01, impl=impl)
        assert opt.defaults["fused"] is (impl == "fused")
        opt.step()
        updated[impl] = dict(model.named_parameters())
    moved = 0
    for name, p in updated["foreach"].items():
        torch.testing.assert_close(updated["fused"][name], p, rtol=1e-6, atol=1e-7, msg=name)
        moved += not torch.equal(p, dict(objective.named_parameters())[name])
    assert moved > 0
    assert make_optimizer(objective.parameters(), lr=1e-3, weight_decay=0, impl="auto").defaults["fused"] is False  # CPU
    with pytest.raises(ValueError, match="--adamw must be one of"):
        make_optimizer(objective.parameters(), lr=1e-3, weight_decay=0, impl="apex")


@pytest.mark.skipif(os.environ.get("TORCH_COMPILE_DISABLE") == "1", reason="torch.compile disabled")
def test_compiled_training_step_gives_the_eager_loss_and_gradients():
    # 2 frames: the least work per op; compiling, which takes long per op on a CPU, is most of the time
    objective = tiny_objective()
    inputs = batch(frames=2)
    loss, grads = loss_and_grads(objective, objective, inputs)
    compiled_loss, compiled = loss_and_grads(torch.compile(objective), objective, inputs)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled[name], grad, rtol=1e-4, atol=1e-6, msg=name)
