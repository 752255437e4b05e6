"""``specdenoise info``: describe any store (:func:`specdenoise.stage_export.describe_store`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="describe a store: kind, spectra, completeness, wavelengths, S/N, parameters",
        description=(
            "Describe any specdenoise store: its kind, what made it (command and version), "
            "number of spectra and completeness, wavelength range, a text S/N histogram, the "
            "range of every per-spectrum parameter and the variables it holds."
        ),
    )
    p.add_argument("store", type=Path, metavar="STORE", help="a specdenoise Zarr store")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from specdenoise.stage_export import describe_store

    print(describe_store(args.store))
    return 0
