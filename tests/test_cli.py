"""The scripts' shared command-line behaviour: user errors as one message and status 2, bugs with their traceback."""

import pytest

from models.core.cli import run_command


def test_a_user_error_is_one_message_and_status_2(capsys):
    def main():
        raise FileNotFoundError("dataset folder x does not exist; pass --dataset FOLDER")

    assert run_command("tool.py", main) == 2
    assert capsys.readouterr().err == "tool.py: error: dataset folder x does not exist; pass --dataset FOLDER\n"


def test_a_bug_keeps_its_traceback():
    def main():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_command("tool.py", main)


def test_the_exit_status_is_mains_int_else_0():
    assert run_command("tool.py", lambda: 1) == 1
    assert run_command("tool.py", lambda: {"step": 3}) == 0
