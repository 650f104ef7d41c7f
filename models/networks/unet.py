"""SpaceTimeUnet: the FashionFlow denoiser.

A pseudo-3D UNet (make-a-video: 2D spatial conv per frame, then 1D temporal conv per pixel) with
factorised space-time self-attention at the deepest level(s) and a cross-attention block over the
adapter's context at the end of every level. Module names and nesting mirror the original so that
its state dict (and so the released checkpoint) loads strictly.

Shapes: b batch, c channels, f frames, h/w latent height/width, n tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import nn

from ..core.config import PAPER, ModelConfigFields
from .compiling import compile_regions


def exists(val):
    return val is not None


def divisible_by(numer, denom):
    return numer % denom == 0


def cross_attn_heads(width: int, head_dim: int) -> int:
    return max(1, width // head_dim)


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim, theta=10000):
        super().__init__()
        self.dim, self.theta = dim, theta

    def forward(self, t):  # [b] float -> [b, dim]
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=t.dtype) * -(math.log(self.theta) / (half - 1)))
        args = rearrange(t, "b -> b 1") * rearrange(freqs, "d -> 1 d")
        return torch.cat((args.sin(), args.cos()), dim=-1)


class ChanLayerNorm(nn.Module):
    """LayerNorm over the channel axis of [b, c, f, h, w], gain only."""

    def __init__(self, dim):
        super().__init__()
        self.g = nn.Parameter(torch.ones(dim, 1, 1, 1))

    def forward(self, x):
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * var.clamp(min=eps).rsqrt() * self.g


class GEGLU(nn.Module):
    def forward(self, x):
        x, gate = x.chunk(2, dim=1)
        return x * F.gelu(gate)


def shift_half_channels_in_time(x):
    """Token shift: the second half of the channels sees the previous frame."""
    x, shifted = x.chunk(2, dim=1)
    shifted = F.pad(shifted, (0, 0, 0, 0, 1, -1))
    return torch.cat((x, shifted), dim=1)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        inner = int(dim * mult * 2 / 3)
        self.proj_in = nn.Sequential(nn.Conv3d(dim, inner * 2, 1, bias=False), GEGLU())
        self.proj_out = nn.Sequential(ChanLayerNorm(inner), nn.Conv3d(inner, dim, 1, bias=False))

    def forward(self, x):
        return self.proj_out(shift_half_channels_in_time(self.proj_in(x)))


class ContinuousPositionBias(nn.Module):
    """Attention bias from an MLP over relative positions (Swin v2, arXiv 2111.09883)."""

    def __init__(self, *, dim, heads, num_dims=1, layers=2):
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(num_dims, dim), nn.SiLU())])
        self.net.extend(nn.Sequential(nn.Linear(dim, dim), nn.SiLU()) for _ in range(layers - 1))
        self.net.append(nn.Linear(dim, heads))

    def forward(self, *dims):  # sizes of the attended axes -> bias [heads, n, n], n = prod(dims)
        device = self.net[-1].weight.device
        sizes = torch.tensor(dims, device=device)
        # every relative offset once, row-major over a (2d-1) x ... grid
        offsets = torch.stack(torch.meshgrid(*[torch.arange(-d + 1, d, device=device) for d in dims], indexing="ij"), -1)
        bias = rearrange(offsets, "... c -> (...) c").to(self.net[-1].weight.dtype)
        for layer in self.net:
            bias = layer(bias)
        # index of the offset between every pair of positions
        grid = torch.stack(torch.meshgrid(*[torch.arange(d, device=device) for d in dims], indexing="ij"), -1)
        grid = rearrange(grid, "... c -> (...) c")
        rel = rearrange(grid, "i c -> i 1 c") - rearrange(grid, "j c -> 1 j c") + (sizes - 1)
        strides = torch.ones_like(sizes)
        for i in range(len(dims) - 2, -1, -1):
            strides[i] = strides[i + 1] * (2 * sizes[i + 1] - 1)
        return rearrange(bias[(rel * strides).sum(-1)], "i j h -> h i j")


# CUDA launches the memory-efficient attention kernel with one grid row per batch element, and a grid dimension
# holds at most 65,535: past it torch falls back to the unfused kernel or fails. The temporal attention's batch is
# every pixel of every video (batch 16 at 80x64 latents: 81,920), so it goes in slices.
SDPA_MAX_BATCH = 65_535


def attend(q, k, v, bias=None, *, max_batch: int = SDPA_MAX_BATCH):  # q, k, v [b, h, n, d], bias [h, n, n]
    """`F.scaled_dot_product_attention` over at most `max_batch` batch elements at a time (each is independent)."""
    if q.shape[0] <= max_batch:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    slices = zip(q.split(max_batch), k.split(max_batch), v.split(max_batch))
    return torch.cat([F.scaled_dot_product_attention(*qkv, attn_mask=bias) for qkv in slices])


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with an optional additive bias; output starts at zero."""

    def __init__(self, dim, *, dim_head=64, heads=8):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        nn.init.zeros_(self.to_out.weight)  # the block starts as identity through its residual

    def forward(self, x, bias=None):  # x [b, n, c], bias [heads, n, n]
        x = self.norm(x)
        q, k, v = self.to_q(x), *self.to_kv(x).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        if exists(bias):
            bias = bias.to(q.dtype)
        out = attend(q, k, v, bias)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class SpatioTemporalAttention(nn.Module):
    """Factorised attention (Ho et al.): over space within each frame, then over time at each pixel."""

    def __init__(self, dim, *, dim_head=64, heads=8, ff_mult=4):
        super().__init__()
        self.spatial_attn = Attention(dim, dim_head=dim_head, heads=heads)
        self.spatial_rel_pos_bias = ContinuousPositionBias(dim=dim // 2, heads=heads, num_dims=2)
        self.temporal_attn = Attention(dim, dim_head=dim_head, heads=heads)
        self.temporal_rel_pos_bias = ContinuousPositionBias(dim=dim // 2, heads=heads, num_dims=1)
        self.ff = FeedForward(dim, mult=ff_mult)

    def forward(self, x):
        b, c, f, h, w = x.shape
        x = rearrange(x, "b c f h w -> (b f) (h w) c")
        x = self.spatial_attn(x, self.spatial_rel_pos_bias(h, w)) + x
        x = rearrange(x, "(b f) (h w) c -> (b h w) f c", b=b, h=h)
        x = self.temporal_attn(x, self.temporal_rel_pos_bias(f)) + x
        x = rearrange(x, "(b h w) f c -> b c f h w", b=b, h=h)
        return self.ff(x) + x


class PseudoConv3d(nn.Module):
    """2D conv on every frame, then (for kernels > 1) a 1D conv over frames initialised to identity."""

    def __init__(self, dim, dim_out=None, kernel_size=3, *, temporal_kernel_size=None, bias=True):
        super().__init__()
        dim_out = dim_out or dim
        temporal_kernel_size = temporal_kernel_size or kernel_size
        self.spatial_conv = nn.Conv2d(dim, dim_out, kernel_size, padding=kernel_size // 2)
        self.temporal_conv = None
        if kernel_size > 1:
            self.temporal_conv = nn.Conv1d(dim_out, dim_out, temporal_kernel_size, padding=temporal_kernel_size // 2)
            nn.init.dirac_(self.temporal_conv.weight)
            nn.init.zeros_(self.temporal_conv.bias)

    def forward(self, x):  # [b, c, f, h, w]
        b, _, f, h, w = x.shape
        x = self.spatial_conv(rearrange(x, "b c f h w -> (b f) c h w"))
        if not exists(self.temporal_conv):
            return rearrange(x, "(b f) c h w -> b c f h w", b=b)
        x = self.temporal_conv(rearrange(x, "(b f) c h w -> (b h w) c f", b=b))
        return rearrange(x, "(b h w) c f -> b c f h w", h=h, w=w)


class CrossAttention(nn.Module):
    def __init__(self, heads, dim, context_dim):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(context_dim, dim, bias=False)
        self.v_proj = nn.Linear(context_dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x, context):  # x [b, n, c], context [b, m, d]
        q, k, v = self.q_proj(x), self.k_proj(context), self.v_proj(context)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


class AttentionBlock(nn.Module):
    """Cross-attention to the context and a GEGLU MLP, each pre-norm with a residual, then a 1x1 conv.

    Attribute names follow the original (which numbered them after a removed first stage).
    """

    def __init__(self, heads, dim_head, context_dim):
        super().__init__()
        dim = heads * dim_head
        self.layernorm_2 = nn.LayerNorm(dim)
        self.attention_2 = CrossAttention(heads, dim, context_dim)
        self.layernorm_3 = nn.LayerNorm(dim)
        self.linear_geglu_1 = nn.Linear(dim, 4 * dim * 2)
        self.linear_geglu_2 = nn.Linear(4 * dim, dim)
        self.conv_output = PseudoConv3d(dim, dim, 1)

    def forward(self, x, context):
        b, c, f, h, w = x.shape
        x = rearrange(x, "b c f h w -> b (f h w) c")
        x = self.attention_2(self.layernorm_2(x), context) + x
        hidden, gate = self.linear_geglu_1(self.layernorm_3(x)).chunk(2, dim=-1)
        x = self.linear_geglu_2(hidden * F.gelu(gate)) + x
        x = rearrange(x, "b (f h w) c -> b c f h w", f=f, h=h)
        return self.conv_output(x)


class Block(nn.Module):
    def __init__(self, dim, dim_out, groups=8):
        super().__init__()
        self.project = PseudoConv3d(dim, dim_out, 3)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()

    def forward(self, x, scale_shift=None):
        x = self.norm(self.project(x))
        if exists(scale_shift):
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim, dim_out, *, timestep_cond_dim=None, groups=8):
        super().__init__()
        self.timestep_mlp = None
        if exists(timestep_cond_dim):
            self.timestep_mlp = nn.Sequential(nn.SiLU(), nn.Linear(timestep_cond_dim, dim_out * 2))
        self.block1 = Block(dim, dim_out, groups=groups)
        self.block2 = Block(dim_out, dim_out, groups=groups)
        self.res_conv = PseudoConv3d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, t_emb=None):
        scale_shift = None
        if exists(self.timestep_mlp) and exists(t_emb):
            scale_shift = rearrange(self.timestep_mlp(t_emb), "b c -> b c 1 1 1").chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift))
        return h + self.res_conv(x)


class Downsample(nn.Module):
    """Space-to-depth 2x2 (and optionally 2 frames) followed by a 1x1 projection back to `dim`."""

    def __init__(self, dim, *, downsample_time=False):
        super().__init__()
        self.down_space = nn.Sequential(
            Rearrange("b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2), nn.Conv2d(dim * 4, dim, 1, bias=False)
        )
        self.down_time = None
        if downsample_time:
            self.down_time = nn.Sequential(
                Rearrange("b c (f p) h w -> b (c p) f h w", p=2), nn.Conv3d(dim * 2, dim, 1, bias=False)
            )

    def forward(self, x):
        b = x.shape[0]
        x = self.down_space(rearrange(x, "b c f h w -> (b f) c h w"))
        x = rearrange(x, "(b f) c h w -> b c f h w", b=b)
        return self.down_time(x) if exists(self.down_time) else x


class Upsample(nn.Module):
    """1x1 projection then depth-to-space, initialised so every sub-pixel starts with the same weights."""

    def __init__(self, dim, *, upsample_time=False):
        super().__init__()
        self.up_space = nn.Sequential(nn.Conv2d(dim, dim * 4, 1), Rearrange("b (c p1 p2) h w -> b c (h p1) (w p2)", p1=2, p2=2))
        self.up_time = None
        if upsample_time:
            self.up_time = nn.Sequential(nn.Conv3d(dim, dim * 2, 1), Rearrange("b (c p) f h w -> b c (f p) h w", p=2))
        for seq, factor in ((self.up_space, 4), (self.up_time, 2)):
            if exists(seq):
                self._init_repeated(seq[0], factor)

    @staticmethod
    def _init_repeated(conv, factor):
        out, *rest = conv.weight.shape
        weight = torch.empty(out // factor, *rest)
        nn.init.kaiming_uniform_(weight)
        conv.weight.data.copy_(repeat(weight, "o ... -> (o r) ...", r=factor))
        nn.init.zeros_(conv.bias)

    def forward(self, x):
        b = x.shape[0]
        x = self.up_space(rearrange(x, "b c f h w -> (b f) c h w"))
        x = rearrange(x, "(b f) c h w -> b c f h w", b=b)
        return self.up_time(x) if exists(self.up_time) else x


class SpaceTimeUnet(ModelMixin, ConfigMixin, ModelConfigFields):
    """`unet(x [b, c, f, h, w], context [b, n, d], timestep [b] float) -> eps prediction [b, c, f, h, w]`.

    `latent_size` and `frames` do not shape the network: they record the clip it was trained on, the defaults of a
    pipeline call (as `sample_size` and `num_frames` do in diffusers' video UNets).
    """

    _supports_gradient_checkpointing = True
    # regional compilation (diffusers' `compile_repeated_blocks`, `FashionFlowPipeline.compile`) compiles every
    # instance of these: the blocks that hold the convolutions, norms and attention, each traced without a graph break.
    # They repeat in class but rarely in shape (the paper UNet's 26 ResnetBlocks take 21 distinct input shapes), and a
    # graph is reused only between same-shaped instances: region by region the UNet compiled no faster than whole.
    _repeated_blocks = ["ResnetBlock", "AttentionBlock", "SpatioTemporalAttention"]

    @register_to_config
    def __init__(
        self,
        *,
        dim: int = PAPER.dim,
        channels: int = PAPER.channels,
        dim_mult: tuple[int, ...] = PAPER.dim_mult,
        self_attns: tuple[bool, ...] = PAPER.self_attns,
        temporal_compression: tuple[bool, ...] = PAPER.temporal_compression,
        resnet_block_depths: tuple[int, ...] = PAPER.resnet_block_depths,
        attn_dim_head: int = PAPER.attn_dim_head,
        attn_heads: int = PAPER.attn_heads,
        condition_on_timestep: bool = PAPER.condition_on_timestep,
        cross_attn_dim_head_down: int = PAPER.cross_attn_dim_head_down,
        cross_attn_dim_head_up: int = PAPER.cross_attn_dim_head_up,
        context_dim: int = PAPER.context_dim,
        latent_size: tuple[int, int] = PAPER.latent_size,
        frames: int = PAPER.frames,
    ):
        super().__init__()
        config = self.model_config  # the registered values, checked and with tuples restored
        dim = config.dim
        dims = [dim, *(m * dim for m in config.dim_mult)]
        in_out = list(zip(dims[:-1], dims[1:]))
        attn_kwargs = dict(dim_head=config.attn_dim_head, heads=config.attn_heads)
        self.gradient_checkpointing = False
        self.checkpoint_levels = None  # with checkpointing on: the levels recomputed (None: all of them)

        self.to_timestep_cond = None
        t_dim = None
        if config.condition_on_timestep:
            t_dim = dim * 4
            self.to_timestep_cond = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, t_dim), nn.SiLU())

        def cross_attn(width, head_dim):
            heads = cross_attn_heads(width, head_dim)
            return AttentionBlock(heads, width // heads, config.context_dim)

        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        for (d_in, d_out), self_attend, compress_time, depth in zip(
            in_out, config.self_attns, config.temporal_compression, config.resnet_block_depths
        ):
            # index layout [init block, blocks, self-attention or None, resample, cross-attention] is
            # the original's, so state-dict keys match
            self.downs.append(
                nn.ModuleList(
                    [
                        ResnetBlock(d_in, d_out, timestep_cond_dim=t_dim),
                        nn.ModuleList([ResnetBlock(d_out, d_out) for _ in range(depth)]),
                        SpatioTemporalAttention(d_out, **attn_kwargs) if self_attend else None,
                        Downsample(d_out, downsample_time=compress_time),
                        cross_attn(d_out, config.cross_attn_dim_head_down),
                    ]
                )
            )
            self.ups.append(
                nn.ModuleList(
                    [
                        ResnetBlock(d_out * 2, d_in, timestep_cond_dim=t_dim),
                        nn.ModuleList([ResnetBlock(d_in + (d_out if i == 0 else 0), d_in) for i in range(depth)]),
                        SpatioTemporalAttention(d_in, **attn_kwargs) if self_attend else None,
                        Upsample(d_out, upsample_time=compress_time),
                        cross_attn(d_in, config.cross_attn_dim_head_up),
                    ]
                )
            )

        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, timestep_cond_dim=t_dim)
        self.mid_attn = SpatioTemporalAttention(mid)
        self.mid_block2 = ResnetBlock(mid, mid, timestep_cond_dim=t_dim)
        self.skip_scale = 2**-0.5  # scaled skip connections (Imagen): faster convergence
        self.conv_in = PseudoConv3d(config.channels, dim, 7, temporal_kernel_size=3)
        self.conv_out = PseudoConv3d(dim, config.channels, 3)

    def compile_repeated_blocks(self, **options):
        """diffusers' regional compilation, with static shapes and a recompile limit that holds all of the blocks'
        shapes (diffusers' own would leave all but 8 of the 21 ResnetBlock shapes uncompiled): models/networks/compiling.py."""
        compile_regions(self, self._repeated_blocks, **options)

    def enable_gradient_checkpointing(self, enabled: bool = True, *, levels=None):
        """diffusers' switch (its `disable_gradient_checkpointing` and `is_gradient_checkpointing` work too), taking a
        bool so a flag turns it on or off in one call. `levels` recomputes only some levels' blocks: level i is the
        i-th resolution from the top (`downs[i]` and `ups[i]`), 'mid' the middle blocks; None: every level. The top
        levels hold most of the activations (channels double as the area quarters) for the same recompute."""
        names = {str(i) for i in range(len(self.downs))} | {"mid"}
        if levels is not None:
            levels = {str(level) for level in levels}
            if not levels <= names:
                raise ValueError(f"unknown checkpointing levels {sorted(levels - names)}; the levels: {sorted(names)}")
        if enabled:
            super().enable_gradient_checkpointing()
        else:
            self.disable_gradient_checkpointing()
        self.checkpoint_levels = levels
        return self

    def _run(self, level, module, *args):
        recompute = self.checkpoint_levels is None or level in self.checkpoint_levels
        if recompute and self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(module, *args)  # non-reentrant torch checkpoint
        return module(*args)

    def embed_timestep(self, timestep):  # [b] -> [b, 4 * dim]
        sinusoids, *mlp = self.to_timestep_cond
        # sinusoids of t up to 999 in float32 whatever the weights' dtype (bf16 cannot even hold 999 exactly)
        emb = sinusoids(timestep.float()).to(mlp[0].weight.dtype)
        for layer in mlp:
            emb = layer(emb)
        return emb

    def check_input(self, x):
        c = self.model_config
        if x.ndim != 5 or x.shape[1] != c.channels:
            raise ValueError(f"expected a video latent [batch, {c.channels}, frames, height, width], got {tuple(x.shape)}")
        f, h, w = x.shape[2:]
        if not divisible_by(f, c.frame_multiple):
            raise ValueError(f"number of frames ({f}) must be divisible by {c.frame_multiple}")
        if not (divisible_by(h, c.size_multiple) and divisible_by(w, c.size_multiple)):
            raise ValueError(f"latent height and width ({h}x{w}) must be multiples of {c.size_multiple}")

    def forward(self, x, context, timestep=None):
        self.check_input(x)
        if exists(self.to_timestep_cond) != exists(timestep):
            raise ValueError("pass a timestep exactly when the model is timestep-conditioned")
        t = self.embed_timestep(rearrange(timestep, "... -> (...)")) if exists(timestep) else None

        # inputs in the weights' dtype: half-precision weights train without autocast (--precision bf16_master)
        x = self.conv_in(x.to(self.conv_in.spatial_conv.weight.dtype))
        skips = []
        for level, (init_block, blocks, self_attn, downsample, cross_attn) in enumerate(self.downs):
            level = str(level)
            x = self._run(level, init_block, x, t)
            skips.append(x)
            for block in blocks:
                x = self._run(level, block, x)
            if exists(self_attn):
                x = self._run(level, self_attn, x)
            skips.append(x)
            x = self._run(level, cross_attn, downsample(x), context)

        x = self._run("mid", self.mid_block1, x, t)
        x = self._run("mid", self.mid_attn, x)
        x = self._run("mid", self.mid_block2, x, t)

        for level, (init_block, blocks, self_attn, upsample, cross_attn) in reversed(list(enumerate(self.ups))):
            level = str(level)
            x = torch.cat((skips.pop() * self.skip_scale, upsample(x)), dim=1)
            x = self._run(level, init_block, x, t)
            x = torch.cat((skips.pop() * self.skip_scale, x), dim=1)
            for block in blocks:
                x = self._run(level, block, x)
            if exists(self_attn):
                x = self._run(level, self_attn, x)
            x = self._run(level, cross_attn, x, context)

        return self.conv_out(x)
