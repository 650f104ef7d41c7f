"""Training: multi-process DDP, exact resume (also after SIGKILL), learning, non-finite guard, flags.

Everything runs on CPU with the tiny preset, tiny real encoders and a synthetic projected dataset.
"""

import dataclasses
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from traps import assert_refused_and_explained

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train as train_script  # noqa: E402
from models.checkpoint import build_models, read_checkpoint  # noqa: E402
from models.config import get_preset  # noqa: E402
from models.files import CheckpointError, UnsafeCheckpointError  # noqa: E402
from models.outputs import OutputLocationError  # noqa: E402
from models.training import TrainConfig, train, weights_digest  # noqa: E402

FRAMES, CHANNELS, LATENT_HW, IMAGE_HW = 8, 4, (16, 12), (64, 48)


@pytest.fixture(scope="module")
def encoder_dirs(tmp_path_factory):
    from models.tiny_components import save_tiny_encoders

    return save_tiny_encoders(tmp_path_factory.mktemp("encoders"))


def write_projected_dataset(root: Path, *, videos: int, seed: int = 0, learnable: bool = False, nan: bool = False):
    """The projected layout (`<name>_image.pt`, `<name>.pt`, manifest.jsonl) with random tensors.

    `learnable`: every frame repeats frame 0, so the clean frame the model is given determines the clip.
    """
    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(videos):
        name = f"video{i:02d}"
        latents = torch.randn(FRAMES, CHANNELS, *LATENT_HW, generator=g)
        if learnable:
            latents = latents[:1].expand(FRAMES, -1, -1, -1).clone()
        if nan:
            latents[3] = float("nan")
        torch.save(torch.rand(3, *IMAGE_HW, generator=g), root / f"{name}_image.pt")
        torch.save(latents, root / f"{name}.pt")
        names.append(name)
    records = [{"name": n, "frames": FRAMES, "preprocessing": "standard"} for n in names]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def tiny_config(tmp_path: Path, data: Path, encoder_dirs, **changes) -> TrainConfig:
    vae, clip = encoder_dirs
    base = TrainConfig(
        dataset_vae=str(data),
        output_dir=str(tmp_path / "checkpoint"),
        log_dir=str(tmp_path / "video_progress"),
        sample_dir=str(tmp_path / "training_sample"),
        preset="tiny",
        vae=str(vae),
        clip=str(clip),
        batch_size=2,
        checkpoint_every=1000,
        sample_every=0,
        log_every=1,
        num_workers=0,
        device="cpu",
        progress=False,
    )
    return dataclasses.replace(base, **changes)


def to_argv(cfg: TrainConfig) -> list[str]:
    argv = []
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if isinstance(value, bool):
            argv.append(f"--{field.name}" if value else f"--no-{field.name}")
        elif value is not None:
            argv += [f"--{field.name}", str(value)]
    return argv


def script_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def read_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one scalar from the TFRecord event files tensorboardX wrote."""
    from tensorboardX.proto.event_pb2 import Event

    values = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.tag == tag:
                    values.append((event.step, value.simple_value))
    return values


def final_weights(path: Path) -> dict:
    ckpt = read_checkpoint(path)
    return {
        **{f"net.{k}": v for k, v in ckpt["net"].items()},
        **{f"adapter.{k}": v for k, v in ckpt["adapter"].items()},
        **{f"ema.net.{k}": v for k, v in ckpt["ema"]["net"].items()},
    }


def assert_same_weights(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by up to {worst}"


def test_two_processes_with_torchrun(tmp_path, encoder_dirs):
    data = write_projected_dataset(tmp_path / "data", videos=8)
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=3, checkpoint_every=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "train.py"]
    run = subprocess.run(cmd + to_argv(cfg), cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-4000:]

    out = Path(cfg.output_dir)
    assert sorted(p.name for p in out.glob("step_*.pth")) == ["step_0000002.pth", "step_0000003.pth"]
    assert (out / "latest.pth").resolve() == (out / "step_0000003.pth").resolve()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3
    digests = summary["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], "ranks hold different weights"
    unet, adapter = build_models(get_preset("tiny"))
    ckpt = read_checkpoint(out / "step_0000003.pth")
    unet.load_state_dict(ckpt["net"]), adapter.load_state_dict(ckpt["adapter"])
    assert weights_digest(unet, adapter) == digests[0]
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]["generator"]) == 2
    assert read_scalars(Path(cfg.log_dir), "train/loss"), "no loss in the event file"


def test_torch_distributed_launch_still_works(tmp_path, encoder_dirs):
    data = write_projected_dataset(tmp_path / "data", videos=4)
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=1, ema_decay=0.0)
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", "train.py"]
    run = subprocess.run(cmd + to_argv(cfg), cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads((Path(cfg.output_dir) / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and len(set(summary["rank_weight_digests"])) == 1


def test_resume_matches_uninterrupted_run(tmp_path, encoder_dirs):
    # 3 videos, batch 1, 2 accumulated batches per step: step 2 stops in the middle of epoch 1
    data = write_projected_dataset(tmp_path / "data", videos=3)
    base = tiny_config(tmp_path, data, encoder_dirs, batch_size=1, grad_accum=2, lr=1e-3, warmup_steps=2)
    straight = train(dataclasses.replace(base, output_dir=str(tmp_path / "a"), max_steps=4))
    first = train(dataclasses.replace(base, output_dir=str(tmp_path / "b"), max_steps=2))
    assert (first["epoch"], read_checkpoint(first["checkpoint"])["batch_in_epoch"]) == (1, 1)
    resumed = train(dataclasses.replace(base, output_dir=str(tmp_path / "b"), max_steps=4))
    assert resumed["step"] == 4
    assert_same_weights(final_weights(Path(straight["checkpoint"])), final_weights(Path(resumed["checkpoint"])))
    a, b = read_checkpoint(straight["checkpoint"]), read_checkpoint(resumed["checkpoint"])
    assert a["lr_scheduler"] == b["lr_scheduler"]
    assert torch.equal(a["rng"]["generator"][0], b["rng"]["generator"][0])


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, encoder_dirs):
    data = write_projected_dataset(tmp_path / "data", videos=3)
    base = tiny_config(tmp_path, data, encoder_dirs, batch_size=1, lr=1e-3, checkpoint_every=2)
    killed = dataclasses.replace(base, output_dir=str(tmp_path / "killed"), max_steps=1000)
    proc = subprocess.Popen(
        [sys.executable, "train.py", *to_argv(killed)],
        cwd=ROOT,
        env=script_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(Path(killed.output_dir).glob("step_*.pth")):
            assert proc.poll() is None, proc.stderr.read().decode()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    saved = sorted(Path(killed.output_dir).glob("step_*.pth"))[-1]
    total = 6
    assert read_checkpoint(saved)["step"] < total

    resumed = train(dataclasses.replace(killed, max_steps=total))
    straight = train(dataclasses.replace(base, output_dir=str(tmp_path / "straight"), max_steps=total))
    assert resumed["step"] == straight["step"] == total
    assert_same_weights(final_weights(Path(straight["checkpoint"])), final_weights(Path(resumed["checkpoint"])))


def test_loss_falls_on_learnable_data(tmp_path, encoder_dirs):
    data = write_projected_dataset(tmp_path / "data", videos=8, learnable=True)
    cfg = tiny_config(tmp_path, data, encoder_dirs, batch_size=4, lr=2e-3, max_steps=50, log_every=5, ema_decay=0.0)
    train(cfg)
    losses = [v for _, v in read_scalars(Path(cfg.log_dir), "train/loss")]
    assert len(losses) == 10
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.6 * first, f"loss did not fall: {losses}"
    for tag in ("train/lr", "train/grad_norm", "train/samples_per_sec"):
        assert len(read_scalars(Path(cfg.log_dir), tag)) == 10


def test_non_finite_loss_skips_the_update_and_then_stops(tmp_path, encoder_dirs, capsys):
    data = write_projected_dataset(tmp_path / "data", videos=2, nan=True)
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=5, checkpoint_every=1, max_nonfinite=2)
    with pytest.raises(FloatingPointError, match="2 consecutive non-finite steps"):
        train(cfg)
    out = capsys.readouterr().out
    assert "step 1: non-finite loss" in out and "video00" in out and "weights unchanged" in out
    ckpt = read_checkpoint(Path(cfg.output_dir) / "step_0000001.pth")
    torch.manual_seed(cfg.seed)
    unet, adapter = build_models(get_preset("tiny"))
    for name, value in unet.state_dict().items():
        assert torch.equal(ckpt["net"][name], value), name
    assert ckpt["opt"]["state"] == {}, "the optimizer stepped on a non-finite loss"


def test_resume_refuses_conflicting_preprocessing(tmp_path, encoder_dirs):
    data = write_projected_dataset(tmp_path / "data", videos=2)
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=1, ema_decay=0.0)
    train(cfg)
    with pytest.raises(ValueError, match="--preprocessing legacy conflicts"):
        train(dataclasses.replace(cfg, max_steps=2, preprocessing="legacy"))


def test_fp16_on_cpu_is_refused_with_advice(tmp_path, encoder_dirs):
    data = write_projected_dataset(tmp_path / "data", videos=2)
    with pytest.raises(ValueError, match="--precision bf16 or fp32 on CPU"):
        train(tiny_config(tmp_path, data, encoder_dirs, max_steps=1, precision="fp16"))


def test_sample_video_from_a_training_image(tmp_path, encoder_dirs):
    data = write_projected_dataset(tmp_path / "data", videos=2)
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=2, sample_every=2, sample_steps=2, precision="bf16")
    train(cfg)
    mp4 = Path(cfg.sample_dir) / "step_0000002.mp4"
    assert mp4.is_file() and mp4.stat().st_size > 0
    from models.video_io import probe_video

    info = probe_video(mp4)
    assert info.frames == FRAMES and (info.height, info.width) == IMAGE_HW


@pytest.mark.parametrize("flag", ["--local_rank", "--local-rank"])
def test_local_rank_flag_spellings(flag):
    args = train_script.build_parser().parse_args([flag, "1", "--preset", "tiny"])
    assert args.local_rank == 1 and args.preset == "tiny"
    args = train_script.build_parser().parse_args([f"{flag}=3"])
    assert args.local_rank == 3


def test_every_config_field_is_a_documented_flag():
    parser = train_script.build_parser()
    flags = {a.dest: a for a in parser._actions}
    for field in dataclasses.fields(TrainConfig):
        assert field.name in flags and flags[field.name].help, field.name
    assert parser.parse_args([]).lr == 1e-4 and parser.parse_args([]).weight_decay == 0.01


def test_user_errors_print_one_message_without_a_traceback(tmp_path, encoder_dirs, pickle_trap):
    data = write_projected_dataset(tmp_path / "data", videos=2)
    trap = tmp_path / "trap.pth"
    torch.save({"net": pickle_trap, "adapter": {}}, trap)
    for cfg, expected in [
        (tiny_config(tmp_path, data, encoder_dirs, resume=str(trap)), "refusing to load checkpoint"),
        (tiny_config(tmp_path, tmp_path / "nowhere", encoder_dirs), "no projected dataset at"),
        (tiny_config(tmp_path, data, encoder_dirs, precision="fp16"), "--precision fp16 needs a GPU"),
    ]:
        run = subprocess.run(
            [sys.executable, "train.py", *to_argv(cfg)], cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-4000:]
        assert run.stderr.strip().splitlines()[-1].startswith(f"train.py: error: {expected}"), run.stderr[-4000:]
    assert not pickle_trap.sprung


# ---- nothing lost, nothing overwritten


@pytest.mark.parametrize("flag", ["output_dir", "log_dir", "sample_dir"])
@pytest.mark.parametrize("how", ["existing file", "read-only folder"])
def test_unwritable_outputs_fail_before_the_first_step(tmp_path, encoder_dirs, monkeypatch, flag, how):
    data = write_projected_dataset(tmp_path / "data", videos=2)
    target = tmp_path / "target"
    if how == "existing file":
        target.write_text("a file where a folder should be")
    else:
        target.mkdir(mode=0o555)
        if os.access(target, os.W_OK):  # root writes through permissions
            pytest.skip("this user can write into read-only folders")
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=1, sample_every=1, **{flag: str(target)})

    def started(*args, **kwargs):
        raise AssertionError("training started although an output folder is unusable")

    monkeypatch.setattr("models.training.build_models", started)
    with pytest.raises(OutputLocationError, match=rf"--{flag} {target}"):
        train(cfg)


def run_train_script(cfg: TrainConfig, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", *to_argv(cfg)], cwd=ROOT, env=script_env(), **popen)


def test_a_second_run_on_the_same_folder_is_refused_and_the_first_one_goes_on(tmp_path, encoder_dirs):
    data = write_projected_dataset(tmp_path / "data", videos=2)
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=1000, checkpoint_every=1)
    first = run_train_script(cfg, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = Path(cfg.output_dir)

    def newest_step() -> int:
        return max(int(p.stem.removeprefix("step_")) for p in out.glob("step_*.pth"))

    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("step_*.pth")):
            assert first.poll() is None, first.stderr.read().decode()[-4000:]
            assert time.monotonic() < deadline, "the first run wrote no checkpoint"
            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "train.py", *to_argv(dataclasses.replace(cfg, max_steps=2, log_dir=str(tmp_path / "log2")))],
            cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        assert f"host {socket.gethostname()}, pid {first.pid}" in second.stderr and "another --output_dir" in second.stderr
        assert not (tmp_path / "log2").exists()
        assert first.poll() is None, "the first run stopped"
        step, deadline = newest_step(), time.monotonic() + 120
        while newest_step() == step:
            assert first.poll() is None and time.monotonic() < deadline, "the first run stopped training"
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait()
    assert all(read_checkpoint(p)["train_config"]["max_steps"] == 1000 for p in out.glob("step_*.pth"))


KILL_AT_SECOND_CHECKPOINT = """
import os, signal, sys, torch
import train

save = torch.save

def save_half_then_die(obj, path, *args, **kwargs):
    save(obj, path, *args, **kwargs)
    if ".step_0000002.pth." in str(path):
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_half_then_die
train.main(sys.argv[1:])
"""


def test_kill_9_mid_checkpoint_write_loses_nothing_and_the_stale_lock_is_taken_over(tmp_path, encoder_dirs, capsys):
    data = write_projected_dataset(tmp_path / "data", videos=3)
    base = tiny_config(tmp_path, data, encoder_dirs, batch_size=1, lr=1e-3, checkpoint_every=1)
    killed = dataclasses.replace(base, output_dir=str(tmp_path / "killed"), max_steps=4)
    run = subprocess.run([sys.executable, "-c", KILL_AT_SECOND_CHECKPOINT, *to_argv(killed)], cwd=ROOT, env=script_env())
    assert run.returncode == -signal.SIGKILL
    out = Path(killed.output_dir)
    assert len(list(out.glob(".step_0000002.pth.*.tmp"))) == 1, "not killed mid-write"
    assert (out / "latest.pth").resolve().name == "step_0000001.pth" and read_checkpoint(out / "latest.pth")["step"] == 1
    assert json.loads((out / "train.lock").read_text())["pid"] != os.getpid()  # left by the killed run

    resumed = train(killed)
    said = capsys.readouterr().out
    assert "ended without releasing it; taking it over" in said and "resuming from" in said and "at step 1" in said
    assert not list(out.glob(".*.tmp")) and (out / "train.lock").read_text() == ""  # released
    straight = train(dataclasses.replace(base, output_dir=str(tmp_path / "straight"), max_steps=4))
    assert_same_weights(final_weights(Path(straight["checkpoint"])), final_weights(Path(resumed["checkpoint"])))


def test_a_wrong_shape_in_a_dataset_without_manifest_names_the_file(tmp_path, encoder_dirs):
    data = write_projected_dataset(tmp_path / "data", videos=2)
    (data / "manifest.jsonl").unlink()
    torch.save(torch.randn(FRAMES, CHANNELS, 8, 8), data / "video01.pt")
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=1, preprocessing="legacy")  # what a folder without manifest means
    with pytest.raises(ValueError, match=r"video01\.pt: latents of shape \[8, 4, 8, 8\], but the model takes \[F, 4, 16, 12\]"):
        train(cfg)


def test_dangling_latest_and_unreadable_checkpoints_fall_back_to_the_newest_readable(tmp_path, encoder_dirs, capsys):
    data = write_projected_dataset(tmp_path / "data", videos=3)
    base = tiny_config(tmp_path, data, encoder_dirs, batch_size=1, lr=1e-3, checkpoint_every=1, keep_last=0)
    cfg = dataclasses.replace(base, max_steps=3)
    train(cfg)
    out = Path(cfg.output_dir)
    (out / "step_0000003.pth").unlink()  # latest.pth now points nowhere
    (out / "step_0000002.pth").write_bytes(b"")  # and the step before is empty
    capsys.readouterr()
    resumed = train(dataclasses.replace(cfg, max_steps=4))
    said = capsys.readouterr().out
    assert "latest.pth points to step_0000003.pth, which no longer exists" in said
    assert "step_0000002.pth: the file is empty" in said and "resuming from" in said and "at step 1" in said
    straight = train(dataclasses.replace(base, output_dir=str(tmp_path / "straight"), max_steps=4))
    assert_same_weights(final_weights(Path(straight["checkpoint"])), final_weights(Path(resumed["checkpoint"])))
    assert (out / "latest.pth").resolve().name == "step_0000004.pth"


def test_rerunning_a_finished_run_keeps_an_honest_summary(tmp_path, encoder_dirs, capsys):
    data = write_projected_dataset(tmp_path / "data", videos=2)
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=2, ema_decay=0.0)
    first = train(cfg)
    again = train(cfg)
    assert "nothing to train" in capsys.readouterr().out
    summary = json.loads(
        (Path(cfg.output_dir) / "train_summary.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON")
    )
    assert summary["checkpoint"] == first["checkpoint"] == again["checkpoint"]
    assert summary["step"] == 2 and summary["loss"] == first["loss"] and math.isfinite(first["loss"])


def test_pickled_code_in_a_checkpoint_or_the_dataset_never_runs(tmp_path, encoder_dirs, pickle_trap, capsys):
    data = write_projected_dataset(tmp_path / "data", videos=2)
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=1)
    trap = tmp_path / "trap.pth"
    torch.save({"net": pickle_trap, "adapter": {}, "step": 1}, trap)
    with pytest.raises(UnsafeCheckpointError) as caught:  # --resume PATH
        train(dataclasses.replace(cfg, resume=str(trap)))
    assert_refused_and_explained(str(caught.value), trap)

    auto = Path(cfg.output_dir) / "step_0000005.pth"  # --resume auto finds it
    auto.write_bytes(trap.read_bytes())
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints"):
        train(cfg)
    assert_refused_and_explained(capsys.readouterr().out, auto)
    auto.unlink()

    torch.save({"latents": pickle_trap}, data / "video01.pt")  # a projected tensor
    with pytest.raises(UnsafeCheckpointError) as caught:
        train(cfg)
    assert_refused_and_explained(str(caught.value), data / "video01.pt")
    assert not pickle_trap.sprung
