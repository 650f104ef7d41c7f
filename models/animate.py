"""Animating inputs: photos or dataset frames in, videos on disk out. The work behind `inference.py`, shared by
anything else that animates (the web demo, notebooks).

    pipeline, precision = load_pipeline("checkpoint/FashionFlow_checkpoint.pth")
    for result in animate(pipeline, image_inputs(["shoots/"]), AnimateSettings(precision=precision)):
        print(result.item.path, result.videos or result.error)

`animate` yields one `InputResult` per input as soon as all its samples are written (or it failed): an input
that cannot be read, or whose files cannot be written, is reported and never stops the others. Videos are
batched across inputs (`batch_size`), and the mp4 encoding of one batch runs on a background thread while the
next is denoised. Every video depends only on (seed, input index, sample index).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import RELEASED_CHECKPOINT_URL
from .config import DEFAULT_FPS, PRECISIONS
from .inference_io import BackgroundWriter, InputItem, input_image_path, sample_stem, write_sidecar
from .pipeline import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    LOW_MEMORY_DECODE_CHUNK,
    FashionFlowPipeline,
    resolve_precision,
    sample_generator,
)
from .profiling import memory_kind, peak_memory_mb, reset_peak_memory
from .video_io import (
    ImageReadError,
    VideoReadError,
    count_frames,
    load_image,
    probe_video,
    read_video_frames,
    save_image,
    write_gif,
    write_mp4,
    write_png_frames,
)


@dataclass
class AnimateSettings:
    """How to animate; the defaults are `inference.py`'s."""

    output_dir: str = "result"
    num_videos: int = 1  # per input, each from its own seed
    frames: int | None = None  # default: the model's (70 for the paper)
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    seed: int = 0
    precision: str = "fp32"  # autocast precision when the weights are fp32 (the weights' dtype rules otherwise)
    batch_size: int = 1  # videos denoised together
    decode_chunk_size: int = 8
    fps: int = DEFAULT_FPS
    resize_mode: str = "resize"  # photos of another size: 'resize' stretches (as the original), 'crop' keeps the aspect
    start_frame: int | str = 0  # dataset inputs: the frame to animate, or 'random' (from the seed)
    gif: bool = False
    png_frames: bool = False
    low_memory: bool = False  # encoders in CPU memory while the UNet works, small decode chunks (under 12 GB)
    progress: bool = True
    record: dict = field(default_factory=dict)  # extra sidecar fields, e.g. the checkpoint


@dataclass
class InputResult:
    item: InputItem
    index: int
    videos: list[Path] = field(default_factory=list)  # one mp4 per sample, in sample order
    start_frame: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# ---------------------------------------------------------------------------------------------------- loading


def is_pipeline_folder(path) -> bool:
    """A folder written by `save_pretrained` / `python -m models.convert` (it holds a `model_index.json`)."""
    return (Path(path) / "model_index.json").is_file()


def check_checkpoint(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found (nor a pipeline folder with a model_index.json). Download the released "
            f"checkpoint from {RELEASED_CHECKPOINT_URL} into "
            "checkpoint/, train your own (`python -m models.quickstart` makes a tiny one offline), or pass "
            "--pretrained_model <path>"
        )
    return path


def default_precision(device: torch.device) -> str:
    return "fp16" if device.type == "cuda" else "fp32"


def load_pipeline(
    checkpoint,
    *,
    vae: str | None = None,
    clip: str | None = None,
    preprocessing: str | None = None,
    preset: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    autocast: bool = False,
    compile: bool = False,
    use_ema: bool = True,
) -> tuple[FashionFlowPipeline, str]:
    """The pipeline set up for animating, and the precision it runs in. `checkpoint` is a checkpoint file of either
    format or a pipeline folder (`models.convert`, `save_pretrained`).

    The weights are cast to `precision` (default: fp16 on CUDA, fp32 elsewhere) unless `autocast`, which keeps
    them fp32 under autocast as the original did. `compile` compiles the UNet and the VAE decoder.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(precision or default_precision(device), device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every video has the same shapes: autotuned kernels pay off
    dtype = torch.float32 if autocast else PRECISIONS[precision]
    if is_pipeline_folder(checkpoint):
        options = dict(vae=vae, clip=clip, preprocessing=preprocessing, preset=preset, no_ema=not use_ema)
        given = [f"--{name}" for name, value in options.items() if value]
        if given:
            raise ValueError(
                f"{checkpoint} is a pipeline folder, which fixes its encoders, preprocessing and weights: drop "
                f"{', '.join(given)}, or pass the checkpoint it was converted from"
            )
        pipeline = FashionFlowPipeline.from_pretrained(checkpoint, torch_dtype=dtype).to(device)
    else:
        pipeline = FashionFlowPipeline.from_checkpoint(
            check_checkpoint(checkpoint),
            vae=vae,
            clip=clip,
            preprocessing=preprocessing,
            preset=preset,
            device=device,
            dtype=dtype,
            use_ema=use_ema,
        )
    if compile:
        pipeline.compile()
    return pipeline, precision


# ---------------------------------------------------------------------------------------------------- inputs


def pick_start_frame(item: InputItem, settings: AnimateSettings, index: int, frames: int) -> int:
    """The dataset frame to animate; 'random' keeps the window [start, start + frames) inside the video."""
    if settings.start_frame != "random":
        return settings.start_frame
    total = probe_video(item.path).frames or count_frames(item.path)
    return int(np.random.default_rng([settings.seed, index]).integers(0, max(total - frames, 0) + 1))


def load_input(item: InputItem, settings: AnimateSettings, index: int, size, frames: int) -> tuple[torch.Tensor, int]:
    """(conditioning image [3, H, W], start frame) of one input; raises ImageReadError / VideoReadError."""
    if item.error is not None:
        raise (ImageReadError if item.kind == "image" else VideoReadError)(item.path, item.error)
    if item.kind == "image":
        return load_image(item.path, size=size, resize_mode=settings.resize_mode), 0
    start = pick_start_frame(item, settings, index, frames)
    return read_video_frames(item.path, start=start, count=1, size=size)[0], start


# ---------------------------------------------------------------------------------------------------- outputs


def write_sample(video: torch.Tensor, result: InputResult, sample: int, settings: AnimateSettings, record: dict) -> Path:
    """`<stem>_sample<k>.mp4` (+ gif, png frames) and its sidecar; returns the mp4's path."""
    out = Path(settings.output_dir)
    stem = sample_stem(result.item.stem, sample)
    mp4 = write_mp4(video, out / f"{stem}.mp4", fps=settings.fps)
    if settings.gif:
        write_gif(video, out / f"{stem}.gif", fps=settings.fps)
    if settings.png_frames:
        write_png_frames(video, out / f"{stem}_frames", prefix="frame")
    sidecar = dict(record, source=str(result.item.path), start_frame=result.start_frame, sample_index=sample)
    write_sidecar(out / f"{stem}.json", dict(sidecar, input_index=result.index))
    return mp4


# ---------------------------------------------------------------------------------------------------- the loop


def _samples(pipeline, inputs: Iterable[InputItem], settings: AnimateSettings, frames: int, failed: list):
    """(result, sample index, image) for every sample of every readable input; unreadable ones go to `failed`."""
    for index, item in enumerate(inputs):
        result = InputResult(item, index)
        try:
            image, result.start_frame = load_input(item, settings, index, pipeline.image_size, frames)
            save_image(image, input_image_path(settings.output_dir, item.stem))
        except (ImageReadError, VideoReadError, OSError) as error:
            result.error = str(error)
            failed.append(result)
            continue
        result.videos = [None] * settings.num_videos
        for sample in range(settings.num_videos):
            yield result, sample, image


def _batches(samples, size: int):
    batch = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def animate(pipeline: FashionFlowPipeline, inputs: Iterable[InputItem], settings: AnimateSettings) -> Iterator[InputResult]:
    """Animate every input (`settings.num_videos` videos each); yield each input's result when it is complete."""
    from tqdm.auto import tqdm

    frames = settings.frames or pipeline.model_config.frames
    pipeline.check_num_frames(frames)
    pipeline.enable_encoder_offload(settings.low_memory)
    chunk = min(settings.decode_chunk_size, LOW_MEMORY_DECODE_CHUNK) if settings.low_memory else settings.decode_chunk_size
    record = dict(
        settings.record,
        frames=frames,
        fps=settings.fps,
        seed=settings.seed,
        sampler=settings.sampler,
        steps=settings.steps,
        preprocessing=pipeline.encoders.preprocessing,
        precision=settings.precision,
        weights_dtype=str(pipeline.dtype).removeprefix("torch."),
        low_memory=settings.low_memory,
    )
    failed: list[InputResult] = []
    pending: dict[int, InputResult] = {}  # inputs with samples not written yet
    total = len(inputs) * settings.num_videos if hasattr(inputs, "__len__") else None
    bar = tqdm(total=total, desc="videos", unit="video", disable=not settings.progress)

    def write_batch(videos, batch, record):  # on the writer thread
        for video, (result, sample, _) in zip(videos, batch):
            try:
                result.videos[sample] = write_sample(video, result, sample, settings, record)
            except (OSError, RuntimeError) as error:  # RuntimeError: ffmpeg failed; the message says why
                result.error = f"cannot write its video: {error}"
            bar.update()

    def finished() -> Iterator[InputResult]:
        yield from failed
        failed.clear()
        for index, result in list(pending.items()):
            if result.error is not None or all(v is not None for v in result.videos):
                del pending[index]
                yield result

    with BackgroundWriter() as writer:
        for batch in _batches(_samples(pipeline, inputs, settings, frames, failed), settings.batch_size):
            for result, _, _ in batch:
                pending.setdefault(result.index, result)
            yield from finished()
            reset_peak_memory(pipeline.device)
            videos = pipeline(
                torch.stack([image for _, _, image in batch]),
                num_frames=frames,
                sampler=settings.sampler,
                steps=settings.steps,
                generator=[sample_generator(settings.seed, result.index, sample) for result, sample, _ in batch],
                precision=settings.precision,
                decode_chunk_size=chunk,
                progress=settings.progress,
                output_type="pt",
            ).frames
            peak = {memory_kind(pipeline.device) + "_mb": round(peak_memory_mb(pipeline.device), 1)}
            writer.submit(write_batch, videos, batch, dict(record, **peak))  # waits for the previous batch's files
            yield from finished()
    bar.close()
    yield from finished()
