"""Animating inputs: photos or dataset frames in, videos on disk out. The work behind `inference.py`, shared by
anything else that animates (the web demo, notebooks).

    pipeline, precision = load_pipeline(ModelSource("checkpoint/FashionFlow_checkpoint.pth"))
    for result in animate(pipeline, image_inputs(["shoots/"]), AnimateSettings(precision=precision)):
        print(result.item.path, result.videos or result.error)

`animate` yields one `InputResult` per input as soon as all its samples are written (or it failed): an input
that cannot be read, or whose files cannot be written, is reported and never stops the others. Videos are
batched across inputs (`batch_size`), and the mp4 encoding of one batch runs on a background thread while the
next is denoised. Every video depends only on (seed, input index, sample index), or with `seed_by='name'` on
(seed, input name, sample index), so ranks can split the inputs (`rank`, `world_size`) and a rerun can keep what
an earlier run finished: a video whose files are all there and whose sidecar (written last) records the same
settings and source is skipped, not made again (`overwrite` makes it again).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..core.config import DEFAULT_FPS, SEED_BY
from ..core.distributed import rank_share
from ..core.files import leftover_temp_files_in
from ..core.manifest import same_setting
from ..core.profiling import memory_kind, peak_memory_mb, reset_peak_memory
from ..core.progress import progress_bar
from ..data.video_io import (
    ImageReadError,
    Mp4Writer,
    PngFrames,
    VideoReadError,
    count_frames,
    frames_to_uint8,
    load_image,
    not_a_file_reason,
    probe_video,
    read_video_frames,
    save_image,
    write_gif,
)
from ..diffusion.samplers import sampler_name
from ..networks.compiling import check_compile_mode
from ..pipeline.long_video import check_overlap
from ..pipeline.model_source import ModelSource
from ..pipeline.pipeline import LOW_MEMORY_DECODE_CHUNK, FashionFlowPipeline, sample_generator
from .inference_io import (
    BackgroundWriter,
    InputItem,
    input_image_path,
    read_sidecar,
    sample_outputs,
    write_sidecar,
)

WRITES_IN_FLIGHT = 4  # decode chunks waiting for the encoder at most: the decoder runs ahead of it by that much


@dataclass
class AnimateSettings:
    """How to animate; the defaults are `inference.py`'s."""

    output_dir: str = "result"
    num_videos: int = 1  # per input, each from its own seed
    frames: int | None = None  # default: the model's (70 for the paper)
    sampler: str | None = None  # default: the model's own (ancestral DDPM; a distilled student's LCM)
    steps: int | None = None  # default: the model's (25; a distilled student's few)
    seed: int = 0
    seed_by: str = "index"  # or 'name': an input's videos do not change when inputs before it come or go
    precision: str = "fp32"  # autocast precision when the weights are fp32 (the weights' dtype rules otherwise)
    batch_size: int = 1  # videos denoised together
    decode_chunk_size: int = 8
    fps: int = DEFAULT_FPS
    resize_mode: str = "resize"  # photos of another size: 'resize' stretches (as the original), 'crop' keeps the aspect
    start_frame: int | str = 0  # dataset inputs: the frame to animate, or 'random' (from the seed)
    loop: bool = False  # the last frame leads back into the first (models/pipeline/long_video.py)
    overlap: int | None = None  # frames shared by consecutive windows (default: models/pipeline/long_video.py's)
    gif: bool = False
    png_frames: bool = False
    low_memory: bool = False  # encoders in CPU memory while the UNet works, small decode chunks (under 12 GB)
    progress: bool = True
    record: dict = field(default_factory=dict)  # extra sidecar fields, e.g. the checkpoint; a rerun must match them
    overwrite: bool = False  # make every video again, even one an earlier run completed with these settings
    rank: int = 0  # this process animates inputs rank, rank + world_size, ... (the other ranks the rest)
    world_size: int = 1


@dataclass
class SampleResult:
    """One video of an input: written by this run, found complete from an earlier one (`skipped`), or failed."""

    video: Path | None = None  # the mp4
    sidecar: dict | None = None  # what its sidecar records
    skipped: bool = False
    error: str | None = None

    @property
    def settled(self) -> bool:
        return self.video is not None or self.error is not None


@dataclass
class InputResult:
    item: InputItem
    index: int
    samples: list[SampleResult] = field(default_factory=list)  # one per video, in sample order
    start_frame: int | None = None  # None when the input was not read (all its videos found complete, or unreadable)
    error: str | None = None
    identity: dict = field(default_factory=dict)  # what its sidecars record of it (`input_identity`)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def videos(self) -> list[Path]:
        """Its mp4s, written now or found complete, in sample order."""
        return [s.video for s in self.samples if s.video is not None]

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.samples)

    def fail(self, error: str) -> None:
        """The input cannot be animated: `error` for it and for every video of it not found complete."""
        self.error = error
        for sample in self.samples:
            if not sample.settled:
                sample.error = error


# ---------------------------------------------------------------------------------------------------- loading


def load_pipeline(source: ModelSource, *, compile: str | None = None) -> tuple[FashionFlowPipeline, str]:
    """The pipeline of `source` set up for animating, and the precision it runs in. `compile` ('full', 'regional' or 'graphs',
    models/networks/compiling.py) compiles the UNet and the VAE decoder."""
    source = source.resolved()
    if torch.device(source.device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # every video has the same shapes: autotuned kernels pay off
    pipeline = source.load()
    if compile:
        mode = check_compile_mode(compile)
        pipeline.compile(regional=mode == "regional", graphs=mode == "graphs")
    return pipeline, source.precision


# ---------------------------------------------------------------------------------------------------- inputs


def seed_key(item: InputItem, index: int, settings: AnimateSettings) -> int:
    """What seeds an input's videos (and random start frame) with `settings.seed`: its index in the inputs, or with
    `seed_by='name'` a stable hash of its output name, so that adding or removing other inputs (a photo put in the
    folder) changes neither its videos nor, on a rerun, whether they count as complete."""
    if settings.seed_by == "index":
        return index
    return int.from_bytes(hashlib.sha256(item.stem.encode()).digest()[:8], "big")


def pick_start_frame(item: InputItem, settings: AnimateSettings, index: int, frames: int) -> int:
    """The dataset frame to animate; 'random' keeps the window [start, start + frames) inside the video."""
    if settings.start_frame != "random":
        return settings.start_frame
    total = probe_video(item.path).frames or count_frames(item.path)
    rng = np.random.default_rng([settings.seed, seed_key(item, index, settings)])
    return int(rng.integers(0, max(total - frames, 0) + 1))


def input_identity(item: InputItem, index: int, settings: AnimateSettings) -> dict:
    """What the videos of one input depend on besides the run's settings, as their sidecars record it: the source,
    its size and modification time (a photo replaced under the same name is animated again), its index when that
    seeds it and, for a dataset video, the start frame asked for. Raises ImageReadError / VideoReadError when the
    input is no readable file."""
    reason = item.error or not_a_file_reason(item.path)
    if reason is not None:
        raise (ImageReadError if item.kind == "image" else VideoReadError)(item.path, reason)
    stat = item.path.stat()
    identity = {"source": str(item.path), "source_bytes": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}
    if settings.seed_by == "index":
        identity["input_index"] = index
    if item.kind == "video":
        identity["start_frame_setting"] = settings.start_frame
    return identity


def load_input(item: InputItem, settings: AnimateSettings, index: int, size, frames: int) -> tuple[torch.Tensor, int]:
    """(conditioning image [3, H, W], start frame) of one input; raises ImageReadError / VideoReadError."""
    if item.kind == "image":
        return load_image(item.path, size=size, resize_mode=settings.resize_mode), 0
    start = pick_start_frame(item, settings, index, frames)
    return read_video_frames(item.path, start=start, count=1, size=size)[0], start


# ---------------------------------------------------------------------------------------------------- outputs


def with_model_sampling(pipeline: FashionFlowPipeline, settings: AnimateSettings) -> AnimateSettings:
    """`settings` with the sampler and steps left open filled in from the model: the checkpoint's record of how it
    samples (a distilled student's LCM and few steps), else ancestral DDPM over 25 steps."""
    return replace(
        settings,
        sampler=settings.sampler or sampler_name(pipeline.scheduler),
        steps=settings.steps or pipeline.default_steps,
    )


def run_record(pipeline: FashionFlowPipeline, settings: AnimateSettings) -> dict:
    """The settings a video depends on, as every sidecar records them: a rerun makes again any video whose sidecar
    records others. Memory and speed options (batch size, decode chunks, `low_memory`) are not among them."""
    settings = with_model_sampling(pipeline, settings)
    record = dict(
        settings.record,
        frames=pipeline.model_config.resolve_frames(settings.frames),
        fps=settings.fps,
        seed=settings.seed,
        sampler=settings.sampler,
        steps=settings.steps,
        preprocessing=pipeline.encoders.preprocessing,
        precision=settings.precision,
        weights_dtype=str(pipeline.dtype).removeprefix("torch."),
        resize_mode=settings.resize_mode,
        loop=settings.loop,
        overlap=settings.overlap,
    )
    if settings.seed_by != "index":  # recorded only then: sidecars written before `seed_by` existed still match
        record["seed_by"] = settings.seed_by
    return record


def outputs_of(result: InputResult, sample: int, settings: AnimateSettings) -> dict[str, Path]:
    return sample_outputs(settings.output_dir, result.item.stem, sample, gif=settings.gif, png_frames=settings.png_frames)


def _reuse_earlier(result: InputResult, sample: int, settings: AnimateSettings, record: dict) -> bool:
    """True, with the sample filled in as skipped, when an earlier run left this video complete: every file there
    and a sidecar recording the same settings and the same source."""
    files = outputs_of(result, sample, settings)
    sidecar = read_sidecar(files["sidecar"])
    if sidecar is None or not all(path.exists() for path in files.values()):
        return False
    wanted = {**record, **result.identity, "sample_index": sample}
    if not all(same_setting(sidecar.get(key), value) for key, value in wanted.items()):
        return False
    result.samples[sample] = SampleResult(video=files["mp4"], sidecar=sidecar, skipped=True)
    return True


class VideoFiles:
    """The files of one video, written on the writer thread as its frames come: the mp4 and png frames chunk by
    chunk, then at `finish` the gif (it needs every frame: they are kept, as uint8) and the sidecar, which marks the
    video complete. The first error stops its writing (the partial mp4 is removed) and is kept in `error`."""

    def __init__(self, result: InputResult, sample: int, settings: AnimateSettings):
        self.result, self.sample, self.settings = result, sample, settings
        self.files = outputs_of(result, sample, settings)
        self.mp4 = Mp4Writer(self.files["mp4"], fps=settings.fps)
        self.pngs = PngFrames(self.files["frames"], prefix="frame") if settings.png_frames else None
        self.gif: list[np.ndarray] | None = [] if settings.gif else None
        self.error: str | None = None

    def write(self, frames) -> None:
        if self.error is not None:
            return
        try:
            pixels = frames_to_uint8(frames)
            self.mp4.write(pixels)
            if self.pngs is not None:
                if not self.pngs.paths:
                    for leftover in leftover_temp_files_in(self.files["frames"]):  # a killed run's, made again now
                        leftover.unlink(missing_ok=True)
                self.pngs.write(pixels)
            if self.gif is not None:
                self.gif.append(pixels)
        except (OSError, RuntimeError) as error:  # RuntimeError: ffmpeg failed; the message says why
            self.fail(error)

    def fail(self, error) -> None:
        self.error = self.error or f"cannot write its video: {error}"
        self.mp4.abort()

    def finish(self, record: dict, seconds: float) -> SampleResult:
        """Close the mp4, write the gif and last the sidecar. `record` holds the run's settings and how the batch was
        made (peak memory); `seconds` is the video's share of the batch's sampling and decoding (its frames were
        encoded meanwhile), to which the time to finish its files is added."""
        start = time.perf_counter()
        try:
            if self.error is None:
                self.mp4.close()
                if self.gif is not None:
                    write_gif(np.concatenate(self.gif), self.files["gif"], fps=self.settings.fps)
                seconds = round(seconds + time.perf_counter() - start, 3)
                result = self.result
                sidecar = dict(
                    record, **result.identity, sample_index=self.sample, start_frame=result.start_frame, seconds=seconds
                )
                write_sidecar(self.files["sidecar"], sidecar)
                return SampleResult(video=self.files["mp4"], sidecar=sidecar)
        except (OSError, RuntimeError) as error:
            self.fail(error)
        return SampleResult(error=self.error)


def write_sample(
    video: torch.Tensor, result: InputResult, sample: int, settings: AnimateSettings, record: dict, seconds: float
) -> SampleResult:
    """`<stem>_sample<k>.mp4` (+ gif, png frames) of frames [F, 3, H, W] in memory, then its sidecar (`VideoFiles`)."""
    files = VideoFiles(result, sample, settings)
    files.write(video)
    return files.finish(record, seconds)


# ---------------------------------------------------------------------------------------------------- the loop


def _videos_to_make(result: InputResult, settings: AnimateSettings, record: dict) -> list[int]:
    """The sample indices of an input to make now: all with `overwrite`, else those no earlier run completed."""
    return [k for k in range(settings.num_videos) if settings.overwrite or not _reuse_earlier(result, k, settings, record)]


def _samples(pipeline, inputs: Iterable[InputItem], settings: AnimateSettings, frames: int, record: dict):
    """(result, sample index, image) for every video of this rank's inputs still to make, and (result, None, None)
    for an input with nothing to make: every video found complete, or the input unreadable."""
    for index, item in rank_share(enumerate(inputs), settings.rank, settings.world_size):
        result = InputResult(item, index, [SampleResult() for _ in range(settings.num_videos)])
        try:
            result.identity = input_identity(item, index, settings)
            todo = _videos_to_make(result, settings, record)
            if todo:
                image, result.start_frame = load_input(item, settings, index, pipeline.image_size, frames)
                for sample in todo:  # their files change now: until its new sidecar, no video may count as complete
                    outputs_of(result, sample, settings)["sidecar"].unlink(missing_ok=True)
                save_image(image, input_image_path(settings.output_dir, item.stem))
        except (ImageReadError, VideoReadError, OSError) as error:
            result.fail(str(error))
            todo = []
        if not todo:
            yield result, None, None
        for sample in todo:
            yield result, sample, image


def _share_size(inputs, settings: AnimateSettings) -> int | None:
    """How many videos this rank has to settle, when `inputs` knows its length."""
    if not hasattr(inputs, "__len__"):
        return None
    return len(range(settings.rank, len(inputs), settings.world_size)) * settings.num_videos


def animate(pipeline: FashionFlowPipeline, inputs: Iterable[InputItem], settings: AnimateSettings) -> Iterator[InputResult]:
    """Animate this rank's inputs (`settings.num_videos` videos each, skipping those an earlier run completed with
    the same settings unless `settings.overwrite`); yield each input's result when all its videos are settled."""
    settings = with_model_sampling(pipeline, settings)
    frames = pipeline.model_config.resolve_frames(settings.frames)
    pipeline.check_num_frames(frames, loop=settings.loop)
    if settings.seed_by not in SEED_BY:
        raise ValueError(f"seed_by must be one of {SEED_BY}, got {settings.seed_by!r}")
    if settings.overlap is not None:
        check_overlap(settings.overlap, pipeline.model_config.frames)
    pipeline.enable_encoder_offload(settings.low_memory)
    chunk = min(settings.decode_chunk_size, LOW_MEMORY_DECODE_CHUNK) if settings.low_memory else settings.decode_chunk_size
    record = run_record(pipeline, settings)
    pending: dict[int, InputResult] = {}  # inputs with videos not written yet
    bar = progress_bar(total=_share_size(inputs, settings), desc="videos", unit="video", disable=not settings.progress)

    def finish_batch(videos: list[VideoFiles], made, seconds):  # on the writer thread
        for files in videos:
            sample = files.finish(made, seconds / len(videos))
            files.result.samples[files.sample] = sample
            if sample.error is not None:
                files.result.error = files.result.error or sample.error
            bar.update()

    def finished() -> Iterator[InputResult]:
        for index, result in list(pending.items()):
            if all(sample.settled for sample in result.samples):
                del pending[index]
                yield result

    def denoise(batch, writer: BackgroundWriter) -> Iterator[InputResult]:
        for result, _, _ in batch:
            if result.index not in pending:
                pending[result.index] = result
                bar.update(result.skipped)
        reset_peak_memory(pipeline.device)
        start = time.perf_counter()
        videos = [VideoFiles(result, sample, settings) for result, sample, _ in batch]
        try:
            pipeline(
                torch.stack([image for _, _, image in batch]),
                num_frames=frames,
                sampler=None if settings.sampler == sampler_name(pipeline.scheduler) else settings.sampler,  # its own
                steps=settings.steps,
                generator=[
                    sample_generator(settings.seed, seed_key(result.item, result.index, settings), sample)
                    for result, sample, _ in batch
                ],
                precision=settings.precision,
                decode_chunk_size=chunk,
                progress=settings.progress,
                output_type=None,  # the frames go to their files as they are decoded, kept nowhere
                on_frames=lambda video, frames: writer.submit(videos[video].write, frames),
                loop=settings.loop,
                overlap=settings.overlap,
            )
        except BaseException:
            for files in videos:  # no partial mp4 is left behind
                writer.submit(files.fail, "stopped")
            raise
        seconds = time.perf_counter() - start
        made = dict(record, low_memory=settings.low_memory)
        made[memory_kind(pipeline.device) + "_mb"] = round(peak_memory_mb(pipeline.device), 1)
        writer.submit(finish_batch, videos, made, seconds)
        yield from finished()

    with BackgroundWriter(max_pending=WRITES_IN_FLIGHT) as writer:
        batch = []
        for result, sample, image in _samples(pipeline, inputs, settings, frames, record):
            if sample is None:
                bar.update(len(result.samples))
                yield result
                continue
            batch.append((result, sample, image))
            if len(batch) == settings.batch_size:
                yield from denoise(batch, writer)
                batch = []
        if batch:
            yield from denoise(batch, writer)
    bar.close()
    yield from finished()
