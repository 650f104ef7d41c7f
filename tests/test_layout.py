"""The package's layout: sub-packages in layers whose imports only point down, and no import cycle among modules,
counting the imports made inside functions."""

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "models"
LAYERS = ("core", "networks", "diffusion", "data", "pipeline", "training", "evaluation", "serving", "commands")
RELATIVE_IMPORT = re.compile(r"^\s*from (\.+)([\w.]*) import", re.M)


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path) -> set[str]:
    """Package modules `name` imports (a sub-package's __init__ stands for the sub-package)."""
    own = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for dots, target in RELATIVE_IMPORT.findall(path.read_text()):
        base = own[: len(own) - (len(dots) - 1)]
        found.add(".".join([*base, target] if target else base).removesuffix(".__init__"))
    return found - {""}


def test_every_module_sits_in_a_layer():
    top = {name for name in modules() if "." not in name}
    assert top == {"__init__", "__main__"}, "modules belong in a sub-package"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")} == set(LAYERS)


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_down(layer):
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    upward = {
        (name, target)
        for name, path in modules().items()
        if name.split(".")[0] == layer
        for target in imports_of(name, path)
        if target.split(".")[0] not in allowed
    }
    assert not upward, f"imports from {layer} into a later layer: {sorted(upward)}"


def test_no_import_cycle():
    graph = {name: {t for t in imports_of(name, path) if t in modules()} for name, path in modules().items()}
    state: dict[str, str] = {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(target) :], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
