"""Tiny but real frozen encoders: the same diffusers / transformers classes as the paper's, randomly initialised.

They pair with the `tiny` preset in models/core/config.py: the VAE downsamples 4x into 4 latent channels (64x48 pixels
-> 4x16x12 latents) and the CLIP sees 32x32 images in 8x8 patches (16 patches + 1 class token = 17 tokens of
width 32). Tests and the offline quickstart load them back through `load_vae` / `load_clip` exactly as they would
the real ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import CLIPVisionConfig, CLIPVisionModel


def tiny_vae_config() -> dict:
    """AutoencoderKL keyword arguments: three levels (two downsamplings, 4x), 4 latent channels."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def tiny_clip_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )


def seeded(build, seed: int):
    # fork_rng keeps the caller's global RNG stream untouched by the initialisation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_tiny_vae(seed: int = 0) -> AutoencoderKL:
    return seeded(lambda: AutoencoderKL(**tiny_vae_config()), seed).eval()


def build_tiny_clip(seed: int = 0) -> CLIPVisionModel:
    return seeded(lambda: CLIPVisionModel(tiny_clip_config()), seed).eval()


def save_tiny_encoders(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write `directory/vae` and `directory/clip` with save_pretrained; return both paths."""
    directory = Path(directory)
    vae_dir, clip_dir = directory / "vae", directory / "clip"
    build_tiny_vae(seed).save_pretrained(vae_dir)
    build_tiny_clip(seed).save_pretrained(clip_dir)
    return vae_dir, clip_dir
