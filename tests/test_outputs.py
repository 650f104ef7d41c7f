"""Output folders checked before any work, file names that fit, and the lock on a training folder."""

import json
import os
import socket

import pytest

from models.core.files import fit_name
from models.core.outputs import OutputLocationError, RunLock, RunLockedError, ensure_writable_dir


def test_long_names_shortened_to_fit_stay_distinct():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert fit_name("short", 20) == "short"
    assert fit_name(a, 100) != fit_name(b, 100)
    assert len(os.fsencode(fit_name(a, 100))) == 100 and len(os.fsencode(fit_name("é" * 80, 99))) <= 99


def test_an_output_folder_is_created_or_refused_with_the_flag_and_path(tmp_path):
    assert ensure_writable_dir(tmp_path / "new" / "deeper", "--log_dir").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputLocationError, match=rf"--log_dir {tmp_path / 'file'} is a file, not a folder"):
        ensure_writable_dir(tmp_path / "file", "--log_dir")
    with pytest.raises(OutputLocationError, match=rf"--log_dir {tmp_path / 'file' / 'sub'}: cannot write there"):
        ensure_writable_dir(tmp_path / "file" / "sub", "--log_dir")


def test_the_lock_refuses_a_second_holder_and_is_released_on_exit(tmp_path):
    said = []
    with RunLock(tmp_path, say=said.append) as lock:
        assert json.loads(lock.path.read_text()) == {"host": socket.gethostname(), "pid": os.getpid()}
        with pytest.raises(RunLockedError, match=rf"host {socket.gethostname()}, pid {os.getpid()}"):
            RunLock(tmp_path).__enter__()
    assert lock.path.read_text() == "" and said == []
    with RunLock(tmp_path, say=said.append):
        pass
    assert said == []  # a released lock is not mistaken for a crashed run's
