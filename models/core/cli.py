"""What the command-line scripts share: argument types, and user errors shown as a message, not a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# DESIGN.md: an error a user can cause is one of these, and its message names the file or value and the fix
USER_ERRORS = (ValueError, FileNotFoundError)


def print_user_error(prog: str, error: BaseException) -> None:
    print(f"{prog}: error: {error}", file=sys.stderr)


def run_command(prog: str, main: Callable[[], object]) -> int:
    """Call `main()` and return the exit status: its result when that is an int, else 0.

    A user error prints `<prog>: error: <message>` and gives status 2, as argparse does for a bad flag. Every
    other exception propagates with its traceback: it is a bug, and the traceback is what a report needs.
    """
    try:
        status = main()
    except USER_ERRORS as error:
        print_user_error(prog, error)
        return 2
    return status if isinstance(status, int) else 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value
