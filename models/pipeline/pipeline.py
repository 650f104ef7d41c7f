"""`FashionFlowPipeline`: photo(s) in, video(s) out; the one sampling path of the project, as a diffusers pipeline.

Its components are `unet`, `adapter`, `vae`, `image_encoder` (CLIP vision), `feature_extractor` and `scheduler`, with
`preprocessing` in its config, so `save_pretrained` writes a `model_index.json` folder that `from_pretrained` reads
back (`python -m models convert` makes one from a checkpoint); `from_checkpoint` loads a `.pth` / `.safetensors`
checkpoint. It serves `inference.py`, the sample videos of training, the bench and the tests. Steps: `encode_image`
(CLIP tokens + VAE latent -> adapter context, and the clean latent for frame 0), `prepare_latents` (noise),
`denoise` (a diffusers scheduler over the FashionFlow betas, frame 0 re-imposed after every step),
`decode_latents` (VAE, a few frames at a time).

Randomness is per video: each video has its own `torch.Generator` (on the CPU) that draws, in order,
its VAE latent sample(s) of the photo (two in 'legacy', see `image_latents`), its initial noise and any
sampler noise, so a video depends on its seed only, not on the batch it was made in (EDM2's per-sample
generators). On a GPU the DDPM sampler's noise is drawn a step ahead in a thread and copied without blocking
(`diffusion.PrefetchedNoise`): the same numbers, without a host synchronisation per step.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from einops import rearrange
from torch import nn
from transformers import CLIPVisionModel
from transformers.image_processing_base import ImageProcessingMixin

from ..core.config import ModelConfig, check_preprocessing, get_preset
from ..core.distributed import pick_device
from ..core.precision import autocast, resolve_precision
from ..core.progress import progress_bar
from ..data.video_io import frames_to_uint8, photos_to_tensor
from ..diffusion.samplers import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    check_scheduler,
    make_scheduler,
    scheduler_from_record,
    set_steps,
)
from ..diffusion.sampling import sample_latents
from ..networks.adapter import EmbeddingAdapter
from ..networks.checkpoint import WeightsSource, models_from_checkpoint, read_checkpoint, weights_source
from ..networks.compiling import compile_decoder, compile_unet
from ..networks.encoders import FrozenEncoders, clip_image_processor
from ..networks.unet import SpaceTimeUnet
from .hub import model_card, push_folder
from .long_video import collect_frames, long_video_chunks
from .remote_code import package_module, write_remote_code

# --low_memory's decode chunk: measured in bench/bench_paper.py to keep a 70-frame 640x512 video under 12 GB
LOW_MEMORY_DECODE_CHUNK = 2
OUTPUT_TYPES = ("pil", "np", "pt", "latent", None)  # None: frames only to `on_frames`
LARGE_OUTPUT_BYTES = 4 * 2**30  # videos kept in memory past this are announced before sampling starts
ENCODERS = ("vae", "image_encoder")
HUB_OPTIONS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")


def sample_generator(seed: int, *indices: int) -> torch.Generator:
    """A CPU generator seeded from `(seed, *indices)` (e.g. input and sample index), well mixed by SeedSequence."""
    state = np.random.SeedSequence([seed, *indices]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _as_generators(generator, batch: int) -> list[torch.Generator | None]:
    if isinstance(generator, Sequence):
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} videos; pass one generator per video")
        return list(generator)
    if generator is None or batch == 1:
        return [generator] * batch
    raise ValueError(
        f"one torch.Generator for {batch} videos would make each video depend on the batch; pass a list with one "
        "generator per video, video k of image i at index i * num_videos_per_image + k (see sample_generator)"
    )


def _loaded_from(model, default: str) -> str:
    """Where a diffusers or transformers model was loaded from; `default` for one built in memory."""
    return str(getattr(model.config, "_name_or_path", None) or default)


def postprocess_video(frames: torch.Tensor, output_type: str):
    """Frames [B, F, 3, H, W] in [0, 1] as diffusers returns videos: 'pt' as they are, 'np' [B, F, H, W, 3] floats,
    'pil' one list of PIL images per video (rounded to uint8); None stays None."""
    if output_type in ("pt", None):
        return frames
    if output_type == "np":
        return rearrange(frames, "b f c h w -> b f h w c").numpy()
    return [[PIL.Image.fromarray(frame) for frame in frames_to_uint8(video)] for video in frames]


def output_bytes(batch: int, frames: int, size, output_type: str | None) -> int:
    """What keeping the videos in memory as `output_type` takes at least: float32 frames ('pil': their uint8 images
    too); 0 for None and 'latent'."""
    if output_type in (None, "latent"):
        return 0
    pixels = batch * frames * 3 * size[0] * size[1]
    return pixels * 4 + (pixels if output_type == "pil" else 0)


@dataclass
class FashionFlowPipelineOutput(BaseOutput):
    """`frames`: per `output_type`, a list of PIL-image lists (one per video), an array [B, F, H, W, 3] or a tensor
    [B, F, 3, H, W] of floats in [0, 1], or the latents [B, C, F, h, w] ('latent')."""

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor


class FashionFlowPipeline(DiffusionPipeline):
    """`pipe(image) -> FashionFlowPipelineOutput(frames=...)`: one video per image (or `num_videos_per_image`).

    `feature_extractor` records CLIP's input settings for tools that read the folder; CLIP's input itself comes from
    `encoders.preprocess_clip` in the `preprocessing` mode. `pipe.config` is diffusers' record of the components
    and `preprocessing`; `model_config` is the `ModelConfig` they make up.
    """

    model_cpu_offload_seq = "image_encoder->adapter->unet->vae"
    _optional_components = ["feature_extractor"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        unet: SpaceTimeUnet,
        adapter: EmbeddingAdapter,
        vae: AutoencoderKL,
        image_encoder: CLIPVisionModel,
        feature_extractor: ImageProcessingMixin | None,
        scheduler: SchedulerMixin,
        preprocessing: str = "legacy",
        default_steps: int = DEFAULT_STEPS,
    ):
        super().__init__()
        self.register_modules(
            unet=unet,
            adapter=adapter,
            vae=vae,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            scheduler=scheduler,
        )
        # default_steps: what a call without num_inference_steps takes (a distilled student records its own)
        self.register_to_config(preprocessing=check_preprocessing(preprocessing), default_steps=default_steps)
        self.encoders.check_config(self.model_config)
        self._offloaded: frozenset[str] = frozenset()  # networks that wait in CPU memory between stages
        self._offload_device: torch.device | None = None
        self._interrupt = False
        self.static_decode_shapes = False  # pad the last decode chunk to full size (set by compile)
        self.weights_source: WeightsSource | None = None  # what the model card says of the weights (from_checkpoint's)

    def __setattr__(self, name, value):
        # every way a scheduler arrives (the constructor, from_pretrained, `pipe.scheduler = ...`) passes here, so
        # one that cannot sample the UNet is refused by name when assigned, not by a shape error steps later
        if name == "scheduler" and value is not None:
            check_scheduler(value)
        super().__setattr__(name, value)

    # ------------------------------------------------------------------------------------------------ building

    @classmethod
    def from_parts(cls, unet, adapter, encoders: FrozenEncoders, scheduler=None, sampler: dict | None = None):
        """A pipeline around networks built in memory (what training's sample videos use) and loaded encoders; the
        scheduler is `sampler`'s (a checkpoint's record, `samplers.scheduler_from_record`), by default ancestral
        DDPM over the FashionFlow betas."""
        if sampler is not None:
            scheduler, default_steps = scheduler_from_record(sampler), sampler["steps"]
        else:
            default_steps = DEFAULT_STEPS
        return cls(
            unet=unet,
            adapter=adapter,
            vae=encoders.vae,
            image_encoder=encoders.clip,
            feature_extractor=clip_image_processor(encoders.clip_size, encoders.preprocessing),
            scheduler=scheduler or make_scheduler(DEFAULT_SAMPLER, DEFAULT_STEPS),
            preprocessing=encoders.preprocessing,
            default_steps=default_steps,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path,
        *,
        vae: str | None = None,
        clip: str | None = None,
        preprocessing: str | None = None,
        preset: str | None = None,
        device=None,
        dtype: torch.dtype | None = None,
        use_ema: bool = True,
    ) -> FashionFlowPipeline:
        """Load a checkpoint of either format and its encoders (default: the ones its config names).

        A released-format file carries no config and means the paper's; `preset` names another one for such
        files (e.g. 'tiny'). Checkpoints of ours record their config, and `preset` is ignored for them.
        """
        device = pick_device(device)
        ckpt = read_checkpoint(path, map_location="cpu")
        config = ckpt["config"]
        if preset is not None and ckpt["format"] == "released":
            config = get_preset(preset)
        elif preset is not None:
            warnings.warn(f"ignoring preset {preset!r}: checkpoint {path} records its own model config", stacklevel=2)
        if preprocessing is not None:
            config = config.replace(preprocessing=preprocessing)
        unet, adapter, config = models_from_checkpoint(ckpt, path=path, use_ema=use_ema, config=config)
        source, sampler = weights_source(ckpt, path, use_ema=use_ema), ckpt.get("sampler")
        del ckpt
        encoders = FrozenEncoders.from_config(config, vae=vae, clip=clip)
        pipeline = cls.from_parts(unet.requires_grad_(False), adapter.requires_grad_(False), encoders, sampler=sampler)
        pipeline.weights_source = source
        return pipeline.to(device, dtype)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> FashionFlowPipeline:
        """diffusers' loading of a pipeline folder or hub id (`dtype=`, `local_files_only=`, ...).

        Networks are built, then loaded, as `load_vae` does (`low_cpu_mem_usage=False`): accelerate's empty-weights
        loading would keep the file's unaligned tensors (see `ModelConfigFields`), and ours fit in memory twice.
        A hub id is fetched first (`huggingface_hub.snapshot_download`) and loaded as a folder: diffusers' own hub
        path would run the repository's code, which this class replaces by the package's.
        """
        kwargs.setdefault("low_cpu_mem_usage", False)
        if not Path(pretrained_model_name_or_path).is_dir():
            from huggingface_hub import snapshot_download

            hub = {name: kwargs[name] for name in HUB_OPTIONS if name in kwargs}
            pretrained_model_name_or_path = snapshot_download(str(pretrained_model_name_or_path), **hub)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' `load_config`, with the names a folder's own code goes by (`remote_code`) mapped to this
        package's modules, so a clone or an installed copy loads any folder with its own code, trusting none."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(config.get("_class_name"), list) and package_module(config["_class_name"][0]):
            config["_class_name"] = config["_class_name"][1]
        for name, value in config.items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and package_module(value[0]):
                config[name] = [package_module(value[0]), value[1]]
        return loaded

    # ------------------------------------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, repo_id: str | None = None, **kwargs):
        """diffusers' `save_pretrained`, then our model card as README.md (`hub.model_card`; `repo_id` is the
        name its loading code uses, default the folder). `push_to_hub` uploads the folder to `repo_id` (default: the
        folder's name), card included, where diffusers' own would replace it by a generic one; `private`, `token`,
        `commit_message` and `create_pr` go to the upload."""
        upload = {name: kwargs.pop(name) for name in ("private", "token", "commit_message", "create_pr") if name in kwargs}
        super().save_pretrained(save_directory, *args, **kwargs)
        index_path = Path(save_directory) / "model_index.json"
        index = json.loads(index_path.read_text()) | write_remote_code(save_directory)
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        repo_id = repo_id or (Path(save_directory).name if push_to_hub else str(save_directory))
        (Path(save_directory) / "README.md").write_text(model_card(self, self.weights_source, repo_id=repo_id))
        if push_to_hub:
            return push_folder(Path(save_directory), repo_id, **upload)

    def push_to_hub(self, repo_id: str, commit_message=None, private=None, token=None, create_pr=False, **save_options):
        """diffusers' `push_to_hub` (the pipeline saved to a temporary folder, which is uploaded to the hub repo
        `repo_id`, created if missing), with the model card `python -m models convert --push_to_hub` uploads; the
        commit's URL. `save_options` (e.g. `variant`) go to `save_pretrained`."""
        upload = dict(commit_message=commit_message, private=private, token=token, create_pr=create_pr)
        with tempfile.TemporaryDirectory() as folder:
            return self.save_pretrained(folder, push_to_hub=True, repo_id=repo_id, **upload, **save_options)

    # ------------------------------------------------------------------------------------------------ what it is

    @property
    def default_steps(self) -> int:
        """The steps of a call that names none: the checkpoint's record (a student's few), else DEFAULT_STEPS."""
        return self.config.get("default_steps", DEFAULT_STEPS)

    @property
    def model_config(self) -> ModelConfig:
        """The `ModelConfig` the components make up: the networks' registered fields, `preprocessing`, and where the
        encoders were loaded from (ModelConfig's defaults for encoders built in memory)."""
        unet, adapter = self.unet.model_config, self.adapter.model_config
        unet_fields = self.unet.config_fields()
        clashes = [
            f"{name}: unet {getattr(unet, name)} vs adapter {getattr(adapter, name)}"
            for name in self.adapter.config_fields()
            if name in unet_fields and getattr(unet, name) != getattr(adapter, name)
        ]
        if clashes:
            raise ValueError(
                f"the unet and adapter were built for different models ({'; '.join(clashes)}); load both from one checkpoint"
            )
        return adapter.replace(
            **{name: getattr(unet, name) for name in unet_fields},
            preprocessing=self.config.preprocessing,
            vae=_loaded_from(self.vae, adapter.vae),
            clip=_loaded_from(self.image_encoder, adapter.clip),
        )

    @property
    def encoders(self) -> FrozenEncoders:
        """The `vae` and `image_encoder` with the pixel mapping of `preprocessing` (a view: a swapped component shows)."""
        return FrozenEncoders(self.vae, self.image_encoder, preprocessing=self.config.preprocessing)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of input photos and output frames: the latent size times the VAE's spatial factor."""
        return self.encoders.image_size(self.model_config.latent_size)

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` in a `callback_on_step_end` to end the denoising there (diffusers' way)."""
        return self._interrupt

    # ------------------------------------------------------------------------------------------------ placement

    @property
    def _execution_device(self) -> torch.device:
        return self._offload_device if self._offloaded else self.device

    def to(self, device=None, dtype: torch.dtype | None = None) -> FashionFlowPipeline:
        """Move (and cast) every network: `to("cuda")`, `to(torch.float16)` or `to(device, dtype)`; half-precision
        weights make `precision` at call time redundant."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        for name in self.model_cpu_offload_seq.split("->"):
            # nn.Module.to: diffusers' override warns about fp32-only modules even when the VAE has none
            nn.Module.to(getattr(self, name), device=device, dtype=dtype)
        return self

    def _keep_in_cpu_memory(self, names: Iterable[str], device) -> None:
        """The networks `names` wait in CPU memory and come to `device` only while they work; the others go there."""
        self._offloaded, self._offload_device = frozenset(names), torch.device(device)
        for name in self.model_cpu_offload_seq.split("->"):
            nn.Module.to(getattr(self, name), "cpu" if name in self._offloaded else self._offload_device)

    def enable_encoder_offload(self, enabled: bool = True) -> FashionFlowPipeline:
        """Keep the VAE and CLIP in CPU memory and bring them to the accelerator only while they work."""
        self._keep_in_cpu_memory(ENCODERS if enabled else (), self._execution_device)
        return self

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None):
        """diffusers' model CPU offload, done with plain module moves (accelerate is not needed): every network waits
        in CPU memory and works on `device` (default: CUDA device `gpu_id`, else 0) while its stage runs."""
        if device is None and not torch.cuda.is_available():
            raise ValueError(
                "enable_model_cpu_offload brings the networks to an accelerator and found no CUDA device; pass device="
            )
        device = torch.device(device or "cuda")
        if gpu_id is not None:
            device = torch.device(device.type, gpu_id)
        self._keep_in_cpu_memory(self.model_cpu_offload_seq.split("->"), device)
        return self

    @contextlib.contextmanager
    def components_on_device(self, *names: str):
        """The offloaded networks among `names` on the execution device for the block, back in CPU memory after."""
        moving = [getattr(self, name) for name in names if name in self._offloaded]
        for module in moving:
            nn.Module.to(module, self._execution_device)
        try:
            yield
        finally:
            for module in moving:
                nn.Module.to(module, "cpu")
            if moving and self._execution_device.type == "cuda":
                torch.cuda.empty_cache()

    @contextlib.contextmanager
    def encoders_on_device(self):
        with self.components_on_device(*ENCODERS):
            yield self.encoders

    def compile(
        self, *, unet: bool = True, decoder: bool = True, regional: bool = False, graphs: bool = False, **options
    ) -> FashionFlowPipeline:
        """torch.compile the UNet and/or the VAE decoder (the two costs of a video); options go to torch.compile.

        Each network whole, or with `regional` their repeated blocks in place, and with `graphs` the UNet's calls as
        CUDA graphs (models/networks/compiling.py). A compiled decoder decodes padded chunks of one size
        (`static_decode_shapes`), so it compiles once.
        """
        if unet:
            self.unet = compile_unet(self.unet, regional=regional, graphs=graphs, **options)
        if decoder:
            compile_decoder(self.vae, regional=regional, **options)
            self.static_decode_shapes = True
        return self

    # ------------------------------------------------------------------------------------------------ stages

    def is_windowed(self, num_frames: int, loop: bool = False) -> bool:
        """Whether the video is sampled in windows of the trained length (models/pipeline/long_video.py)."""
        return loop or num_frames > self.model_config.frames

    def check_num_frames(self, num_frames: int, *, loop: bool = False) -> None:
        """One window must suit the UNet's temporal downsampling; a windowed video may have any length, as its
        windows are all the trained length (which does) and the video is cut after the last."""
        if self.is_windowed(num_frames, loop):
            if num_frames < 1:
                raise ValueError(f"frames must be at least 1, got {num_frames}")
            return
        multiple = self.model_config.frame_multiple
        if num_frames < 2 or num_frames % multiple:
            raise ValueError(
                f"frames must be a multiple of {multiple} (the UNet's temporal downsampling) and at "
                f"least 2 (frame 0 is the photo), got {num_frames}"
            )

    def image_latents(self, image: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`image [1, 3, H, W]` -> (the adapter's VAE latent, the clean frame-0 latent), each [1, C, h, w].

        'legacy' draws the posterior twice, in this order, as the original's inference did (docs/ORIGINAL.md, "Details found
        by comparing"); 'standard' draws once, so the adapter sees the very latent that frame 0 is held to.
        """
        encoders = self.encoders
        posterior = encoders.encode_posterior(image)
        adapter_latent = encoders.sample_latents(posterior, generator)
        if encoders.preprocessing == "standard":
            return adapter_latent, adapter_latent
        return adapter_latent, encoders.sample_latents(posterior, generator)

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`images [B, 3, H, W]` -> (context [B, N, D], clean frame-0 latent [B, C, h, w])."""
        device = self._execution_device
        images = images.to(device)
        generators = _as_generators(generator, len(images))
        with self.components_on_device(*ENCODERS, "adapter"):
            drawn = [self.image_latents(image[None], g) for image, g in zip(images, generators)]
            clip_hidden = self.encoders.encode_clip(images)
            adapter_latents, first_frame = (torch.cat(latents).to(device) for latents in zip(*drawn))
            context = self.adapter(clip_hidden.to(device, self.dtype), adapter_latents.to(self.dtype))
        return context, first_frame

    def prepare_latents(self, batch: int, num_frames: int, *, generator=None, dtype=torch.float32) -> torch.Tensor:
        """Initial noise [B, C, F, h, w], drawn on the CPU per video so every device gives the same video."""
        config = self.model_config
        shape = (config.channels, num_frames, *config.latent_size)
        noise = [torch.randn(shape, generator=g, dtype=dtype) for g in _as_generators(generator, batch)]
        return torch.stack(noise).to(self._execution_device)

    def _step_end_inputs(self, callback_on_step_end, tensor_inputs: Sequence[str]) -> Sequence[str]:
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = sorted(set(tensor_inputs) - set(self._callback_tensor_inputs))
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may only name {self._callback_tensor_inputs}, got {unknown}")
        return tensor_inputs

    @torch.inference_mode()
    def denoise(
        self,
        latents: torch.Tensor,
        context: torch.Tensor,
        image_latent: torch.Tensor,
        *,
        sampler: str | None = None,
        steps: int = DEFAULT_STEPS,
        generator=None,
        precision: str = "fp32",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> torch.Tensor:
        """Denoise `steps` from noise `latents` [B, C, F, h, w]: `sampler` names a fresh scheduler over the FashionFlow
        betas, None runs `self.scheduler`; scheduler state stays in fp32.

        After every step `callback(step, total, latents)` runs, then `callback_on_step_end(pipe, step, t, {"latents":
        ...})` as in diffusers: the latents it returns carry on, and `pipe._interrupt = True` ends denoising there.
        """
        tensor_inputs = self._step_end_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        scheduler = make_scheduler(sampler, steps) if sampler is not None else set_steps(self.scheduler, steps)
        device, dtype = self._execution_device, self.dtype
        context = context.to(dtype)

        def eps_model(x, t):
            with autocast(device, precision, dtype):
                return self.unet(x.to(dtype), context, timestep=t).float()

        def on_step(i, total, x):
            if callback is not None:
                callback(i, total, x)
            if callback_on_step_end is not None:
                outputs = callback_on_step_end(self, i, scheduler.timesteps[i], {"latents": x} if tensor_inputs else {})
                return outputs.get("latents")

        generators = _as_generators(generator, len(latents))
        if all(g is None for g in generators):
            generators = None
        self._interrupt = False
        with self.components_on_device("unet"):
            return sample_latents(
                eps_model,
                latents,
                scheduler,
                first_frame=image_latent.float(),
                generator=generators,
                callback=on_step,
                interrupt=lambda: self._interrupt,
            )

    def decode_latents(self, latents: torch.Tensor, chunk_size: int = 8, *, precision: str = "fp32") -> torch.Tensor:
        """[B, C, F, h, w] -> frames [B, F, 3, H, W] in [0, 1] on the CPU, `chunk_size` frames per VAE call."""
        return collect_frames(self.decode_chunks(latents, chunk_size, precision=precision), len(latents))

    @torch.inference_mode()
    def decode_chunks(
        self, latents: torch.Tensor, chunk_size: int = 8, *, precision: str = "fp32"
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """`decode_latents` as each VAE call finishes: (video index, its next frames [n, 3, H, W] on the CPU), each
        video's frames in order (a call whose frames span two videos comes as two pieces)."""
        frames = latents.shape[2]
        flat = rearrange(latents, "b c f h w -> (b f) c h w")
        done = 0
        with self.components_on_device("vae"):
            encoders = self.encoders
            with autocast(self._execution_device, precision, encoders.dtype):
                chunks = encoders.decode_chunks(
                    flat, chunk_size=chunk_size, pad_last_chunk=self.static_decode_shapes, to_cpu=True
                )
                for pixels in chunks:
                    while len(pixels):
                        video, offset = divmod(done, frames)
                        piece, pixels = pixels[: frames - offset], pixels[frames - offset :]
                        done += len(piece)
                        yield video, piece

    # ------------------------------------------------------------------------------------------------ the call

    def check_inputs(
        self, *, num_frames: int, loop: bool = False, output_type: str, height, width, num_videos_per_image: int
    ) -> None:
        self.check_num_frames(num_frames, loop=loop)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_videos_per_image < 1:
            raise ValueError(f"num_videos_per_image must be at least 1, got {num_videos_per_image}")
        h, w = self.image_size
        if (height or h, width or w) != (h, w):
            raise ValueError(
                f"this model makes {h}x{w} videos (its adapter is sized for {self.model_config.latent_size} latents); "
                f"got height={height}, width={width}: leave them out, photos of any size are resized"
            )

    def _warn_if_large(self, batch: int, num_frames: int, output_type: str | None) -> None:
        size = output_bytes(batch, num_frames, self.image_size, output_type)
        if size > LARGE_OUTPUT_BYTES:
            warnings.warn(
                f"keeping {batch} video(s) of {num_frames} frames at {self.image_size[0]}x{self.image_size[1]} in memory "
                f"as output_type={output_type!r} will take {size / 2**30:.1f} GiB; pass output_type=None and "
                "on_frames=<a function of (video index, frames)> to stream the frames instead (inference.py does)",
                stacklevel=3,
            )

    def _progress_bar(self, total: int, progress: bool | None):
        """The denoising bar: `set_progress_bar_config`'s options (diffusers') on models/core/progress.py's bar, which in a
        log refreshes every few seconds instead of every step."""
        options = dict(desc="denoising", unit="step", leave=False) | getattr(self, "_progress_bar_config", {})
        if progress is not None:
            options["disable"] = not progress
        return progress_bar(total=total, **options)

    def _long_video(self, images, generators, *, latents, output_type, callback_on_step_end, **options):
        """(video index, frames) chunks of videos longer than the trained length or looping, window by window."""
        unsupported = dict(latents=latents is not None, output_type=output_type == "latent")
        unsupported["callback_on_step_end"] = callback_on_step_end is not None
        if any(unsupported.values()):
            names = ", ".join(name for name, given in unsupported.items() if given)
            raise ValueError(
                f"{names} cannot be used with a video longer than the model's {self.model_config.frames} frames or "
                "a looping one (it is sampled in windows); leave them out, or ask for at most that many frames"
            )
        return long_video_chunks(self, images, generators, window=self.model_config.frames, **options)

    @torch.inference_mode()
    def __call__(
        self,
        image,
        *,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        num_videos_per_image: int = 1,
        decode_chunk_size: int = 8,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        height: int | None = None,
        width: int | None = None,
        resize_mode: str = "resize",
        sampler: str | None = None,
        steps: int | None = None,
        precision: str = "fp32",
        progress: bool | None = None,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        loop: bool = False,
        overlap: int | None = None,
        on_frames: Callable[[int, torch.Tensor], None] | None = None,
    ):
        """Videos of `image`: a PIL image, numpy array or float tensor in [0, 1] (`[3, H, W]` or `[B, 3, H, W]`), or a
        list of them, of any size (resized as `inference.py` resizes photos, `resize_mode` 'resize' or 'crop').

        `num_frames` (default: the model's), `num_inference_steps` (25; `steps` is the same), `sampler` (None: the
        pipeline's `scheduler`; or one of `SAMPLERS`, over the FashionFlow betas), `generator` (None, one
        for one video, or a list with one per video, image i's k-th video at i * num_videos_per_image + k),
        `latents` (the initial noise [B * num_videos_per_image, C, F, h, w]), `precision` (autocast for fp32
        weights), `progress` (None: `set_progress_bar_config` decides), `callback(step, total, latents)` and
        `callback_on_step_end` (see `denoise`). More frames than the model's trained length, or `loop` (the last
        frame leads into the first), sample windows sharing `overlap` frames (models/pipeline/long_video.py), which
        are decoded window by window as they are done.

        `on_frames(video, frames)` gets each video's frames (float [n, 3, H, W] on the CPU, in order) as each VAE call
        finishes, e.g. to encode them while the rest decode; with `output_type=None` they are kept nowhere else, so a
        windowed video of any length takes the memory of a few windows (`inference.py` streams to its files so).
        Returns `FashionFlowPipelineOutput(frames=...)` (see `postprocess_video`), or `(frames,)` without `return_dict`;
        keeping more than `LARGE_OUTPUT_BYTES` of frames is announced (a warning) before sampling starts.
        """
        num_frames = self.model_config.resolve_frames(num_frames)
        if None not in (num_inference_steps, steps) and num_inference_steps != steps:
            raise ValueError(f"num_inference_steps={num_inference_steps} and steps={steps} name the same setting; pass one")
        steps = next((n for n in (num_inference_steps, steps) if n is not None), self.default_steps)
        self.check_inputs(
            num_frames=num_frames, loop=loop, output_type=output_type, height=height, width=width,
            num_videos_per_image=num_videos_per_image,
        )  # fmt: skip
        images = photos_to_tensor(image, size=self.image_size, resize_mode=resize_mode)
        images = images.repeat_interleave(num_videos_per_image, dim=0)  # [B * n, 3, H, W]
        device = self._execution_device
        precision = resolve_precision(precision, device)
        generators = _as_generators(generator, len(images))
        self._warn_if_large(len(images), num_frames, output_type)
        if self.is_windowed(num_frames, loop):
            chunks = self._long_video(
                images, generators, num_frames=num_frames, loop=loop, overlap=overlap, sampler=sampler, steps=steps,
                precision=precision, decode_chunk_size=decode_chunk_size, progress=progress, callback=callback,
                latents=latents, output_type=output_type, callback_on_step_end=callback_on_step_end,
            )  # fmt: skip
            frames = collect_frames(chunks, len(images), on_frames, keep=output_type is not None)
            frames = postprocess_video(frames, output_type)
            return FashionFlowPipelineOutput(frames=frames) if return_dict else (frames,)
        with autocast(device, precision, self.dtype):
            context, image_latent = self.encode_image(images, generators)
        if latents is None:
            latents = self.prepare_latents(len(images), num_frames, generator=generators)
        else:
            expected = (len(images), self.model_config.channels, num_frames, *self.model_config.latent_size)
            if tuple(latents.shape) != expected:
                raise ValueError(
                    f"latents must be the initial noise [B * n, C, F, h, w] = {list(expected)}, got {list(latents.shape)}"
                )
            latents = latents.to(device, torch.float32)

        with self._progress_bar(steps, progress) as bar:

            def on_step(i, total, x):
                bar.update()
                if callback is not None:
                    callback(i, total, x)

            latents = self.denoise(
                latents,
                context,
                image_latent,
                sampler=sampler,
                steps=steps,
                generator=generators,
                precision=precision,
                callback=on_step,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            )
        if output_type == "latent":
            frames = latents
        else:
            chunks = self.decode_chunks(latents, decode_chunk_size, precision=precision)
            frames = postprocess_video(collect_frames(chunks, len(images), on_frames, keep=output_type is not None), output_type)
        return FashionFlowPipelineOutput(frames=frames) if return_dict else (frames,)
