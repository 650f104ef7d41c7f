"""The Gradio page of the web demo (`python app.py`): a photo in (uploaded or an example), the sampling settings,
a progress bar while it samples, the videos playing with mp4 and gif downloads, and the settings each was made with.

The work is `demo.py`'s and, below it, `animate.py`'s (the same path as `inference.py`). One request runs at a time
(the pipeline is not shared between threads); the others wait in the queue, told their place. A photo that fails
shows its reason in the page and the server goes on serving.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..core.cli import USER_ERRORS
from ..core.config import DEFAULT_FPS
from ..core.outputs import ensure_writable_dir
from ..data.video_io import RESIZE_MODES
from ..diffusion.samplers import DEFAULT_SAMPLER, SAMPLERS, sampler_name
from ..pipeline.long_video import default_overlap
from .animate import AnimateSettings, load_pipeline
from .demo import animate_photo, frames_range, resolve_model

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "docs" / "examples"  # in the repository; an installed copy has none
MAX_VIDEOS = 4  # video players on the page; one request makes at most this many
MAX_WINDOWS = 4  # longest video offered, in trained lengths (longer ones are sampled in windows: models/pipeline/long_video.py)
MAX_STEPS = 100  # the page's limit; inference.py takes up to the schedule's 1000
PLAYER_HEIGHT = 420  # pixels: photo and videos side by side without scrolling
QUEUE_SIZE = 20  # requests waiting beyond this are turned away with a message
TITLE = "FashionFlow: a fashion photo to a short video"


def example_photos() -> list[str]:
    if not EXAMPLES_DIR.is_dir():
        return []
    return sorted(str(p) for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def model_line(choice, pipeline, precision: str) -> str:
    config = pipeline.model_config
    height, width = pipeline.image_size
    return (
        f"Model: {choice.origin}, `{choice.source.checkpoint}` ({config.frames} frames at {width}x{height}, "
        f"{pipeline.encoders.preprocessing} preprocessing) on {pipeline.device.type} in {precision}."
    )


def animate_page(pipeline, precision: str, choice, output_dir) -> gr.Blocks:
    """The demo page, serving `pipeline` and writing each request's files under `output_dir`."""
    trained = pipeline.model_config.frames
    fewest, most, step = frames_range(pipeline.model_config, max_frames=MAX_WINDOWS * trained)

    # Gradio finds the progress bar by this default; it follows the tqdm bars of animate() and the pipeline
    def run(
        photo, frames, steps, sampler, seed, num_videos, fps, resize_mode, gif, loop, overlap,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008
    ):  # fmt: skip
        if photo is None:
            raise gr.Error("Upload a photo or pick one of the examples first.")
        windowed = pipeline.is_windowed(int(frames), loop)  # else there is no overlap, and the sidecar records none
        settings = AnimateSettings(
            output_dir=str(output_dir), num_videos=int(num_videos), frames=int(frames), sampler=sampler, steps=int(steps),
            seed=int(seed), precision=precision, fps=int(fps), resize_mode=resize_mode, gif=gif, loop=loop,
            overlap=int(overlap) if windowed else None, record=choice.source.record(),
        )  # fmt: skip
        try:
            made = animate_photo(pipeline, photo, settings)
        except USER_ERRORS as error:
            raise gr.Error(str(error), duration=None) from error
        players = [gr.Video(value=str(video), visible=True) for video in made.videos]
        players += [gr.Video(value=None, visible=False)] * (MAX_VIDEOS - len(players))
        return *players, [str(path) for path in made.files], made.sidecars

    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        gr.Markdown(f"# {TITLE}\n{model_line(choice, pipeline, precision)}")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(
                    label="photo", type="filepath", image_mode=None, sources=["upload"], height=PLAYER_HEIGHT, elem_id="photo"
                )
                if examples := example_photos():
                    gr.Examples(examples, inputs=photo, label="examples", cache_examples=False)
                frames = gr.Slider(
                    fewest, most, value=trained, step=step, label=f"frames (frame 0 is the photo; over {trained}: in windows)"
                )
                with gr.Row():  # inference.py's --loop and --overlap
                    loop = gr.Checkbox(False, label="loop (the last frame leads back into the first)")
                    overlap = gr.Slider(
                        1, trained - 1, value=default_overlap(trained), step=1, label="frames shared by windows (cross-faded)"
                    )
                with gr.Row():
                    # the model's own sampling by default: a distilled student's LCM and few steps
                    steps = gr.Slider(1, MAX_STEPS, value=pipeline.default_steps, step=1, label="denoising steps")
                    own = sampler_name(pipeline.scheduler)
                    sampler = gr.Dropdown(list(SAMPLERS), value=own if own in SAMPLERS else DEFAULT_SAMPLER, label="sampler")
                with gr.Row():
                    seed = gr.Number(0, precision=0, minimum=0, label="seed (same seed and settings, same video)")
                    num_videos = gr.Slider(1, MAX_VIDEOS, value=1, step=1, label="videos")
                with gr.Row():
                    fps = gr.Slider(1, 60, value=DEFAULT_FPS, step=1, label="frames per second")
                    resize_mode = gr.Radio(list(RESIZE_MODES), value="resize", label="photo of another aspect")
                gif = gr.Checkbox(True, label="also a GIF")
                button = gr.Button("Animate", variant="primary", elem_id="animate")
            with gr.Column():
                players = [
                    gr.Video(
                        label=f"video {k}", visible=k == 0, autoplay=True, loop=True, height=PLAYER_HEIGHT, elem_id=f"video-{k}"
                    )
                    for k in range(MAX_VIDEOS)
                ]
                files = gr.File(label="downloads (mp4, gif, settings)", file_count="multiple", elem_id="downloads")
                sidecars = gr.JSON(label="settings of each video (the sidecar files)", elem_id="settings")
        button.click(
            run,
            inputs=[photo, frames, steps, sampler, seed, num_videos, fps, resize_mode, gif, loop, overlap],
            outputs=[*players, files, sidecars],
            api_name="animate",
        )
    return page


def setup_page(message: str) -> gr.Blocks:
    """The page shown when no model could be loaded: why, and the command that fixes it."""
    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        gr.Markdown(f"# {TITLE}\n\n{message}", elem_id="setup")
    return page


def build_page(*, checkpoint=None, vae=None, clip=None, output_dir) -> tuple[gr.Blocks, str | None]:
    """The demo page, or the set-up page when no model can be loaded (then also its message)."""
    try:
        choice = resolve_model(checkpoint, vae=vae, clip=clip)
        pipeline, precision = load_pipeline(choice.source)
    except USER_ERRORS as error:
        return setup_page(str(error)), str(error)
    return animate_page(pipeline, precision, choice, output_dir), None


def serve(*, checkpoint=None, vae=None, clip=None, output_dir, host: str, port: int | None, share: bool) -> None:
    """Build the page and serve it until interrupted."""
    output_dir = ensure_writable_dir(output_dir, "--output_dir")
    page, problem = build_page(checkpoint=checkpoint, vae=vae, clip=clip, output_dir=output_dir)
    if problem:
        print(f"app.py: {problem}", flush=True)
    page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    page.launch(
        server_name=host, server_port=port, share=share, show_error=True, allowed_paths=[str(output_dir), str(EXAMPLES_DIR)]
    )
