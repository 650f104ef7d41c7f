"""File names that fit."""

import os

from models.outputs import fit_name


def test_long_names_shortened_to_fit_stay_distinct():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert fit_name("short", 20) == "short"
    assert fit_name(a, 100) != fit_name(b, 100)
    assert len(os.fsencode(fit_name(a, 100))) == 100 and len(os.fsencode(fit_name("é" * 80, 99))) <= 99
