"""Pickled code planted in files the project reads: it records whether it ever ran (it must not)."""

from pathlib import Path


class PickleTrap:
    """Pickled code that, if anything ever unpickles it, leaves `marker` behind."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))

    @property
    def sprung(self) -> bool:
        return self.marker.exists()


def assert_refused_and_explained(message: str, path: Path) -> None:
    """A refused pickle is named, the refusal says why and what to do instead, and never suggests turning it off."""
    assert str(path) in message and "arbitrary code execution" in message and "state_dict" in message, message
    assert "weights_only" not in message, message
