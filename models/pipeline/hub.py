"""What a pipeline folder carries to the Hub: its model card (YAML metadata and text), and the upload."""

from __future__ import annotations

from pathlib import Path

from ..core.config import DEFAULT_FPS
from ..diffusion.samplers import DEFAULT_STEPS
from ..networks.checkpoint import RELEASED_CHECKPOINT_URL, WeightsSource
from ..networks.encoders import is_hub_id

# what the folder's own code imports (a test holds this list to the generated files)
REMOTE_CODE_PACKAGES = (
    "torch", "diffusers", "transformers", "safetensors", "einops", "numpy", "pillow", "opencv-python-headless", "tqdm",
    "imageio-ffmpeg",
)  # fmt: skip
ORIGINAL_CODE = "https://github.com/1702609/FashionFlow"
TAGS = ["image-to-video", "video-generation", "fashion", "latent-diffusion", "fashionflow"]
CITATION = """\
@article{islam2024dynamic,
  title   = {Dynamic Fashion Video Synthesis from Static Imagery},
  author  = {Islam, Tasin and Miron, Alina and Liu, Xiaohui and Li, Yongmin},
  journal = {Future Internet},
  volume  = {16},
  number  = {8},
  pages   = {287},
  year    = {2024},
  doi     = {10.3390/fi16080287}
}"""


def card_metadata(source: WeightsSource | None, base_models: list[str]):
    """The model card's YAML metadata (huggingface_hub's ModelCardData)."""
    from huggingface_hub import ModelCardData

    return ModelCardData(
        license="other",
        license_name="no-license-stated",  # see the card's License section
        license_link=ORIGINAL_CODE if source and source.released else None,
        library_name="diffusers",
        pipeline_tag="image-to-video",
        tags=TAGS,
        base_model=base_models or None,
    )


def _weights_text(source: WeightsSource | None) -> str:
    if source is None:
        return (
            "The pipeline this folder was saved from does not record where its UNet and adapter weights come from "
            "(one loaded with `FashionFlowPipeline.from_checkpoint` does): say so here before publishing."
        )
    if source.released:
        return (
            f"The UNet and adapter are the authors' released checkpoint `{source.checkpoint}` ({RELEASED_CHECKPOINT_URL}), "
            "loaded strictly and converted without change."
        )
    weights = "EMA" if source.ema else "live (not EMA)"
    step = f" after {source.step} steps" if source.step is not None else ""
    return f"The UNet and adapter are the {weights} weights of `{source.checkpoint}`, written by this project's `train.py`{step}."


def _training_data_text(source: WeightsSource | None) -> str:
    if source is None:
        return "The pipeline this folder was saved from does not record its training data: describe it here before publishing."
    if source.released:
        return (
            "The authors trained the released weights on the UBC Fashion dataset (500 training videos of one person "
            "each turning in front of a plain background), 70-frame clips resized to 640x512, as their paper and code "
            "describe; the checkpoint itself does not record its training run."
        )
    where = f"the latents projected into `{source.train_data}`" if source.train_data else "a dataset the checkpoint does not name"
    return f"Trained on {where}. The checkpoint does not say what those videos are: describe them here before publishing."


def model_card(pipe, source: WeightsSource | None, *, repo_id: str) -> str:
    """README.md of a pipeline folder: YAML metadata, then what the model is, how to load it, where the weights
    come from (`source`; None: not known), the paper, training data, intended use and limits, and the license as
    far as it is known. `FashionFlowPipeline.save_pretrained` writes it."""
    config = pipe.model_config
    height, width = pipe.image_size
    millions = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    base_models = [name for name in (config.vae, config.clip) if is_hub_id(name)]
    license_text = (
        f"The authors' repository ({ORIGINAL_CODE}) and their released checkpoint state no license, so the terms on "
        "which these weights may be used or shared are not known: ask the authors before redistributing them."
        if source and source.released
        else "These weights are whoever trained them to license: choose a license and set the `license` field above."
    )
    body = f"""
# FashionFlow

FashionFlow turns one still fashion photo into a short video of the model moving: a latent video diffusion model
whose pseudo-3D space-time UNet ({millions:.1f}M parameters) denoises the video latents while frame 0 is held to the
photo's VAE latent, conditioned on the photo's CLIP tokens mixed with its VAE latent by an embedding adapter. These
weights make {config.frames}-frame videos at {height}x{width} pixels ({config.frames / DEFAULT_FPS:.1f} s at
{DEFAULT_FPS} fps); photos of any size are resized. The VAE (`{config.vae}`) and CLIP vision model (`{config.clip}`)
are frozen; the scheduler is `{type(pipe.scheduler).__name__}` over the noise schedule the model was trained with
({DEFAULT_STEPS} steps by default).

## Use

The folder carries its own code (`fashionflow_*.py`, generated from the FashionFlow package when it was saved), so
diffusers loads it without the repository, in an environment with {", ".join(f"`{name}`" for name in REMOTE_CODE_PACKAGES)}:

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True).to("cuda")
frames = pipe("photo.jpg").frames[0]  # {config.frames} PIL images; a PIL image, array or tensor works too
```

With the FashionFlow package installed (`import fashionflow`; in a clone of its repository, `models`),
`FashionFlowPipeline.from_pretrained("{repo_id}")` loads the same folder with the package's own code and trusts none.

`diffusers.utils.export_to_video(frames, "video.mp4", fps={DEFAULT_FPS})` writes it. The call also takes
`num_inference_steps`, `generator`, `num_videos_per_image`, `output_type` ("pil", "np", "pt", "latent") and
`callback_on_step_end`, and the scheduler can be swapped as in diffusers
(`pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`).

## Weights

{_weights_text(source)} Preprocessing is `{config.preprocessing}` (recorded in `model_index.json`): `legacy` feeds
the VAE [0, 1] pixels and CLIP twice-rescaled pixels, as the original code did and the released weights need;
`standard` feeds both what they were trained on.

## Paper

Tasin Islam, Alina Miron, Xiaohui Liu, Yongmin Li. "Dynamic Fashion Video Synthesis from Static Imagery", Future
Internet 16(8) 287, 2024 (preprint: "FashionFlow: Leveraging Diffusion Models for Dynamic Fashion Video Synthesis from
Static Imagery", arXiv 2310.00106). Original code: {ORIGINAL_CODE}.

```bibtex
{CITATION}
```

## Training data

{_training_data_text(source)}

## Intended use and limits

Research on image-to-video synthesis for fashion, such as showing how a garment moves and fits from a single product
photo. The training videos show a narrow range of people, garments, poses and settings (catwalk turns in front of a
plain background); photos far from them (other poses, several people, busy backgrounds, non-fashion images) give
distorted videos, and behaviour across people and garments has not been measured. The resolution and clip length are
fixed by the weights. There is no content filter. Do not animate photos of real people without their consent, and
do not present generated videos as footage of real garments or people.

## License

{license_text} The frozen encoders keep their own licenses (see `{config.vae}` and `{config.clip}`). The code that
loads this folder is MIT-licensed; its UNet derives from make-a-video-pytorch (MIT).
"""
    return f"---\n{card_metadata(source, base_models).to_yaml()}\n---\n{body}"


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,  # default: "FashionFlow pipeline"
    create_pr: bool = False,
) -> str:
    """Upload a pipeline folder (model card included) to the hub repo `repo_id`, created if missing; the commit's URL.
    `FashionFlowPipeline.push_to_hub` and `save_pretrained(push_to_hub=True)` upload through it too."""
    from huggingface_hub import create_repo, upload_folder

    create_repo(repo_id, exist_ok=True, private=private, token=token)
    commit = upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message or "FashionFlow pipeline",
        token=token,
        create_pr=create_pr,
    )
    return commit.commit_url
