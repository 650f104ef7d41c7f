"""A pipeline folder carries its own code: plain diffusers loads it with `trust_remote_code=True` (from a folder
or a hub id) in an environment with only the model card's packages, where this repository is unreachable, and
makes the clone's video bit for bit; a clone loads it with its own package."""

import ast
import importlib.metadata
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from models.pipeline import remote_code
from models.pipeline.convert import convert
from models.pipeline.hub import REMOTE_CODE_PACKAGES
from models.pipeline.model_source import ModelSource
from models.pipeline.pipeline import FashionFlowPipeline, sample_generator

# import name -> the package (as the model card names it) that provides it
DISTRIBUTIONS = {
    "PIL": "pillow",
    "cv2": "opencv-python-headless",
    "imageio_ffmpeg": "imageio-ffmpeg",
    "huggingface_hub": "diffusers",
}
STDLIB = set(sys.stdlib_module_names)

LOAD_WITHOUT_REPOSITORY = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, importlib.metadata, importlib.util, json, re, sys
    site, modules, distributions = json.loads(sys.argv.pop(1))

    def canonical(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    class CardPackagesOnly(importlib.abc.MetaPathFinder):
        # run with -I -S, site-packages is off sys.path: this finds the model card's packages there, nothing else
        def find_spec(self, name, path=None, target=None):
            if path is None and name in modules:
                return importlib.machinery.PathFinder.find_spec(name, [site])

        def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
            found = importlib.machinery.PathFinder.find_distributions(type(context)(name=context.name, path=[site]))
            return (d for d in found if canonical(d.metadata["Name"]) in distributions)

    sys.meta_path.append(CardPackagesOnly())
    assert importlib.util.find_spec("models") is None and importlib.util.find_spec("fashionflow") is None
    import torch
    from diffusers import DiffusionPipeline
    folder, saved_again, image, out = sys.argv[1:]

    def video(pipe):
        generator = sys.modules[type(pipe).__module__].sample_generator(3, 0, 0)
        call = dict(num_frames=4, num_inference_steps=2, output_type="pt", progress=False)
        return pipe(torch.load(image), generator=[generator], **call).frames

    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(pipe).__name__ == "FashionFlowPipeline", type(pipe)
    assert type(pipe.unet).__module__.startswith("diffusers_modules."), type(pipe.unet)
    frames = video(pipe)
    pipe.save_pretrained(saved_again)  # a pipeline running on the folder's code saves a folder that loads too
    again = DiffusionPipeline.from_pretrained(saved_again, trust_remote_code=True)
    torch.save({"frames": frames, "again": video(again)}, out)
    """
)


def distributions_needed(names) -> list[importlib.metadata.Distribution]:
    """The installed distributions `names` need, theirs included (what pip would install for them)."""
    found, todo = {}, [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found[name] = dist = importlib.metadata.distribution(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return list(found.values())


def card_environment() -> str:
    """What the subprocess may see of this interpreter's site-packages, as JSON: the top-level modules and the
    distributions of the model card's packages and of what they need, as if only they were installed in a venv."""
    dists = distributions_needed(REMOTE_CODE_PACKAGES)
    tops = {f.parts[0].split(".")[0] for d in dists for f in d.files or [] if f.parts[0] not in ("..", "__pycache__")}
    site = str(importlib.metadata.distribution("diffusers").locate_file(""))
    return json.dumps([site, sorted(tops), sorted(canonicalize_name(d.metadata["Name"]) for d in dists)])


@pytest.fixture(scope="module")
def folder(parts, tmp_path_factory):
    return convert(ModelSource(parts["ours"]), tmp_path_factory.mktemp("remote") / "folder")


def photo():
    return torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(7))


def clone_video(folder):
    pipe = FashionFlowPipeline.from_pretrained(folder)
    call = dict(num_frames=4, num_inference_steps=2, output_type="pt", progress=False)
    return pipe(photo(), generator=[sample_generator(3, 0, 0)], **call).frames


def test_model_index_names_the_folders_code(folder):
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["fashionflow_pipeline", "FashionFlowPipeline"]
    assert index["unet"] == ["fashionflow_component_unet", "SpaceTimeUnet"]
    assert index["adapter"] == ["fashionflow_component_adapter", "EmbeddingAdapter"]
    assert (folder / "fashionflow_pipeline.py").is_file()
    for component in ("unet", "adapter"):
        assert (folder / component / f"fashionflow_component_{component}.py").is_file()


def test_folder_code_is_generated_from_the_package(folder):
    """Each flat file is its package module with the imports renamed: one source, no kept copy."""
    for module in remote_code.closure("pipeline.pipeline"):
        written = (folder / f"{remote_code.flat_name(module)}.py").read_text()
        assert written.startswith(remote_code.GENERATED)
        assert "from models" not in written and "from .." not in written
        assert written == remote_code.flat_source(module, needs=_needs(module))


def _needs(module):
    if module != "pipeline.pipeline":
        return ()
    direct = set(remote_code.imports_of(module))
    return [m for m in remote_code.closure(module) if m not in direct and m != module]


def test_flat_names_are_unique_in_the_closure():
    modules = remote_code.closure("pipeline.pipeline")
    assert len({remote_code.flat_name(m) for m in modules}) == len(modules)


def test_model_card_lists_every_package_the_code_imports(folder):
    imported = set()
    for path in folder.rglob("fashionflow_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {DISTRIBUTIONS.get(name, name) for name in imported - STDLIB - {"__future__"}}
    assert third_party <= set(REMOTE_CODE_PACKAGES), third_party - set(REMOTE_CODE_PACKAGES)
    card = (folder / "README.md").read_text()
    assert "trust_remote_code=True" in card and all(f"`{name}`" in card for name in REMOTE_CODE_PACKAGES)


def lay_out_hub_cache(folder, cache) -> str:
    """The hub cache's layout of `folder` as if downloaded from the hub id it returns (offline, by hand)."""
    repo = cache / "models--you--fashionflow"
    shutil.copytree(folder, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return "you/fashionflow"


@pytest.mark.parametrize("where", ["folder", "hub id"])
def test_plain_diffusers_loads_the_folder_without_the_repository(folder, tmp_path, where):
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    if where == "folder":
        source = shutil.copytree(folder, tmp_path / "copied")
    else:
        source = lay_out_hub_cache(folder, tmp_path / "hub")
        env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    torch.save(photo(), tmp_path / "photo.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_REPOSITORY)
    args = [card_environment(), source, tmp_path / "again", tmp_path / "photo.pt", tmp_path / "out.pt"]
    command = [sys.executable, "-I", "-S", str(script), *map(str, args)]
    run = subprocess.run(command, cwd=empty, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Expected types" not in run.stderr  # the pipeline and its loaded components share their classes
    result = torch.load(tmp_path / "out.pt")
    expected = clone_video(folder)
    assert torch.equal(result["frames"], expected) and torch.equal(result["again"], expected)


def test_a_clone_loads_the_folder_with_its_own_code(folder):
    pipe = FashionFlowPipeline.from_pretrained(folder)
    assert type(pipe.unet).__module__ == "models.networks.unet"
    assert type(pipe.adapter).__module__ == "models.networks.adapter"


def test_folders_written_before_the_folder_carried_code_still_load(folder, tmp_path):
    old = shutil.copytree(folder, tmp_path / "old")
    for path in old.rglob("fashionflow_*.py"):
        path.unlink()
    index = json.loads((old / "model_index.json").read_text())
    index |= {"_class_name": "FashionFlowPipeline", "unet": ["models.unet", "SpaceTimeUnet"]}
    index["adapter"] = ["models.adapter", "EmbeddingAdapter"]
    (old / "model_index.json").write_text(json.dumps(index))
    assert torch.equal(clone_video(old), clone_video(folder))


def test_a_clone_loads_a_hub_id_with_its_own_code(folder, tmp_path):
    """A hub id resolves through the hub cache (laid out here by hand, offline) and loads like the folder."""
    hub_id = lay_out_hub_cache(folder, tmp_path / "cache")
    pipe = FashionFlowPipeline.from_pretrained(hub_id, cache_dir=tmp_path / "cache", local_files_only=True)
    assert type(pipe.unet).__module__ == "models.networks.unet"
    call = dict(num_frames=4, num_inference_steps=2, output_type="pt", progress=False)
    frames = pipe(photo(), generator=[sample_generator(3, 0, 0)], **call).frames
    assert torch.equal(frames, clone_video(folder))
