"""FashionFlow: one still fashion photo to a short video (latent video diffusion).

Every name below loads its module on first use, so importing one light module (video I/O, data, files) never
pulls in the networks, diffusers or transformers.
"""

_LAZY = {
    "EmbeddingAdapter": "adapter",
    "SpaceTimeUnet": "unet",
    "ModelConfig": "config",
    "get_preset": "config",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
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


__all__ = list(_LAZY)
