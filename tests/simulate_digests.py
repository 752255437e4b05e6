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


def simulate_digests(folder: Path) -> dict[str, str]:
    """Simulate the small dataset (on ``conftest``'s small grid) under ``folder``; digest of
    every variable and coordinate along ``spectrum`` or ``wave`` (decoded values), plus the
    grid's flux."""
    from conftest import write_small_grid
    from distributed import Client

    from specdenoise import schema
    from specdenoise.config import load_config
    from specdenoise.simulate.grids import open_grid
    from specdenoise.stage_simulate import simulate

    grid = write_small_grid(folder / "small.zarr")
    out = folder / "sim.zarr"
    cfg = load_config(grid=str(grid), out=str(out), **SETTINGS)
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=":0") as client:
        simulate(cfg, client=client, progress=False)
    ds = schema.open_dataset(out)
    digests = {"grid:flux": _digest(open_grid(grid)["flux"].values)}
    for name in sorted({*ds.data_vars, *ds.coords}):
        var = ds[name]
        if set(var.dims) <= {"spectrum", "wave"}:
            digests[name] = _digest(var.values)
    return digests


def environment() -> dict[str, str]:
    import importlib

    versions = {lib: importlib.import_module(lib).__version__ for lib in LIBRARIES}
    return {**versions, "python": platform.python_version(), "machine": platform.machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="write the digests to this JSON file")
    parser.add_argument("--commit", default="", help="the commit the code came from (recorded)")
    args = parser.parse_args()
    import specdenoise

    print(f"specdenoise from {Path(specdenoise.__file__).parent}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        digests = simulate_digests(Path(tmp))
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
