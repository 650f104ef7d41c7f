"""The frozen encoders (docs/ORIGINAL.md, "Frozen encoders"): the Stable Diffusion VAE, the CLIP vision tower, and how pixels
are fed to them.

`preprocessing` picks the pixel mapping:
- 'legacy': what the original did and what the released checkpoint was trained on: the VAE sees [0, 1] pixels
  (it was trained on [-1, 1]) and decodes with a plain clamp; CLIP sees transformers 4.36.2's CLIPProcessor
  output for float [0, 1] input, which rescales by 1/255 twice (near-black images).
- 'standard': the VAE sees [-1, 1] and decodes back with (x + 1) / 2; CLIP sees the usual CLIPImageProcessor
  output for uint8 input.
CLIP preprocessing is written out here with PIL and numpy, so it does not change with the transformers version.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import nn

from ..core.config import DEFAULT_CLIP, DEFAULT_VAE, check_preprocessing
from .standins import STANDIN_WARNING, is_standin

if TYPE_CHECKING:
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class EncoderNotFoundError(FileNotFoundError):
    """A frozen encoder is neither a local directory, nor in the Hugging Face cache, nor reachable on the hub."""


# ---------------------------------------------------------------------------------------------------- loading


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read the environment again so a later setting counts
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _looks_like_path(name: str) -> bool:
    # hub ids are "name" or "owner/name"; anything else that does not exist is a missing local directory
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def is_hub_id(name: str) -> bool:
    """Whether `name` means a Hugging Face hub id here: no such local path, and shaped like "name" or "owner/name"."""
    return not Path(name).expanduser().exists() and not _looks_like_path(name)


def _read_config(directory: Path) -> dict | None:
    path = directory / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise EncoderNotFoundError(f"cannot read {path}: {error}; re-save the model with save_pretrained") from error


def _not_found(what: str, name: str, flag: str, reason: str, *, hub_id: bool = False) -> EncoderNotFoundError:
    fix = (
        f"Download it once on a machine with internet access (`hf download {name}` fills the Hugging Face cache) "
        f"or pass a local directory with `{flag} PATH`"
        if hub_id
        else f"Pass a directory written by save_pretrained with `{flag} PATH`"
    )
    return EncoderNotFoundError(f"cannot load the {what} {name!r}: {reason}. {fix}.")


def _load_frozen(cls, name_or_path, *, what: str, flag: str, local_subfolder, hub_subfolders, **load_kwargs):
    """Load `cls` frozen from a local directory (`local_subfolder(dir)` says where in it) or a hub id."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        subfolder = local_subfolder(path)
        directory = path / subfolder if subfolder else path
        try:
            model = cls.from_pretrained(directory, local_files_only=True, **load_kwargs)
        except OSError as error:
            raise _not_found(what, name, flag, f"{directory} does not hold a loadable model ({error})") from error
        if is_standin(directory):
            warnings.warn(f"the {what} at {directory} {STANDIN_WARNING}", stacklevel=3)
    elif _looks_like_path(name):
        raise _not_found(what, name, flag, f"there is no directory {path}")
    else:
        model, errors = None, []
        attempts = [True] if _hub_offline() else [True, False]  # the local cache first: offline machines fail fast
        for local_files_only in attempts:
            for subfolder in hub_subfolders:
                where = dict(subfolder=subfolder) if subfolder else {}
                try:
                    model = cls.from_pretrained(name, local_files_only=local_files_only, **where, **load_kwargs)
                    break
                except OSError as error:
                    errors.append(error)
            if model is not None:
                break
        if model is None:
            hub_error = errors[-len(hub_subfolders)]  # the first layout tried online says most
            reason = "it is not in the local Hugging Face cache" + (
                " and HF_HUB_OFFLINE is set" if _hub_offline() else f" and the hub failed ({hub_error})"
            )
            raise _not_found(what, name, flag, reason, hub_id=True) from errors[-1]
    return model.requires_grad_(False).eval()


def _vae_subfolder(directory: Path) -> str | None:
    config = _read_config(directory)
    if config is not None and config.get("_class_name") == "AutoencoderKL":
        return None
    if (directory / "vae" / "config.json").is_file():
        return "vae"
    raise _not_found(
        "VAE", str(directory), "--vae", f"{directory} holds neither an AutoencoderKL config.json nor a vae/ subfolder"
    )


def _clip_subfolder(directory: Path) -> str | None:
    config = _read_config(directory)
    if config is not None and "_class_name" not in config:  # diffusers configs carry _class_name, transformers' do not
        return None
    for subfolder in ("clip", "image_encoder"):
        if (directory / subfolder / "config.json").is_file():
            return subfolder
    raise _not_found(
        "CLIP vision model",
        str(directory),
        "--clip",
        f"{directory} holds neither a transformers config.json nor a clip/ or image_encoder/ subfolder",
    )


def load_vae(name_or_path: str | Path = DEFAULT_VAE, *, device="cpu", dtype=torch.float32):
    """A frozen diffusers AutoencoderKL from a hub id (its `vae` subfolder, or the repo itself), a VAE directory,
    or a pipeline directory with a `vae/` subfolder."""
    from diffusers import AutoencoderKL

    vae = _load_frozen(
        AutoencoderKL,
        name_or_path,
        what="VAE",
        flag="--vae",
        local_subfolder=_vae_subfolder,
        hub_subfolders=("vae", None),
        dtype=dtype,
        low_cpu_mem_usage=False,
    )
    return vae.to(device)


def load_clip(name_or_path: str | Path = DEFAULT_CLIP, *, device="cpu", dtype=torch.float32):
    """A frozen transformers CLIPVisionModel from a hub id, a CLIP (vision) directory, or a directory with a `clip/`
    or `image_encoder/` subfolder."""
    from transformers import CLIPVisionModel

    clip = _load_frozen(
        CLIPVisionModel,
        name_or_path,
        what="CLIP vision model",
        flag="--clip",
        local_subfolder=_clip_subfolder,
        hub_subfolders=(None,),
        dtype=dtype,
    )
    return clip.to(device)


# ---------------------------------------------------------------------------------------------------- CLIP pixels


def _shortest_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    # transformers' get_resize_output_image_size(default_to_square=False): the long side is truncated
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _resize_and_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: PIL bicubic shortest-side resize, then transformers' center crop."""
    height, width = _shortest_side_size(*image.shape[:2], size)
    resized = np.asarray(Image.fromarray(image).resize((width, height), resample=Image.BICUBIC))
    top, left = (height - size) // 2, (width - size) // 2
    return resized[top : top + size, left : left + size]


def preprocess_clip(images: torch.Tensor, mode: str, size: int = 224) -> torch.Tensor:
    """CLIP pixel values [B, 3, size, size] (float32, on the CPU) from images [B, 3, H, W] in [0, 1].

    'legacy' reproduces transformers 4.36.2's CLIPProcessor given float [0, 1] tensors, as the original did: it
    truncates to uint8 for PIL, resizes, divides by 255, then rescales by 1/255 again before normalising.
    'standard' is CLIPImageProcessor given uint8 images: rounded to uint8, resized, divided by 255 once.
    """
    check_preprocessing(mode)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"preprocess_clip expects images [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
    # float32 as the original's tensors were: x * 255 in float32 is what its truncation saw
    scaled = images.detach().to("cpu", torch.float32).clamp(0, 1) * 255
    pixels = scaled.to(torch.uint8) if mode == "legacy" else scaled.round().to(torch.uint8)
    crops = [_resize_and_center_crop(image, size) for image in rearrange(pixels, "b c h w -> b h w c").numpy()]
    values = torch.from_numpy(rearrange(np.stack(crops), "b h w c -> b c h w").astype(np.float32)) * (1 / 255)
    if mode == "legacy":
        values = values * (1 / 255)
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    return (values - mean) / std


def clip_image_processor(size: int, mode: str):
    """A transformers CLIPImageProcessor that writes down what `preprocess_clip(images, mode, size)` does to uint8
    photos (bicubic shortest side and centre crop to `size`, 'legacy''s second 1/255, CLIP's mean and std), for a
    pipeline folder's `feature_extractor`. The pipeline itself computes CLIP's input with `preprocess_clip`, whose
    numbers are pinned to the original's."""
    from transformers import CLIPImageProcessor

    check_preprocessing(mode)
    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=Image.BICUBIC,
        rescale_factor=1 / 255 if mode == "standard" else 1 / 255**2,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


# ---------------------------------------------------------------------------------------------------- encoders


def vae_downscale(vae_config) -> int:
    """Pixels per latent along each side: every VAE level but the last halves the resolution (SD: 8)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def image_size_for(latent_size, downscale: int) -> tuple[int, int]:
    """(H, W) of the frames whose VAE latents are `latent_size` (h, w): the one place pixels and latents meet."""
    return tuple(n * downscale for n in latent_size)


class FrozenEncoders(nn.Module):
    """The VAE and CLIP vision tower, frozen, with the pixel mapping of `preprocessing` ('legacy' or 'standard').

    Pixels in and out are float [0, 1] tensors [N, 3, H, W]; latents are VAE samples times the VAE's scaling
    factor, [N, C, H / downscale, W / downscale]. `clip` may be None where only the VAE is needed (projection).
    """

    def __init__(self, vae, clip=None, *, preprocessing: str = "legacy"):
        super().__init__()
        self.preprocessing = check_preprocessing(preprocessing)
        self.vae = vae.requires_grad_(False).eval()
        self.clip = clip.requires_grad_(False).eval() if clip is not None else None

    @classmethod
    def from_pretrained(
        cls, *, vae=DEFAULT_VAE, clip=DEFAULT_CLIP, preprocessing: str = "legacy", device="cpu", dtype=torch.float32
    ) -> FrozenEncoders:
        """Load the VAE and (unless `clip` is None) the CLIP vision tower from hub ids or local folders."""
        return cls(
            load_vae(vae, device=device, dtype=dtype),
            load_clip(clip, device=device, dtype=dtype) if clip is not None else None,
            preprocessing=preprocessing,
        )

    @classmethod
    def from_config(cls, config, *, vae=None, clip=None, with_clip: bool = True, **kwargs) -> FrozenEncoders:
        """The encoders a ModelConfig names (`vae` / `clip` override them, e.g. from --vae / --clip flags)."""
        clip = (clip or config.clip) if with_clip else None
        return cls.from_pretrained(vae=vae or config.vae, clip=clip, preprocessing=config.preprocessing, **kwargs)

    def train(self, mode: bool = True) -> FrozenEncoders:
        return super().train(False)  # frozen: stays in eval mode inside a module being trained

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def downscale(self) -> int:
        return vae_downscale(self.vae.config)

    def image_size(self, latent_size) -> tuple[int, int]:
        return image_size_for(latent_size, self.downscale)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def clip_config(self):
        if self.clip is None:
            raise ValueError("these encoders were loaded without CLIP (only the VAE); load them with a CLIP model")
        return self.clip.config

    @property
    def clip_size(self) -> int:
        return int(self.clip_config.image_size)

    @property
    def context_tokens(self) -> int:
        return (self.clip_config.image_size // self.clip_config.patch_size) ** 2 + 1  # patches + class token

    @property
    def context_dim(self) -> int:
        return int(self.clip_config.hidden_size)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        if height % self.downscale or width % self.downscale:
            raise ValueError(
                f"frame size {height}x{width} must divide by the VAE's downscale factor {self.downscale}; "
                "resize the frames (the paper uses 640x512)"
            )
        return height // self.downscale, width // self.downscale

    def check_config(self, config):
        """Raise ValueError if a ModelConfig's CLIP tokens, their width or the latent channels disagree with these
        encoders (without a CLIP, only the latent channels are compared)."""
        found, expected = [self.latent_channels], [config.channels]
        if self.clip is not None:
            found, expected = (
                [self.context_tokens, self.context_dim, *found],
                [config.context_tokens, config.context_dim, *expected],
            )
        if found != expected:
            what = "CLIP tokens, their width and latent channels" if self.clip is not None else "latent channels"
            raise ValueError(
                f"the encoders give {found} ({what}) but the model expects {expected}: pass the VAE and CLIP the model "
                "was trained with (--vae, --clip), or the --preset that matches these encoders"
            )

    def _to_vae_range(self, frames: torch.Tensor) -> torch.Tensor:
        return frames if self.preprocessing == "legacy" else frames * 2 - 1

    def _from_vae_range(self, decoded: torch.Tensor) -> torch.Tensor:
        pixels = decoded if self.preprocessing == "legacy" else (decoded + 1) / 2
        return pixels.clamp(0, 1)

    def _network_input(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on the encoders' device and dtype, laid out contiguously: every VAE and CLIP input passes here.

        torch's CPU GroupNorm loses precision on channels-last input whose group mean is large against its spread
        (docs/ORIGINAL.md, "Details found by comparing"), and a strided view such as `frames_to_tensor`'s is exactly that.
        """
        return tensor.to(device=self.device, dtype=self.dtype, memory_format=torch.contiguous_format)

    @torch.no_grad()
    def encode_posterior(self, frames: torch.Tensor, *, chunk_size: int = 8) -> DiagonalGaussianDistribution:
        """Frames [N, 3, H, W] in [0, 1] -> the VAE's posterior over their unscaled latents, `chunk_size` frames a call."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames to encode must be [N, 3, H, W] in [0, 1], got shape {tuple(frames.shape)}")
        self.latent_size(*frames.shape[-2:])
        pixels = self._to_vae_range(self._network_input(frames))
        moments = [self.vae.encode(chunk).latent_dist.parameters for chunk in pixels.split(chunk_size)]
        # back to the weights' dtype after any autocast, so the posterior noise is drawn in it whatever the context
        return DiagonalGaussianDistribution(torch.cat(moments).to(self.dtype))

    def sample_latents(self, posterior: DiagonalGaussianDistribution, generator: torch.Generator | None = None):
        """One draw from `posterior` for all its frames at once, times the scaling factor: [N, C, h, w]."""
        return posterior.sample(generator) * self.latent_scale

    def encode_frames(self, frames: torch.Tensor, *, generator: torch.Generator | None = None, chunk_size: int = 8):
        """Frames [N, 3, H, W] in [0, 1] -> sampled, scaled latents [N, C, H / downscale, W / downscale].

        The noise of the posterior sample is drawn for all N frames at once, so the result does not depend on
        chunk_size; with one chunk it equals `latent_dist.sample(generator)` exactly.
        """
        return self.sample_latents(self.encode_posterior(frames, chunk_size=chunk_size), generator)

    def decode_latents(
        self, latents: torch.Tensor, *, chunk_size: int = 8, pad_last_chunk: bool = False, to_cpu: bool = False
    ) -> torch.Tensor:
        """Scaled latents [N, C, h, w] -> frames [N, 3, h * downscale, w * downscale] in [0, 1], `chunk_size` a call.

        `pad_last_chunk` decodes a short last chunk padded to full size (a compiled decoder then sees one shape
        and compiles once); `to_cpu` moves each chunk's frames to the CPU as float32, so the accelerator holds
        one chunk of pixels at a time.
        """
        return torch.cat(list(self.decode_chunks(latents, chunk_size=chunk_size, pad_last_chunk=pad_last_chunk, to_cpu=to_cpu)))

    def decode_chunks(
        self, latents: torch.Tensor, *, chunk_size: int = 8, pad_last_chunk: bool = False, to_cpu: bool = False
    ) -> Iterator[torch.Tensor]:
        """`decode_latents`, chunk by chunk: the frames of each VAE call as it finishes."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"decode_latents expects latents [N, {self.latent_channels}, h, w], got shape {tuple(latents.shape)}"
            )
        if chunk_size < 1:
            raise ValueError(f"decode chunk size must be >= 1, got {chunk_size}")
        return self._decoded(latents, chunk_size, pad_last_chunk, to_cpu)

    @torch.no_grad()
    def _decoded(self, latents: torch.Tensor, chunk_size: int, pad_last_chunk: bool, to_cpu: bool) -> Iterator[torch.Tensor]:
        for chunk in (self._network_input(latents) / self.latent_scale).split(chunk_size):
            count = len(chunk)
            if pad_last_chunk and count < chunk_size:
                chunk = torch.cat([chunk, chunk[-1:].expand(chunk_size - count, -1, -1, -1)])
            pixels = self._from_vae_range(self.vae.decode(chunk).sample[:count])
            yield pixels.float().cpu() if to_cpu else pixels

    @torch.no_grad()
    def encode_clip(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> CLIP last_hidden_state [B, context_tokens, context_dim]."""
        pixel_values = preprocess_clip(images, self.preprocessing, size=self.clip_size)  # raises without a CLIP
        return self.clip(pixel_values=self._network_input(pixel_values)).last_hidden_state
