"""Videos longer than the trained length and looping videos (models/pipeline/long_video.py), with tiny real components."""

import gc
import math
import warnings

import pytest
import torch
from torch import nn

from models.diffusion.schedule import NoiseSchedule, condition_first_frame
from models.pipeline.long_video import Window, crossfade_weights, plan_windows, sample_long_video
from models.pipeline.pipeline import FashionFlowPipeline, sample_generator


@pytest.fixture(scope="module")
def pipe(parts):
    return FashionFlowPipeline.from_checkpoint(parts["ours"], device="cpu")


def photo(pipe, seed=0):
    return torch.rand(1, 3, *pipe.image_size, generator=torch.Generator().manual_seed(seed))


class Spy:
    """Wraps a pipeline's stages and records what each window was given and gave back."""

    def __init__(self, pipe, monkeypatch):
        self.encoded, self.latents, self.held, self.sampled = [], [], [], []
        encode, denoise = pipe.encode_image, pipe.denoise

        def encode_image(images, generator=None):
            self.encoded.append(images.clone())
            context, latent = encode(images, generator)
            self.latents.append(latent)
            return context, latent

        def spy_denoise(latents, context, held, **kw):
            self.held.append(held.clone())
            self.sampled.append(denoise(latents, context, held, **kw))
            return self.sampled[-1]

        monkeypatch.setattr(pipe, "encode_image", encode_image)
        monkeypatch.setattr(pipe, "denoise", spy_denoise)


def long_video(pipe, **kw):
    kw = dict(window=pipe.model_config.frames, sampler="ddpm", steps=2, progress=False) | kw
    return sample_long_video(pipe, photo(pipe), [sample_generator(0, 0, 0)], **kw)


def test_windows_cover_the_video_and_the_last_ends_on_its_last_frame():
    assert plan_windows(20, 8, 2) == [Window(0, 8, 0), Window(6, 8, 2), Window(12, 8, 2)]
    # 22 frames take 4 windows; they are spread from frame 0 to 21, sharing the spare frames as overlap
    assert plan_windows(22, 8, 2) == [Window(0, 8, 0), Window(5, 8, 3), Window(9, 8, 4), Window(14, 8, 3)]
    assert plan_windows(5, 8, 1) == [Window(0, 8, 0)]
    with pytest.raises(ValueError, match=r"overlap must be between 1 .* and 7 .* got 8"):
        plan_windows(20, 8, 8)


def test_held_frames_are_imposed_and_nan_frames_left_free():
    latents = torch.randn(1, 2, 4, 3, 3)
    held = torch.full_like(latents, math.nan)
    held[:, :, 0], held[:, :, 3] = 1.0, 2.0
    out = condition_first_frame(latents, held)
    assert (out[:, :, 0] == 1).all() and (out[:, :, 3] == 2).all()
    assert torch.equal(out[:, :, 1:3], latents[:, :, 1:3])
    assert torch.equal(condition_first_frame(latents, held[:, :, 0])[:, :, 1:], latents[:, :, 1:])  # the photo form


def test_crossfade_keeps_the_conditioning_frame_and_rises_to_the_new_window():
    assert crossfade_weights(4, "crossfade").tolist() == [0, 0.25, 0.5, 0.75]
    assert crossfade_weights(3, "hold").tolist() == [0, 0, 0]


def test_pipeline_makes_more_frames_than_it_was_trained_on(pipe):
    assert pipe.model_config.frames == 8

    def make(**kw):
        return pipe(photo(pipe), num_frames=18, steps=1, generator=sample_generator(1, 0, 0), progress=False, **kw).frames

    video = make(output_type="pt")
    assert video.shape == (1, 18, 3, *pipe.image_size)
    again = make(output_type="pt")
    assert torch.equal(video, again)
    assert 0 <= video.min() and video.max() <= 1 and video[:, 8:].std() > 0.01
    pil = make()
    assert len(pil) == 1 and len(pil[0]) == 18 and pil[0][0].size == pipe.image_size[::-1]


def test_a_windowed_video_may_have_any_length(pipe):
    """Its windows all have the trained length, a multiple of the UNet's temporal factor, and it is cut after."""
    for frames, loop in ((11, False), (5, True)):
        video = pipe(photo(pipe), num_frames=frames, loop=loop, overlap=2, steps=1, progress=False, output_type="pt").frames
        assert video.shape[:2] == (1, frames)
    with pytest.raises(ValueError, match=r"frames must be a multiple of 2 \(the UNet's temporal downsampling\) and at least 2"):
        pipe(photo(pipe), num_frames=5, steps=1, progress=False)  # one window, not looping: the UNet takes it whole
    with pytest.raises(ValueError, match="frames must be at least 1, got -2"):
        pipe(photo(pipe), num_frames=-2, loop=True, steps=1, progress=False)


def test_what_a_windowed_video_cannot_take_is_refused_by_name(pipe):
    with pytest.raises(ValueError, match=r"output_type cannot be used with a video longer than the model's 8 frames"):
        pipe(photo(pipe), num_frames=18, steps=1, progress=False, output_type="latent")
    with pytest.raises(ValueError, match=r"latents cannot be used"):
        pipe(photo(pipe), num_frames=8, loop=True, steps=1, progress=False, latents=torch.zeros(1, 4, 8, 6, 8))


def test_each_window_is_conditioned_on_a_frame_of_the_one_before_encoded_again(pipe, monkeypatch):
    spy = Spy(pipe, monkeypatch)
    video = long_video(pipe, num_frames=14, overlap=2)  # windows start on frames 0 and 6
    assert len(spy.encoded) == 2 and len(spy.held) == 2
    # the second window's conditioning image is frame 6 of the video, which the first window made
    assert torch.allclose(spy.encoded[1][0], video[0, 6], atol=1e-5)
    assert not torch.allclose(spy.encoded[1], spy.encoded[0], atol=1e-2)
    # ... and its VAE encoding, not the photo's latent, is what the window holds as its frame 0
    assert torch.equal(spy.held[1][:, :, 0], spy.latents[1])
    assert not torch.allclose(spy.latents[1], spy.latents[0], atol=1e-2)


def test_overlap_frames_are_held_to_the_previous_window(pipe, monkeypatch):
    spy = Spy(pipe, monkeypatch)
    # windows [0, 8) and [4, 12), sharing 4 frames
    long_video(pipe, num_frames=12, overlap=3, overlap_mode="hold")
    first, second = spy.sampled
    # frames 5-7 of the first window are frames 1-3 of the second, exactly, all through denoising
    assert torch.equal(second[:, :, 1:4], first[:, :, 5:8])
    assert spy.held[1][:, :, 4:].isnan().all()
    free = spy.sampled
    spy2 = Spy(pipe, monkeypatch)
    long_video(pipe, num_frames=12, overlap=3, overlap_mode="crossfade")
    assert not torch.allclose(spy2.sampled[1][:, :, 1:4], spy2.sampled[0][:, :, 5:8], atol=1e-3)
    assert torch.equal(free[0], spy2.sampled[0])  # the first window does not depend on how windows join


def test_loop_cross_fades_the_frames_past_the_end_into_the_head(pipe, monkeypatch):
    spy = Spy(pipe, monkeypatch)
    video = long_video(pipe, num_frames=12, overlap=2, loop=True)
    assert video.shape[1] == 12
    # 14 frames sampled in windows [0, 8) and [6, 14); frames 12, 13 (past the end) fade into frames 0, 1
    first, second = spy.sampled
    head = torch.lerp(second[:, :, 6:8], first[:, :, 0:2], torch.tensor([1 / 3, 2 / 3]).view(2, 1, 1))
    assert torch.allclose(video[:, :2], pipe.decode_latents(head), atol=1e-5)
    assert torch.allclose(video[:, 2:7], pipe.decode_latents(first[:, :, 2:7]), atol=1e-5)  # 7: the next join


class Bridge(nn.Module):
    """A constructed denoiser whose clean estimate of every frame is the straight line between the window's first
    and last frame, so frames drift steadily away from the photo and the last one is far from the first."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the pipeline a dtype and device
        self.alphas_cumprod = NoiseSchedule().alphas_cumprod

    def forward(self, x, context, timestep):
        ac = self.alphas_cumprod[timestep.long()].view(-1, 1, 1, 1, 1)
        ramp = torch.linspace(0, 1, x.shape[2]).view(1, 1, -1, 1, 1)
        clean = torch.lerp(x[:, :, :1], x[:, :, -1:], ramp)
        return (x - ac.sqrt() * clean) / (1 - ac).sqrt()


def test_loop_join_is_smaller_than_without_loop(pipe, monkeypatch):
    monkeypatch.setattr(pipe.unet, "forward", Bridge().forward)  # the real unet module, a constructed denoiser

    def join_vs_motion(loop):
        video = long_video(pipe, num_frames=12, overlap=2, loop=loop, sampler="ddim", steps=4)[0]
        steps = (video[1:] - video[:-1]).abs().mean()
        return float((video[-1] - video[0]).abs().mean() / steps)

    looped, plain = join_vs_motion(True), join_vs_motion(False)
    assert looped < 0.5 * plain and looped < 2.0


def test_inference_loop_and_overlap_flags(parts, tmp_path, samples_dir):
    import json

    import inference

    out = tmp_path / "o"
    photo_path = samples_dir / "images" / "blue.jpg"
    args = [
        "--pretrained_model", parts["ours"], "--vae", parts["vae"], "--clip", parts["clip"], "--image", str(photo_path),
        "--output_dir", str(out), "--steps", "1", "--frames", "11", "--loop", "--overlap", "2", "--no_progress",
    ]  # fmt: skip
    assert inference.main([str(a) for a in args]) == 0
    sidecar = json.loads(next(out.glob("*_sample0.json")).read_text())
    assert (sidecar["frames"], sidecar["loop"], sidecar["overlap"]) == (11, True, 2)  # windowed: any length
    bad = [str(a) for a in args[:-3]] + ["--overlap", "8"]
    assert inference.main(bad) == 2


def test_inference_streams_a_looping_video_to_the_files_of_the_one_in_memory(parts, tmp_path, samples_dir):
    """inference.py writes each window's frames to the mp4 and png frames as they are decoded; the files are byte for
    byte those of the same video made in memory and written in one go."""
    import inference
    from models.data.video_io import load_image, write_mp4, write_png_frames
    from models.diffusion.samplers import DEFAULT_SAMPLER

    out, photo_path = tmp_path / "o", samples_dir / "images" / "blue.jpg"
    args = [
        "--pretrained_model", parts["ours"], "--vae", parts["vae"], "--clip", parts["clip"], "--image", photo_path,
        "--output_dir", out, "--steps", 1, "--frames", 13, "--loop", "--overlap", 2, "--png_frames", "--no_progress",
    ]  # fmt: skip
    assert inference.main([str(a) for a in args]) == 0
    pipe = FashionFlowPipeline.from_checkpoint(parts["ours"], vae=parts["vae"], clip=parts["clip"], device="cpu")
    video = pipe(
        load_image(photo_path, size=pipe.image_size), num_frames=13, loop=True, overlap=2, sampler=DEFAULT_SAMPLER,
        steps=1, generator=sample_generator(0, 0, 0), progress=False, output_type="pt",
    ).frames[0]  # fmt: skip
    assert (out / "blue_sample0.mp4").read_bytes() == write_mp4(video, tmp_path / "memory.mp4").read_bytes()
    streamed, in_memory = sorted((out / "blue_sample0_frames").iterdir()), write_png_frames(video, tmp_path / "memory")
    assert [p.name for p in streamed] == [p.name for p in in_memory] and len(streamed) == 13
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(streamed, in_memory))


def streamed(pipe, num_frames, **kw):
    """A video made with `output_type=None`, its chunks gathered: (frames [F, 3, H, W], chunk lengths)."""
    chunks = []
    kw = dict(overlap=2, steps=1, generator=sample_generator(1, 0, 0), progress=False) | kw
    result = pipe(photo(pipe), num_frames=num_frames, output_type=None, on_frames=lambda v, f: chunks.append(f), **kw)
    assert result.frames is None
    return torch.cat(chunks), [len(c) for c in chunks]


@pytest.mark.parametrize("loop", [False, True])
def test_a_streamed_video_has_the_frames_of_the_one_in_memory_and_the_same_mp4(pipe, tmp_path, loop):
    from models.data.video_io import Mp4Writer, write_mp4

    frames, lengths = streamed(pipe, 20, loop=loop)
    kept = pipe(photo(pipe), num_frames=20, loop=loop, overlap=2, steps=1, generator=sample_generator(1, 0, 0),
                progress=False, output_type="pt").frames[0]  # fmt: skip
    assert torch.equal(frames, kept) and len(lengths) > 2  # window by window, not all at the end
    with Mp4Writer(tmp_path / "streamed.mp4") as mp4:
        for chunk in frames.split(lengths):
            mp4.write(chunk)
    assert mp4.path.read_bytes() == write_mp4(kept, tmp_path / "memory.mp4").read_bytes()


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage Python objects hold now (the networks' weights included)."""
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and not obj.is_meta:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("loop", [False, True])
def test_a_streamed_long_video_holds_the_same_memory_whatever_its_length(pipe, loop):
    """The tensors alive as each chunk comes out (measured at every chunk) do not grow with the video's length; kept
    in memory (`output_type='pt'`) they do, by the frames."""

    def peak(num_frames, output_type=None):
        peaks = []
        pipe(photo(pipe), num_frames=num_frames, loop=loop, overlap=2, steps=1, progress=False, output_type=output_type,
             on_frames=lambda v, f: peaks.append(live_tensor_bytes()))  # fmt: skip
        return max(peaks)

    frame = 3 * pipe.image_size[0] * pipe.image_size[1] * 4
    short, long = peak(12), peak(60)
    assert long <= short + 2 * frame  # 5x the frames: at most the chunk sizes differ
    assert peak(60, "pt") > short + 40 * frame  # the measure sees frames that are kept


def test_keeping_a_large_video_in_memory_is_announced_before_sampling_starts(pipe, monkeypatch):
    from models.pipeline import pipeline as pipeline_module

    assert pipeline_module.output_bytes(2, 70, (640, 512), "pt") == 2 * 70 * 3 * 640 * 512 * 4
    assert pipeline_module.output_bytes(2, 70, (640, 512), None) == 0
    monkeypatch.setattr(pipeline_module, "LARGE_OUTPUT_BYTES", 1000)
    seen = []
    with pytest.warns(
        UserWarning, match=r"keeping 1 video\(s\) of 18 frames .* will take [\d.]+ GiB; pass output_type=None"
    ) as caught:
        pipe(photo(pipe), num_frames=18, steps=1, progress=False, output_type="pt", callback=lambda *a: seen.append(len(caught)))
    assert seen[0] == 1  # warned before the first step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(photo(pipe), num_frames=18, steps=1, progress=False, output_type=None, on_frames=lambda v, f: None)
