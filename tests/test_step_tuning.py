"""--memory_budget and --batch_size auto: the probe's measurements, the search, and a run that uses its choice."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from test_training import block_rows, tiny_config, write_projected_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.commands.train import build_parser  # noqa: E402
from models.core.config import get_preset  # noqa: E402
from models.diffusion.schedule import NoiseSchedule  # noqa: E402
from models.networks.checkpoint import build_models, read_checkpoint  # noqa: E402
from models.training.loop import TrainingObjective, train  # noqa: E402
from models.training.step_tuning import (  # noqa: E402
    Probe,
    StepProbe,
    StepSettings,
    checkpointing_choices,
    choose,
    search,
    tune_step_settings,
)

HUGE = 2**50


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    from models.networks.tiny_components import save_tiny_encoders

    return save_tiny_encoders(tmp_path_factory.mktemp("encoders"))


def tiny_probe(frames: int = 8) -> StepProbe:
    torch.manual_seed(0)
    config = get_preset("tiny")
    unet, adapter = build_models(config)
    objective = TrainingObjective(unet, adapter, NoiseSchedule()).train()
    shape = dict(
        channels=config.channels,
        frames=frames,
        latent_size=config.latent_size,
        context_tokens=config.context_tokens,
        context_dim=config.context_dim,
    )
    return StepProbe(
        objective, unet, resident=[objective], shape=shape, autocast=torch.autocast("cpu", enabled=False), device="cpu"
    )


def test_the_probe_measures_what_batch_and_checkpointing_change_and_leaves_no_trace():
    probe = tiny_probe()
    state = {k: v.clone() for k, v in probe.objective.state_dict().items()}
    rng = torch.get_rng_state()
    one, two, two_all = (probe.measure(StepSettings(b, c), HUGE) for b, c in ((1, "off"), (2, "off"), (2, "all")))
    assert all(p.seconds > 0 for p in (one, two, two_all))
    assert two.need_bytes > one.need_bytes  # activations grow with the batch
    assert two_all.need_bytes < two.need_bytes  # recomputation holds fewer at once
    weights = sum(p.numel() * 4 for p in probe.objective.parameters())
    assert two.need_bytes > 3 * weights  # weights, AdamW's two moments and the gradients at least
    assert probe.measure(StepSettings(2, "off"), HUGE).need_bytes == two.need_bytes  # deterministic on the CPU
    assert torch.equal(torch.get_rng_state(), rng)  # its own random streams
    assert all(torch.equal(v, state[k]) for k, v in probe.objective.state_dict().items())
    assert all(p.grad is None for p in probe.objective.parameters())


def test_a_fixed_batch_takes_the_least_recomputation_that_fits_the_budget():
    probe = tiny_probe()
    needs = {c: probe.measure(StepSettings(2, c), HUGE).need_bytes for c in checkpointing_choices(2)}
    assert checkpointing_choices(2) == ["off", "0", "all"] and needs["all"] < needs["off"]

    def chosen(budget):
        return choose(search(probe, batch_size=2, max_batch=8, levels=2, budget=budget), budget)

    assert chosen(needs["off"]) == StepSettings(2, "off")
    assert chosen(needs["off"] - 1).checkpointing in ("0", "all")
    assert chosen(needs["all"]) == StepSettings(2, "all")
    with pytest.raises(ValueError, match=r"no training-step setting fits --memory_budget .* GiB \(the smallest step measured"):
        chosen(needs["all"] - 1)


class FakeProbe:
    """Needs and times from formulas: memory per clip halves with each level recomputed, each costs 10% more time,
    and past 8 clips a step gains nothing per clip."""

    def __init__(self):
        self.tried = []

    def measure(self, settings: StepSettings, budget: int) -> Probe:
        self.tried.append((settings.batch_size, settings.checkpointing))
        recomputed = {"off": 0, "0": 1, "0,1": 2, "all": 3}[settings.checkpointing]
        need = 100 + settings.batch_size * 64 // 2**recomputed
        seconds = (1 + 0.1 * recomputed) * max(settings.batch_size, 8) / 8
        return Probe(settings, need, seconds if need <= budget else None)


def test_auto_batch_doubles_while_it_fits_and_pays_then_recomputes_only_when_memory_was_the_limit():
    probe = FakeProbe()
    probes = search(probe, batch_size=None, max_batch=64, levels=3, budget=100 + 4 * 64)
    # off: 1, 2, 4 fit, 8 does not; level 0 from 4: 8 fits and is the fastest, 16 does not fit; levels 0 and 1
    # from 8: 16 fits but pays nothing per clip, so recomputing more would not help either
    tried = [(1, "off"), (2, "off"), (4, "off"), (8, "off"), (4, "0"), (8, "0"), (16, "0"), (8, "0,1"), (16, "0,1")]
    assert probe.tried == tried
    assert choose(probes, 0) == StepSettings(8, "0")

    probe = FakeProbe()
    search(probe, batch_size=None, max_batch=64, levels=3, budget=HUGE)
    assert probe.tried == [(1, "off"), (2, "off"), (4, "off"), (8, "off"), (16, "off")]  # throughput ended it

    probe = FakeProbe()
    search(probe, batch_size=None, max_batch=4, levels=3, budget=HUGE)
    assert probe.tried == [(1, "off"), (2, "off"), (4, "off")]  # the data allows no more


def test_tuning_says_what_it_measured_and_records_the_choice():
    probe, said = tiny_probe(), []
    record = tune_step_settings(probe, batch_size=2, max_batch=8, levels=2, budget=HUGE, say=said.append)
    assert record["chosen"] == {"batch_size": 2, "checkpointing": "off"} and record["budget_bytes"] == HUGE
    assert [(p["batch_size"], p["checkpointing"]) for p in record["probes"]] == [(2, "off")]
    assert said[0].splitlines()[-1] == "  chosen: batch 2, no checkpointing"
    assert "clips/s" in said[0].splitlines()[1] and not probe.unet.gradient_checkpointing


def test_train_parses_auto_and_refuses_other_words(capsys):
    assert build_parser().parse_args(["--batch_size", "auto"]).batch_size == "auto"
    assert build_parser().parse_args(["--batch_size", "3", "--memory_budget", "1.5"]).memory_budget == 1.5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--batch_size", "many"])
    assert "a whole number or 'auto', not 'many'" in capsys.readouterr().err


def test_an_auto_batch_run_trains_as_its_chosen_flags_would_and_a_resume_keeps_the_choice(tmp_path, encoders, capsys):
    data = write_projected_dataset(tmp_path / "data", videos=1)  # one clip: batch 1 at most, whatever the timings
    plain = train(tiny_config(tmp_path / "plain", data, encoders, max_steps=2, batch_size=1))
    capsys.readouterr()

    cfg = tiny_config(tmp_path / "tuned", data, encoders, max_steps=2, batch_size="auto", memory_budget=64.0)
    tuned = train(cfg)
    out = capsys.readouterr().out
    assert "chosen: batch 1, no checkpointing" in out
    assert block_rows(out, "training")["step settings"] == "chosen for a 64.00 GiB budget out of 1 measured setting"
    assert tuned["loss"] == plain["loss"]  # the probe changed nothing the run depends on
    ckpt = read_checkpoint(Path(cfg.output_dir) / "latest.pth")
    plain_ckpt = read_checkpoint(tmp_path / "plain" / "checkpoint" / "latest.pth")
    assert all(torch.equal(v, plain_ckpt["net"][k]) for k, v in ckpt["net"].items())
    assert ckpt["step_settings"]["chosen"] == {"batch_size": 1, "checkpointing": "off"}
    assert ckpt["train_config"]["batch_size"] == 1 and ckpt["batch_size"] == 1

    resumed = train(dataclasses.replace(cfg, max_steps=3))
    out = capsys.readouterr().out
    assert "step settings of the checkpoint resumed: batch 1, no checkpointing" in out and "measured:" not in out
    assert resumed["step"] == 3


def test_a_budget_no_setting_fits_stops_the_run_before_training(tmp_path, encoders):
    data = write_projected_dataset(tmp_path / "data", videos=4)
    cfg = tiny_config(tmp_path, data, encoders, max_steps=1, memory_budget=0.001)
    with pytest.raises(ValueError, match=r"no training-step setting fits --memory_budget 0.00 GiB"):
        train(cfg)
    assert not list(Path(cfg.output_dir).glob("step_*.pth"))
