"""Paper-scale tooling on the CPU: stand-in encoders, half-precision weights, low-memory and compile-friendly
decoding, overlapped writing, the launcher's process group. The paper bench's smoke run is part of the GPU suite's
dry run (tests/test_gpu_suite.py)."""

import json
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

import inference
from models.core.config import get_preset
from models.networks.checkpoint import build_models
from models.pipeline.pipeline import FashionFlowPipeline, sample_generator
from models.serving.inference_io import BackgroundWriter

ROOT = Path(__file__).resolve().parents[1]

# published architectures (CompVis/stable-diffusion-v1-4 vae/config.json, openai/clip-vit-base-patch32)
SD_VAE_PARAMS = 83_653_863
CLIP_B32_VISION_PARAMS = 87_456_000


def test_standins_have_the_published_architectures():
    from models.networks.standins import build_standin_clip, build_standin_vae

    with torch.device("meta"):  # no memory, no time: only the architecture is checked
        vae, clip = build_standin_vae(), build_standin_clip()
    assert sum(p.numel() for p in vae.parameters()) == SD_VAE_PARAMS
    assert vae.config.scaling_factor == 0.18215 and vae.config.latent_channels == 4
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8  # 640x512 pixels -> 80x64 latents
    assert sum(p.numel() for p in clip.parameters()) == CLIP_B32_VISION_PARAMS
    tokens = (clip.config.image_size // clip.config.patch_size) ** 2 + 1
    assert (tokens, clip.config.hidden_size) == (50, 768)  # the paper config's context


def test_loading_a_standin_folder_says_its_outputs_are_noise(tmp_path):
    from models.networks.encoders import load_clip, load_vae
    from models.networks.standins import STANDIN_MARKER
    from models.networks.tiny_components import save_tiny_encoders

    vae_dir, clip_dir = save_tiny_encoders(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_vae(vae_dir)
    assert not [w for w in caught if "stand-in" in str(w.message)]
    for folder in (vae_dir, clip_dir):
        (folder / STANDIN_MARKER).write_text("stand-in")
    with pytest.warns(UserWarning, match=r"VAE at .* stand-in.*noise"):
        load_vae(vae_dir)
    with pytest.warns(UserWarning, match=r"CLIP vision model at .* stand-in.*noise"):
        load_clip(clip_dir)


def test_half_precision_weights_compute_what_the_originals_autocast_did():
    """bf16 weights give exactly fp32 weights under bf16 autocast, the original's way of running half precision:
    the timestep sinusoids stay fp32 (bf16 cannot even hold t = 999) and every op sees the same dtypes."""
    config = get_preset("tiny")
    torch.manual_seed(0)
    unet = build_models(config)[0].eval()
    x, context = torch.randn(1, 4, 8, 16, 12), torch.randn(1, 17, 32)
    t = torch.tensor([999.0])
    with torch.no_grad():
        reference = unet(x, context, timestep=t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = unet(x, context, timestep=t)
        half = unet.to(torch.bfloat16)(x.bfloat16(), context.bfloat16(), timestep=t)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, autocast.bfloat16())
    assert 0 < (half.float() - reference).norm() / reference.norm() < 0.15  # half precision, not garbage


def test_pipeline_in_bf16_weights_stays_close_to_fp32(parts):
    images = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    videos = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = FashionFlowPipeline.from_checkpoint(parts["ours"], device="cpu", dtype=dtype)
        assert pipe.dtype == dtype and pipe.encoders.dtype == dtype
        videos[dtype] = pipe(
            images, num_frames=4, steps=2, generator=[sample_generator(0, 0, 0)], progress=False, output_type="pt"
        ).frames
    from models.evaluation.metrics import psnr

    assert videos[torch.bfloat16].dtype == torch.float32
    assert psnr(videos[torch.bfloat16], videos[torch.float32]).min() > 25


def test_offloaded_encoders_and_padded_decode_chunks_change_nothing(parts):
    pipe = FashionFlowPipeline.from_checkpoint(parts["ours"], device="cpu")
    images = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(2))

    def video(**kw):
        return pipe(
            images, num_frames=8, steps=2, generator=[sample_generator(0, 0, 0)], progress=False, output_type="pt", **kw
        ).frames

    reference = video(decode_chunk_size=8)
    pipe.enable_encoder_offload()
    assert torch.equal(video(decode_chunk_size=8), reference)
    assert pipe.encoders.device.type == "cpu"
    pipe.enable_encoder_offload(False)
    pipe.static_decode_shapes = True  # what compile() sets: 8 frames in chunks of 3 decode as 3 + 3 + (2 + 1 pad)
    calls = []
    decode = pipe.encoders.vae.decode
    pipe.encoders.vae.decode = lambda z, **kw: calls.append(len(z)) or decode(z, **kw)
    try:
        padded = video(decode_chunk_size=3)
    finally:
        del pipe.encoders.vae.decode
        pipe.static_decode_shapes = False
    assert calls == [3, 3, 3]
    assert torch.allclose(padded, reference, atol=1e-5)


def test_low_memory_inference_records_its_peak_in_the_sidecar(parts, tmp_path):
    photo = tmp_path / "look.png"
    from PIL import Image

    Image.new("RGB", (48, 64), (20, 120, 200)).save(photo)
    args = ["--pretrained_model", str(parts["ours"]), "--image", str(photo), "--output_dir", str(tmp_path / "o"),
            "--steps", "2", "--frames", "4", "--low_memory", "--no_progress", "--num_of_vid", "2"]  # fmt: skip
    assert inference.main(args) == 0
    for k in range(2):
        sidecar = json.loads((tmp_path / "o" / f"look_sample{k}.json").read_text())
        assert sidecar["low_memory"] is True and sidecar["weights_dtype"] == "float32"
        assert sidecar["cpu_peak_rss_mb"] > 50  # torch alone takes more


def test_background_writer_overlaps_one_write_and_reraises_errors():
    events = []

    def slow_write(name):
        events.append(f"start {name}")
        time.sleep(0.2)
        events.append(f"end {name}")

    with BackgroundWriter() as writer:
        writer.submit(slow_write, "a")
        events.append("caller free")  # the caller computes the next video meanwhile
        writer.submit(slow_write, "b")  # waits for "a" first: never two videos pending
    assert events.index("caller free") < events.index("end a") < events.index("start b")
    assert events[-1] == "end b"

    def broken():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), BackgroundWriter() as writer:
        writer.submit(broken)
    assert not [t for t in threading.enumerate() if t.name.startswith("video-writer")]


def test_a_launcher_gets_a_process_group_even_for_one_process(monkeypatch):
    """torchrun sets RANK even for one process: training then takes the DDP path, as on several GPUs."""
    from models.core.distributed import cleanup_distributed, setup_distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    env = setup_distributed("cpu")
    try:
        assert env.distributed and env.backend == "gloo" and env.world_size == 1
    finally:
        cleanup_distributed()
    for key in ("RANK", "MASTER_ADDR"):
        monkeypatch.delenv(key)
    plain = setup_distributed("cpu")
    assert not plain.distributed and plain.backend is None


def test_bench_reports_are_printed_and_written_where_asked(tmp_path, capsys):
    """The end every bench script shares (bench/_common.py): the table on the console and in a file."""
    from bench._common import RESULTS, write_report

    out = tmp_path / "new" / "report.md"
    assert write_report("| a | b |\n", str(out), "unused.md") == out
    assert out.read_text() == "| a | b |\n" and "| a | b |" in capsys.readouterr().out
    assert RESULTS == ROOT / "bench" / "results"  # where it goes without --out


@pytest.mark.parametrize(
    "module",
    [
        "data.video_io",
        "data.dataset",
        "core.manifest",
        "data.projection",
        "evaluation.evaluate",
        "serving.inference_io",
        "core.files",
        "core.outputs",
    ],
)
def test_light_modules_do_not_import_the_networks(module):
    """Writing a PNG or reading a manifest must not depend on the model code (nor load diffusers)."""
    heavy = ("models.networks.unet", "models.networks.checkpoint", "diffusers")
    code = f"import sys, models.{module}; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_compile_bench_smoke_measures_both_modes(tmp_path):
    """bench/bench_compile.py --smoke: fresh processes, both modes, the report; the tiny decoder traced only."""
    out, report = tmp_path / "compile.json", tmp_path / "compile.md"
    command = [sys.executable, "bench/bench_compile.py", "--smoke", "--json", str(out), "--report", str(report)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"full", "regional"} and all(r["compile_seconds"] > 0 for r in rows.values())
    assert rows["full"]["graphs"] == 1 and rows["regional"]["graphs"] > 1
    assert all(r["max_error_rel"] < 1e-6 for r in rows.values())
    assert "| decoder | tiny | regional |" in report.read_text()
