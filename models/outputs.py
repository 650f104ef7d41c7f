"""Where runs write: file names that fit, and output folders checked before any work.

A run that can only fail when it first saves (after `--checkpoint_every` steps, or at the end) loses all
the work before; so every output folder is created and written to once up front.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

DEFAULT_NAME_MAX = 255  # bytes per file name on ext4, XFS, btrfs, APFS, ZFS


class OutputLocationError(ValueError):
    """An output folder that cannot be used; the message names the flag, the path and the fix."""


def name_max(directory) -> int:
    """The longest file name, in bytes, that `directory`'s filesystem accepts."""
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):  # missing folder, or no such limit reported
        return DEFAULT_NAME_MAX


def fit_name(name: str, max_bytes: int) -> str:
    """`name` when it fits in `max_bytes` (as the filesystem encodes it); else its start plus 8 hex digits of its
    hash, so that two long names that share a start stay distinct."""
    encoded = os.fsencode(name)
    if len(encoded) <= max_bytes:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:8]
    start = encoded[: max_bytes - len(digest) - 1].decode(errors="ignore")  # never half a multi-byte character
    return f"{start}-{digest}"


def ensure_writable_dir(path, flag: str) -> Path:
    """Create the folder `path` if needed and write a file in it, so a run fails before any work, naming `flag`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputLocationError(f"{flag} {path} is a file, not a folder; pass a folder path (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise OutputLocationError(
            f"{flag} {path}: cannot write there ({error.strerror or error}); pass a folder you can write to"
        ) from error
    return path
