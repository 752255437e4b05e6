"""The layers of specdenoise, stated once (README, "Where things live", says the same) and
checked from the source (``ast``), lazy imports inside functions included:

==========  ===========================================  ======================================
layer       modules                                      may import (first party)
==========  ===========================================  ======================================
contracts   ``pipeline/``: ``specdenoise`` (``__init__``),  contracts; third party: numpy, zarr,
            ``errors``, ``stores``, ``schema``,          xarray (see :data:`THIRD_PARTY`)
            ``codecs``, ``metrics``, ``progress``,
            ``usercache``
physics     ``simulate/``                                contracts, physics; never Dask,
                                                         distributed, dask-jobqueue or torch
cluster     ``cluster/``                                 contracts, cluster (plus Dask)
training    ``train/``                                   contracts, physics, training
evaluation  ``evaluate/``                                contracts, physics, evaluation
stages      ``pipeline/``: ``stage_*`` and their         everything but the CLI
            helpers ``config``, ``pfsio``,
            ``resample``, ``submit``
CLI         ``pipeline/``: ``cli``, ``cli_*``,           contracts, stages, CLI, and the
            ``options``                                  registries whose names it offers as
                                                         choices (:data:`REGISTRIES`)
==========  ===========================================  ======================================

So evaluation receives trained networks as plain callables from its stage (it never imports
training), every command is a thin ``cli_*`` over a ``stage_*``, and no layer below the stages
reaches up. Besides: no module imports a private name (``_x``) of another layer, and there is
no import cycle. A module of ``pipeline/`` that is in no list above fails the test: put it in
one. Every exception is in :data:`ALLOWED`, with its reason.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> import name (pyproject.toml's package-dir)
FOLDERS = {"pipeline": "specdenoise", "simulate": "specdenoise.simulate",
           "train": "specdenoise.train", "evaluate": "specdenoise.evaluate",
           "cluster": "specdenoise.cluster"}
#: the contracts: what every layer shares (codecs: the Zarr codecs every store kind is written
#: with; metrics: what is measured, read by training and evaluation alike; progress: the
#: progress bars and log lines; usercache: the user cache folder, Numba's kernel cache in it;
#: configfile: the TOML reading and writing and field checks every stage's config shares)
CONTRACTS = {"specdenoise", *(f"specdenoise.{m}" for m in (
    "errors", "stores", "schema", "codecs", "metrics", "progress", "usercache", "configfile"))}
#: modules of pipeline/ that are neither ``stage_*`` nor ``cli_*`` but belong to the stages
STAGE_HELPERS = {f"specdenoise.{m}" for m in ("config", "pfsio", "resample", "submit")}
#: ... and to the command line
CLI_HELPERS = {"specdenoise.cli", "specdenoise.options"}
#: third-party packages the contracts may import
THIRD_PARTY = {"numpy", "zarr", "xarray"}
#: third-party packages physics must not import (parallelism and deep learning live elsewhere)
NOT_IN_PHYSICS = {"dask", "distributed", "dask_jobqueue", "torch"}
#: registries the CLI reads its choices and their help from, so that a new grid reader, training
#: preset or baseline appears in ``--help`` without an edit of the CLI (each is torch-free)
REGISTRIES = {"specdenoise.simulate.readers", "specdenoise.train.presets",
              "specdenoise.evaluate.baselines",
              # the training options' names, choices and their TOML table (torch-free), which
              # train --config and --print-config read and write
              "specdenoise.train.config"}

#: layer -> the first-party layers it may import
MAY_IMPORT = {
    "contracts": {"contracts"},
    "physics": {"contracts", "physics"},
    "cluster": {"contracts", "cluster"},
    "training": {"contracts", "physics", "training"},
    "evaluation": {"contracts", "physics", "evaluation"},
    "stages": {"contracts", "physics", "cluster", "training", "evaluation", "stages"},
    "CLI": {"contracts", "stages", "CLI"},
}

#: (module, imported module) pairs that break a rule today, each with the reason it is allowed.
#: Remove an entry when its import is gone (test_allowed_exceptions_still_exist says so).
ALLOWED = {
    # dataset stores are declared with lazy dask arrays (schema.create_dataset_store: xarray
    # writes metadata only for dask-backed arrays); moving it out the way grid stores moved to
    # stage_grid would change how tests and users create dataset stores
    ("specdenoise.schema", "dask.array"): "dataset stores declared lazily with dask.array",
    # a live progress bar is tqdm's; imported only when a terminal or Jupyter watches
    ("specdenoise.progress", "tqdm.auto"): "the live progress bar is tqdm's",
    # `specdenoise cluster show|init` reads and writes profile files: no stage computes anything
    ("specdenoise.cli_cluster", "specdenoise.cluster.connect"): "cluster profiles, no stage",
    ("specdenoise.cli_cluster", "specdenoise.cluster.profiles"): "cluster profiles, no stage",
}
#: import cycles (as sorted module pairs) allowed for now, with the reason
ALLOWED_CYCLES: dict = {}


def modules() -> dict[str, Path]:
    """Import name -> source file of every module of the distribution."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):  # subpackages too (train/nets)
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((package, *parts))] = path
    return out


@functools.cache  # each file is parsed once per test run
def imports(name: str, path: Path) -> tuple[tuple[str, tuple[str, ...]], ...]:
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
    return tuple(found)


def layer(module: str) -> str:
    """The layer of a first-party module (``?`` for a module of pipeline/ in no list)."""
    if module in CONTRACTS:
        return "contracts"
    for part, name in (("simulate", "physics"), ("cluster", "cluster"), ("train", "training"),
                       ("evaluate", "evaluation")):
        if module == f"specdenoise.{part}" or module.startswith(f"specdenoise.{part}."):
            return name
    stem = module.removeprefix("specdenoise.")
    if stem.startswith("stage_") or module in STAGE_HELPERS:
        return "stages"
    if stem.startswith("cli_") or module in CLI_HELPERS:
        return "CLI"
    return "?"


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
            if own == "contracts" and top not in THIRD_PARTY | {"specdenoise"} \
                    and top not in sys.stdlib_module_names:
                found.append((name, module, "contracts import only numpy, zarr, xarray"))
            if own == "physics" and top in NOT_IN_PHYSICS:
                found.append((name, module, "physics imports neither Dask nor torch"))
            for target in first_party(module, names, known):
                if own == "CLI" and target in REGISTRIES:
                    continue
                if own in MAY_IMPORT and layer(target) not in MAY_IMPORT[own]:
                    found.append((name, target, f"{own} may not import {layer(target)}"))
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and first_party(module, (), known) and layer(module) != own:
                found.append((name, f"{module}.{private[0]}",
                              "a layer's private names stay in that layer"))
    return found


def graph(known: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the first-party modules it imports (lazy imports included)."""
    return {name: {t for module, names in imports(name, path)
                   for t in first_party(module, names, known) if t in known and t != name}
            for name, path in known.items()}


def cycles(known: dict[str, Path] | None = None) -> set[tuple[str, ...]]:
    """Every import cycle, as the sorted tuple of its modules (strongly connected components
    of more than one module; Tarjan's algorithm)."""
    known = modules() if known is None else known
    edges = graph(known)
    index, low, stack, on, out = {}, {}, [], set(), set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            # a package and its own modules (``specdenoise`` <- ``specdenoise.x``) are not a
            # cycle: importing a submodule always imports its package first
            part = [m for m in part if not any(o.startswith(m + ".") for o in part)]
            if len(part) > 1:
                out.add(tuple(sorted(part)))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


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
     ("specdenoise.stage_simulate", "evaluation may not import stages")),
    ("specdenoise.evaluate.x", "from specdenoise.train.infer import denoise_array",
     ("specdenoise.train.infer", "evaluation may not import training")),
    ("specdenoise.stores", "from specdenoise.simulate import grids",
     ("specdenoise.simulate.grids", "contracts may not import physics")),
    ("specdenoise.stores", "import scipy",
     ("scipy", "contracts import only numpy, zarr, xarray")),
    ("specdenoise.cli_x", "from specdenoise.simulate import grids",
     ("specdenoise.simulate.grids", "CLI may not import physics")),
    ("specdenoise.cli_x", "from specdenoise.train import infer",
     ("specdenoise.train.infer", "CLI may not import training")),
    ("specdenoise.stage_x", "from specdenoise.cli import main",
     ("specdenoise.cli", "stages may not import CLI")),
    ("specdenoise.cluster.x", "from specdenoise.stage_simulate import _execute",
     ("specdenoise.stage_simulate._execute", "a layer's private names stay in that layer")),
    ("specdenoise.stage_x", "from specdenoise.train.infer import _WAVE",
     ("specdenoise.train.infer._WAVE", "a layer's private names stay in that layer")),
])
def test_the_rules_catch_a_wrong_import(tmp_path, module, source, broken):
    """The checker is not vacuous: a planted wrong (lazy) import is reported."""
    path = tmp_path / "planted.py"
    path.write_text(f"def f():\n    {source}\n")
    assert (module, *broken) in violations({**modules(), module: path})


def test_every_module_has_a_layer():
    """A new module of pipeline/ must be placed: in a list above, or named stage_*/cli_*."""
    lost = [m for m in modules() if layer(m) == "?"]
    assert not lost, f"put these in a layer (tests/test_layers.py and README): {lost}"


def test_a_registry_is_what_the_cli_may_read_and_nothing_more(tmp_path):
    """The CLI may read a registry's names, but no other module of that layer."""
    path = tmp_path / "planted.py"
    path.write_text("from specdenoise.train.presets import PRESETS\n"
                    "from specdenoise.train.loop import train\n")
    found = violations({**modules(), "specdenoise.cli_x": path})
    assert ("specdenoise.cli_x", "specdenoise.train.loop", "CLI may not import training") \
        in found
    assert not [v for v in found if v[:2] == ("specdenoise.cli_x", "specdenoise.train.presets")]


def test_no_import_cycles():
    found = cycles() - set(ALLOWED_CYCLES)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in sorted(found))


def test_the_cycle_check_finds_a_planted_cycle(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from specdenoise.train import b\n")
    b.write_text("def f():\n    from specdenoise.train import a\n")
    found = cycles({**modules(), "specdenoise.train.a": a, "specdenoise.train.b": b})
    assert ("specdenoise.train.a", "specdenoise.train.b") in found


def test_allowed_cycles_still_exist():
    stale = [c for c in ALLOWED_CYCLES if c not in cycles()]
    assert not stale, f"remove from ALLOWED_CYCLES, the cycle is gone: {stale}"


def readme_layers() -> dict[str, tuple[str, str]]:
    """README's table of layers: layer -> (its modules cell, its 'may import' cell)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Where things live"):]
    section = section[:section.index("\n## ", 3)] if "\n## " in section[3:] else section
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in MAY_IMPORT:
            rows[cells[0]] = (cells[1], cells[3])
    return rows


def test_readme_states_the_same_layers():
    """README's "Where things live" table and this test say the same: the layers, the
    contracts' modules and what each layer may import."""
    rows = readme_layers()
    assert set(rows) == set(MAY_IMPORT)
    for name, (_, may) in rows.items():
        assert {w.strip() for w in may.split(",")} == MAY_IMPORT[name], name
    named = set(re.findall(r"`(\w+)`", rows["contracts"][0]))
    assert {f"specdenoise.{m}" for m in named - {"pipeline"}} | {"specdenoise"} == CONTRACTS
    named = set(re.findall(r"`(\w+)`", rows["stages"][0]))
    assert {f"specdenoise.{m}" for m in named} >= STAGE_HELPERS
    named = set(re.findall(r"`(\w+)`", rows["CLI"][0]))
    assert {f"specdenoise.{m}" for m in named} >= CLI_HELPERS


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
