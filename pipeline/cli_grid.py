"""``specdenoise grid``: build the built-in grid, import model files, inspect a grid store.

The stages themselves are in :mod:`specdenoise.stage_grid`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from specdenoise import options
from specdenoise.simulate.readers import families


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grid",
        help="build or import a stellar model grid (Zarr store)",
        description="Build the built-in approximate grid, import BOSZ spectra, or inspect a grid.",
    )
    gsub = p.add_subparsers(dest="grid_command", metavar="ACTION")
    gsub.required = True

    b = gsub.add_parser(
        "build",
        help="generate a built-in grid (no downloads)",
        description=(
            "Generate the built-in approximate synthetic grid (Teff 3500-7500 K, log g 0-5, "
            "[M/H] -2.5..+0.75, [a/M] -0.25..+0.5, vacuum 700-900 nm at R=20000). Without --out "
            "it is cached under the user cache directory and reused."
        ),
    )
    b.add_argument("source", choices=["builtin"], help="which generator (only 'builtin')")
    b.add_argument("--out", type=Path, help="where to write the store (default: the cache)")
    options.add_overwrite(b, "an existing grid store")
    options.add_no_progress(b)
    b.set_defaults(func=_build)

    i = gsub.add_parser(
        "import",
        help="import BOSZ 2017/2024 model files into a grid store",
        description=(
            "Import a directory of BOSZ 2017 (FITS, .asc, .asc.bz2) or BOSZ 2024 (.txt.gz + "
            "bosz2024_wave_r{R}.txt) spectra, in parallel with Dask, into a grid store."
        ),
    )
    i.add_argument("source", choices=families(), help="model family")
    i.add_argument("dir", type=Path, help="directory holding the model files")
    i.add_argument("--out", type=Path, required=True, help="grid store to write (*.zarr)")
    i.add_argument(
        "--wave-range", nargs=2, type=float, default=(700.0, 900.0), metavar=("MIN", "MAX"),
        help="vacuum wavelength range to keep, nm (default 700 900)",
    )
    i.add_argument("--resolution", type=float, help="degrade to this resolving power R")
    i.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable files (listed at the end) instead of stopping")
    options.add_overwrite(i, "an existing grid store")
    options.add_no_progress(i)
    i.set_defaults(func=_import)

    s = gsub.add_parser("info", help="describe a grid store")
    s.add_argument("path", type=Path)
    s.set_defaults(func=_info)


def _build(args) -> int:
    from specdenoise.stage_grid import build_builtin_grid

    path = build_builtin_grid(args.out, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"built-in grid: {path}")
    return 0


def _import(args) -> int:
    from specdenoise.stage_grid import import_grid

    path = import_grid(
        args.source,
        args.dir,
        args.out,
        wave_range=tuple(args.wave_range),
        resolution=args.resolution,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"grid store: {path}")
    return 0


def _info(args) -> int:
    from specdenoise.stage_grid import grid_summary

    print(grid_summary(args.path))
    return 0
