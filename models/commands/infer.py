"""Animate fashion photos with a trained FashionFlow model.

    python inference.py                                   # frame 0 of each video in fashion_dataset/test
    python inference.py --image photo.jpg                 # one photo (also: a folder, a glob, several)
    python inference.py --image shoots/ --num_of_vid 3 --gif --seed 7
    python inference.py --sampler ddpm --steps 1000       # the original's procedure (slow)
    python inference.py --image photo.jpg --frames 200 --loop   # longer than trained, looping
    python inference.py --image_list photos.txt           # one photo path per line (a catalogue of any size)
    torchrun --nproc_per_node=8 inference.py --image catalogue/ --output_dir videos/   # 8 GPUs split the inputs

For each input, `--output_dir` receives the conditioning image `<stem>_input.png` and, per sample k,
`<stem>_sample<k>.mp4` (H.264, plays in browsers and on phones) with a sidecar `<stem>_sample<k>.json`
(source, start frame, frames, fps, seed, sampler, ...), optionally `.gif` and a `_frames/` folder of pngs.

A rerun of the same command resumes: it skips every video whose files are complete and whose sidecar (written
last) records the same settings and source, makes the others, and says how many it skipped; `--overwrite` makes
them all again. Under `torchrun` (several GPUs, several machines: `--nnodes`, `--node_rank`, `--master_addr`)
every process animates its share of the inputs on its own GPU, and the videos are the same bytes as one
process makes on the same kind of device (on the CPU: with the same threads per process). `--output_dir` also
receives `manifest.jsonl`, one line per video (input, files, settings, seconds, status or error), and the run
ends with a summary (made, skipped, failed, videos per hour).

Dataset mode animates frame `--start_frame` (default 0) of each video; `--start_frame random` draws one per
video from `--seed` so that the `--frames` window fits in the video (the original drew from [0, 171],
assuming 241-frame videos). Inputs that cannot be read are reported by name and the others still animated;
the exit status is 1 when any input failed, 2 when nothing could start.

Precision: on CUDA the networks' weights are cast to fp16 (the precision the original's UNet ran in, under
autocast over fp32 weights: `--autocast` does that); on the CPU the default is fp32, bf16 works, and fp16
falls back to fp32 with a warning. `--low_memory` keeps the encoders off the GPU while the UNet works and
decodes two frames at a time; the sidecar records the peak memory either way.

A released checkpoint ({'net', 'adapter'}) means the paper configuration; `--preset` names another one
for such files (our checkpoints record their own). Videos depend only on (--seed, input index, sample
index), not on --batch_size or the device's random state.
"""

from __future__ import annotations

import argparse

from ..core.cli import USER_ERRORS, non_negative_int, positive_int, print_user_error, run_command
from ..core.config import DEFAULT_FPS, PREPROCESSING_MODES, PRESETS, SEED_BY
from ..core.distributed import add_local_rank_argument
from ..diffusion.samplers import SAMPLERS


def start_frame_arg(text: str):
    if text == "random":
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a frame index >= 0 or 'random', got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    from ..core.precision import PRECISIONS
    from ..data.video_io import RESIZE_MODES
    from ..diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, ORIGINAL_STEPS
    from ..networks.compiling import COMPILE_MODES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--pretrained_model",
        default="checkpoint/FashionFlow_checkpoint.pth",
        help="checkpoint: the released FashionFlow_checkpoint.pth, one of ours (.pth / .safetensors), or a pipeline "
        "folder made by python -m models.pipeline.convert",
    )
    p.add_argument(
        "--dataset",
        default="fashion_dataset/test",
        help="folder of videos whose frame --start_frame is animated (used when --image is not given)",
    )
    p.add_argument(
        "--image",
        nargs="+",
        metavar="PATH",
        help="photo(s) to animate: files, folders (their images), quoted glob patterns or .txt lists (as --image_list)",
    )
    p.add_argument(
        "--image_list",
        metavar="FILE",
        default=None,
        help="text file with one photo path per line, animated after any --image (read lazily: any number of lines)",
    )
    p.add_argument("--num_of_vid", type=positive_int, default=1, help="videos per input, each from its own seed")
    p.add_argument("--output_dir", default="result", help="where videos, input images and sidecars are written")
    p.add_argument(
        "--resize_mode",
        choices=RESIZE_MODES,
        default="resize",
        help="photos of another size/aspect: 'resize' stretches (as the original), 'crop' keeps the aspect and centre-crops",
    )
    p.add_argument(
        "--start_frame",
        type=start_frame_arg,
        default=0,
        help="dataset mode: frame to animate (an index, or 'random' drawn from --seed)",
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help=f"denoising sampler (default: the checkpoint's: {DEFAULT_SAMPLER}, or a distilled student's lcm)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=f"denoising steps (default: the checkpoint's: {DEFAULT_STEPS}, or a distilled student's few; --sampler ddpm "
        f"--steps {ORIGINAL_STEPS} is the original's procedure)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="base seed (>= 0); video k of input i uses (seed, i, k)")
    p.add_argument(
        "--seed_by",
        choices=SEED_BY,
        default="index",
        help="what seeds an input's videos with --seed: its place i in the inputs, or its output name (a stable hash), "
        "so that photos added to a folder change no other photo's videos and a rerun remakes only theirs",
    )
    p.add_argument(
        "--frames",
        type=positive_int,
        default=None,
        help="frames per video, frame 0 being the input (default: the checkpoint's, 70 for the paper); up to that, a "
        "multiple of the UNet's temporal factor (2 for the paper); more than that, any number, sampled in windows of the "
        "checkpoint's length, each starting on a frame of the one before (with --loop, any number too)",
    )
    p.add_argument("--loop", action="store_true", help="make the last frame lead back into the first (a looping clip)")
    p.add_argument(
        "--overlap",
        type=positive_int,
        default=None,
        help="frames shared by consecutive windows of a long video, cross-faded (default: half the window)",
    )
    p.add_argument("--fps", type=positive_int, default=DEFAULT_FPS, help="frame rate of the written videos")
    p.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default=None,
        help="network precision: the weights' dtype (default: fp16 on CUDA, fp32 elsewhere)",
    )
    p.add_argument(
        "--autocast",
        action="store_true",
        help="keep fp32 weights and run --precision under autocast, as the original did (slower)",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const=COMPILE_MODES[0],
        choices=COMPILE_MODES,
        default=None,
        help="torch.compile the UNet and the VAE decoder (pays off over many videos): each network whole "
        f"('{COMPILE_MODES[0]}', the default), their repeated blocks ('regional'), or whole with the UNet's calls "
        "replayed as CUDA graphs ('graphs')",
    )
    p.add_argument(
        "--low_memory",
        action="store_true",
        help="encoders off the GPU while idle and 2-frame decode chunks (a 70-frame 640x512 video in under 12 GB)",
    )
    p.add_argument(
        "--device", default=None, help="e.g. cuda, cuda:1, cpu (default: this process's GPU under torchrun, else cuda if any)"
    )
    p.add_argument("--batch_size", type=positive_int, default=1, help="videos denoised together")
    p.add_argument(
        "--decode_chunk_size", type=positive_int, default=8, help="frames per VAE decode call (lower it to save memory)"
    )
    p.add_argument("--vae", default=None, help="VAE: hub id or local folder (default: what the checkpoint records)")
    p.add_argument("--clip", default=None, help="CLIP vision model: hub id or local folder (default: the checkpoint's)")
    p.add_argument(
        "--preprocessing",
        choices=PREPROCESSING_MODES,
        default=None,
        help="pixel mapping for the encoders (default: the checkpoint's; 'legacy' for the released one)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="model config for released-format checkpoints, which record none (default: paper)",
    )
    p.add_argument("--no_ema", action="store_true", help="use the raw weights even if the checkpoint holds EMA ones")
    p.add_argument("--gif", action="store_true", help="also write <stem>_sample<k>.gif")
    p.add_argument("--png_frames", action="store_true", help="also write the frames to <stem>_sample<k>_frames/")
    p.add_argument(
        "--overwrite", action="store_true", help="make every video again (default: keep those a run already completed)"
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_local_rank_argument(p)
    return p


def main(argv=None) -> int:
    from ..core.outputs import ensure_writable_dir
    from ..pipeline.model_source import ModelSource
    from ..serving.animate import AnimateSettings
    from ..serving.catalogue import animate_catalogue
    from ..serving.inference_io import image_inputs, video_inputs

    args = build_parser().parse_args(argv)
    try:
        ensure_writable_dir(args.output_dir, "--output_dir")
        if args.image or args.image_list:
            inputs = image_inputs(args.image or [], args.image_list)
        else:
            inputs = video_inputs(args.dataset)
        source = ModelSource(
            args.pretrained_model, vae=args.vae, clip=args.clip, preprocessing=args.preprocessing, preset=args.preset,
            device=args.device, precision=args.precision, autocast=args.autocast, use_ema=not args.no_ema,
        )  # fmt: skip
        settings = AnimateSettings(
            output_dir=args.output_dir, num_videos=args.num_of_vid, frames=args.frames, sampler=args.sampler,
            steps=args.steps, seed=args.seed, seed_by=args.seed_by, batch_size=args.batch_size,
            decode_chunk_size=args.decode_chunk_size, fps=args.fps, resize_mode=args.resize_mode,
            start_frame=args.start_frame, loop=args.loop, overlap=args.overlap, gif=args.gif, png_frames=args.png_frames,
            low_memory=args.low_memory,
            progress=not args.no_progress, record=source.record(), overwrite=args.overwrite,
        )  # fmt: skip
        summary = animate_catalogue(inputs, settings, source, local_rank=args.local_rank, compile=args.compile)
    except USER_ERRORS as error:
        print_user_error("inference.py", error)
        return 2
    return summary.exit_code


def run(argv=None) -> int:
    """The command-line entry point: `inference.py`, `python -m models infer` and `fashionflow-infer`."""
    return run_command("inference.py", lambda: main(argv))
