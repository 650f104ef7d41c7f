"""The training step's fast paths give the eager, all-or-nothing numbers (issue 24, item 5): selective
checkpointing, fused AdamW, the compiled step and bf16 weights with fp32 masters, each on a tiny network on the CPU."""

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
from models.training.master_weights import trained_copy  # noqa: E402


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
    assert make_optimizer(objective.parameters(), lr=1e-3, weight_decay=0, impl="auto").defaults["fused"] is True  # CPU
    with pytest.raises(ValueError, match="--adamw must be one of"):
        make_optimizer(objective.parameters(), lr=1e-3, weight_decay=0, impl="apex")


def global_relative_error(grads: dict, reference: dict) -> float:
    flat = torch.cat([grads[name].float().flatten() for name in reference])
    expected = torch.cat([g.float().flatten() for g in reference.values()])
    return ((flat - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_a_bf16_master_update_is_fp32_adamws_on_the_bf16_gradients(impl):
    masters = tiny_objective()
    half = trained_copy(masters, "bf16_master")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    inputs = batch()
    loss, grads = loss_and_grads(masters, masters, inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_loss, autocast_grads = loss_and_grads(masters, masters, inputs)
    half_loss, half_grads = loss_and_grads(half, half, inputs)
    # bf16's tolerance: the loss as fp32's, the gradients as bf16 autocast's (which differ from fp32's by ~20% here)
    torch.testing.assert_close(half_loss.float(), loss, rtol=1e-3, atol=0)
    assert global_relative_error(half_grads, autocast_grads) < 0.05
    assert abs(global_relative_error(half_grads, grads) - global_relative_error(autocast_grads, grads)) < 0.02

    reference = copy.deepcopy(masters)
    for name, p in reference.named_parameters():
        p.grad = half_grads[name].float()
    plain = make_optimizer(reference.parameters(), lr=1e-3, weight_decay=0.01, impl=impl)
    opt = make_optimizer(masters.parameters(), lr=1e-3, weight_decay=0.01, impl=impl, model_params=half.parameters())
    masters.zero_grad(set_to_none=True)  # the masters' gradients come from the bf16 copy only
    plain.step(), opt.step()
    for (name, expected), master, p in zip(reference.named_parameters(), masters.parameters(), half.parameters()):
        assert master.dtype == torch.float32, name
        torch.testing.assert_close(master, expected, rtol=0, atol=0, msg=name)
        assert torch.equal(p, master.to(torch.bfloat16)), name
    state, expected_state = opt.state_dict(), plain.state_dict()
    assert state["param_groups"] == expected_state["param_groups"]
    for index, moments in expected_state["state"].items():
        for key, value in moments.items():
            assert state["state"][index][key].dtype == torch.float32
            torch.testing.assert_close(state["state"][index][key], value, rtol=0, atol=0)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in [*half.parameters(), *masters.parameters()])


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
