"""FashionFlow: one still fashion photo to a short video (latent video diffusion).

Light modules are imported eagerly; those that pull in diffusers/transformers load on first use.
"""

from .adapter import EmbeddingAdapter
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig, get_preset
from .unet import SpaceTimeUnet

_LAZY = {
    "preprocess_clip": "encoders",
    "FrozenEncoders": "encoders",
    "load_vae": "encoders",
    "load_clip": "encoders",
    "EncoderNotFoundError": "encoders",
    "FashionFlowPipeline": "pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EmbeddingAdapter", "ModelConfig", "SpaceTimeUnet", "get_preset", "load_checkpoint", "save_checkpoint", *_LAZY]
