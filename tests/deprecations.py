"""The suite's deprecation screen: a deprecated library API that our own code calls fails the test there.

Ours is code in `models/`, `bench/`, the top-level scripts and the pipeline folder's generated `fashionflow_*.py`.
A warning's file and line say little here (diffusers' `deprecate` points into diffusers itself), so the screen
walks the stack from where the warning was raised: walking outwards, the first frame outside the libraries is the
caller. The call is ours when that caller is ours and one library lies between it and the warning (the one whose
API it called, the standard library counted as one); a library calling another's deprecated API is theirs to fix,
and its warning is dropped as before, as is one a library places on its own line (C code's, such as numpy's
complaints about the arrays a library hands it). Import machinery and decorator plumbing count as no library.

`conftest.py` turns the screen on around every test (setup, call, teardown) and around collection; pyproject.toml's
`filterwarnings` shows each deprecation every time, so each reaches the screen. Children a test starts (torchrun,
the scripts as subprocesses) are not screened.
"""

from __future__ import annotations

import sys
import sysconfig
import warnings
from collections.abc import Iterable
from pathlib import Path

CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# standard-library modules that only pass a call on (imports, context managers, decorators): no library of their own
PLUMBING = {"importlib", "contextlib", "functools", "warnings", "threading", "runpy", "abc", "typing"}
ROOT = Path(__file__).resolve().parents[1]


def our_paths(root: Path = ROOT) -> tuple[Path, ...]:
    """The folders and files of ours under the repository `root`."""
    return (root / "models", root / "bench", *sorted(root.glob("*.py")))


class DeprecationScreen:
    """`with screen:` raises each deprecation warning whose call is ours (see the module docstring) as the error
    the deprecated call raises; other warnings go on to the `showwarning` that was in place."""

    def __init__(self, ours: Iterable[Path] = our_paths(), libraries: Iterable[Path] | None = None):
        self.ours = tuple(Path(p).resolve() for p in ours)
        if libraries is None:
            paths = sysconfig.get_paths()
            libraries = {paths["purelib"], paths["platlib"], *(p for p in sys.path if p.endswith("-packages"))}
        self.libraries = tuple(Path(p).resolve() for p in libraries)
        self.stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
        self._previous: list = []
        self._libraries: dict[str, str | None] = {}  # by file name: a warning raised on every step walks the same frames

    def library(self, filename: str) -> str | None:
        """The library a frame's file belongs to ('' for plumbing), or None for code outside the libraries."""
        if filename not in self._libraries:
            self._libraries[filename] = self._library(filename)
        return self._libraries[filename]

    def _library(self, filename: str) -> str | None:
        if filename.startswith("<frozen") or filename == "<string>":
            return ""
        path = Path(filename).resolve()
        for root in self.libraries:
            if path.is_relative_to(root):
                return path.relative_to(root).parts[0].removesuffix(".py")
        if path.is_relative_to(self.stdlib):
            return "" if path.relative_to(self.stdlib).parts[0].removesuffix(".py") in PLUMBING else "stdlib"
        return None

    def is_ours(self, filename: str) -> bool:
        path = Path(filename).resolve()
        return path.name.startswith("fashionflow_") or any(path == p or path.is_relative_to(p) for p in self.ours)

    def caller(self, frame, filename: str, lineno: int) -> str | None:
        """'file:line' of our call behind a warning raised in `frame`'s code and shown at `filename:lineno`, or None
        where the call is not ours."""
        while frame is not None and self.library(frame.f_code.co_filename) == "":
            frame = frame.f_back
        # a library's code that places the warning on its own line (C code's warnings, numpy's or torch's kernels',
        # and stacklevel=1) says the line is at fault, not who called it
        in_place = frame is not None and (frame.f_code.co_filename, frame.f_lineno) == (filename, lineno)
        crossed = set()
        while frame is not None:
            library = self.library(frame.f_code.co_filename)
            if library is None:
                ours = self.is_ours(frame.f_code.co_filename) and len(crossed) <= 1 and not (crossed and in_place)
                return f"{frame.f_code.co_filename}:{frame.f_lineno}" if ours else None
            if library:
                crossed.add(library)
            frame = frame.f_back
        return None

    def _showwarning(self, message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CATEGORIES):
            caller = self.caller(sys._getframe(1), filename, lineno)
            if caller is not None:
                raise category(f"{message} (deprecated call at {caller}; the suite fails on deprecations our code calls)")
            return  # a library's own: dropped, as pyproject.toml's filters did before the screen
        self._previous[-1](message, category, filename, lineno, file, line)

    def __enter__(self) -> DeprecationScreen:
        self._previous.append(warnings.showwarning)
        warnings.showwarning = self._showwarning
        return self

    def __exit__(self, *exc) -> None:
        warnings.showwarning = self._previous.pop()
