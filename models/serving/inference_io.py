"""Inputs and outputs of `inference.py`: which files to animate, what to call the results, their sidecar JSON.

An input is a photo (`--image`: files, folders, globs) or a frame of a reference video (`--dataset`).
Every generated video gets a sidecar `<stem>.json` beside it naming its source, start frame and sampling
settings; `models/evaluation/evaluate.py` pairs generated and reference videos by it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..core.files import atomic_write, fit_name

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_LIST_SUFFIX = ".txt"  # an `--image` value with it is a list of photos, one path per line
STEM_MAX_BYTES = 200  # leaves room for `_<n>` and `_sample<k>_frames` within a 255-byte file name


@dataclass(frozen=True)
class InputItem:
    """One thing to animate; `error` is set when it could not even be found (reported, never raised). Whether it is
    a readable file is found out when it is animated (`models.serving.animate.input_identity`)."""

    path: Path
    kind: str  # 'image' or 'video'
    stem: str  # unique among the inputs of one run: output file names start with it
    error: str | None = None


def _image_suffixes() -> set[str]:
    return {suffix for suffix, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _stem_key(path: Path) -> str:
    """The output stem of `path` (shortened when long), casefolded: two inputs clash where the filesystem ignores case."""
    return fit_name(path.stem, STEM_MAX_BYTES).casefold()


class _UniqueStems:
    """Hands out one output stem per input, in input order, distinct even where the filesystem ignores case: the
    file stem (shortened when long), with `_2`, `_3`, ... appended when an earlier input has it (a.jpg and a.png, or
    two folders), skipping any suffixed stem that another input has as its own (d1/a.jpg, d2/a.jpg and d1/a_2.jpg).

    `counts` (how many inputs have each stem key) is all it keeps of the inputs, plus the last suffix of each stem
    that repeats: a suffixed name `<stem>_<n>` only ever clashes with another of the same stem."""

    def __init__(self, counts: Counter):
        self.counts = counts
        self.last_suffix: dict[str, int] = {}

    def __call__(self, path: Path) -> str:
        stem = fit_name(path.stem, STEM_MAX_BYTES)
        key = stem.casefold()
        if self.counts[key] == 1:
            return stem
        n = self.last_suffix.get(key)
        if n is None:  # the first input with this stem keeps it
            self.last_suffix[key] = 1
            return stem
        n += 1
        while f"{key}_{n}" in self.counts:
            n += 1
        self.last_suffix[key] = n
        return f"{stem}_{n}"


class InputList:
    """The inputs of one run in their fixed order, found lazily, so that a catalogue scales: a million photos cost
    their stems in memory (to keep output names unique), never a million images, items or even paths.

    `listing()` yields (path, why it cannot be animated or None) pairs and is walked once here (to count the inputs,
    learn their stems and a digest of the list that ranks compare) and once per iteration, which yields
    `InputItem`s one at a time. The photos themselves are read only when animated.
    """

    def __init__(self, kind: str, listing: Callable[[], Iterable[tuple[Path, str | None]]]):
        self.kind, self._listing = kind, listing
        self._stem_counts: Counter = Counter()
        digest = hashlib.sha256()
        for path, _ in listing():
            self._stem_counts[_stem_key(path)] += 1
            digest.update(os.fsencode(path) + b"\0")
        self.digest = digest.hexdigest()  # equal on every rank that sees the same inputs in the same order

    def __len__(self) -> int:
        return self._stem_counts.total()

    def __iter__(self) -> Iterator[InputItem]:
        stems = _UniqueStems(self._stem_counts)
        for path, error in self._listing():
            yield InputItem(path, self.kind, stems(path), error)


def _folder_entries(folder: Path, suffixes) -> Iterator[tuple[Path, None]]:
    """The entries of `folder` named with one of `suffixes`, sorted. A folder or broken link named like a photo or
    video is kept, to be reported by name when it is animated, not silently passed over."""
    names = sorted(name for name in os.listdir(folder) if os.path.splitext(name)[1].lower() in suffixes)
    return ((folder / name, None) for name in names)


def _spec_entries(spec: str, suffixes) -> Iterator[tuple[Path, str | None]]:
    """What one `--image` value names: a file (tried even if it is not an image, so the user hears why), a `.txt`
    file (a list of photos, as `--image_list`), a folder (its image files, by suffix, sorted) or a glob pattern (its
    matches, sorted)."""
    path = Path(spec)
    if path.suffix.lower() == IMAGE_LIST_SUFFIX and path.is_file():
        yield from _list_entries(path)
    elif path.is_dir():
        found = False
        for entry in _folder_entries(path, suffixes):
            found = True
            yield entry
        if not found:
            yield path, "folder holds no image files"
    elif path.exists():
        yield path, None
    elif glob.has_magic(spec):
        matches = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
        yield from [(p, None) for p in matches] or [(path, "no file matches this pattern")]
    else:
        yield path, "no such file"


def _list_entries(image_list: Path) -> Iterator[tuple[Path, None]]:
    """The paths of an `--image_list` file, one per line (blank lines skipped), read as the lines come: each is
    taken as a photo, checked only when animated, so a million lines cost no file-system call here."""
    with open(image_list, encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            path = line.rstrip("\r\n")
            if path.strip():
                yield Path(path), None


def image_inputs(specs: Iterable[str] = (), image_list=None) -> InputList:
    """The photos of `--image` values (files, folders, glob patterns), then those of `--image_list`, in order."""
    specs = list(specs)
    if image_list is not None and not Path(image_list).is_file():
        raise FileNotFoundError(f"--image_list {image_list} not found; pass a text file with one photo path per line")
    suffixes = _image_suffixes()

    def listing():
        for spec in specs:
            yield from _spec_entries(spec, suffixes)
        if image_list is not None:
            yield from _list_entries(Path(image_list))

    inputs = InputList("image", listing)
    if not len(inputs):
        where = f"--image_list {image_list} is empty" if image_list is not None else "no --image given"
        raise ValueError(f"nothing to animate: {where}; pass photos with --image, or list one path per line in the file")
    return inputs


def video_inputs(dataset) -> InputList:
    """The videos of a `--dataset` folder (by suffix, sorted)."""
    root = Path(dataset)
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset folder {root} does not exist; pass --dataset <folder of .mp4 videos> or animate photos with --image"
        )
    videos = InputList("video", lambda: _folder_entries(root, VIDEO_SUFFIXES))
    if not len(videos):
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in dataset folder {root}")
    return videos


def input_image_path(output_dir, stem: str) -> Path:
    return Path(output_dir) / f"{stem}_input.png"


def sample_stem(stem: str, sample_index: int) -> str:
    return f"{stem}_sample{sample_index}"


def sample_outputs(output_dir, stem: str, sample_index: int, *, gif: bool, png_frames: bool) -> dict[str, Path]:
    """The files one video leaves in `output_dir`, by kind: its input's png, the mp4, the optional gif and png-frames
    folder, and last the sidecar, which is written last and so marks the video complete."""
    out, name = Path(output_dir), sample_stem(stem, sample_index)
    files = {"input": input_image_path(out, stem), "mp4": out / f"{name}.mp4"}
    if gif:
        files["gif"] = out / f"{name}.gif"
    if png_frames:
        files["frames"] = out / f"{name}_frames"
    files["sidecar"] = out / f"{name}.json"
    return files


def write_sidecar(path, record: dict) -> Path:
    """Write the JSON record of one generated video, atomically."""
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_sidecar(path) -> dict | None:
    """The record of a sidecar; None when there is none or it is not a JSON object (the video is then made again)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


class BackgroundWriter:
    """Runs output writing (mp4 encoding above all) on one worker thread, in the order submitted, so it overlaps the
    work that makes the frames: each decode chunk's frames as they come, a finished video's files while the next
    is denoised. At most `max_pending` writes wait or run at once (`submit` first waits for the oldest), which bounds
    the frames held in memory."""

    def __init__(self, max_pending: int = 1):
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="video-writer")
        self._pending: deque[Future] = deque()

    def submit(self, write, *args) -> None:
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(write, *args))

    def wait(self) -> None:
        """Block until every write submitted is done; re-raises the first exception."""
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)
