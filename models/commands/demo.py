"""The web demo: animate a fashion photo in the browser.

    python app.py                                    # http://127.0.0.1:7860
    python app.py --checkpoint checkpoint/step_0010000.pth --host 0.0.0.0 --port 8080
    python app.py --share                            # also a temporary public link (Gradio's)

With no --checkpoint it serves checkpoint/FashionFlow_checkpoint.pth (encoders from the hub, or --vae/--clip),
else the model the quickstart trained (`python -m models.serving.quickstart`), else a page saying which command makes one.
Each request's videos, GIFs and sidecar JSON files are kept in a folder of their own under --output_dir.
Needs the demo's packages: pip install -r requirements-demo.txt
"""

from __future__ import annotations

import argparse

from ..core.cli import print_user_error, run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint to serve (default: the released one, else the quickstart's)")
    p.add_argument("--vae", default=None, help="VAE: hub id or local folder (default: what the checkpoint records)")
    p.add_argument("--clip", default=None, help="CLIP vision model: hub id or local folder (default: the checkpoint's)")
    p.add_argument("--output_dir", default="result/demo", help="where each request's videos are written")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network interface)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860, or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a temporary public link through Gradio's servers")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from ..serving.demo_page import serve
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        print_user_error("app.py", "the demo needs Gradio; install its packages: pip install -r requirements-demo.txt")
        return 2
    serve(**vars(args))
    return 0


def run(argv=None) -> int:
    """The command-line entry point: `app.py`, `python -m models demo` and `fashionflow-demo`."""
    return run_command("app.py", lambda: main(argv))
