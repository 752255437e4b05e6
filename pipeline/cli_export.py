"""``specdenoise export``: a store to HDF5, netCDF or FITS (:mod:`specdenoise.stage_export`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a store (dataset, denoised store, error cube, ...) as HDF5, netCDF or FITS",
        description=(
            "Write any specdenoise store to one file, format by extension: .h5/.hdf5 "
            "(netCDF-4 on HDF5, through xarray's h5netcdf engine), .nc (netCDF-4 with h5netcdf, "
            "else netCDF-3 with scipy), .fits (one image or binary table per variable, with its "
            "unit in BUNIT/TUNIT1 and the store's attributes in an ATTRS table). Units, "
            "long names and CF flag attributes are carried over."
        ),
    )
    p.add_argument("store", type=Path, metavar="STORE", help="a specdenoise Zarr store")
    p.add_argument("--to", required=True, type=Path, metavar="FILE",
                   help="FILE.h5, FILE.hdf5, FILE.nc or FILE.fits")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from specdenoise.stage_export import export_store

    print(f"wrote {export_store(args.store, args.to, overwrite=args.overwrite)}")
    return 0
