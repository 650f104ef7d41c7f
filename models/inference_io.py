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

from .files import atomic_write, fit_name
from .video_io import not_a_file_reason

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
STEM_MAX_BYTES = 200  # leaves room for `_<n>` and `_sample<k>_frames` within a 255-byte file name


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
    """One output stem per input, distinct even where the filesystem ignores case: the file stem (shortened when
    long), with `_2`, `_3`, ... appended when an earlier input has it (a.jpg and a.png, or two folders), skipping
    any suffixed stem that another input has as its own (d1/a.jpg, d2/a.jpg and d1/a_2.jpg)."""
    stems = [fit_name(path.stem, STEM_MAX_BYTES) for path in paths]
    own = {stem.casefold() for stem in stems}
    used, unique = set(), []
    for stem in stems:
        name, n = stem, 1
        while name.casefold() in used or (n > 1 and name.casefold() in own):
            n += 1
            name = f"{stem}_{n}"
        used.add(name.casefold())
        unique.append(name)
    return unique


def _folder_entries(folder: Path, suffixes) -> list[tuple[Path, str | None]]:
    """(path, why it cannot be read or None) for the entries of `folder` named with one of `suffixes`, sorted:
    a folder or broken link named like a photo or video is reported, not silently passed over."""
    named = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    return [(p, not_a_file_reason(p)) for p in named]


def image_inputs(specs: list[str]) -> list[InputItem]:
    """Expand `--image` values: a file (tried even if it is not an image, so the user hears why), a folder
    (its image files, by suffix, sorted) or a glob pattern (its matches, sorted)."""
    found: list[tuple[Path, str | None]] = []
    suffixes = _image_suffixes()
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found += _folder_entries(path, suffixes) or [(path, "folder holds no image files")]
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
    videos = _folder_entries(root, VIDEO_SUFFIXES)
    if not videos:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in dataset folder {root}")
    stems = _unique_stems([p for p, _ in videos])
    return [InputItem(p, "video", stem, error) for (p, error), stem in zip(videos, stems)]


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
