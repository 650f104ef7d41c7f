"""Where runs write: file names that fit, output folders checked before any work, and the training lock.

A run that can only fail when it first saves (after `--checkpoint_every` steps, or at the end) loses all
the work before; so every output folder is created and written to once up front. Two training runs in one
`--output_dir` would interleave their checkpoints; `RunLock` lets only one in.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path


class OutputLocationError(ValueError):
    """An output folder that cannot be used; the message names the flag, the path and the fix."""


class RunLockedError(ValueError):
    """Another training run holds the output folder's lock; the message names its host and pid."""


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


class RunLock:
    """`with RunLock(folder):` holds `<folder>/train.lock` while a run uses the folder; a second run is refused.

    The lock is an `flock` on the file, which the kernel drops when the holder exits, even by kill -9: a lock
    file left by a crashed run is recognised as stale because nobody holds its flock. The file records the
    holder's host and pid for the refusal message and is emptied, never deleted, on release (deleting it would
    let a run still waiting on the old file and a new run on a fresh one both hold "the" lock). It is advisory
    (it keeps out runs of this code only) and spans machines only where the filesystem supports `flock`.
    """

    NAME = "train.lock"

    def __init__(self, folder, *, say=print):
        self.path = Path(folder) / self.NAME
        self.say = say
        self.file = None

    def __enter__(self) -> RunLock:
        import fcntl  # POSIX only: imported here so that inference and projection still load on Windows

        self.file = open(self.path, "a+")  # held open for the whole run
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._recorded_holder() or "host and pid not recorded yet"
            self.file.close()
            raise RunLockedError(
                f"{self.path.parent} is in use by another training run ({holder}, see {self.path}); wait for it to "
                "finish or stop it, or train into another --output_dir"
            ) from None
        except OSError as error:  # a filesystem without locks: train anyway, but say what is unguarded
            self.say(f"cannot lock {self.path} ({error.strerror}); make sure no other run trains into this folder")
        previous = self._recorded_holder()
        if previous:
            self.say(f"{self.path}: the run that held it ({previous}) ended without releasing it; taking it over")
        self.file.truncate(0)
        self.file.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.file.truncate(0)
        self.file.close()  # closing drops the flock

    def _recorded_holder(self) -> str | None:
        self.file.seek(0)
        try:
            record = json.loads(self.file.read())
            return f"host {record['host']}, pid {record['pid']}"
        except (ValueError, KeyError, TypeError):
            return None
