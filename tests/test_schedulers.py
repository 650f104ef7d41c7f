"""Every scheduler diffusers ships either samples the tiny pipeline or is refused by name when assigned.

The list comes from the installed diffusers, so a scheduler a new release adds is tried too: one that neither runs
nor is refused fails here. Schedulers are built the README's way, `from_config(pipe.scheduler.config)`.
"""

import diffusers.schedulers
import pytest
import torch
from diffusers import SchedulerMixin

from models.diffusion.samplers import scheduler_misfit
from models.pipeline.pipeline import FashionFlowPipeline, sample_generator

SCHEDULERS = sorted(n for n in dir(diffusers.schedulers) if n.endswith("Scheduler") and not n.startswith("Flax"))
# lower bounds on the policy, not the list it is tried on: the samplers of samplers.SAMPLERS and the deterministic
# ones whose step takes no generator run; these others are refused, each for its reason
RUN = {"DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "LCMScheduler", "UniPCMultistepScheduler",
       "DEISMultistepScheduler", "HeunDiscreteScheduler", "EulerDiscreteScheduler"}  # fmt: skip
REFUSED = {
    "FlowMatchEulerDiscreteScheduler": "takes no trained_betas",
    "EDMEulerScheduler": "takes no trained_betas",
    "CMStochasticIterativeScheduler": "takes no trained_betas",
    "KarrasVeScheduler": "step needs sigma_hat",
    "ScoreSdeVeScheduler": "has no step",
    "RePaintScheduler": "step needs original_image, mask",
    "DDIMInverseScheduler": "timesteps rise",
    "CogVideoXDDIMScheduler": "noise levels",
}


@pytest.fixture(scope="module")
def pipe(parts):
    return FashionFlowPipeline.from_checkpoint(parts["ours"], device="cpu")


def build(cls, config):
    """`cls` from the pipeline's scheduler config; a scheduler that cannot even be built without arguments of its
    own model family (a mask token, a codebook size) is taken unbuilt, to be refused on its class alone."""
    try:
        return cls.from_config(config)
    except TypeError:
        return object.__new__(cls)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_diffusers_scheduler_runs_in_the_pipeline_or_is_refused_by_name(pipe, name):
    cls = getattr(diffusers.schedulers, name)
    if not issubclass(cls, SchedulerMixin):  # diffusers' stand-in while a package it needs is missing
        pytest.skip(f"{name} needs {', '.join(cls._backends)}, which is not installed")
    scheduler, original = build(cls, pipe.scheduler.config), pipe.scheduler
    why = scheduler_misfit(scheduler)
    assert name not in RUN or why is None, why
    assert name not in REFUSED or (why is not None and REFUSED[name] in why), why
    try:
        if why is not None:
            with pytest.raises(ValueError, match=rf"^{name} cannot sample FashionFlow: "):
                pipe.scheduler = scheduler
            assert pipe.scheduler is original
            return
        pipe.scheduler = scheduler
        image = torch.rand(1, 3, *pipe.image_size, generator=torch.Generator().manual_seed(0))
        steps = max(2, getattr(scheduler, "pndm_order", 0))  # PNDM's Runge-Kutta warm-up takes 4 steps at least
        frames = pipe(image, num_frames=4, num_inference_steps=steps, generator=[sample_generator(0, 0, 0)],
                      output_type="pt", progress=False).frames  # fmt: skip
        assert frames.shape == (1, 4, 3, *pipe.image_size)
        assert torch.isfinite(frames).all()
    finally:
        pipe.scheduler = original


def test_a_scheduler_set_to_another_prediction_type_is_refused(pipe):
    v = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="EulerDiscreteScheduler cannot sample FashionFlow: .*v_prediction predictions"):
        pipe.scheduler = v


def test_a_scheduler_over_other_betas_is_refused_at_construction(pipe):
    scheduler = diffusers.DDIMScheduler()  # its own default betas, not the model's
    with pytest.raises(ValueError, match=r"DDIMScheduler cannot sample FashionFlow: .*from_config\(pipe.scheduler.config\)"):
        FashionFlowPipeline(**{**pipe.components, "scheduler": scheduler})
