"""Dependencies point one way, read from the source (``ast``), lazy imports inside functions
included (DESIGN.md, "The house"; issue 12, "Rules"):

==============  =======================================  =======================================
layer           modules                                  may import
==============  =======================================  =======================================
contracts       ``specdenoise`` (``__init__``),          the standard library, numpy, zarr,
                ``.errors``, ``.stores``, ``.schema``,   xarray, and each other
                ``.codecs``
physics         ``specdenoise.simulate.*``               contracts and physics; never Dask,
                                                         distributed, dask-jobqueue or torch
cluster glue    ``specdenoise.cluster.*``                contracts and itself (plus Dask)
training        ``specdenoise.train.*``                  contracts, physics, training
evaluation      ``specdenoise.evaluate.*``               contracts, physics, training, evaluation
orchestration   every other ``specdenoise.*`` module     everything
==============  =======================================  =======================================

Training and evaluation thus never import orchestration at all (a stricter form of "never its
private names", which is checked on its own for every module outside orchestration).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> import name (pyproject.toml's package-dir)
FOLDERS = {"pipeline": "specdenoise", "simulate": "specdenoise.simulate",
           "train": "specdenoise.train", "evaluate": "specdenoise.evaluate",
           "cluster": "specdenoise.cluster"}
#: (``codecs``: the Zarr codecs every store kind is written with, and their error messages;
#: ``metrics``: the definitions of what is measured, read by training and evaluation alike)
CONTRACTS = {"specdenoise", "specdenoise.errors", "specdenoise.stores", "specdenoise.schema",
             "specdenoise.metrics",
             "specdenoise.codecs"}
#: third-party packages physics must not import (parallelism and deep learning live elsewhere)
NOT_IN_PHYSICS = {"dask", "distributed", "dask_jobqueue", "torch"}

#: (module, imported module) pairs that break a rule today, each with the reason it is allowed
#: for now. Remove an entry when its import is gone (test_allowed_exceptions_still_exist says so).
ALLOWED = {
    # dataset stores are declared with lazy dask arrays (schema.create_dataset_store: xarray
    # writes metadata only for dask-backed arrays); moving it out the way grid stores moved to
    # stage_grid would change how tests and users create dataset stores
    ("specdenoise.schema", "dask.array"): "dataset stores declared lazily with dask.array",
}


def modules() -> dict[str, Path]:
    """Import name -> source file of every module of the distribution."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):  # subpackages too (train/nets)
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((package, *parts))] = path
    return out


def imports(name: str, path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(imported module, names taken from it) for every import statement of a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name if path.stem == "__init__" else name.rpartition(".")[0]
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            found.append((module, tuple(a.name for a in node.names)))
    return found


def layer(module: str) -> str:
    if module in CONTRACTS:
        return "contracts"
    for part, name in (("simulate", "physics"), ("cluster", "cluster"), ("train", "training"),
                       ("evaluate", "evaluation")):
        if module == f"specdenoise.{part}" or module.startswith(f"specdenoise.{part}."):
            return name
    return "orchestration"


#: layer -> the first-party layers it may import
MAY_IMPORT = {
    "contracts": {"contracts"},
    "physics": {"contracts", "physics"},
    "cluster": {"contracts", "cluster"},
    "training": {"contracts", "physics", "training"},
    "evaluation": {"contracts", "physics", "training", "evaluation"},
}


def first_party(module: str, names: tuple[str, ...], known: dict[str, Path]) -> list[str]:
    """The specdenoise modules an import statement loads (``from specdenoise import stores``
    loads ``specdenoise.stores``; ``from specdenoise import __version__`` only the package)."""
    if module != "specdenoise" and not module.startswith("specdenoise."):
        return []
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
    return [module, *subs]


def violations(known: dict[str, Path] | None = None) -> list[tuple[str, str, str]]:
    """(module, imported module, rule broken) for every import that breaks a rule."""
    known = modules() if known is None else known
    found = []
    for name, path in known.items():
        own = layer(name)
        for module, names in imports(name, path):
            top = module.split(".")[0]
            if own == "contracts" and top not in {"numpy", "zarr", "xarray", "specdenoise"} \
                    and top not in sys.stdlib_module_names:
                found.append((name, module, "contracts import only numpy, zarr, xarray"))
            if own == "physics" and top in NOT_IN_PHYSICS:
                found.append((name, module, "physics imports neither Dask nor torch"))
            for target in first_party(module, names, known):
                if own in MAY_IMPORT and layer(target) not in MAY_IMPORT[own]:
                    found.append((name, target, f"{own} may not import {layer(target)}"))
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if (private and own != "orchestration" and first_party(module, (), known)
                    and layer(module) == "orchestration"):
                found.append((name, f"{module}.{private[0]}",
                              "orchestration's private names stay in orchestration"))
    return found


def test_every_folder_is_read():
    known = modules()
    assert {"specdenoise.errors", "specdenoise.stores", "specdenoise.schema",
            "specdenoise.simulate.engine", "specdenoise.train.loop",
            "specdenoise.evaluate.baselines", "specdenoise.cluster",
            "specdenoise.stage_simulate"} <= known.keys()
    # lazy imports inside functions count too
    engine = imports("specdenoise.simulate.engine", known["specdenoise.simulate.engine"])
    assert ("specdenoise.simulate.grids", ("open_grid",)) in engine


@pytest.mark.parametrize("module, source, broken", [
    ("specdenoise.simulate.x", "import torch",
     ("torch", "physics imports neither Dask nor torch")),
    ("specdenoise.evaluate.x", "from specdenoise.stage_simulate import resolve_grid",
     ("specdenoise.stage_simulate", "evaluation may not import orchestration")),
    ("specdenoise.stores", "from specdenoise.simulate import grids",
     ("specdenoise.simulate.grids", "contracts may not import physics")),
    ("specdenoise.stores", "import scipy",
     ("scipy", "contracts import only numpy, zarr, xarray")),
    ("specdenoise.cluster.x", "from specdenoise.stage_simulate import _execute",
     ("specdenoise.stage_simulate._execute",
      "orchestration's private names stay in orchestration")),
])
def test_the_rules_catch_a_wrong_import(tmp_path, module, source, broken):
    """The checker is not vacuous: a planted wrong (lazy) import is reported."""
    path = tmp_path / "planted.py"
    path.write_text(f"def f():\n    {source}\n")
    assert (module, *broken) in violations({**modules(), module: path})


def test_dependencies_point_one_way():
    found = [v for v in violations() if (v[0], v[1]) not in ALLOWED]
    assert not found, "\n".join(f"{m} imports {i}: {rule}" for m, i, rule in found)


def test_allowed_exceptions_still_exist():
    """An allowed exception whose import is gone must leave :data:`ALLOWED` too."""
    current = {(m, i) for m, i, _ in violations()}
    stale = [pair for pair in ALLOWED if pair not in current]
    assert not stale, f"remove from ALLOWED, the import is gone: {stale}"


def test_contracts_import_only_numpy_zarr_xarray():
    root = Path(__file__).resolve().parents[1] / "pipeline"
    allowed = {"numpy", "zarr", "xarray", "specdenoise"} | set(sys.stdlib_module_names)
    for name in ("errors.py", "stores.py", "codecs.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] in allowed, (name, mod)
                if mod.startswith("specdenoise"):
                    assert mod in ("specdenoise.errors", "specdenoise.codecs"), (name, mod)
