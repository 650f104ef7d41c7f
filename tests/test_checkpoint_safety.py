"""Checkpoints are untrusted input: pickled objects are refused at every reader, and keys must match exactly.

A pickled object in a checkpoint runs code as it is unpickled (`torch.load(weights_only=False)`). The payload here
records its own unpickling in a marker file, so each test proves that nothing ran, not only that an error came.
"""

import ast
import json
import os
import stat
import time
from pathlib import Path

import pytest
import torch

import inference
from models.core.config import PRESETS, get_preset
from models.networks.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write,
    build_models,
    checkpoint_dict,
    export_safetensors,
    latest_checkpoint,
    load_checkpoint,
    load_state_strict,
    read_checkpoint,
    save_released_format,
)
from models.pipeline.pipeline import FashionFlowPipeline
from models.training.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def record_unpickling(marker: str) -> None:
    Path(marker).write_text("this ran while the checkpoint was being unpickled\n")


class Payload:
    """Unpickles by calling `record_unpickling(marker)`: what an attacker's `os.system` would be."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return record_unpickling, (self.marker,)


@pytest.fixture(scope="module")
def tiny_weights():
    torch.manual_seed(0)
    return build_models(get_preset("tiny"))


@pytest.fixture
def booby_trapped(tmp_path, tiny_weights):
    """(checkpoint `step_0000005.pth`, marker): a valid tiny checkpoint of ours plus a pickled object."""
    marker = tmp_path / "payload_ran"
    path = tmp_path / "checkpoint" / "step_0000005.pth"
    path.parent.mkdir()
    unet, adapter = tiny_weights
    torch.save({**checkpoint_dict(unet, adapter, get_preset("tiny"), step=5), "note": Payload(marker)}, path)
    return path, marker


def test_the_payload_runs_when_unpickled_without_weights_only(booby_trapped):
    # the fixture is a real threat: a reader without weights_only=True would run it
    path, marker = booby_trapped
    torch.load(path, weights_only=False)
    assert marker.is_file()


def refuse_read(path):
    read_checkpoint(path)


def refuse_load(path):
    load_checkpoint(path)


def refuse_pipeline(path):
    FashionFlowPipeline.from_checkpoint(path, vae=path.parent / "no_vae", clip=path.parent / "no_clip", device="cpu")


def refuse_resume_by_path(path):
    train(resume_config(path.parent.parent, resume=str(path)))


def refuse_resume_auto(path):
    train(resume_config(path.parent.parent, resume="auto"))


def refuse_quickstart_reuse(path):
    # the quickstart reuses the newest checkpoint in <workdir>/checkpoint when it has trained far enough
    from models.serving.quickstart import QuickstartConfig
    from models.serving.quickstart import train as quickstart_train

    quickstart_train(QuickstartConfig(workdir=str(path.parent.parent), progress=False), path.parent / "latents")


def resume_config(root: Path, *, resume: str) -> TrainConfig:
    return TrainConfig(
        dataset_vae=str(root / "no_dataset"),
        output_dir=str(root / "checkpoint"),
        log_dir=str(root / "logs"),
        sample_dir=str(root / "samples"),
        preset="tiny",
        vae=str(root / "no_vae"),  # should the checkpoint ever get through, fail fast and offline
        clip=str(root / "no_clip"),
        resume=resume,
        device="cpu",
        num_workers=0,
        progress=False,
    )


@pytest.mark.parametrize(
    "reader",
    [refuse_read, refuse_load, refuse_pipeline, refuse_resume_by_path, refuse_resume_auto, refuse_quickstart_reuse],
    ids=lambda f: f.__name__.removeprefix("refuse_"),
)
def test_a_pickled_object_is_refused_before_it_runs(booby_trapped, reader):
    path, marker = booby_trapped
    with pytest.raises(CheckpointError) as refused:
        reader(path)
    assert path.name in str(refused.value)
    assert not marker.exists(), "the pickled object ran"


def test_inference_script_refuses_a_pickled_object(booby_trapped, tmp_path, capsys):
    path, marker = booby_trapped
    image = tmp_path / "photo.png"
    from models.data.video_io import save_image

    save_image(torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(0)), image)
    out = tmp_path / "out"
    args = ["--pretrained_model", str(path), "--image", str(image), "--output_dir", str(out), "--device", "cpu"]
    code = inference.main([*args, "--vae", str(tmp_path / "no_vae"), "--clip", str(tmp_path / "no_clip")])
    assert code == 2
    assert path.name in capsys.readouterr().err
    assert not marker.exists(), "the pickled object ran"
    assert not list(out.glob("*.mp4"))


def torch_load_calls(source: str):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                yield node


def test_every_torch_load_in_the_project_is_weights_only():
    # a reader added later (a new script, a new weights file) must not bring pickle execution back
    files = [p for p in ROOT.rglob("*.py") if not {"tests", ".venv", "mutants"} & set(p.relative_to(ROOT).parts)]
    calls = [(path, call) for path in files for call in torch_load_calls(path.read_text())]
    assert calls, "found no torch.load at all: is the scan looking in the right place?"
    unsafe = [
        f"{path.relative_to(ROOT)}:{call.lineno}"
        for path, call in calls
        if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)
    ]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


# ---------------------------------------------------------------------------------------------------- strict keys
# The released format records no config (it means the paper's); these files hold tiny weights and are read with the
# tiny architecture, so a wrong key is the only thing wrong with them: no shape mismatch hides behind it.


def released_file(tmp_path, tiny_weights, *, net=None, adapter=None) -> Path:
    unet, ada = tiny_weights
    path = tmp_path / "FashionFlow_checkpoint.pth"
    torch.save({"net": net if net is not None else unet.state_dict(), "adapter": adapter or ada.state_dict()}, path)
    return path


def load_tiny(path):
    return load_checkpoint(path, config_overrides=PRESETS["tiny"])


def test_an_intact_tiny_released_file_loads(tmp_path, tiny_weights):
    unet, _, config = load_tiny(save_released_format(tmp_path / "released.pth", *tiny_weights))
    assert config.dim == PRESETS["tiny"]["dim"]
    for name, value in tiny_weights[0].state_dict().items():
        assert torch.equal(unet.state_dict()[name], value), name


def test_a_released_file_missing_one_key_is_refused(tmp_path, tiny_weights):
    net = tiny_weights[0].state_dict()
    dropped = "downs.0.0.block1.project.spatial_conv.weight"
    del net[dropped]
    with pytest.raises(CheckpointError, match="missing keys") as refused:
        load_tiny(released_file(tmp_path, tiny_weights, net=net))
    assert dropped in str(refused.value) and "shape" not in str(refused.value)
    assert "SpaceTimeUnet " in str(refused.value) and "FashionFlow_checkpoint.pth" in str(refused.value)


def test_a_released_file_with_one_extra_key_is_refused(tmp_path, tiny_weights):
    adapter = tiny_weights[1].state_dict()
    adapter["linear2.weight"] = adapter["linear1.weight"].clone()  # a plausible name, shaped like its neighbour
    with pytest.raises(CheckpointError, match="unexpected keys") as refused:
        load_tiny(released_file(tmp_path, tiny_weights, adapter=adapter))
    assert "linear2.weight" in str(refused.value) and "shape" not in str(refused.value)
    assert "EmbeddingAdapter " in str(refused.value) and "FashionFlow_checkpoint.pth" in str(refused.value)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_the_strict_loader_refuses_a_key_change_alone_and_leaves_the_module_untouched(tiny_weights, change):
    target, _ = build_models(get_preset("tiny"))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    state = {k: v + 1 for k, v in tiny_weights[0].state_dict().items()}
    if change == "missing":
        state.pop(next(iter(state)))
    else:
        state["to_timestep_cond.9.bias"] = state["to_timestep_cond.1.bias"]
    with pytest.raises(CheckpointError, match=f"{change} keys"):
        load_state_strict(target, state, what="SpaceTimeUnet", path="test.pth")
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed although the load was refused"


def test_an_ema_with_a_missing_key_is_refused(tmp_path, tiny_weights):
    unet, adapter = tiny_weights
    ema_net = unet.state_dict()
    del ema_net["to_timestep_cond.1.bias"]
    ckpt = checkpoint_dict(unet, adapter, get_preset("tiny"), ema={"net": ema_net, "adapter": adapter.state_dict()})
    path = tmp_path / "ema.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(path)  # inference reads the EMA weights by default
    load_checkpoint(path, use_ema=False)  # the raw weights are intact


# ---------------------------------------------------------------------------------------------------- writes


def test_atomic_writes_get_the_usual_file_permissions(tmp_path):
    previous = os.umask(0o027)
    try:
        path = atomic_torch_save({"step": 1}, tmp_path / "new" / "dir" / "step_0000001.pth")  # parents are made
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 less the umask, not mkstemp's 0o600
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_a_write_cut_short_by_a_kill_is_cleaned_up_when_training_resumes(tmp_path):
    from models.training.loop import remove_partial_writes

    names = []

    def write(tmp):
        names.append(Path(tmp).name)
        torch.save({"step": 2}, tmp)

    atomic_write(tmp_path / "step_0000002.pth", write)
    assert names[0].startswith(".step_0000002.pth.") and names[0].endswith(".tmp")  # hidden, beside the target
    (tmp_path / names[0]).write_bytes(b"half a checkpoint")  # what SIGKILL mid-write leaves behind
    remove_partial_writes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002.pth"]


def test_latest_checkpoint_is_the_highest_step_not_the_newest_file(tmp_path):
    for step in (300, 40, 5):  # written newest-last, so the modification times disagree with the steps
        atomic_torch_save({}, tmp_path / f"step_{step:07d}.pth")
    (tmp_path / ".step_0009999.pth").write_bytes(b"")  # hidden: never a checkpoint
    (tmp_path / "latest.pth").symlink_to("step_0000300.pth")
    assert latest_checkpoint(tmp_path).name == "step_0000300.pth"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_without_step_numbers_the_newest_file_wins(tmp_path):
    for age, name in ((30, "a_first.pth"), (10, "c_newest.pth"), (20, "b_middle.pth")):
        path = tmp_path / name
        atomic_torch_save({}, path)
        os.utime(path, (time.time() - age, time.time() - age))
    assert latest_checkpoint(tmp_path).name == "c_newest.pth"
    atomic_torch_save({}, tmp_path / "step_0000001.pth")
    os.utime(tmp_path / "step_0000001.pth", (time.time() - 100, time.time() - 100))
    assert latest_checkpoint(tmp_path).name == "step_0000001.pth"  # any step number beats no step number
    atomic_torch_save({}, tmp_path / "kept_step_0000500.pth")  # the number after the last underscore counts
    os.utime(tmp_path / "kept_step_0000500.pth", (time.time() - 200, time.time() - 200))
    assert latest_checkpoint(tmp_path).name == "kept_step_0000500.pth"


# ---------------------------------------------------------------------------------------------------- safetensors


def test_safetensors_exports_load_onto_the_asked_device(tmp_path, tiny_weights, monkeypatch):
    import safetensors

    path = export_safetensors(tmp_path / "model.safetensors", *tiny_weights, get_preset("tiny"))
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "fashionflow", "version": "1", "config": json.dumps(get_preset("tiny").to_dict())}
    ckpt = read_checkpoint(path, map_location=None)  # None means the CPU, as for torch.load
    assert ckpt["format"] == "fashionflow" and ckpt["config"] == get_preset("tiny")
    assert all(v.device.type == "cpu" for v in ckpt["net"].values())
    devices, real_open = [], safetensors.safe_open

    def spy(*args, device, **kwargs):  # the device reaches safetensors; the tensors stay on this CPU-only machine
        devices.append(device)
        return real_open(*args, device="cpu", **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", spy)
    read_checkpoint(path, map_location=torch.device("cuda", 1))
    read_checkpoint(path)
    assert devices == ["cuda:1", "cpu"]


@pytest.mark.parametrize("metadata", [{"format": "fashionflow"}, {"format": "other", "config": "{}"}, None])
def test_safetensors_without_our_config_are_refused(tmp_path, tiny_weights, metadata):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({f"net.{k}": v.contiguous() for k, v in tiny_weights[0].state_dict().items()}, path, metadata=metadata)
    with pytest.raises(CheckpointError, match="foreign.safetensors"):
        read_checkpoint(path)


def test_load_checkpoint_reads_onto_map_location(tmp_path, tiny_weights, monkeypatch):
    import models.networks.checkpoint

    path = save_released_format(tmp_path / "released.pth", *tiny_weights)
    asked, real_read = [], models.networks.checkpoint.read_checkpoint

    def spy(path, map_location="cpu"):  # the tensors are read straight onto the device, not via the CPU
        asked.append(map_location)
        return real_read(path, "cpu")

    monkeypatch.setattr(models.networks.checkpoint, "read_checkpoint", spy)
    unet, adapter, _ = load_checkpoint(path, map_location="meta", config_overrides=PRESETS["tiny"])
    assert asked == ["meta"]
    assert {p.device.type for p in [*unet.parameters(), *adapter.parameters()]} == {"meta"}
    assert not unet.training and not adapter.training


def test_a_refusal_lists_every_kind_of_mismatch_with_counts(tiny_weights):
    target, _ = build_models(get_preset("tiny"))
    state = dict(tiny_weights[0].state_dict())
    missing = sorted(state)[:10]
    for key in missing:
        del state[key]
    state["extra.bias"] = torch.zeros(2)
    wrong = sorted(state)[5]
    state[wrong] = torch.zeros(3, 1, 1)
    with pytest.raises(CheckpointError) as refused:
        load_state_strict(target, state, what="SpaceTimeUnet", path="mixed.pth")
    message = str(refused.value)  # what it says, not how: the wording is free to change
    assert "(10)" in message and all(k in message for k in missing[:8]) and missing[8] not in message
    assert "+2 more" in message  # the first eight are named
    assert "extra.bias" in message
    assert wrong in message and "(3, 1, 1)" in message and str(tuple(target.state_dict()[wrong].shape)) in message


def test_module_prefixes_are_stripped_only_when_every_key_has_one(tmp_path, tiny_weights):
    unet, adapter = tiny_weights
    net = unet.state_dict()
    prefixed = {f"module.{k}": v for k, v in net.items()}
    path = tmp_path / "ddp.pth"
    torch.save({"net": prefixed, "adapter": {f"module.{k}": v for k, v in adapter.state_dict().items()}}, path)
    read = read_checkpoint(path)
    assert list(read["net"]) == list(net) and list(read["adapter"]) == list(adapter.state_dict())
    mixed = {**prefixed, "to_timestep_cond.1.bias": net["to_timestep_cond.1.bias"]}
    torch.save({"net": mixed, "adapter": {}}, path)
    assert read_checkpoint(path)["net"].keys() == mixed.keys()  # not a DDP state dict: left as it is


def test_a_file_that_is_not_a_dict_is_named_for_what_it_holds(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="Tensor"):
        read_checkpoint(path)
    torch.save({"weights": {}, "opt": {}}, path)
    with pytest.raises(CheckpointError, match=r"\['opt', 'weights'\]"):
        read_checkpoint(path)
