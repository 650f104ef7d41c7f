"""The evaluation protocol: which frames of a generated video are scored against its reference.

Frame 0 of every generated video is the conditioning image itself (its clean latent is written back after every
denoising step, docs/ORIGINAL.md, "Conditioning"), so scoring it measures the VAE round trip, not the generation. It is left
out by default; `models.evaluation.evaluate`, the quickstart report and bench/bench_inference.py all score through
`ScoredFrames` and record the choice with their results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .metrics import psnr, ssim

INPUT_FRAME = 0  # the conditioning image's place in every generated video and in its reference window


@dataclass(frozen=True)
class ScoredFrames:
    """The frames scored, counted from the start of a generated video and, frame for frame, of its reference window."""

    include_input: bool = False

    @property
    def first(self) -> int:
        return INPUT_FRAME if self.include_input else INPUT_FRAME + 1

    def select(self, video: torch.Tensor) -> torch.Tensor:
        """The scored frames of `video [..., F, 3, H, W]`."""
        return video[..., self.first :, :, :, :]

    def describe(self) -> str:
        if self.include_input:
            return "all frames (frame 0, the conditioning image itself, included)"
        return "frames 1 to the end (frame 0, the conditioning image itself, left out)"

    def record(self) -> dict:
        """What an output that reports scores records about them."""
        return {"input_frame_scored": self.include_input, "scored_frames": self.describe()}


def mean_psnr_ssim(generated: torch.Tensor, reference: torch.Tensor, scored: ScoredFrames) -> tuple[float, float]:
    """Mean per-frame PSNR (dB) and SSIM over the scored frames of videos `[..., F, 3, H, W]` in [0, 1]."""
    generated, reference = scored.select(generated), scored.select(reference)
    return psnr(generated, reference).mean().item(), ssim(generated, reference).mean().item()
