"""The web demo (app.py): which model it serves, animating one photo, and the page served for real on 127.0.0.1,
driven through gradio_client and through headless Chromium.

The server tests need the demo's packages (requirements-demo.txt) and Debian's chromium and chromium-driver. Where
they are missing these tests are skipped with the reason, unless FASHIONFLOW_REQUIRE_DEMO is set (as in CI), where
that is a failure.
"""

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from browser import animate_in_page, chromium, error_in_page, missing_browser

from models.data.video_io import probe_video
from models.networks.checkpoint import RELEASED_CHECKPOINT_PATH
from models.pipeline.model_source import ModelSource
from models.serving.animate import AnimateSettings, load_pipeline
from models.serving.demo import ModelChoice, NoModelError, PhotoError, animate_photo, frames_range, resolve_model
from models.serving.quickstart import QuickstartConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
PHOTO = EXAMPLES / "synthetic.png"
SERVER_START_SECONDS = 180  # importing gradio and torch and loading the model, on 2 busy cores


def require_demo(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("FASHIONFLOW_REQUIRE_DEMO"):
        pytest.fail(f"{reason}; FASHIONFLOW_REQUIRE_DEMO is set, so the demo tests must run")
    pytest.skip(reason)


def missing_packages() -> str | None:
    missing = [name for name in ("gradio", "gradio_client", "selenium") if importlib.util.find_spec(name) is None]
    return f"{', '.join(missing)} not installed: pip install -r requirements-demo.txt" if missing else None


def truncated_copy(photo: Path, target: Path) -> Path:
    """The first 3000 bytes of a JPEG: its header reads, its pixels do not (a photo cut off mid-upload)."""
    target.write_bytes(photo.read_bytes()[:3000])
    return target


# ---------------------------------------------------------------------------------------------------- the model


def test_no_model_names_the_commands_that_make_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NoModelError) as caught:
        resolve_model()
    message = str(caught.value)
    assert "python -m models quickstart" in message and f"curl -L -o {RELEASED_CHECKPOINT_PATH} 'https://" in message
    assert "python app.py --checkpoint PATH" in message


def test_the_released_checkpoint_comes_before_the_quickstart_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quickstart = QuickstartConfig()
    (quickstart.work / "checkpoint").mkdir(parents=True)
    for step in (400, 1200):
        (quickstart.work / "checkpoint" / f"step_{step:07d}.pth").write_bytes(b"")
    quickstart.vae_dir.mkdir(parents=True), quickstart.clip_dir.mkdir(parents=True)
    choice = resolve_model()
    assert choice.source.checkpoint == quickstart.work / "checkpoint" / "step_0001200.pth"
    assert (choice.source.vae, choice.source.clip) == (str(quickstart.vae_dir), str(quickstart.clip_dir))

    Path(RELEASED_CHECKPOINT_PATH).parent.mkdir()
    Path(RELEASED_CHECKPOINT_PATH).write_bytes(b"")
    choice = resolve_model()
    assert choice.source == ModelSource(Path(RELEASED_CHECKPOINT_PATH))  # the hub's encoders
    assert resolve_model("mine.pth", vae="v") == ModelChoice(ModelSource(Path("mine.pth"), vae="v"), "--checkpoint")


def test_the_quickstart_model_needs_its_encoders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quickstart = QuickstartConfig()
    (quickstart.work / "checkpoint").mkdir(parents=True)
    (quickstart.work / "checkpoint" / "step_0001200.pth").write_bytes(b"")
    with pytest.raises(NoModelError):
        resolve_model()


def test_frames_offered_are_the_ones_the_unet_takes():
    from models.core.config import get_preset

    assert frames_range(get_preset("tiny")) == (2, 8, 2)
    assert frames_range(get_preset("paper")) == (2, 70, 2)
    deeper = get_preset("tiny", temporal_compression=(True, True))  # frames must be multiples of 4
    assert frames_range(deeper) == (4, 8, 4)
    assert frames_range(get_preset("tiny"), max_frames=16) == (2, 16, 2)


# ---------------------------------------------------------------------------------------------------- one photo


@pytest.fixture(scope="module")
def tiny_pipeline(parts):
    pipeline, precision = load_pipeline(ModelSource(parts["ours"], vae=parts["vae"], clip=parts["clip"], device="cpu"))
    return pipeline, precision


def test_animate_photo_writes_each_video_its_gif_and_settings_in_a_folder_of_its_own(tmp_path, tiny_pipeline):
    pipeline, precision = tiny_pipeline
    settings = AnimateSettings(
        output_dir=str(tmp_path), num_videos=2, frames=4, steps=2, seed=3, fps=10, gif=True, precision=precision, progress=False
    )
    first, second = animate_photo(pipeline, PHOTO, settings), animate_photo(pipeline, PHOTO, settings)
    assert first.folder.parent == second.folder.parent == tmp_path and first.folder != second.folder
    assert [v.name for v in first.videos] == ["synthetic_sample0.mp4", "synthetic_sample1.mp4"]
    assert all(probe_video(v).frames == 4 for v in first.videos)
    assert sorted(p.name for p in first.files) == sorted(
        f"synthetic_sample{k}.{suffix}" for k in range(2) for suffix in ("mp4", "gif", "json")
    )
    for k in range(2):
        sidecar = first.sidecars[f"synthetic_sample{k}.mp4"]
        assert (sidecar["frames"], sidecar["steps"], sidecar["seed"], sidecar["fps"], sidecar["sample_index"]) == (4, 2, 3, 10, k)
    # the same settings give the same videos; the two samples differ
    from models.data.video_io import read_video_frames

    a, b = (read_video_frames(made.videos[1]) for made in (first, second))
    assert torch.equal(a, b) and not torch.equal(a, read_video_frames(first.videos[0]))


def test_a_photo_that_cannot_be_read_is_named_and_leaves_nothing(tmp_path, tiny_pipeline):
    pipeline, precision = tiny_pipeline
    broken = truncated_copy(EXAMPLES / "blue.jpg", tmp_path / "broken.jpg")
    out = tmp_path / "out"
    settings = AnimateSettings(output_dir=str(out), frames=4, steps=1, precision=precision, progress=False)
    with pytest.raises(PhotoError, match=rf"cannot read image {broken}: corrupt or truncated image.*Pass a photo"):
        animate_photo(pipeline, broken, settings)
    assert list(out.iterdir()) == []


def test_no_model_gives_a_page_that_says_what_to_run(tmp_path, monkeypatch):
    require_demo(missing_packages())
    from models.serving.demo_page import build_page

    monkeypatch.chdir(tmp_path)
    page, problem = build_page(output_dir=tmp_path / "out")
    assert "python -m models quickstart" in problem
    texts = [c.get("props", {}).get("value") for c in page.get_config_file()["components"]]
    assert any(isinstance(text, str) and problem in text for text in texts), "the page does not show the message"


# ---------------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(parts, tmp_path_factory):
    """`python app.py` serving the tiny model on 127.0.0.1; yields its URL and output folder."""
    require_demo(missing_packages())
    root = tmp_path_factory.mktemp("demo")
    port, log = free_port(), (root / "server.log").open("w+")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False"}
    argv = ["--checkpoint", str(parts["ours"]), "--vae", parts["vae"], "--clip", parts["clip"], "--port", str(port)]
    argv += ["--host", "127.0.0.1", "--output_dir", str(root / "result")]
    proc = subprocess.Popen([sys.executable, "app.py", *argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            log.seek(0)
            assert proc.poll() is None, f"app.py exited with status {proc.returncode}:\n{log.read()[-4000:]}"
            assert time.monotonic() < deadline, f"app.py did not answer within {SERVER_START_SECONDS} s:\n{log.read()[-4000:]}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield dict(url=url, output_dir=root / "result", log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def video_path(update) -> str | None:
    """The file of a video output as gradio_client returns it (a path, or an update naming one)."""
    return update.get("value") if isinstance(update, dict) else update


def test_gradio_client_gets_videos_with_the_frames_asked_for(server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server["url"], verbose=False, download_files=str(tmp_path))
    *players, files, sidecars = client.predict(
        handle_file(PHOTO), 6, 2, "ddim", 5, 2, 12, "crop", False, api_name="/animate"
    )  # photo, frames, steps, sampler, seed, videos, fps, resize mode, gif
    videos = [video_path(p) for p in players]
    assert videos[2:] == [None, None] and all(videos[:2])
    assert [probe_video(v).frames for v in videos[:2]] == [6, 6]
    assert sorted(Path(f).name for f in files) == sorted(f"synthetic_sample{k}.{s}" for k in range(2) for s in ("mp4", "json"))
    assert sorted(sidecars) == ["synthetic_sample0.mp4", "synthetic_sample1.mp4"]
    assert all((s["frames"], s["steps"], s["sampler"], s["seed"], s["fps"]) == (6, 2, "ddim", 5, 12) for s in sidecars.values())
    assert all((s["loop"], s["overlap"]) == (False, None) for s in sidecars.values())  # one window: nothing overlaps
    # longer than the trained 8 frames and looping, in windows sharing 3 frames, as inference.py --loop --overlap 3
    *players, _, sidecars = client.predict(
        handle_file(PHOTO), 12, 1, "ddim", 5, 1, 12, "crop", False, loop=True, overlap=3, api_name="/animate"
    )
    assert probe_video(video_path(players[0])).frames == 12
    assert (sidecars["synthetic_sample0.mp4"]["loop"], sidecars["synthetic_sample0.mp4"]["overlap"]) == (True, 3)


def test_a_failing_photo_shows_its_reason_and_the_server_goes_on(server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server["url"], verbose=False, download_files=str(tmp_path))
    broken = truncated_copy(EXAMPLES / "blue.jpg", tmp_path / "broken.jpg")
    with pytest.raises(AppError, match=r"cannot read image .*broken\.jpg: corrupt or truncated image.*Pass a photo"):
        client.predict(handle_file(broken), 4, 1, "ddpm", 0, 1, 25, "resize", False, api_name="/animate")
    players = client.predict(handle_file(PHOTO), 4, 1, "ddpm", 0, 1, 25, "resize", False, api_name="/animate")[:1]
    assert probe_video(video_path(players[0])).frames == 4


def test_in_chromium_an_uploaded_photo_becomes_a_video_that_plays(server, tmp_path):
    require_demo(missing_browser())
    broken = truncated_copy(EXAMPLES / "blue.jpg", tmp_path / "broken.jpg")
    with chromium() as driver:
        error = error_in_page(driver, server["url"], broken)
        src, ready, duration = animate_in_page(driver, server["url"], PHOTO)  # the server goes on
        driver.save_screenshot(str(tmp_path / "page.png"))
    assert "cannot read image" in error and "broken.jpg: corrupt or truncated image" in error and "Pass a photo" in error
    assert src.startswith(server["url"]) and src.endswith("synthetic_sample0.mp4")
    assert ready >= 1 and duration == pytest.approx(8 / 25, abs=0.05)  # the tiny model's 8 frames at 25 fps
