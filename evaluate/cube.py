"""The error cube: every method's relative error at every pixel of a validation dataset.

For each method (trained networks and baselines) the stored noisy ``flux`` of the dataset -- its
fixed noise, the same for every method -- is denoised to ``D[F_hat]`` and compared with the
noiseless ``flux_clean`` F::

    rel_err = |D[F_hat] - F| / F

The cube is one xarray Dataset on Zarr with a ``denoiser`` dimension (one entry per method), so
methods sit side by side and every reduction is a selection or a group-by by name::

    cube = open_cube("eval/cube.zarr")
    cube.mean_rel_err.groupby_bins("snr", [0, 10, 20, 50]).mean()   # per method and S/N bin
    cube.rel_err.sel(denoiser="unet").mean("spectrum")              # |R| against wavelength

(The dimension is not called ``method`` because ``.sel(method=...)`` is xarray's own keyword.)

============================  ==========================  ====================================
variable                      dims                        meaning
============================  ==========================  ====================================
``rel_err``                   (denoiser, spectrum, wave)  |D - F| / F, float32; NaN where the
                                                          method was not run, F <= 0 or the
                                                          pixel is masked
``denoised``                  (denoiser, spectrum, wave)  D[F_hat], float32 (normalised like
                                                          ``flux``)
``mean_rel_err``              (denoiser, spectrum)        mean of ``rel_err`` over wavelength
``max_rel_err``               (denoiser, spectrum)        max of ``rel_err`` over wavelength
``flux``, ``flux_clean``,     (spectrum, wave)            copied from the dataset
``sigma``
``seconds``, ``n_denoised``,  (denoiser,)                 wall time spent denoising, spectra
``spectra_per_s``                                         denoised, and their ratio
``template_<p>``              (spectrum,)                 template-fit parameters (when run)
``sigma_denoised``            (denoiser, spectrum, wave)  the method's 1-sigma error of D
                                                          (flux units); NaN for methods
                                                          without one (baselines)
``z``                         (denoiser, spectrum, wave)  (D - F) / sigma_denoised; NaN where
                                                          ``rel_err`` is or there is no sigma
``chi2_red``, ``chi2_peak``   (denoiser, spectrum)        consistency statistics of D with the
                                                          noisy input, global and over 5
                                                          pixels (see
                                                          :mod:`specdenoise.train.uncertainty`)
``sky_excess``                (denoiser, spectrum)        significance (sigma) of sky lines
                                                          left in the input; NaN: no sky check
``suspect``                   (denoiser, spectrum)        1.0 flagged, 0.0 not, NaN not
                                                          checked; its mean is the flag rate
============================  ==========================  ====================================

Coordinates: ``denoiser`` (method names), ``denoiser_kind`` (``network``, ``baseline`` or
``reference``), ``wave`` and every per-spectrum parameter and condition of the dataset
(``teff``, ``logg``, ``m_h``, ``a_m``, ``rv``, ``ebv``, ``mag``, ..., ``snr``, ``norm``).
Attributes keep the dataset's provenance and a JSON description of each method.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from specdenoise import __version__, codecs, metrics, schema, stores
from specdenoise.errors import SpecdenoiseError

CUBE_KIND = stores.CUBE.name
#: the dimension along which methods sit side by side. Not "method": ``DataArray.sel`` has a
#: ``method=`` keyword of its own, so ``sel(method="unet")`` would silently select nothing.
METHOD_DIM = "denoiser"
KINDS = ("network", "baseline", "reference")

#: dataset attributes carried into the cube (and the report) as provenance
PROVENANCE_ATTRS = ("config", "config_hash", "seed", "package_version", "grid_provenance",
                    "noise_provenance", "title", "split")


@dataclass
class Method:
    """One way of denoising, with what the report needs to say about it.

    ``denoise(flux, sigma, mask)`` gets (n, n_wave) float32 arrays of a block of spectra and
    returns the denoised (n, n_wave) array, or ``(denoised, extras)`` where ``extras`` maps
    names to (n,) per-spectrum results (stored as ``<method>_<name>``). ``limit`` runs it on
    the first ``limit`` spectra only (the others stay NaN). ``info`` is provenance (JSON-able).
    """

    name: str
    kind: str
    description: str
    denoise: Callable
    limit: int | None = None
    info: dict = field(default_factory=dict)
    extras: tuple[str, ...] = ()
    wave: np.ndarray | None = None  # pixel grid a network was trained on, nm
    #: True: ``denoise`` returns ``(denoised, extras)`` whose extras also hold
    #: :data:`UNCERTAINTY_EXTRAS` (``sigma_denoised`` (n, n_wave), ``chi2_red``,
    #: ``chi2_peak`` and ``suspect`` (n,); ``sky_excess`` (n,) if it has one); they fill the
    #: cube's uncertainty variables
    uncertainty: bool = False


# ---- uncertainty block (trust-net): sigma_denoised, z, chi2_red, suspect
#: what a method with ``uncertainty=True`` returns among its extras
UNCERTAINTY_EXTRAS = ("sigma_denoised", "chi2_red", "chi2_peak", "suspect")


def _uncertainty_vars(cube3, spec_dims, shape3, shape2, c3, c2, lazy, units) -> dict:
    """The cube's uncertainty variables, all NaN until a method fills them."""
    return {
        "sigma_denoised": (cube3, lazy(shape3, c3),
                           {"long_name": "1-sigma error of D[F_hat]", "units": units}),
        "z": (cube3, lazy(shape3, c3),
              {"long_name": "(D[F_hat] - F) / sigma_denoised", "units": "1"}),
        "chi2_red": (spec_dims, lazy(shape2, c2),
                     {"long_name": "mean of (F_hat - D)^2 / (sigma^2 + sigma_denoised^2) "
                                   "over unmasked pixels", "units": "1"}),
        "chi2_peak": (spec_dims, lazy(shape2, c2),
                      {"long_name": "largest mean of (F_hat - D)^2 / (sigma^2 + "
                                    "sigma_denoised^2) over 5 neighbouring pixels",
                       "units": "1"}),
        "sky_excess": (spec_dims, lazy(shape2, c2),
                       {"long_name": "matched-filter significance of the sky-line template "
                                     "in F_hat - D, in sigma (> 0: sky left in)",
                        "units": "1"}),
        "suspect": (spec_dims, lazy(shape2, c2),
                    {"long_name": "1: D does not explain the input (chi2_red, chi2_peak, "
                                  "sky_excess or the residual binned over 4-64 pixels above "
                                  "the run's 1 % false-alarm threshold), 0: it does, NaN: not "
                                  "checked", "units": "1"}),
    }


def _write_uncertainty(g, j: int, lo: int, stop: int, extras: dict, den, clean, mask) -> None:
    """Store a block's sigma_denoised, z, chi2_red, chi2_peak, sky_excess and suspect for
    method ``j``."""
    sig = np.asarray(extras["sigma_denoised"], dtype=np.float32)
    if sig.shape != den.shape:
        raise SpecdenoiseError(f"sigma_denoised has shape {sig.shape}, the denoised flux "
                               f"{den.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (den.astype(np.float64) - clean) / sig
    z[~(np.asarray(clean) > 0) | (np.asarray(mask) != 0) | ~(sig > 0)] = np.nan
    suspect = np.asarray(extras["suspect"], dtype=np.float32)
    suspect[suspect < 0] = np.nan  # -1: not checked
    g["sigma_denoised"][j, lo:stop] = sig
    g["z"][j, lo:stop] = z.astype(np.float32)
    g["chi2_red"][j, lo:stop] = np.asarray(extras["chi2_red"], dtype=np.float32)
    g["chi2_peak"][j, lo:stop] = np.asarray(extras["chi2_peak"], dtype=np.float32)
    sky = extras.get("sky_excess")
    g["sky_excess"][j, lo:stop] = (np.full(stop - lo, np.nan, np.float32) if sky is None
                                   else np.asarray(sky, dtype=np.float32))
    g["suspect"][j, lo:stop] = suspect
# ---- end of the uncertainty block


def relative_error(denoised: np.ndarray, clean: np.ndarray,
                   mask: np.ndarray | None = None) -> np.ndarray:
    """``|denoised - clean| / clean`` as float32; NaN where ``clean <= 0`` or ``mask != 0``
    (the registry's ``abs_rel``, :data:`specdenoise.metrics.METRICS`)."""
    return metrics.pixel_values("abs_rel", denoised, clean, mask)


def _row_stats(rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row nanmean and nanmax, NaN for rows without a finite value (no warnings)."""
    finite = np.isfinite(rel)
    count = finite.sum(axis=1)
    total = np.where(finite, rel, 0).sum(axis=1, dtype=np.float64)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    mx = np.where(count > 0, np.where(finite, rel, -np.inf).max(axis=1), np.nan)
    return mean.astype(np.float32), mx.astype(np.float32)


def _unique_names(methods: Sequence[Method]) -> None:
    seen = set()
    for m in methods:
        if m.name in seen:
            raise SpecdenoiseError(f"two methods are called {m.name!r}; give them distinct names")
        if m.kind not in KINDS:
            raise SpecdenoiseError(f"method {m.name!r} has unknown kind {m.kind!r}")
        seen.add(m.name)


def _attr_json(value):
    return value if isinstance(value, (str, int, float, bool)) else json.dumps(value)


def build_cube(data, out, methods: Sequence[Method], *, overwrite: bool = False,
               keep_denoised: bool = True, block: int | None = None,
               progress: bool | None = None) -> Path:
    """Denoise the dataset at ``data`` with every method and write the error cube at ``out``.

    The cube is written under a temporary name and renamed when complete, so an interrupted
    run never leaves a store that looks finished. ``block`` is the number of spectra processed
    (and stored per chunk) at a time; default: the dataset's chunk size, at most 1024.
    ``overwrite`` replaces only an error cube, and the dataset's chunks are checked first.
    """
    if not methods:
        raise SpecdenoiseError("nothing to evaluate: give at least one --model or baseline")
    _unique_names(methods)
    out = Path(out)
    stores.check_output(out, stores.CUBE, overwrite=overwrite, inputs=(data,))
    ds = schema.open_dataset(data)
    check_dataset_chunks(data)
    with stores.locked(out):
        return _build_cube(ds, data, out, methods, overwrite=overwrite,
                           keep_denoised=keep_denoised, block=block, progress=progress)


def check_dataset_chunks(data) -> None:
    """Refuse a dataset that lost chunk files of the arrays or coordinates evaluated."""
    stores.check_chunks(data, ("flux", "flux_clean", "sigma"),
                        optional=(schema.WAVE_DIM, *schema.per_spectrum_names()))


def _build_cube(ds, data, out, methods, *, overwrite, keep_denoised, block, progress) -> Path:
    from specdenoise.progress import bar as progress_bar

    n, n_wave = ds.sizes[schema.SPECTRUM_DIM], ds.sizes[schema.WAVE_DIM]
    if block is None:
        block = min(int(ds.attrs.get("chunk_size") or 256), 1024)
    block = max(1, min(block, n))
    n_m = len(methods)

    with codecs.reading(data, list(ds.coords)):
        per_spec = {k: v.variable.compute() for k, v in ds.coords.items()
                    if v.dims == (schema.SPECTRUM_DIM,)}
    coords = {
        METHOD_DIM: (METHOD_DIM, np.array([m.name for m in methods], dtype=object)),
        "denoiser_kind": (METHOD_DIM, np.array([m.kind for m in methods], dtype=object)),
        schema.WAVE_DIM: ds[schema.WAVE_DIM].variable.compute(),
        **per_spec,
    }
    # every cube carries a spectrum id (the dataset's, else its index), so selecting or
    # sorting spectra keeps their identity
    coords.setdefault(schema.SPECTRUM_DIM, (schema.SPECTRUM_DIM, np.arange(n, dtype=np.int64),
                                            schema.attrs_of(schema.SPECTRUM_DIM)))
    import dask.array as da

    cube3 = (METHOD_DIM, schema.SPECTRUM_DIM, schema.WAVE_DIM)
    spec2 = (schema.SPECTRUM_DIM, schema.WAVE_DIM)
    c3, c2 = (1, block, n_wave), (block, n_wave)

    def lazy(shape, chunks, dtype=np.float32):
        return da.full(shape, np.nan, dtype=dtype, chunks=chunks)

    data_vars = {
        "rel_err": (cube3, lazy((n_m, n, n_wave), c3),
                    {"long_name": "|D[F_hat] - F| / F", "units": "1"}),
        "mean_rel_err": ((METHOD_DIM, schema.SPECTRUM_DIM), lazy((n_m, n), (1, block)),
                         {"long_name": "mean over wavelength of rel_err", "units": "1"}),
        "max_rel_err": ((METHOD_DIM, schema.SPECTRUM_DIM), lazy((n_m, n), (1, block)),
                        {"long_name": "max over wavelength of rel_err", "units": "1"}),
        "seconds": ((METHOD_DIM,), np.full(n_m, np.nan), {"units": "s"}),
        "n_denoised": ((METHOD_DIM,), np.zeros(n_m, np.int64), {"units": "1"}),
        "spectra_per_s": ((METHOD_DIM,), np.full(n_m, np.nan), {"units": "s-1"}),
    }
    if keep_denoised:
        data_vars["denoised"] = (cube3, lazy((n_m, n, n_wave), c3),
                                 {"long_name": "D[F_hat]", "units": schema.UNITS["flux"]})
    for v in ("flux", "flux_clean", "sigma"):
        data_vars[v] = (spec2, lazy((n, n_wave), c2), schema.attrs_of(v))
    data_vars["mask"] = (spec2, da.zeros((n, n_wave), dtype=np.uint8, chunks=c2),
                         schema.attrs_of("mask"))
    data_vars.update(_uncertainty_vars(cube3, (METHOD_DIM, schema.SPECTRUM_DIM),
                                       (n_m, n, n_wave), (n_m, n), c3, (1, block), lazy,
                                       schema.UNITS["flux"]))
    for m in methods:
        for e in m.extras:
            data_vars[f"{m.name}_{e}"] = ((schema.SPECTRUM_DIM,), lazy((n,), (block,)),
                                          {"units": schema.UNITS.get(e, "")})
    attrs = {
        "specdenoise_kind": CUBE_KIND,
        "complete": False,
        "package_version": __version__,
        "dataset": str(Path(data).resolve()),
        "n_spectrum": n,
        "methods": json.dumps({m.name: {"kind": m.kind, "description": m.description,
                                        "limit": m.limit, **m.info} for m in methods}),
        "definition": "rel_err = |D[F_hat] - F| / F with F = flux_clean and F_hat = flux "
                      "(the dataset's fixed noisy spectra)",
    }
    for k in PROVENANCE_ATTRS:
        if k in ds.attrs:
            attrs[f"dataset_{k}"] = _attr_json(ds.attrs[k])
    template = schema.complete_attrs(xr.Dataset(data_vars, coords=coords, attrs=attrs))
    encoding = {name: {"chunks": tuple(ch[0] for ch in var.chunks)}
                for name, var in template.data_vars.items() if var.chunks is not None}
    for k in per_spec:
        encoding[k] = {"chunks": (block,)}
    for name in (*template.data_vars, *template.coords):
        if template[name].dtype != object:  # strings keep zarr's own codec
            encoding.setdefault(name, {})["compressors"] = codecs.default_compressors()

    seconds = np.zeros(n_m)
    counts = np.zeros(n_m, dtype=np.int64)
    with stores.assembled(out, stores.CUBE, overwrite=overwrite,
                          finish=schema.finalize_dataset) as tmp:
        template.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, compute=False,
                         encoding=encoding)
        g = zarr.open_group(str(tmp), mode="r+")
        n_blocks = -(-n // block)
        bar = progress_bar(n * n_m, "evaluate", "spec", enabled=progress)
        with bar:
            for b in range(n_blocks):
                lo, hi = b * block, min((b + 1) * block, n)
                names = ["flux", "flux_clean", "sigma", "mask"]
                with codecs.reading(data, names, rows=(lo, hi)):
                    part = ds[names].isel({schema.SPECTRUM_DIM: slice(lo, hi)}).compute()
                flux = part["flux"].values.astype(np.float32)
                clean = part["flux_clean"].values
                sigma = part["sigma"].values.astype(np.float32)
                mask = part["mask"].values
                g["flux"][lo:hi] = flux
                g["flux_clean"][lo:hi] = clean
                g["sigma"][lo:hi] = sigma
                g["mask"][lo:hi] = mask
                for j, m in enumerate(methods):
                    stop = hi if m.limit is None else min(hi, m.limit)
                    if stop <= lo:
                        bar.update(hi - lo)
                        continue
                    k = stop - lo
                    t0 = time.perf_counter()
                    res = m.denoise(flux[:k], sigma[:k], mask[:k])
                    seconds[j] += time.perf_counter() - t0
                    counts[j] += k
                    den, extras = res if isinstance(res, tuple) else (res, {})
                    den = np.asarray(den, dtype=np.float32)
                    if den.shape != (k, n_wave):
                        raise SpecdenoiseError(f"method {m.name!r} returned shape {den.shape} "
                                               f"for {k} spectra of {n_wave} pixels")
                    rel = relative_error(den, clean[:k], mask[:k])
                    mean, mx = _row_stats(rel)
                    g["rel_err"][j, lo:stop] = rel
                    g["mean_rel_err"][j, lo:stop] = mean
                    g["max_rel_err"][j, lo:stop] = mx
                    if keep_denoised:
                        g["denoised"][j, lo:stop] = den
                    for e in m.extras:
                        g[f"{m.name}_{e}"][lo:stop] = np.asarray(extras[e], dtype=np.float32)
                    if m.uncertainty:
                        _write_uncertainty(g, j, lo, stop, extras, den, clean[:k], mask[:k])
                    bar.update(hi - lo)
        g["seconds"][:] = seconds
        g["n_denoised"][:] = counts
        with np.errstate(divide="ignore", invalid="ignore"):
            g["spectra_per_s"][:] = np.where(seconds > 0, counts / seconds, np.nan)
    return out


def open_cube(path) -> xr.Dataset:
    """Open an error cube lazily, checking that it is one and that it is complete."""
    return stores.open_store(path, stores.CUBE, consolidated=None)


def method_info(cube: xr.Dataset) -> dict[str, dict]:
    """Per-method description and provenance stored in the cube."""
    return json.loads(cube.attrs.get("methods", "{}"))
