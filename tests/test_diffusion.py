"""Noise schedule, objective and samplers against SPEC's formulas."""

import math

import pytest
import torch

from models.diffusion import (
    SAMPLERS,
    NoiseSchedule,
    fashionflow_betas,
    frame_conditioned_loss,
    make_scheduler,
    sample_latents,
)


def test_betas_follow_spec_formula():
    betas = fashionflow_betas()
    assert betas.dtype == torch.float32 and betas.shape == (1000,)
    for k in (0, 1, 250, 500, 998, 999):
        i = 999 - k  # betas are listed for i = 999, 998, ..., 0
        expected = 1e-4 + 0.5 * (0.02 - 1e-4) * (1 + math.cos(math.pi * i / 999))
        assert betas[k].item() == pytest.approx(expected, rel=1e-6)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.all(betas[1:] >= betas[:-1])


def test_ddpm_step_matches_spec_formula():
    betas = fashionflow_betas()
    alphas = 1 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1), ac[:-1]])
    posterior_var = betas * (1 - ac_prev) / (1 - ac)
    scheduler = make_scheduler("ddpm", 1000)
    assert scheduler.timesteps.tolist() == list(range(999, -1, -1))
    x, eps = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    for t in (999, 500, 37, 0):
        out = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
        mean = (x - betas[t] * eps / (1 - ac[t]).sqrt()) / alphas[t].sqrt()
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
        expected = mean + (posterior_var[t].sqrt() * z if t > 0 else 0)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_add_noise_and_loss_follow_the_original_objective():
    schedule = NoiseSchedule()
    x0, noise = torch.randn(2, 4, 5, 8, 8), torch.randn(2, 4, 5, 8, 8)
    t = torch.tensor([3, 800])
    seen = {}

    def fake_unet(noisy, context, timestep):
        seen["noisy"], seen["timestep"] = noisy, timestep
        return noisy * 0.5

    loss = frame_conditioned_loss(fake_unet, x0, None, schedule, t=t, noise=noise)
    ac = schedule.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    noisy = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    noisy[:, :, 0] = x0[:, :, 0]  # frame 0 is the clean latent of the input photo
    target = noise.clone()
    target[:, :, 0] = 0
    torch.testing.assert_close(seen["noisy"], noisy)
    assert seen["timestep"].dtype == torch.float32
    expected = sum(torch.mean((noisy[:, :, f] * 0.5 - target[:, :, f]) ** 2) for f in range(5))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 7, 25])
def test_samplers_run_any_step_count_and_keep_frame_zero(name, steps):
    scheduler = make_scheduler(name, steps)
    first = torch.randn(1, 4, 4, 4)
    calls = []

    def eps_model(x, t):
        calls.append(t)
        return 0.1 * x

    out = sample_latents(
        eps_model, torch.randn(1, 4, 6, 4, 4), scheduler, first_frame=first, generator=torch.Generator().manual_seed(0)
    )
    assert len(calls) == steps and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, 0], first)
    assert calls[0].item() >= 900  # starts from (close to) pure noise


def test_sampling_is_reproducible_with_a_seed():
    def run(seed):
        return sample_latents(
            lambda x, t: 0.1 * x,
            torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(seed)),
            make_scheduler("ddpm", 10),
            first_frame=torch.zeros(1, 4, 4, 4),
            generator=torch.Generator().manual_seed(seed),
        )

    torch.testing.assert_close(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("euler", 10)
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        make_scheduler("ddim", 0)
