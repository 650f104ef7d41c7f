"""Inputs and outputs of `inference.py`: which files to animate, what to call the results, their sidecar JSON.

An input is a photo (`--image`: files, folders, globs) or a frame of a reference video (`--dataset`).
Every generated video gets a sidecar `<stem>.json` beside it naming its source, start frame and sampling
settings; `models/evaluate.py` pairs generated and reference videos by it.
"""

from __future__ import annotations

import glob
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .checkpoint import atomic_write

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass(frozen=True)
class InputItem:
    """One thing to animate; `error` is set when it could not even be found (reported, never raised)."""

    path: Path
    kind: str  # 'image' or 'video'
    stem: str  # unique among the inputs of one run: output file names start with it
    error: str | None = None


def _image_suffixes() -> set[str]:
    return {suffix for suffix, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _unique_stems(paths: list[Path]) -> list[str]:
    """File stems, with `_2`, `_3`, ... appended when two inputs share one (a.jpg and a.png, or two folders)."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        stem = path.stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


def image_inputs(specs: list[str]) -> list[InputItem]:
    """Expand `--image` values: a file (tried even if it is not an image, so the user hears why), a folder
    (its image files, by suffix, sorted) or a glob pattern (its matches, sorted)."""
    found: list[tuple[Path, str | None]] = []
    suffixes = _image_suffixes()
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            found += [(p, None) for p in images] or [(path, "folder holds no image files")]
        elif path.exists():
            found.append((path, None))
        elif glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
            found += [(p, None) for p in matches] or [(path, "no file matches this pattern")]
        else:
            found.append((path, "no such file"))
    stems = _unique_stems([p for p, _ in found])
    return [InputItem(p, "image", stem, error) for (p, error), stem in zip(found, stems)]


def video_inputs(dataset) -> list[InputItem]:
    """The videos of a `--dataset` folder (by suffix, sorted)."""
    root = Path(dataset)
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset folder {root} does not exist; pass --dataset <folder of .mp4 videos> or animate photos with --image"
        )
    videos = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in dataset folder {root}")
    return [InputItem(p, "video", stem) for p, stem in zip(videos, _unique_stems(videos))]


def input_image_path(output_dir, stem: str) -> Path:
    return Path(output_dir) / f"{stem}_input.png"


def sample_stem(stem: str, sample_index: int) -> str:
    return f"{stem}_sample{sample_index}"


def write_sidecar(path, record: dict) -> Path:
    """Write the JSON record of one generated video, atomically."""
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class BackgroundWriter:
    """Runs output writing (mp4 encoding above all) on one worker thread, so it overlaps the next video's
    denoising; at most one write is in flight, which bounds the videos held in memory."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="video-writer")
        self._pending: Future | None = None

    def submit(self, write, *args) -> None:
        self.wait()
        self._pending = self._pool.submit(write, *args)

    def wait(self) -> None:
        """Block until the write in flight is done; re-raises its exception."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)
