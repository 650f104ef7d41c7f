"""Project a folder of videos to VAE latents for training (train.py --dataset_vae reads the result).

The command lives in models/commands/project.py (`--help` lists its options); `python -m models project` and, once
installed, `fashionflow-project` run the same.
"""

import sys

from models.commands.project import build_parser, main, run  # noqa: F401  (tests and notebooks call main(argv))

if __name__ == "__main__":
    sys.exit(run())
