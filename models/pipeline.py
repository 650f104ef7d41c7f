"""`FashionFlowPipeline`: photo(s) in, video(s) out; the one sampling path of the project.

Built from a checkpoint plus the frozen encoders (diffusers style), it serves `inference.py`, the
sample videos of training, the bench and the tests. Steps: `encode_image` (CLIP tokens + VAE latent
-> adapter context, and the clean latent for frame 0), `prepare_latents` (noise), `denoise` (a
diffusers scheduler over the FashionFlow betas, frame 0 re-imposed after every step), `decode_latents`
(VAE, a few frames at a time).

Randomness is per video: each video has its own `torch.Generator` (on the CPU) that draws, in order,
its VAE latent sample(s) of the photo (two in 'legacy', see `image_latents`), its initial noise and any
sampler noise, so a video depends on its seed only, not on the batch it was made in (EDM2's per-sample
generators).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from einops import rearrange
from torch import nn

from .checkpoint import models_from_checkpoint, read_checkpoint
from .config import PRECISIONS, ModelConfig, check_precision, get_preset
from .diffusion import make_scheduler, sample_latents

# Fast default, chosen by bench/bench_inference.py (bench/results/inference_cpu.md): ancestral DDPM over 25
# trailing-spaced steps scored like the original's 1000 steps against ground truth (40x fewer UNet calls),
# while the deterministic DDIM and DPM-Solver++ lost 1.5 to 2 dB at any step count from 10 to 50.
DEFAULT_SAMPLER = "ddpm"
DEFAULT_STEPS = 25
# The original's procedure (docs/ORIGINAL.md, "Sampling"): ancestral DDPM over all 1000 steps.
ORIGINAL_SAMPLER, ORIGINAL_STEPS = "ddpm", 1000
# --low_memory's decode chunk: measured in bench/bench_paper.py to keep a 70-frame 640x512 video under 12 GB
LOW_MEMORY_DECODE_CHUNK = 2


def sample_generator(seed: int, *indices: int) -> torch.Generator:
    """A CPU generator seeded from `(seed, *indices)` (e.g. input and sample index), well mixed by SeedSequence."""
    state = np.random.SeedSequence([seed, *indices]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision actually used: fp16 autocast is a CUDA feature, so on other devices fp16 runs as fp32."""
    check_precision(precision)
    if precision == "fp16" and device.type != "cuda":
        warnings.warn(f"fp16 autocast needs CUDA; running fp32 on {device.type} instead (bf16 also works there)", stacklevel=3)
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str, weights_dtype: torch.dtype = torch.float32):
    """Mixed precision around fp32 networks (the original's fp16 autocast); a no-op for fp32 and for networks
    whose weights are already cast to half precision, where the weights' dtype rules."""
    if precision == "fp32" or weights_dtype != torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def _as_generators(generator, batch: int) -> list[torch.Generator | None]:
    if isinstance(generator, Sequence):
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} images; pass one generator per image")
        return list(generator)
    if generator is None or batch == 1:
        return [generator] * batch
    raise ValueError(
        "one torch.Generator for several images would make each video depend on the batch; "
        "pass a list with one generator per image (see sample_generator)"
    )


class FashionFlowPipeline:
    """`pipeline(images [B, 3, H, W] in [0, 1]) -> video [B, F, 3, H, W] in [0, 1]` (on the CPU)."""

    def __init__(self, unet, adapter, encoders, config: ModelConfig):
        encoders.check_config(config)
        self.unet, self.adapter, self.encoders, self.config = unet, adapter, encoders, config
        self.offload_encoders = False
        self.static_decode_shapes = False  # pad the last decode chunk to full size (set by compile)

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
        from .encoders import FrozenEncoders

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        ckpt = read_checkpoint(path, map_location="cpu")
        config = ckpt["config"]
        if preset is not None and ckpt["format"] == "released":
            config = get_preset(preset)
        elif preset is not None:
            warnings.warn(f"ignoring preset {preset!r}: checkpoint {path} records its own model config", stacklevel=2)
        if preprocessing is not None:
            config = config.replace(preprocessing=preprocessing)
        unet, adapter, config = models_from_checkpoint(ckpt, path=path, use_ema=use_ema, config=config)
        del ckpt
        encoders = FrozenEncoders.from_config(config, vae=vae, clip=clip)
        pipeline = cls(unet.requires_grad_(False), adapter.requires_grad_(False), encoders, config)
        return pipeline.to(device, dtype)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The networks' weight dtype: float32 (autocast may still run them in half) or a half type."""
        return next(self.unet.parameters()).dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> FashionFlowPipeline:
        """Move (and cast) every network; half-precision weights make `precision` at call time redundant."""
        for module in (self.unet, self.adapter, self.encoders.vae, self.encoders.clip):
            # nn.Module.to: diffusers' override warns about fp32-only modules even when the VAE has none
            nn.Module.to(module, device=device, dtype=dtype)
        return self

    def compile(self, *, unet: bool = True, decoder: bool = True, **options) -> FashionFlowPipeline:
        """torch.compile the UNet and/or the VAE decoder (the two costs of a video); options go to torch.compile."""
        if unet:
            self.unet = torch.compile(self.unet, **options)
        if decoder:
            self.encoders.vae.decoder = torch.compile(self.encoders.vae.decoder, **options)
            self.static_decode_shapes = True
        return self

    def enable_encoder_offload(self, enabled: bool = True) -> FashionFlowPipeline:
        """Keep the VAE and CLIP in CPU memory and bring them to the accelerator only while they work."""
        self.offload_encoders = enabled
        self.encoders.to("cpu" if enabled else self.device)
        return self

    @contextlib.contextmanager
    def encoders_on_device(self):
        if not self.offload_encoders:
            yield self.encoders
            return
        self.encoders.to(self.device)
        try:
            yield self.encoders
        finally:
            self.encoders.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of input photos and output frames: the latent size times the VAE's spatial factor."""
        return self.encoders.image_size(self.config.latent_size)

    def check_num_frames(self, num_frames: int) -> None:
        multiple = self.config.frame_multiple
        if num_frames < 2 or num_frames % multiple:
            raise ValueError(
                f"frames must be a multiple of {multiple} (the UNet's temporal downsampling) and at "
                f"least 2 (frame 0 is the photo), got {num_frames}"
            )

    def check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != self.image_size:
            h, w = self.image_size
            raise ValueError(
                f"images must be [B, 3, {h}, {w}] in [0, 1] for this model, got {tuple(images.shape)}; "
                "resize them first (video_io.load_image does)"
            )

    def image_latents(self, image: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`image [1, 3, H, W]` -> (the adapter's VAE latent, the clean frame-0 latent), each [1, C, h, w].

        'legacy' draws the posterior twice, in this order, as the original's inference did (docs/ORIGINAL.md, "Details found
        by comparing"); 'standard' draws once, so the adapter sees the very latent that frame 0 is held to.
        """
        posterior = self.encoders.encode_posterior(image)
        adapter_latent = self.encoders.sample_latents(posterior, generator)
        if self.encoders.preprocessing == "standard":
            return adapter_latent, adapter_latent
        return adapter_latent, self.encoders.sample_latents(posterior, generator)

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`images [B, 3, H, W]` -> (context [B, N, D], clean frame-0 latent [B, C, h, w])."""
        images = images.to(self.device)
        generators = _as_generators(generator, len(images))
        with self.encoders_on_device():
            drawn = [self.image_latents(image[None], g) for image, g in zip(images, generators)]
            clip_hidden = self.encoders.encode_clip(images)
        adapter_latents, first_frame = (torch.cat(latents).to(self.device) for latents in zip(*drawn))
        context = self.adapter(clip_hidden.to(self.device, self.dtype), adapter_latents.to(self.dtype))
        return context, first_frame

    def prepare_latents(self, batch: int, num_frames: int, *, generator=None, dtype=torch.float32) -> torch.Tensor:
        """Initial noise [B, C, F, h, w], drawn on the CPU per video so every device gives the same video."""
        shape = (self.config.channels, num_frames, *self.config.latent_size)
        noise = [torch.randn(shape, generator=g, dtype=dtype) for g in _as_generators(generator, batch)]
        return torch.stack(noise).to(self.device)

    @torch.inference_mode()
    def denoise(
        self,
        latents: torch.Tensor,
        context: torch.Tensor,
        image_latent: torch.Tensor,
        *,
        sampler: str,
        steps: int,
        generator=None,
        precision: str = "fp32",
        callback: Callable | None = None,
    ) -> torch.Tensor:
        """Run `sampler` for `steps` from noise `latents` [B, C, F, h, w]; scheduler state stays in fp32."""
        scheduler = make_scheduler(sampler, steps)

        dtype = self.dtype
        context = context.to(dtype)

        def eps_model(x, t):
            with autocast(self.device, precision, dtype):
                return self.unet(x.to(dtype), context, timestep=t).float()

        generators = _as_generators(generator, len(latents))
        if all(g is None for g in generators):
            generators = None
        return sample_latents(
            eps_model, latents, scheduler, first_frame=image_latent.float(), generator=generators, callback=callback
        )

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor, chunk_size: int = 8, *, precision: str = "fp32") -> torch.Tensor:
        """[B, C, F, h, w] -> frames [B, F, 3, H, W] in [0, 1] on the CPU, `chunk_size` frames per VAE call."""
        flat = rearrange(latents, "b c f h w -> (b f) c h w")
        with self.encoders_on_device() as encoders, autocast(self.device, precision, encoders.dtype):
            frames = encoders.decode_latents(flat, chunk_size=chunk_size, pad_last_chunk=self.static_decode_shapes, to_cpu=True)
        return rearrange(frames, "(b f) c h w -> b f c h w", b=len(latents))

    @torch.inference_mode()
    def __call__(
        self,
        images: torch.Tensor,
        *,
        num_frames: int | None = None,
        sampler: str = DEFAULT_SAMPLER,
        steps: int = DEFAULT_STEPS,
        generator=None,
        precision: str = "fp32",
        decode_chunk_size: int = 8,
        progress: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        loop: bool = False,
        overlap: int | None = None,
    ) -> torch.Tensor:
        """Videos for `images [B, 3, H, W]` in [0, 1]: float [B, F, 3, H, W] in [0, 1] on the CPU.

        `generator`: None, one torch.Generator (batch of one) or a list with one per image.
        `callback(step, total, latents)` runs after every denoising step.
        More frames than the model's trained length, or `loop` (the last frame leads into the first), sample
        windows sharing `overlap` frames (models/long_video.py).
        """
        from tqdm.auto import tqdm

        num_frames = num_frames or self.config.frames
        self.check_num_frames(num_frames)
        self.check_images(images)
        precision = resolve_precision(precision, self.device)
        generators = _as_generators(generator, len(images))
        if loop or num_frames > self.config.frames:
            from .long_video import sample_long_video

            return sample_long_video(
                self, images, generators, window=self.config.frames, num_frames=num_frames, loop=loop, overlap=overlap,
                sampler=sampler, steps=steps, precision=precision, decode_chunk_size=decode_chunk_size,
                progress=progress, callback=callback,
            )  # fmt: skip
        with autocast(self.device, precision, self.dtype):
            context, image_latent = self.encode_image(images, generators)
        latents = self.prepare_latents(len(images), num_frames, generator=generators)
        bar = tqdm(total=steps, desc=f"{sampler} steps", unit="step", leave=False, disable=not progress)

        def on_step(i, total, x):
            bar.update()
            if callback is not None:
                callback(i, total, x)

        try:
            latents = self.denoise(
                latents,
                context,
                image_latent,
                sampler=sampler,
                steps=steps,
                generator=generators,
                precision=precision,
                callback=on_step,
            )
        finally:
            bar.close()
        return self.decode_latents(latents, decode_chunk_size, precision=precision)
