"""The web demo's work (`python app.py`): which model to serve, and animating one uploaded photo.

The page is `demo_page.py`; this module needs no Gradio, so it is tested without a server or a browser.

With no flags, `resolve_model` serves the released checkpoint (`RELEASED_CHECKPOINT_PATH`) with the encoders its
config names (the hub's), else the model and encoders the quickstart trained, else raises `NoModelError`, whose
message is the command that makes one. `animate_photo` is `animate.animate` on one photo, into a folder of its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..networks.checkpoint import RELEASED_CHECKPOINT_PATH, RELEASED_CHECKPOINT_URL, latest_checkpoint
from ..pipeline.model_source import ModelSource
from .animate import AnimateSettings, animate
from .inference_io import image_inputs
from .quickstart import QuickstartConfig


class NoModelError(FileNotFoundError):
    """No checkpoint given and none in the default places; the message says how to make one."""


class PhotoError(ValueError):
    """A photo that could not be animated; the message names it and says why."""


@dataclass(frozen=True)
class ModelChoice:
    source: ModelSource  # its vae and clip None: the encoders the checkpoint's config names
    origin: str = "--checkpoint"  # where the choice came from, shown on the page


@dataclass
class PhotoVideos:
    folder: Path  # this request's outputs
    videos: list[Path]  # one mp4 per sample, in sample order
    files: list[Path]  # what the page offers to download: mp4s, gifs, sidecars
    sidecars: dict[str, dict]  # the settings each video was made with, by its file name


def no_model_message() -> str:
    quickstart = QuickstartConfig()
    return (
        f"No model to serve: {RELEASED_CHECKPOINT_PATH} does not exist and the quickstart has not trained one "
        f"({quickstart.work / 'checkpoint'} with {quickstart.vae_dir} and {quickstart.clip_dir}). Make one, then start "
        "`python app.py` again:\n"
        "- the tiny model, offline on a CPU in a few minutes: `python -m models quickstart`\n"
        f"- the released model (its encoders come from the hub on first use): "
        f"`curl -L -o {RELEASED_CHECKPOINT_PATH} '{RELEASED_CHECKPOINT_URL}'`\n"
        "- or name one: `python app.py --checkpoint PATH [--vae DIR --clip DIR]`"
    )


def resolve_model(checkpoint=None, *, vae: str | None = None, clip: str | None = None) -> ModelChoice:
    """The model the demo serves: `checkpoint` when given, else the released one, else the quickstart's."""
    if checkpoint is not None:
        return ModelChoice(ModelSource(Path(checkpoint), vae, clip))
    if Path(RELEASED_CHECKPOINT_PATH).is_file():
        return ModelChoice(ModelSource(Path(RELEASED_CHECKPOINT_PATH), vae, clip), "the released checkpoint")
    quickstart = QuickstartConfig()
    trained = latest_checkpoint(quickstart.work / "checkpoint")
    if trained is not None and quickstart.vae_dir.is_dir() and quickstart.clip_dir.is_dir():
        vae, clip = vae or str(quickstart.vae_dir), clip or str(quickstart.clip_dir)
        return ModelChoice(ModelSource(trained, vae, clip), "the quickstart's tiny model")
    raise NoModelError(no_model_message())


def frames_range(config, max_frames: int | None = None) -> tuple[int, int, int]:
    """(fewest, most, step) frames to offer: multiples of the UNet's temporal factor, at least 2 (frame 0 is the
    photo), up to `max_frames` (default: the trained length, the longest single window; longer videos are made
    window by window). Windowed lengths may be any number, but one step keeps the slider simple."""
    step = config.frame_multiple
    return step * math.ceil(2 / step), config.resolve_frames(max_frames), step


def request_folder(output_dir) -> Path:
    """A new folder under `output_dir` for one request's files, named by its start time (and unique)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=output_dir))


def animate_photo(pipeline, photo, settings: AnimateSettings) -> PhotoVideos:
    """`settings.num_videos` videos of `photo` in a new folder under `settings.output_dir`; raises `PhotoError`
    (and leaves no folder) when the photo cannot be animated."""
    folder = request_folder(settings.output_dir)
    [result] = animate(pipeline, image_inputs([str(photo)]), dataclasses.replace(settings, output_dir=str(folder)))
    if not result.ok:
        shutil.rmtree(folder, ignore_errors=True)
        raise PhotoError(result.error)
    sidecars = {video.name: json.loads(video.with_suffix(".json").read_text()) for video in result.videos}
    extras = [video.with_suffix(suffix) for video in result.videos for suffix in (".gif", ".json")]
    return PhotoVideos(folder, result.videos, result.videos + [path for path in extras if path.is_file()], sidecars)
