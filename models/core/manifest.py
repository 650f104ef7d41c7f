"""Run manifests: one JSON line per thing a run made, appended by every rank without clobbering the others.

A writer appends to `manifest.jsonl`, or to `manifest.rank<k>.jsonl` when it is rank k of several; when every
rank has finished, the main rank merges them all into `manifest.jsonl` (`merge_manifests`). Lines are keyed by
their `name`: a later line for the same name wins, so a rerun that makes something again replaces its line. A
line cut short by a crash is ignored, and the next append starts on a fresh line. Projection
(`models/data/projection.py`, one line per clip) and batch inference (`models/serving/catalogue.py`, one per video) both
keep one.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .files import atomic_write, leftover_temp_files

MANIFEST_NAME = "manifest.jsonl"
RANK_MANIFEST_GLOB = "manifest.rank*.jsonl"


def manifest_path(root, rank: int | None = None) -> Path:
    """The manifest a writer appends to: `manifest.jsonl`, or `manifest.rank<k>.jsonl` for rank k of several."""
    return Path(root) / (MANIFEST_NAME if rank is None else f"manifest.rank{rank}.jsonl")


def manifest_files(root) -> list[Path]:
    root = Path(root)
    main = [root / MANIFEST_NAME] if (root / MANIFEST_NAME).is_file() else []
    return main + sorted(root.glob(RANK_MANIFEST_GLOB))


def _read_entries(path: Path) -> list[dict]:
    entries = []
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            # an interrupted append leaves a partial last line: that entry is simply not recorded (it is made again)
            if number < len(lines) - 1:
                warnings.warn(f"{path}:{number}: ignoring a line that is not a manifest entry", stacklevel=3)
            continue
        entries.append(entry)
    return entries


def read_manifest(root) -> dict[str, dict]:
    """Every entry recorded in `root`'s manifests, by name (a later line for the same name wins)."""
    entries = {}
    for path in manifest_files(root):
        for entry in _read_entries(path):
            entries[entry["name"]] = entry
    return entries


def append_manifest_entry(path, entry: dict) -> None:
    """Append one JSON line and fsync it; a partial line left by a crash is closed off first, never extended."""
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    with open(path, "a+b") as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)  # one write in append mode: lands whole at the end of the file
        f.flush()
        os.fsync(f.fileno())


def merge_manifests(root) -> Path | None:
    """Rewrite `manifest.jsonl` atomically with every recorded entry (sorted, broken lines dropped) and remove the
    per-rank manifests. Returns the manifest's path, or None when nothing is recorded."""
    for tmp in leftover_temp_files(manifest_path(root)):  # a killed merge's; every rank has finished writing
        tmp.unlink(missing_ok=True)
    entries = read_manifest(root)
    if not entries:
        return None
    text = "".join(json.dumps(entries[name], sort_keys=True) + "\n" for name in sorted(entries))
    path = atomic_write(manifest_path(root), lambda tmp: Path(tmp).write_text(text))
    for rank_file in Path(root).glob(RANK_MANIFEST_GLOB):
        rank_file.unlink(missing_ok=True)
    return path


def same_setting(recorded, wanted) -> bool:
    """Equal, or two spellings (relative / absolute) of one local path, such as a `--vae` folder or a checkpoint."""
    if recorded == wanted:
        return True
    if isinstance(recorded, str) and isinstance(wanted, str) and Path(recorded).exists() and Path(wanted).exists():
        return Path(recorded).resolve() == Path(wanted).resolve()
    return False
