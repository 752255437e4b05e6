"""Physics of specdenoise: stellar grids, interpolation, instrument and noise kernels.

Layering (each module imports only the ones above it):

1. ``errors``       -- the user-facing exception type
2. ``grids``        -- the grid store on Zarr (read/write, validation, content hash)
3. ``builtin_grid`` -- the built-in approximate synthetic grid (no downloads)
4. ``bosz``         -- importers for BOSZ 2017 / 2024 files
5. ``interp``       -- multilinear interpolation (Numba kernel + NumPy reference)

Nothing here imports Dask or torch: parallel orchestration lives in ``specdenoise`` (pipeline/).
"""
