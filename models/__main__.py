"""`python -m models JOB [options]` (installed: `python -m fashionflow JOB`): one of the jobs in commands.JOBS
(`python -m models` lists them)."""

import importlib
import sys

from .commands import JOBS


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in JOBS:
        usage = f"usage: python -m {__package__} JOB [options]   (JOB --help for its options)\njobs: " + ", ".join(JOBS)
        print(usage, file=sys.stderr)
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    module, entry = JOBS[argv[0]]  # relative to this package, which an installed copy names fashionflow
    sys.argv = [f"python -m {__package__} {argv[0]}", *argv[1:]]
    return getattr(importlib.import_module(f"{__package__}.{module}"), entry)(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
