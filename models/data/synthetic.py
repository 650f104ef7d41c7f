"""A seeded synthetic fashion-video generator: a stylised person modelling a garment, turning and swaying.

It stands in for the UBC Fashion dataset in the quickstart and in tests: same `fashion_dataset/{train,test}/*.mp4`
layout, plain light background, one figure per video. Everything is drawn with numpy in "body coordinates"
(`b` down from the top of the head = 0 to the soles = 1, `x` sideways in the same unit) on a supersampled grid
that is box-averaged down, which anti-aliases the edges. All motion is a sum of sines of the frame index, so
clips are smooth, loopable and exactly reproducible from their parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from einops import reduce

from ..core.config import DEFAULT_FPS
from .video_io import write_mp4

GARMENTS = ("dress", "top_skirt")
PATTERNS = ("solid", "stripes", "dots", "checks")
SLEEVES = ("none", "short", "long")

# body landmarks (b coordinate) and frontal half-widths, roughly 7.5 heads tall
HEAD_CENTER, HEAD_RX, HEAD_RY = 0.072, 0.05, 0.066
SHOULDER_B, BUST_B, WAIST_B, HIP_B, ANKLE_B = 0.185, 0.25, 0.36, 0.45, 0.95
TOP_HEM_B = 0.41  # where a separate top ends over the skirt
TORSO_DEPTH, SKIRT_DEPTH = 0.62, 0.8  # front-to-back thickness / width: how much narrower a side view is

SKIN_LIGHT, SKIN_DARK = np.array([0.96, 0.82, 0.71]), np.array([0.42, 0.28, 0.2])
HAIR_COLOURS = np.array([[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.3, 0.15], [0.85, 0.72, 0.45], [0.55, 0.22, 0.1]])


@dataclass(frozen=True)
class FigureParams:
    """Everything that makes one synthetic video differ from another."""

    background: tuple[float, float, float]
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    long_hair: bool
    garment: str  # one of GARMENTS
    colour: tuple[float, float, float]  # the dress, or the top
    skirt_colour: tuple[float, float, float]
    accent: tuple[float, float, float]  # the pattern's second colour
    pattern: str  # one of PATTERNS
    pattern_period: float  # body units
    vertical_stripes: bool
    sleeves: str  # one of SLEEVES
    hem: float  # b of the hem
    flare: float  # extra hem half-width, relative to the hips
    shoes: tuple[float, float, float]
    build: float  # width multiplier
    scale: float  # figure height / frame height
    yaw_amplitude: float  # radians; the figure turns between -amplitude and +amplitude
    yaw_period: float  # frames
    sway_amplitude: float  # body units of lean at the head
    sway_period: float  # frames
    arm_swing: float  # radians
    phase: float  # radians, offsets all motion


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _random_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    return tuple(_hsv_to_rgb(rng.random(), rng.uniform(0.35, 0.9), rng.uniform(0.3, 0.9)).tolist())


def sample_params(rng: np.random.Generator) -> FigureParams:
    """Draw one figure's look and motion from `rng` (a `np.random.Generator`)."""
    garment = GARMENTS[rng.integers(len(GARMENTS))]
    colour = _random_colour(rng)
    accent = tuple(np.clip(rng.uniform(0.85, 1.0, 3) - 0.1 * np.array(colour), 0, 1).tolist())  # near white
    tint = rng.uniform(-0.03, 0.03, 3)
    return FigureParams(
        background=tuple(np.clip(rng.uniform(0.84, 0.95) + tint, 0, 1).tolist()),
        skin=tuple((SKIN_LIGHT + rng.random() * (SKIN_DARK - SKIN_LIGHT)).tolist()),
        hair=tuple(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))].tolist()),
        long_hair=bool(rng.random() < 0.6),
        garment=garment,
        colour=colour,
        skirt_colour=_random_colour(rng) if garment == "top_skirt" else colour,
        accent=accent,
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        pattern_period=float(rng.uniform(0.035, 0.07)),
        vertical_stripes=bool(rng.random() < 0.5),
        sleeves=SLEEVES[rng.integers(len(SLEEVES))],
        hem=float(rng.uniform(0.56, 0.74)),
        flare=float(rng.uniform(0.1, 0.6)),
        shoes=tuple((rng.uniform(0.05, 0.35) * np.ones(3) + rng.uniform(0, 0.15, 3)).tolist()),
        build=float(rng.uniform(0.9, 1.1)),
        scale=float(rng.uniform(0.86, 0.94)),
        yaw_amplitude=float(rng.uniform(0.45, 1.0)),
        yaw_period=float(rng.uniform(28, 56)),
        sway_amplitude=float(rng.uniform(0.025, 0.05)),
        sway_period=float(rng.uniform(20, 36)),
        arm_swing=float(rng.uniform(0.12, 0.35)),
        phase=float(rng.uniform(0, 2 * np.pi)),
    )


@dataclass(frozen=True)
class _Pose:
    yaw: float
    lean: float  # sideways offset of the head relative to the feet
    hip_shift: float
    skirt_lag: float  # the skirt trails the sway
    flare: float  # the hem's current extra width
    arm_angles: tuple[float, float]
    time: float


def _pose(p: FigureParams, t: float) -> _Pose:
    yaw_phase = 2 * np.pi * t / p.yaw_period + p.phase
    sway_phase = 2 * np.pi * t / p.sway_period + 1.7 * p.phase
    swing = p.arm_swing * np.sin(sway_phase + 0.8)
    return _Pose(
        yaw=p.yaw_amplitude * np.sin(yaw_phase),
        lean=p.sway_amplitude * np.sin(sway_phase),
        hip_shift=0.4 * p.sway_amplitude * np.sin(sway_phase + 0.6),
        skirt_lag=-0.6 * p.sway_amplitude * np.cos(sway_phase),
        flare=p.flare * (1 + 0.35 * np.sin(2 * sway_phase)),
        arm_angles=(swing, -0.8 * swing),
        time=t,
    )


def _width_factor(yaw: float, depth: float) -> float:
    """Projected width of an elliptic cross-section turned by `yaw`, relative to its frontal width."""
    return float(np.sqrt(np.cos(yaw) ** 2 + (depth * np.sin(yaw)) ** 2))


def _center(b: np.ndarray, pose: _Pose, hem: float) -> np.ndarray:
    """Sideways position of the body's axis at height `b`: a lean pivoting on the feet, hips and skirt lagging."""
    hips = pose.hip_shift * np.exp(-(((b - HIP_B) / 0.18) ** 2))
    below_hip = np.clip((b - HIP_B) / max(hem - HIP_B, 1e-3), 0, 1.3)
    return pose.lean * (1 - b) + hips + pose.skirt_lag * below_hip**2


def _capsule(x, b, p0, p1, r0: float, r1: float) -> np.ndarray:
    """Mask of a segment p0 -> p1 thickened from radius r0 to r1 (limbs)."""
    (x0, b0), (x1, b1) = p0, p1
    dx, db = x1 - x0, b1 - b0
    s = np.clip(((x - x0) * dx + (b - b0) * db) / (dx * dx + db * db + 1e-12), 0, 1)
    return np.hypot(x - x0 - s * dx, b - b0 - s * db) < r0 + s * (r1 - r0)


def _ellipse(x, b, cx: float, cb: float, rx: float, rb: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((b - cb) / rb) ** 2 < 1


def _rotate(x: float, z: float, yaw: float) -> tuple[float, float]:
    """Turn a body-frame point about the vertical axis; larger z is nearer the camera."""
    return x * np.cos(yaw) + z * np.sin(yaw), -x * np.sin(yaw) + z * np.cos(yaw)


def _arm(p: FigureParams, pose: _Pose, side: int) -> tuple[list[tuple[float, float]], float]:
    """Shoulder, elbow, wrist in image-plane body coordinates, and the shoulder's depth (for draw order)."""
    half = 0.088 * p.build
    swing = pose.arm_angles[0 if side < 0 else 1]
    spread = 0.14
    shoulder = np.array([side * half, SHOULDER_B + 0.01, 0.0])
    upper = np.array([side * np.sin(spread), np.cos(spread) * np.cos(swing), np.cos(spread) * np.sin(swing)])
    fore_angle = swing + 0.25
    fore = np.array([side * np.sin(spread * 0.6), np.cos(fore_angle), np.sin(fore_angle)])
    elbow = shoulder + 0.17 * upper
    wrist = elbow + 0.16 * fore
    points = []
    for point in (shoulder, elbow, wrist):
        x, _ = _rotate(point[0], point[2], pose.yaw)
        points.append((x + float(_center(np.array(point[1]), pose, p.hem)), float(point[1])))
    return points, _rotate(shoulder[0], 0.0, pose.yaw)[1]


def _surface_coords(x, b, center, half_width, yaw) -> tuple[np.ndarray, np.ndarray]:
    """Where a pixel lies on the turning body: (angle from the front, arc length), so patterns turn with it."""
    s = np.clip((x - center) / np.maximum(half_width, 1e-6), -0.999, 0.999)
    view_angle = np.arcsin(s)
    return view_angle, (view_angle - yaw) * half_width / max(_width_factor(yaw, TORSO_DEPTH), 1e-3)


def _pattern_mask(p: FigureParams, arc: np.ndarray, b: np.ndarray) -> np.ndarray:
    period = p.pattern_period
    u, v = arc / period, b / period
    if p.pattern == "stripes":
        return (u if p.vertical_stripes else v) % 1 < 0.45
    if p.pattern == "checks":
        return (np.floor(u) + np.floor(v)) % 2 == 0
    if p.pattern == "dots":
        row = np.floor(v)
        du = (u + 0.5 * (row % 2)) % 1 - 0.5
        return np.hypot(du, v % 1 - 0.5) < 0.26
    return np.zeros_like(b, dtype=bool)


def _garment_half_width(b: np.ndarray, p: FigureParams, pose: _Pose) -> np.ndarray:
    top = _width_factor(pose.yaw, TORSO_DEPTH) * p.build
    skirt = _width_factor(pose.yaw, SKIRT_DEPTH) * p.build
    hem_width = 0.088 * (1 + pose.flare)
    torso = np.interp(b, [0.178, 0.2, BUST_B, WAIST_B, HIP_B], [0.072, 0.094, 0.084, 0.064, 0.088])
    below = np.interp(b, [HIP_B, p.hem], [0.088, hem_width])
    blend = np.clip((b - WAIST_B) / (HIP_B - WAIST_B), 0, 1)
    return np.where(b < HIP_B, torso * ((1 - blend) * top + blend * skirt), below * skirt)


def _paint(image: np.ndarray, mask: np.ndarray, colour) -> None:
    image[mask] = np.broadcast_to(colour, image.shape)[mask] if np.ndim(colour) == 3 else colour


def _render_frame(p: FigureParams, pose: _Pose, x: np.ndarray, b: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image [h, w, 3] in [0, 1], mask of where the garment is visible [h, w]) on the supersampled grid."""
    skin, hair = np.array(p.skin), np.array(p.hair)
    image = np.empty((*b.shape, 3))
    image[:] = np.array(p.background) * (1.04 - 0.08 * v)[..., None]  # soft studio light from above
    floor = b > 0.985
    image[floor] *= 0.93
    garment_visible = np.zeros(b.shape, dtype=bool)

    def paint(mask, colour, *, is_garment: bool = False):
        _paint(image, mask, colour)
        garment_visible[mask] = is_garment  # whatever is painted last is what the camera sees

    paint(_ellipse(x, b, 0.0, 1.0, 0.16, 0.022), image * 0.82)  # contact shadow

    head_x = float(_center(np.array(HEAD_CENTER), pose, p.hem))
    neck_x = float(_center(np.array(0.16), pose, p.hem))
    head_rx = HEAD_RX * _width_factor(pose.yaw, 0.9)
    if p.long_hair:
        paint(_capsule(x, b, (head_x, HEAD_CENTER), (neck_x, 0.25), 0.055, 0.07), hair * 0.85)

    arms = [_arm(p, pose, side) for side in (-1, 1)]
    behind = [a for a in arms if a[1] < -0.01]
    in_front = [a for a in arms if a[1] >= -0.01]

    def draw_arm(points, shade):
        shoulder, elbow, wrist = points
        paint(_capsule(x, b, shoulder, elbow, 0.028, 0.022), skin * shade)
        paint(_capsule(x, b, elbow, wrist, 0.022, 0.017), skin * shade)
        paint(_ellipse(x, b, wrist[0], wrist[1] + 0.02, 0.018, 0.028), skin * shade)
        sleeve_colour = np.array(p.colour) * shade
        if p.sleeves == "short":
            cuff = tuple(np.add(shoulder, 0.45 * np.subtract(elbow, shoulder)))
            paint(_capsule(x, b, shoulder, cuff, 0.034, 0.03), sleeve_colour, is_garment=True)
        elif p.sleeves == "long":
            paint(_capsule(x, b, shoulder, elbow, 0.032, 0.027), sleeve_colour, is_garment=True)
            paint(_capsule(x, b, elbow, wrist, 0.027, 0.021), sleeve_colour, is_garment=True)

    for points, _ in behind:
        draw_arm(points, 0.82)

    # legs pivot at the feet and follow the hips
    for side in (-1, 1):
        hip = (float(_center(np.array(HIP_B), pose, p.hem)) + side * 0.045 * np.cos(pose.yaw), HIP_B + 0.03)
        ankle = (side * 0.05 * np.cos(pose.yaw), ANKLE_B)
        paint(_capsule(x, b, hip, ankle, 0.042, 0.02), skin * (0.9 if side * pose.yaw > 0 else 1.0))
        paint(_ellipse(x, b, ankle[0] + 0.012 * side, 0.975, 0.034, 0.022), np.array(p.shoes))

    paint(_capsule(x, b, (head_x, 0.12), (neck_x, 0.2), 0.024, 0.026), skin * 0.92)
    chest = (b > 0.17) & (b < 0.26) & (np.abs(x - _center(b, pose, p.hem)) < 0.052)
    paint(chest, skin * 0.95)

    # the garment: a body-of-revolution silhouette with a scoop neckline, shaded as a cylinder
    center = _center(b, pose, p.hem)
    half = _garment_half_width(b, p, pose)
    rel = x - center
    hem_wave = 0.008 * np.sin(40 * rel + 0.5 * pose.time)
    neckline = 0.178 + 0.05 * np.clip(1 - (rel / 0.05) ** 2, 0, 1)
    garment = (np.abs(rel) < half) & (b > neckline) & (b < p.hem + hem_wave)
    view_angle, arc = _surface_coords(x, b, center, half, pose.yaw)
    light = 0.62 + 0.38 * np.cos(view_angle + 0.45)
    folds = np.where(b > HIP_B, 1 - 0.1 * np.sin(arc * 90) ** 2 * np.clip((b - HIP_B) * 6, 0, 1), 1)
    is_skirt = b > (TOP_HEM_B if p.garment == "top_skirt" else 2.0)
    base = np.where(is_skirt[..., None], np.array(p.skirt_colour), np.array(p.colour))
    patterned = _pattern_mask(p, arc, b) & ~is_skirt if p.garment == "top_skirt" else _pattern_mask(p, arc, b)
    cloth = np.where(patterned[..., None], np.array(p.accent), base) * (light * folds)[..., None]
    paint(garment, cloth, is_garment=True)

    for points, _ in in_front:
        draw_arm(points, 1.0)

    # head: skin ellipse, hair over the top and around the back as it turns, eyes and mouth on the front
    head = _ellipse(x, b, head_x, HEAD_CENTER, head_rx, HEAD_RY)
    paint(_ellipse(x, b, head_x, HEAD_CENTER - 0.008, head_rx * 1.12, HEAD_RY * 1.06), hair)
    head_angle, _ = _surface_coords(x, b, head_x, head_rx, 0.0)
    face_angle = head_angle - pose.yaw
    paint(head & (np.abs(face_angle) < 1.25), skin * (0.85 + 0.15 * np.cos(head_angle + 0.45))[..., None])
    paint(head & (b < HEAD_CENTER - 0.035 + 0.012 * np.abs(face_angle)), hair)
    for eye in (-0.38, 0.38):
        paint(head & (np.abs(face_angle - eye) < 0.16) & (np.abs(b - HEAD_CENTER - 0.004) < 0.007), hair * 0.5)
    paint(head & (np.abs(face_angle) < 0.22) & (np.abs(b - HEAD_CENTER - 0.036) < 0.005), skin * [0.8, 0.5, 0.5])
    return image, garment_visible


def render_clip(
    params: FigureParams,
    frames: int,
    size: tuple[int, int],
    *,
    supersample: int | None = None,
    garment_masks: bool = False,
):
    """Render `frames` frames of the figure at `size=(H, W)`: uint8 `[F, H, W, 3]` RGB.

    `supersample` (default: 3 for small frames, fewer for large ones, where one pixel matters less) sets
    how many samples per pixel side are averaged for anti-aliasing. With `garment_masks=True` it returns
    `(clip, masks)`, masks `[F, H, W]` bool marking pixels at least half covered by visible garment.
    """
    height, width = size
    if frames < 1 or height < 8 or width < 8:
        raise ValueError(f"need frames >= 1 and a size of at least 8x8, got frames={frames}, size={size}")
    supersample = supersample or int(np.clip(round(400 / height), 1, 3))
    rows = (np.arange(height * supersample) + 0.5) / (height * supersample)
    cols = (np.arange(width * supersample) + 0.5 - width * supersample / 2) / (height * supersample)
    v, u = np.meshgrid(rows, cols, indexing="ij")
    figure_height = params.scale
    top = (1 - figure_height) * 0.55  # a little more room under the feet than over the head
    b, x = (v - top) / figure_height, u / figure_height
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)
    masks = np.empty((frames, height, width), dtype=bool)
    for t in range(frames):
        image, garment = _render_frame(params, _pose(params, t), x, b, v)
        image = reduce(image, "(h s1) (w s2) c -> h w c", "mean", s1=supersample, s2=supersample)
        clip[t] = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
        masks[t] = reduce(garment.astype(np.float32), "(h s1) (w s2) -> h w", "mean", s1=supersample, s2=supersample) >= 0.5
    return (clip, masks) if garment_masks else clip


def clip_params(seed: int, split: str, index: int) -> FigureParams:
    """The parameters of `make_synthetic_dataset(..., seed=seed)`'s video `index` of `split` ('train' / 'test')."""
    return sample_params(_video_rng(seed, split, index))


def _video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, ("train", "test").index(split), index])


def make_synthetic_dataset(
    root,
    *,
    n_train: int = 16,
    n_test: int = 4,
    frames: int = 24,
    size: tuple[int, int] = (64, 48),
    fps: float = DEFAULT_FPS,
    seed: int = 0,
) -> dict:
    """Write `root/train/synthetic_XXXX.mp4` and `root/test/...` (H.264); files already there are reused.

    Returns `{'train': [paths], 'test': [paths], 'written': n, 'reused': n}`.
    """
    root = Path(root)
    result = {"train": [], "test": [], "written": 0, "reused": 0}
    for split, count in (("train", n_train), ("test", n_test)):
        for index in range(count):
            path = root / split / f"synthetic_{index:04d}.mp4"
            result[split].append(path)
            if path.is_file() and path.stat().st_size > 0:
                result["reused"] += 1
                continue
            params = clip_params(seed, split, index)
            write_mp4(render_clip(params, frames, size), path, fps=fps)
            result["written"] += 1
    return result
