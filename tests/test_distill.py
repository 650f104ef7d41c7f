"""Few-step students (train.py --distill_from): the consistency- and progressive-distillation targets against the
papers' equations, exact resume, a teacher that never changes, and students whose checkpoint and folder carry their
sampler."""

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler
from test_training import (  # noqa: F401  (a fixture among them)
    ROOT,
    encoder_dirs,
    script_env,
    tiny_config,
    to_argv,
    train_straight_and_resumed,
    write_projected_dataset,
)
from torch import nn

from models.diffusion.samplers import make_scheduler
from models.diffusion.schedule import NoiseSchedule
from models.networks.checkpoint import build_models, read_checkpoint, save_checkpoint
from models.pipeline.convert import convert
from models.pipeline.model_source import ModelSource
from models.pipeline.pipeline import FashionFlowPipeline, sample_generator
from models.training import distill
from models.training.loop import train, weights_digest


class LinearEps(nn.Module):
    """eps(x, context, t) = w x: a network whose outputs a test can write down."""

    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(w)))

    def forward(self, x, context, timestep):
        return self.w * x + 0 * context.sum()


class PassContext(nn.Module):
    def forward(self, clip_hidden, image_latent):
        return clip_hidden


def c_skip_out(t: float) -> tuple[float, float]:
    """LCM's boundary-condition scalings (sigma_data 0.5, timesteps scaled by 10)."""
    scaled = 10.0 * t
    return 0.25 / (scaled**2 + 0.25), scaled / math.sqrt(scaled**2 + 0.25)


def expected_loss(x0, noise, t, *, student_w, teacher_w, skip=distill.SKIP, huber_c=distill.HUBER_C) -> float:
    """The loss of one video written from the equations (float64): forward process, teacher DDIM step, consistency
    function of the student at both ends, pseudo-Huber distance over the free frames."""
    ab = NoiseSchedule().alphas_cumprod.double()
    x0, noise = x0.double(), noise.double()
    t_prev = max(t - skip, 0)

    def clean_first(x):
        x = x.clone()
        x[:, :, 0] = x0[:, :, 0]
        return x

    def f(x, s):  # the student's consistency function with eps = student_w * x
        c_skip, c_out = c_skip_out(s)
        return c_skip * x + c_out * (x - (1 - ab[s]).sqrt() * student_w * x) / ab[s].sqrt()

    x_t = clean_first(ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * noise)
    eps_teacher = teacher_w * x_t
    x0_teacher = (x_t - (1 - ab[t]).sqrt() * eps_teacher) / ab[t].sqrt()
    x_prev = clean_first(ab[t_prev].sqrt() * x0_teacher + (1 - ab[t_prev]).sqrt() * eps_teacher)
    distance = ((f(x_t, t) - f(x_prev, t_prev)) ** 2 + huber_c**2).sqrt() - huber_c
    return distance[:, :, 1:].mean(dim=(0, 1, 3, 4)).sum().item()


@pytest.mark.parametrize("t", [19, 39, 499, 999])  # 19: the last step lands on t = 0, where f(x, 0) = x
def test_distillation_loss_follows_the_papers_equations(t):
    g = torch.Generator().manual_seed(t)
    x0, noise = torch.randn(1, 4, 5, 3, 2, generator=g), torch.randn(1, 4, 5, 3, 2, generator=g)
    objective = distill.DistillationObjective(LinearEps(0.3), PassContext(), LinearEps(0.7), PassContext(), NoiseSchedule())
    loss = objective(x0, torch.zeros(1, 2, 3), torch.zeros(1, 4, 3, 2), torch.tensor([t]), noise)
    assert loss.item() == pytest.approx(expected_loss(x0, noise, t, student_w=0.3, teacher_w=0.7), rel=1e-5)


def test_scalings_and_timesteps_are_lcm_schedulers():
    scheduler = make_scheduler("lcm", 4)
    assert isinstance(scheduler, LCMScheduler)
    for t in (0, 19, 999):
        assert [x.item() for x in distill.boundary_scalings(torch.tensor([t]))] == pytest.approx(
            scheduler.get_scalings_for_boundary_condition_discrete(t), rel=1e-6
        )
    objective = distill.DistillationObjective(LinearEps(0), PassContext(), LinearEps(0), PassContext(), NoiseSchedule())
    drawn = set(objective.sample_timesteps(4000, generator=torch.Generator().manual_seed(0)).tolist())
    assert drawn == set(range(19, 1000, 20))  # the skipping schedule LCMScheduler samples from
    assert set(scheduler.timesteps.tolist()) <= drawn


def expected_progressive_loss(x0, noise, t, *, steps, student_w, teacher_w) -> float:
    """One round of progressive distillation for one video, written from Salimans & Ho 2022 (Algorithm 2) and
    DDIMScheduler's trailing grid (float64): two teacher DDIM steps on the 2N grid, the x-target, the student's
    implied x0, the truncated-SNR weight max(SNR, 1), summed over the free frames."""
    ab = NoiseSchedule().alphas_cumprod.double()
    x0, noise = x0.double(), noise.double()

    def alpha_bar(s):  # DDIMScheduler(set_alpha_to_one=True): past the last step alpha_bar is 1
        return ab[s] if s >= 0 else torch.tensor(1.0, dtype=torch.float64)

    def clean_first(x):
        x = x.clone()
        x[:, :, 0] = x0[:, :, 0]
        return x

    teacher_grid = [round(1000 - i * 1000 / (2 * steps)) - 1 for i in range(2 * steps)]  # trailing spacing
    z_t = clean_first(ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * noise)
    z = z_t
    for s in teacher_grid[teacher_grid.index(t) :][:2]:  # t -> t' -> t''
        eps = teacher_w * z
        x0_teacher = (z - (1 - ab[s]).sqrt() * eps) / ab[s].sqrt()
        a_prev = alpha_bar(s - 1000 // (2 * steps))  # DDIMScheduler.step's previous timestep
        z = clean_first(a_prev.sqrt() * x0_teacher + (1 - a_prev).sqrt() * eps)
    alpha, sigma = ab[t].sqrt(), (1 - ab[t]).sqrt()
    a_target = alpha_bar(t - 1000 // steps)
    alpha_2, sigma_2 = a_target.sqrt(), (1 - a_target).sqrt()
    x_tilde = (z - sigma_2 / sigma * z_t) / (alpha_2 - sigma_2 / sigma * alpha)
    x0_student = (z_t - sigma * student_w * z_t) / alpha
    weight = max(ab[t] / (1 - ab[t]), 1.0)
    return (weight * (x0_student - x_tilde) ** 2)[:, :, 1:].mean(dim=(0, 1, 3, 4)).sum().item()


# steps 4: the 8-step teacher grid divides 1000; steps 16: the 32-step one does not (937 -> 906, then 905 -> 874);
# 249 and 61: the last step, which lands on x0 (alpha_bar 1)
@pytest.mark.parametrize(("steps", "t"), [(4, 999), (4, 249), (16, 937), (16, 61)])
def test_progressive_loss_follows_the_papers_equations(steps, t):
    g = torch.Generator().manual_seed(t)
    x0, noise = torch.randn(1, 4, 5, 3, 2, generator=g), torch.randn(1, 4, 5, 3, 2, generator=g)
    objective = distill.ProgressiveDistillation(
        LinearEps(0.3), PassContext(), LinearEps(0.7), PassContext(), NoiseSchedule(), steps
    )
    loss = objective(x0, torch.zeros(1, 2, 3), torch.zeros(1, 4, 3, 2), torch.tensor([t]), noise)
    expected = expected_progressive_loss(x0, noise, t, steps=steps, student_w=0.3, teacher_w=0.7)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("steps", [1, 4, 16])
def test_one_student_ddim_step_on_the_target_is_two_teacher_steps_of_ddim_scheduler(steps):
    """With the teacher's two steps taken by diffusers' DDIMScheduler at 2N steps, the eps implied by the target
    x~ makes DDIMScheduler's one step at N steps land on the same latent, at every timestep of the grid; the
    training grid and step are DDIMScheduler's own, and the student's timesteps are its grid."""
    student, teacher = make_scheduler("ddim", steps), make_scheduler("ddim", 2 * steps)
    assert isinstance(student, DDIMScheduler)
    ab = NoiseSchedule().alphas_cumprod
    g = torch.Generator().manual_seed(steps)
    for n, t in enumerate(student.timesteps):
        assert teacher.timesteps[2 * n] == t
        z_t = torch.randn(2, 4, 3, 2, generator=g)
        z = z_t
        for s in teacher.timesteps[2 * n : 2 * n + 2]:
            eps = 0.6 * z + 0.1
            stepped = teacher.step(eps, s, z).prev_sample
            grid_t, grid_prev = distill.ddim_grid(2 * steps)
            prev = grid_prev[grid_t == s]
            assert torch.allclose(distill.ddim_step(z, eps, s.view(1), prev, ab), stepped, atol=1e-6)
            z = stepped
        prev = distill.ddim_grid(steps)[1][n].view(1)
        target = distill.progressive_target(z_t, z, ab[t].view(1), distill.alpha_bar_at(ab, prev))
        eps_student = (z_t - ab[t].sqrt() * target) / (1 - ab[t]).sqrt()
        assert torch.allclose(student.step(eps_student, t, z_t).prev_sample, z, atol=1e-4)
    objective = distill.ProgressiveDistillation(LinearEps(0), PassContext(), LinearEps(0), PassContext(), NoiseSchedule(), steps)
    drawn = set(objective.sample_timesteps(400, generator=torch.Generator().manual_seed(0)).tolist())
    assert drawn == set(student.timesteps.tolist())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, encoder_dirs):  # noqa: F811
    vae, clip = encoder_dirs
    torch.manual_seed(1)
    from models.core.config import get_preset

    config = get_preset("tiny", vae=str(vae), clip=str(clip))
    unet, adapter = build_models(config)
    return save_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pth", unet, adapter, config)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_distillation_resumes_exactly_and_never_touches_the_teacher(tmp_path, encoder_dirs, teacher):  # noqa: F811
    before = sha256(teacher)
    data = write_projected_dataset(tmp_path / "data", videos=3)
    base = tiny_config(tmp_path, data, encoder_dirs, batch_size=1, lr=1e-3, distill_from=str(teacher))
    straight = train_straight_and_resumed(base, tmp_path)
    assert sha256(teacher) == before
    ckpt = read_checkpoint(straight["checkpoint"])
    assert ckpt["sampler"] == {"name": "lcm", "steps": 4, "original_inference_steps": 50}
    assert not [key for key in ckpt if "teacher" in key]  # the teacher is never saved with the student
    teacher_unet, teacher_adapter, _ = distill.load_teacher(str(teacher))
    student = read_checkpoint(straight["checkpoint"])
    assert any(not torch.equal(student["net"][k], v) for k, v in teacher_unet.state_dict().items())  # it learned
    assert weights_digest(teacher_unet, teacher_adapter) == weights_digest(*distill.load_teacher(str(teacher))[:2])


def test_distillation_under_torchrun_keeps_the_ranks_identical(tmp_path, encoder_dirs, teacher):  # noqa: F811
    # DDP without static_graph (the student runs twice a step, once under no_grad), two processes over gloo
    data = write_projected_dataset(tmp_path / "data", videos=4)
    cfg = tiny_config(tmp_path, data, encoder_dirs, batch_size=1, max_steps=2, distill_from=str(teacher))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "train.py"]
    run = subprocess.run(cmd + to_argv(cfg), cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads((Path(cfg.output_dir) / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 2
    assert len(set(summary["rank_weight_digests"])) == 1
    assert read_checkpoint(Path(cfg.output_dir) / "latest.pth")["sampler"]["name"] == "lcm"


def test_the_student_starts_as_the_teacher(tmp_path, encoder_dirs, teacher):  # noqa: F811
    data = write_projected_dataset(tmp_path / "data", videos=2)
    cfg = tiny_config(tmp_path, data, encoder_dirs, distill_from=str(teacher), max_steps=1, lr=0.0, ema_decay=0.0)
    student = read_checkpoint(train(cfg)["checkpoint"])
    unet, _, _ = distill.load_teacher(str(teacher))
    assert all(torch.equal(student["net"][k], v) for k, v in unet.state_dict().items())


@pytest.fixture(scope="module")
def student(tmp_path_factory, encoder_dirs, teacher):  # noqa: F811
    root = tmp_path_factory.mktemp("student")
    data = write_projected_dataset(root / "data", videos=2)
    cfg = tiny_config(root, data, encoder_dirs, distill_from=str(teacher), max_steps=2, distill_steps=3)
    return train(cfg)["checkpoint"]


def count_steps(pipe, **call) -> int:
    seen = []

    def note(pipe, step, t, tensors):
        seen.append(int(t))
        return {}

    image = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    pipe(image, num_frames=4, output_type="pt", progress=False, callback_on_step_end=note, **call)
    return len(seen)


def test_a_students_checkpoint_and_folder_sample_with_its_sampler(student, tmp_path):
    from_file = FashionFlowPipeline.from_checkpoint(student, device="cpu")
    assert isinstance(from_file.scheduler, LCMScheduler) and from_file.default_steps == 3
    assert count_steps(from_file) == 3 and count_steps(from_file, num_inference_steps=2) == 2
    folder = convert(ModelSource(student), tmp_path / "folder")
    assert json.loads((folder / "model_index.json").read_text())["default_steps"] == 3
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "LCMScheduler"
    from_folder = FashionFlowPipeline.from_pretrained(folder)
    assert isinstance(from_folder.scheduler, LCMScheduler) and count_steps(from_folder) == 3
    generator = [sample_generator(0, 0, 0)]
    image = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    a = from_file(image, num_frames=4, output_type="pt", progress=False, generator=generator).frames
    b = from_folder(image, num_frames=4, output_type="pt", progress=False, generator=[sample_generator(0, 0, 0)]).frames
    assert torch.equal(a, b)


def test_progressive_rounds_resume_exactly_chain_and_never_touch_the_teacher(tmp_path, encoder_dirs, teacher):  # noqa: F811
    before = sha256(teacher)
    data = write_projected_dataset(tmp_path / "data", videos=3)
    base = tiny_config(
        tmp_path, data, encoder_dirs, batch_size=1, lr=1e-3, distill_from=str(teacher), distill_method="progressive",
        distill_steps=2,
    )  # fmt: skip
    straight = train_straight_and_resumed(base, tmp_path)
    assert sha256(teacher) == before
    ckpt = read_checkpoint(straight["checkpoint"])
    assert ckpt["sampler"] == {"name": "ddim", "steps": 2}
    assert not [key for key in ckpt if "teacher" in key]
    teacher_unet, _, _ = distill.load_teacher(str(teacher))
    assert any(not torch.equal(ckpt["net"][k], v) for k, v in teacher_unet.state_dict().items())  # it learned
    pipe = FashionFlowPipeline.from_checkpoint(straight["checkpoint"], device="cpu")
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.default_steps == 2 and count_steps(pipe) == 2
    # the next round: the 2-step student is the teacher of a 1-step one, and stays as it was
    first_round = sha256(Path(straight["checkpoint"]))
    chained = train(
        dataclasses.replace(
            base, output_dir=str(tmp_path / "c"), max_steps=1, distill_from=straight["checkpoint"], distill_steps=1
        )
    )
    assert read_checkpoint(chained["checkpoint"])["sampler"] == {"name": "ddim", "steps": 1}
    assert sha256(Path(straight["checkpoint"])) == first_round


def test_progressive_steps_are_checked(tmp_path, encoder_dirs, teacher):  # noqa: F811
    data = write_projected_dataset(tmp_path / "data", videos=2)
    cfg = tiny_config(tmp_path, data, encoder_dirs, distill_from=str(teacher), distill_method="progressive", distill_steps=501)
    with pytest.raises(ValueError, match="--distill_steps must be between 1 and 500"):
        train(cfg)
    with pytest.raises(ValueError, match="--distill_method"):
        train(dataclasses.replace(cfg, distill_method="halving", distill_steps=4))


def test_a_teacher_can_be_a_pipeline_folder_in_half_precision(tmp_path, encoder_dirs, teacher):  # noqa: F811
    folder = convert(ModelSource(teacher), tmp_path / "teacher_folder")
    unet, adapter, config = distill.load_teacher(str(folder), dtype=torch.bfloat16)
    assert next(unet.parameters()).dtype == torch.bfloat16 and not any(p.requires_grad for p in unet.parameters())
    data = write_projected_dataset(tmp_path / "data", videos=2)
    cfg = tiny_config(tmp_path, data, encoder_dirs, distill_from=str(folder), teacher_precision="bf16", max_steps=1)
    assert math.isfinite(train(cfg)["loss"])


def test_a_missing_teacher_is_named(tmp_path, encoder_dirs):  # noqa: F811
    data = write_projected_dataset(tmp_path / "data", videos=2)
    cfg = tiny_config(tmp_path, data, encoder_dirs, distill_from=str(tmp_path / "nope.pth"), max_steps=1)
    with pytest.raises(FileNotFoundError, match="--distill_from .*nope.pth"):
        train(cfg)


def test_inference_uses_the_students_sampler_unless_told_otherwise(student, tmp_path):
    import inference

    def sidecar(*extra):
        out = tmp_path / "-".join(extra or ("default",))
        image = tmp_path / "photo.png"
        if not image.exists():
            from PIL import Image

            Image.new("RGB", (48, 64), (200, 40, 90)).save(image)
        argv = ["--pretrained_model", str(student), "--image", str(image), "--output_dir", str(out), "--frames", "4"]
        assert inference.main([*argv, "--no_progress", *extra]) == 0
        recorded = json.loads((out / "photo_sample0.json").read_text())
        return recorded["sampler"], recorded["steps"]

    assert sidecar() == ("lcm", 3)
    assert sidecar("--steps", "2") == ("lcm", 2)
    assert sidecar("--sampler", "ddpm", "--steps", "2") == ("ddpm", 2)
