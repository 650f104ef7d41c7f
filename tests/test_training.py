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
from models.core.config import get_preset  # noqa: E402
from models.core.files import CheckpointError, UnsafeCheckpointError  # noqa: E402
from models.core.outputs import OutputLocationError  # noqa: E402
from models.networks.checkpoint import build_models, read_checkpoint  # noqa: E402
from models.training.loop import TrainConfig, train, weights_digest  # noqa: E402

FRAMES, CHANNELS, LATENT_HW, IMAGE_HW = 8, 4, (16, 12), (64, 48)


@pytest.fixture(scope="module")
def encoder_dirs(tmp_path_factory):
    from models.networks.tiny_components import save_tiny_encoders

    return save_tiny_encoders(tmp_path_factory.mktemp("encoders"))


def write_projected_dataset(
    root: Path, *, videos: int, seed: int = 0, learnable: bool = False, nan: bool = False, prefix: str = "video"
):
    """The projected layout (`<name>_image.pt`, `<name>.pt`, manifest.jsonl) with random tensors.

    `learnable`: every frame repeats frame 0, so the clean frame the model is given determines the clip.
    """
    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(videos):
        name = f"{prefix}{i:02d}"
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


def read_summaries(log_dir: Path, tag: str) -> list:
    """(step, summary value) pairs of one tag from the TFRecord event files tensorboardX wrote."""
    from tensorboardX.proto.event_pb2 import Event

    values = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            values += [(event.step, value) for value in event.summary.value if value.tag == tag]
    return values


def read_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    return [(step, value.simple_value) for step, value in read_summaries(log_dir, tag)]


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


def train_straight_and_resumed(base, tmp_path) -> dict:
    """Four steps straight, and two then two more resumed: the same weights; the straight run's summary."""
    straight = train(dataclasses.replace(base, output_dir=str(tmp_path / "a"), max_steps=4))
    train(dataclasses.replace(base, output_dir=str(tmp_path / "b"), max_steps=2))
    resumed = train(dataclasses.replace(base, output_dir=str(tmp_path / "b"), max_steps=4))
    assert straight["rank_weight_digests"] == resumed["rank_weight_digests"]
    return straight


@pytest.mark.parametrize("precision", ["fp32", "bf16_master"])  # bf16_master: DDP all-reduces bf16 gradients
def test_two_processes_with_torchrun(tmp_path, encoder_dirs, precision):
    data = write_projected_dataset(tmp_path / "data", videos=8)
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=3, checkpoint_every=2, precision=precision)
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
    # with --batch_size auto: each rank probes, and both train with rank 0's choice
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=1, ema_decay=0.0, batch_size="auto", memory_budget=64.0)
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", "train.py"]
    run = subprocess.run(cmd + to_argv(cfg), cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads((Path(cfg.output_dir) / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and len(set(summary["rank_weight_digests"])) == 1
    ckpt = read_checkpoint(Path(cfg.output_dir) / "latest.pth")
    assert ckpt["batch_size"] == ckpt["step_settings"]["chosen"]["batch_size"] in (1, 2)  # 2 clips per rank at most


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


def test_bf16_master_resumes_exactly_and_saves_fp32_masters_that_load_strictly(tmp_path, encoder_dirs):
    data = write_projected_dataset(tmp_path / "data", videos=3)
    base = tiny_config(
        tmp_path, data, encoder_dirs, batch_size=1, lr=1e-3, precision="bf16_master", grad_checkpointing=True,
        checkpoint_levels="0",
    )  # fmt: skip
    straight = train_straight_and_resumed(base, tmp_path)
    ckpt = read_checkpoint(straight["checkpoint"])
    assert ckpt["train_config"]["precision"] == "bf16_master"
    weights = [*ckpt["net"].values(), *ckpt["adapter"].values(), *ckpt["ema"]["net"].values()]
    moments = [v for state in ckpt["opt"]["state"].values() for v in state.values()]
    assert {t.dtype for t in weights + moments} == {torch.float32}
    # masters, not bf16 weights widened: AdamW's steps of ~1e-3 fall between bf16's values
    assert any(not torch.equal(w, w.bfloat16().float()) for w in ckpt["net"].values())
    unet, adapter = build_models(get_preset("tiny"))
    unet.load_state_dict(ckpt["net"]), adapter.load_state_dict(ckpt["adapter"])  # strict
    assert weights_digest(unet, adapter) == straight["rank_weight_digests"][0]
    assert_same_weights(final_weights(Path(straight["checkpoint"])), final_weights(tmp_path / "b" / "latest.pth"), atol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16_master"])
def test_loss_falls_on_learnable_data(tmp_path, encoder_dirs, precision):
    data = write_projected_dataset(tmp_path / "data", videos=8, learnable=True)
    cfg = tiny_config(
        tmp_path, data, encoder_dirs, batch_size=2, lr=2e-3, max_steps=50, log_every=5, ema_decay=0.0, precision=precision
    )
    train(cfg)
    losses = [v for _, v in read_scalars(Path(cfg.log_dir), "train/loss")]
    assert len(losses) == 10
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.6 * first, f"loss did not fall: {losses}"
    for tag in ("train/lr", "train/grad_norm", "train/samples_per_sec", "train/data_wait_fraction"):
        assert len(read_scalars(Path(cfg.log_dir), tag)) == 10


def test_a_slow_loader_shows_as_time_waiting_for_data(tmp_path, encoder_dirs, monkeypatch, capsys):
    from models.data.dataset import LatentVideoDataset

    data = write_projected_dataset(tmp_path / "data", videos=4)
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=2, log_every=2)
    train(cfg)
    quick = [v for _, v in read_scalars(Path(cfg.log_dir), "train/data_wait_fraction")]
    [samples_per_sec] = [v for _, v in read_scalars(Path(cfg.log_dir), "train/samples_per_sec")]
    item = LatentVideoDataset.__getitem__
    delay = max(0.5, 2 / samples_per_sec)  # loading a clip takes twice what training on it took, however loaded the CPU
    monkeypatch.setattr(LatentVideoDataset, "__getitem__", lambda self, i: (time.sleep(delay), item(self, i))[1])
    slow_cfg = tiny_config(tmp_path / "slow", data, encoder_dirs, max_steps=2, log_every=2)
    train(slow_cfg)
    [slow] = [v for _, v in read_scalars(Path(slow_cfg.log_dir), "train/data_wait_fraction")]
    assert slow > 0.5 > quick[0]
    assert f"{slow:.0%} waiting for data" in capsys.readouterr().out


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


def test_bf16_master_is_a_precision_of_training_not_of_a_teacher(capsys):
    parser = train_script.build_parser()
    assert parser.parse_args(["--precision", "bf16_master"]).precision == "bf16_master"
    with pytest.raises(SystemExit):
        parser.parse_args(["--teacher_precision", "bf16_master"])
    assert "invalid choice: 'bf16_master'" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["bf16", "bf16_master"])  # bf16_master samples from its fp32 masters in bf16
def test_sample_video_from_a_training_image(tmp_path, encoder_dirs, precision):
    data = write_projected_dataset(tmp_path / "data", videos=2)
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=2, sample_every=2, sample_steps=2, precision=precision)
    train(cfg)
    mp4 = Path(cfg.sample_dir) / "step_0000002.mp4"
    assert mp4.is_file() and mp4.stat().st_size > 0
    from models.data.video_io import probe_video

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

    monkeypatch.setattr("models.training.loop.build_models", started)
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
    assert "step_0000002.pth is not a checkpoint but an empty file" in said and "resuming from" in said and "at step 1" in said
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


# ---------------------------------------------------------------------------------------------------- EMA
# TrainConfig.ema_decay: ema = d * ema + (1 - d) * live, with d = min(decay, (1 + n) / (10 + n)) at the n-th update
# (n counted from 0). Expectations are written from that rule and the weights, never read from the EMA object.


def perturbed(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def params(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def assert_params_close(module: torch.nn.Module, expected: dict) -> None:
    actual = dict(module.named_parameters())
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-6, msg=name)


def test_one_ema_update_follows_the_formula_with_its_warm_up():
    from models.training.loop import EMA

    torch.manual_seed(0)
    unet, adapter = build_models(get_preset("tiny"))
    start_unet, start_adapter = params(unet), params(adapter)
    ema = EMA(unet, adapter, decay=0.9999)
    perturbed(unet, 1), perturbed(adapter, 2)
    live_unet, live_adapter = params(unet), params(adapter)
    ema.update(unet, adapter)
    # first update: d = min(0.9999, (1 + 0) / (10 + 0)) = 0.1
    assert_params_close(ema.unet, {k: 0.1 * start_unet[k] + 0.9 * live_unet[k] for k in live_unet})
    assert_params_close(ema.adapter, {k: 0.1 * start_adapter[k] + 0.9 * live_adapter[k] for k in live_adapter})
    # the live weights are read, not changed; the average is no part of any autograd graph
    assert_params_close(unet, live_unet)
    assert all(p.requires_grad for p in unet.parameters())
    assert not any(p.requires_grad or p.grad_fn is not None for p in [*ema.unet.parameters(), *ema.adapter.parameters()])
    # second update: d = 2 / 11
    first = params(ema.unet)
    perturbed(unet, 3)
    ema.update(unet, adapter)
    assert_params_close(ema.unet, {k: 2 / 11 * first[k] + 9 / 11 * v for k, v in params(unet).items()})


def test_ema_decay_is_capped_by_the_configured_decay():
    from models.training.loop import EMA

    torch.manual_seed(0)
    unet, adapter = build_models(get_preset("tiny"))
    start = params(unet)
    ema = EMA(unet, adapter, decay=0.05)  # below the first warm-up value 0.1, so 0.05 applies
    perturbed(unet, 1)
    ema.update(unet, adapter)
    assert_params_close(ema.unet, {k: 0.05 * start[k] + 0.95 * v for k, v in params(unet).items()})

    # long into a run, (1 + n) / (10 + n) passes 0.9999 and the configured decay holds: restored from a checkpoint
    ema = EMA(unet, adapter, decay=0.9999)
    before = params(ema.unet)
    ema.load_state_dict({**ema.state_dict(), "updates": 1_000_000}, path="test.pth")
    perturbed(unet, 2)
    ema.update(unet, adapter)
    assert_params_close(ema.unet, {k: 0.9999 * before[k] + 0.0001 * v for k, v in params(unet).items()})
    assert ema.state_dict()["updates"] == 1_000_001


def test_training_updates_the_ema_by_the_formula_every_step(tmp_path, encoder_dirs):
    data = write_projected_dataset(tmp_path / "data", videos=2)
    cfg = tiny_config(tmp_path, data, encoder_dirs, batch_size=1, lr=1e-2, max_steps=2, checkpoint_every=1)
    train(cfg)
    torch.manual_seed(cfg.seed)  # the initial weights, built as a fresh run builds them
    unet, adapter = build_models(get_preset("tiny"))
    initial = {
        **{f"net.{k}": v for k, v in unet.state_dict().items()},
        **{f"adapter.{k}": v for k, v in adapter.state_dict().items()},
    }

    def live_and_ema(step):
        ckpt = read_checkpoint(Path(cfg.output_dir) / f"step_{step:07d}.pth")
        live = {**{f"net.{k}": v for k, v in ckpt["net"].items()}, **{f"adapter.{k}": v for k, v in ckpt["adapter"].items()}}
        ema = {
            **{f"net.{k}": v for k, v in ckpt["ema"]["net"].items()},
            **{f"adapter.{k}": v for k, v in ckpt["ema"]["adapter"].items()},
        }
        return live, ema

    live1, ema1 = live_and_ema(1)
    live2, ema2 = live_and_ema(2)
    assert any(not torch.equal(live1[k], initial[k]) for k in initial), "the first step did not train"
    assert_same_weights(ema1, {k: 0.1 * initial[k] + 0.9 * live1[k] for k in initial})
    assert_same_weights(ema2, {k: 2 / 11 * ema1[k] + 9 / 11 * live2[k] for k in initial})


# ---------------------------------------------------------------------------------------------------- data order
# The original never called DistributedSampler.set_epoch (SPEC defect 3): every epoch saw the same order. The
# expected orders here come from torch's own DistributedSampler, set to each epoch.


def reference_order(n: int, epoch: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> list[int]:
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def stream(items: list, *, batch_size: int, epoch: int = 0, start_batch: int = 0, rank: int = 0, world_size: int = 1):
    from torch.utils.data import DataLoader

    from models.training.loop import ResumableSampler, epoch_batches

    sampler = ResumableSampler(items, num_replicas=world_size, rank=rank, seed=0)
    loader = DataLoader(items, batch_size=batch_size, sampler=sampler, drop_last=True)
    return epoch_batches(loader, sampler, epoch=epoch, start_batch=start_batch)


def take(batches, count: int) -> list[tuple[int, int, list[int]]]:
    return [(epoch, index, batch.tolist()) for epoch, index, batch in (next(batches) for _ in range(count))]


def test_each_epoch_is_a_new_order_of_the_same_items():
    items = list(range(10))
    got = take(stream(items, batch_size=2), 15)  # three epochs of five batches
    assert [(e, i) for e, i, _ in got] == [(e, i) for e in range(3) for i in range(5)]
    orders = [[x for e, _, batch in got if e == epoch for x in batch] for epoch in range(3)]
    assert orders == [reference_order(10, epoch) for epoch in range(3)]
    assert len({tuple(order) for order in orders}) == 3, "an epoch repeated the previous order"
    assert all(sorted(order) == items for order in orders)


def test_ranks_split_each_epoch_between_them():
    items = list(range(12))
    for epoch in range(2):
        per_rank = []
        for rank in range(3):
            got = take(stream(items, batch_size=2, epoch=epoch, rank=rank, world_size=3), 2)
            per_rank.append([x for _, _, batch in got for x in batch])
            assert per_rank[-1] == reference_order(12, epoch, rank=rank, world_size=3)
        assert sorted(x for order in per_rank for x in order) == items


def test_a_resumed_stream_continues_the_interrupted_epochs_order():
    items = list(range(10))
    uninterrupted = take(stream(items, batch_size=2), 12)
    # interrupted after batch 2 of epoch 1 (8 batches in): the next is batch 3 of epoch 1
    resumed = take(stream(items, batch_size=2, epoch=1, start_batch=3), 4)
    assert resumed == uninterrupted[8:12]
    assert [x for _, _, batch in resumed[:2] for x in batch] == reference_order(10, 1)[6:]


def test_resuming_mid_epoch_loads_only_the_rest_of_that_epoch():
    from torch.utils.data import DataLoader

    from models.training.loop import ResumableSampler, epoch_batches

    loaded = []

    class Recording(list):
        def __getitem__(self, index):
            loaded.append(index)
            return index

    items = Recording(range(6))
    sampler = ResumableSampler(items, num_replicas=1, rank=0, seed=0)
    batches = epoch_batches(DataLoader(items, batch_size=2, sampler=sampler), sampler, epoch=4, start_batch=2)
    assert next(batches)[:2] == (4, 2)
    assert loaded == reference_order(6, 4)[4:]
    assert len(sampler) == 2  # what is left of the epoch
    sampler.set_epoch(5, skip=8)
    assert len(sampler) == 0 and list(sampler) == []


def test_training_shuffles_every_epoch_and_a_resumed_run_continues_the_epoch(tmp_path, encoder_dirs, monkeypatch):
    from models.data.dataset import LatentVideoDataset

    seen = []
    original = LatentVideoDataset.__getitem__

    def recording(self, index):
        item = original(self, index)
        seen.append(item["name"])
        return item

    monkeypatch.setattr(LatentVideoDataset, "__getitem__", recording)
    data = write_projected_dataset(tmp_path / "data", videos=4)
    cfg = tiny_config(tmp_path, data, encoder_dirs, batch_size=1, ema_decay=0.0, lr=1e-3)
    names = [f"video{i:02d}" for i in range(4)]
    order = [[names[i] for i in reference_order(4, epoch, seed=cfg.seed)] for epoch in range(2)]
    assert order[0] != order[1]

    train(dataclasses.replace(cfg, max_steps=6))  # epoch 0, then two batches of epoch 1
    assert seen == order[0] + order[1][:2]
    seen.clear()
    train(dataclasses.replace(cfg, max_steps=8))  # resumed: the rest of epoch 1, in epoch 1's order
    assert seen == order[1][2:]


@pytest.mark.parametrize("part,what", [("net", "EMA SpaceTimeUnet"), ("adapter", "EMA EmbeddingAdapter")])
def test_resuming_an_ema_with_a_missing_key_names_the_part_and_the_file(part, what):
    from models.networks.checkpoint import CheckpointError
    from models.training.loop import EMA

    unet, adapter = build_models(get_preset("tiny"))
    ema = EMA(unet, adapter, decay=0.9999)
    state = ema.state_dict()
    state[part].pop(next(iter(state[part])))
    with pytest.raises(CheckpointError) as refused:
        ema.load_state_dict(state, path="step_0000007.pth")
    assert "step_0000007.pth" in str(refused.value) and f"{what} " in str(refused.value)
    fresh = EMA(unet, adapter, decay=0.9999)
    fresh.load_state_dict({**ema.state_dict(), "updates": 7}, path="step_0000007.pth")
    assert fresh.updates == 7
    del state["updates"]
    state[part] = ema.state_dict()[part]
    fresh.load_state_dict(state, path="old.pth")  # checkpoints written before the count was saved
    assert fresh.updates == 0


def test_rng_states_round_trip_and_are_restored_only_for_the_same_world_size(monkeypatch):
    from models.core.distributed import DistEnv
    from models.training.loop import collect_rng_states, restore_rng_states

    generator = torch.Generator().manual_seed(3)
    torch.manual_seed(4)
    saved = collect_rng_states(generator, torch.device("cpu"))
    assert saved["cuda"] == [None] and len(saved["generator"]) == len(saved["torch"]) == 1
    expected = (torch.rand(3, generator=generator), torch.rand(3))  # what the saved states draw next

    other = torch.Generator().manual_seed(99)
    assert not restore_rng_states(saved, other, DistEnv(world_size=2)), "another world size must not restore"
    assert torch.equal(other.get_state(), torch.Generator().manual_seed(99).get_state())
    assert restore_rng_states(saved, other, DistEnv())
    torch.testing.assert_close((torch.rand(3, generator=other), torch.rand(3)), expected, rtol=0, atol=0)

    # CUDA states: restored on a GPU rank, ignored on a CPU one (a GPU run resumed on a CPU)
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((state, device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([7, int(device.index)]))
    gpu_saved = collect_rng_states(generator, torch.device("cuda", 1))
    assert torch.equal(gpu_saved["cuda"][0], torch.tensor([7, 1]))
    assert restore_rng_states(gpu_saved, other, DistEnv())
    assert calls == []
    assert restore_rng_states(gpu_saved, other, DistEnv(device=torch.device("cuda", 1)))
    assert len(calls) == 1 and torch.equal(calls[0][0], torch.tensor([7, 1])) and calls[0][1] == torch.device("cuda", 1)
    assert restore_rng_states(saved, other, DistEnv(device=torch.device("cuda", 1))) and len(calls) == 1  # none saved


def test_the_ema_copies_buffers_and_counts_every_update():
    from models.training.loop import EMA

    live, other = torch.nn.BatchNorm1d(3), torch.nn.Linear(2, 2)  # BatchNorm's running statistics are buffers
    ema = EMA(live, other, decay=0.9999)
    start = params(ema.unet)
    live.train()(torch.randn(8, 3, generator=torch.Generator().manual_seed(0)) * 5 + 2)  # moves the running stats
    for _ in range(3):
        ema.update(live, other)
    assert ema.updates == 3
    torch.testing.assert_close(ema.unet.running_mean, live.running_mean, rtol=0, atol=0)  # copied, not averaged
    torch.testing.assert_close(ema.unet.running_var, live.running_var, rtol=0, atol=0)
    # the weights did not move, so the average of equal values stays put whatever the decay schedule
    assert_params_close(ema.unet, start)
    before = params(ema.unet)
    perturbed(live, 4)
    ema.update(live, other)  # n = 3: d = 4 / 13
    assert_params_close(ema.unet, {k: 4 / 13 * before[k] + 9 / 13 * v for k, v in params(live).items()})


def test_ema_of_wrapped_modules_averages_the_bare_ones():
    from models.training.loop import EMA

    class Wrapper(torch.nn.Module):  # what DistributedDataParallel looks like from outside: `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

    unet, adapter = torch.nn.Linear(3, 3), torch.nn.Linear(2, 2)
    ema = EMA(Wrapper(unet), torch.compile(adapter), decay=0.5)
    assert isinstance(ema.unet, torch.nn.Linear) and isinstance(ema.adapter, torch.nn.Linear)
    assert not ema.unet.training and set(ema.state_dict()["net"]) == {"weight", "bias"}
    start = params(ema.adapter)
    perturbed(adapter, 1)
    ema.update(Wrapper(unet), torch.compile(adapter))
    assert_params_close(ema.adapter, {k: 0.1 * start[k] + 0.9 * v for k, v in params(adapter).items()})


def test_uneven_ranks_drop_the_remainder_and_the_seed_shapes_the_order():
    from models.training.loop import ResumableSampler

    items = list(range(10))
    per_rank = [list(ResumableSampler(items, num_replicas=3, rank=r, seed=5)) for r in range(3)]
    assert [len(order) for order in per_rank] == [3, 3, 3]  # drop_last: no rank pads with repeated items
    assert len({x for order in per_rank for x in order}) == 9
    assert per_rank == [reference_order(10, 0, seed=5, rank=r, world_size=3) for r in range(3)]
    assert list(ResumableSampler(items, num_replicas=1, rank=0, seed=5)) != reference_order(10, 0, seed=0)
    sampler = ResumableSampler(items, num_replicas=3, rank=1, seed=5)
    assert len(sampler) == 3  # before any set_epoch: the whole of epoch 0
    sampler.set_epoch(2)  # no skip: the whole epoch
    assert len(sampler) == 3 and list(sampler) == reference_order(10, 2, seed=5, rank=1, world_size=3)


def test_resume_setting_picks_the_checkpoint(tmp_path):
    from models.networks.checkpoint import save_checkpoint
    from models.training.loop import resolve_resume

    said = []
    assert resolve_resume("none", tmp_path, said.append) == (None, None) == resolve_resume("", tmp_path, said.append)
    assert resolve_resume("auto", tmp_path, said.append) == (None, None)  # nothing to resume: a fresh run
    config = get_preset("tiny")
    for step in (2, 10):
        save_checkpoint(tmp_path / f"step_{step:07d}.pth", *build_models(config), config, step=step)
    path, ckpt = resolve_resume("auto", tmp_path, said.append)
    assert path == tmp_path / "step_0000010.pth" and ckpt["step"] == 10
    path, ckpt = resolve_resume(str(tmp_path / "step_0000002.pth"), tmp_path, said.append)
    assert path == tmp_path / "step_0000002.pth" and ckpt["step"] == 2
    with pytest.raises(FileNotFoundError, match="step_0000003.pth"):
        resolve_resume(str(tmp_path / "step_0000003.pth"), tmp_path, said.append)
    assert said == []


def test_a_resumed_run_keeps_its_checkpoints_architecture(tmp_path, encoder_dirs):
    from models.training.loop import model_config_for

    fresh = model_config_for(TrainConfig(preset="tiny", vae="my/vae", clip="my/clip"), None)
    assert fresh == get_preset("tiny", vae="my/vae", clip="my/clip")
    assert model_config_for(TrainConfig(preset="tiny", preprocessing="legacy"), None).preprocessing == "legacy"
    saved = get_preset("tiny", dim=8)
    # the flags' preset and encoders do not change a resumed model; a conflicting preprocessing is refused
    assert model_config_for(TrainConfig(preset="paper", vae="other/vae"), {"config": saved}) == saved
    assert model_config_for(TrainConfig(preprocessing="standard"), {"config": saved}) == saved
    with pytest.raises(ValueError, match="--preprocessing legacy conflicts"):
        model_config_for(TrainConfig(preprocessing="legacy"), {"config": saved})


def test_latest_pth_points_at_the_newest_checkpoint(tmp_path):
    from models.training.loop import point_latest, prune_checkpoints

    for step in (1, 2, 3, 4):
        path = tmp_path / f"step_{step:07d}.pth"
        path.write_bytes(b"x")
        point_latest(tmp_path, path)
        assert os.readlink(tmp_path / "latest.pth") == path.name  # relative: the folder can move
    prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pth", "step_0000003.pth", "step_0000004.pth"]
    prune_checkpoints(tmp_path, keep_last=0)  # 0 keeps all
    assert len(list(tmp_path.glob("step_*.pth"))) == 2
    prune_checkpoints(tmp_path, keep_last=1)
    assert [p.name for p in tmp_path.glob("step_*.pth")] == ["step_0000004.pth"]


# ------------------------------------------------------------------------------ what a run tells (issue 16, part 3)


def console_lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def block_rows(text: str, title: str) -> dict[str, str]:
    """The rows `  name   text` of the block that starts with the line `title`, by name."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        name, _, value = line.strip().partition("  ")
        rows[name] = value.strip()
    return rows


def sample_input(log_dir: Path, step: int) -> torch.Tensor:
    """The photo a sample video started from, as TensorBoard holds it: [3, H, W] in [0, 1]."""
    import io

    import numpy as np
    from PIL import Image

    [image] = [value.image for s, value in read_summaries(log_dir, "sample/input") if s == step]
    pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255


def test_a_run_says_what_it_will_do_each_checkpoint_and_validation_and_sums_up(tmp_path, encoder_dirs, capsys):
    data = write_projected_dataset(tmp_path / "data", videos=4)
    held_out = write_projected_dataset(tmp_path / "held_out", videos=3, seed=1, prefix="test")
    cfg = tiny_config(
        tmp_path, data, encoder_dirs, val_dataset_vae=str(held_out), max_steps=3, log_every=2, val_every=2,
        checkpoint_every=2, keep_last=0, sample_every=3, sample_steps=1,
    )  # fmt: skip
    first = train(cfg)
    out = capsys.readouterr().out
    ckpt_dir, log_dir = Path(cfg.output_dir), Path(cfg.log_dir)

    start = block_rows(out, "training")
    assert start["data"] == f"4 clips of {FRAMES} frames in {data}"
    assert start["validation"] == f"3 held-out clips in {held_out}, every 2 steps and at the end"
    assert start["processes"] == "1 on cpu (no process group)"
    assert start["batch"] == "2 per process x 1 accumulated x 1 process = 2 clips per step"
    assert start["steps"] == "2 per epoch; training to step 3"
    assert start["precision"] == "fp32"
    assert start["step"] == "fused AdamW, eager"  # 'auto' fuses on the CPU too
    assert start["checkpoints"] == f"{ckpt_dir}/step_<n>.pth every 2 steps and at the end, every one kept"
    assert start["logs"] == f"tensorboard --logdir {log_dir} (loss every 2 steps)"
    assert start["samples"].endswith("every 3 steps and at the end, from held-out clip test00")
    assert start["start"] == f"a fresh run (no checkpoint in {ckpt_dir})"

    # --no-progress: the loss reaches the console every --log_every steps and at the last
    assert [line.split(":")[0] for line in console_lines(out, "step ") if ": loss " in line] == ["step 2/3", "step 3/3"]
    assert console_lines(out, "step 2: saved") == [f"step 2: saved {ckpt_dir / 'step_0000002.pth'}"]
    assert console_lines(out, "step 3: saved") == [f"step 3: saved {ckpt_dir / 'step_0000003.pth'}"]

    # the validation loss: on the console, in TensorBoard, in the summary; the same numbers everywhere
    val = read_scalars(log_dir, "val/loss")
    assert [step for step, _ in val] == [2, 3] and all(math.isfinite(v) and v > 0 for _, v in val)
    (best_step, best) = min(val, key=lambda sv: sv[1])
    assert console_lines(out, "step 3: validation loss") == [
        f"step 3: validation loss {val[1][1]:.4f} (best {best:.4f}, at step {best_step})"
    ]
    assert (first["val_step"], first["best_val_step"]) == (3, best_step)
    assert first["val_loss"] == pytest.approx(val[1][1]) and first["best_val_loss"] == pytest.approx(best)

    summary = block_rows(out, "training done:")
    title = console_lines(out, "training done:")[0]
    assert title.startswith("training done: step 3, 3 steps in ") and title.endswith(" (epoch 1)")  # counted from 0: the second
    assert first["steps_this_run"] == 3 and first["seconds"] > 0
    assert summary["validation"] == f"{val[1][1]:.4f} at step 3, best {best:.4f} at step {best_step}"
    assert summary["train loss"] == f"{first['loss']:.4f} (the last step's)"
    assert summary["checkpoints"] == f"{ckpt_dir}/, the last {ckpt_dir / 'step_0000003.pth'}"

    # the run's settings in TensorBoard's text tab, as JSON
    [(_, text)] = read_summaries(log_dir, "config/text_summary")
    config = json.loads(text.tensor.string_val[0].decode())
    assert config["train"]["val_dataset_vae"] == str(held_out) and config["model"]["frames"] == FRAMES
    assert config["world_size"] == 1

    # the sample video starts from the first held-out photo, not from a training one
    held_out_photo = torch.load(held_out / "test00_image.pt")
    assert torch.allclose(sample_input(log_dir, 3), held_out_photo, atol=1 / 255 + 1e-6)
    assert console_lines(out, "step 3: sample video") == [
        f"step 3: sample video {Path(cfg.sample_dir) / 'step_0000003.mp4'} from held-out clip test00"
    ]

    # resumed: the start says from where; the best validation loss of the first run is remembered
    resumed = train(dataclasses.replace(cfg, max_steps=4))
    out = capsys.readouterr().out
    assert block_rows(out, "training")["start"] == f"resuming from {ckpt_dir / 'step_0000003.pth'} at step 3 (epoch 1, batch 1)"
    assert resumed["steps_this_run"] == 1 and resumed["val_step"] == 4
    assert resumed["best_val_loss"] == pytest.approx(min(best, resumed["val_loss"]))
    assert read_scalars(log_dir, "val/loss")[2][0] == 4


def test_the_validation_loss_draws_the_same_timesteps_and_noise_for_each_clip_every_time(tmp_path, encoder_dirs):
    from models.data.dataset import LatentVideoDataset
    from models.diffusion.schedule import NoiseSchedule
    from models.networks.encoders import FrozenEncoders
    from models.training.loop import TrainingObjective
    from models.training.validation import validation_loss

    vae, clip = encoder_dirs
    config = get_preset("tiny", vae=str(vae), clip=str(clip))
    encoders = FrozenEncoders.from_config(config)
    torch.manual_seed(0)
    objective = TrainingObjective(*build_models(config), NoiseSchedule()).eval()
    clips = LatentVideoDataset(write_projected_dataset(tmp_path / "held_out", videos=3, seed=1), frames=FRAMES)

    def loss(**changes):
        options = dict(seed=0, batch_size=2, device="cpu", autocast=torch.autocast("cpu", enabled=False)) | changes
        return validation_loss(objective, clips, encoders, **options)

    rng = torch.get_rng_state()
    first = loss()
    assert torch.equal(torch.get_rng_state(), rng), "validation consumed the global random stream"
    torch.manual_seed(123)  # what the training loop did in between does not matter
    assert loss() == first
    # each clip's draws are its own: the batch size changes nothing, every clip counts once
    assert loss(batch_size=1) == pytest.approx(first, rel=1e-6)
    assert loss(seed=1) != pytest.approx(first, rel=1e-3)  # ...and they do come from the seed


def test_progress_bars_refresh_at_most_every_few_seconds_when_not_on_a_terminal():
    import io

    from models.core.progress import NON_TTY_REFRESH_SECONDS, progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    def redraws(stream, steps=200, **kwargs) -> int:
        bar = progress_bar(total=steps, file=stream, desc="train", **kwargs)
        for step in range(steps):  # as the training loop and the quickstart's VAE fit: a step, then its loss
            time.sleep(0.001)
            bar.update()
            bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
        bar.close()
        return stream.getvalue().count("train:")

    assert NON_TTY_REFRESH_SECONDS >= 2
    log = io.StringIO()
    assert redraws(log) <= 3, log.getvalue()  # a log file: the start and the end, whatever the postfix does
    assert "200/200" in log.getvalue() and "loss=0.0050" in log.getvalue()  # ...and the end is the true end
    assert redraws(Terminal()) > 20  # a terminal: redrawn as it goes
    assert redraws(io.StringIO(), steps=3, mininterval=0) >= 4  # an explicit interval still wins


def test_with_a_progress_bar_the_loss_lines_give_way_to_the_bar(tmp_path, encoder_dirs, capsys):
    data = write_projected_dataset(tmp_path / "data", videos=2)
    cfg = tiny_config(tmp_path, data, encoder_dirs, max_steps=2, log_every=1, progress=True, ema_decay=0.0)
    train(cfg)
    captured = capsys.readouterr()
    assert not [line for line in captured.out.splitlines() if ": loss " in line]
    final = captured.err.rsplit("train:", 1)[1]  # stderr is captured here: not a terminal
    assert "2/2" in final and "loss=" in final, captured.err


def test_runs_started_within_one_second_keep_their_own_event_files(tmp_path):
    from models.training.loop import open_log_writer

    first, second = open_log_writer(str(tmp_path)), open_log_writer(str(tmp_path))
    first.add_scalar("val/loss", 1.0, 2)
    second.add_scalar("val/loss", 0.5, 4)
    first.close(), second.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert read_scalars(tmp_path, "val/loss") == [(2, 1.0), (4, 0.5)]
