"""FashionFlow: one still fashion photo to a short video (latent video diffusion).

Sub-packages, each importing only those listed before it (docs/DESIGN.md):
core, networks, diffusion, data, pipeline, training, evaluation, serving, commands.

Every name below loads its module on first use, so importing one light module (video I/O, data, files) never
pulls in the networks, diffusers or transformers.
"""

import importlib

_LAZY = {
    "EmbeddingAdapter": "networks.adapter",
    "SpaceTimeUnet": "networks.unet",
    "ModelConfig": "core.config",
    "get_preset": "core.config",
    "load_checkpoint": "networks.checkpoint",
    "save_checkpoint": "networks.checkpoint",
    "preprocess_clip": "networks.encoders",
    "FrozenEncoders": "networks.encoders",
    "load_vae": "networks.encoders",
    "load_clip": "networks.encoders",
    "EncoderNotFoundError": "networks.encoders",
    "FashionFlowPipeline": "pipeline.pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
