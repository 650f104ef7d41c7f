"""Frame and distribution metrics: SSIM, PSNR, running feature statistics and the Fréchet distance.

Frames are float `[..., 3, H, W]` in [0, 1] (data range 1). SSIM and PSNR need no weights; the feature
networks behind LPIPS, FID and FVD live in `models/evaluation/feature_nets.py`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

# Wang et al. 2004 constants, as scikit-image's `structural_similarity(gaussian_weights=True)`
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(truncate 3.5 * sigma + 0.5): an 11x11 window
SSIM_K1, SSIM_K2 = 0.01, 0.03
PSNR_MIN_MSE = 1e-10  # identical frames score 100 dB instead of infinity, so means stay finite


def _gaussian_kernel(sigma: float, radius: int, *, dtype, device) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _blur_valid(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of `[N, 1, H, W]` without padding: `[N, 1, H - 2r, W - 2r]`."""
    x = F.conv2d(x, rearrange(kernel, "k -> 1 1 k 1"))
    return F.conv2d(x, rearrange(kernel, "k -> 1 1 1 k"))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per frame of `[..., C, H, W]` pairs in [0, 1] -> `[...]`.

    Gaussian 11x11 window (sigma 1.5), population covariances, each channel separately and then averaged,
    the 5-pixel border (where the window leaves the frame) cropped: scikit-image's
    `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
    channel_axis=-1)`, to ~1e-7.
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim needs frames of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) <= 2 * SSIM_RADIUS:
        raise ValueError(f"ssim needs frames larger than {2 * SSIM_RADIUS + 1} pixels, got {tuple(x.shape[-2:])}")
    lead = x.shape[:-3]
    x, y = (rearrange(t.float(), "... c h w -> (... c) 1 h w") for t in (x, y))
    kernel = _gaussian_kernel(SSIM_SIGMA, SSIM_RADIUS, dtype=x.dtype, device=x.device)
    mu_x, mu_y = _blur_valid(x, kernel), _blur_valid(y, kernel)
    # (co)variances do not change when a channel is shifted by a constant; taking its mean out first keeps
    # `E[x^2] - E[x]^2` from cancelling away float32's digits (1e-4 SSIM error without it)
    x, y = (t - t.mean(dim=(-2, -1), keepdim=True) for t in (x, y))
    mu_xc, mu_yc = _blur_valid(x, kernel), _blur_valid(y, kernel)
    var_x = _blur_valid(x * x, kernel) - mu_xc**2
    var_y = _blur_valid(y * y, kernel) - mu_yc**2
    cov_xy = _blur_valid(x * y, kernel) - mu_xc * mu_yc
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    # equal pixel counts per channel: the mean over (channels, pixels) is the mean of per-channel means
    per_frame = rearrange(ssim_map, "(n c) 1 h w -> n (c h w)", n=int(np.prod(lead, dtype=int))).mean(dim=1)
    return per_frame.reshape(lead)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per frame of `[..., C, H, W]` pairs in [0, 1] (data range 1) -> `[...]`."""
    if x.shape != y.shape:
        raise ValueError(f"psnr needs frames of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).mean(dim=(-3, -2, -1))
    return (-10 * torch.log10(mse.clamp_min(PSNR_MIN_MSE))).float()


class FeatureStats:
    """Running mean and covariance of feature vectors (float64 sums), so no feature set is kept in memory."""

    def __init__(self):
        self.count = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        """Add `[N, D]` features."""
        f = features.detach().double().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float64)
        if f.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {f.shape}")
        if self._sum is None:
            self._sum = np.zeros(f.shape[1])
            self._outer = np.zeros((f.shape[1], f.shape[1]))
        elif f.shape[1] != self._sum.shape[0]:
            raise ValueError(f"feature width changed from {self._sum.shape[0]} to {f.shape[1]}")
        self.count += f.shape[0]
        self._sum += f.sum(axis=0)
        self._outer += f.T @ f

    @property
    def dim(self) -> int | None:
        return None if self._sum is None else self._sum.shape[0]

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean `[D]` and unbiased covariance `[D, D]` (as `np.cov`)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, have {self.count}")
        mean = self._sum / self.count
        cov = (self._outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return mean, cov


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982):

        |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    tr((sigma1 sigma2)^(1/2)) equals tr((s1 sigma2 s1)^(1/2)) with s1 = sigma1^(1/2): the eigenvalues of a
    symmetric PSD matrix, so no complex round-off to discard (what `scipy.linalg.sqrtm` runs into on the
    rank-deficient covariances of small sample sets).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; covariances {sigma1.shape}, {sigma2.shape}")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def frechet_distance_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(*a.mean_cov(), *b.mean_cov())
