"""A FashionFlow checkpoint -> a diffusers pipeline folder with a model card, ready for the Hugging Face Hub.

    python -m models convert --checkpoint checkpoint/FashionFlow_checkpoint.pth --output_dir FashionFlow-diffusers
    python -m models convert --checkpoint checkpoint/latest.pth --output_dir my-fashionflow \
        --push_to_hub you/my-fashionflow

The folder holds `model_index.json`, one subfolder per component (`unet`, `adapter`, `vae`, `image_encoder`,
`feature_extractor`, `scheduler`; safetensors weights) and a `README.md` model card. `FashionFlowPipeline.
from_pretrained(folder)` loads it and makes the videos the checkpoint makes (the same seed gives the same video).
The released checkpoint and ours (EMA weights by default) both convert; `--vae`, `--clip`, `--preset` and
`--preprocessing` mean what they mean for inference.py. `--push_to_hub` uploads the folder (after `hf auth login`).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..core.cli import run_command
from ..core.config import PREPROCESSING_MODES, PRESETS
from ..core.files import atomic_write_dir
from ..core.outputs import OutputLocationError, ensure_writable_dir
from ..networks.checkpoint import read_checkpoint
from .hub import push_folder
from .model_source import ModelSource


def check_output_dir(path: Path) -> Path:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputLocationError(f"--output_dir {path} already holds files; pass a new or empty folder")
    return ensure_writable_dir(path, "--output_dir")


def convert(source: ModelSource, output_dir, *, repo_id: str | None = None) -> Path:
    """Write the pipeline folder of `source`'s checkpoint (weights, configs, model card) to `output_dir`, which must be
    new or empty; it appears complete or not at all. It is made on the CPU. `repo_id` is the name the model card's
    loading code uses."""
    read_checkpoint(source.checkpoint)  # a missing file, or one that is no checkpoint, is refused before the folder is made
    output_dir = check_output_dir(Path(output_dir))
    pipe = replace(source, device="cpu").load()
    return atomic_write_dir(output_dir, lambda folder: pipe.save_pretrained(folder, repo_id=repo_id or str(output_dir)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint", required=True, help="the released FashionFlow_checkpoint.pth or one of ours (.pth / .safetensors)"
    )
    p.add_argument("--output_dir", required=True, help="the pipeline folder to write (new or empty)")
    p.add_argument("--vae", default=None, help="VAE: hub id or local folder (default: what the checkpoint records)")
    p.add_argument("--clip", default=None, help="CLIP vision model: hub id or local folder (default: the checkpoint's)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="model config for released-format checkpoints")
    p.add_argument("--preprocessing", choices=PREPROCESSING_MODES, default=None, help="pixel mapping (default: the checkpoint's)")
    p.add_argument("--no_ema", action="store_true", help="convert the live weights even if the checkpoint holds EMA ones")
    p.add_argument(
        "--push_to_hub", metavar="REPO_ID", default=None, help="also upload the folder to this hub repo (e.g. you/fashionflow)"
    )
    p.add_argument("--private", action="store_true", help="with --push_to_hub: create the repo private")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def run():
        source = ModelSource(
            args.checkpoint, vae=args.vae, clip=args.clip, preprocessing=args.preprocessing, preset=args.preset,
            use_ema=not args.no_ema,
        )  # fmt: skip
        folder = convert(source, args.output_dir, repo_id=args.push_to_hub)
        print(f"wrote {folder}: load it with FashionFlowPipeline.from_pretrained({str(folder)!r})")
        if args.push_to_hub:
            print(f"uploaded: {push_folder(folder, args.push_to_hub, private=args.private)}")

    return run_command("python -m models convert", run)


if __name__ == "__main__":
    raise SystemExit(main())
