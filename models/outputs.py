"""Where runs write: file names that fit."""

from __future__ import annotations

import hashlib
import os

DEFAULT_NAME_MAX = 255  # bytes per file name on ext4, XFS, btrfs, APFS, ZFS


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
