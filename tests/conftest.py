import importlib.util
import os
import sys
from pathlib import Path

import pytest
from deprecations import DeprecationScreen
from traps import PickleTrap

ROOT = Path(__file__).resolve().parents[1]
# FASHIONFLOW_SHARED: a copy of the repository elsewhere (a GPU machine, bench/mutation.sh's mutants/)
SHARED = Path(os.environ.get("FASHIONFLOW_SHARED") or ROOT.parent / "shared")
REFERENCE = SHARED / "reference"
SAMPLES = SHARED / "samples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


SCREEN = DeprecationScreen()


# inside pytest's own warning capture (its wrappers run first), so what the screen passes on is reported as before
@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    with SCREEN:
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with SCREEN:
        return (yield)


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


@pytest.fixture
def pickle_trap(tmp_path) -> PickleTrap:
    return PickleTrap(tmp_path / "pickled_code_ran")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Tiny real encoders, one tiny model saved in both checkpoint formats, and two short dataset videos."""
    import torch

    from models.core.config import get_preset
    from models.data.video_io import write_mp4
    from models.networks.checkpoint import build_models, save_checkpoint, save_released_format
    from models.networks.tiny_components import save_tiny_encoders

    root = tmp_path_factory.mktemp("parts")
    vae, clip = save_tiny_encoders(root / "encoders")
    config = get_preset("tiny", vae=str(vae), clip=str(clip))
    torch.manual_seed(0)
    unet, adapter = build_models(config)
    dataset = root / "dataset"
    for i in range(2):
        write_mp4(torch.rand(6, 3, 40, 30, generator=torch.Generator().manual_seed(i)), dataset / f"clip{i}.mp4", fps=25)
    return dict(
        root=root,
        vae=str(vae),
        clip=str(clip),
        dataset=dataset,
        ours=save_checkpoint(root / "ours.pth", unet, adapter, config),
        released=save_released_format(root / "released.pth", unet, adapter),
    )
