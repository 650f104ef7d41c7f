"""Progress bars that keep logs readable.

On a terminal a bar redraws in place, as tqdm does. Written to a file or a pipe (a batch job's log, CI, `nohup`),
every redraw is another chunk of the log (the quickstart's log once held 1,301 of them), so there a bar refreshes at
most every `NON_TTY_REFRESH_SECONDS`.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

NON_TTY_REFRESH_SECONDS = 5.0


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(*args, file=None, **kwargs) -> tqdm:
    """`tqdm(*args, **kwargs)` writing to `file` (default: stderr, as tqdm), refreshing at most every
    `NON_TTY_REFRESH_SECONDS` when that is not a terminal (unless `mininterval` is given)."""
    file = file or sys.stderr
    if not is_terminal(file):
        kwargs.setdefault("mininterval", NON_TTY_REFRESH_SECONDS)
    return tqdm(*args, file=file, **kwargs)
