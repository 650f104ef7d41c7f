"""Write `model_structure.txt`: the torchinfo summary of the paper UNet at 1x4x70x80x64, as the authors did.

python -m models structure [--output model_structure.txt]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from ..core.config import ModelConfig
from .unet import SpaceTimeUnet

COLUMNS = ("input_size", "output_size", "num_params", "trainable")


def summarize(config: ModelConfig | None = None, *, batch: int = 1, depth: int = 3):
    """torchinfo ModelStatistics of the UNet on a [batch, C, frames, h, w] input (context and timestep included)."""
    from torchinfo import summary

    config = config or ModelConfig()
    unet = SpaceTimeUnet.from_model_config(config).eval()
    h, w = config.latent_size
    x = torch.randn(batch, config.channels, config.frames, h, w)
    context = torch.randn(batch, config.context_tokens, config.context_dim)
    timestep = torch.full((batch,), 500.0)
    return summary(
        unet,
        input_data=[x, context, timestep],
        depth=depth,
        col_names=COLUMNS,
        row_settings=("var_names",),
        verbose=0,
        mode="eval",
    )


def parse_totals(text: str) -> dict:
    """Total parameters and mult-adds (G) from a torchinfo summary's text."""
    params = re.search(r"Total params: ([\d,]+)", text)
    macs = re.search(r"Total mult-adds \(G\): ([\d.]+)", text)
    if not params or not macs:
        raise ValueError("not a torchinfo summary: no 'Total params' / 'Total mult-adds (G)' lines")
    return {"params": int(params.group(1).replace(",", "")), "mult_adds_g": float(macs.group(1))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="model_structure.txt", help="where to write the summary")
    args = parser.parse_args(argv)
    with torch.inference_mode():
        stats = summarize()
    # torchinfo 1.8 on Python >= 3.11 prints the unit enum ("Units.GIGABYTES"); write the authors' "G"
    text = str(stats).replace("(Units.GIGABYTES)", "(G)")
    Path(args.output).write_text(text + "\n")
    print(f"wrote {args.output}: {parse_totals(text)}")


if __name__ == "__main__":
    main()
