"""Reading the released format strictly, our format and safetensors round trips, atomic writes, refused pickles."""

import os
import random
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from traps import assert_refused_and_explained

from models import EmbeddingAdapter, SpaceTimeUnet, get_preset, load_checkpoint
from models.core.files import CheckpointError, UnsafeCheckpointError, atomic_torch_save, leftover_temp_files, name_max
from models.networks.checkpoint import (
    RELEASED_CHECKPOINT_URL,
    export_safetensors,
    latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
    save_released_format,
)

ROOT = Path(__file__).resolve().parents[1]


def tiny_models(seed=0):
    torch.manual_seed(seed)
    config = get_preset("tiny")
    return SpaceTimeUnet.from_model_config(config), EmbeddingAdapter.from_model_config(config), config


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def test_released_format_loads_strictly_as_paper_config(tmp_path, filler):
    unet, adapter = SpaceTimeUnet(), EmbeddingAdapter()
    unet.load_state_dict(filler.deterministic_state_dict(unet.state_dict()))
    adapter.load_state_dict(filler.deterministic_state_dict(adapter.state_dict()))
    path = tmp_path / "FashionFlow_checkpoint.pth"
    opt = torch.optim.AdamW(list(adapter.parameters()), lr=1e-4)
    # the authors' layout: plain state dicts (some tools add a DDP "module." prefix), optionally 'opt'
    torch.save(
        {
            "net": {f"module.{k}": v for k, v in unet.state_dict().items()},
            "adapter": adapter.state_dict(),
            "opt": opt.state_dict(),
        },
        path,
    )
    net2, adapter2, config = load_checkpoint(path)
    assert config == get_preset("paper") and config.preprocessing == "legacy"
    assert_same_weights(unet, net2)
    assert_same_weights(adapter, adapter2)
    assert read_checkpoint(path)["format"] == "released"


def test_our_format_round_trip_and_safetensors(tmp_path):
    unet, adapter, config = tiny_models()
    path = save_checkpoint(tmp_path / "step_0000010.pth", unet, adapter, config, step=10, rng={"torch": torch.get_rng_state()})
    net2, adapter2, config2 = load_checkpoint(path)
    assert config2 == config and config2.preprocessing == "standard"
    assert_same_weights(unet, net2)
    assert read_checkpoint(path)["step"] == 10
    st = export_safetensors(tmp_path / "model.safetensors", unet, adapter, config)
    net3, adapter3, config3 = load_checkpoint(st)
    assert config3 == config
    assert_same_weights(unet, net3)
    assert_same_weights(adapter, adapter3)


def test_ema_weights_are_used_for_inference_when_present(tmp_path):
    unet, adapter, config = tiny_models(0)
    ema_unet, ema_adapter, _ = tiny_models(1)
    path = save_checkpoint(
        tmp_path / "c.pth", unet, adapter, config, ema={"net": ema_unet.state_dict(), "adapter": ema_adapter.state_dict()}
    )
    assert_same_weights(load_checkpoint(path)[0], ema_unet)
    assert_same_weights(load_checkpoint(path, use_ema=False)[0], unet)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    unet, adapter, config = tiny_models()
    path = tmp_path / "wrong.pth"
    save_released_format(path, unet, adapter)  # tiny weights in a file that says "paper config"
    with pytest.raises(CheckpointError, match=r"wrong\.pth.*(missing keys|shape mismatches)"):
        load_checkpoint(path)
    bad = tmp_path / "not_a_checkpoint.pth"
    torch.save({"weights": {}}, bad)
    with pytest.raises(CheckpointError, match="expected keys 'net' and 'adapter'"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(tmp_path / "missing.pth")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    unet, adapter, config = tiny_models()
    path = save_checkpoint(tmp_path / "c.pth", unet, adapter, config)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def _zip_of_a_photo(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("photo.jpg", b"\xff\xd8\xff\xe0 not really a photo")


@pytest.mark.parametrize(
    "write,what",
    [
        (lambda p: p.write_text("<!DOCTYPE html>\n<html lang='en'><head><title>Dropbox</title>"), "an HTML page"),
        (lambda p: p.write_bytes(b""), "an empty file"),
        (_zip_of_a_photo, "a zip archive of something else (photo.jpg)"),
        (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\n"), "a text file starting 'version https"),
    ],
    ids=["html", "empty", "zip", "text"],
)
def test_a_file_that_is_no_checkpoint_is_named_with_the_direct_link(tmp_path, write, what):
    path = tmp_path / "FashionFlow_checkpoint.pth"
    write(path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert f"{path} is not a checkpoint but {what}" in message
    assert RELEASED_CHECKPOINT_URL in message and RELEASED_CHECKPOINT_URL.endswith("dl=1")
    assert "weights_only" not in message


def test_both_torch_save_layouts_pass_the_not_a_checkpoint_check(tmp_path):
    unet, adapter, _ = tiny_models()
    state = {"net": unet.state_dict(), "adapter": adapter.state_dict()}
    torch.save(state, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("zip.pth", "legacy.pth"):
        assert read_checkpoint(tmp_path / name)["format"] == "released"


def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path):
    path = tmp_path / "ckpt.pth"
    atomic_torch_save({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("simulated crash mid-write")

    with pytest.raises(RuntimeError, match="simulated crash"):
        atomic_torch_save({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]  # no temporary file left behind


def test_latest_checkpoint_by_step(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 40, 300):
        atomic_torch_save({}, tmp_path / f"step_{step:07d}.pth")
    assert latest_checkpoint(tmp_path).name == "step_0000300.pth"


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_code_never_runs_and_the_refusal_says_why(tmp_path, pickle_trap, zip_format):
    path = tmp_path / "trap.pth"
    torch.save({"net": pickle_trap, "adapter": {}}, path, _use_new_zipfile_serialization=zip_format)
    torch.load(path, weights_only=False)  # the trap is live: loading without the guard runs it
    assert pickle_trap.sprung
    pickle_trap.marker.unlink()
    for load in (read_checkpoint, load_checkpoint):
        with pytest.raises(UnsafeCheckpointError) as caught:
            load(path)
        assert_refused_and_explained(str(caught.value), path)
    assert not pickle_trap.sprung


def test_empty_garbage_and_broken_safetensors_files_say_what_is_wrong(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(CheckpointError, match=r"empty\.pth is not a checkpoint but an empty file .*curl -L"):
        read_checkpoint(empty)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(500)))
    with pytest.raises(CheckpointError, match=r"garbage\.pth: not a PyTorch file, or a corrupt one") as caught:
        read_checkpoint(garbage)
    assert "weights_only" not in str(caught.value)
    unet, adapter, config = tiny_models()
    export = export_safetensors(tmp_path / "model.safetensors", unet, adapter, config)
    export.write_bytes(export.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{export.name}: not a complete \.safetensors file .*export it again"):
        load_checkpoint(export)
    (tmp_path / "text.safetensors").write_text("not tensors")
    with pytest.raises(CheckpointError, match=r"text\.safetensors is not a checkpoint but a text file starting 'not tensors'"):
        load_checkpoint(tmp_path / "text.safetensors")


@pytest.mark.parametrize("stem", ["a" * 251, "é" * 125], ids=["ascii", "two-byte characters"])
def test_temporary_files_fit_beside_the_longest_legal_name(tmp_path, stem):
    path = tmp_path / f"{stem}.pth"
    assert len(os.fsencode(path.name)) <= name_max(tmp_path) == 255
    atomic_torch_save({"step": 1}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert os.listdir(tmp_path) == [path.name]


KILLED_MID_WRITE = """
import os, signal, sys
from models.core.files import atomic_write

def write_half_then_die(tmp):
    with open(tmp, "wb") as f:
        f.write(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write(sys.argv[1], write_half_then_die)
"""


def test_kill_9_mid_write_keeps_the_previous_file_and_its_leftover_is_found(tmp_path):
    path = tmp_path / f"{'x' * 245}.pth"
    atomic_torch_save({"step": 1}, path)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_WRITE, str(path)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(path, weights_only=True) == {"step": 1}
    (leftover,) = leftover_temp_files(path)
    assert leftover.read_bytes() == b"half a checkpoint"
    assert leftover_temp_files(tmp_path / "other.pth") == []
