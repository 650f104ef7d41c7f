"""Checkpoint reading and writing.

Two formats are read:
- released: the authors' `torch.save({'net', 'adapter'[, 'opt']})`; it means the paper configuration
  and `legacy` preprocessing (the released weights were trained on [0, 1] VAE input).
- ours: the same keys plus `format`, `version`, `config` (a `ModelConfig` dict, preprocessing
  included) and whatever training state the trainer adds (optimizer, EMA, step, RNG states...).
Our exported `.safetensors` files (weights under `net.` / `adapter.` with the config in the metadata)
load through the same `load_checkpoint`.

Writes are atomic: a temporary file in the same directory is flushed to disk and renamed over the
target, so a crash mid-write leaves the previous file intact.

Reads never run code from a file: `torch.load(weights_only=True)` refuses pickled Python objects, and we
say why rather than pass on torch's advice to switch that protection off.
"""

from __future__ import annotations

import codecs
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..core.config import ModelConfig
from ..core.files import CheckpointError, atomic_torch_save, atomic_write, load_weights_only, unreadable_reason
from .adapter import EmbeddingAdapter
from .unet import SpaceTimeUnet

FORMAT = "fashionflow"
VERSION = 1
RELEASED_CHECKPOINT_PATH = "checkpoint/FashionFlow_checkpoint.pth"  # where the README's download puts it
# the direct download (dl=1); Dropbox's dl=0 links serve a web page instead of the file
RELEASED_CHECKPOINT_URL = (
    "https://www.dropbox.com/scl/fi/p9fv7o3j7ti0yu2umsgmv/FashionFlow_checkpoint.pth?rlkey=mqsto9i4ujh6xhvab0e2s6n7d&dl=1"
)


def _strip_module_prefix(state: dict) -> dict:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def _describe_zip(path: Path) -> str | None:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name.rpartition("/")[2] == "data.pkl" for name in names):  # torch.save's layout: <archive>/data.pkl
        return None
    listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"a zip archive of something else ({listed or 'empty'})"


def _describe_text(head: bytes) -> str | None:
    if b"\x00" in head:
        return None
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut by the read is no error
    except UnicodeDecodeError:
        return None
    if "<html" in text.lower() or text.lstrip().lower().startswith("<!doctype html"):
        return "an HTML page: the download link served its web page, not the file"
    return f"a text file starting {text.strip()[:60]!r}"


def _what_else(path: Path) -> str | None:
    """What `path` is when its first bytes show it cannot be a checkpoint, else None (torch.load then decides)."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        return "an empty file (an interrupted download?)"
    return _describe_zip(path) if zipfile.is_zipfile(path) else _describe_text(head)


def refuse_non_checkpoint(path: Path) -> None:
    """Raise CheckpointError naming what `path` is, and where the real file is, when it is no checkpoint at all."""
    what = _what_else(path)
    if what is not None:
        raise CheckpointError(
            f"{path} is not a checkpoint but {what}. Download the released FashionFlow_checkpoint.pth with its direct "
            f"link, e.g. `curl -L -o {path} '{RELEASED_CHECKPOINT_URL}'`, or pass a checkpoint written by train.py"
        )


def read_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint file of either format into a dict with `net`, `adapter`, `config` (ModelConfig) and `format`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; download the released FashionFlow_checkpoint.pth into checkpoint/ "
            "or pass the path of one of your own checkpoints"
        )
    refuse_non_checkpoint(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path, map_location)
    raw = load_weights_only(
        path, map_location, what="checkpoint", fix="is it a complete FashionFlow checkpoint? Copy or download it again"
    )
    if not isinstance(raw, dict) or "net" not in raw or "adapter" not in raw:
        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path} is not a FashionFlow checkpoint: expected keys 'net' and 'adapter', found {keys}")
    ckpt = dict(raw)
    ckpt["net"] = _strip_module_prefix(raw["net"])
    ckpt["adapter"] = _strip_module_prefix(raw["adapter"])
    if raw.get("format") == FORMAT:
        ckpt["config"] = ModelConfig.from_dict(raw["config"])
    else:
        ckpt["format"] = "released"
        ckpt["config"] = ModelConfig(preprocessing="legacy")
    return ckpt


def _read_safetensors(path: Path, map_location) -> dict:
    from safetensors import safe_open

    device = str(map_location) if map_location is not None else "cpu"
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(meta["config"]) if meta.get("format") == FORMAT and "config" in meta else None
    except Exception as error:  # safetensors' own error type, or a config that is not JSON
        raise CheckpointError(
            f"cannot read {path}: not a complete .safetensors file ({unreadable_reason(error)}); export it again "
            "(train.py --export_safetensors) or copy it again"
        ) from error
    if config is None:
        raise CheckpointError(f"{path} is not a FashionFlow safetensors export (no '{FORMAT}' config in its metadata)")
    split = {"net": {}, "adapter": {}}
    for key, value in tensors.items():
        part, _, name = key.partition(".")
        if part not in split:
            raise CheckpointError(f"{path}: unexpected tensor {key!r}; expected names under 'net.' or 'adapter.'")
        split[part][name] = value
    return {**split, "format": FORMAT, "config": ModelConfig.from_dict(config)}


def load_state_strict(module: nn.Module, state: dict, *, what: str, path) -> None:
    """`load_state_dict(strict=True)` with an error that lists missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:

        def head(items):
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = [
            f"{name} ({len(items)}): {head(items)}"
            for name, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
            if items
        ]
        raise CheckpointError(
            f"checkpoint {path} does not fit the {what} built from its config: "
            + "; ".join(parts)
            + ". Was it written for another model configuration?"
        )
    module.load_state_dict(state, strict=True)


def build_models(config: ModelConfig) -> tuple[SpaceTimeUnet, EmbeddingAdapter]:
    return SpaceTimeUnet.from_model_config(config), EmbeddingAdapter.from_model_config(config)


def load_weights(unet: nn.Module, adapter: nn.Module, weights: dict, *, path, what: str = "") -> None:
    """Load `weights['net']` and `weights['adapter']` (a checkpoint, or its EMA) strictly into built models."""
    load_state_strict(unet, weights["net"], what=f"{what}SpaceTimeUnet", path=path)
    load_state_strict(adapter, weights["adapter"], what=f"{what}EmbeddingAdapter", path=path)


def models_from_checkpoint(ckpt: dict, *, path, use_ema: bool = True, config: ModelConfig | None = None):
    """`(unet, adapter, config)` built from a read checkpoint's config (or `config`) and loaded with its EMA
    weights when it has them and `use_ema`, else its live ones; in eval mode, on the CPU."""
    config = config or ckpt["config"]
    unet, adapter = build_models(config)
    load_weights(unet, adapter, ckpt["ema"] if use_ema and isinstance(ckpt.get("ema"), dict) else ckpt, path=path)
    return unet.eval(), adapter.eval(), config


@dataclass
class WeightsSource:
    """Where a pipeline's UNet and adapter weights come from, as its model card tells it (`pipeline.hub.model_card`)."""

    checkpoint: str  # the file's name
    released: bool  # the authors' released checkpoint format
    ema: bool = False  # our checkpoints: EMA weights (else the live ones)
    step: int | None = None
    train_data: str | None = None  # our checkpoints: the projected latents they were trained on (--dataset_vae)


def weights_source(ckpt: dict, path, *, use_ema: bool) -> WeightsSource:
    """What a read checkpoint says about its weights: its format, and for ours the step, EMA and training data."""
    if ckpt["format"] == "released":
        return WeightsSource(Path(path).name, released=True)
    train_config = ckpt.get("train_config") or {}
    return WeightsSource(
        Path(path).name,
        released=False,
        ema=use_ema and isinstance(ckpt.get("ema"), dict),
        step=ckpt.get("step"),
        train_data=train_config.get("dataset_vae"),
    )


def load_checkpoint(path, map_location="cpu", *, use_ema: bool = True, config_overrides: dict | None = None):
    """Build and load `(unet, adapter, config)` from a checkpoint file of either format (EMA weights when present)."""
    ckpt = read_checkpoint(path, map_location)
    config = ckpt["config"].replace(**(config_overrides or {}))
    unet, adapter, config = models_from_checkpoint(ckpt, path=path, use_ema=use_ema, config=config)
    return unet.to(map_location), adapter.to(map_location), config


def unwrap(module: nn.Module) -> nn.Module:
    """The bare module behind DistributedDataParallel / torch.compile wrappers."""
    module = getattr(module, "module", module)
    return getattr(module, "_orig_mod", module)


def checkpoint_dict(unet: nn.Module, adapter: nn.Module, config: ModelConfig, **extra) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "net": unwrap(unet).state_dict(),
        "adapter": unwrap(adapter).state_dict(),
        **extra,
    }


def save_checkpoint(path, unet: nn.Module, adapter: nn.Module, config: ModelConfig, **extra) -> Path:
    """Atomically write our format; `extra` holds training state (opt, ema, step, rng, ...), all weights-only loadable."""
    return atomic_torch_save(checkpoint_dict(unet, adapter, config, **extra), path)


def save_released_format(path, unet: nn.Module, adapter: nn.Module) -> Path:
    """Write the authors' layout `{'net', 'adapter'}` (for sharing with the original code)."""
    return atomic_torch_save({"net": unwrap(unet).state_dict(), "adapter": unwrap(adapter).state_dict()}, path)


def export_safetensors(path, unet: nn.Module, adapter: nn.Module, config: ModelConfig) -> Path:
    from safetensors.torch import save_file

    tensors = {f"net.{k}": v.contiguous() for k, v in unwrap(unet).state_dict().items()}
    tensors.update({f"adapter.{k}": v.contiguous() for k, v in unwrap(adapter).state_dict().items()})
    meta = {"format": FORMAT, "version": str(VERSION), "config": json.dumps(config.to_dict())}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def checkpoint_candidates(directory) -> list[Path]:
    """Our `*.pth` files in `directory`, newest first: by training step (file name `step_<n>.pth`), else by mtime.

    A `latest.pth` link whose target is gone is left out.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    candidates = [p for p in directory.glob("*.pth") if not p.name.startswith(".") and p.exists()]

    def step_of(p: Path):
        digits = p.stem.rsplit("_", 1)[-1]
        return (int(digits) if digits.isdigit() else -1, p.stat().st_mtime)

    return sorted(candidates, key=step_of, reverse=True)


def latest_checkpoint(directory) -> Path | None:
    """The newest of `checkpoint_candidates(directory)`, or None."""
    return next(iter(checkpoint_candidates(directory)), None)
