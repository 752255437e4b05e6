"""Inference: denoise arrays, whole datasets (keeping their coordinates) and spectrum files.

Every spectrum is scaled exactly as in training -- divided by median(flux) / 0.5 -- passed
through the network and multiplied back, so outputs are in the units of the input.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from specdenoise import codecs, stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.schema import publish_store
from specdenoise.train import data as tdata
from specdenoise.train.checkpoint import load_model
from specdenoise.train.models import model_input

DENOISED_VAR = "flux_denoised"
DENOISED_KIND = stores.DENOISED.name
_WAVE_NAMES = ("wave", "wavelength", "lambda", "wave_nm", "lam")
#: noise columns a spectrum file may carry, by kind (the first found is used)
_NOISE_NAMES = {"sigma": ("sigma", "error", "err", "flux_err", "uncertainty"),
                "ivar": ("ivar", "inverse_variance"),
                "variance": ("variance", "var")}


def _inputs(model: torch.nn.Module) -> tuple[str, ...]:
    """The dataset variables ``model`` denoises from."""
    return ("flux", "sigma") if getattr(model, "in_channels", 1) == 2 else ("flux",)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def denoise_array(model: torch.nn.Module, flux, batch_size: int = 256,
                  device=None, sigma=None) -> np.ndarray:
    """Denoise spectra ``flux`` (n, n_wave) float32, any flux units; returns (n, n_wave) float32.

    A 1-D input (n_wave,) gives a 1-D output. ``device``: where to run (default: the model's).
    ``sigma``: the 1-sigma noise of ``flux`` in the same units, for models that take it
    (``in_channels`` 2); ignored by the others.
    """
    flux = np.asarray(flux, dtype=np.float32)
    squeeze = flux.ndim == 1
    flux = np.atleast_2d(flux)
    needs_sigma = getattr(model, "in_channels", 1) == 2
    if needs_sigma:
        if sigma is None:
            raise SpecdenoiseError("this model also takes the noise sigma of every pixel; "
                                   "give sigma with the flux")
        sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float32))
        if sigma.shape != flux.shape:
            raise SpecdenoiseError(f"sigma has shape {sigma.shape}, flux {flux.shape}")
    n_wave = getattr(model, "n_wave", flux.shape[-1])
    if flux.ndim != 2 or flux.shape[1] != n_wave:
        raise SpecdenoiseError(
            f"spectra have shape {flux.shape}; the model expects (n, {n_wave}) pixels"
        )
    if not np.isfinite(flux).all():
        row = int(np.nonzero(~np.isfinite(flux).all(axis=1))[0][0])
        raise SpecdenoiseError(f"spectrum {row} has NaN or infinite flux; fill or drop it first")
    device = torch.device(device) if device is not None else _model_device(model)
    model_device = _model_device(model)
    was_training = model.training
    model.to(device).eval()
    out = np.empty_like(flux)
    try:
        for i in range(0, len(flux), batch_size):
            x = torch.from_numpy(flux[i:i + batch_size]).to(device)
            factor, xn = tdata.normalise(x)
            sn = (torch.from_numpy(sigma[i:i + batch_size]).to(device) / factor
                  if needs_sigma else None)
            out[i:i + batch_size] = (model(model_input(model, xn, sn)).float()
                                     * factor).cpu().numpy()
    finally:
        model.train(was_training).to(model_device)
    if not np.isfinite(out).all():
        row = int(np.nonzero(~np.isfinite(out).all(axis=1))[0][0])
        raise SpecdenoiseError(f"the model gives NaN or infinite flux for spectrum {row}; its "
                               "weights are damaged (retrain, or use an earlier checkpoint)")
    return out[0] if squeeze else out


def denoise_dataset(model_path, in_zarr, out_zarr, *, batch_size: int = 256, device=None,
                    overwrite: bool = False, progress: bool | None = None) -> Path:
    """Denoise every spectrum's ``flux`` of a dataset into a new store at ``out_zarr``.

    The output holds ``flux_denoised`` (spectrum, wave) float32, chunked like the input, with
    all of the input's coordinates (``wave`` and the per-spectrum parameters). It is written
    in a temporary folder and renamed when complete, so an interrupted run leaves nothing that
    looks finished; ``overwrite`` replaces only a denoised store, never the input.
    """
    from specdenoise.schema import per_spectrum_names

    out = Path(out_zarr)
    if tdata.is_url(out_zarr):
        raise SpecdenoiseError(f"cannot write {out_zarr}: denoised output must be a local path")
    stores.check_output(out, stores.DENOISED, overwrite=overwrite, inputs=(in_zarr,))
    model, config = load_model(model_path, device=device)
    needs = _inputs(model)
    info = tdata.inspect_store(in_zarr, needs, n_wave=model.n_wave)
    if not tdata.is_url(in_zarr):
        # a lost chunk would read as fill values: refuse rather than denoise them
        stores.check_chunks(in_zarr, needs, optional=("wave", *per_spectrum_names()))
    with stores.locked(out):
        return _denoise_dataset(model, config, in_zarr, out, info, batch_size=batch_size,
                                overwrite=overwrite, progress=progress)


def _denoise_dataset(model, config, in_zarr, out: Path, info, *, batch_size, overwrite,
                     progress) -> Path:
    import dask.array as da
    import xarray as xr
    import zarr

    from specdenoise import schema
    from specdenoise.schema import SPECTRUM_DIM, WAVE_DIM
    from specdenoise.simulate.progress import iterate

    with codecs.quiet_legacy():
        src = xr.open_zarr(str(in_zarr), consolidated=None)
    with codecs.reading(in_zarr, list(src.coords)):
        coords = {k: v.variable.compute() for k, v in src.coords.items()}
    n, n_wave = info.n_spectrum, info.n_wave
    template = xr.Dataset(
        {DENOISED_VAR: ((SPECTRUM_DIM, WAVE_DIM),
                        da.zeros((n, n_wave), dtype=np.float32, chunks=(info.chunk_size, n_wave)),
                        schema.attrs_of(DENOISED_VAR))},
        coords=coords,
        attrs={
            "specdenoise_kind": DENOISED_KIND,
            "complete": False,
            "source": str(in_zarr),
            "model": config["path"],
            "model_name": config["model"]["name"],
            "model_epoch": config["epoch"],
            "chunk_size": info.chunk_size,
        },
    )
    tmp = stores.temp_dir(out)
    encoding = {DENOISED_VAR: {"chunks": (info.chunk_size, n_wave),
                               "compressors": codecs.default_compressors()}}
    for k, v in coords.items():
        encoding[k] = {"compressors": codecs.default_compressors()}
        if v.dims == (SPECTRUM_DIM,):
            encoding[k]["chunks"] = (info.chunk_size,)
    try:
        template.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, compute=False,
                         encoding=encoding)
        src_group = tdata.open_group(info.path, info.storage_options)
        dst = zarr.open_group(str(tmp), mode="r+")
        for chunk in iterate(range(info.n_chunks), "denoise", "chunk", enabled=progress):
            lo, hi = info.chunk_bounds(chunk)
            arrays = tdata.read_chunk(src_group, info, chunk, _inputs(model))
            dst[DENOISED_VAR][lo:hi] = denoise_array(model, arrays["flux"],
                                                     batch_size=batch_size,
                                                     sigma=arrays.get("sigma"))
        publish_store(tmp, out, stores.DENOISED, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- spectrum files


def read_spectrum_file(path) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Read ``(wave or None, flux (n, n_pix), sigma (n, n_pix) or None)`` from CSV/text or FITS.

    CSV: a header naming a ``flux`` column, optionally ``wave``/``wavelength`` and a noise column
    (:data:`_NOISE_NAMES`: sigma, inverse variance or variance), or bare numbers: one column =
    flux, two = wave, flux, three or more = wave, flux, sigma. FITS: the first HDU with data,
    either a table with those columns (scalar or one vector per row) or a 1-D/2-D image of
    fluxes (no noise). Pixels whose noise carries no information (ivar 0, a non-finite or
    non-positive sigma) get a sigma of 100 times the spectrum's median flux: 'ignore me'.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecdenoiseError(f"spectrum file {path} does not exist")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith((".fits", ".fit", ".fits.gz", ".fts")):
            wave, flux, noise = _read_fits(path)
        else:
            wave, flux, noise = _read_csv(path)
    except SpecdenoiseError:
        raise
    except Exception as exc:
        raise SpecdenoiseError(f"cannot read spectrum file {path}: {exc}") from None
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float32))
    sigma = None
    if noise is not None:
        kind, values = noise
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        if values.shape != flux.shape:
            raise SpecdenoiseError(f"{path}: the {kind} column has shape {values.shape}, the "
                                   f"flux {flux.shape}")
        sigma = _to_sigma(kind, values, flux, path)
    return (None if wave is None else np.asarray(wave, np.float64).ravel()), flux, sigma


def _noise_column(names) -> tuple[str, str] | None:
    """(kind, column name) of the first noise column among ``names`` (lower-case keys)."""
    for kind, aliases in _NOISE_NAMES.items():
        for alias in aliases:
            if alias in names:
                return kind, alias
    return None


def _to_sigma(kind: str, values: np.ndarray, flux: np.ndarray, path) -> np.ndarray:
    """1-sigma noise (float32) from a sigma, variance or inverse-variance column."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "ivar":
            sigma = np.where(values > 0, 1.0 / np.sqrt(values), np.nan)
        elif kind == "variance":
            sigma = np.where(values > 0, np.sqrt(values), np.nan)
        else:
            sigma = np.where(values > 0, values, np.nan)
    usable = np.isfinite(sigma)
    if not usable.any(axis=1).all():
        row = int(np.nonzero(~usable.any(axis=1))[0][0])
        raise SpecdenoiseError(f"{path}: spectrum {row} has no pixel with a usable {kind}")
    big = 100.0 * np.abs(np.median(flux, axis=1, keepdims=True))
    return np.where(usable, sigma, big).astype(np.float32)


def _read_csv(path: Path):
    lines = [ln for ln in path.read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise SpecdenoiseError(f"spectrum file {path} is empty")
    delim = "," if "," in lines[0] else None
    first = [f.strip() for f in lines[0].split(delim)]
    try:
        [float(f) for f in first]
        header = None
    except ValueError:
        header = [f.lower() for f in first]
        lines = lines[1:]
    table = np.loadtxt(lines, delimiter=delim, ndmin=2, dtype=np.float64)
    if header is None:
        if table.shape[1] == 1:
            return None, table[:, 0], None
        noise = ("sigma", table[:, 2]) if table.shape[1] >= 3 else None
        return table[:, 0], table[:, 1], noise
    if "flux" not in header:
        raise SpecdenoiseError(f"{path}: no 'flux' column (columns: {', '.join(header)})")
    wave_col = next((header.index(w) for w in _WAVE_NAMES if w in header), None)
    wave = None if wave_col is None else table[:, wave_col]
    found = _noise_column(header)
    noise = None if found is None else (found[0], table[:, header.index(found[1])])
    return wave, table[:, header.index("flux")], noise


def _read_fits(path: Path):
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            if hdu.data is None:
                continue
            if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                names = {n.lower(): n for n in hdu.columns.names}
                if "flux" not in names:
                    raise SpecdenoiseError(
                        f"{path}: table has no 'flux' column ({', '.join(hdu.columns.names)})")
                flux = np.asarray(hdu.data[names["flux"]], dtype=np.float64)
                wname = next((names[w] for w in _WAVE_NAMES if w in names), None)
                wave = None if wname is None else np.asarray(hdu.data[wname], np.float64)
                if flux.ndim == 2 and wave is not None and wave.ndim == 2:
                    wave = wave[0]
                found = _noise_column(names)
                noise = None if found is None else (
                    found[0], np.asarray(hdu.data[names[found[1]]], np.float64))
                return wave, flux, noise
            data = np.asarray(hdu.data, dtype=np.float64)
            if data.ndim > 2 or (data.ndim == 2 and data.shape[0] >= data.shape[1]):
                raise SpecdenoiseError(
                    f"{path}: HDU {hdu.name or 0} is a {' x '.join(map(str, data.shape))} "
                    "image, not spectra; give one spectrum (1-D) or fewer spectra than "
                    "pixels as rows of a 2-D array, or a table with a 'flux' column")
            return None, data, None
    raise SpecdenoiseError(f"{path}: no HDU with data")


def check_spectra(flux: np.ndarray, name) -> None:
    """Refuse data that cannot be a flux spectrum: each row needs a positive median.

    The denoiser divides a spectrum by median / 0.5; a row of zeros or of mostly negative
    values has no such scale and would come out as a plausible-looking but invented spectrum.
    """
    if not np.isfinite(flux).all():
        row = int(np.nonzero(~np.isfinite(flux).all(axis=1))[0][0])
        raise SpecdenoiseError(f"{name}: spectrum {row} has NaN or infinite flux; fill or drop "
                               "it first")
    med = np.median(flux, axis=1)
    bad = np.nonzero(~(med > 0))[0]
    if bad.size:
        row = int(bad[0])
        what = ("all zero" if not np.any(flux[row]) else
                "mostly negative" if med[row] < 0 else "zero in at least half its pixels")
        raise SpecdenoiseError(f"{name}: spectrum {row} is {what}; the denoiser needs flux "
                               "with a positive median (a sky-subtracted or background-only "
                               "spectrum cannot be denoised)")


def denoise_file(model_path, in_path, out_csv, *, device=None, overwrite: bool = False) -> Path:
    """Denoise the spectrum (or spectra) in a FITS or CSV file; write ``out_csv``.

    Columns: ``wave`` (nm; from the file, else the model's training grid), ``flux`` and
    ``flux_denoised``; with several spectra a leading ``spectrum`` column numbers them.
    An existing ``out_csv`` is replaced only with ``overwrite``.
    """
    out = Path(out_csv)
    stores.check_output(out, None, overwrite=overwrite, inputs=(in_path,))
    if not out.parent.is_dir():
        raise SpecdenoiseError(f"cannot write {out}: folder {out.parent} does not exist")
    model, config = load_model(model_path, device=device)
    wave, flux, sigma = read_spectrum_file(in_path)
    n_wave = model.n_wave
    if flux.shape[1] != n_wave:
        raise SpecdenoiseError(
            f"{in_path} has {flux.shape[1]} pixels; the model expects {n_wave} "
            "(PFS red-arm MR pixels); resample it onto the training grid first"
        )
    model_wave = config.get("wave")
    if wave is not None and model_wave is not None:
        step = abs(model_wave[1] - model_wave[0])
        if wave.shape != (n_wave,) or np.max(np.abs(wave - np.asarray(model_wave))) > step / 2:
            raise SpecdenoiseError(
                f"{in_path}: wavelengths differ from the model's grid "
                f"({model_wave[0]:.3f}-{model_wave[-1]:.3f} nm, vacuum) by more than half a "
                "pixel; resample it first"
            )
    if wave is None:
        wave = np.asarray(model_wave if model_wave is not None else np.arange(n_wave), float)
    check_spectra(flux, in_path)
    takes_sigma = "sigma" in _inputs(model)
    if takes_sigma and sigma is None:
        raise SpecdenoiseError(
            f"this model also takes each pixel's noise, and {in_path} has none: add a "
            "'sigma' (or 'error'), 'ivar' or 'variance' column (a third column in a bare "
            "text file), or use a model trained with in_channels 1")
    den = denoise_array(model, flux, sigma=sigma if takes_sigma else None)
    rows = []
    many = len(flux) > 1
    header = ("spectrum," if many else "") + "wave,flux,flux_denoised"
    for i in range(len(flux)):
        prefix = f"{i}," if many else ""
        rows += [f"{prefix}{w:.6f},{f:.8g},{d:.8g}" for w, f, d in zip(wave, flux[i], den[i],
                                                                          strict=True)]
    text = header + "\n" + "\n".join(rows) + "\n"
    return stores.write_file(out, lambda tmp: tmp.write_text(text), overwrite=overwrite,
                             inputs=(in_path,))
