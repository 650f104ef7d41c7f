"""Animating a catalogue: the whole `inference.py` command, alone or as one rank of many (`torchrun`).

Every rank lists the same inputs (the ranks compare a digest of the list, so two machines that see different
folders stop before any work) and animates its share, inputs rank, rank + world_size, ..., on its own GPU. As
every video depends only on (seed, input index or name, sample index), the videos are the same bytes whatever the
number of processes, given the same kind of device and threads per process. A rerun of the same command skips
every video an earlier run completed with the same settings (`models.serving.animate`), after removing what a killed run
left half-written.

Each rank appends one line per video to its manifest as the video's input finishes (`manifest.jsonl` for one
process, `manifest.rank<k>.jsonl` for rank k of several; models/core/manifest.py): its name (`<stem>_sample<k>`),
input, input and sample index, status (`done`, `skipped`: complete from an earlier run, or `failed` with the
error), output files, the settings the video depends on, and the seconds making it took (for a skipped video, in
the run that made it). At the end the ranks' summaries are added up, and the main rank merges the manifests into
`manifest.jsonl` and prints the summary: videos made, skipped, failed inputs with the reason, videos per hour.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ..core.distributed import all_gather_objects, barrier, cleanup_distributed, finish_ranks, setup_distributed
from ..core.files import leftover_temp_files_in
from ..core.manifest import append_manifest_entry, manifest_path
from ..pipeline.model_source import ModelSource
from .animate import AnimateSettings, InputResult, animate, load_pipeline, outputs_of, run_record
from .inference_io import InputList


@dataclass
class CatalogueSummary:
    made: int = 0  # videos made by this run
    skipped: int = 0  # videos an earlier run completed with the same settings
    failed: dict[str, str] = field(default_factory=dict)  # input -> why it could not be animated
    seconds: float = 0.0  # spent animating, loading excluded (once merged: the slowest rank's)
    processes: int = 1

    @classmethod
    def merge(cls, summaries: Sequence[CatalogueSummary]) -> CatalogueSummary:
        out = cls(processes=len(summaries))
        for s in summaries:
            out.made += s.made
            out.skipped += s.skipped
            out.failed.update(s.failed)
            out.seconds = max(out.seconds, s.seconds)
        return out

    def add(self, result: InputResult) -> None:
        self.made += sum(s.video is not None and not s.skipped for s in result.samples)
        self.skipped += result.skipped
        if not result.ok:
            self.failed[str(result.item.path)] = result.error

    @property
    def videos_per_hour(self) -> float:
        return 3600 * self.made / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """1 when an input failed (the others were still animated), else 0."""
        return 1 if self.failed else 0

    def report(self) -> str:
        lines = [
            "inference summary",
            f"  made      {self.made} videos in {self.seconds:.1f} s on {self.processes} process(es): "
            f"{self.videos_per_hour:.0f} videos per hour",
            f"  skipped   {self.skipped} videos already made with these settings (--overwrite makes them again)",
            f"  failed    {len(self.failed)} input(s)",
        ]
        return "\n".join(lines + [f"    {name}: {why}" for name, why in sorted(self.failed.items())])


def manifest_entry(result: InputResult, sample: int, settings: AnimateSettings, record: dict) -> dict:
    """The manifest line of one video; `record` is the run's settings (`run_record`)."""
    outcome = result.samples[sample]
    files = outputs_of(result, sample, settings)
    status = "failed" if outcome.error else "skipped" if outcome.skipped else "done"
    return {
        "name": files["sidecar"].stem,
        "input": str(result.item.path),
        "input_index": result.index,
        "sample_index": sample,
        "status": status,
        "error": outcome.error,
        "outputs": [] if outcome.error else [path.name for path in files.values()],
        "seconds": (outcome.sidecar or {}).get("seconds"),
        "settings": record,
    }


def animate_share(pipeline, inputs, settings: AnimateSettings) -> CatalogueSummary:
    """This rank's part: animate its inputs, append a manifest line per video, name each failure as it happens."""
    from tqdm.auto import tqdm

    manifest = manifest_path(settings.output_dir, settings.rank if settings.world_size > 1 else None)
    record = run_record(pipeline, settings)
    summary = CatalogueSummary(processes=settings.world_size)
    start = time.perf_counter()
    for result in animate(pipeline, inputs, settings):
        for sample in range(len(result.samples)):
            append_manifest_entry(manifest, manifest_entry(result, sample, settings, record))
        summary.add(result)
        if not result.ok:
            tqdm.write(f"failed {result.item.path}: {result.error}")  # above the progress bar
    summary.seconds = time.perf_counter() - start
    return summary


def check_same_inputs(inputs: InputList) -> None:
    """Every rank must list the same inputs in the same order, or two would write one file and some go undone."""
    seen = all_gather_objects((len(inputs), inputs.digest))
    if len(set(seen)) > 1:
        counts = ", ".join(f"rank {rank}: {count}" for rank, (count, _) in enumerate(seen))
        raise ValueError(
            f"the ranks list different inputs (inputs per rank: {counts}); give every machine the same --image / "
            "--image_list / --dataset on a shared filesystem, and leave the inputs unchanged while a run goes on"
        )


def animate_catalogue(
    inputs: InputList, settings: AnimateSettings, source: ModelSource, *, local_rank=None, compile: str | None = None
) -> CatalogueSummary:
    """What `inference.py` does, alone or as one rank of many: join the process group when a launcher started
    this process, animate this rank's share with `source`'s model on this rank's device (`source.device`, when
    given, names the kind), keep the manifest, and return the summary of all ranks (printed by the main rank)."""
    env = setup_distributed(source.device, local_rank)
    try:
        check_same_inputs(inputs)
        if env.is_main:
            for leftover in leftover_temp_files_in(settings.output_dir):  # a killed run's; no rank writes yet
                leftover.unlink(missing_ok=True)
        barrier()
        pipeline, precision = load_pipeline(replace(source, device=str(env.device)), compile=compile)
        settings = replace(
            settings,
            precision=precision,
            rank=env.rank,
            world_size=env.world_size,
            progress=settings.progress and env.is_main,
        )
        return finish_ranks(animate_share(pipeline, inputs, settings), settings.output_dir)
    finally:
        cleanup_distributed()
