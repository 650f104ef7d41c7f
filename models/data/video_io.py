"""Video and image I/O: sequential decoding, frame resizing, robust photo loading, mp4/gif/png writing.

Frames inside the package are float tensors in [0, 1], RGB, `[..., 3, H, W]`; at the file boundary they
are uint8 numpy arrays `[H, W, 3]` RGB. Sizes are always `(height, width)`.
"""

from __future__ import annotations

import functools
import io
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.config import DEFAULT_FPS
from ..core.files import atomic_target, atomic_write

RESIZE_MODES = ("resize", "crop")


class VideoReadError(ValueError):
    """A video file that cannot be decoded as asked; `.path` names it and `.reason` says why."""

    def __init__(self, path, reason: str, *, hint: str | None = None):
        self.path = Path(path)
        self.reason = reason
        hint = hint or "check that it is a complete video (re-download or re-export it) or remove it from the folder"
        super().__init__(f"cannot read video {self.path}: {reason}; {hint}")


class ImageReadError(ValueError):
    """A photo that cannot be loaded; `.path` names it and `.reason` says why."""

    def __init__(self, path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"cannot read image {self.path}: {reason}. Pass a photo in a common format "
            "(JPEG, PNG, WebP, BMP, TIFF), e.g. re-save it from an image viewer."
        )


def not_a_file_reason(path) -> str | None:
    """Why `path`, found in a folder or a list, cannot be read as a video or photo; None when it is a regular file."""
    path = Path(path)
    if path.is_file():
        return None
    if path.is_dir():
        return "a folder, not a file"
    if path.is_symlink():
        return "a broken symbolic link or a link loop"
    if not path.exists():
        return "no such file"
    return "not a regular file (a socket, pipe or device)"


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # as advertised by the container: may be wrong or 0, see count_frames
    fps: float
    width: int
    height: int


def _check_size(size) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"size must be (height, width) with two positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def resize_frame(frame: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 `[H, W, 3]` -> uint8 `[h, w, 3]` for `size=(h, w)`: PIL bilinear, as the original's torchvision Resize."""
    height, width = _check_size(size)
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 `[..., H, W, 3]` -> float `[..., 3, H, W]` in [0, 1] (same arithmetic as torchvision ToTensor)."""
    frames = np.ascontiguousarray(frames)
    if not frames.flags.writeable:  # e.g. np.asarray of a PIL image; torch.from_numpy warns on read-only memory
        frames = frames.copy()
    return rearrange(torch.from_numpy(frames), "... h w c -> ... c h w").float().div(255)


def frames_to_uint8(frames) -> np.ndarray:
    """float `[..., 3, H, W]` in [0, 1] (tensor or array) -> uint8 `[..., H, W, 3]`, rounded (the original's
    `to_pil_image` truncated, half a level darker on average); uint8 input passes through."""
    if isinstance(frames, np.ndarray):
        if frames.dtype == np.uint8:
            return frames
        frames = torch.from_numpy(frames)
    if frames.dtype == torch.uint8:
        return frames.cpu().numpy()
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"expected float frames shaped [..., 3, H, W] or uint8 [..., H, W, 3], got {tuple(frames.shape)}")
    frames = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return rearrange(frames, "... c h w -> ... h w c").cpu().numpy()


# --- reading videos ---------------------------------------------------------------------------


def _looks_like_mp4(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(12)[4:8] == b"ftyp"


def _open_video(path) -> cv2.VideoCapture:
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(path, "no such file")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if cap.isOpened():
        return cap
    cap.release()
    if path.stat().st_size > 0 and _looks_like_mp4(path):
        # an mp4 header without a readable index: the usual shape of an interrupted download or copy
        raise VideoReadError(path, "truncated or corrupt: the mp4 index (moov atom) is unreadable")
    raise VideoReadError(path, "empty or not a video")


def _advertised_frames(cap: cv2.VideoCapture) -> int:
    return max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)


def probe_video(path) -> VideoInfo:
    """Container metadata without decoding; `frames` is what the container claims."""
    cap = _open_video(path)
    try:
        return VideoInfo(
            frames=_advertised_frames(cap),
            fps=float(cap.get(cv2.CAP_PROP_FPS)),
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
    finally:
        cap.release()


def _skip(cap: cv2.VideoCapture, count: int) -> int:
    """Grab (demux + decode, no colour conversion) up to `count` frames; returns how many there were."""
    for i in range(count):
        if not cap.grab():
            return i
    return count


def count_frames(path) -> int:
    """The true frame count, found by decoding the whole file (containers often misreport it)."""
    cap = _open_video(path)
    try:
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def _decode(cap: cv2.VideoCapture, count: int | None, size: tuple[int, int] | None) -> Iterator[np.ndarray]:
    """Up to `count` (None: all) further frames as uint8 RGB, resized to `size` if given."""
    n = 0
    while count is None or n < count:
        ok, bgr = cap.read()
        if not ok:
            return
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        yield rgb if size is None else resize_frame(rgb, size)
        n += 1


def _frames_then_release(cap: cv2.VideoCapture, start: int) -> Iterator[np.ndarray]:
    try:
        _skip(cap, start)
        yield from _decode(cap, None, None)
    finally:
        cap.release()


def iter_video_frames(path, *, start: int = 0) -> Iterator[np.ndarray]:
    """Yield uint8 RGB `[H, W, 3]` frames from frame `start` on, decoding sequentially.

    The file is opened (and a bad one reported) at the call, not at the first `next()`.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    return _frames_then_release(_open_video(path), start)


def _shortfall_reason(decoded: int, needed: int, advertised: int) -> str:
    if decoded == 0:
        return "empty or not a video: no frame could be decoded"
    if advertised >= needed:
        return f"truncated: decoding stopped at frame {decoded} of {advertised} advertised"
    return f"too short: {decoded} frames, need {needed}"


def read_video_frames(path, *, start: int = 0, count: int | None = None, size: Sequence[int] | None = None) -> torch.Tensor:
    """Frames `start .. start+count` (all remaining if `count` is None) as float `[N, 3, H, W]` in [0, 1].

    Decodes sequentially: the first `start` frames are grabbed and dropped, never seeked to (seeking is
    slow and lands on wrong frames with many codecs). `size=(H, W)` resizes each frame with PIL bilinear.
    """
    if start < 0 or (count is not None and count < 1):
        raise ValueError(f"need start >= 0 and count >= 1 (or None), got start={start}, count={count}")
    if size is not None:
        size = _check_size(size)
    cap = _open_video(path)
    try:
        advertised = _advertised_frames(cap)
        skipped = _skip(cap, start)
        frames = list(_decode(cap, count, size)) if skipped == start else []
    finally:
        cap.release()
    needed = start + (count or 1)
    if len(frames) < (count or 1):
        reason = _shortfall_reason(skipped + len(frames), needed, advertised)
        hint = f"use a video with at least {needed} frames or ask for fewer" if reason.startswith("too short") else None
        raise VideoReadError(path, reason, hint=hint)
    return frames_to_tensor(np.stack(frames))


# --- reading photos ---------------------------------------------------------------------------


def _high_bit_depth_to_uint8(image: Image.Image) -> Image.Image:
    """16-bit ('I;16*', 'I') and float ('F') grayscale -> 8-bit 'L'; PIL's own convert would clip, not scale."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        peak = 1.0 if values.max(initial=0) <= 1.0 else 255.0
    elif image.mode.startswith("I;16"):
        peak = 65535.0
    else:
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(values / peak * 255), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("F", "I") or image.mode.startswith("I;16"):
        image = _high_bit_depth_to_uint8(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        # transparent product shots go on white, as shops show them
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def photo_to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, and gray, alpha (composited on white), CMYK, palette or 16-bit converted to RGB."""
    return _to_rgb(ImageOps.exif_transpose(image))


def _read_rgb(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "this is a folder, not an image file")
    try:
        with Image.open(path) as image:
            image.load()
            return photo_to_rgb(image)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"corrupt or truncated image ({e})") from None


def _center_crop_box(width: int, height: int, aspect: float) -> tuple[float, float, float, float]:
    """The largest centred box of `aspect` (= width / height) inside a `width` x `height` image."""
    if width / height > aspect:
        crop_w = height * aspect
        left = (width - crop_w) / 2
        return left, 0.0, left + crop_w, float(height)
    crop_h = width / aspect
    top = (height - crop_h) / 2
    return 0.0, top, float(width), top + crop_h


def _check_resize_mode(resize_mode: str) -> None:
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")


def fit_photo(image: Image.Image, size: Sequence[int] | None, resize_mode: str = "resize") -> torch.Tensor:
    """An RGB PIL image -> float `[3, H, W]` in [0, 1] at `size=(H, W)` (None keeps the photo's size).

    `resize_mode='resize'` stretches to `size` with PIL bilinear, like the original; 'crop' scales to cover
    `size` keeping the aspect ratio and centre-crops the rest.
    """
    _check_resize_mode(resize_mode)
    if size is not None:
        height, width = _check_size(size)
        box = None if resize_mode == "resize" else _center_crop_box(*image.size, width / height)
        if image.size != (width, height) or box is not None:
            image = image.resize((width, height), Image.BILINEAR, box=box)
    return frames_to_tensor(np.array(image))


def load_image(path, *, size: Sequence[int] | None, resize_mode: str = "resize") -> torch.Tensor:
    """Any photo file -> float `[3, H, W]` in [0, 1] at `size=(H, W)`: `photo_to_rgb`, then `fit_photo`."""
    _check_resize_mode(resize_mode)
    return fit_photo(_read_rgb(Path(path)), size, resize_mode)


def _check_unit_range(values, what: str) -> None:
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        raise ValueError(f"{what} must hold values in [0, 1], got [{low:.3g}, {high:.3g}]; for [-1, 1] images pass (x + 1) / 2")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """`[H, W]` or `[H, W, C]` (C = 1, 3 or 4), uint8 or float in [0, 1] -> a PIL image (L, RGB or RGBA)."""
    if array.dtype != np.uint8:
        _check_unit_range(array, "float image arrays")
        array = np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)


def _photo_batch(photos, size: tuple[int, int], resize_mode: str) -> torch.Tensor:
    """One photo file, PIL image, array or tensor (possibly batched) -> float [N, 3, H, W] in [0, 1] at `size`."""
    if isinstance(photos, str | Path):
        return load_image(photos, size=size, resize_mode=resize_mode)[None]
    if isinstance(photos, Image.Image):
        return fit_photo(photo_to_rgb(photos), size, resize_mode)[None]
    if isinstance(photos, np.ndarray):
        if not (photos.ndim in (2, 4) or (photos.ndim == 3 and photos.shape[-1] in (1, 3, 4))):
            raise ValueError(f"image arrays must be [H, W], [H, W, C] or [B, H, W, C] with C = 1, 3 or 4, got {photos.shape}")
        arrays = photos if photos.ndim == 4 else photos[None]
        return torch.stack([fit_photo(photo_to_rgb(_array_to_pil(array)), size, resize_mode) for array in arrays])
    if isinstance(photos, torch.Tensor):
        if not photos.is_floating_point() or photos.ndim not in (3, 4) or photos.shape[-3] != 3:
            raise ValueError(
                f"image tensors must be float [3, H, W] or [B, 3, H, W] in [0, 1], got {photos.dtype} {tuple(photos.shape)}"
            )
        _check_unit_range(photos, "image tensors")
        batch = (photos if photos.ndim == 4 else photos[None]).float()
        if tuple(batch.shape[-2:]) == size:
            return batch  # already the model's size: used as given, not requantised
        return torch.stack([fit_photo(Image.fromarray(frames_to_uint8(image)), size, resize_mode) for image in batch])
    raise ValueError(f"cannot use a {type(photos).__name__} as an image: pass file paths, PIL images, numpy arrays or tensors")


def photos_to_tensor(photos, *, size: Sequence[int], resize_mode: str = "resize") -> torch.Tensor:
    """Photos -> float `[B, 3, H, W]` in [0, 1] at `size=(H, W)`, each prepared as `load_image` prepares a file.

    `photos`: a file path, a PIL image, a numpy array (`[H, W]`, `[H, W, C]` or `[B, H, W, C]`, uint8 or float in
    [0, 1]), a float tensor in [0, 1] (`[3, H, W]` or `[B, 3, H, W]`), or a list of them, each of any size. Tensors
    already at `size` pass unchanged; other tensors go through uint8 (rounded) to be resized like photos.
    """
    _check_resize_mode(resize_mode)
    size = _check_size(size)
    items = list(photos) if isinstance(photos, (list, tuple)) else [photos]
    if not items:
        raise ValueError("got an empty list of images; pass at least one")
    return torch.cat([_photo_batch(item, size, resize_mode) for item in items])


def _pil_format(path: Path) -> str:
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format of {path}: use a .png or .jpg file name")
    return fmt


def save_image(image, path) -> Path:
    """Save float `[3, H, W]` in [0, 1] (or uint8 `[H, W, 3]`) as png/jpg (format from the suffix), atomically."""
    path = Path(path)
    fmt = _pil_format(path)
    pixels = frames_to_uint8(image)
    if pixels.ndim != 3:
        raise ValueError(f"save_image takes one image [3, H, W], got shape {tuple(image.shape)} for {path}")
    options = {"quality": 95} if fmt == "JPEG" else {}
    return atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format=fmt, **options))


# --- writing videos ---------------------------------------------------------------------------


def _video_frames_uint8(frames, path) -> np.ndarray:
    problem = None
    try:
        pixels = frames_to_uint8(frames)
    except ValueError as e:
        problem = str(e)
    else:
        if pixels.ndim != 4 or pixels.shape[-1] != 3 or len(pixels) == 0:
            problem = f"got shape {tuple(frames.shape)}"
    if problem:
        raise ValueError(
            f"cannot write {path}: need at least one frame, as float [F, 3, H, W] in [0, 1] or uint8 [F, H, W, 3]; {problem}"
        )
    return pixels


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p subsamples chroma 2x2, so H.264 needs even sizes: replicate the last row/column if odd."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# libx264's preset when no GPU encoder is there: chosen by measurement on the CPU (bench/bench_mp4.py,
# bench/results/mp4_cpu.md), a 70-frame 640x512 clip at CRF 18
X264_PRESET = "veryfast"
NVENC_MIN_SIDE = 256  # smaller frames (the tiny preset's) go to libx264: NVENC refuses some small sizes


@functools.cache
def has_nvenc() -> bool:
    """Whether frames can go to the GPU's H.264 encoder (h264_nvenc): this ffmpeg has it and a one-frame trial encode
    works (the encoder listed is not enough: it needs an NVIDIA driver). Probed once per process."""
    if not torch.cuda.is_available():
        return False
    command = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi",
        "-i", f"color=size={NVENC_MIN_SIDE}x{NVENC_MIN_SIDE}", "-frames:v", "1", "-c:v", "h264_nvenc", "-f", "null", "-",
    ]  # fmt: skip
    try:
        return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def h264_encoder(height: int, width: int) -> str:
    """'h264_nvenc' where the GPU can take frames of this size, else 'libx264'."""
    return "h264_nvenc" if min(height, width) >= NVENC_MIN_SIDE and has_nvenc() else "libx264"


def _encoder_options(encoder: str, crf: int) -> list[str]:
    if encoder == "h264_nvenc":  # constant quality, as CRF: -cq with no bitrate cap
        return ["-c:v", "h264_nvenc", "-preset", "p4", "-rc", "vbr", "-cq", str(crf), "-b:v", "0"]
    if encoder == "libx264":
        return ["-c:v", "libx264", "-preset", X264_PRESET, "-crf", str(crf)]
    raise ValueError(f"encoder must be 'h264_nvenc' or 'libx264', got {encoder!r}")


class Mp4Writer:
    """An H.264 mp4 (yuv420p, faststart: browsers and phones play it) written as its frames come: ffmpeg encodes
    each `write(frames)` while the caller makes the next ones, and `close()` finishes the file and renames it into
    place, atomically. As a context manager it closes on success and removes the partial file on an exception.

    Frames: float `[F, 3, H, W]` in [0, 1] or uint8 `[F, H, W, 3]`, all of one size; odd sizes are edge-padded to
    even. `encoder`: 'h264_nvenc' or 'libx264' (default `h264_encoder`). Encoded by the ffmpeg binary of
    imageio-ffmpeg (OpenCV's wheels cannot write H.264).
    """

    def __init__(self, path, *, fps: float = DEFAULT_FPS, crf: int = 18, encoder: str | None = None):
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps} for {path}")
        self.path, self.fps, self.crf, self.encoder = Path(path), fps, crf, encoder
        self.frames = 0
        self._process = None  # started by the first frames, whose size it takes

    def _start(self, height: int, width: int) -> None:
        self.size, self.encoder = (height, width), self.encoder or h264_encoder(height, width)
        self._target = atomic_target(self.path)
        tmp = self._target.__enter__()
        command = [
            ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{self.fps}", "-i", "-",
            "-an", *_encoder_options(self.encoder, self.crf), "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", "-f", "mp4", tmp,
        ]  # fmt: skip
        # stderr goes to a file: a pipe nobody reads while we write stdin could fill up and deadlock
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)

    def write(self, frames) -> None:
        pixels = _pad_to_even(_video_frames_uint8(frames, self.path))
        if self._process is None:
            self._start(*pixels.shape[1:3])
        elif pixels.shape[1:3] != self.size:
            raise ValueError(f"cannot write {self.path}: frames of {pixels.shape[1:3]} after frames of {self.size}")
        try:
            self._process.stdin.write(memoryview(np.ascontiguousarray(pixels)).cast("B"))
        except BrokenPipeError:
            self._finish()  # ffmpeg exited early: raises with its message
        self.frames += len(pixels)

    def _finish(self) -> None:
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg exited early; its return code and log say why
        code = self._process.wait()
        self._log.seek(0)
        tail = self._log.read().decode(errors="replace")[-2000:].strip()
        self._log.close()
        target, self._target = self._target, None
        if code != 0:
            error = RuntimeError(f"ffmpeg failed (exit {code}) writing {self.path}: {tail or 'no message'}")
            target.__exit__(RuntimeError, error, None)  # removes the partial file
            raise error
        target.__exit__(None, None, None)

    def close(self) -> Path:
        """Finish the file (ffmpeg flushes, then moves the index to the front) and put it in place."""
        if self._process is None:
            raise ValueError(
                f"cannot write {self.path}: need at least one frame, as float [F, 3, H, W] in [0, 1] or uint8 [F, H, W, 3]"
            )
        self._finish()
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file; the target is left as it was."""
        if self._process is None or self._target is None:
            return  # not started, or finished
        self._process.kill()
        self._process.wait()
        self._log.close()
        target, self._target = self._target, None
        target.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_mp4(frames, path, *, fps: float = DEFAULT_FPS, crf: int = 18, encoder: str | None = None) -> Path:
    """Write frames (as `Mp4Writer` takes them) as an H.264 mp4 in one go, atomically."""
    with Mp4Writer(path, fps=fps, crf=crf, encoder=encoder) as writer:
        writer.write(frames)
    return writer.path


def encode_gif(frames, *, fps: float = DEFAULT_FPS, name="gif") -> bytes:
    """A looping GIF of `frames` (as for write_mp4) in memory; `name` labels errors. GIF delays are in 10 ms steps."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps} for {name}")
    images = [Image.fromarray(frame) for frame in _video_frames_uint8(frames, name)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)
    return buffer.getvalue()


def write_gif(frames, path, *, fps: float = DEFAULT_FPS) -> Path:
    """Write a looping GIF (frames as for write_mp4), atomically."""
    data = encode_gif(frames, fps=fps, name=path)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


class PngFrames:
    """Frames written as `directory/<prefix>_<index:04d>.png` as they come, numbered on from chunk to chunk."""

    def __init__(self, directory, prefix: str = "frame"):
        self.directory, self.prefix = Path(directory), prefix
        self.paths: list[Path] = []

    def write(self, frames) -> list[Path]:
        """Write a chunk of frames (as `write_mp4` takes them); returns their paths."""
        pixels = _video_frames_uint8(frames, self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        written = []
        for frame in pixels:
            target = self.directory / f"{self.prefix}_{len(self.paths) + len(written):04d}.png"
            atomic_write(target, lambda tmp, frame=frame: Image.fromarray(frame).save(tmp, format="PNG"))
            written.append(target)
        self.paths += written
        return written


def write_png_frames(frames, directory, prefix: str = "frame") -> list[Path]:
    """Write each frame as `directory/<prefix>_<index:04d>.png`; returns the paths in order."""
    return PngFrames(directory, prefix).write(frames)
