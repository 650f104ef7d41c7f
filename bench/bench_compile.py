"""Compile time and speed of the UNet and the VAE decoder compiled whole ('full') or region by region ('regional').

    python bench/bench_compile.py --report bench/results/compile_cpu.md     # CPU: tiny and a mid-size network
    python bench/bench_compile.py --device cuda --sizes paper --repeats 1   # the paper's sizes on a GPU
    python bench/bench_compile.py --smoke                                   # the tiny decoder, traced only (a test)

Every measurement runs in a fresh process with an empty inductor cache (`TORCHINDUCTOR_CACHE_DIR`,
`TRITON_CACHE_DIR`): a user's first `inference.py --compile`; then, with `--warm`, once more in a new process on
that cache (a later run on the same machine). Compile time is the first compiled call (one call of the network
included). Per call: the median of `--calls` calls, compiled calls alternating with eager ones in the same process
(`torch.compiler.set_stance("force_eager")`), so the ratio is side by side. The second compiled call runs under
`set_stance("fail_on_recompile")`. Modes alternate in order from repeat to repeat, so a drift in the machine's
load does not favour one.

Sizes: the UNet at the paper config (models/core/config.py) over `paper` 70 frames of 80x64 latents or `mid` 8 frames of
32x16, or the `tiny` preset; the decoder is the stand-in SD v1-4 VAE's (models/networks/standins.py) decoding 8 latents of
80x64 (`paper`) or 2 of 16x12 (`mid`), or the tiny VAE's 8 of 16x12 (`tiny`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("full", "regional")
NETWORKS = ("unet", "decoder")
SIZES = ("tiny", "mid", "paper")
UNET_SIZES = {"tiny": {}, "mid": dict(frames=8, latent_size=(32, 16)), "paper": {}}
DECODER_SIZES = {"tiny": (8, (16, 12)), "mid": (2, (16, 12)), "paper": (8, (80, 64))}  # (latents per call, h x w)


def build(network: str, size: str, device, dtype, channels_last: bool = False):
    """The network at `size` on `device` in `dtype` and a function that runs it once on fixed random inputs."""
    import torch

    sys.path.insert(0, str(ROOT))
    from models.core.config import get_preset
    from models.networks.checkpoint import build_models

    torch.manual_seed(0)
    if network == "unet":
        config = get_preset("tiny") if size == "tiny" else get_preset("paper", **UNET_SIZES[size])
        unet = build_models(config)[0].eval().requires_grad_(False).to(device, dtype)
        x = torch.randn(1, config.channels, config.frames, *config.latent_size, device=device, dtype=dtype)
        context = torch.randn(1, config.context_tokens, config.context_dim, device=device, dtype=dtype)
        t = torch.full((1,), 500.0, device=device)
        return unet, lambda net: net(x, context, timestep=t)
    from models.networks.standins import build_standin_vae
    from models.networks.tiny_components import build_tiny_vae

    vae = (build_tiny_vae() if size == "tiny" else build_standin_vae()).eval().requires_grad_(False).to(device, dtype)
    if channels_last:
        vae.to(memory_format=torch.channels_last)
    count, (h, w) = DECODER_SIZES[size]
    latents = torch.randn(count, vae.config.latent_channels, h, w, device=device, dtype=dtype)
    return vae, lambda net: net.decode(latents).sample


def measure(
    network: str,
    size: str,
    mode: str,
    *,
    device: str,
    calls: int,
    backend: str,
    precision: str = "fp32",
    channels_last: bool = False,
) -> dict:
    """One network compiled one way, in this process: compile seconds, graphs, seconds per call compiled and eager."""
    import torch
    from torch._dynamo.utils import counters

    sys.path.insert(0, str(ROOT))
    from models.core.precision import PRECISIONS
    from models.core.profiling import synchronize
    from models.networks.compiling import compile_decoder, compile_unet

    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as inference.py runs (models/serving/animate.py)
    net, run = build(network, size, device, PRECISIONS[precision], channels_last)

    def timed(fn) -> tuple[float, torch.Tensor]:
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        return time.perf_counter() - start, out

    with torch.inference_mode():
        _, reference = timed(lambda: run(net))
        if network == "unet":
            compiled = compile_unet(net, regional=mode == "regional", backend=backend)
        else:
            compile_decoder(net, regional=mode == "regional", backend=backend)
            compiled = net
        compile_seconds, out = timed(lambda: run(compiled))
        graphs = counters["stats"]["unique_graphs"]
        with torch.compiler.set_stance("fail_on_recompile"):
            timed(lambda: run(compiled))
        eager, fast = [], []
        for _ in range(calls):
            fast.append(timed(lambda: run(compiled))[0])
            with torch.compiler.set_stance("force_eager"):
                eager.append(timed(lambda: run(compiled))[0])
    error = ((out.float() - reference.float()).abs().max() / reference.float().abs().max()).item()
    return {
        "network": network,
        "size": size,
        "mode": mode,
        "precision": precision,
        "channels_last": channels_last,
        "calls_per_run": DECODER_SIZES[size][0] if network == "decoder" else 1,
        "compile_seconds": compile_seconds,
        "graphs": graphs,
        "seconds_per_call": statistics.median(fast),
        "eager_seconds_per_call": statistics.median(eager),
        "max_error_rel": error,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_worker(
    network: str,
    size: str,
    mode: str,
    cache: str | None = None,
    *,
    device: str = "cpu",
    calls: int = 5,
    backend: str = "inductor",
    precision: str = "fp32",
    channels_last: bool = False,
    threads: int = 0,
    timeout: float = 3600,
) -> dict:
    """`measure` in a fresh process whose inductor and Triton caches live in `cache` (default: a new empty one)."""
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="bench_compile_") as cache:
            return run_worker(network, size, mode, cache, device=device, calls=calls, backend=backend,
                              precision=precision, channels_last=channels_last, threads=threads, timeout=timeout)  # fmt: skip
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"))
    command = [sys.executable, __file__, "--worker", network, size, mode, "--device", device, "--calls", str(calls),
               "--backend", backend, "--precision", precision, "--threads", str(threads)]  # fmt: skip
    command += ["--channels_last"] if channels_last else []
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{network} {size} {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float], fmt) -> str:
    text = fmt(statistics.median(values))
    return text if len(values) == 1 else f"{text} ({fmt(min(values))}-{fmt(max(values))})"


def seconds(x: float) -> str:
    return f"{x * 1e3:.0f} ms" if x < 1 else f"{x:.1f} s"


def report(args, rows: list[dict]) -> str:
    first = rows[0]
    lines = [
        f"# torch.compile, whole network against regional: {first['device']}",
        "",
        f"`python bench/bench_compile.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d')} (torch {first['torch']}, "
        f"{first['threads']} threads, backend {args.backend}). Each row: the median over {args.repeats} fresh processes, "
        "(min-max) where more than one. Compile: the first compiled call on an empty cache (cold) and on the cache a "
        "previous process left (warm). Per call: median of "
        f"{args.calls} calls, compiled and eager alternating in the same process.",
        "",
        "| network | size | mode | graphs | compile, cold | compile, warm | per call, compiled | per call, eager | "
        "eager / compiled | max error (rel.) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = sorted({(r["network"], r["size"], r["mode"]) for r in rows},
                  key=lambda k: (NETWORKS.index(k[0]), SIZES.index(k[1]), MODES.index(k[2])))  # fmt: skip
    for key in keys:
        cold = [r for r in rows if (r["network"], r["size"], r["mode"]) == key and not r["warm"]]
        warm = [r["compile_seconds"] for r in rows if (r["network"], r["size"], r["mode"]) == key and r["warm"]]
        ratio = [r["eager_seconds_per_call"] / r["seconds_per_call"] for r in cold]
        lines.append(
            f"| {' | '.join(key)} | {cold[0]['graphs']} | {spread([r['compile_seconds'] for r in cold], seconds)} | "
            f"{spread(warm, seconds) if warm else '-'} | {spread([r['seconds_per_call'] for r in cold], seconds)} | "
            f"{spread([r['eager_seconds_per_call'] for r in cold], seconds)} | {spread(ratio, lambda x: f'{x:.2f}x')} | "
            f"{max(r['max_error_rel'] for r in cold):.1e} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="the tiny decoder, backend 'eager' (tracing only), one repeat")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--networks", default="unet,decoder", help=f"comma-separated of {NETWORKS}")
    p.add_argument("--sizes", default="tiny,mid", help=f"comma-separated of {SIZES}")
    p.add_argument("--modes", default="full,regional", help=f"comma-separated of {MODES}")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per network, size and mode")
    p.add_argument("--warm", action="store_true", help="also time a second process on the first one's cache")
    p.add_argument("--calls", type=int, default=5, help="timed calls of each kind per process")
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="weights and inputs")
    p.add_argument("--channels_last", action="store_true", help="the decoder in channels_last memory format")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: PyTorch's default)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one process may take")
    p.add_argument("--json", default=None, help="write every measurement here")
    p.add_argument("--report", default=None, help="write the markdown table here")
    p.add_argument("--worker", nargs=3, metavar=("NETWORK", "SIZE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        # the UNet's tracing alone takes a minute here; tests/test_pipeline.py compiles it
        args.networks, args.sizes, args.backend, args.repeats, args.calls, args.warm = "decoder", "tiny", "eager", 1, 1, False
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(measure(*args.worker, device=args.device, calls=args.calls, backend=args.backend,
                                 precision=args.precision, channels_last=args.channels_last)))  # fmt: skip
        return []
    jobs = [(n, s) for n in args.networks.split(",") for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    options = {
        name: getattr(args, name) for name in ("device", "calls", "backend", "precision", "channels_last", "threads", "timeout")
    }
    rows = []
    for repeat in range(args.repeats):
        for network, size in jobs:
            for mode in modes if repeat % 2 == 0 else modes[::-1]:
                with tempfile.TemporaryDirectory(prefix="bench_compile_") as cache:
                    for warm in (False, True) if args.warm else (False,):
                        rows.append(run_worker(network, size, mode, cache, **options) | {"warm": warm, "repeat": repeat})
                        r = rows[-1]
                        print(f"{network} {size} {mode}{' warm' if warm else ''}: compile {r['compile_seconds']:.1f} s, "
                              f"{r['seconds_per_call']:.3f} s/call (eager {r['eager_seconds_per_call']:.3f}), "
                              f"{r['graphs']} graphs", flush=True)  # fmt: skip
                if args.json:  # after every measurement, so a run cut short keeps what it measured
                    Path(args.json).write_text(json.dumps(rows, indent=1))
    text = report(args, rows)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
