"""EmbeddingAdapter: fuse the CLIP tokens of the input photo with its VAE latent (global conditioning).

The latent is max-pooled 2x2, each latent channel becomes one token of the CLIP width, the tokens are
appended to the CLIP tokens, and a linear map across the token axis (initialised to the identity on
the CLIP tokens) mixes them back to the CLIP token count.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange
from torch import nn

from ..core.config import PAPER, ModelConfigFields


class EmbeddingAdapter(ModelMixin, ConfigMixin, ModelConfigFields):
    """`adapter(clip_hidden [b, n, d], vae_latent [b, c, h, w]) -> context [b, n, d]`."""

    @register_to_config
    def __init__(
        self,
        *,
        channels: int = PAPER.channels,
        latent_size: tuple[int, int] = PAPER.latent_size,
        context_tokens: int = PAPER.context_tokens,
        context_dim: int = PAPER.context_dim,
    ):
        super().__init__()
        h, w = latent_size
        n, d, c = context_tokens, context_dim, channels
        self.pool = nn.MaxPool2d(2)
        self.vae2clip = nn.Linear((h // 2) * (w // 2), d)  # paper: 40 * 32 = 1280 -> 768
        self.linear1 = nn.Linear(n + c, n)  # paper: 54 tokens -> 50
        with torch.no_grad():
            self.linear1.weight.copy_(torch.eye(n, n + c))

    def forward(self, clip_hidden, vae_latent):
        dtype = self.vae2clip.weight.dtype  # half-precision weights train without autocast (--precision bf16_master)
        clip_hidden, vae_latent = clip_hidden.to(dtype), vae_latent.to(dtype)
        latent_tokens = self.vae2clip(rearrange(self.pool(vae_latent), "b c h w -> b c (h w)"))  # [b, c, d]
        tokens = torch.cat((clip_hidden, latent_tokens), dim=1)  # [b, n + c, d]
        return rearrange(self.linear1(rearrange(tokens, "b n d -> b d n")), "b d n -> b n d")
