"""Fidelity of the UNet and adapter to the original: keys, shapes, parameter count, golden outputs."""

import json

import pytest
import torch
from conftest import FIXTURES, ROOT

from models import EmbeddingAdapter, SpaceTimeUnet, get_preset
from models.networks.structure import parse_totals

PAPER_PARAMS = 71_671_548
PAPER_MULT_ADDS_G = 732.56


@pytest.fixture(scope="module")
def paper_models(filler):
    unet, adapter = SpaceTimeUnet().eval(), EmbeddingAdapter().eval()
    unet.load_state_dict(filler.deterministic_state_dict(unet.state_dict()), strict=True)
    adapter.load_state_dict(filler.deterministic_state_dict(adapter.state_dict()), strict=True)
    return unet, adapter


def assert_close_to_golden(actual, expected):
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= 1e-4 * scale, f"max abs error {err:.3g} exceeds 1e-4 of the output's max magnitude {scale:.3g}"


def test_state_dict_matches_manifest(reference_dir):
    manifest = json.loads((reference_dir / "state_dict_manifest.json").read_text())
    for module, key in ((SpaceTimeUnet(), "net"), (EmbeddingAdapter(), "adapter")):
        ours = {k: list(v.shape) for k, v in module.state_dict().items()}
        assert ours == manifest[key]


def test_parameter_count():
    assert sum(p.numel() for p in SpaceTimeUnet().parameters()) == PAPER_PARAMS


def test_model_structure_file_matches_model():
    totals = parse_totals((ROOT / "model_structure.txt").read_text())
    assert totals == {"params": PAPER_PARAMS, "mult_adds_g": PAPER_MULT_ADDS_G}
    assert totals["params"] == sum(p.numel() for p in SpaceTimeUnet().parameters())


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
def test_golden_unet_and_adapter(paper_models, reference_dir, device):
    unet, adapter = (module.to(device) for module in paper_models)
    case = {k: v.to(device) for k, v in torch.load(reference_dir / "golden_unet.pt", weights_only=True)[0].items()}
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 on a GPU too (cuDNN convolutions default to TF32)
    try:
        with torch.no_grad():
            context = adapter(case["clip_hidden_states"], case["vae_latent"])
            out = unet(case["noisy_latents"], case["context"], timestep=case["timesteps"])
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
        unet.cpu(), adapter.cpu()
    assert_close_to_golden(context.cpu(), case["context"].cpu())
    assert_close_to_golden(out.cpu(), case["noise_pred"].cpu())


def test_golden_other_shapes_batches_timesteps(paper_models, filler):
    """Outputs of the original code (run once, stored in tests/fixtures) on other batch sizes, shapes and t."""
    unet, adapter = paper_models
    for case in torch.load(FIXTURES / "golden_unet_extra.pt", weights_only=True):
        b, f, h, w = case["shape"]
        seed = case["seed"]
        clip = filler.seeded_randn((b, 50, 768), seed)
        vae = filler.seeded_randn((b, 4, 80, 64), seed + 100)
        x = filler.seeded_randn((b, 4, f, h, w), seed + 200)
        with torch.no_grad():
            context = adapter(clip, vae)
            out = unet(x, context, timestep=case["timesteps"])
        assert_close_to_golden(context, case["context"])
        assert_close_to_golden(out, case["noise_pred"])


def test_cross_attention_widths_derive_from_config():
    unet = SpaceTimeUnet()
    down = [(blk[4].attention_2.heads, blk[4].layernorm_2.normalized_shape[0]) for blk in unet.downs]
    up = [(blk[4].attention_2.heads, blk[4].layernorm_2.normalized_shape[0]) for blk in reversed(unet.ups)]
    assert down == [(1, 64), (1, 128), (2, 256), (4, 512)]  # 1x64, 1x128, 2x128, 4x128
    assert up == [(4, 256), (2, 128), (1, 64), (1, 64)]  # 4x64, 2x64, 1x64, 1x64


def test_tiny_preset_forward_and_input_checks():
    config = get_preset("tiny")
    unet, adapter = SpaceTimeUnet.from_model_config(config), EmbeddingAdapter.from_model_config(config)
    h, w = config.latent_size
    x = torch.randn(2, 4, config.frames, h, w)
    context = adapter(torch.randn(2, config.context_tokens, config.context_dim), torch.randn(2, 4, h, w))
    assert context.shape == (2, config.context_tokens, config.context_dim)
    assert unet(x, context, timestep=torch.tensor([1.0, 900.0])).shape == x.shape
    with pytest.raises(ValueError, match="divisible by 2"):
        unet(torch.randn(1, 4, 3, h, w), context[:1], timestep=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="multiples of 4"):
        unet(torch.randn(1, 4, 2, 10, w), context[:1], timestep=torch.tensor([1.0]))


def test_gradient_checkpointing_gives_same_gradients():
    config = get_preset("tiny")
    torch.manual_seed(0)
    unet = SpaceTimeUnet.from_model_config(config).train()
    h, w = config.latent_size
    x, context, t = torch.randn(1, 4, 4, h, w), torch.randn(1, 17, 32), torch.tensor([10.0])
    grads = []
    for enabled in (False, True):
        unet.zero_grad()
        unet.enable_gradient_checkpointing(enabled)
        unet(x, context, timestep=t).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in unet.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_attention_in_batch_slices_gives_the_whole_batch_numbers_and_gradients():
    # the temporal attention's batch (every pixel of every video) is sliced below CUDA's grid limit
    from models.networks.unet import attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(10, 2, 5, 4, generator=g, requires_grad=True) for _ in range(3))
    bias = torch.randn(2, 5, 5, generator=g)
    whole = attend(q, k, v, bias)
    grads = torch.autograd.grad(whole.square().sum(), (q, k, v))
    sliced = attend(q, k, v, bias, max_batch=3)  # 3 + 3 + 3 + 1
    torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-6)
    for a, b in zip(torch.autograd.grad(sliced.square().sum(), (q, k, v)), grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
