"""The web demo: animate a fashion photo in the browser.

The command lives in models/commands/demo.py (`--help` lists its options); `python -m models demo` and, once
installed, `fashionflow-demo` run the same.
"""

import sys

from models.commands.demo import build_parser, main, run  # noqa: F401  (tests and notebooks call main(argv))

if __name__ == "__main__":
    sys.exit(run())
