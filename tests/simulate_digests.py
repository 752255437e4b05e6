"""SHA-256 digests of a small simulated dataset, decoded (not the file bytes, which codecs change).

Used by ``tests/test_bitwise.py`` and run as a script to (re)write the reference
``tests/data/simulate_digests.json``. The reference was written with the code of commit
``01fbbaa`` (before the issue-12 reshaping), so the test checks that the reshaped code
simulates the same dataset, bit for bit, from the same command and seed::

    git worktree add /tmp/base01 01fbbaa
    python -m pip install --no-deps --target /tmp/base01_site /tmp/base01
    PYTHONPATH=/tmp/base01_site python tests/simulate_digests.py \\
        --write tests/data/simulate_digests.json --commit 01fbbaa

(``PYTHONPATH`` puts the old package ahead of an editable install of this checkout; the
script prints which ``specdenoise`` it imported.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest.write_small_grid

#: the simulation the digests describe: a few dozen spectra, three chunks, lossless codec
SETTINGS = {"n": 48, "chunk_size": 16, "seed": 7, "compressor": "zstd"}

#: libraries whose versions the floating-point results depend on
LIBRARIES = ("numpy", "numba", "scipy", "astropy")


def _digest(values: np.ndarray) -> str:
    a = np.ascontiguousarray(values)
    head = f"{a.dtype.str}{a.shape}".encode()
    return hashlib.sha256(head + a.tobytes()).hexdigest()


def simulate_small(folder: Path):
    """Simulate the small dataset (:data:`SETTINGS`, on ``conftest``'s small grid) under
    ``folder``; returns (grid store path, the dataset opened)."""
    from conftest import write_small_grid
    from distributed import Client

    from specdenoise import schema
    from specdenoise.config import load_config
    from specdenoise.stage_simulate import simulate

    grid = write_small_grid(folder / "small.zarr")
    out = folder / "sim.zarr"
    cfg = load_config(grid=str(grid), out=str(out), **SETTINGS)
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=":0") as client:
        simulate(cfg, client=client, progress=False)
    return grid, schema.open_dataset(out)


def digests_of(grid: Path, ds) -> dict[str, str]:
    """Digest of every variable and coordinate of ``ds`` along ``spectrum`` or ``wave``
    (decoded values), plus the grid's flux (``grid:flux``)."""
    from specdenoise.simulate.grids import open_grid

    digests = {"grid:flux": _digest(open_grid(grid)["flux"].values)}
    for name in sorted({*ds.data_vars, *ds.coords}):
        var = ds[name]
        if set(var.dims) <= {"spectrum", "wave"}:
            digests[name] = _digest(var.values)
    return digests


def simulate_digests(folder: Path) -> dict[str, str]:
    """:func:`digests_of` the dataset :func:`simulate_small` writes under ``folder``."""
    return digests_of(*simulate_small(folder))


#: spectra whose every pixel the value reference keeps (one from each of the three chunks)
FULL_SPECTRA = (0, 17, 47)
#: the spectral variables of the value reference
SPECTRAL = ("flux", "flux_clean", "sigma")


def reference_values(grid: Path, ds) -> dict[str, np.ndarray]:
    """The numbers ``tests/test_bitwise.py`` compares on any machine (``simulate_values.npz``):

    * ``VAR`` for every per-spectrum variable (``teff``, ``snr``, ...) and ``wave``: all values;
    * ``VAR:full`` for each of :data:`SPECTRAL`: every pixel of :data:`FULL_SPECTRA`, (3, 4096);
    * ``VAR:sum``, ``VAR:isum``: per spectrum, the float64 sum of the pixels and of the pixels
      times their index (so a shift or a change anywhere in any spectrum shows), (48,);
    * ``mask:count``: per spectrum, the number of masked pixels, (48,);
    * ``grid:flux:sum``: per grid node, the float64 sum of its flux.
    """
    from specdenoise.simulate.grids import open_grid

    out = {}
    for name in sorted({*ds.data_vars, *ds.coords}):
        var = ds[name]
        if var.dims in (("spectrum",), ("wave",)):
            out[name] = np.asarray(var.values)
    for name in SPECTRAL:
        x = np.asarray(ds[name].values, dtype=np.float64)
        out[f"{name}:full"] = np.asarray(ds[name].values)[list(FULL_SPECTRA)]
        out[f"{name}:sum"] = x.sum(axis=1)
        out[f"{name}:isum"] = x @ np.arange(x.shape[1], dtype=np.float64)
    out["mask:count"] = np.asarray(ds["mask"].values).sum(axis=1)
    g = np.asarray(open_grid(grid)["flux"].values, dtype=np.float64)
    out["grid:flux:sum"] = g.reshape(-1, g.shape[-1]).sum(axis=1)
    return out


def environment() -> dict[str, str]:
    import importlib

    versions = {lib: importlib.import_module(lib).__version__ for lib in LIBRARIES}
    return {**versions, "python": platform.python_version(), "machine": platform.machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="write the digests to this JSON file")
    parser.add_argument("--commit", default="", help="the commit the code came from (recorded)")
    parser.add_argument("--write-values", type=Path,
                        help="also write reference_values() to this .npz file")
    args = parser.parse_args()
    import specdenoise

    print(f"specdenoise from {Path(specdenoise.__file__).parent}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        grid, ds = simulate_small(Path(tmp))
        digests = digests_of(grid, ds)
        if args.write_values:
            np.savez_compressed(args.write_values, **reference_values(grid, ds))
    record = {
        "commit": args.commit,
        "command": "see tests/simulate_digests.py",
        "settings": SETTINGS,
        "environment": environment(),
        "digests": digests,
    }
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
