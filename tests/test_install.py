"""The installed copy: pyproject.toml's packages, scripts and extras, and `pip install` into a throwaway venv, used from
outside the repository under its import name `fashionflow` (docs/DESIGN.md, "Installed copy")."""

import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

from models.commands import JOBS
from models.serving.quickstart import PACKAGED_VAE

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# what the build reads; the rest of the repository (tests, bench, checkpoints) stays out of the copy
BUILD_FILES = ("pyproject.toml", "README.md", "LICENSE", "requirements.txt")


def requirements(name: str) -> list[str]:
    """The packages a requirements file names itself (not through `-r`), comments dropped."""
    lines = (line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-r")]


def test_every_job_has_its_console_script():
    expected = {f"fashionflow-{job}": f"fashionflow.{module}:{entry}" for job, (module, entry) in JOBS.items()}
    assert PYPROJECT["project"]["scripts"] == expected


def test_every_sub_package_is_installed():
    folders = {path.parent.relative_to(ROOT / "models") for path in (ROOT / "models").rglob("__init__.py")}
    expected = sorted(".".join(("fashionflow", *folder.parts)) for folder in folders)
    assert sorted(PYPROJECT["tool"]["setuptools"]["packages"]) == expected


def test_the_extras_are_the_requirements_files():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["demo"] == requirements("requirements-demo.txt")
    assert extras["dev"] == ["fashionflow[demo]", *requirements("requirements-dev.txt")]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}


def test_pip_install_gives_the_commands_and_the_fashionflow_package(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "models", source / "models", ignore=shutil.ignore_patterns("__pycache__"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # a venv made from a venv sees the base interpreter's packages, not this one's (torch, pip, setuptools): add them
    venv_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True, capture_output=True, text=True
    ).stdout.strip()
    Path(venv_site, "this_interpreter.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    pip = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", str(source)]
    subprocess.run(pip, check=True, env=env, cwd=tmp_path, capture_output=True)

    elsewhere = tmp_path / "elsewhere"  # no repository on the path: the current directory is an empty one
    elsewhere.mkdir()

    def run(*command: str) -> str:
        done = subprocess.run(command, env=env, cwd=elsewhere, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stderr}"
        return done.stdout

    for job in ("train", "infer"):
        assert "usage:" in run(str(venv / "bin" / f"fashionflow-{job}"), "--help")
    assert "--train_steps" in run(str(python), "-m", "fashionflow", "quickstart", "--help")
    packaged = "from fashionflow.serving.quickstart import PACKAGED_VAE as v; print(sorted(p.name for p in v.iterdir()))"
    assert run(str(python), "-c", packaged).strip() == str(sorted(p.name for p in PACKAGED_VAE.iterdir()))
    found = run(
        str(python),
        "-c",
        "import importlib.util, fashionflow.pipeline.pipeline as p; spec = importlib.util.find_spec('models'); "
        "print(p.__file__); print(spec.origin if spec else None)",
    ).splitlines()
    assert Path(found[0]).is_relative_to(venv), f"fashionflow was imported from {found[0]}, not the venv"
    assert found[1] == "None" or not Path(found[1]).is_relative_to(ROOT), f"import models found this project: {found[1]}"
