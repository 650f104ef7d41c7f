"""Train FashionFlow on projected latents (see project_latent_space.py).

The command lives in models/commands/train.py (`--help` lists its options); `python -m models train` and, once
installed, `fashionflow-train` run the same.
"""

import sys

from models.commands.train import build_parser, main, run  # noqa: F401  (tests and notebooks call main(argv))

if __name__ == "__main__":
    sys.exit(run())
