"""mp4 writing on the CPU: libx264's presets, and frames streamed to the encoder while decoding against after it.

    python bench/bench_mp4.py                    # -> bench/results/mp4_cpu.md

`presets`: one 70-frame 640x512 clip (the synthetic figure of models/data/synthetic.py, once clean and once with
film grain, which is closer to what a model decodes) encoded by each libx264 preset at CRF 18 as `write_mp4`
encodes it: seconds (median), size, PSNR of the decoded mp4 against the frames. `streaming`: that clip (grain)
coming out of a stand-in decoder that takes `--decode_ms` a frame (default: the eager fp16 SD VAE on an H200,
bench/results/gpu_H200.md) in chunks of `--chunk` frames, written (a) after the last chunk, as inference.py did
before, and (b) chunk by chunk from the writer thread while the next chunks decode, as it does now: seconds to
the first frame at the encoder, to the end of decoding and to the mp4's last byte. The real decoder's figures
come from `bench_paper.py --sections inference` on a GPU.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import write_report  # noqa: E402
from models.data import video_io  # noqa: E402

PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")


def test_clip(frames: int, size, grain: float) -> np.ndarray:
    from models.data.synthetic import clip_params, render_clip

    clip = render_clip(clip_params(0, "train", 0), frames, tuple(size)).astype(np.float32)
    if grain:
        clip += np.random.default_rng(0).normal(0, grain, clip.shape).astype(np.float32)
    return np.clip(np.rint(clip), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse)) if mse else float("inf")


def bench_presets(args, tmp: Path) -> list[str]:
    lines = [
        f"## libx264 presets: {args.frames} frames at {args.size[0]}x{args.size[1]}, CRF 18, yuv420p, +faststart",
        "",
        f"Median of {args.repeats} encodes each (ffmpeg of imageio-ffmpeg, its default threads); the clip once clean "
        "and once with film grain (Gaussian, sigma 4 levels).",
        "",
        "| preset | clean: s | clean: KiB | clean: PSNR dB | grain: s | grain: KiB | grain: PSNR dB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    clips = {grain: test_clip(args.frames, args.size, grain) for grain in (0.0, 4.0)}
    default = video_io.X264_PRESET
    try:
        for preset in PRESETS:
            video_io.X264_PRESET = preset
            cells = []
            for clip in clips.values():
                path = tmp / f"{preset}.mp4"
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    video_io.write_mp4(clip, path, encoder="libx264")
                    times.append(time.perf_counter() - start)
                decoded = video_io.frames_to_uint8(video_io.read_video_frames(path))
                cells += [f"{statistics.median(times):.3f}", f"{path.stat().st_size / 1024:.0f}", f"{psnr(decoded, clip):.2f}"]
            lines.append(f"| {preset}{' (default)' if preset == default else ''} | {' | '.join(cells)} |")
            print(lines[-1], flush=True)
    finally:
        video_io.X264_PRESET = default
    return lines


def bench_streaming(args, tmp: Path) -> list[str]:
    from models.serving.animate import WRITES_IN_FLIGHT
    from models.serving.inference_io import BackgroundWriter

    clip = test_clip(args.frames, args.size, 4.0)

    def decoded():  # the stand-in decoder
        for chunk in np.array_split(clip, range(args.chunk, len(clip), args.chunk)):
            time.sleep(args.decode_ms / 1e3 * len(chunk))
            yield chunk

    def after() -> dict:
        start = time.perf_counter()
        frames = np.concatenate(list(decoded()))
        times = {"first": time.perf_counter() - start}
        times["decoded"] = times["first"]
        video_io.write_mp4(frames, tmp / "after.mp4")
        return times | {"last": time.perf_counter() - start}

    def streamed() -> dict:
        start, times = time.perf_counter(), {}
        mp4 = video_io.Mp4Writer(tmp / "streamed.mp4")
        with BackgroundWriter(max_pending=WRITES_IN_FLIGHT) as writer:
            for chunk in decoded():
                times.setdefault("first", time.perf_counter() - start)
                writer.submit(mp4.write, chunk)
            times["decoded"] = time.perf_counter() - start
            writer.submit(mp4.close)
        return times | {"last": time.perf_counter() - start}

    lines = [
        f"## Streamed while decoding: {args.frames} frames at {args.size[0]}x{args.size[1]}, libx264 {video_io.X264_PRESET}",
        "",
        f"A stand-in decoder taking {args.decode_ms} ms a frame (sleeping), {args.chunk} frames a chunk; the clip with "
        f"grain; medians of {args.repeats} runs. Seconds from the decoder's start.",
        "",
        "| mp4 | first frame at the encoder | decoding done | last byte | last byte after decoding |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, run in (("written after decoding (before)", after), ("streamed while decoding (now)", streamed)):
        runs = [run() for _ in range(args.repeats)]
        t = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        tail = statistics.median(r["last"] - r["decoded"] for r in runs)
        lines.append(f"| {name} | {t['first']:.3f} | {t['decoded']:.3f} | {t['last']:.3f} | {tail:.3f} |")
        print(lines[-1], flush=True)
    assert (tmp / "after.mp4").read_bytes() == (tmp / "streamed.mp4").read_bytes(), "streamed mp4 differs"
    return lines + ["", "Both mp4s are the same bytes."]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="presets,streaming", help="comma-separated: presets, streaming")
    parser.add_argument("--frames", type=int, default=70, help="frames per video (the paper's 70)")
    parser.add_argument("--size", type=int, nargs=2, default=[640, 512], metavar=("H", "W"), help="frame size")
    parser.add_argument("--decode_ms", type=float, default=18.3, help="streaming: the stand-in decoder's ms a frame")
    parser.add_argument("--chunk", type=int, default=8, help="streaming: frames a decode chunk")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median)")
    parser.add_argument("--out", default=None, help="results file; default bench/results/mp4_<device>.md")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    device = torch.device("cpu")
    lines = [
        f"# mp4 writing on {device.type} ({platform.processor() or platform.machine()})",
        "",
        f"`python bench/bench_mp4.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"),
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if "presets" in sections:
            lines += bench_presets(args, Path(tmp)) + [""]
        if "streaming" in sections:
            lines += bench_streaming(args, Path(tmp)) + [""]
    write_report("\n".join(lines), args.out, f"mp4_{device.type}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
