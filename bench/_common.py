"""What the bench scripts share without loading torch: where a report goes."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_report(text: str, out: str | None, default_name: str) -> Path:
    """Print a markdown report and write it to `out` (default: bench/results/<default_name>); returns that path."""
    print(text)
    path = Path(out) if out else RESULTS / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
