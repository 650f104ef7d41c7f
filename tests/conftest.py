import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# FASHIONFLOW_SHARED: for runs from a copy of the repository elsewhere (bench/mutation.sh tests in mutants/)
SHARED = Path(os.environ.get("FASHIONFLOW_SHARED") or ROOT.parent / "shared")
REFERENCE = SHARED / "reference"
SAMPLES = SHARED / "samples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _shared(path: Path, what: str) -> Path:
    if not path.is_dir():
        message = f"{what} not found at {path} (a plain clone has no ../shared)"
        if os.environ.get("FASHIONFLOW_REQUIRE_SHARED"):
            pytest.fail(message + "; FASHIONFLOW_REQUIRE_SHARED is set, so this is an error")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _shared(REFERENCE, "reference fixtures")


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return _shared(SAMPLES, "sample photos and clips")


@pytest.fixture(scope="session")
def filler(reference_dir):
    """The reference's deterministic weight filler, imported from its file."""
    spec = importlib.util.spec_from_file_location("reference_filler", reference_dir / "filler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
