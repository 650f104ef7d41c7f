"""Paper-size stand-in encoders: the SD v1-4 VAE and CLIP ViT-B/32 architectures, randomly initialised.

    python -m models standins --output_dir standins     # -> standins/vae, standins/clip

Where no hub is reachable (our CPU machines, the lent GPU machines), these let the paper configuration
(70 frames at 640x512) run end to end through `--vae standins/vae --clip standins/clip`, so its cost can be
measured. Their weights are random: every video made with them is noise. Each folder carries a STANDIN.md
marker, and `load_vae` / `load_clip` warn whenever they load a folder that has one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# encoders.py imports this module for the marker check, so the model libraries are imported only when building

STANDIN_MARKER = "STANDIN.md"
STANDIN_WARNING = "is a randomly initialised stand-in (models.networks.standins): timings are real, its images are noise"

# CompVis/stable-diffusion-v1-4, vae/config.json: 83,653,863 parameters, 8x spatial downscale
SD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)

# openai/clip-vit-base-patch32, vision tower: 224x224 in 32x32 patches -> 50 tokens of width 768
CLIP_VIT_B32_CONFIG = dict(
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=512,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


def build_standin_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    from .tiny_components import seeded

    return seeded(lambda: AutoencoderKL(**SD_VAE_CONFIG), seed).eval()


def build_standin_clip(seed: int = 0):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from .tiny_components import seeded

    return seeded(lambda: CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_B32_CONFIG)), seed).eval()


def is_standin(directory: str | Path) -> bool:
    return (Path(directory) / STANDIN_MARKER).is_file()


def _mark(directory: Path, what: str) -> None:
    (directory / STANDIN_MARKER).write_text(
        f"# Stand-in {what}\n\nThe {what}'s published architecture with random weights, written by "
        "`python -m models standins`. Use it to measure the paper configuration's speed and memory where no hub "
        "is reachable. Its outputs are noise: never judge quality with it.\n"
    )


def save_standins(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write `directory/vae` (AutoencoderKL) and `directory/clip` (CLIPVisionModel + image processor)."""
    from transformers import CLIPImageProcessor

    directory = Path(directory)
    vae_dir, clip_dir = directory / "vae", directory / "clip"
    build_standin_vae(seed).save_pretrained(vae_dir)
    _mark(vae_dir, "Stable Diffusion v1-4 VAE")
    build_standin_clip(seed).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(clip_dir)
    _mark(clip_dir, "CLIP ViT-B/32 vision tower")
    return vae_dir, clip_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="standins", help="folder that receives vae/ and clip/")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    args = parser.parse_args(argv)
    vae_dir, clip_dir = save_standins(args.output_dir, args.seed)
    count = sum(p.numel() for p in build_standin_vae(args.seed).parameters())
    print(f"wrote {vae_dir} ({count:,} parameters) and {clip_dir}; each {STANDIN_WARNING}")


if __name__ == "__main__":
    main()
