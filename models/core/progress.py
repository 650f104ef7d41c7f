"""Progress bars that keep logs readable.

On a terminal a bar redraws in place, as tqdm does. Written to a file or a pipe (a batch job's log, CI, `nohup`),
every redraw is another chunk of the log (the quickstart's log once held 1,301 of them), so there a bar refreshes at
most every `NON_TTY_REFRESH_SECONDS`, and a new postfix (the loss, say) waits for the next refresh instead of
forcing one.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

NON_TTY_REFRESH_SECONDS = 5.0


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LogBar(tqdm):
    """A tqdm bar for a log: `set_postfix` updates the text shown at the next timed refresh (tqdm's own redraws at
    once, every call: a bar whose loop sets its loss each step would write a line per step)."""

    def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def progress_bar(*args, file=None, **kwargs) -> tqdm:
    """`tqdm(*args, **kwargs)` writing to `file` (default: stderr, as tqdm); when that is not a terminal, refreshing
    at most every `NON_TTY_REFRESH_SECONDS` (unless `mininterval` is given), postfix changes included."""
    file = file or sys.stderr
    if is_terminal(file):
        return tqdm(*args, file=file, **kwargs)
    kwargs.setdefault("mininterval", NON_TTY_REFRESH_SECONDS)
    return LogBar(*args, file=file, **kwargs)
