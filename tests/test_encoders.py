import time

import numpy as np
import pytest
import torch
from einops import rearrange
from PIL import Image

from models.core.config import get_preset
from models.networks.encoders import (
    CLIP_MEAN,
    CLIP_STD,
    EncoderNotFoundError,
    FrozenEncoders,
    load_clip,
    load_vae,
    preprocess_clip,
)
from models.networks.tiny_components import build_tiny_clip, build_tiny_vae, save_tiny_encoders

MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def clip_reference(reference_dir):
    return torch.load(reference_dir / "clip_legacy_preprocess.pt")


@pytest.fixture(scope="module")
def photos_uint8(samples_dir):
    """The sample stills as uint8 [B, 3, 640, 512]."""
    paths = sorted((samples_dir / "images").glob("*.jpg"))
    assert paths, f"no sample photos in {samples_dir / 'images'}"
    arrays = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    return rearrange(torch.from_numpy(np.stack(arrays)), "b h w c -> b c h w")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_encoders")
    save_tiny_encoders(directory, seed=0)
    return directory


@pytest.fixture(scope="module")
def encoders(tiny_dir):
    return {
        mode: FrozenEncoders.from_pretrained(vae=tiny_dir, clip=tiny_dir, preprocessing=mode) for mode in ("legacy", "standard")
    }


def frames(n=5, height=64, width=48, seed=0):
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- CLIP pixels


def test_legacy_clip_preprocessing_matches_transformers_4_36(clip_reference):
    images = clip_reference["images_uint8"] / 255
    pixels = preprocess_clip(images, "legacy")
    assert pixels.shape == (2, 3, 224, 224) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels, clip_reference["legacy_pixel_values"], rtol=0, atol=1e-6)


def test_standard_clip_preprocessing_matches_uint8_processor(clip_reference):
    images = clip_reference["images_uint8"] / 255
    expected = clip_reference["uint8_pixel_values"]
    # rounding to uint8 recovers the photo's bytes exactly, so only float32 arithmetic differs
    torch.testing.assert_close(preprocess_clip(images, "standard"), expected, rtol=0, atol=1e-5)
    # jitter of under half a grey level rounds back to the same bytes; legacy's truncation would not
    jitter = (torch.rand(images.shape, generator=torch.Generator().manual_seed(1)) - 0.5) * (0.9 / 255)
    jittered = (images + jitter).clamp(0, 1)
    torch.testing.assert_close(preprocess_clip(jittered, "standard"), expected, rtol=0, atol=1e-5)


def test_legacy_is_standard_of_truncated_bytes_rescaled_twice(photos_uint8):
    # independent construction: legacy truncates to bytes, so (k + 0.7) / 255 gives the photo's bytes k; after
    # the shared resize, legacy is normalize(bytes / 255 / 255) where standard is normalize(bytes / 255)
    images = ((photos_uint8 + 0.7) / 255).clamp(0, 1)
    resized_bytes = (preprocess_clip(photos_uint8 / 255, "standard") * STD + MEAN) * 255
    torch.testing.assert_close(resized_bytes, resized_bytes.round(), rtol=0, atol=1e-3)
    legacy = preprocess_clip(images, "legacy")
    torch.testing.assert_close((legacy * STD + MEAN) * 255 * 255, resized_bytes.round(), rtol=0, atol=0.05)
    # the near-black images SPEC describes: nothing brighter than one grey level
    assert (legacy <= (1 / 255 - MEAN) / STD + 1e-6).all()


@pytest.mark.parametrize("size", [224, 32])
@pytest.mark.parametrize("crop", ["portrait", "landscape"])
def test_clip_preprocessing_matches_transformers_pil_processor(photos_uint8, size, crop):
    transformers = pytest.importorskip("transformers")
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None)
    if processor_class is None:
        pytest.skip(f"transformers {transformers.__version__} has no CLIPImageProcessorPil")
    # odd sizes exercise the long-side truncation and the center-crop rounding
    uint8 = photos_uint8[..., :333] if crop == "portrait" else photos_uint8[..., 101:402, :]
    processor = processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    from_uint8 = processor(images=list(uint8), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(preprocess_clip(uint8 / 255, "standard", size=size), from_uint8, rtol=0, atol=1e-5)
    # off the byte grid, so that truncating and rounding to bytes differ
    floats = ((uint8 + 0.7) / 255).clamp(0, 1)
    from_float = processor(images=list(floats), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(preprocess_clip(floats, "legacy", size=size), from_float, rtol=0, atol=1e-6)


def test_preprocess_clip_rejects_bad_input():
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        preprocess_clip(torch.rand(1, 3, 8, 8), "proper")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        preprocess_clip(torch.rand(3, 8, 8), "standard")


# ---------------------------------------------------------------------------------------------------- loading


def test_tiny_components_are_seeded_fast_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    start = time.perf_counter()
    vae, clip = build_tiny_vae(seed=3), build_tiny_clip(seed=3)
    assert time.perf_counter() - start < 2.0
    assert torch.equal(torch.random.get_rng_state(), state)
    for first, again in ((vae, build_tiny_vae(seed=3)), (clip, build_tiny_clip(seed=3))):
        for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
            assert torch.equal(a, b), name
    other = build_tiny_vae(seed=4).state_dict()
    assert not torch.equal(vae.state_dict()["encoder.conv_in.weight"], other["encoder.conv_in.weight"])


def assert_same_weights(loaded, built):
    built_state = built.state_dict()
    assert loaded.state_dict().keys() == built_state.keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, built_state[name]), name


@pytest.mark.parametrize("layout", ["model_dir", "parent_dir"])
def test_load_saved_tiny_encoders(tiny_dir, layout):
    vae_path, clip_path = (tiny_dir / "vae", tiny_dir / "clip") if layout == "model_dir" else (tiny_dir, tiny_dir)
    vae, clip = load_vae(vae_path), load_clip(str(clip_path))
    assert_same_weights(vae, build_tiny_vae(seed=0))
    assert_same_weights(clip, build_tiny_clip(seed=0))
    for model in (vae, clip):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())


def test_load_vae_from_pipeline_directory_and_in_float64(tmp_path):
    build_tiny_vae(seed=0).save_pretrained(tmp_path / "pipeline" / "vae")
    (tmp_path / "pipeline" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    vae = load_vae(tmp_path / "pipeline", dtype=torch.float64)
    assert vae.dtype == torch.float64
    assert_same_weights(vae, build_tiny_vae(seed=0).double())


def test_load_clip_vision_tower_of_a_full_clip_model(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config = CLIPConfig(vision_config=build_tiny_clip().config.to_dict(), text_config=text)
    torch.manual_seed(0)
    full = CLIPModel(config).eval()
    full.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        load_clip(tmp_path)(pixel_values=pixels).last_hidden_state,
        full.vision_model(pixel_values=pixels).last_hidden_state,
    )


@pytest.mark.parametrize("loader, flag", [(load_vae, "--vae PATH"), (load_clip, "--clip PATH")])
def test_missing_encoder_raises_a_clear_error(monkeypatch, tmp_path, loader, flag):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    for name in ("fashionflow-tests/no-such-encoder", str(tmp_path / "missing"), str(tmp_path)):
        with pytest.raises(EncoderNotFoundError) as caught:
            loader(name)
        assert isinstance(caught.value, OSError)
        assert repr(name) in str(caught.value) and flag in str(caught.value)
    assert "HF_HUB_OFFLINE" in str(pytest.raises(OSError, loader, "fashionflow-tests/no-such-encoder").value)
    assert time.perf_counter() - start < 5.0  # offline: no network retries


# ---------------------------------------------------------------------------------------------------- encoders


def test_encoder_sizes_come_from_the_model_configs(encoders):
    enc = encoders["standard"]
    assert enc.latent_scale == pytest.approx(0.18215) == enc.vae.config.scaling_factor
    assert (enc.downscale, enc.latent_channels, enc.clip_size) == (4, 4, 32)
    assert (enc.context_tokens, enc.context_dim) == (17, 32)
    tiny = get_preset("tiny")
    enc.check_config(tiny)
    assert enc.latent_size(64, 48) == tiny.latent_size
    with pytest.raises(
        ValueError,
        match=r"give \[17, 32, 4\] \(CLIP tokens, their width and latent channels\) but the model expects \[50, 768, 4\]",
    ):
        enc.check_config(get_preset("paper"))
    with pytest.raises(ValueError, match="65x48"):
        enc.latent_size(65, 48)


def test_encoders_stay_frozen(encoders):
    enc = encoders["legacy"]
    enc.train()
    assert not enc.vae.training and not enc.clip.training
    assert not any(p.requires_grad for p in enc.parameters())


def test_encode_frames_samples_the_posterior_in_chunks(encoders):
    enc, x = encoders["legacy"], frames(5)
    whole = enc.encode_frames(x, generator=torch.Generator().manual_seed(7), chunk_size=8)
    chunked = enc.encode_frames(x, generator=torch.Generator().manual_seed(7), chunk_size=2)
    assert whole.shape == (5, 4, 16, 12) and whole.dtype == torch.float32
    # batch size changes the conv kernels' summation order: float32 noise only
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    # one chunk is exactly diffusers' latent_dist.sample(generator) times the scaling factor
    with torch.no_grad():
        posterior = enc.vae.encode(x).latent_dist
    expected = posterior.sample(torch.Generator().manual_seed(7)) * enc.vae.config.scaling_factor
    torch.testing.assert_close(whole, expected, rtol=0, atol=1e-6)
    other_seed = enc.encode_frames(x, generator=torch.Generator().manual_seed(8))
    assert (other_seed - whole).abs().max() > 1e-3


def test_every_network_input_is_contiguous_whatever_the_caller_hands_over(encoders):
    enc, seen = encoders["legacy"], []

    def record(_module, args, kwargs):
        seen.append(args[0] if args else kwargs["pixel_values"])

    hooks = [
        enc.vae.encoder.register_forward_pre_hook(record, with_kwargs=True),
        enc.vae.decoder.register_forward_pre_hook(record, with_kwargs=True),
        enc.clip.register_forward_pre_hook(record, with_kwargs=True),
    ]
    try:
        images = frames(2).contiguous(memory_format=torch.channels_last)
        enc.encode_frames(images)
        enc.decode_latents(torch.randn(2, 16, 12, 4).permute(0, 3, 1, 2))  # a strided view [2, 4, 16, 12]
        enc.encode_clip(images)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == 3
    for tensor in seen:
        assert tensor.is_contiguous(), tensor.stride()


def test_legacy_and_standard_map_pixels_differently(encoders):
    legacy, standard, x = encoders["legacy"], encoders["standard"], frames(3)

    def encode(enc, pixels):
        return enc.encode_frames(pixels, generator=torch.Generator().manual_seed(0))

    # standard feeds the VAE 2x - 1, legacy feeds x as it is (SPEC: the original's [0, 1] range)
    torch.testing.assert_close(encode(standard, x), encode(legacy, x * 2 - 1), rtol=0, atol=1e-6)
    assert (encode(standard, x) - encode(legacy, x)).abs().max() > 1e-3

    latents = encode(legacy, x)
    with torch.no_grad():
        raw = legacy.vae.decode(latents / legacy.latent_scale).sample
    decoded_legacy = legacy.decode_latents(latents, chunk_size=2)
    decoded_standard = standard.decode_latents(latents, chunk_size=2)
    assert decoded_legacy.shape == decoded_standard.shape == (3, 3, 64, 48)
    # decoded in chunks of 2 against one batch of 3: summation-order noise only
    torch.testing.assert_close(decoded_legacy, raw.clamp(0, 1), rtol=0, atol=1e-5)
    torch.testing.assert_close(decoded_standard, ((raw + 1) / 2).clamp(0, 1), rtol=0, atol=1e-5)
    for decoded in (decoded_legacy, decoded_standard):
        assert decoded.min() >= 0 and decoded.max() <= 1
    assert (decoded_legacy - decoded_standard).abs().max() > 1e-3


def test_encode_clip_uses_the_mode_preprocessing(encoders):
    images = frames(2, height=60, width=40)
    outputs = {}
    for mode, enc in encoders.items():
        outputs[mode] = enc.encode_clip(images)
        assert outputs[mode].shape == (2, enc.context_tokens, enc.context_dim)
        with torch.no_grad():
            expected = enc.clip(pixel_values=preprocess_clip(images, mode, size=32)).last_hidden_state
        torch.testing.assert_close(outputs[mode], expected)
    assert (outputs["legacy"] - outputs["standard"]).abs().max() > 1e-3


def test_encoders_reject_bad_shapes(encoders):
    enc = encoders["standard"]
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        enc.encode_frames(torch.rand(3, 64, 48))
    with pytest.raises(ValueError, match=r"\[N, 4, h, w\]"):
        enc.decode_latents(torch.rand(2, 3, 16, 12))
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        FrozenEncoders(enc.vae, enc.clip, preprocessing="sd")


def test_pixel_ranges_fed_to_and_read_back_from_the_vae():
    # SPEC "Legacy pixel range": legacy feeds [0, 1] as it is and clamps the decoder output; standard maps to [-1, 1]
    pixels = torch.tensor([0.0, 0.25, 0.5, 1.0])
    decoded = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    legacy = FrozenEncoders(torch.nn.Identity(), torch.nn.Identity(), preprocessing="legacy")
    standard = FrozenEncoders(torch.nn.Identity(), torch.nn.Identity(), preprocessing="standard")
    torch.testing.assert_close(legacy._to_vae_range(pixels), pixels, rtol=0, atol=0)
    torch.testing.assert_close(standard._to_vae_range(pixels), torch.tensor([-1.0, -0.5, 0.0, 1.0]), rtol=0, atol=0)
    torch.testing.assert_close(legacy._from_vae_range(decoded), torch.tensor([0, 0, 0, 0, 0.5, 1, 1.0]), rtol=0, atol=0)
    expected = torch.tensor([0, 0, 0.25, 0.5, 0.75, 1, 1.0])
    torch.testing.assert_close(standard._from_vae_range(decoded), expected, rtol=0, atol=0)
