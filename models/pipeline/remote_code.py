"""The code a pipeline folder carries, so plain diffusers loads it: `DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)` with no clone of this repository.

diffusers' custom-code convention: `model_index.json` names `["<module>", "<Class>"]` for the pipeline and for each
custom component, and the module's file lies at the folder's root (the pipeline) or in the component's subfolder.
diffusers copies that file and the files it imports with `from .name import`, one level deep, into one flat module
folder, so the code is written flat: each module of the package that the entry needs becomes `fashionflow_<name>.py`
beside it, its imports rewritten to those names, and every entry imports its whole closure itself. The files are
generated from the package's own modules at each save: one source, never a kept copy.

A clone loads such a folder with its own package (`FashionFlowPipeline.load_config` maps the names back), so the
code in the folder runs only where the package is absent.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

PREFIX = "fashionflow_"
# "models" in a clone, "fashionflow" installed; in a folder's own code (flat) there is no package to read
FLAT = __name__.rpartition(".")[2].startswith(PREFIX)
PACKAGE = None if FLAT else __package__.rpartition(".")[0]
GENERATED = "# Generated from the FashionFlow package by save_pretrained; edit the package, not this file.\n"

# component -> (the package module that defines it, its class); the pipeline itself is written at the root
ENTRIES = {
    None: ("pipeline.pipeline", "FashionFlowPipeline"),
    "unet": ("networks.unet", "SpaceTimeUnet"),
    "adapter": ("networks.adapter", "EmbeddingAdapter"),
}
RELATIVE_IMPORT = re.compile(r"^(\s*from )(\.+)([\w.]*)( import )", re.M)


def flat_name(module: str) -> str:
    """`networks.unet` -> `fashionflow_unet` (module names are unique across the sub-packages; a test checks it)."""
    return PREFIX + module.rpartition(".")[2]


def _source(module: str) -> str:
    return Path(importlib.import_module(f"{PACKAGE}.{module}").__file__).read_text()


def _resolve(module: str, dots: str, name: str) -> str:
    """The package-relative module that `from <dots><name> import` in `module` means."""
    base = module.split(".")[: -len(dots)]
    return ".".join([*base, name] if name else base)


def imports_of(module: str) -> list[str]:
    """The package modules `module` imports, at the top or inside functions."""
    return sorted({_resolve(module, dots, name) for _, dots, name, _ in RELATIVE_IMPORT.findall(_source(module))})


def closure(module: str) -> list[str]:
    """`module` and every package module it needs, directly or not."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imports_of(current))
    return sorted(seen)


def flat_source(module: str, *, needs: list[str] = ()) -> str:
    """`module`'s code with its imports pointing at flat siblings; `needs`: the other modules it must import."""

    def flatten(match) -> str:
        head, dots, name, tail = match.groups()
        return f"{head}.{flat_name(_resolve(module, dots, name))}{tail}"

    text = RELATIVE_IMPORT.sub(flatten, _source(module))
    if needs:  # diffusers copies only what the entry imports itself: name the rest of the closure here
        lines = "".join(f"from .{flat_name(m)} import __name__ as _{flat_name(m)}  # noqa: F401\n" for m in needs)
        anchor = "from __future__ import annotations\n"
        text = text.replace(anchor, anchor + "\n" + lines, 1) if anchor in text else lines + text
    return GENERATED + text


def component_name(component: str) -> str:
    """The module a component's subfolder is loaded by: a shim that takes the class from the shared flat module,
    so the pipeline and its loaded component share one class (diffusers runs a loaded module's file again)."""
    return f"{PREFIX}component_{component}"


def write_remote_code(folder) -> dict[str, list[str]]:
    """Write the flat code of the pipeline and its custom components into the saved `folder`; the `model_index.json`
    entries that name them."""
    folder, names = Path(folder), {}
    for component, (module, class_name) in ENTRIES.items():
        target = folder if component is None else folder / component
        entry = flat_name(module) if component is None else component_name(component)
        names["_class_name" if component is None else component] = [entry, class_name]
        if FLAT:  # saving a pipeline loaded from a folder's own code: that code, as it is
            for file in Path(__file__).parent.glob(f"{PREFIX}*.py"):
                (target / file.name).write_text(file.read_text())
            continue
        needed = closure(module)
        if component is None:  # the pipeline's module is the entry: it names what it does not import itself
            direct = set(imports_of(module))
            rest = [m for m in needed if m not in direct and m != module]
            (target / f"{entry}.py").write_text(flat_source(module, needs=rest))
            needed = [m for m in needed if m != module]
        else:
            shim = "".join(f"from .{flat_name(m)} import __name__ as _{flat_name(m)}  # noqa: F401\n" for m in needed)
            shim += f"from .{flat_name(module)} import {class_name}  # noqa: F401\n"
            (target / f"{entry}.py").write_text(GENERATED + f'"""The {component} of a FashionFlow pipeline folder."""\n\n' + shim)
        for other in needed:
            (target / f"{flat_name(other)}.py").write_text(flat_source(other))
    return names


def package_module(name: str) -> str | None:
    """The package module a `model_index.json` library name means: a flat name this module wrote, or the flat
    module path written by versions before the sub-packages (`models.unet`); None for any other library, and in a
    folder's own code, which loads its names as they are."""
    if FLAT:
        return None
    for component, (module, _) in ENTRIES.items():
        short = module.rpartition(".")[2]
        known = (flat_name(module), f"models.{short}", f"{PACKAGE}.{module}")
        if name in known or (component is not None and name == component_name(component)):
            return f"{PACKAGE}.{module}"
    return None
