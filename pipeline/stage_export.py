"""``export`` and ``info``: any specdenoise store to HDF5, netCDF or FITS; a store described.

- :func:`export_store` writes a dataset, denoised store, error cube (or grid, ETC table) to
  ``.h5``/``.hdf5`` (netCDF-4 on HDF5 through xarray's ``h5netcdf`` engine), ``.nc`` (the
  ``h5netcdf`` engine when installed, else ``scipy``'s netCDF-3) or ``.fits`` (one HDU per
  variable: an image for a numeric array, a one-column binary table for strings, with ``BUNIT``
  / ``TUNIT1`` its unit, ``LONGNAME`` and ``DIMS``; the store's attributes in an ``ATTRS``
  table). Attributes are made storable (booleans as 0/1, mappings as JSON) and every variable
  gets the schema's units and long_name (:func:`specdenoise.schema.complete_attrs`). The file
  is written under a temporary name and renamed when complete.
- :func:`describe_store` gives the text of ``specdenoise info``: kind, completeness, number of
  spectra, wavelength range, an S/N histogram, parameter ranges, the variables, and what made
  the store (the command reconstructed from its attributes, and the version).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from specdenoise import schema, stores
from specdenoise.errors import SpecdenoiseError

FORMATS = {".h5": "hdf5", ".hdf5": "hdf5", ".nc": "netcdf", ".fits": "fits", ".fit": "fits"}
SNR_BINS = (0, 2, 5, 10, 20, 50, np.inf)


def _open(path) -> tuple[object, dict, stores.Kind]:
    """(xarray Dataset, attributes, kind) of a complete store of any kind."""
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise SpecdenoiseError(f"store {path} does not exist")
    attrs = stores.read_attrs(path)
    kind = stores.KINDS.get(stores.kind_of(attrs))
    if kind is None:
        raise SpecdenoiseError(f"{path} is not a specdenoise store (no {stores.KIND_ATTR} "
                               "attribute); give a dataset, denoised store, error cube, grid "
                               "or ETC table")
    if kind is stores.SUMMARY:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = xr.open_datatree(path, engine="zarr")
        return tree, attrs, kind
    with warnings.catch_warnings():  # ETC tables and grids are not consolidated
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
        ds = stores.open_store(path, kind, consolidated=None)
    return ds, attrs, kind


# --------------------------------------------------------------------------- export


def _storable(value):
    """An attribute value netCDF and FITS can hold."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, list | tuple):
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return np.asarray(value)
        return json.dumps(value)
    if value is None:
        return ""
    return value


def _prepare(ds, fmt: str):
    """A copy of ``ds`` with storable attributes, units and long names, and (netCDF-3) dtypes
    that format has."""
    ds = schema.complete_attrs(ds.copy())
    ds.attrs = {k: _storable(v) for k, v in ds.attrs.items()}
    for name, var in ds.variables.items():
        var.attrs = {k: _storable(v) for k, v in var.attrs.items()}
        if "flag_masks" in var.attrs and var.dtype.kind in "ui":
            var.attrs["flag_masks"] = np.asarray(var.attrs["flag_masks"], dtype=var.dtype)
        var.encoding = {}
        if fmt == "netcdf3":
            if var.dtype == np.uint8 or var.dtype == np.uint16:
                ds[name] = var.astype(np.int16 if var.dtype == np.uint8 else np.int32)
                if "flag_masks" in var.attrs:
                    ds[name].attrs["flag_masks"] = var.attrs["flag_masks"].astype(ds[name].dtype)
            elif var.dtype.kind in "iu" and var.dtype.itemsize == 8:
                ds[name] = var.astype(np.int32)
            elif var.dtype == bool:
                ds[name] = var.astype(np.int8)
    return ds


def _text(values) -> np.ndarray:
    """Fixed-width unicode of an object or variable-width string array (both engines and FITS
    write it)."""
    values = np.asarray(values)
    return np.array([str(v) for v in values.ravel()]).reshape(values.shape)


def _engine(fmt: str, out: Path) -> str:
    import importlib.util

    # h5netcdf writes HDF5 through h5py, which it installs only on request
    has = all(importlib.util.find_spec(m) is not None for m in ("h5netcdf", "h5py"))
    if fmt == "hdf5" and not has:
        raise SpecdenoiseError(f"writing {out.name} (HDF5) needs the h5netcdf and h5py "
                               "packages: pip install 'specdenoise[io]' (or export to .nc or "
                               ".fits)")
    return "h5netcdf" if has else "scipy"


def export_store(store, to, *, overwrite: bool = False) -> Path:
    """Write the store ``store`` to the file ``to`` (format from its extension, see module)."""
    store, out = Path(store), Path(to)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise SpecdenoiseError(f"cannot tell the format of {out.name}: give a name ending in "
                               f"{', '.join(FORMATS)}")
    stores.check_output(out, None, overwrite=overwrite, inputs=(store,))
    if not out.parent.is_dir():
        raise SpecdenoiseError(f"cannot write {out}: folder {out.parent} does not exist")
    obj, attrs, kind = _open(store)
    if fmt == "fits":
        return stores.write_file(out, lambda tmp: _write_fits(obj, kind, tmp),
                                 overwrite=overwrite, inputs=(store,))
    engine = _engine(fmt, out)

    def write(tmp: Path) -> None:
        import xarray as xr

        if kind is stores.SUMMARY:
            tree = obj.copy()
            for node in tree.subtree:
                node.dataset = _prepare(node.to_dataset(), "netcdf4")
            tree.to_netcdf(tmp, engine=engine)
        else:
            ds = _prepare(obj, "netcdf3" if engine == "scipy" else "netcdf4")
            # object (string) arrays: fixed-width unicode, which both engines write
            for name, var in list(ds.variables.items()):
                if var.dtype == object or var.dtype.kind == "T":
                    text = xr.Variable(var.dims, _text(var.values), var.attrs)
                    ds = ds.assign_coords({name: text}) if name in ds.coords else \
                        ds.assign({name: text})
            ds.to_netcdf(tmp, engine=engine)

    return stores.write_file(out, write, overwrite=overwrite, inputs=(store,))


def _fits_hdus(ds, prefix: str = ""):
    from astropy.io import fits

    hdus = []
    for name in [*ds.data_vars, *ds.coords]:
        var = ds[name].variable
        values = np.asarray(var.values)
        hname = f"{prefix}{name}".upper()[:68]
        unit = var.attrs.get("units", "")
        if values.dtype == object or values.dtype.kind in "SUT":
            text = _text(values).ravel()
            width = max([1, *(len(v) for v in text)])
            col = fits.Column(name=str(name), format=f"{width}A", array=text)
            hdu = fits.BinTableHDU.from_columns([col], name=hname)
            if unit:
                hdu.header["TUNIT1"] = unit
        else:
            if values.dtype == bool:
                values = values.astype(np.uint8)
            hdu = fits.ImageHDU(values, name=hname)
            if unit:
                hdu.header["BUNIT"] = unit
        hdu.header["VARNAME"] = str(name)
        hdu.header["DIMS"] = (",".join(var.dims), "dimensions, numpy (row-major) order")
        for key, value in var.attrs.items():
            if key in ("units",):
                continue
            value = _storable(value)
            if isinstance(value, np.ndarray):
                value = " ".join(str(v) for v in value.tolist())
            card = f"HIERARCH {key}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    hdu.header[card] = value if not isinstance(value, str) or len(value) < 60 \
                        else value[:60] + "..."
            except (ValueError, TypeError):
                pass
        hdus.append(hdu)
    return hdus


def _attrs_table(attrs: dict):
    from astropy.io import fits

    names = [str(k) for k in attrs]
    values = [str(_storable(v)) for v in attrs.values()]
    width = max([1, *(len(v) for v in values)])
    return fits.BinTableHDU.from_columns(
        [fits.Column("name", f"{max([1, *map(len, names)])}A", array=names),
         fits.Column("value", f"{width}A", array=values)], name="ATTRS")


def _write_fits(obj, kind: stores.Kind, tmp: Path) -> None:
    from astropy.io import fits

    from specdenoise import __version__

    primary = fits.PrimaryHDU()
    primary.header["SDKIND"] = (kind.name, "specdenoise store kind")
    primary.header["SDVERS"] = (__version__, "specdenoise version that exported it")
    hdus = [primary]
    if kind is stores.SUMMARY:
        for node in obj.subtree:
            prefix = node.path.strip("/").replace("/", "_")
            ds = schema.complete_attrs(node.to_dataset())
            hdus += _fits_hdus(ds, f"{prefix}_" if prefix else "")
        hdus.append(_attrs_table(dict(obj.attrs)))
    else:
        ds = schema.complete_attrs(obj.copy())
        hdus += _fits_hdus(ds)
        hdus.append(_attrs_table(dict(ds.attrs)))
    fits.HDUList(hdus).writeto(tmp, overwrite=True)


# --------------------------------------------------------------------------- info


def _histogram(values: np.ndarray, bins=SNR_BINS, width: int = 40) -> list[str]:
    values = values[np.isfinite(values)]
    counts, _ = np.histogram(values, bins=np.asarray(bins, float))
    top = max(int(counts.max()) if counts.size else 0, 1)
    lines = []
    for lo, hi, c in zip(bins[:-1], bins[1:], counts, strict=True):
        label = f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">= {lo:g}"
        lines.append(f"  {label:>8}  {'#' * int(round(width * c / top)):<{width}} {int(c)}")
    return lines


def _made_by(kind: stores.Kind, attrs: dict) -> str:
    """The command that made a store, as far as its attributes record it."""
    if kind is stores.DATASET:
        seed = attrs.get("seed")
        return (f"specdenoise simulate (seed {seed}, split {attrs.get('split', 'all')}, "
                f"config hash {attrs.get('config_hash')}; the whole configuration is the "
                "'config' attribute)")
    if kind is stores.DENOISED:
        return f"specdenoise denoise --model {attrs.get('model')} --data {attrs.get('source')}"
    if kind is stores.CUBE:
        methods = attrs.get("methods")
        try:
            names = ", ".join(json.loads(methods)) if methods else "?"
        except (TypeError, ValueError):
            names = "?"
        return f"specdenoise evaluate --data {attrs.get('dataset')} (methods: {names})"
    if kind is stores.GRID:
        return f"specdenoise grid build/import (source: {attrs.get('source', '?')})"
    if kind is stores.ETC_TABLE:
        return "specdenoise etc import"
    return f"specdenoise evaluate ({kind.label})"


def describe_store(path) -> str:
    """The text ``specdenoise info STORE`` prints."""
    path = Path(path)
    obj, attrs, kind = _open(path)
    version = attrs.get("package_version") or attrs.get("version") or "not recorded"
    lines = [f"{path}: specdenoise {kind.label} ({kind.name})",
             f"  made by: {_made_by(kind, attrs)}",
             f"  specdenoise version: {version}"]
    if kind is stores.SUMMARY:
        groups = [node.path for node in obj.subtree]
        lines.append(f"  complete: {stores.is_complete(attrs)}; groups: {', '.join(groups)}")
        return "\n".join(lines)
    ds = obj
    sizes = dict(ds.sizes)
    lines.append("  dimensions: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    n = sizes.get(schema.SPECTRUM_DIM)
    complete = "complete" if stores.is_complete(attrs) else "INCOMPLETE"
    if kind is stores.DATASET and n is not None:
        chunk = int(attrs.get("chunk_size") or n or 1)
        n_chunks = -(-n // chunk) if n else 0
        # (a complete store has all; its chunk markers went when it was finalized)
        done = n_chunks if stores.is_complete(attrs) else len(schema.done_chunks(path))
        complete += f" ({done} of {n_chunks} chunks of {chunk} spectra written)"
    lines.append(f"  spectra: {n if n is not None else '-'}; {complete}")
    if schema.WAVE_DIM in ds.coords:
        wave = np.asarray(ds[schema.WAVE_DIM].values)
        a = ds[schema.WAVE_DIM].attrs
        medium = a.get("medium") or attrs.get("wave_medium") or (
            "vacuum" if "vacuum" in str(a.get("units", "")) else "?")
        unit = str(a.get("units", "")).split(" ")[0] or "?"
        step = np.median(np.diff(wave)) if wave.size > 1 else float("nan")
        lines.append(f"  wavelength: {wave.min():.3f}-{wave.max():.3f} {unit} ({medium}), "
                     f"{wave.size} pixels, median step {step:.5g} {unit}")
    if "snr" in ds.variables and ds["snr"].dims == (schema.SPECTRUM_DIM,):
        snr = np.asarray(ds["snr"].values, np.float64)
        if np.isfinite(snr).any():
            lines.append(f"  S/N (median {np.nanmedian(snr):.3g}), spectra per bin:")
            lines += _histogram(snr)
    per_spec = [k for k, v in ds.variables.items()
                if v.dims == (schema.SPECTRUM_DIM,) and k != schema.SPECTRUM_DIM
                and v.dtype.kind in "fiu"]
    if per_spec:
        lines.append("  per-spectrum ranges:")
        for name in per_spec:
            values = np.asarray(ds[name].values, np.float64)
            unit = ds[name].attrs.get("units", "")
            if not np.isfinite(values).any():
                lines.append(f"    {name:<16} not recorded")
                continue
            lines.append(f"    {name:<16} {np.nanmin(values):>11.4g} .. {np.nanmax(values):<11.4g}"
                         f" {unit}")
    axes = [k for k, v in ds.coords.items() if v.dims == (k,)
            and k not in (schema.SPECTRUM_DIM, schema.WAVE_DIM) and v.dtype.kind in "fiu"]
    for name in axes:
        values = np.asarray(ds[name].values, np.float64)
        lines.append(f"  axis {name:<11} {values.min():>11.4g} .. {values.max():<11.4g} "
                     f"{ds[name].attrs.get('units', '')} ({values.size} values)")
    if kind is stores.GRID and "exists" in ds:
        lines.append(f"  grid nodes present: {int(ds['exists'].values.sum())} of "
                     f"{ds['exists'].size}")
    others = [k for k in ds.data_vars if k not in per_spec]
    if others:
        lines.append("  variables: " + ", ".join(
            f"{k}[{', '.join(ds[k].dims)}] {ds[k].dtype}" for k in others))
    if kind is stores.CUBE and "mean_rel_err" in ds and "denoiser" in ds.coords:
        mean = ds["mean_rel_err"].mean(schema.SPECTRUM_DIM).values
        lines.append("  mean |R| by denoiser: " + ", ".join(
            f"{d} {100 * m:.2f} %" for d, m in zip(ds["denoiser"].values, mean, strict=True)))
    return "\n".join(lines)
