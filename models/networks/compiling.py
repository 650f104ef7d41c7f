"""torch.compile for the two costs of a video, the UNet and the VAE decoder: whole, or region by region.

'full' compiles a network as one graph (`torch.compile(module)`, a wrapper module). 'regional' is diffusers'
regional compilation (`ModelMixin.compile_repeated_blocks`): every instance of the repeated block classes is
compiled in place (`nn.Module.compile`), the glue between them runs eagerly, and the module and its state-dict keys
stay as they were. Dynamo keeps one cache of graphs per block class, so a graph is traced and compiled once and
reused by every instance that takes the same input shapes; each other shape adds a graph.

'full' is the default: our UNet's blocks change width and resolution from level to level, so regional compilation
reuses few graphs and compiled the UNet no faster on the CPU; the decoder compiled about 1.3x faster region by
region (bench/results/compile_cpu.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch
from torch import nn

COMPILE_MODES = ("full", "regional", "graphs")  # `inference.py --compile [MODE]`, the first the default; 'graphs':
# whole networks, the UNet's calls replayed as CUDA graphs (torch.compile's mode 'reduce-overhead': each step's
# launches in one replay; on a CPU the same as 'full'). The decoder is not graphed: a replay overwrites its output
# buffer while the mp4 writer's thread may still read the chunk before.
# diffusers' AutoencoderKL declares no `_repeated_blocks`; its decoder's repeated block is ResnetBlock2D (14 of them
# in SD v1-4's decoder, in 8 distinct input shapes), which holds its GroupNorms, SiLUs and 3x3 convolutions.
DECODER_REPEATED_BLOCKS = ("ResnetBlock2D",)


def check_compile_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    return mode


def compile_regions(module: nn.Module, block_names: Iterable[str], **options) -> int:
    """torch.compile, in place, every submodule of `module` whose class is named in `block_names`; returns how many.

    Shapes stay static unless `options` say otherwise (`dynamic=False`: each distinct input shape gets its own
    graph, as in a whole-network compile, instead of dynamo turning sizes symbolic at the second shape it meets).
    Each class may recompile torch's default limit (8) times per instance: blocks of one class share one cache,
    and past the limit the remaining instances would silently run uncompiled (the paper UNet's ResnetBlocks alone
    take 21 shapes).
    """
    block_names = set(block_names)
    blocks = [m for m in module.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(f"no {sorted(block_names)} in {type(module).__name__}: nothing to compile region by region")
    instances = Counter(type(m).__name__ for m in blocks)
    per_network = torch._dynamo.config.recompile_limit
    for block in blocks:
        block.compile(**{"dynamic": False, "recompile_limit": per_network * instances[type(block).__name__]} | options)
    return len(blocks)


def compile_unet(unet: nn.Module, *, regional: bool = False, graphs: bool = False, **options) -> nn.Module:
    """The UNet to call: the same module with its `_repeated_blocks` compiled, or (not `regional`) a compiled wrapper,
    its calls replayed as CUDA graphs with `graphs`."""
    if graphs:
        options = {"mode": "reduce-overhead"} | options
    if not regional:
        return torch.compile(unet, **options)
    unet.compile_repeated_blocks(**options)
    return unet


def compile_decoder(vae: nn.Module, *, regional: bool = False, **options) -> None:
    """Compile `vae.decoder` in place: its ResnetBlock2Ds, or (not `regional`) all of it as one graph."""
    if not regional:
        vae.decoder = torch.compile(vae.decoder, **options)
    else:
        compile_regions(vae.decoder, DECODER_REPEATED_BLOCKS, **options)
