"""Projecting a folder of videos to VAE latents (the on-disk layout is described in models/data/dataset.py).

Per video: the container's frame count is only a hint for where clips start; frames are decoded sequentially
(never seeked: docs/ORIGINAL.md, "Defects" 2) and only those inside the chosen clips are resized and kept. Each clip is encoded
in batches of frames, its tensors are written atomically, then its manifest line is appended, so an interrupted
run resumes by running it again. Decoding the next video overlaps with encoding the current one.
Broken videos are skipped with their reason; anything unexpected is reported and counted as a failure.
"""

from __future__ import annotations

import os
import random
import sys
import traceback
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.distributed import rank_share
from ..core.files import atomic_torch_save, leftover_temp_files, name_max
from ..core.manifest import append_manifest_entry, manifest_path, read_manifest, same_setting
from ..core.outputs import ensure_writable_dir
from ..core.progress import progress_bar
from .dataset import clip_files
from .video_io import (
    VideoReadError,
    count_frames,
    frames_to_tensor,
    iter_video_frames,
    not_a_file_reason,
    probe_video,
    resize_frame,
)

MATCHING_KEYS = ("frames", "size", "preprocessing", "vae")  # what must agree for a folder to be one dataset


def clip_name(stem: str, clip_index: int) -> str:
    """Clip 0 keeps the original's name `<stem>`; extra clips are `<stem>_clip<k>`."""
    return stem if clip_index == 0 else f"{stem}_clip{clip_index}"


def _rng(seed: int, name: str, *parts) -> random.Random:
    # seeded by the video's name, not its position: results do not depend on rank count or listing order
    return random.Random("/".join(map(str, (seed, name, *parts))))


def choose_starts(length: int, frames: int, clips: int, rng: random.Random) -> list[int]:
    """Start frames of up to `clips` clips of `frames` frames in a video of `length` frames, ascending.

    Random and non-overlapping when they fit; otherwise evenly spread (overlap cannot be avoided), and never
    two clips at the same start, so a short video may give fewer clips than asked.
    """
    if length < frames:
        return []
    slack = length - clips * frames
    if slack >= 0:
        # stars and bars: k sorted distinct draws from slack + k slots, shifted apart by a clip length each
        slots = sorted(rng.sample(range(slack + clips), clips))
        return [slot + i * (frames - 1) for i, slot in enumerate(slots)]
    clips = min(clips, length - frames + 1)
    if clips == 1:
        return [rng.randint(0, length - frames)]
    return sorted({round(i * (length - frames) / (clips - 1)) for i in range(clips)})


@dataclass
class DecodedClip:
    index: int
    start: int
    frames: np.ndarray  # uint8 [F, H, W, 3], already resized


@dataclass
class ProjectionSummary:
    projected: list[str] = field(default_factory=list)  # clip names written by this run
    already_done: list[str] = field(default_factory=list)  # clip names found complete (resume)
    skipped: dict[str, str] = field(default_factory=dict)  # video file name -> why it cannot be projected
    failed: dict[str, str] = field(default_factory=dict)  # video file name -> unexpected error
    frames_encoded: int = 0

    @classmethod
    def merge(cls, summaries: Sequence[ProjectionSummary]) -> ProjectionSummary:
        out = cls()
        for s in summaries:
            out.projected += s.projected
            out.already_done += s.already_done
            out.skipped.update(s.skipped)
            out.failed.update(s.failed)
            out.frames_encoded += s.frames_encoded
        return out

    @property
    def exit_code(self) -> int:
        """0 when some clip is projected (now or before) and nothing failed unexpectedly, else 1."""
        return 0 if (self.projected or self.already_done) and not self.failed else 1

    def report(self) -> str:
        lines = [
            "projection summary",
            f"  projected     {len(self.projected)} clips ({self.frames_encoded} frames encoded)",
            f"  already done  {len(self.already_done)} clips",
            f"  skipped       {len(self.skipped)} videos",
        ]
        lines += [f"    {name}: {reason}" for name, reason in sorted(self.skipped.items())]
        lines.append(f"  failed        {len(self.failed)} videos (unexpected errors)")
        lines += [f"    {name}: {error}" for name, error in sorted(self.failed.items())]
        return "\n".join(lines)


def list_videos(dataset_dir) -> list[Path]:
    """Every visible entry of `dataset_dir`, sorted: anything that turns out not to be a video is skipped later."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no video folder at {root}; pass --dataset with a folder of .mp4 files")
    videos = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    if not videos:
        raise ValueError(f"{root} holds no files; put the videos (e.g. .mp4) there or pass another --dataset")
    return videos


def _too_long(names: list[str], limit: int) -> str | None:
    longest = max(names, key=lambda name: len(os.fsencode(name)))
    if len(os.fsencode(longest)) <= limit:
        return None
    return f"file name too long: its output {longest} would pass the {limit}-byte name limit; rename the video shorter"


def _unusable(videos: list[Path], clips: int, output_dir: Path) -> dict[str, str]:
    """Why some entries cannot be projected, found before any is opened: not a file, output names too long for
    the filesystem, or output names that would overwrite an earlier video's (same stem, or `<a>_image` vs `<a>`)."""
    owner, skipped, limit = {}, {}, name_max(output_dir)
    for video in videos:
        files = [f.name for k in range(clips) for f in clip_files("", clip_name(video.stem, k))]
        clash = next(
            (f"its output names clash with {owner[f]}'s; rename one of the two videos" for f in files if f in owner), None
        )
        reason = not_a_file_reason(video) or _too_long(files, limit) or clash
        if reason:
            skipped[video.name] = reason
        else:
            owner.update(dict.fromkeys(files, video.name))
    return skipped


class _Projector:
    """Projects the videos of one rank into `output_dir`."""

    def __init__(
        self, output_dir: Path, encoders, *, frames, clips_per_video, seed, batch_size, size, settings, rank, world_size
    ):
        self.output_dir = output_dir
        self.encoders = encoders
        self.frames, self.clips, self.seed = frames, clips_per_video, seed
        self.batch_size, self.size = batch_size, tuple(size)
        self.settings = settings  # recorded with every clip: preprocessing, vae
        self.manifest = read_manifest(output_dir)
        self.manifest_file = manifest_path(output_dir, rank if world_size > 1 else None)
        self._check_existing()

    def _check_existing(self):
        wanted = {"frames": self.frames, "size": list(self.size), **self.settings}
        for name, entry in self.manifest.items():
            differing = [k for k in MATCHING_KEYS if k in entry and not same_setting(entry[k], wanted[k])]
            if differing:
                found = ", ".join(f"{k}={entry[k]!r} (now {wanted[k]!r})" for k in differing)
                raise ValueError(
                    f"{self.output_dir} already holds clips projected differently ({name}: {found}); "
                    "project into a new --output_dir, or repeat the earlier settings to resume"
                )

    def is_done(self, name: str) -> bool:
        return name in self.manifest and all(p.is_file() for p in clip_files(self.output_dir, name))

    def remove_partial_writes(self, video: Path) -> None:
        """Temporary files a killed run left while writing this video's clips (only this rank writes them)."""
        for k in range(self.clips):
            for path in clip_files(self.output_dir, clip_name(video.stem, k)):
                for tmp in leftover_temp_files(path):
                    tmp.unlink(missing_ok=True)

    # --- decoding (runs in the prefetch thread) -----------------------------------------------------

    def _decode_windows(self, video: Path, starts: list[int]) -> tuple[list[list[np.ndarray]], int]:
        """Decode sequentially up to the last clip's end, keeping (resized) only frames inside the clips."""
        kept = [[] for _ in starts]
        end, decoded = max(starts) + self.frames, 0
        with closing(iter_video_frames(video)) as frames:
            for index, frame in enumerate(frames):
                decoded = index + 1
                inside = [k for k, s in enumerate(starts) if s <= index < s + self.frames]
                if inside:
                    small = resize_frame(frame, self.size)
                    for k in inside:
                        kept[k].append(small)
                if decoded >= end:
                    break
        return kept, decoded

    def _too_short(self, video: Path, length: int, advertised: int) -> VideoReadError:
        if length == 0:
            return VideoReadError(video, "empty or not a video: no frame could be decoded")
        if advertised >= self.frames:
            return VideoReadError(video, f"truncated: decoding stopped at frame {length} of {advertised} advertised")
        return VideoReadError(
            video, f"too short: {length} frames, need {self.frames}", hint="use a longer video or a smaller --frames"
        )

    def decode(self, video: Path) -> tuple[list[DecodedClip], list[str]]:
        """(the clips of `video` still to project, the names of those already done). Raises VideoReadError."""
        names = [clip_name(video.stem, k) for k in range(self.clips)]
        if all(map(self.is_done, names)):
            return [], names  # resuming: the video need not even be opened
        advertised = probe_video(video).frames
        # the container's count places the clips; when it claims too few frames, count them for real
        length = advertised if advertised >= self.frames else count_frames(video)
        for _attempt in range(2):
            if length < self.frames:
                raise self._too_short(video, length, advertised)
            starts = choose_starts(length, self.frames, self.clips, _rng(self.seed, video.stem))
            done = [clip_name(video.stem, k) for k in range(len(starts)) if self.is_done(clip_name(video.stem, k))]
            todo = [(k, s) for k, s in enumerate(starts) if clip_name(video.stem, k) not in done]
            if not todo:
                return [], done
            kept, decoded = self._decode_windows(video, [s for _, s in todo])
            if decoded >= todo[-1][1] + self.frames:
                return [DecodedClip(k, s, np.stack(frames)) for (k, s), frames in zip(todo, kept)], done
            length = decoded  # the container overstated its length: place the clips again within the true one
        raise self._too_short(video, length, advertised)

    # --- encoding and writing (main thread) ---------------------------------------------------------

    def write_clip(self, video: Path, clip: DecodedClip) -> str:
        name = clip_name(video.stem, clip.index)
        pixels = frames_to_tensor(clip.frames)  # [F, 3, H, W] in [0, 1]
        generator = torch.Generator().manual_seed(_rng(self.seed, video.stem, clip.index).getrandbits(63))
        latents = self.encoders.encode_frames(pixels, generator=generator, chunk_size=self.batch_size)
        latents = latents.float().cpu().contiguous()  # [F, C, h, w]
        image_path, latents_path = clip_files(self.output_dir, name)
        atomic_torch_save(pixels[0].clone(), image_path)  # clone: a view would save the whole clip's storage
        atomic_torch_save(latents, latents_path)
        entry = {
            "name": name,
            "source": str(video),
            "start_frame": clip.start,
            "frames": self.frames,
            "size": list(self.size),
            "latent_shape": list(latents.shape),
            "seed": self.seed,
            "clip_index": clip.index,
            **self.settings,
        }
        append_manifest_entry(self.manifest_file, entry)
        self.manifest[name] = entry
        return name


def _failure(error: BaseException) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" (at {Path(frame[0].filename).name}:{frame[0].lineno})" if frame else ""
    return f"{type(error).__name__}: {error}{where}"


def project_dataset(
    dataset_dir,
    output_dir,
    encoders,
    *,
    frames: int,
    clips_per_video: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    size: Sequence[int],
    preprocessing: str,
    vae: str,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> ProjectionSummary:
    """Project this rank's share of `dataset_dir` (videos rank, rank + world_size, ...) into `output_dir`.

    encoders: anything with `encode_frames(frames [N, 3, H, W], *, generator, chunk_size)` (a FrozenEncoders).
    size: (H, W) every frame is resized to (bilinear, stretching like the original).
    preprocessing, vae: recorded in the manifest (the encoders must already use them).
    """
    if frames < 1 or clips_per_video < 1 or batch_size < 1:
        raise ValueError(
            f"frames, clips_per_video and batch_size must be at least 1, got {frames}, {clips_per_video}, {batch_size}"
        )
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) in pixels, got {size}")
    encoders.latent_size(*size)  # raises, naming the fix, when the VAE cannot encode frames of this size
    output_dir = ensure_writable_dir(output_dir, "--output_dir")
    summary = ProjectionSummary()
    videos = list_videos(dataset_dir)
    unusable = _unusable(videos, clips_per_video, output_dir)
    share = list(rank_share(videos, rank, world_size))
    mine = [v for v in share if v.name not in unusable]
    summary.skipped.update({v.name: unusable[v.name] for v in share if v.name in unusable})
    projector = _Projector(
        output_dir, encoders, frames=frames, clips_per_video=clips_per_video, seed=seed, batch_size=batch_size,
        size=size, settings={"preprocessing": preprocessing, "vae": str(vae)}, rank=rank, world_size=world_size,
    )  # fmt: skip
    for video in mine:
        projector.remove_partial_writes(video)
    bar = progress_bar(total=len(mine), unit="video", disable=not progress or rank != 0, dynamic_ncols=True)

    def log(message: str) -> None:
        bar.write(message, file=sys.stderr)  # above the bar when it shows, plain stderr otherwise

    def start_decoding(pool: ThreadPoolExecutor, index: int) -> Future | None:
        return pool.submit(projector.decode, mine[index]) if index < len(mine) else None

    with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        pending = start_decoding(pool, 0)
        for i, video in enumerate(mine):
            current, pending = pending, None
            try:
                clips, done = current.result()
                pending = start_decoding(pool, i + 1)  # decode the next video while this one encodes
                summary.already_done += done
                for clip in clips:
                    summary.projected.append(projector.write_clip(video, clip))
                    summary.frames_encoded += len(clip.frames)
                    bar.set_postfix(frames=summary.frames_encoded, refresh=False)
            except VideoReadError as error:
                summary.skipped[video.name] = error.reason
                log(f"skipped {video.name}: {error.reason}")
            except Exception as error:  # one bad video must not end a long run: report it and go on
                summary.failed[video.name] = _failure(error)
                log(f"FAILED {video.name}:\n{''.join(traceback.format_exception(error)).rstrip()}")
            finally:
                if pending is None:
                    pending = start_decoding(pool, i + 1)
            bar.update(1)
    return summary


def project(
    dataset_dir,
    output_dir,
    *,
    preset: str = "paper",
    vae: str | None = None,
    preprocessing: str | None = None,
    frames: int | None = None,
    clips_per_video: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    size: Sequence[int] | None = None,
    device: str | None = "auto",
    precision: str = "fp32",
    local_rank: int | None = None,
    progress: bool = True,
) -> ProjectionSummary:
    """What `project_latent_space.py` does, alone or as one rank of several: load the preset's VAE (or `vae`),
    project this rank's share, merge the manifests and print the summary on rank 0; returns the total summary.
    Defaults (frames, size, VAE, preprocessing) come from the preset."""
    from ..core.config import get_preset
    from ..core.distributed import cleanup_distributed, finish_ranks, setup_distributed
    from ..core.precision import check_precision
    from ..networks.encoders import FrozenEncoders

    config = get_preset(preset, **({"preprocessing": preprocessing} if preprocessing else {}))
    vae = vae or config.vae
    env = setup_distributed(device, local_rank)
    try:
        # projection needs only the VAE
        encoders = FrozenEncoders.from_config(
            config, vae=vae, with_clip=False, device=env.device, dtype=check_precision(precision)
        )
        summary = project_dataset(
            dataset_dir, output_dir, encoders, frames=config.resolve_frames(frames), clips_per_video=clips_per_video,
            seed=seed, batch_size=batch_size, size=size or encoders.image_size(config.latent_size),
            preprocessing=config.preprocessing, vae=vae, rank=env.rank, world_size=env.world_size, progress=progress,
        )  # fmt: skip
        return finish_ranks(summary, output_dir)
    finally:
        cleanup_distributed()
