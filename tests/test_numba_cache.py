"""Numba's kernel cache goes to the user cache folder, never inside the installed package.

Files that Numba writes next to a module (``__pycache__/*.nbi``, ``*.nbc``) are unknown to pip:
after ``pip install .`` and a first run they survived ``pip install -e .`` as a stray
``site-packages/specdenoise/`` folder that shadowed the editable install (issue 14). Each test
runs the kernels in a fresh interpreter with an empty cache folder, so Numba really compiles
and writes its cache, and then looks at what landed where.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import specdenoise
import specdenoise.cluster
import specdenoise.evaluate
import specdenoise.simulate
import specdenoise.train

PACKAGE_DIRS = [Path(p) for m in (specdenoise, specdenoise.simulate, specdenoise.train,
                                  specdenoise.evaluate, specdenoise.cluster) for p in m.__path__]

#: runs the observation chain (interpolation, Doppler/dust, LSF, noise: every kernel module
#: but the built-in grid's) on four spectra of a small grid, then reports where each cached
#: kernel of every kernel module keeps its cache
SCRIPT = """
import json, sys
{prelude}
from specdenoise.config import load_config
from specdenoise.stage_simulate import simulate_chunk
cfg = load_config(n=4, chunk_size=4, seed=1, grid=sys.argv[1], out="unused.zarr")
out = simulate_chunk(cfg, sys.argv[1], "", 0, 4)
assert out["flux"].shape == (4, 4096)
import numba
from specdenoise.simulate import builtin_grid, interp, lsf, noise, observe
paths = {{}}
for mod in (builtin_grid, interp, lsf, noise, observe):
    for name, obj in vars(mod).items():
        cache = getattr(obj, "_cache", None)
        if hasattr(cache, "_cache_path"):
            paths[f"{{mod.__name__}}.{{name}}"] = cache._cache_path
print(json.dumps({{"cache_dir": numba.config.CACHE_DIR, "paths": paths}}))
"""


def _package_cache_files() -> dict[Path, int]:
    """Numba cache files and any non-bytecode file in a ``__pycache__`` of the package."""
    found = {}
    for d in PACKAGE_DIRS:
        for p in d.rglob("*"):
            if p.is_file() and (p.suffix in (".nbi", ".nbc")
                                or (p.parent.name == "__pycache__" and p.suffix != ".pyc")):
                found[p] = p.stat().st_mtime_ns
    return found


def _run(tmp_path, grid, env_extra=None, prelude=""):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["SPECDENOISE_CACHE"] = str(tmp_path / "cache")
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(prelude=prelude), str(grid)],
                          env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _written_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc"))


def test_kernels_cache_in_user_cache_not_package(tmp_path, small_grid):
    before = _package_cache_files()
    report = _run(tmp_path, small_grid)
    after = _package_cache_files()
    new = sorted(str(p) for p, t in after.items() if before.get(p) != t)
    assert not new, f"Numba wrote inside the package: {new[:5]}"
    user = tmp_path / "cache" / "specdenoise" / "numba"
    assert report["cache_dir"] == str(user)
    assert report["paths"], "no cached kernel found"
    for name, path in report["paths"].items():
        assert Path(path).is_relative_to(user), (name, path)
    assert _written_in(user), "the kernels ran but nothing was cached in the user cache"


def test_numba_imported_first_still_uses_user_cache(tmp_path, small_grid):
    """A user (or a notebook) that imported numba before specdenoise: config already read."""
    report = _run(tmp_path, small_grid, prelude="import numba")
    user = tmp_path / "cache" / "specdenoise" / "numba"
    assert report["cache_dir"] == str(user)
    assert all(Path(p).is_relative_to(user) for p in report["paths"].values())


def test_user_numba_cache_dir_is_respected(tmp_path, small_grid):
    own = tmp_path / "my-numba-cache"
    report = _run(tmp_path, small_grid, env_extra={"NUMBA_CACHE_DIR": str(own)})
    assert report["cache_dir"] == str(own)
    assert all(Path(p).is_relative_to(own) for p in report["paths"].values())
    assert _written_in(own)
    assert not (tmp_path / "cache" / "specdenoise" / "numba").exists()
