import os
import subprocess

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from models.data.video_io import (
    ImageReadError,
    VideoReadError,
    count_frames,
    ffmpeg_exe,
    frames_to_uint8,
    iter_video_frames,
    load_image,
    probe_video,
    read_video_frames,
    resize_frame,
    save_image,
    write_gif,
    write_mp4,
    write_png_frames,
)


def moving_frames(n=10, height=32, width=48, seed=0) -> torch.Tensor:
    """A smooth gradient with a bright square moving right: easy for the encoder, easy to check."""
    rng = np.random.default_rng(seed)
    base = torch.from_numpy(rng.uniform(0.2, 0.8, (3, 1, 1))).float()
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    frames = (base * (0.6 + 0.4 * ys)).expand(n, 3, height, width).clone()
    for t in range(n):
        frames[t, :, 8:16, 2 + 3 * t : 10 + 3 * t] = 1.0
    return frames.clamp(0, 1)


def ffmpeg_describe(path) -> str:
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr


def reference_decode(path) -> np.ndarray:
    """Every frame, in order, read without any seeking: the ground truth for start/count slicing."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr[..., ::-1])
    cap.release()
    return np.stack(frames)


@pytest.fixture(scope="module")
def sample_video(samples_dir):
    videos = sorted((samples_dir / "videos").glob("*.mp4"))
    if not videos:
        pytest.skip(f"no sample clips in {samples_dir / 'videos'}")
    return videos[0]


# --- writing ---------------------------------------------------------------------------------


def test_write_mp4_round_trip_is_h264(tmp_path):
    frames = moving_frames(n=12)
    path = write_mp4(frames, tmp_path / "clip.mp4", fps=25)
    cap = cv2.VideoCapture(str(path))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    assert fourcc.lower() in ("h264", "avc1")
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25)
    cap.release()
    described = ffmpeg_describe(path)
    assert "Video: h264" in described and "yuv420p" in described
    info = probe_video(path)
    assert (info.width, info.height, info.frames) == (48, 32, 12)
    assert count_frames(path) == 12
    decoded = read_video_frames(path)
    assert decoded.shape == frames.shape
    assert (decoded - frames).abs().mean() < 0.02  # lossy, but close
    # the moving square is where it was written
    assert decoded[5, :, 12, 2 + 15 + 4].min() > 0.85


def test_write_mp4_faststart_puts_index_first(tmp_path):
    data = write_mp4(moving_frames(n=4), tmp_path / "clip.mp4").read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")


def test_write_mp4_pads_odd_sizes(tmp_path):
    frames = moving_frames(n=3, height=31, width=45)
    path = write_mp4(frames, tmp_path / "odd.mp4")
    info = probe_video(path)
    assert (info.height, info.width) == (32, 46)
    decoded = read_video_frames(path)
    # the padding repeats the last row and column
    assert (decoded[:, :, -1] - decoded[:, :, -2]).abs().mean() < 0.02
    assert (decoded[:, :, :31, :45] - frames).abs().mean() < 0.02


def test_write_mp4_accepts_uint8_frames(tmp_path):
    pixels = frames_to_uint8(moving_frames(n=3))
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 32, 48, 3)
    assert count_frames(write_mp4(pixels, tmp_path / "u8.mp4")) == 3


def test_write_mp4_is_atomic_and_reports_ffmpeg_errors(tmp_path, monkeypatch):
    path = write_mp4(moving_frames(n=3), tmp_path / "clip.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    before = path.read_bytes()
    failing = tmp_path.parent / f"{tmp_path.name}_failing_ffmpeg.sh"
    failing.write_text("#!/bin/sh\necho 'Unknown encoder libx264' >&2\nexit 3\n")
    failing.chmod(0o755)
    monkeypatch.setattr("models.data.video_io.ffmpeg_exe", lambda: str(failing))
    with pytest.raises(RuntimeError, match=r"ffmpeg failed \(exit 3\).*Unknown encoder libx264"):
        write_mp4(moving_frames(n=50, height=256, width=256), path)  # enough bytes to fill the pipe
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_write_mp4_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        write_mp4(moving_frames(n=2), tmp_path / "a.mp4", fps=0)
    with pytest.raises(ValueError, match="a.mp4"):
        write_mp4(torch.rand(2, 4, 8, 8), tmp_path / "a.mp4")


def test_frames_to_uint8_rounds():
    x = torch.tensor([0.0, 0.51 / 255, 1.49 / 255, 1.51 / 255, 1.0, 1.2, -0.1]).reshape(1, 1, 7).expand(3, 1, 7)
    assert frames_to_uint8(x)[0, :, 0].tolist() == [0, 1, 1, 2, 255, 255, 0]


def test_write_gif_and_pngs(tmp_path):
    frames = moving_frames(n=4)
    gif = write_gif(frames, tmp_path / "clip.gif", fps=25)
    with Image.open(gif) as image:
        assert image.n_frames == 4 and image.size == (48, 32)
        assert image.info["duration"] == 40
    paths = write_png_frames(frames, tmp_path / "pngs", prefix="f")
    assert [p.name for p in paths] == [f"f_{i:04d}.png" for i in range(4)]
    assert np.array_equal(np.asarray(Image.open(paths[2])), frames_to_uint8(frames[2]))


# --- reading videos --------------------------------------------------------------------------


def test_read_sample_clip_matches_sequential_reference(sample_video):
    reference = reference_decode(sample_video)
    assert len(reference) == 70
    assert count_frames(sample_video) == 70
    info = probe_video(sample_video)
    assert (info.frames, info.fps, info.width, info.height) == (70, 25.0, 512, 640)

    clip = read_video_frames(sample_video, start=10, count=5)
    assert clip.shape == (5, 3, 640, 512) and clip.dtype == torch.float32
    expected = torch.from_numpy(reference[10:15].copy()).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(clip, expected)

    full = read_video_frames(sample_video)
    assert full.shape[0] == 70
    assert np.array_equal(frames_to_uint8(full[69]), reference[69])
    assert np.array_equal(next(iter_video_frames(sample_video, start=69)), reference[69])


def test_read_with_size_is_pil_bilinear(sample_video):
    reference = reference_decode(sample_video)
    clip = read_video_frames(sample_video, start=3, count=2, size=(320, 256))
    assert clip.shape == (2, 3, 320, 256)
    pil = np.asarray(Image.fromarray(reference[4]).resize((256, 320), Image.BILINEAR))
    assert np.array_equal(frames_to_uint8(clip[1]), pil)
    assert np.array_equal(resize_frame(reference[4], (320, 256)), pil)


def test_read_too_short(sample_video):
    with pytest.raises(VideoReadError) as excinfo:
        read_video_frames(sample_video, start=40, count=70)
    assert excinfo.value.reason == "too short: 70 frames, need 110"
    assert excinfo.value.path == sample_video
    assert str(sample_video) in str(excinfo.value)


def test_truncated_sample_clip(sample_video, tmp_path):
    data = sample_video.read_bytes()
    broken = tmp_path / "cut.mp4"
    broken.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(VideoReadError) as excinfo:
        read_video_frames(broken, count=70)
    assert excinfo.value.path == broken
    assert excinfo.value.reason.startswith("truncated or corrupt")


def test_truncated_faststart_clip_stops_early(tmp_path):
    data = write_mp4(torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(0)), tmp_path / "a.mp4").read_bytes()
    broken = tmp_path / "cut.mp4"
    broken.write_bytes(data[: len(data) // 2])
    assert probe_video(broken).frames == 20  # the index survives, the frames do not
    with pytest.raises(VideoReadError, match=r"truncated: decoding stopped at frame \d+ of 20 advertised") as excinfo:
        read_video_frames(broken, count=20)
    assert excinfo.value.path == broken
    assert count_frames(broken) < 20


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [("empty.mp4", b"", "empty or not a video"), ("notes.mp4", b"these are my notes\n" * 20, "empty or not a video")],
)
def test_not_a_video(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    for call in (read_video_frames, probe_video, count_frames, iter_video_frames):
        with pytest.raises(VideoReadError) as excinfo:
            call(path)
        assert excinfo.value.reason == reason
        assert str(path) in str(excinfo.value)


def test_missing_video(tmp_path):
    with pytest.raises(VideoReadError, match="no such file"):
        read_video_frames(tmp_path / "nope.mp4")


def test_read_arguments_are_checked(tmp_path):
    path = write_mp4(moving_frames(n=3), tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="count"):
        read_video_frames(path, count=0)
    with pytest.raises(ValueError, match="size"):
        read_video_frames(path, size=(32,))


# --- photos ----------------------------------------------------------------------------------

PAPER_SIZE = (640, 512)  # the paper's frames: 80x64 latents of the SD VAE (8x)


def test_load_sample_photo(samples_dir):
    photo = sorted((samples_dir / "images").glob("*.jpg"))[0]
    image = load_image(photo, size=PAPER_SIZE)
    assert image.shape == (3, 640, 512) and image.dtype == torch.float32
    with Image.open(photo) as pil:
        expected = np.asarray(pil.convert("RGB").resize((512, 640), Image.BILINEAR))
    assert np.array_equal(frames_to_uint8(image), expected)


def test_load_gray_rgba_cmyk_palette_16bit(tmp_path):
    gray = Image.new("L", (40, 50), 100)
    gray.save(tmp_path / "gray.png")
    assert torch.allclose(load_image(tmp_path / "gray.png", size=(50, 40)), torch.full((3, 50, 40), 100 / 255))

    rgba = Image.new("RGBA", (40, 50), (255, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 20, 50))
    rgba.save(tmp_path / "rgba.png")
    image = frames_to_uint8(load_image(tmp_path / "rgba.png", size=None))
    assert image[0, 0].tolist() == [255, 0, 0] and image[0, -1].tolist() == [255, 255, 255]  # transparent -> white

    Image.new("CMYK", (40, 50), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    image = frames_to_uint8(load_image(tmp_path / "cmyk.jpg", size=None))
    assert image.shape == (50, 40, 3) and image[25, 20, 0] > 200 and image[25, 20, 1:].max() < 60

    Image.new("RGB", (40, 50), (0, 0, 200)).convert("P").save(tmp_path / "palette.gif")
    assert frames_to_uint8(load_image(tmp_path / "palette.gif", size=None))[5, 5, 2] > 150

    Image.fromarray(np.full((50, 40), 65535 // 2, np.uint16)).save(tmp_path / "deep.png")
    assert abs(int(frames_to_uint8(load_image(tmp_path / "deep.png", size=None))[0, 0, 0]) - 128) <= 1


def test_exif_orientation_is_applied(tmp_path):
    # a landscape sensor image with a red left half, tagged "rotate 90 degrees clockwise to view" (6)
    pixels = np.zeros((30, 60, 3), np.uint8)
    pixels[:, :30] = (255, 0, 0)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    loaded = frames_to_uint8(load_image(tmp_path / "phone.jpg", size=None))
    assert loaded.shape == (60, 30, 3)  # now portrait
    assert loaded[5, 15, 0] > 200 and loaded[-5, 15, 0] < 60  # the red half went to the top


def test_tiny_and_huge_images(tmp_path):
    Image.fromarray(np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10).save(tmp_path / "tiny.png")
    assert load_image(tmp_path / "tiny.png", size=PAPER_SIZE).shape == (3, 640, 512)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(tmp_path / "huge.bmp")
    huge = load_image(tmp_path / "huge.bmp", size=PAPER_SIZE, resize_mode="crop")
    assert huge.shape == (3, 640, 512)
    assert abs(huge.mean().item() - 0.5) < 0.01


def test_crop_keeps_aspect(tmp_path):
    pixels = np.full((400, 1000, 3), 255, np.uint8)
    pixels[100:300, 400:600] = 0  # a 200x200 black square in the middle of a wide photo
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    cropped = frames_to_uint8(load_image(tmp_path / "wide.png", size=(200, 100), resize_mode="crop"))
    dark = np.argwhere(cropped[..., 0] < 128)
    height, width = dark.max(0) - dark.min(0) + 1
    assert abs(int(height) - int(width)) <= 1 and abs(int(height) - 100) <= 1
    stretched = frames_to_uint8(load_image(tmp_path / "wide.png", size=(200, 100)))
    dark = np.argwhere(stretched[..., 0] < 128)
    height, width = dark.max(0) - dark.min(0) + 1
    assert height > 3 * width  # plain resize distorts, as the original did


@pytest.mark.parametrize("name", ["notes.jpg", "empty.png", "cut.jpg", "missing.jpg"])
def test_bad_images_raise(tmp_path, name):
    path = tmp_path / name
    if name == "notes.jpg":
        path.write_text("not a photo at all\n")
    elif name == "empty.png":
        path.write_bytes(b"")
    elif name == "cut.jpg":
        Image.new("RGB", (200, 200), (10, 200, 30)).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageReadError) as excinfo:
        load_image(path, size=PAPER_SIZE)
    assert excinfo.value.path == path
    assert str(path) in str(excinfo.value) and "JPEG, PNG" in str(excinfo.value)


def test_load_image_checks_arguments(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="resize_mode"):
        load_image(tmp_path / "a.png", size=PAPER_SIZE, resize_mode="stretch")
    with pytest.raises(ValueError, match="size"):
        load_image(tmp_path / "a.png", size=(0, 4))


def test_save_image_round_trip(tmp_path):
    image = moving_frames(n=1, height=20, width=30)[0]
    save_image(image, tmp_path / "a.png")
    assert np.array_equal(frames_to_uint8(load_image(tmp_path / "a.png", size=None)), frames_to_uint8(image))
    save_image(image, tmp_path / "a.jpg")
    assert (load_image(tmp_path / "a.jpg", size=None) - image).abs().mean() < 0.02
    with pytest.raises(ValueError, match="a.xyz"):
        save_image(image, tmp_path / "a.xyz")
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", "a.png"]
