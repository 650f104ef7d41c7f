"""Videos longer than the model's trained length, and looping videos, from a `FashionFlowPipeline`.

The model is trained on clips of `config.frames` frames (70 for the paper, 8 for the tiny preset), so a longer
video is made of windows of that length. Window k > 0 starts on a frame of window k - 1 (`Window.start`): that
frame is decoded, then encoded again with CLIP and the VAE exactly as a photo is (`pipeline.encode_image`), and
the window is sampled conditioned on it (its context, and its latent held as frame 0). The next `overlap - 1`
frames are also shared with the previous window; how they join is `overlap_mode`:

- 'hold': they are held clean to the previous window's latents throughout denoising, as frame 0 is;
- 'crossfade': they are sampled freely and the two windows' latents are cross-faded over the overlap.

Looping (`loop=True`) samples `overlap` frames past the end and cross-fades them into the first `overlap` frames,
as windows are joined: the video's first frame is then mostly the one that follows its last. (Holding an extra
last frame to the photo's latent was measured first and did not close the loop: the model never saw a clean frame
there.)

Everything goes through the pipeline's four stages (`encode_image`, `prepare_latents`, `denoise`,
`decode_latents`); each video's generator draws, window by window, the conditioning frame's posterior sample,
the window's noise and its sampler noise, so a video still depends only on its seed. The overlap defaults were
chosen by measurement (bench/bench_long_video.py, bench/results/long_video_cpu.md).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

OVERLAP_MODES = ("hold", "crossfade")
# Chosen in bench/results/long_video_cpu.md on the quickstart's 8-frame model: see there for the figures.
# Holding shared frames clean put frames the model never saw clean past frame 0 into its input: joins 3x the
# ordinary frame-to-frame change and PSNR down 6 dB by the third window. Cross-fading half a window: joins 1.1x.
DEFAULT_OVERLAP_MODE = "crossfade"
DEFAULT_OVERLAP_FRACTION = 0.5  # of the window; at least the conditioning frame


@dataclass(frozen=True)
class Window:
    """Frames [start, start + length) of the whole video; the first `overlap` are shared with the previous window
    (0 for the first window). Frame `start` is the one the window is conditioned on."""

    start: int
    length: int
    overlap: int


def default_overlap(window: int) -> int:
    return max(1, round(DEFAULT_OVERLAP_FRACTION * window))


def check_overlap(overlap: int, window: int) -> int:
    if not 1 <= overlap <= window - 1:
        raise ValueError(
            f"overlap must be between 1 (the conditioning frame alone) and {window - 1} (all but one frame of the "
            f"model's {window}-frame window), got {overlap}"
        )
    return overlap


def check_overlap_mode(mode: str) -> str:
    if mode not in OVERLAP_MODES:
        raise ValueError(f"overlap mode must be one of {OVERLAP_MODES}, got {mode!r}")
    return mode


def plan_windows(total: int, window: int, overlap: int) -> list[Window]:
    """Windows of `window` frames covering frames [0, total), each sharing at least `overlap` frames with the one before.

    As few windows as that takes, spread evenly from the first frame to the last (so none samples past the end and
    the spare frames are shared out as extra overlap). A video no longer than one window is one window, cropped after.
    """
    check_overlap(overlap, window)
    if total <= window:
        return [Window(0, window, 0)]
    count = 1 + math.ceil((total - window) / (window - overlap))
    starts = [round(k * (total - window) / (count - 1)) for k in range(count)]
    return [Window(start, window, 0 if k == 0 else starts[k - 1] + window - start) for k, start in enumerate(starts)]


def crossfade_weights(overlap: int, mode: str) -> torch.Tensor:
    """Weight [overlap] of the new window in each shared frame: 0 on the conditioning frame (the previous window's
    frame is kept), rising linearly over the overlap for 'crossfade'; 0 throughout for 'hold', whose shared frames
    are equal anyway."""
    if mode == "hold":
        return torch.zeros(overlap)
    return torch.arange(overlap, dtype=torch.float32) / overlap


def held_frames(window: Window, video: torch.Tensor, first: torch.Tensor, *, mode: str) -> torch.Tensor:
    """What `window` holds clean while it is denoised, as `denoise` takes it: [b, c, length, h, w], NaN where free.

    `video` [b, c, T, h, w]: the latents sampled so far; `first` [b, c, h, w]: the conditioning frame re-encoded.
    """
    b, c, _, h, w = video.shape
    held = torch.full((b, c, window.length, h, w), math.nan, dtype=video.dtype, device=video.device)
    held[:, :, 0] = first
    if mode == "hold" and window.overlap > 1:
        held[:, :, 1 : window.overlap] = video[:, :, window.start + 1 : window.start + window.overlap]
    return held


class _Spool:
    """Latents [B, c, n, h, w] put aside in a temporary file, in order, and read back one piece at a time (a looping
    video's frames after its head, which can go to the mp4 only after the head, which is done last)."""

    def __init__(self):
        self.file, self.shapes = tempfile.TemporaryFile(), []

    def put(self, latents: torch.Tensor) -> None:
        self.file.write(latents.float().cpu().numpy().tobytes())
        self.shapes.append(tuple(latents.shape))

    def pieces(self) -> Iterator[torch.Tensor]:
        self.file.seek(0)
        with self.file:
            for shape in self.shapes:
                data = self.file.read(math.prod(shape) * 4)
                yield torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy()).view(shape)


def collect_frames(chunks: Iterable[tuple[int, torch.Tensor]], batch: int, on_frames=None, keep: bool = True):
    """The videos [B, F, 3, H, W] of (video index, frames) chunks such as `decode_chunks` yields, each chunk handed to
    `on_frames(video, frames)` as it comes; without `keep`, None (the frames are kept nowhere)."""
    kept: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    for video, frames in chunks:
        if on_frames is not None:
            on_frames(video, frames)
        if keep:
            kept[video].append(frames)
    return torch.stack([torch.cat(frames) for frames in kept]) if keep else None


def sample_long_video(pipeline, images: torch.Tensor, generators: list, **options) -> torch.Tensor:
    """Videos of `num_frames` frames for `images [B, 3, H, W]` in [0, 1]: [B, F, 3, H, W] on the CPU; the frames of
    `long_video_chunks` (options as there) gathered."""
    return collect_frames(long_video_chunks(pipeline, images, generators, **options), len(images))


@torch.inference_mode()
def long_video_chunks(
    pipeline,
    images: torch.Tensor,
    generators: list,
    *,
    window: int,
    num_frames: int,
    loop: bool = False,
    overlap: int | None = None,
    overlap_mode: str = DEFAULT_OVERLAP_MODE,
    sampler: str | None,
    steps: int,
    precision: str = "fp32",
    decode_chunk_size: int = 8,
    progress: bool | None = True,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """The videos of `num_frames` frames for `images [B, 3, H, W]` in [0, 1], as (video index, frames [n, 3, H, W] on
    the CPU) chunks in order (`pipeline.decode_chunks`), each window's frames decoded as soon as no later window
    changes them. Only the latents a later window may still change are kept (one window's), so memory does not
    grow with `num_frames`; a looping video's head changes last, and the frames after it wait in a temporary file.

    `window`: the model's trained clip length (`config.frames`). `generators`: one per image (or None).
    `callback(step, total, window latents)` runs after every denoising step of every window, `step` counting over
    all windows.
    """
    from ..core.precision import autocast

    length = window
    overlap = check_overlap(default_overlap(length) if overlap is None else overlap, length)
    check_overlap_mode(overlap_mode)
    pipeline.check_num_frames(num_frames, loop=loop)
    total = num_frames + overlap * int(loop)  # looping: frames past the end, to cross-fade into the head
    windows = plan_windows(total, length, overlap)
    bar = pipeline._progress_bar(len(windows) * steps, progress)
    head_end = overlap if loop else 0  # frames [0, head_end) are done only at the end
    spool = _Spool() if loop else None
    head = past_end = None  # looping: the latents of the head and of the frames past the end

    def encode(frames):  # [B, 3, H, W] -> (context, latent [B, c, h, w]), as the pipeline encodes a photo
        with autocast(pipeline._execution_device, precision, pipeline.dtype):
            return pipeline.encode_image(frames, generators)

    def decode(latents):
        return pipeline.decode_chunks(latents, decode_chunk_size, precision=precision)

    context, photo_latent = encode(images)
    video, origin = None, 0  # latents of frames [origin, origin + length): those a later window may still change
    for k, window in enumerate(windows):
        here = Window(window.start - origin, window.length, window.overlap)  # `window` within `video`
        if k > 0:
            frame = pipeline.decode_latents(video[:, :, here.start : here.start + 1], precision=precision)
            context, first = encode(frame[:, 0])
        else:
            first = photo_latent
            b, c, h, w = first.shape
            video = torch.zeros(b, c, length, h, w, device=first.device)
        held = held_frames(here, video, first, mode=overlap_mode)

        def on_step(i, n, x, k=k):
            bar.update()
            if callback is not None:
                callback(k * steps + i, len(windows) * steps, x)

        latents = pipeline.denoise(
            pipeline.prepare_latents(len(images), length, generator=generators),
            context,
            held,
            sampler=sampler,
            steps=steps,
            generator=generators,
            precision=precision,
            callback=on_step,
        )
        shared = slice(here.start, here.start + here.overlap)
        weight = crossfade_weights(here.overlap, overlap_mode).to(video.device)[:, None, None]  # [overlap, 1, 1]
        video[:, :, shared] = torch.lerp(video[:, :, shared], latents[:, :, : here.overlap].to(video.dtype), weight)
        video[:, :, here.start + here.overlap : here.start + length] = latents[:, :, here.overlap :]
        # frames before the next window's start are done: out they go, and the next window's are moved to the front
        done = windows[k + 1].start if k + 1 < len(windows) else origin + length
        for start, end in ((origin, min(done, head_end)), (max(origin, head_end), min(done, num_frames))):
            if start < end:
                piece = video[:, :, start - origin : end - origin]
                if start < head_end:
                    head = piece.clone() if head is None else torch.cat([head, piece], dim=2)
                elif loop:
                    spool.put(piece)
                else:
                    yield from decode(piece)
        if loop and done > num_frames:
            past_end = video[:, :, num_frames - origin : num_frames - origin + overlap].clone()
        if k + 1 < len(windows):
            kept = video[:, :, done - origin :].clone()
            video = torch.zeros_like(video)
            video[:, :, : kept.shape[2]] = kept
            origin = done
    bar.close()
    if loop:  # frame j of the head becomes (j + 1) / (overlap + 1) itself, the rest the frame j after the end
        head = head[:, :, :num_frames]
        weight = (torch.arange(head.shape[2], device=head.device) + 1.0)[:, None, None] / (overlap + 1)  # [overlap, 1, 1]
        yield from decode(torch.lerp(past_end[:, :, : head.shape[2]], head, weight))
        for piece in spool.pieces():
            yield from decode(piece.to(video.device))
