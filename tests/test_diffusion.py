"""Noise schedule, objective and samplers against SPEC's formulas."""

import math

import pytest
import torch

from models.diffusion.samplers import SAMPLERS, make_scheduler
from models.diffusion.sampling import sample_latents
from models.diffusion.schedule import NoiseSchedule, fashionflow_betas, frame_conditioned_loss


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


# ---------------------------------------------------------------------------------------------------- absolute values
# Expectations below are computed from SPEC "Diffusion" written out in plain Python (float64), never from the
# NoiseSchedule under test, so a schedule shifted or bent inside the code cannot agree with them by construction.


def spec_betas() -> list[float]:
    """SPEC: for i = 999, 998, ..., 0 in that order, beta = 1e-4 + 0.5 * (0.02 - 1e-4) * (1 + cos(pi * i / 999))."""
    return [1e-4 + 0.5 * (0.02 - 1e-4) * (1 + math.cos(math.pi * i / 999)) for i in range(999, -1, -1)]


def spec_alphas_cumprod() -> list[float]:
    products, running = [], 1.0
    for beta in spec_betas():
        running *= 1 - beta
        products.append(running)
    return products


def test_alphas_cumprod_is_the_cumulative_product_of_the_papers_alphas():
    expected = torch.tensor(spec_alphas_cumprod(), dtype=torch.float64)
    schedule = NoiseSchedule()
    assert schedule.alphas_cumprod.shape == (1000,)
    torch.testing.assert_close(schedule.alphas_cumprod.double(), expected, rtol=2e-5, atol=0)
    # the two ends by hand: one step of beta = 1e-4, and the product over all 1000 steps
    assert schedule.alphas_cumprod[0].item() == pytest.approx(0.9999, rel=1e-7)
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(4.0020e-5, rel=1e-3)


def test_alphas_cumprod_agrees_with_diffusers_ddpm_scheduler():
    from diffusers import DDPMScheduler

    reference = DDPMScheduler(num_train_timesteps=1000, trained_betas=spec_betas())
    torch.testing.assert_close(NoiseSchedule().alphas_cumprod, reference.alphas_cumprod.float(), rtol=1e-5, atol=0)
    # and the sampler the project builds runs on those same values
    torch.testing.assert_close(make_scheduler("ddpm", 25).alphas_cumprod, reference.alphas_cumprod, rtol=1e-6, atol=0)


@pytest.mark.parametrize("t", [0, 1, 500, 998, 999])
def test_training_noise_at_t_uses_alphas_cumprod_at_t(t):
    ac = spec_alphas_cumprod()[t]
    x0, noise = torch.full((1, 4, 3, 2, 2), 2.0), torch.full((1, 4, 3, 2, 2), -1.0)
    noisy = NoiseSchedule().add_noise(x0, noise, torch.tensor([t]))
    torch.testing.assert_close(noisy, torch.full_like(x0, 2.0 * math.sqrt(ac) - math.sqrt(1 - ac)), rtol=1e-5, atol=1e-6)


def test_training_noise_at_step_zero_by_hand():
    # t = 0: alphas_cumprod = 1 - 1e-4, so x_t = sqrt(0.9999) x0 + 0.01 eps; a schedule off by one step would give
    # 0.0141 (t + 1) or the fully noised end of the schedule (t - 1 wraps to 999)
    x0, noise = torch.zeros(1, 1, 1, 1, 1), torch.ones(1, 1, 1, 1, 1)
    assert NoiseSchedule().add_noise(x0, noise, torch.tensor([0])).item() == pytest.approx(0.01, rel=1e-4)
    assert NoiseSchedule().add_noise(noise, x0, torch.tensor([0])).item() == pytest.approx(math.sqrt(0.9999), rel=1e-6)


def test_loss_sees_the_spec_noisy_latents_and_the_true_timestep():
    x0, noise = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(1)), torch.randn(2, 4, 3, 4, 4)
    t = torch.tensor([0, 999])
    seen = {}

    def fake_unet(noisy, context, timestep):
        seen["noisy"], seen["timestep"] = noisy, timestep
        return torch.zeros_like(noisy)

    loss = frame_conditioned_loss(fake_unet, x0, None, NoiseSchedule(), t=t, noise=noise)
    assert seen["timestep"].tolist() == [0.0, 999.0]
    ac = torch.tensor([spec_alphas_cumprod()[0], spec_alphas_cumprod()[999]]).view(2, 1, 1, 1, 1).float()
    expected = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    torch.testing.assert_close(seen["noisy"][:, :, 1:], expected[:, :, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["noisy"][:, :, 0], x0[:, :, 0], rtol=0, atol=0)
    # a zero prediction costs the mean squared noise of each noised frame (frame 0's target is 0): frames 1 and 2
    torch.testing.assert_close(loss, (noise[:, :, 1] ** 2).mean() + (noise[:, :, 2] ** 2).mean())


def test_training_timesteps_are_uniform_over_all_1000_steps():
    t = NoiseSchedule().sample_timesteps(20_000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min().item() == 0 and t.max().item() == 999
    counts = torch.bincount(t, minlength=1000).float()
    assert counts.mean().item() == 20.0 and counts.std().item() < 6  # binomial(20000, 1/1000): std ~4.5


def test_sampling_builds_no_autograd_graph():
    weight = torch.tensor(0.1, requires_grad=True)  # a model with trainable weights, called outside torch.no_grad
    out = sample_latents(
        lambda x, t: weight * x, torch.randn(1, 4, 2, 4, 4), make_scheduler("ddim", 3), first_frame=torch.zeros(1, 4, 4, 4)
    )
    assert not out.requires_grad and out.grad_fn is None


@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("name", SAMPLERS)
def test_samplers_take_trailing_timesteps_from_pure_noise(name, steps):
    # "trailing" spacing (Lin et al. 2024, table 2): round(arange(1000, 0, -1000 / steps)) - 1, so step one is t = 999;
    # lcm picks its steps from the 50-step skipping grid it was distilled on (999, 979, ..., 19), evenly by index
    if name == "lcm":
        expected = [999 - 20 * math.floor(k * 50 / steps) for k in range(steps)]
    else:
        expected = [round(1000 - k * 1000 / steps) - 1 for k in range(steps)]
    assert make_scheduler(name, steps).timesteps.tolist() == expected


@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("name", SAMPLERS)
def test_a_perfect_denoiser_brings_every_sampler_to_the_clean_latent(name, steps):
    # data = one clean latent x0: the exact eps at (x, t) is (x - sqrt(ac_t) x0) / sqrt(1 - ac_t), and the sampling
    # process (ancestral or ODE) then ends exactly at x0, whatever the step count: nothing left to clip or add
    ac = torch.tensor(spec_alphas_cumprod(), dtype=torch.float64)
    x0 = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0)).double() * 3  # beyond [-1, 1]

    def perfect_eps(x, t):
        a = ac[int(t[0])]
        return (x.double() - a.sqrt() * x0) / (1 - a).sqrt()

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)).double()
    out = sample_latents(
        perfect_eps, noise, make_scheduler(name, steps), first_frame=x0[:, :, 0], generator=torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(out, x0, rtol=0, atol=2e-3)


@pytest.mark.parametrize("steps", [4, 25])
def test_dpm_solver_is_second_order_multistep_with_a_first_order_final_step(steps):
    # DPM-Solver++(2M) (Lu et al. 2022) over the SPEC betas, as diffusers implements it; with few steps the last
    # one drops to first order, which keeps the solver stable (diffusers' lower_order_final)
    from diffusers import DPMSolverMultistepScheduler

    reference = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        trained_betas=spec_betas(),
        algorithm_type="dpmsolver++",
        solver_order=2,
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="trailing",
    )
    reference.set_timesteps(steps)

    def eps_model(x, t):  # smooth and nonlinear, so solvers of different order disagree
        return torch.tanh(x) * (0.5 + t[0] / 2000)

    start = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    first = torch.zeros(1, 4, 4, 4)
    out = sample_latents(eps_model, start, make_scheduler("dpmsolver++", steps), first_frame=first)
    expected = sample_latents(eps_model, start, reference, first_frame=first)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_sampling_reports_each_step_to_the_callback():
    seen = []
    out = sample_latents(
        lambda x, t: 0.1 * x,
        torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0)),
        make_scheduler("ddim", 3),
        first_frame=torch.zeros(1, 4, 4, 4),
        callback=lambda i, n, latents: seen.append((i, n, latents.clone())),
    )
    assert [(i, n) for i, n, _ in seen] == [(0, 3), (1, 3), (2, 3)]
    torch.testing.assert_close(seen[-1][2], out, rtol=0, atol=0)  # the latents after that step, frame 0 reset
    assert all(torch.equal(latents[:, :, 0], torch.zeros(1, 4, 4, 4)) for _, _, latents in seen)


def test_schedules_over_other_betas():
    betas = torch.linspace(0.1, 0.5, 10, dtype=torch.float64)
    schedule = NoiseSchedule(betas)
    assert schedule.num_steps == 10 and schedule.betas.dtype == torch.float32
    expected = [math.prod(1 - b for b in betas.tolist()[: k + 1]) for k in range(10)]
    torch.testing.assert_close(schedule.alphas_cumprod.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)
    scheduler = make_scheduler("ddim", 10, betas=betas)
    assert scheduler.timesteps.tolist() == list(range(9, -1, -1))
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="between 1 and 10"):
        make_scheduler("ddpm", 11, betas=betas)
    with pytest.raises(ValueError, match="between 1 and 1000"):
        make_scheduler("ddpm", 1001)


def test_ddim_steps_follow_the_ddim_formula_down_to_a_clean_last_step():
    # DDIM, eta = 0 (Song et al. 2021, eq. 12): x_prev = sqrt(ac_prev) x0_pred + sqrt(1 - ac_prev) eps, where
    # x0_pred = (x - sqrt(1 - ac_t) eps) / sqrt(ac_t); the step after t = 249 of 4 is the clean end (ac_prev = 1)
    ac = spec_alphas_cumprod()
    scheduler = make_scheduler("ddim", 4)
    x = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 2
    eps = torch.tanh(x)
    for t, prev in ((999, 749), (749, 499), (249, None)):
        x0_pred = (x - math.sqrt(1 - ac[t]) * eps) / math.sqrt(ac[t])
        a_prev = 1.0 if prev is None else ac[prev]
        expected = math.sqrt(a_prev) * x0_pred + math.sqrt(1 - a_prev) * eps
        torch.testing.assert_close(scheduler.step(eps, t, x).prev_sample, expected, rtol=1e-4, atol=1e-4)


def test_sampling_keeps_the_latents_dtype_whatever_the_model_returns():
    out = sample_latents(
        lambda x, t: (0.1 * x).double(),  # e.g. a model run under another precision
        torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0)),
        make_scheduler("ddim", 3),
        first_frame=torch.zeros(1, 4, 4, 4),
    )
    assert out.dtype == torch.float32


def test_training_noise_stays_on_the_latents_device():
    # "meta" tensors stand in for a GPU here: a CPU-only test still sees which device each step lands on
    schedule = NoiseSchedule()
    t = schedule.sample_timesteps(2, generator=torch.Generator().manual_seed(0), device="meta")
    x0 = torch.zeros(2, 4, 3, 4, 4, device="meta")
    assert t.device.type == "meta" and schedule.add_noise(x0, x0, t).device.type == "meta"


def _nonlinear_eps(x, t):
    return torch.tanh(x) * (t.view(-1, 1, 1, 1, 1) / 1000)


@pytest.mark.parametrize("steps", [1, 25, 1000])
@pytest.mark.parametrize("videos", [1, 3])
def test_prefetched_noise_gives_the_schedulers_own_numbers_bit_for_bit(steps, videos):
    """The no-sync loop (noise drawn ahead in a thread, ddpm_step) == diffusers' DDPMScheduler.step drawing it."""
    start = torch.randn(videos, 4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    first = torch.randn(videos, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    ends = {}
    for prefetch in (False, True):
        generators = [torch.Generator().manual_seed(10 + v) for v in range(videos)]
        out = sample_latents(
            _nonlinear_eps,
            start,
            make_scheduler("ddpm", steps),
            first_frame=first,
            generator=generators,
            prefetch_noise=prefetch,
        )
        ends[prefetch] = out, [torch.randn(2, generator=g) for g in generators]  # where each generator was left
    assert torch.equal(ends[True][0], ends[False][0])
    assert all(torch.equal(a, b) for a, b in zip(ends[True][1], ends[False][1]))


def test_an_interrupted_prefetching_loop_leaves_the_generators_where_its_own_draws_did():
    start, first = torch.randn(2, 4, 3, 4, 4), torch.zeros(2, 4, 4, 4)
    left = {}
    for prefetch in (False, True):
        generators = [torch.Generator().manual_seed(v) for v in range(2)]
        calls = []

        def eps_model(x, t, calls=calls):
            calls.append(t)
            return 0.1 * x

        sample_latents(
            eps_model,
            start,
            make_scheduler("ddpm", 25),
            first_frame=first,
            generator=generators,
            interrupt=lambda calls=calls: len(calls) == 3,
            prefetch_noise=prefetch,
        )
        left[prefetch] = [torch.randn(4, generator=g) for g in generators]
    assert all(torch.equal(a, b) for a, b in zip(left[True], left[False]))


def test_prefetching_passes_on_an_error_of_the_model_and_stops_its_thread():
    import threading

    def failing(x, t):
        raise RuntimeError("model broke")

    with pytest.raises(RuntimeError, match="model broke"):
        sample_latents(
            failing,
            torch.randn(1, 4, 3, 4, 4),
            make_scheduler("ddpm", 25),
            first_frame=torch.zeros(1, 4, 4, 4),
            generator=[torch.Generator().manual_seed(0)],
            prefetch_noise=True,
        )
    assert not any(t.name == "ancestral-noise" for t in threading.enumerate())


def test_prefetching_is_refused_where_it_would_change_the_numbers():
    args = dict(first_frame=torch.zeros(1, 4, 4, 4), prefetch_noise=True)
    with pytest.raises(ValueError, match="DDPM sampler and one CPU generator"):
        sample_latents(
            lambda x, t: x, torch.randn(1, 4, 3, 4, 4), make_scheduler("ddim", 5), generator=[torch.Generator()], **args
        )
    with pytest.raises(ValueError, match="DDPM sampler and one CPU generator"):
        sample_latents(lambda x, t: x, torch.randn(1, 4, 3, 4, 4), make_scheduler("ddpm", 5), **args)


def test_a_generator_list_with_gaps_samples_as_before_without_prefetching():
    """[generator, None]: diffusers draws the second video's noise from the global RNG; auto mode must not trip on it."""
    out = sample_latents(
        lambda x, t: 0.1 * x,
        torch.randn(2, 4, 3, 4, 4),
        make_scheduler("ddpm", 3),
        first_frame=torch.zeros(2, 4, 4, 4),
        generator=[torch.Generator().manual_seed(0), None],
    )
    assert torch.isfinite(out).all()
