"""Score a folder of generated videos against their ground-truth videos and write a paper-ready table.

    python -m models evaluate --generated result/ --reference fashion_dataset/test
    python -m models evaluate --metrics ssim,psnr --frames 70 --output result/metrics

Pairing: `inference.py` writes `<stem>.json` next to each `<stem>.mp4` with the source video and the frame
window it was generated from (`source`, `start_frame`, `frames`, ...); the reference is the file in
`--reference` with that name. A video without that sidecar pairs by name: its stem equals a reference stem,
or is a reference stem plus a sample suffix (`_sample0`, `-sample2`, `_3`, `3`; the longest matching reference
stem wins), compared from frame 0.

Scored frames (models/evaluation/scoring.py): frame 0 of a generated video is the conditioning image, so it is left out
unless --include_input_frame. Per-frame SSIM, PSNR and LPIPS are averaged over every scored frame; FID compares
the Inception features of all scored generated frames with those of their reference windows; FVD compares I3D
features of 16-frame clips (StyleGAN-V protocol). A generated video shorter or longer than its reference window
is compared on the shorter length and named, per video and in the summary. SSIM/PSNR always run; LPIPS/FID/FVD
need their weights files (see --weights_dir) and are reported as skipped, with where to get them, when those are
missing, unless asked for in --metrics.
Writes `<output>.json` and `<output>.md` with the protocol (resolution, frames, clip sampling, weights).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from tqdm import tqdm

from ..core.cli import run_command
from ..core.distributed import pick_device
from ..core.files import atomic_write
from ..data.video_io import iter_video_frames, resize_frame
from .feature_nets import MissingWeightsError, download_weights, load_i3d, load_inception, load_lpips, resolve_weights
from .metrics import FeatureStats, frechet_distance_from_stats, psnr, ssim
from .scoring import ScoredFrames

ALL_METRICS = ("ssim", "psnr", "lpips", "fid", "fvd")
NETWORK_METRICS = {"lpips": ("lpips_alex", "lpips_lin"), "fid": ("inception",), "fvd": ("i3d",)}
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
FVD_CLIP_FRAMES = 16  # StyleGAN-V / DIGAN FVD protocol
I3D_CALL = dict(rescale=True, resize=True, return_features=True)  # as StyleGAN-V calls i3d_torchscript.pt
SAMPLE_SUFFIX = re.compile(r"(?:[_-]?sample)?[_-]?\d+")
PAIRING_RULE = (
    "one generated file per stem (mp4 before gif); its sidecar <stem>.json (source, start_frame, frames) names the "
    "reference file; otherwise the generated stem equals a reference stem, or a reference stem plus a sample suffix "
    "([_-]?sample)?[_-]?<digits> (longest stem wins), from frame 0"
)


@dataclass(frozen=True)
class VideoPair:
    generated: Path
    reference: Path
    start_frame: int = 0  # first reference frame of the window the video was generated from
    frames: int | None = None  # window length recorded by inference; None: as long as both videos last
    matched_by: str = "name"  # "sidecar" or "name"
    sidecar: dict | None = None


# --- pairing ----------------------------------------------------------------------------------------


def _videos_in(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"video folder {directory} does not exist; pass an existing folder")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def one_file_per_sample(videos: list[Path]) -> list[Path]:
    """Of files sharing a stem (`inference.py --gif` writes an mp4 and a gif of each sample), the one whose
    extension comes first in VIDEO_EXTENSIONS: every sample is scored once, from its mp4 when there is one."""
    chosen: dict[Path, Path] = {}
    for video in sorted(videos, key=lambda path: VIDEO_EXTENSIONS.index(path.suffix.lower())):
        chosen.setdefault(video.with_suffix(""), video)
    return sorted(chosen.values())


def read_sidecar(path: Path) -> dict:
    """The generation record `inference.py` writes next to a video, checked."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read generation sidecar {path}: {error}; fix or delete it") from error
    if not isinstance(meta, dict) or not isinstance(meta.get("source"), str):
        raise ValueError(f"generation sidecar {path} has no 'source' (the reference video's name); fix or delete it")
    start, frames = meta.get("start_frame", 0), meta.get("frames")
    if not isinstance(start, int) or start < 0 or (frames is not None and (not isinstance(frames, int) or frames < 1)):
        raise ValueError(f"generation sidecar {path}: need start_frame >= 0 and frames >= 1, got {start!r} and {frames!r}")
    return meta


def _match_by_name(stem: str, references: dict[str, Path]) -> Path | None:
    if stem in references:
        return references[stem]
    candidates = [ref for ref in references if stem.startswith(ref) and SAMPLE_SUFFIX.fullmatch(stem[len(ref) :])]
    return references[max(candidates, key=len)] if candidates else None


def pair_videos(generated_dir, reference_dir) -> tuple[list[VideoPair], list[Path], list[Path]]:
    """(pairs, generated videos with no reference, references with no generated video); rule in PAIRING_RULE."""
    generated, references = one_file_per_sample(_videos_in(Path(generated_dir))), _videos_in(Path(reference_dir))
    by_name = {ref.name: ref for ref in references}
    by_stem = {ref.stem: ref for ref in references}
    pairs, unmatched = [], []
    for video in generated:
        sidecar_path = video.with_suffix(".json")
        if sidecar_path.is_file():
            meta = read_sidecar(sidecar_path)
            source = Path(meta["source"])
            reference = by_name.get(source.name) or by_stem.get(source.stem)
            if reference is not None:
                pairs.append(VideoPair(video, reference, meta.get("start_frame", 0), meta.get("frames"), "sidecar", meta))
        else:
            reference = _match_by_name(video.stem, by_stem)
            if reference is not None:
                pairs.append(VideoPair(video, reference))
        if reference is None:
            unmatched.append(video)
    used = {pair.reference for pair in pairs}
    return pairs, unmatched, [ref for ref in references if ref not in used]


# --- streaming frames -------------------------------------------------------------------------------


class FramesInStep:
    """The uint8 frames `[H, W, 3]` of a pair's generated video and of its reference window, in step, at most
    `limit` of each; once iterated, `count` is how many were read and `mismatch` says in words when the generated
    video was shorter or longer than its reference window (None when they agreed)."""

    def __init__(self, pair: VideoPair, limit: int | None):
        self.pair, self.limit = pair, limit
        self.count, self.mismatch = 0, None

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        generated = iter_video_frames(self.pair.generated)
        reference = iter_video_frames(self.pair.reference, start=self.pair.start_frame)
        while self.limit is None or self.count < self.limit:
            frame, truth = next(generated, None), next(reference, None)
            if frame is None or truth is None:
                self.mismatch = self._ended_early(frame is None, truth is None)
                return
            self.count += 1
            yield frame, truth
        if self.limit == self.pair.frames and next(generated, None) is not None:
            self.mismatch = (
                f"the generated video is longer than the window of {self.pair.frames} frames its sidecar records; "
                f"compared on the first {self.count}"
            )

    def _ended_early(self, generated_ended: bool, reference_ended: bool) -> str | None:
        window, count = self.pair.frames, self.count
        if generated_ended and reference_ended and (window is None or count == window):
            return None
        reference = f"{self.pair.reference.name} from frame {self.pair.start_frame}"
        if generated_ended and reference_ended:
            problem = f"the generated video and {reference} both end after {count} frames, short of the window of {window}"
        elif generated_ended:
            longer = f"its sidecar records a window of {window}" if window else f"{reference} has more"
            problem = f"the generated video has {count} frames but {longer}"
        else:
            problem = f"{reference} has only {count} frames, the generated video more"
        return f"{problem}; compared on the first {count}"


def _frame_chunks(frames: FramesInStep, scored: ScoredFrames, *, size, chunk: int):
    """Aligned uint8 `[n, H, W, 3]` chunks (generated, reference) of the scored frames, decoded sequentially.

    Both are resized to `size` (H, W), or the generated frames to the reference's size when `size` is None.
    """
    pairs = islice(frames, scored.first, None)
    while block := list(islice(pairs, chunk)):
        generated, reference = zip(*block)
        target = size or reference[0].shape[:2]
        yield (np.stack([resize_frame(f, target) for f in generated]), np.stack([resize_frame(f, target) for f in reference]))


def _to_device(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 `[n, H, W, 3]` -> float `[n, 3, H, W]` in [0, 1] on `device` (the uint8 is what crosses the bus)."""
    return rearrange(torch.from_numpy(frames).to(device), "n h w c -> n c h w").float().div(255)


# --- scoring ----------------------------------------------------------------------------------------


class Scorer:
    """Accumulates per-frame scores and feature statistics pair by pair; holds no more than one chunk of frames
    and one FVD clip per side at a time."""

    def __init__(self, metrics, networks: dict, *, device):
        self.metrics = set(metrics)
        self.networks = networks
        self.device = device
        self.frame_scores = {name: [] for name in ("ssim", "psnr", "lpips") if name in self.metrics}
        self.stats = {name: (FeatureStats(), FeatureStats()) for name in ("fid", "fvd") if name in self.metrics}

    @torch.no_grad()
    def score_pair(self, chunks: Iterator[tuple[np.ndarray, np.ndarray]]) -> dict:
        before = {name: len(scores) for name, scores in self.frame_scores.items()}
        clip_gen, clip_ref, frames, clips, size = [], [], 0, 0, None
        for generated_u8, reference_u8 in chunks:
            frames += len(generated_u8)
            size = "{}x{}".format(*reference_u8.shape[1:3])
            self._score_frames(_to_device(generated_u8, self.device), _to_device(reference_u8, self.device))
            if "fvd" in self.metrics:
                clip_gen.extend(generated_u8)
                clip_ref.extend(reference_u8)
                while len(clip_gen) >= FVD_CLIP_FRAMES:
                    self._score_clip(np.stack(clip_gen[:FVD_CLIP_FRAMES]), np.stack(clip_ref[:FVD_CLIP_FRAMES]))
                    del clip_gen[:FVD_CLIP_FRAMES], clip_ref[:FVD_CLIP_FRAMES]
                    clips += 1
        summary = {"frames": frames, "resolution": size}
        if "fvd" in self.metrics:
            summary["fvd_clips"] = clips
        for name, scores in self.frame_scores.items():
            summary[name] = float(np.mean(scores[before[name] :])) if frames else None
        return summary

    def _score_frames(self, generated: torch.Tensor, reference: torch.Tensor) -> None:
        if "ssim" in self.metrics:
            self.frame_scores["ssim"] += ssim(generated, reference).tolist()
        if "psnr" in self.metrics:
            self.frame_scores["psnr"] += psnr(generated, reference).tolist()
        if "lpips" in self.metrics:
            self.frame_scores["lpips"] += self.networks["lpips"](generated, reference).tolist()
        if "fid" in self.metrics:
            gen_stats, ref_stats = self.stats["fid"]
            gen_stats.update(self.networks["fid"](generated))
            ref_stats.update(self.networks["fid"](reference))

    def _score_clip(self, generated: np.ndarray, reference: np.ndarray) -> None:
        """Two uint8 clips `[16, H, W, 3]`; the detector gets uint8 `[1, 3, 16, H, W]` as in StyleGAN-V."""
        gen_stats, ref_stats = self.stats["fvd"]
        for clip, stats in ((generated, gen_stats), (reference, ref_stats)):
            video = rearrange(torch.from_numpy(clip).to(self.device), "t h w c -> 1 c t h w")
            stats.update(self.networks["fvd"](video, **I3D_CALL).float())

    def results(self) -> tuple[dict, dict]:
        """({metric: summary}, {metric: reason it could not be computed})."""
        metrics, skipped = {}, {}
        for name, scores in self.frame_scores.items():
            if scores:
                metrics[name] = {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "frames": len(scores)}
            else:
                skipped[name] = "no frames were compared"
        for name, (gen_stats, ref_stats) in self.stats.items():
            unit = "frames" if name == "fid" else f"{FVD_CLIP_FRAMES}-frame clips"
            if min(gen_stats.count, ref_stats.count) < 2:
                skipped[name] = f"needs at least 2 {unit} on each side, got {gen_stats.count} and {ref_stats.count}"
                continue
            metrics[name] = {
                "value": frechet_distance_from_stats(gen_stats, ref_stats),
                "generated": gen_stats.count, "reference": ref_stats.count, "unit": unit, "feature_dim": gen_stats.dim,
            }  # fmt: skip
        return metrics, skipped


# --- networks ---------------------------------------------------------------------------------------


def _weights_file(key: str, args) -> Path:
    explicit = getattr(args, key)
    try:
        return resolve_weights(key, explicit, weights_dir=args.weights_dir)
    except MissingWeightsError:
        if not args.download or explicit is not None:
            raise
        return download_weights(key, args.weights_dir)


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_networks(metrics, args, *, required: bool, device) -> tuple[dict, dict, dict]:
    """({metric: network}, {metric: skip reason}, {weights key: {path, sha256}}) for the network metrics asked for.

    A missing weights file raises when `required` (the user named the metric), else skips the metric.
    """
    loaders = {
        "lpips": lambda paths: load_lpips(*paths, device=device),
        "fid": lambda paths: load_inception(*paths, device=device),
        "fvd": lambda paths: load_i3d(*paths, device=device),
    }
    networks, skipped, weights = {}, {}, {}
    for metric in (m for m in metrics if m in NETWORK_METRICS):
        try:
            paths = [_weights_file(key, args) for key in NETWORK_METRICS[metric]]
        except MissingWeightsError as error:
            if required:
                raise
            skipped[metric] = str(error)
            continue
        networks[metric] = loaders[metric](paths)
        for key, path in zip(NETWORK_METRICS[metric], paths):
            weights[key] = {"path": str(path), "sha256_16": _digest(path)}
    return networks, skipped, weights


# --- output -----------------------------------------------------------------------------------------


def _protocol(args, scored: ScoredFrames, pairs: list[VideoPair], per_video: list[dict], computed, weights, device) -> dict:
    compared = [video["frames"] for video in per_video]
    protocol = {
        "generated": str(args.generated),
        "reference": str(args.reference),
        "pairing": PAIRING_RULE,
        "videos": len(pairs),
        "length_mismatches": sum(video["length_mismatch"] is not None for video in per_video),
        **scored.record(),
        "resolution": sorted({video["resolution"] for video in per_video if video["resolution"]}),
        "resizing": "all frames to --resolution" if args.resolution else "generated frames to their reference's resolution",
        "resize_filter": "PIL bilinear on uint8 RGB frames",
        "frames_per_video": {"cap": args.frames, "min": min(compared, default=0), "max": max(compared, default=0)},
        "frames_total": sum(compared),
        "ssim": "Gaussian window 11x11 sigma 1.5, K1 0.01, K2 0.03, data range 1, each RGB channel then averaged, "
        "5-pixel border excluded (skimage structural_similarity gaussian_weights=True, use_sample_covariance=False)",
        "psnr": "per frame over RGB, data range 1, MSE floored at 1e-10 (100 dB)",
        "lpips": "v0.1 AlexNet with linear heads, frames mapped [0, 1] -> [-1, 1], at the evaluation resolution",
        "fid": "pytorch-fid InceptionV3 2048-d pool features, frames bilinearly resized to 299x299; every scored "
        "generated frame against every scored reference frame",
        "fvd": f"I3D features of {FVD_CLIP_FRAMES}-frame clips: non-overlapping consecutive windows from the first "
        f"scored frame of each pair (trailing frames short of a clip unused); detector called on uint8 "
        f"[B, 3, T, H, W] with {I3D_CALL} (StyleGAN-V)",
        "aggregation": "per-frame metrics: mean and std over all scored frames",
        "weights": weights,
        "device": str(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    return {key: value for key, value in protocol.items() if key not in ALL_METRICS or key in computed}


def _cell(metric: str, metrics: dict) -> str:
    if metric not in metrics:
        return "–"
    entry = metrics[metric]
    if "value" in entry:
        return f"{entry['value']:.2f}"
    digits = 2 if metric == "psnr" else 4
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def to_markdown(results: dict) -> str:
    metrics, protocol = results["metrics"], results["protocol"]
    header = ["videos", "frames", "SSIM ↑", "PSNR (dB) ↑", "LPIPS ↓", "FID ↓", "FVD ↓"]
    row = [str(protocol["videos"]), str(protocol["frames_total"]), *(_cell(m, metrics) for m in ALL_METRICS)]
    mismatched = [video for video in results["videos"] if video["length_mismatch"]]
    lines = [
        f"# Evaluation: `{protocol['generated']}` against `{protocol['reference']}`", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(row) + " |", "",
        f"Scored: {protocol['scored_frames']}.",
    ]  # fmt: skip
    if mismatched:
        lines.append(
            f"{len(mismatched)} of {protocol['videos']} generated videos differ in length from their reference window "
            "and were compared on the shorter length (see Length mismatches)."
        )
    lines += ["", "## Protocol", ""]
    for key, value in protocol.items():
        lines.append(f"- **{key}**: {json.dumps(value) if isinstance(value, dict | list) else value}")
    if mismatched:
        lines += ["", "## Length mismatches", ""] + [f"- `{v['generated']}`: {v['length_mismatch']}" for v in mismatched]
    if results["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- **{name}**: {reason}" for name, reason in results["skipped"].items()]
    for key in ("unmatched_generated", "unmatched_reference"):
        if results[key]:
            lines += ["", f"## {key.replace('_', ' ').capitalize()}", ""] + [f"- `{path}`" for path in results[key]]
    return "\n".join(lines) + "\n"


def console_summary(results: dict) -> str:
    """The markdown table, then why each metric shown as "–" was not computed."""
    table = to_markdown(results).split("\n## ")[0].strip()
    return "\n".join([table, *(f"{name} skipped: {reason}" for name, reason in results["skipped"].items())])


def write_results(results: dict, output) -> tuple[Path, Path]:
    base = Path(output)
    base = base.with_suffix("") if base.suffix in (".json", ".md") else base
    json_path, md_path = base.parent / f"{base.name}.json", base.parent / f"{base.name}.md"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2) + "\n"))
    atomic_write(md_path, lambda tmp: Path(tmp).write_text(to_markdown(results)))
    return json_path, md_path


# --- command ----------------------------------------------------------------------------------------


def _resolution(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[x,](\d+)", text.strip())
    if not match or min(int(match[1]), int(match[2])) < 32:
        raise argparse.ArgumentTypeError(f"--resolution takes HxW, e.g. 640x512 (at least 32x32), got {text!r}")
    return int(match[1]), int(match[2])


def _metric_list(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ALL_METRICS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--metrics takes a comma list of {','.join(ALL_METRICS)}, got {text!r}")
    return [m for m in ALL_METRICS if m in names]


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--generated", type=Path, default=Path("result"), help="folder of generated videos (+ sidecars)")
    parser.add_argument("--reference", type=Path, default=Path("fashion_dataset/test"), help="folder of ground-truth videos")
    parser.add_argument("--output", type=Path, default=Path("result/metrics"), help="writes OUTPUT.json and OUTPUT.md")
    parser.add_argument("--metrics", type=_metric_list, default=None,
                        help=f"comma list from {','.join(ALL_METRICS)}; named metrics must run (missing weights are an "
                        "error); default: all, skipping those without weights")  # fmt: skip
    parser.add_argument("--resolution", type=_resolution, default=None,
                        help="HxW to compare at; default: each reference's own (640x512 for UBC Fashion)")  # fmt: skip
    parser.add_argument("--frames", type=_positive, default=None,
                        help="read at most this many frames of each video, frame 0 included (it is scored only with "
                        "--include_input_frame)")  # fmt: skip
    parser.add_argument("--include_input_frame", action="store_true",
                        help="also score frame 0, the conditioning image (left out by default)")  # fmt: skip
    parser.add_argument("--device", default=None, help="torch device; default cuda when available, else cpu")
    parser.add_argument("--batch_size", type=_positive, default=16, help="frames decoded and scored per step")
    parser.add_argument("--weights_dir", type=Path, default=None,
                        help="folder of weights files under their usual names; default $FASHIONFLOW_METRIC_WEIGHTS")  # fmt: skip
    parser.add_argument("--inception", type=Path, default=None, help="pt_inception-2015-12-05-6726825d.pth (FID)")
    parser.add_argument("--i3d", type=Path, default=None, help="i3d_torchscript.pt or pytorch-i3d rgb_imagenet.pt (FVD)")
    parser.add_argument("--lpips_alex", type=Path, default=None, help="torchvision alexnet-owt-7be5be79.pth (LPIPS backbone)")
    parser.add_argument("--lpips_lin", type=Path, default=None, help="lpips v0.1 alex.pth (LPIPS linear heads)")
    parser.add_argument("--download", action="store_true", help="fetch missing weights files from their usual addresses")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    metrics = args.metrics or list(ALL_METRICS)
    pairs, unmatched_generated, unmatched_reference = pair_videos(args.generated, args.reference)
    if not pairs:
        raise ValueError(
            f"no video in {args.generated} pairs with a video in {args.reference} ({PAIRING_RULE}); "
            "check the two folders or write sidecars"
        )
    networks, skipped, weights = load_networks(metrics, args, required=args.metrics is not None, device=device)
    scorer = Scorer([m for m in metrics if m not in skipped], networks, device=device)
    scored = ScoredFrames(include_input=args.include_input_frame)
    per_video = []
    progress = tqdm(pairs, unit="video", desc="evaluating", file=sys.stderr)
    for pair in progress:
        limits = [n for n in (pair.frames, args.frames) if n is not None]
        frames = FramesInStep(pair, min(limits, default=None))
        summary = scorer.score_pair(_frame_chunks(frames, scored, size=args.resolution, chunk=args.batch_size))
        progress.set_postfix(frames=summary["frames"])
        if frames.mismatch:
            tqdm.write(f"{pair.generated.name}: {frames.mismatch}", file=sys.stderr)
        extra = {k: pair.sidecar[k] for k in ("sample_index", "seed") if pair.sidecar and k in pair.sidecar}
        per_video.append({
            "generated": str(pair.generated), "reference": str(pair.reference), "matched_by": pair.matched_by,
            "start_frame": pair.start_frame, **extra, **summary, "length_mismatch": frames.mismatch,
        })  # fmt: skip
    scores, not_computed = scorer.results()
    results = {
        "metrics": scores,
        "skipped": {**skipped, **not_computed},
        "protocol": _protocol(args, scored, pairs, per_video, scores, weights, device),
        "videos": per_video,
        "unmatched_generated": [str(p) for p in unmatched_generated],
        "unmatched_reference": [str(p) for p in unmatched_reference],
    }
    json_path, md_path = write_results(results, args.output)
    print(console_summary(results))
    print(f"wrote {json_path} and {md_path}")
    return results


def run(argv=None) -> int:
    return run_command("python -m models evaluate", lambda: main(argv))


if __name__ == "__main__":
    sys.exit(run())
