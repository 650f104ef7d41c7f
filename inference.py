"""Animate fashion photos with a trained FashionFlow model.

The command lives in models/commands/infer.py (`--help` lists its options); `python -m models infer` and, once
installed, `fashionflow-infer` run the same.
"""

import sys

from models.commands.infer import build_parser, main, run  # noqa: F401  (tests and notebooks call main(argv))

if __name__ == "__main__":
    sys.exit(run())
