"""Safe file I/O shared by every module that reads or writes files; it imports nothing of ours.

Writes are atomic: a temporary file beside the target is flushed to disk and renamed over it, so a crash
mid-write leaves the previous file intact, and temporary names fit wherever the target's name does. Reads of
torch files never run code from the file: `torch.load(weights_only=True)` refuses pickled Python objects, and
we say why rather than pass on torch's advice to switch that protection off.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

DEFAULT_NAME_MAX = 255  # bytes per file name on ext4, XFS, btrfs, APFS, ZFS


class CheckpointError(ValueError):
    """A weights file (checkpoint, projected tensor, metric weights) that cannot be read; the message says why."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled Python objects, whose loading could run any code: refused."""


def name_max(directory) -> int:
    """The longest file name, in bytes, that `directory`'s filesystem accepts."""
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), a missing folder, or no limit reported
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


TEMP_SUFFIX = ".tmp"
TEMP_RANDOM_CHARS = 8  # what mkstemp puts between prefix and suffix


def _temp_prefix(path: Path) -> str:
    """`.<name>.`, with `<name>` shortened so that the whole temporary name fits wherever `path`'s name does."""
    room = name_max(path.parent) - len(".." + TEMP_SUFFIX) - TEMP_RANDOM_CHARS
    return f".{fit_name(path.name, room)}."


def leftover_temp_files(path) -> list[Path]:
    """Temporary files of `atomic_write(path, ...)` calls that a killed process left behind."""
    path = Path(path)
    pattern = glob.escape(_temp_prefix(path)) + "*" + TEMP_SUFFIX
    return sorted(path.parent.glob(pattern))


def leftover_temp_files_in(directory) -> list[Path]:
    """Temporary files of any `atomic_write` into `directory` that a killed process left behind (one listing, however
    many files the folder holds)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = re.compile(rf"\..+\.[a-z0-9_]{{{TEMP_RANDOM_CHARS}}}{re.escape(TEMP_SUFFIX)}")  # mkstemp's alphabet
    return sorted(directory / name for name in os.listdir(directory) if pattern.fullmatch(name))


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """The temporary file beside `path` to write it through (yielded as a path), fsynced and renamed onto `path` when
    the block ends, removed if it raises: `atomic_write` for writers that span several calls (a streamed video)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, fsync, then rename onto `path`; the temporary file never survives a failure."""
    with atomic_target(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_dir(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)` on a new folder beside `path`, then rename it to `path`, which must be missing or an
    empty folder; the temporary folder never survives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the usual permissions
        if path.is_dir():
            path.rmdir()  # empty, or this raises and nothing is lost
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def atomic_torch_save(obj, path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def unreadable_reason(error: Exception) -> str:
    if isinstance(error, EOFError):
        return "the file is empty or cut short"
    if isinstance(error, pickle.UnpicklingError | KeyError):
        return "not a PyTorch file, or a corrupt one"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def load_weights_only(path, map_location="cpu", *, what: str, fix: str):
    """`torch.load(path, weights_only=True)`; a failure raises CheckpointError naming `what`, `path`, why, and `fix`.

    A file holding pickled objects raises UnsafeCheckpointError: loading them would run code the file chooses.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        # torch names the refused object "GLOBAL module.name" and suggests weights_only=False, which we never pass on
        refused = re.search(r"GLOBAL ([\w.]+)", str(error)) if isinstance(error, pickle.UnpicklingError) else None
        if refused:
            raise UnsafeCheckpointError(
                f"refusing to load {what} {path}: it holds pickled Python objects ({refused[1]}), not just tensors, and "
                "unpickling them would run whatever code the file names (arbitrary code execution). If you trust "
                "its source, load it there and save only the tensors (`torch.save(model.state_dict(), PATH)` or a "
                ".safetensors export), then pass that file"
            ) from None
        raise CheckpointError(f"cannot read {what} {path}: {unreadable_reason(error)}; {fix}") from error
