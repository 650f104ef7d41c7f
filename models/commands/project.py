"""Project a folder of videos to VAE latents for training (train.py --dataset_vae reads the result).

    python project_latent_space.py --dataset fashion_dataset/train --output_dir fashion_dataset_tensor
    python project_latent_space.py --clips_per_video 3 --seed 1            # three clips from every video
    torchrun --nproc_per_node=4 project_latent_space.py                    # ranks split the videos
    python project_latent_space.py --preset tiny --vae tiny/vae             # the quickstart's 64x48, 8-frame clips

Per clip it writes `<name>_image.pt` (first frame, [3, H, W] in [0, 1]), `<name>.pt` (latents [F, 4, h, w]) and
a line of `manifest.jsonl`; extra clips are named `<name>_clip1`, `<name>_clip2`, ... Videos of any length,
size and frame rate work; broken or too short ones are skipped with their reason. Rerun the same command to
resume an interrupted projection. Exit status 0 when at least one clip is projected and nothing failed
unexpectedly.
"""

from __future__ import annotations

import argparse

from ..core.cli import positive_int, run_command
from ..core.config import PREPROCESSING_MODES, PRESETS
from ..core.distributed import add_local_rank_argument
from ..core.precision import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_dataset/train", help="folder of videos to project")
    parser.add_argument("--output_dir", default="fashion_dataset_tensor", help="folder for the tensors and manifest")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="model preset giving the default "
                        "frames, size, VAE and preprocessing: 'paper' (70 frames, 640x512), 'tiny' (8, 64x48)")  # fmt: skip
    parser.add_argument("--vae", default=None, help="VAE (hub id or local folder); default: the preset's")
    parser.add_argument("--preprocessing", choices=PREPROCESSING_MODES, default=None,
                        help="VAE input range: 'legacy' ([0, 1], what the released checkpoint was trained on) or "
                        "'standard' ([-1, 1]); default: the preset's (legacy for paper)")  # fmt: skip
    parser.add_argument("--frames", type=positive_int, default=None, help="frames per clip; default: the preset's (70)")
    parser.add_argument("--clips_per_video", type=positive_int, default=1,
                        help="clips taken from each video (non-overlapping where the video is long enough)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed for the clip start frames and the VAE samples")
    parser.add_argument("--batch_size", type=positive_int, default=8, help="frames per VAE call")
    parser.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                        help="frame size in pixels; default: the preset's latent size times the VAE's downscale")  # fmt: skip
    parser.add_argument("--device", default="auto", help="'auto' (this rank's GPU if any, else CPU), 'cpu', 'cuda', ...")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                        help="VAE precision (fp32 as the original; fp16/bf16 are faster on a GPU)")  # fmt: skip
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    add_local_rank_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..data.projection import project

    args = build_parser().parse_args(argv)
    summary = project(
        args.dataset, args.output_dir, preset=args.preset, vae=args.vae, preprocessing=args.preprocessing,
        frames=args.frames, clips_per_video=args.clips_per_video, seed=args.seed, batch_size=args.batch_size,
        size=args.size, device=args.device, precision=args.precision, local_rank=args.local_rank,
        progress=not args.no_progress,
    )  # fmt: skip
    return summary.exit_code


def run(argv=None) -> int:
    """The command-line entry point: `project_latent_space.py`, `python -m models project` and `fashionflow-project`."""
    return run_command("project_latent_space.py", lambda: main(argv))
