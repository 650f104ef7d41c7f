"""Projection throughput (videos per minute): the original's approach against ours, side by side in one run.

    python bench/bench_projection.py                                        # CPU, tiny VAE (a few minutes)
    python bench/bench_projection.py --device cuda --vae CompVis/stable-diffusion-v1-4 --preprocessing legacy

The original's approach, as docs/ORIGINAL.md describes it: for each of the clip's frames, seek the capture to that frame
(`CAP_PROP_POS_FRAMES`) and read one frame, then encode the frames one VAE call each. Ours is
models/data/projection.py: sequential decoding of only the frames needed, batched VAE calls, decoding overlapped
with encoding. Both use the same VAE, frame size, clip length and start frames, and write the same files.

Two sets of videos: the sample clips as they are (70 frames, MPEG-4 part 2), and longer H.264 versions of them
(241 frames like the UBC videos, one keyframe per 250 frames as x264 writes by default, where a seek has to
decode from the keyframe). Results go to bench/results/projection_<device>.md.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "samples" / "videos"
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import torch  # noqa: E402

from bench._common import write_report  # noqa: E402
from models.core.config import PREPROCESSING_MODES  # noqa: E402
from models.core.distributed import pick_device  # noqa: E402
from models.core.files import atomic_torch_save  # noqa: E402
from models.core.manifest import read_manifest  # noqa: E402
from models.core.precision import PRECISIONS  # noqa: E402
from models.data.projection import project_dataset  # noqa: E402
from models.data.video_io import count_frames, frames_to_tensor, read_video_frames, resize_frame, write_mp4  # noqa: E402
from models.networks.encoders import FrozenEncoders  # noqa: E402
from models.networks.tiny_components import save_tiny_encoders  # noqa: E402


def project_by_seeking(video: Path, output_dir: Path, encoders, *, start: int, frames: int, size) -> torch.Tensor:
    """The original's approach: a seek and a read per frame, then one VAE call per frame. Returns the first frame."""
    capture = cv2.VideoCapture(str(video))
    pixels = []
    for index in range(start, start + frames):
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = capture.read()
        if not ok:
            raise RuntimeError(f"seeking {video} to frame {index} gave no frame")
        pixels.append(frames_to_tensor(resize_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)))
    capture.release()
    clip = torch.stack(pixels)
    latents = torch.cat([encoders.encode_frames(frame[None]) for frame in clip]).float().cpu()
    atomic_torch_save(clip[0].clone(), output_dir / f"{video.stem}_image.pt")
    atomic_torch_save(latents, output_dir / f"{video.stem}.pt")
    return clip[0]


def make_video_sets(work: Path, copies: int, long_frames: int) -> dict[str, Path]:
    """{'set name': folder}: the sample clips `copies` times, and H.264 ping-pong loops of them."""
    short, long = work / "samples", work / "long_h264"
    short.mkdir()
    long.mkdir()
    for video in sorted(SAMPLES.glob("*.mp4")):
        for copy in range(copies):
            shutil.copy(video, short / f"{video.stem}_{copy}.mp4")
        frames = read_video_frames(video)
        loop = torch.cat([frames, frames.flip(0)[1:-1]])  # forwards then backwards: smooth, any length
        reps = -(-long_frames // len(loop))
        write_mp4(loop.repeat(reps, 1, 1, 1)[:long_frames], long / f"{video.stem}.mp4")
    return {f"sample clips (mp4v, 70 frames) x{copies}": short, f"H.264, {long_frames} frames": long}


def bench_set(folder: Path, encoders, work: Path, args, settings: dict) -> dict:
    videos = sorted(folder.glob("*.mp4"))
    for video in videos:
        count_frames(video)  # both approaches then read from the page cache
    ours_dir, seek_dir = work / f"{folder.name}_ours", work / f"{folder.name}_seek"
    t0 = time.perf_counter()
    summary = project_dataset(folder, ours_dir, encoders, frames=args.frames, batch_size=args.batch_size,
                              size=args.size, progress=False, **settings)  # fmt: skip
    ours = time.perf_counter() - t0
    assert len(summary.projected) == len(videos), summary.report()
    starts = {name: entry["start_frame"] for name, entry in read_manifest(ours_dir).items()}
    seek_dir.mkdir()
    t0 = time.perf_counter()
    first_frames = {
        v.stem: project_by_seeking(v, seek_dir, encoders, start=starts[v.stem], frames=args.frames, size=args.size)
        for v in videos
    }
    seek = time.perf_counter() - t0
    # does the seek land on the frame it asked for? (it need not, with some codecs)
    wrong = [
        stem
        for stem, frame in first_frames.items()
        if not torch.equal(frame, torch.load(ours_dir / f"{stem}_image.pt", weights_only=True))
    ]
    return {"videos": len(videos), "seek_s": seek, "ours_s": ours, "wrong_start": wrong}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default=None, help="VAE (hub id or folder); default: a tiny random one (CPU bench)")
    parser.add_argument("--preprocessing", choices=PREPROCESSING_MODES, default="legacy", help="VAE input range")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32", help="VAE precision")
    parser.add_argument("--frames", type=int, default=70, help="frames per clip (the paper's 70)")
    parser.add_argument("--size", type=int, nargs=2, default=[640, 512], metavar=("H", "W"), help="frame size")
    parser.add_argument("--batch_size", type=int, default=8, help="frames per VAE call in our projection")
    parser.add_argument("--copies", type=int, default=2, help="copies of each sample clip in the first set")
    parser.add_argument("--long_frames", type=int, default=241, help="length of the H.264 videos (UBC: ~241)")
    parser.add_argument("--out", default=None, help="results file; default bench/results/projection_<device>.md")
    args = parser.parse_args(argv)
    if not SAMPLES.is_dir():
        sys.exit(f"the sample clips are missing ({SAMPLES}); this bench needs ../shared/samples/videos")
    device = pick_device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        vae = args.vae or save_tiny_encoders(work / "encoders")[0]
        encoders = FrozenEncoders.from_pretrained(
            vae=vae, clip=None, preprocessing=args.preprocessing, device=device, dtype=PRECISIONS[args.precision]
        )
        encoders.encode_frames(torch.rand(args.batch_size, 3, *args.size))  # warm-up: kernels, allocator
        settings = {"preprocessing": args.preprocessing, "vae": str(vae)}
        sets = make_video_sets(work, args.copies, args.long_frames)
        results = {name: bench_set(folder, encoders, work, args, settings) for name, folder in sets.items()}
    vae_name = args.vae or "tiny random AutoencoderKL (models/networks/tiny_components.py)"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    lines = [
        f"# Projection throughput on {device.type} ({gpu})",
        "",
        f"`python bench/bench_projection.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"VAE: {vae_name}, {args.precision}; {args.frames} frames per clip at {args.size[0]}x{args.size[1]}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads.",
        "Seeking = the original's approach (seek + read per frame, one VAE call per frame); "
        f"ours = sequential decoding, {args.batch_size} frames per VAE call, decoding overlapped with encoding.",
        "",
        "| videos | count | seeking (videos/min) | ours (videos/min) | speed-up | seek landed on a wrong frame |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        seek_rate, ours_rate = 60 * r["videos"] / r["seek_s"], 60 * r["videos"] / r["ours_s"]
        wrong = ", ".join(r["wrong_start"]) or "none"
        lines.append(f"| {name} | {r['videos']} | {seek_rate:.1f} | {ours_rate:.1f} | {ours_rate / seek_rate:.2f}x | {wrong} |")
    write_report("\n".join(lines) + "\n", args.out, f"projection_{device.type}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
