"""Physics of specdenoise: stellar grids, interpolation, instrument and noise kernels.

Layering (each module imports only the ones above it):

1. ``constants`` -- physical constants (astropy, once); ``calibration`` -- the
   flux-calibration distortion and the median normalisation (NumPy). The error class, the user
   cache (where Numba's kernel cache goes) and the progress bars are the contracts layer's
   (``specdenoise.errors``, ``.usercache``, ``.progress``)
2. ``grids``        -- the grid store on Zarr (read/write, validation, content hash)
3. ``builtin_grid`` (+ ``linelist``) -- the built-in approximate synthetic grid (no downloads;
   the generation only: the store, its progress bar and the user cache are the grid stage's)
4. ``bosz``         -- readers for BOSZ 2017 / 2024 files; ``readers`` -- the protocol every grid
   reader follows and their registry (a new format: one module, one line there)
5. ``interp``       -- multilinear interpolation (Numba kernel + NumPy reference)
6. ``atmosphere``, ``skylines`` -- airmass, extinction, sky continuum, Moon; OH and O2 lines
7. ``pfs``          -- the instrument: pixel grid, telescope, fibre, camera, throughput
8. ``noise``, ``etc_table`` -- the ETC noise model; imported ETC tables
9. ``lsf``, ``source`` -- line-spread function and pixel integration; Doppler, dust, magnitudes
10. ``observe``     -- the per-spectrum chain
11. ``sampling``    -- parameter distributions
12. ``engine``      -- the forward model assembled from a config: interpolator + observer + noise
    model (the one place that does it; a registry of noise models)

Nothing here imports Dask or torch: parallel orchestration lives in ``specdenoise`` (pipeline/).
"""

from specdenoise.usercache import point_numba_cache

# before any kernel module is imported: Numba fixes a kernel's cache folder when decorating it
point_numba_cache()
