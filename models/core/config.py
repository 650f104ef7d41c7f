"""Model configuration: the paper's values as defaults, tiny presets for tests and the quickstart.

A checkpoint carries its `ModelConfig` (as a dict); flags may override fields that do not change
the architecture.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

DEFAULT_VAE = "CompVis/stable-diffusion-v1-4"
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
PREPROCESSING_MODES = ("legacy", "standard")
DEFAULT_FPS = 25  # the dataset's frame rate: 70 frames play in 2.8 s
SEED_BY = ("index", "name")  # what seeds an input's videos besides the seed (models/serving/animate.py, `seed_key`)


def check_preprocessing(mode: str) -> str:
    if mode not in PREPROCESSING_MODES:
        raise ValueError(f"preprocessing must be one of {PREPROCESSING_MODES}, got {mode!r}")
    return mode


@dataclass
class ModelConfig:
    # SpaceTimeUnet (docs/ORIGINAL.md, "Denoiser"): make-a-video-pytorch's pseudo-3D UNet as FashionFlow built it
    dim: int = 64
    channels: int = 4
    dim_mult: tuple[int, ...] = (1, 2, 4, 8)
    self_attns: tuple[bool, ...] = (False, False, False, True)
    temporal_compression: tuple[bool, ...] = (False, False, False, True)
    resnet_block_depths: tuple[int, ...] = (2, 2, 2, 2)
    attn_dim_head: int = 64
    attn_heads: int = 8
    condition_on_timestep: bool = True
    # cross-attention over the adapter's context: heads = width // head width (at least one head).
    # The paper's blocks are 1x64, 1x128, 2x128, 4x128 going down and 4x64, 2x64, 1x64, 1x64 going up.
    cross_attn_dim_head_down: int = 128
    cross_attn_dim_head_up: int = 64
    # conditioning: CLIP last_hidden_state tokens x width, VAE latent of the input image
    context_tokens: int = 50
    context_dim: int = 768
    latent_size: tuple[int, int] = (80, 64)  # (h, w) of the VAE latent: 640x512 pixels / 8
    frames: int = 70  # clip length the model is trained and sampled on
    # frozen encoders and how pixels are fed to them (see models/networks/encoders.py)
    preprocessing: str = "legacy"
    vae: str = DEFAULT_VAE
    clip: str = DEFAULT_CLIP
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("dim_mult", "self_attns", "temporal_compression", "resnet_block_depths", "latent_size"):
            setattr(self, name, tuple(getattr(self, name)))
        levels = {len(self.dim_mult), len(self.self_attns), len(self.temporal_compression), len(self.resnet_block_depths)}
        if len(levels) != 1:
            raise ValueError(
                "dim_mult, self_attns, temporal_compression and resnet_block_depths need one entry per level; got "
                f"{self.dim_mult}, {self.self_attns}, {self.temporal_compression}, {self.resnet_block_depths}"
            )
        check_preprocessing(self.preprocessing)

    @property
    def frame_multiple(self) -> int:
        return 2 ** sum(map(int, self.temporal_compression))

    @property
    def size_multiple(self) -> int:
        return 2 ** len(self.dim_mult)

    def resolve_frames(self, frames: int | None = None) -> int:
        """`frames` when given, else the trained clip length: every frames default of the project."""
        return frames or self.frames

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


PAPER = ModelConfig()  # the defaults of every network's registered config


class ModelConfigFields:
    """For our diffusers networks (`ModelMixin` + `ConfigMixin`), whose `__init__` keywords are `ModelConfig` fields.

    diffusers registers those keywords as the network's config (`model.config`, saved as `config.json`): the one
    record of what the network is. This mixin builds a network from a `ModelConfig` and reads its config back as one.
    """

    # from_pretrained copies the weights into the network's own tensors instead of adopting the memory-mapped file's:
    # those sit at 8-byte offsets, where CPU matmuls round differently from the 64-byte aligned tensors of a network
    # loaded from a .pth, and the same checkpoint would not give the same video both ways
    _supports_param_buffer_assignment = False

    @classmethod
    def config_fields(cls) -> tuple[str, ...]:
        """The `ModelConfig` fields this network registers: its `__init__` keywords."""
        return tuple(inspect.signature(cls.__init__).parameters)[1:]  # after self

    @classmethod
    def from_model_config(cls, config: ModelConfig):
        """The network that `config` describes (it takes the fields it registers and leaves the rest)."""
        return cls(**{name: getattr(config, name) for name in cls.config_fields()})

    @property
    def model_config(self) -> ModelConfig:
        """The registered config as a `ModelConfig` (tuples restored after JSON, values checked); the fields this
        network does not register keep their defaults."""
        return ModelConfig(**{name: self.config[name] for name in self.config_fields()})


# Tiny preset: same classes, smaller numbers. Pairs with models/networks/tiny_components.py (a 2-level VAE
# with 4x downsampling and a CLIP with 32x32 input, 8x8 patches -> 17 tokens of width 32).
TINY = dict(
    dim=16,
    dim_mult=(1, 2),
    self_attns=(False, True),
    temporal_compression=(False, True),
    resnet_block_depths=(1, 1),
    attn_dim_head=8,
    attn_heads=2,
    cross_attn_dim_head_down=16,
    cross_attn_dim_head_up=16,
    context_tokens=17,
    context_dim=32,
    latent_size=(16, 12),
    frames=8,
    preprocessing="standard",
)

# The quickstart's model: the tiny preset with self-attention at the first level too. Its temporal attention lets
# every frame read the clean frame 0 at full latent resolution; with convolutions alone that path is the temporally
# compressed second level, and in a few minutes of training the model did not learn to carry the photo's garment
# forward (docs/DESIGN.md, "The quickstart's garment colours"). Tests keep the cheaper TINY.
QUICKSTART = {**TINY, "self_attns": (True, True)}

PRESETS = {"paper": {}, "tiny": TINY, "quickstart": QUICKSTART}


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
