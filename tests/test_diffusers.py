"""The diffusers-native surface with tiny real components, offline: the networks' registered configs, pipeline
folders made by `models.pipeline.convert` and `save_pretrained`, the diffusers-style call and the model card."""

import json

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from PIL import Image

from models.core.config import get_preset
from models.core.outputs import OutputLocationError
from models.data.video_io import frames_to_tensor, frames_to_uint8, load_image
from models.networks.adapter import EmbeddingAdapter
from models.networks.checkpoint import WeightsSource, build_models
from models.networks.unet import SpaceTimeUnet
from models.pipeline import convert as convert_module
from models.pipeline.convert import convert
from models.pipeline.hub import card_metadata
from models.pipeline.model_source import ModelSource
from models.pipeline.pipeline import FashionFlowPipeline, FashionFlowPipelineOutput, sample_generator

TINY = get_preset("tiny")
COMPONENTS = ("unet", "adapter", "vae", "image_encoder", "feature_extractor", "scheduler")


@pytest.fixture(scope="module")
def folders(parts, tmp_path_factory):
    """Both checkpoint formats converted: the released one as the original ran it ('legacy'), ours as trained."""
    root = tmp_path_factory.mktemp("folders")
    released = ModelSource(parts["released"], preset="tiny", preprocessing="legacy", vae=parts["vae"], clip=parts["clip"])
    return dict(released=convert(released, root / "released"), ours=convert(ModelSource(parts["ours"]), root / "ours"))


@pytest.fixture(scope="module")
def pipe(folders):
    return FashionFlowPipeline.from_pretrained(folders["ours"])


def photo(seed=0, size=(64, 48)):
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))


def video(pipe, image, seed=0, **kw):
    """Float frames [B, F, 3, H, W] of one image per generator (image i gets sample_generator(seed, i, 0))."""
    kw = dict(num_frames=4, num_inference_steps=2, output_type="pt", progress=False) | kw
    count = len(image) if isinstance(image, list | torch.Tensor) else 1
    return pipe(image, generator=[sample_generator(seed, i, 0) for i in range(count)], **kw).frames


# ------------------------------------------------------------------------------------------------ the networks


@pytest.mark.parametrize("cls", [SpaceTimeUnet, EmbeddingAdapter])
def test_networks_save_their_model_config_fields_and_load_back(cls, tmp_path):
    torch.manual_seed(0)
    network = cls.from_model_config(TINY)
    network.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["_class_name"] == cls.__name__
    assert {k: v for k, v in saved.items() if not k.startswith("_")} == {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in TINY.to_dict().items()
        if name in cls.config_fields()
    }
    assert "_use_default_values" not in saved  # every field explicit: a later change of defaults cannot alter the network
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.model_config == network.model_config
    assert list(loaded.state_dict()) == list(network.state_dict())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in network.state_dict().items())


def test_registered_fields_are_the_ones_each_network_is_built_from():
    assert SpaceTimeUnet.config_fields() == (
        "dim",
        "channels",
        "dim_mult",
        "self_attns",
        "temporal_compression",
        "resnet_block_depths",
        "attn_dim_head",
        "attn_heads",
        "condition_on_timestep",
        "cross_attn_dim_head_down",
        "cross_attn_dim_head_up",
        "context_dim",
        "latent_size",
        "frames",
    )
    assert EmbeddingAdapter.config_fields() == ("channels", "latent_size", "context_tokens", "context_dim")
    unet = SpaceTimeUnet.from_model_config(TINY)
    assert unet.config.dim_mult == (1, 2) and unet.model_config.frame_multiple == 2  # diffusers' FrozenDict, ModelConfig
    with pytest.raises(ValueError, match="one entry per level"):
        SpaceTimeUnet(dim_mult=(1, 2, 4))


def test_gradient_checkpointing_is_diffusers_switch():
    unet = SpaceTimeUnet.from_model_config(TINY)
    assert not unet.is_gradient_checkpointing
    unet.enable_gradient_checkpointing()
    assert unet.is_gradient_checkpointing
    unet.disable_gradient_checkpointing()
    assert not unet.is_gradient_checkpointing
    unet.enable_gradient_checkpointing(True).enable_gradient_checkpointing(False)
    assert not unet.is_gradient_checkpointing


def test_networks_of_different_models_are_refused(pipe):
    torch.manual_seed(0)
    unet, _ = build_models(TINY.replace(latent_size=(16, 16)))
    with pytest.raises(ValueError, match=r"latent_size: unet \(16, 16\) vs adapter \(16, 12\)"):
        FashionFlowPipeline.from_parts(unet, pipe.adapter, pipe.encoders)


# ------------------------------------------------------------------------------------------------ folders


@pytest.mark.parametrize("source", ["released", "ours"])
def test_converted_folder_gives_the_checkpoints_videos(parts, folders, source):
    checkpoint_options = (
        dict(preset="tiny", preprocessing="legacy", vae=parts["vae"], clip=parts["clip"]) if source == "released" else {}
    )
    from_checkpoint = FashionFlowPipeline.from_checkpoint(parts[source], device="cpu", **checkpoint_options)
    from_folder = FashionFlowPipeline.from_pretrained(folders[source])
    images = torch.cat([photo(1), photo(2)])
    expected = video(from_checkpoint, images, seed=3)
    assert torch.equal(video(from_folder, images, seed=3), expected)
    assert expected[:, 1:].std() > 0.01  # a video, not a constant
    folder_config = from_folder.model_config
    assert folder_config.replace(vae="", clip="") == from_checkpoint.model_config.replace(vae="", clip="")
    assert folder_config.preprocessing == ("legacy" if source == "released" else "standard")
    assert folder_config.vae == str(folders[source] / "vae")  # where the encoders now come from


def test_folder_layout(folders):
    folder = folders["ours"]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["fashionflow_pipeline", "FashionFlowPipeline"] and index["preprocessing"] == "standard"
    assert index["unet"] == ["fashionflow_component_unet", "SpaceTimeUnet"]  # the folder's own code: tests/test_remote_code.py
    assert index["adapter"] == ["fashionflow_component_adapter", "EmbeddingAdapter"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["image_encoder"] == ["transformers", "CLIPVisionModel"]
    for name in ("unet", "adapter", "vae"):
        assert (folder / name / "config.json").is_file() and (folder / name / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "image_encoder" / "model.safetensors").is_file()
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "DDPMScheduler"
    processor = json.loads((folder / "feature_extractor" / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 32, "width": 32} and processor["rescale_factor"] == pytest.approx(1 / 255)
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_save_pretrained_round_trip_and_dtype(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    again = FashionFlowPipeline.from_pretrained(tmp_path)
    assert sorted(again.components) == sorted(COMPONENTS)
    assert again.config.preprocessing == pipe.config.preprocessing
    assert again.model_config.replace(vae="", clip="") == pipe.model_config.replace(vae="", clip="")
    assert torch.equal(video(again, photo(4)), video(pipe, photo(4)))
    half = FashionFlowPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {getattr(half, name).dtype for name in ("unet", "adapter", "vae", "image_encoder")} == {torch.bfloat16}


# ------------------------------------------------------------------------------------------------ the call


def test_every_output_type(pipe):
    image = photo(5)

    def call(**kw):  # a fresh generator each call: the same seed, so the same video
        return pipe(image, generator=[sample_generator(0, 0, 0)], num_frames=4, num_inference_steps=2, progress=False, **kw)

    pt = call(output_type="pt")
    assert isinstance(pt, FashionFlowPipelineOutput) and pt.frames.shape == (1, 4, 3, 64, 48) and pt.frames.dtype == torch.float32
    latents = call(output_type="latent").frames
    assert latents.shape == (1, 4, 4, 16, 12)  # [B, C, F, h, w]
    assert torch.equal(pipe.decode_latents(latents), pt.frames)
    array = call(output_type="np").frames
    assert isinstance(array, np.ndarray) and array.shape == (1, 4, 64, 48, 3)
    assert np.array_equal(array, pt.frames.permute(0, 1, 3, 4, 2).numpy())
    pil = call().frames  # "pil" is the default, as in diffusers
    assert len(pil) == 1 and len(pil[0]) == 4 and pil[0][0].size == (48, 64) and pil[0][0].mode == "RGB"
    assert np.array_equal(np.stack([np.asarray(frame) for frame in pil[0]]), frames_to_uint8(pt.frames[0]))
    (as_tuple,) = call(output_type="pt", return_dict=False)
    assert torch.equal(as_tuple, pt.frames)
    with pytest.raises(ValueError, match="output_type must be one of"):
        call(output_type="mp4")


def test_photos_of_any_size_are_prepared_as_inference_py_prepares_files(pipe, tmp_path):
    rng = np.random.default_rng(0)
    small, wide = (Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in ((20, 15, 3), (64, 200, 3)))
    exact = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    for name, image in (("small", small), ("wide", wide), ("exact", exact)):
        image.save(tmp_path / f"{name}.png")
    from_files = torch.stack([load_image(tmp_path / f"{name}.png", size=(64, 48)) for name in ("small", "wide", "exact")])
    assert torch.equal(from_files[2], frames_to_tensor(np.asarray(exact)))  # the model's size: not resampled
    expected = video(pipe, from_files)
    assert torch.equal(video(pipe, [small, wide, exact]), expected)
    assert torch.equal(video(pipe, [str(tmp_path / f"{name}.png") for name in ("small", "wide", "exact")]), expected)
    assert torch.equal(video(pipe, [np.asarray(small), np.asarray(wide), np.asarray(exact)]), expected)


def test_step_end_callback_can_stop_early_and_replace_latents(pipe):
    calls, seen = [], []
    hook = pipe.unet.register_forward_hook(lambda *args: calls.append(1))

    def stop_after_second_step(p, step, t, tensors):
        seen.append((step, int(t), tensors["latents"].clone()))
        if step == 1:
            p._interrupt = True
        return tensors

    try:
        latents = pipe(photo(6), num_frames=4, num_inference_steps=4, output_type="latent", progress=False,
                       generator=[sample_generator(0, 0, 0)], callback_on_step_end=stop_after_second_step).frames  # fmt: skip
    finally:
        hook.remove()
    assert len(calls) == 2 and [step for step, _, _ in seen] == [0, 1]
    assert [t for _, t, _ in seen] == [999, 749]  # trailing spacing: 4 of 1000 steps
    assert torch.equal(latents, seen[-1][2])

    def zero_at_last_step(p, step, t, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 1 else tensors

    zeroed = pipe(photo(6), num_frames=4, num_inference_steps=2, output_type="latent", progress=False,
                  generator=[sample_generator(0, 0, 0)], callback_on_step_end=zero_at_last_step).frames  # fmt: skip
    assert not zeroed.any()
    with pytest.raises(ValueError, match=r"may only name \['latents'\], got \['noise'\]"):
        video(pipe, photo(6), callback_on_step_end=zero_at_last_step, callback_on_step_end_tensor_inputs=["noise"])


@pytest.mark.parametrize("scheduler_class,sampler", [(DDIMScheduler, "ddim"), (DPMSolverMultistepScheduler, "dpmsolver++")])
def test_swapped_scheduler_runs_as_the_named_sampler(folders, scheduler_class, sampler):
    pipe = FashionFlowPipeline.from_pretrained(folders["ours"])
    named = video(pipe, photo(7), sampler=sampler)
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    assert torch.equal(video(pipe, photo(7)), named)
    assert json.loads(json.dumps(pipe.config["scheduler"])) == ["diffusers", scheduler_class.__name__]


def test_videos_per_image_follow_their_generators(pipe):
    images = [photo(8)[0], photo(9)[0]]
    generators = [sample_generator(1, i, k) for i in range(2) for k in range(2)]
    kw = dict(num_frames=4, num_inference_steps=2, output_type="pt", progress=False)
    videos = pipe(images, num_videos_per_image=2, generator=generators, **kw).frames
    assert videos.shape[0] == 4
    alone = pipe(images[1], generator=[sample_generator(1, 1, 1)], **kw).frames
    assert torch.allclose(videos[3], alone[0], atol=1e-4)  # CPU matmuls round a little differently by batch size
    assert (videos[2] - videos[3])[1:].abs().mean() > 1e-3
    with pytest.raises(ValueError, match="one torch.Generator for 4 videos"):
        pipe(images, num_videos_per_image=2, generator=torch.Generator(), **kw)


def test_given_latents_are_the_initial_noise(pipe):
    image, kw = photo(10), dict(sampler="ddim")  # deterministic steps: only the initial noise differs between calls
    generator = sample_generator(2, 0, 0)
    pipe.encode_image(image, generator=[generator])  # the photo's posterior draw comes first
    noise = pipe.prepare_latents(1, 4, generator=[generator])
    assert torch.equal(video(pipe, image, seed=2, latents=noise, **kw), video(pipe, image, seed=2, **kw))
    assert (video(pipe, image, seed=2, latents=-noise, **kw) - video(pipe, image, seed=2, **kw))[:, 1:].abs().mean() > 1e-3
    with pytest.raises(ValueError, match=r"latents must be the initial noise \[B \* n, C, F, h, w\] = \[1, 4, 4, 16, 12\]"):
        video(pipe, image, latents=noise[:, :, :2])


def test_call_argument_checks(pipe):
    assert video(pipe, photo(11), height=64, width=48).shape == (1, 4, 3, 64, 48)
    with pytest.raises(ValueError, match=r"makes 64x48 videos .* got height=128, width=None"):
        video(pipe, photo(11), height=128)
    with pytest.raises(ValueError, match="num_inference_steps=3 and steps=2 name the same setting"):
        video(pipe, photo(11), num_inference_steps=3, steps=2)
    assert torch.equal(video(pipe, photo(11), num_inference_steps=None, steps=2), video(pipe, photo(11)))
    with pytest.raises(ValueError, match="num_videos_per_image must be at least 1"):
        video(pipe, photo(11), num_videos_per_image=0)
    with pytest.raises(ValueError, match="cannot use a dict as an image"):
        video(pipe, {"image": 1})


def test_model_cpu_offload_runs_the_stages_in_order_and_keeps_the_video(folders):
    pipe = FashionFlowPipeline.from_pretrained(folders["ours"])
    reference = video(pipe, photo(12))
    placements = []
    for name in ("image_encoder", "adapter", "unet"):
        getattr(pipe, name).register_forward_pre_hook(lambda module, args, name=name: placements.append(name))
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe._execution_device == torch.device("cpu") and pipe._offloaded == {"image_encoder", "adapter", "unet", "vae"}
    assert torch.equal(video(pipe, photo(12)), reference)
    assert list(dict.fromkeys(placements)) == ["image_encoder", "adapter", "unet"]  # the VAE runs through encode/decode
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="found no CUDA device; pass device="):
            pipe.enable_model_cpu_offload()


def test_progress_bar_follows_set_progress_bar_config(folders, capsys):
    pipe = FashionFlowPipeline.from_pretrained(folders["ours"])
    video(pipe, photo(13), progress=None)
    assert "denoising" in capsys.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    video(pipe, photo(13), progress=None)
    assert "denoising" not in capsys.readouterr().err
    video(pipe, photo(13), progress=True)  # an explicit flag wins
    assert "denoising" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ conversion and card


def card_yaml(folder):
    text = (folder / "README.md").read_text()
    head, separator, body = text.removeprefix("---\n").partition("\n---\n")
    assert separator, "the model card must open with a YAML block between --- lines"
    return yaml.safe_load(head), body


@pytest.mark.parametrize("source", ["released", "ours"])
def test_model_card_metadata_parses_as_yaml(folders, source):
    metadata, body = card_yaml(folders[source])
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "image-to-video"
    assert metadata["license"] == "other" and metadata["license_name"] == "no-license-stated"
    assert {"image-to-video", "fashion"} <= set(metadata["tags"])
    assert "base_model" not in metadata  # these tiny encoders are local folders, not hub models
    for section in ("## Use", "## Weights", "## Paper", "## Training data", "## Intended use and limits", "## License"):
        assert section in body
    assert f'from_pretrained("{folders[source]}")' in body and "arXiv 2310.00106" in body and "8-frame videos at 64x48" in body
    if source == "released":
        assert "state no license" in body and "UBC Fashion" in body and metadata["license_link"].endswith("1702609/FashionFlow")
    else:
        assert "the live (not EMA) weights of `ours.pth`" in body and "train.py" in body  # a test checkpoint without EMA


def test_card_metadata_lists_hub_encoders_as_base_models():
    data = card_metadata(
        WeightsSource("FashionFlow_checkpoint.pth", released=True),
        ["CompVis/stable-diffusion-v1-4", "openai/clip-vit-base-patch32"],
    )
    metadata = yaml.safe_load(data.to_yaml())
    assert metadata["base_model"] == ["CompVis/stable-diffusion-v1-4", "openai/clip-vit-base-patch32"]


class Commit:
    commit_url = "https://huggingface.co/you/tiny/commit/1"


@pytest.fixture
def hub(monkeypatch):
    """huggingface_hub's repo creation and folder upload, recorded instead of sent: (call, repo_id, options), the
    model card of each upload under 'README.md'."""
    calls = []
    monkeypatch.setattr("huggingface_hub.create_repo", lambda repo_id, **kw: calls.append(("create", repo_id, kw)))

    def upload_folder(*, repo_id, folder_path, **kw):
        calls.append(("upload", repo_id, dict(kw, folder_path=folder_path, card=(folder_path / "README.md").read_text())))
        return Commit()

    monkeypatch.setattr("huggingface_hub.upload_folder", upload_folder)
    return calls


def test_convert_command_refuses_a_used_folder_and_pushes_on_request(parts, tmp_path, hub, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    assert convert_module.main(["--checkpoint", str(parts["ours"]), "--output_dir", str(used)]) == 2
    assert "--output_dir" in capsys.readouterr().err and (used / "notes.txt").read_text() == "mine"
    with pytest.raises(OutputLocationError):
        convert(ModelSource(parts["ours"]), used)
    assert convert_module.main(["--checkpoint", str(tmp_path / "missing.pth"), "--output_dir", str(tmp_path / "new")]) == 2
    assert "missing.pth does not exist" in capsys.readouterr().err and not (tmp_path / "new").exists()

    out = tmp_path / "pushed"
    assert (
        convert_module.main(
            ["--checkpoint", str(parts["ours"]), "--output_dir", str(out), "--push_to_hub", "you/tiny", "--private"]
        )
        == 0
    )
    assert hub[0] == ("create", "you/tiny", {"exist_ok": True, "private": True, "token": None})
    assert hub[1][:2] == ("upload", "you/tiny") and hub[1][2]["folder_path"] == out
    assert 'from_pretrained("you/tiny")' in (out / "README.md").read_text() and Commit.commit_url in capsys.readouterr().out


def test_the_pipeline_saves_and_uploads_the_model_card_that_convert_does(parts, folders, tmp_path, hub):
    assert (
        convert_module.main(
            ["--checkpoint", str(parts["ours"]), "--output_dir", str(tmp_path / "c"), "--push_to_hub", "you/tiny"]
        )
        == 0
    )
    pipe = FashionFlowPipeline.from_checkpoint(parts["ours"], device="cpu")
    assert pipe.push_to_hub("you/tiny", private=True) == Commit.commit_url  # diffusers' would upload a generic card
    assert pipe.save_pretrained(tmp_path / "pushed", push_to_hub=True, repo_id="you/tiny") == Commit.commit_url
    (_, _, converted), (_, _, pushed), (_, _, saved) = (call for call in hub if call[0] == "upload")
    assert pushed["card"] == saved["card"] == converted["card"] == (tmp_path / "c" / "README.md").read_text()
    assert [call[2]["private"] for call in hub if call[0] == "create"] == [False, True, None]
    pipe.save_pretrained(tmp_path / "saved")  # no upload: the card's loading code names the folder
    assert (tmp_path / "saved" / "README.md").read_text() == converted["card"].replace("you/tiny", str(tmp_path / "saved"))
    # a pipeline loaded from a folder does not know where its weights come from, and its card says so
    FashionFlowPipeline.from_pretrained(folders["ours"]).save_pretrained(tmp_path / "again")
    metadata, body = card_yaml(tmp_path / "again")
    assert metadata["pipeline_tag"] == "image-to-video" and "does not record where its UNet and adapter weights" in body


def test_our_checkpoints_convert_their_ema_weights_by_default(parts, tmp_path):
    from models.networks.checkpoint import read_checkpoint, save_checkpoint

    ckpt = read_checkpoint(parts["ours"])
    unet, adapter = build_models(ckpt["config"])
    unet.load_state_dict(ckpt["net"]), adapter.load_state_dict(ckpt["adapter"])
    ema = {part: {k: v + 1 for k, v in ckpt[part].items()} for part in ("net", "adapter")}  # unlike the live weights
    path = save_checkpoint(tmp_path / "with_ema.pth", unet, adapter, ckpt["config"], ema=ema, step=7)
    ema_folder = convert(ModelSource(path), tmp_path / "ema")
    assert convert_module.main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "live"), "--no_ema"]) == 0
    for folder, weights in ((ema_folder, ema), (tmp_path / "live", ckpt)):
        loaded = SpaceTimeUnet.from_pretrained(folder / "unet").state_dict()
        assert list(loaded) == list(weights["net"]) and all(torch.equal(loaded[k], v) for k, v in weights["net"].items())
        loaded = EmbeddingAdapter.from_pretrained(folder / "adapter").state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in weights["adapter"].items())
    assert (
        "the EMA weights of `with_ema.pth`, written by this project's `train.py` after 7 steps"
        in (ema_folder / "README.md").read_text()
    )
    assert "the live (not EMA) weights" in (tmp_path / "live" / "README.md").read_text()


def test_inference_takes_a_pipeline_folder(folders, parts):
    from models.serving.animate import load_pipeline

    pipe, precision = load_pipeline(ModelSource(folders["ours"], device="cpu"))
    assert precision == "fp32" and pipe.unet.dtype == torch.float32
    assert pipe.model_config.replace(vae="", clip="") == TINY.replace(vae="", clip="")
    with pytest.raises(ValueError, match=r"is a pipeline folder, .*: drop --vae, --no_ema"):
        load_pipeline(ModelSource(folders["ours"], device="cpu", vae=parts["vae"], use_ema=False))
    with pytest.raises(FileNotFoundError, match="nor a pipeline folder"):
        load_pipeline(ModelSource(folders["ours"].parent, device="cpu"))
