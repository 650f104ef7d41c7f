"""The projected latent dataset and its on-disk contract.

A projected folder (written by `project_latent_space.py`) holds, per clip `<name>`:
- `<name>_image.pt`: the clip's first frame, float `[3, H, W]` in [0, 1] (the conditioning photo);
- `<name>.pt`: the clip's VAE latents, float `[F, C, h, w]`, already scaled by the VAE's scaling factor;
- one JSON line in `manifest.jsonl` (models/core/manifest.py; `manifest.rank<k>.jsonl` while several ranks write) recording the
  clip's source video, start frame, frame count, size, latent shape, preprocessing, VAE and seed.
A folder the original script wrote has the same tensors and no manifest; it is read as 'legacy' preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from einops import rearrange
from torch.utils.data import Dataset

from ..core.files import load_weights_only
from ..core.manifest import MANIFEST_NAME, read_manifest

LEGACY_PREPROCESSING = "legacy"  # what the original's projection fed the VAE (docs/ORIGINAL.md, "Legacy pixel range")


def clip_files(root, name: str) -> tuple[Path, Path]:
    """(`<name>_image.pt`, `<name>.pt`) inside `root`."""
    root = Path(root)
    return root / f"{name}_image.pt", root / f"{name}.pt"


def _pair_original_layout(root: Path) -> list[str]:
    """Names `<name>` with both `<name>.pt` and `<name>_image.pt`, as the original script leaves them."""
    return sorted(p.stem for p in root.glob("*.pt") if (root / f"{p.stem}_image.pt").is_file())


def unet_layout(latents: torch.Tensor) -> torch.Tensor:
    """A batch of stored latents in the UNet's layout."""
    return rearrange(latents, "b f c h w -> b c f h w")


def load_tensor(path: Path) -> torch.Tensor:
    value = load_weights_only(
        path, what="projected tensor", fix="delete it and run project_latent_space.py again to re-project it"
    )
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a tensor; re-project this video")
    return value.float()


def _dims(shape) -> str:
    return ", ".join(map(str, shape))


class LatentVideoDataset(Dataset):
    """Projected clips: `dataset[i]` is `{'image': [3, H, W] in [0, 1], 'latents': [F, C, h, w], 'name': str}`.

    frames: clip length to return (the first `frames` latents, so frame 0 stays the image's frame); every clip
        must hold at least that many. None returns all stored frames (which must then agree across clips).
    preprocessing: when given, the folder must have been projected with it ('legacy' for the original's layout).
    latent_shape, image_size: when given, every clip's latents must be `[F, *latent_shape]` and its image
        `[3, *image_size]` (what the model takes); checked as each clip is read, since a folder without a
        manifest records no shapes.
    """

    def __init__(
        self,
        root,
        *,
        frames: int | None = None,
        preprocessing: str | None = None,
        latent_shape: tuple[int, int, int] | None = None,
        image_size: tuple[int, int] | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"no projected dataset at {self.root}; project the videos first: "
                f"python project_latent_space.py --dataset VIDEO_FOLDER --output_dir {self.root}"
            )
        if frames is not None and frames < 1:
            raise ValueError(f"frames must be at least 1, got {frames}")
        self.frames = frames
        self.latent_shape, self.image_size = latent_shape, image_size
        self.entries = read_manifest(self.root)
        self.names = sorted(self.entries) if self.entries else _pair_original_layout(self.root)
        if not self.names:
            raise ValueError(
                f"{self.root} holds no projected clips (no {MANIFEST_NAME} and no <name>.pt / <name>_image.pt pairs); "
                "run project_latent_space.py with --output_dir pointing here"
            )
        self._check_files()
        self.preprocessing = self._common("preprocessing", LEGACY_PREPROCESSING)
        if preprocessing is not None:
            self._check_preprocessing(preprocessing)
        self._check_frames()

    def _common(self, key: str, default):
        """The value every manifest entry gives `key` (None when they differ); `default` without a manifest."""
        if not self.entries:
            return default
        values = {json.dumps(entry.get(key)) for entry in self.entries.values()}
        return self.entries[self.names[0]].get(key) if len(values) == 1 else None

    def _check_files(self):
        missing = [p for name in self.names for p in clip_files(self.root, name) if not p.is_file()]
        if missing:
            listed = ", ".join(str(p) for p in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(
                f"{self.root}: {MANIFEST_NAME} lists clips whose tensors are missing ({listed}); "
                "run project_latent_space.py again with the same --output_dir to re-project them"
            )

    def _check_preprocessing(self, wanted: str):
        found = sorted({self.entries[n].get("preprocessing") for n in self.names}) if self.entries else [LEGACY_PREPROCESSING]
        if found != [wanted]:
            origin = "" if self.entries else f" (no {MANIFEST_NAME}: taken as the original script's legacy projection)"
            raise ValueError(
                f"{self.root} was projected with preprocessing {', '.join(map(str, found))}{origin} but the model uses "
                f"'{wanted}'; re-project with `project_latent_space.py --preprocessing {wanted} --output_dir NEW_DIR`"
            )

    def _check_frames(self):
        if not self.entries:
            return  # the original layout records nothing: checked per item
        stored = {n: self.entries[n].get("frames") for n in self.names}
        if self.frames is not None:
            short = sorted(n for n, f in stored.items() if not isinstance(f, int) or f < self.frames)
            if short:
                raise ValueError(
                    f"{self.root}: {len(short)} clips ({', '.join(short[:3])}...) hold fewer than {self.frames} frames "
                    f"({stored[short[0]]}); re-project with --frames {self.frames} or ask for fewer frames"
                )
        elif len(set(stored.values())) > 1:
            raise ValueError(
                f"{self.root}: clips hold different frame counts {sorted(set(stored.values()))}; pass frames=N "
                "(train.py --frames N) to take the first N of each"
            )

    def __len__(self) -> int:
        return len(self.names)

    def _check_shapes(self, name: str, image: torch.Tensor, latents: torch.Tensor):
        image_path, latents_path = clip_files(self.root, name)
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"{image_path}: expected an image [3, H, W], got shape {list(image.shape)}; re-project it")
        if latents.ndim != 4:
            raise ValueError(f"{latents_path}: expected latents [F, C, h, w], got shape {list(latents.shape)}; re-project it")
        entry = self.entries.get(name)
        if entry is not None:
            if "size" in entry and list(image.shape[1:]) != list(entry["size"]):
                raise ValueError(f"{image_path}: image is {list(image.shape[1:])}, manifest says {entry['size']}")
            if "latent_shape" in entry and list(latents.shape) != list(entry["latent_shape"]):
                raise ValueError(f"{latents_path}: latents are {list(latents.shape)}, manifest says {entry['latent_shape']}")
        if self.frames is not None and len(latents) < self.frames:
            raise ValueError(
                f"{latents_path} holds {len(latents)} frames, fewer than the {self.frames} asked for; "
                f"re-project with --frames {self.frames} or ask for fewer frames"
            )
        self._check_model_fit(image_path, image, latents_path, latents)

    def _check_model_fit(self, image_path: Path, image: torch.Tensor, latents_path: Path, latents: torch.Tensor):
        """The shapes the model takes, when given (else a mismatch surfaces in the DataLoader, naming no file)."""
        refit = "project the videos again at the model's resolution, or pick the --preset they were projected for"
        if self.latent_shape is not None and tuple(latents.shape[1:]) != tuple(self.latent_shape):
            raise ValueError(
                f"{latents_path}: latents of shape {list(latents.shape)}, but the model takes [F, {_dims(self.latent_shape)}]; "
                f"{refit}"
            )
        if self.image_size is not None and tuple(image.shape[1:]) != tuple(self.image_size):
            raise ValueError(
                f"{image_path}: an image of shape {list(image.shape)}, but the model takes [3, {_dims(self.image_size)}]; {refit}"
            )

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        image_path, latents_path = clip_files(self.root, name)
        image, latents = load_tensor(image_path), load_tensor(latents_path)
        self._check_shapes(name, image, latents)
        if self.frames is not None:
            latents = latents[: self.frames].clone()
        return {"image": image, "latents": latents, "name": name}
