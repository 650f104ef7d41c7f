"""The jobs' command lines, one module each; `python -m models JOB` and the installed `fashionflow-JOB` run them.

Every module named in `JOBS` has `main(argv=None)`; `run()` (where there is one) wraps it with the user-error
handling of its top-level script. The top-level scripts (inference.py, train.py, project_latent_space.py, app.py)
import their job from here.
"""

# job -> (module, entry point); pyproject.toml's [project.scripts] lists the same (a test holds them together)
JOBS = {
    "infer": ("commands.infer", "run"),
    "train": ("commands.train", "run"),
    "project": ("commands.project", "run"),
    "demo": ("commands.demo", "run"),
    "convert": ("pipeline.convert", "main"),
    "evaluate": ("evaluation.evaluate", "run"),
    "quickstart": ("serving.quickstart", "main"),
    "structure": ("networks.structure", "main"),
    "standins": ("networks.standins", "main"),
}
