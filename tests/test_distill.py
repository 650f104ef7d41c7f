"""Few-step students (train.py --distill_from): the consistency-distillation target against the papers' equations,
exact resume, a teacher that never changes, and students whose checkpoint and folder carry their sampler."""

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import LCMScheduler
from test_training import ROOT, encoder_dirs, script_env, tiny_config, to_argv, write_projected_dataset  # noqa: F401  (a fixture among them)
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
    straight = train(dataclasses.replace(base, output_dir=str(tmp_path / "a"), max_steps=4))
    train(dataclasses.replace(base, output_dir=str(tmp_path / "b"), max_steps=2))
    resumed = train(dataclasses.replace(base, output_dir=str(tmp_path / "b"), max_steps=4))
    assert straight["rank_weight_digests"] == resumed["rank_weight_digests"]
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
