"""Few-step students of a trained FashionFlow model (a training mode of train.py): two methods, `--distill_method`.

`consistency` (the default) is latent consistency distillation (Luo et al. 2023, "Latent Consistency Models", after Song et al.
2023, "Consistency Models"): the student, initialised from the teacher and still an eps-predicting UNet, learns
the consistency function f(x_t, t) = c_skip(t) x_t + c_out(t) x0(x_t, eps(x_t, t)), whose boundary condition
f(x, 0) = x the scalings enforce. For a timestep t_n of a skipping schedule (every k-th training timestep), the
frozen teacher takes one DDIM step from x_{t_n} to x_{t_n - k}, and the student at t_n is pulled towards the
student's own output at t_n - k without gradient (the stop-gradient target of Song & Dhariwal 2023, "Improved
Techniques for Training Consistency Models", which needs no second EMA network), with the pseudo-Huber distance.
Frame 0 is held clean everywhere, as in the original objective, and left out of the loss. The student samples
with diffusers' `LCMScheduler` over the same skipping schedule (`original_inference_steps` = 1000 / k), which is
recorded in its checkpoint so inference uses it by default.

`progressive` is one halving round of progressive distillation (Salimans & Ho 2022, "Progressive Distillation for
Fast Sampling of Diffusion Models", Algorithm 2): on the student's N-step DDIM grid (diffusers' `DDIMScheduler`, the
timesteps and previous timesteps it steps between, `ddim_grid`) the student, initialised from the teacher, learns to
reach in one DDIM step from t what the frozen teacher reaches in two DDIM steps of its 2N-step grid (t -> t' -> t'').
Its x-target x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t) is the clean latent
whose DDIM step from z_t lands on z_t''; the student still predicts eps, its implied x0 is pulled to x~ with the
paper's truncated-SNR weight max(SNR, 1). The student samples with `DDIMScheduler` at N steps (recorded in its
checkpoint); a chain of rounds (32 -> 16 -> 8 -> 4) is repeated runs, each student the next round's teacher.

Which method, by measurement (docs/DESIGN.md, bench/results/distill_cpu.md): at the same distillation steps the
consistency student scored higher at 4 steps (18.4 vs 16.6 dB PSNR, 600 steps each), so it stays the default; an eps-predicting
progressive student's x-loss is ill-conditioned at low SNR, as Salimans & Ho note.
"""

from __future__ import annotations

import torch
from torch import nn

from ..diffusion.samplers import make_scheduler
from ..diffusion.schedule import NoiseSchedule, condition_first_frame

SKIP = 20  # k: the teacher's DDIM step spans 20 training timesteps (LCM's 50-step schedule of 1000)
HUBER_C = 1e-3  # the pseudo-Huber constant of LCM's distillation script
SIGMA_DATA, TIMESTEP_SCALING = 0.5, 10.0  # LCMScheduler's boundary-condition constants
METHODS = ("consistency", "progressive")
STUDENT_SAMPLERS = {"consistency": "lcm", "progressive": "ddim"}  # how a student of each method samples


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) at integer timesteps `t` [b], as LCMScheduler computes them: c_skip(0) = 1, c_out(0) = 0."""
    scaled = t.double() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    return c_skip.float(), c_out.float()


def _per_video(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device).view(-1, *([1] * (like.ndim - 1)))


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def consistency_output(x_t, eps, t, alphas_cumprod) -> torch.Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0, the student's denoised estimate (LCM eq. 9)."""
    c_skip, c_out = (_per_video(c, x_t) for c in boundary_scalings(t))
    return c_skip * x_t + c_out * predicted_x0(x_t, eps, _per_video(alphas_cumprod[t], x_t))


def alpha_bar_at(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """alpha_bar at integer timesteps `t` [b]; 1 below 0, past the last step (DDIMScheduler's `set_alpha_to_one`)."""
    t = t.to(alphas_cumprod.device)
    return torch.where(t >= 0, alphas_cumprod[t.clamp(min=0)], torch.ones_like(alphas_cumprod[:1]))


def ddim_step(x_t, eps, t, t_prev, alphas_cumprod) -> torch.Tensor:
    """One deterministic DDIM step (Song et al. 2021, eq. 12 with sigma = 0) from timestep t to t_prev (< 0: x0)."""
    alpha_bar, alpha_bar_prev = (_per_video(alpha_bar_at(alphas_cumprod, s), x_t) for s in (t, t_prev))
    return alpha_bar_prev.sqrt() * predicted_x0(x_t, eps, alpha_bar) + (1 - alpha_bar_prev).sqrt() * eps


def ddim_grid(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, previous timesteps) [steps] of DDIMScheduler at `steps` steps as `make_scheduler` builds it
    (trailing spacing): `step` goes from each timestep to timestep - 1000 // steps, not always the next timestep."""
    scheduler = make_scheduler("ddim", steps)
    timesteps = scheduler.timesteps.long()
    return timesteps, timesteps - scheduler.config.num_train_timesteps // steps


def progressive_target(z_t, z_target, alpha_bar_t, alpha_bar_target) -> torch.Tensor:
    """x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t) (Salimans & Ho 2022,
    Algorithm 2), alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar): the x0 whose DDIM step from z_t lands on z_t''."""
    a_t, a_s = (_per_video(a, z_t) for a in (alpha_bar_t, alpha_bar_target))
    ratio = ((1 - a_s) / (1 - a_t)).sqrt()
    return (z_target - ratio * z_t) / (a_s.sqrt() - ratio * a_t.sqrt())


def weighted_x_loss(x0, target, alpha_bar) -> torch.Tensor:
    """max(SNR, 1) (x0 - x~)^2, SNR = alpha_bar / (1 - alpha_bar) (the truncated-SNR weighting of Salimans & Ho
    2022, section 4), averaged per frame and summed over the free frames 1.. as the original objective. [b, c, f, h, w]"""
    weight = _per_video((alpha_bar / (1 - alpha_bar)).clamp(min=1), x0)
    return (weight * (x0.float() - target.float()) ** 2)[:, :, 1:].mean(dim=(0, 1, 3, 4)).sum()


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float = HUBER_C) -> torch.Tensor:
    """sqrt((a - b)^2 + c^2) - c per element, averaged per frame and summed over the free frames 1.. (frame 0 is
    the photo), as the original objective sums its per-frame losses. Layout [b, c, f, h, w]."""
    distance = ((a.float() - b.float()) ** 2 + c**2).sqrt() - c
    return distance[:, :, 1:].mean(dim=(0, 1, 3, 4)).sum()


class DistillationObjective(nn.Module):
    """Student UNet and adapter (trained) beside the frozen teacher's; `forward` returns the consistency
    distillation loss of one batch, with the training objective's arguments (`t` from `sample_timesteps`)."""

    method = "consistency"

    def __init__(self, unet, adapter, teacher_unet, teacher_adapter, schedule: NoiseSchedule, skip: int = SKIP):
        super().__init__()
        self.unet, self.adapter, self.schedule, self.skip = unet, adapter, schedule, skip
        # kept out of the module tree: never in the optimizer, the DDP buckets or a checkpoint
        self.teacher = (teacher_unet.eval().requires_grad_(False), teacher_adapter.eval().requires_grad_(False))

    def sample_timesteps(self, batch: int, *, generator=None, device="cpu") -> torch.Tensor:
        """t_n = (n + 1) k - 1 for n uniform in [0, 1000 / k): the skipping schedule's timesteps (19, 39, ..., 999)."""
        n = torch.randint(0, self.schedule.num_steps // self.skip, (batch,), generator=generator)
        return ((n + 1) * self.skip - 1).to(device)

    def _apply(self, fn, *args, **kwargs):  # .to(device) moves the teacher too
        self.teacher = tuple(module._apply(fn, *args, **kwargs) for module in self.teacher)
        return super()._apply(fn, *args, **kwargs)

    def teacher_eps(self, x_t, clip_hidden, image_latent, t) -> torch.Tensor:
        unet, adapter = self.teacher
        dtype = next(unet.parameters()).dtype  # the teacher may run in half precision
        context = adapter(clip_hidden.to(dtype), image_latent.to(dtype))
        return unet(x_t.to(dtype), context, timestep=t.float()).float()

    def forward(self, latents, clip_hidden, image_latent, t, noise):  # latents [b, c, f, h, w]
        alphas_cumprod = self.schedule.alphas_cumprod.to(latents.device)
        first = latents[:, :, 0]
        x_t = condition_first_frame(self.schedule.add_noise(latents, noise, t), first)
        t_prev = (t - self.skip).clamp(min=0)
        context = self.adapter(clip_hidden, image_latent)
        prediction = consistency_output(x_t, self.unet(x_t, context, timestep=t.float()).float(), t, alphas_cumprod)
        with torch.no_grad():
            eps = self.teacher_eps(x_t, clip_hidden, image_latent, t)
            x_prev = condition_first_frame(ddim_step(x_t, eps, t, t_prev, alphas_cumprod), first)
            target_eps = self.unet(x_prev, context.detach(), timestep=t_prev.float()).float()
            target = consistency_output(x_prev, target_eps, t_prev, alphas_cumprod)
        return pseudo_huber(prediction, target)


class ProgressiveDistillation(DistillationObjective):
    """One round of progressive distillation: the student's one DDIM step on its `steps`-step grid against two of
    the frozen teacher on the 2 x `steps` grid, which nests it (every other timestep is the student's)."""

    method = "progressive"

    def __init__(self, unet, adapter, teacher_unet, teacher_adapter, schedule: NoiseSchedule, steps: int):
        super().__init__(unet, adapter, teacher_unet, teacher_adapter, schedule)
        self.student_grid, self.teacher_grid = ddim_grid(steps), ddim_grid(2 * steps)
        if not torch.equal(self.teacher_grid[0][::2], self.student_grid[0]):
            raise ValueError(f"the {2 * steps}-step DDIM grid does not nest the {steps}-step one")
        self.grid_index = torch.full((schedule.num_steps,), -1, dtype=torch.long)  # timestep -> its index n
        self.grid_index[self.student_grid[0]] = torch.arange(steps)

    def sample_timesteps(self, batch: int, *, generator=None, device="cpu") -> torch.Tensor:
        """t_n, n uniform over the student's grid (999, ..., 1000 / steps - 1)."""
        n = torch.randint(0, len(self.student_grid[0]), (batch,), generator=generator)
        return self.student_grid[0][n].to(device)

    def forward(self, latents, clip_hidden, image_latent, t, noise):  # latents [b, c, f, h, w]
        alphas_cumprod = self.schedule.alphas_cumprod.to(latents.device)
        first = latents[:, :, 0]
        z_t = condition_first_frame(self.schedule.add_noise(latents, noise, t), first)
        n = self.grid_index[t.cpu()]
        (teacher_t, teacher_prev), student_prev = self.teacher_grid, self.student_grid[1][n]
        context = self.adapter(clip_hidden, image_latent)
        x0 = predicted_x0(z_t, self.unet(z_t, context, timestep=t.float()).float(), _per_video(alphas_cumprod[t], z_t))
        with torch.no_grad():
            z = z_t
            for k in (2 * n, 2 * n + 1):  # t -> t' -> t'', as DDIMScheduler.step twice at 2 x steps
                s = teacher_t[k].to(t.device)
                eps = self.teacher_eps(z, clip_hidden, image_latent, s)
                z = condition_first_frame(ddim_step(z, eps, s, teacher_prev[k], alphas_cumprod), first)
            target = progressive_target(z_t, z, alpha_bar_at(alphas_cumprod, t), alpha_bar_at(alphas_cumprod, student_prev))
        return weighted_x_loss(x0, target, alphas_cumprod[t])


def distillation_objective(method: str, unet, adapter, teacher, schedule: NoiseSchedule, steps: int) -> nn.Module:
    """The objective of `method` for a student of `steps` sampling steps; `teacher` is (unet, adapter)."""
    if method == "progressive":
        return ProgressiveDistillation(unet, adapter, *teacher, schedule, steps)
    if method == "consistency":
        return DistillationObjective(unet, adapter, *teacher, schedule)
    raise ValueError(f"unknown --distill_method {method!r}; choose one of {METHODS}")


def load_teacher(source: str, *, preset: str | None = None, dtype: torch.dtype = torch.float32):
    """`(unet, adapter, config)` of the teacher: a checkpoint file of either format (its EMA weights when it has
    them; a released file takes `preset`'s configuration) or a pipeline folder; frozen, in eval mode."""
    from pathlib import Path

    from ..core.config import get_preset
    from ..networks.checkpoint import models_from_checkpoint, read_checkpoint

    if (Path(source) / "model_index.json").is_file():
        from ..pipeline.pipeline import FashionFlowPipeline

        pipe = FashionFlowPipeline.from_pretrained(source)
        unet, adapter, config = pipe.unet, pipe.adapter, pipe.model_config
    else:
        ckpt = read_checkpoint(source)
        config = get_preset(preset) if ckpt["format"] == "released" and preset else None
        unet, adapter, config = models_from_checkpoint(ckpt, path=source, config=config)
    for module in (unet, adapter):
        module.eval().requires_grad_(False).to(dtype)
    return unet, adapter, config


def student_sampler(steps: int, method: str = "consistency", skip: int = SKIP) -> dict:
    """What a student's checkpoint records about how it samples (`scheduler_from_record` builds it): LCMScheduler
    over the skipping schedule, or DDIMScheduler at the `steps` it was distilled for."""
    if method == "progressive":
        return {"name": STUDENT_SAMPLERS[method], "steps": steps}
    return {"name": STUDENT_SAMPLERS[method], "steps": steps, "original_inference_steps": NoiseSchedule().num_steps // skip}


def most_steps(method: str) -> int:
    """The most sampling steps a student of `method` can have: LCM's skipping schedule, or half the timesteps."""
    return NoiseSchedule().num_steps // (SKIP if method == "consistency" else 2)
