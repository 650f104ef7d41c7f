"""Reading the released format strictly, our format and safetensors round trips, atomic writes."""

import zipfile

import pytest
import torch

from models import EmbeddingAdapter, SpaceTimeUnet, get_preset, load_checkpoint
from models.checkpoint import (
    RELEASED_CHECKPOINT_URL,
    CheckpointError,
    atomic_torch_save,
    export_safetensors,
    latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
    save_released_format,
)


def tiny_models(seed=0):
    torch.manual_seed(seed)
    config = get_preset("tiny")
    return SpaceTimeUnet(config), EmbeddingAdapter(config), config


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
