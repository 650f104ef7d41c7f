"""FashionFlowPipeline with tiny real components on the CPU: shapes, seeding, loading, argument checks."""

import pytest
import torch

from models.core.config import get_preset
from models.core.precision import resolve_precision
from models.diffusion.samplers import make_scheduler
from models.networks.checkpoint import build_models
from models.networks.unet import SpaceTimeUnet
from models.pipeline.pipeline import FashionFlowPipeline, sample_generator


@pytest.fixture(scope="module")
def pipe(parts):
    return FashionFlowPipeline.from_checkpoint(parts["ours"], device="cpu")


def photos(pipe, n=2, seed=0):
    return torch.rand(n, 3, *pipe.image_size, generator=torch.Generator().manual_seed(seed))


def gens(seed, n, sample=0):
    return [sample_generator(seed, i, sample) for i in range(n)]


def run(pipe, images, **kw):
    """The tensor-in, tensor-out call of inference.py and training: float [B, F, 3, H, W] on the CPU."""
    kw = dict(num_frames=4, steps=2, progress=False) | kw
    return pipe(images, output_type="pt", **kw).frames


def test_image_size_comes_from_latent_size_and_vae(pipe):
    assert pipe.image_size == (64, 48)  # tiny: 16x12 latents, 4x VAE
    assert pipe.model_config.frames == 8


def test_output_shape_range_and_default_frames(pipe):
    video = run(pipe, photos(pipe), generator=gens(0, 2), num_frames=None)
    assert video.shape == (2, 8, 3, 64, 48)
    assert video.device.type == "cpu" and video.dtype == torch.float32
    assert 0 <= video.min() and video.max() <= 1 and video.std() > 0.01


def test_frame_zero_is_the_photo_latent_decoded(pipe):
    images = photos(pipe, 1)
    video = run(pipe, images, generator=gens(3, 1))
    _, latent = pipe.encode_image(images.clone(), generator=gens(3, 1))
    assert torch.allclose(video[0, 0], pipe.encoders.decode_latents(latent)[0], atol=1e-5)


def test_same_seed_same_video_other_seed_other_video(pipe):
    images = photos(pipe)
    a = run(pipe, images, generator=gens(5, 2))
    b = run(pipe, images, generator=gens(5, 2))
    c = run(pipe, images, generator=gens(6, 2))
    assert torch.equal(a, b)
    assert (a[:, 1:] - c[:, 1:]).abs().mean() > 1e-3


@pytest.mark.parametrize("sampler", ["ddpm", "dpmsolver++"])
def test_video_does_not_depend_on_batch(pipe, sampler):
    images = photos(pipe, 3)
    together = run(pipe, images, sampler=sampler, generator=gens(1, 3))
    alone = run(pipe, images[2:], sampler=sampler, generator=gens(1, 3)[2:])
    assert torch.allclose(together[2], alone[0], atol=1e-4)


def test_released_and_our_format_give_the_same_video(parts, pipe):
    released = FashionFlowPipeline.from_checkpoint(
        parts["released"], preset="tiny", vae=str(parts["vae"]), clip=str(parts["clip"]), device="cpu"
    )
    assert released.model_config == get_preset("tiny", vae=parts["vae"], clip=parts["clip"])
    images = photos(pipe, 1)
    assert torch.equal(run(pipe, images, generator=gens(2, 1)), run(released, images, generator=gens(2, 1)))


def test_released_format_without_preset_means_paper(parts):
    from models.core.files import CheckpointError

    with pytest.raises(CheckpointError, match="does not fit the SpaceTimeUnet"):
        FashionFlowPipeline.from_checkpoint(parts["released"], vae=str(parts["vae"]), clip=str(parts["clip"]))


def test_preset_is_ignored_for_checkpoints_with_a_config(parts):
    with pytest.warns(UserWarning, match="ignoring preset 'paper'"):
        pipe = FashionFlowPipeline.from_checkpoint(parts["ours"], preset="paper", device="cpu")
    assert pipe.model_config.frames == 8


def test_preprocessing_override(parts):
    pipe = FashionFlowPipeline.from_checkpoint(parts["ours"], preprocessing="legacy", device="cpu")
    assert pipe.encoders.preprocessing == "legacy" and pipe.config.preprocessing == "legacy"
    assert pipe.model_config.preprocessing == "legacy"


@pytest.mark.parametrize("mode,draws", [("legacy", 2), ("standard", 1)])
def test_photo_posterior_draws_follow_the_mode(parts, mode, draws):
    """legacy: the adapter's latent, then frame 0's, two draws as the original's inference; standard: one for both."""
    pipe = FashionFlowPipeline.from_checkpoint(parts["ours"], preprocessing=mode, device="cpu")
    images = photos(pipe, 1)
    context, first_frame = pipe.encode_image(images, generator=gens(4, 1))
    posterior, generator = pipe.encoders.encode_posterior(images), gens(4, 1)[0]
    drawn = [pipe.encoders.sample_latents(posterior, generator) for _ in range(draws)]
    torch.testing.assert_close(first_frame, drawn[-1])
    torch.testing.assert_close(context, pipe.adapter(pipe.encoders.encode_clip(images), drawn[0]))
    if draws == 2:  # two samples of one posterior: apart by its noise
        assert (drawn[0] - drawn[1]).abs().max() > 1e-3


def test_decode_chunk_size_does_not_change_frames(pipe):
    latents = torch.randn(1, 4, 5, 16, 12, generator=torch.Generator().manual_seed(0))
    one = pipe.decode_latents(latents, chunk_size=1)
    three = pipe.decode_latents(latents, chunk_size=3)
    assert one.shape == (1, 5, 3, 64, 48)
    assert torch.allclose(one, three, atol=1e-5)


def test_callback_sees_every_step(pipe):
    seen = []
    run(pipe, photos(pipe, 1), steps=3, generator=gens(0, 1), callback=lambda i, n, x: seen.append((i, n, x.shape)))
    assert seen == [(i, 3, (1, 4, 4, 16, 12)) for i in range(3)]


def test_steps_set_the_number_of_unet_calls(pipe, monkeypatch):
    calls = []
    forward = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    run(pipe, photos(pipe, 1), sampler="ddim", steps=4, generator=gens(0, 1))
    assert len(calls) == 4


def test_ddpm_full_schedule_is_the_originals():
    scheduler = make_scheduler("ddpm", 1000)
    assert scheduler.timesteps.tolist() == list(range(999, -1, -1))


def test_bf16_runs_and_fp16_falls_back_on_cpu(pipe):
    images = photos(pipe, 1)
    video = run(pipe, images, precision="bf16", generator=gens(0, 1))
    reference = run(pipe, images, generator=gens(0, 1))
    assert (video - reference).abs().mean() < 0.05
    with pytest.warns(UserWarning, match="fp16 autocast needs CUDA"):
        assert resolve_precision("fp16", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", torch.device("cpu"))


def test_argument_errors(pipe):
    images = photos(pipe)
    with pytest.raises(ValueError, match="multiple of 2"):
        run(pipe, images, num_frames=5, generator=gens(0, 2))
    with pytest.raises(ValueError, match=r"float \[3, H, W\] or \[B, 3, H, W\]"):
        run(pipe, torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got \[-1"):
        run(pipe, images * 2 - 1, generator=gens(0, 2))
    with pytest.raises(ValueError, match="one generator per video"):
        run(pipe, images, generator=gens(0, 3))
    with pytest.raises(ValueError, match="depend on the batch"):
        run(pipe, images, generator=torch.Generator())
    with pytest.raises(ValueError, match="unknown sampler"):
        run(pipe, images[:1], sampler="euler")


def test_generators_are_distinct_and_reproducible():
    draws = {tuple(torch.randn(4, generator=sample_generator(0, i, k)).tolist()) for i in range(3) for k in range(3)}
    assert len(draws) == 9
    assert torch.equal(torch.randn(4, generator=sample_generator(7, 1, 2)), torch.randn(4, generator=sample_generator(7, 1, 2)))


def test_training_can_share_the_pipeline(parts, pipe):
    """The pipeline works on modules built in memory (what training's sample videos use), weights unchanged."""
    from models.networks.encoders import FrozenEncoders

    unet, adapter = build_models(pipe.model_config)
    unet.load_state_dict(pipe.unet.state_dict())
    adapter.load_state_dict(pipe.adapter.state_dict())
    encoders = FrozenEncoders.from_config(pipe.model_config)  # the encoders' folders, as the pipeline records them
    fresh = FashionFlowPipeline.from_parts(unet.eval(), adapter.eval(), encoders)
    images = photos(pipe, 1)
    assert torch.equal(run(fresh, images, generator=gens(0, 1)), run(pipe, images, generator=gens(0, 1)))


def test_mismatched_encoders_are_refused(pipe):
    wider = build_models(get_preset("tiny", context_dim=64))  # CLIP's tokens are 32 wide
    with pytest.raises(ValueError, match="--vae, --clip"):
        FashionFlowPipeline.from_parts(*wider, pipe.encoders)


def test_regional_compile_gives_the_eager_video_and_compiles_once(parts):
    """compile(regional=True) compiles the UNet's and the decoder's repeated blocks in place: the video matches eager,
    a second video recompiles nothing (the decoder's padded last chunk included), the state-dict keys stay."""
    from torch._dynamo.utils import counters

    from models.networks.encoders import FrozenEncoders

    # one level instead of tiny's two: still every repeated block class (the mid block holds the self-attention),
    # in half the tracing time, which dominates this test on a 2-core CPU
    config = get_preset("tiny", dim_mult=(1,), self_attns=(False,), temporal_compression=(False,),
                        resnet_block_depths=(1,), vae=parts["vae"], clip=parts["clip"])  # fmt: skip
    torch.manual_seed(0)
    unet, adapter = build_models(config)
    pipe = FashionFlowPipeline.from_parts(unet.eval(), adapter.eval(), FrozenEncoders.from_config(config))
    keys = list(pipe.unet.state_dict())
    # backend aot_eager: dynamo and AOTAutograd trace what inductor would compile, without inductor's C++ code
    # generation, which takes minutes here (bench/results/compile_cpu.md); fullgraph: no graph break and no
    # region left uncompiled by the recompile limit
    pipe.compile(regional=True, backend="aot_eager", fullgraph=True)
    assert type(pipe.unet) is SpaceTimeUnet and list(pipe.unet.state_dict()) == keys
    images = photos(pipe, 1)
    video = lambda: run(pipe, images, num_frames=3, steps=2, decode_chunk_size=2, generator=gens(0, 1))  # noqa: E731
    with torch.compiler.set_stance("force_eager"):
        eager = video()
    graphs = counters["stats"]["unique_graphs"]
    compiled = video()
    assert counters["stats"]["unique_graphs"] > graphs  # the blocks were traced
    with torch.compiler.set_stance("fail_on_recompile"):
        again = video()
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)  # pixels in [0, 1]
    assert torch.equal(again, compiled)


def test_compile_graphs_replays_the_unets_calls_and_leaves_the_decoder_ungraphed(monkeypatch):
    """--compile graphs: torch.compile's 'reduce-overhead' (CUDA graphs) for the UNet only; the decoder's output is
    read by the mp4 writer's thread after the next chunk would have overwritten a graph's buffer."""
    from models.commands.infer import build_parser
    from models.networks import compiling

    asked = []
    monkeypatch.setattr(compiling.torch, "compile", lambda module, **options: asked.append(options) or module)
    unet, vae = torch.nn.Linear(1, 1), torch.nn.Module()
    vae.decoder = torch.nn.Linear(1, 1)
    compiling.compile_unet(unet, graphs=True)
    compiling.compile_decoder(vae)
    compiling.compile_unet(unet)
    assert asked == [{"mode": "reduce-overhead"}, {}, {}]
    assert build_parser().parse_args(["--compile", "graphs"]).compile == "graphs"
