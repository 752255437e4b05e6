"""Inference: denoise arrays, whole datasets (keeping their coordinates) and spectrum files.

Every spectrum is scaled exactly as in training -- divided by median(flux) / 0.5 -- passed
through the network and multiplied back, so outputs are in the units of the input.

With an uncertainty (the default of :func:`denoise_dataset` and :func:`denoise_file`; for
arrays :func:`load_denoiser` / :func:`denoise_with_uncertainty`) every output also carries
``sigma_denoised`` (1-sigma error of each denoised pixel, flux units), ``chi2_red`` and
``chi2_peak`` (the per-spectrum consistency statistics, global and over 5 pixels),
``sky_excess`` (significance of sky lines left in the input, sigma) and ``suspect`` (1: the
denoised spectrum does not explain its input as well as 99 % of the validation spectra do;
0: it does; -1: not checked); see :mod:`specdenoise.train.uncertainty`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from specdenoise import codecs, stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.schema import finalize_dataset
from specdenoise.train import data as tdata
from specdenoise.train.checkpoint import load_model
from specdenoise.train.nets.base import model_input

log = logging.getLogger("specdenoise.denoise")

DENOISED_VAR = "flux_denoised"
SIGMA_VAR = "sigma_denoised"
CHI2_VAR = "chi2_red"
PEAK_VAR = "chi2_peak"
SKY_VAR = "sky_excess"
SUSPECT_VAR = "suspect"
#: the per-spectrum checks of a denoised spectrum, in the order outputs give them
CHECK_VARS = (CHI2_VAR, PEAK_VAR, SKY_VAR, SUSPECT_VAR)
#: uncertainty choices of ``denoise``: the calibrated method of the run (auto), one method, none
UNCERTAINTY_CHOICES = ("auto", "head", "sample", "both", "none")
#: CF flag attributes of ``suspect``
SUSPECT_ATTRS = {"flag_values": [-1, 0, 1], "flag_meanings": "unchecked consistent suspect",
                 "long_name": "denoised spectrum does not explain its input (chi2_red, "
                              "chi2_peak, sky_excess or the residual binned over 4-64 pixels "
                              "above the run's 1 % false-alarm threshold)"}
DENOISED_KIND = stores.DENOISED.name
#: the largest spectrum file read (bytes): a spectrum of 4096 pixels is ~100 kB as text
MAX_SPECTRUM_FILE = 2 << 30
#: column names read as wavelengths (nm) in a spectrum file, in this order of preference
WAVE_NAMES = ("wave", "wavelength", "lambda", "wave_nm", "lam")
#: noise columns a spectrum file may carry, by kind (the first found is used)
_NOISE_NAMES = {"sigma": ("sigma", "error", "err", "flux_err", "uncertainty"),
                "ivar": ("ivar", "inverse_variance"),
                "variance": ("variance", "var")}


def _inputs(model: torch.nn.Module) -> tuple[str, ...]:
    """The dataset variables ``model`` denoises from."""
    return ("flux", "sigma") if getattr(model, "in_channels", 1) == 2 else ("flux",)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_inputs(model, flux, sigma, needs_sigma: bool):
    """(flux (n, n_wave) float32, sigma or None, squeeze) after the checks every path makes."""
    flux = np.asarray(flux, dtype=np.float32)
    squeeze = flux.ndim == 1
    flux = np.atleast_2d(flux)
    if needs_sigma and sigma is None:
        raise SpecdenoiseError("this model also takes the noise sigma of every pixel; "
                               "give sigma with the flux")
    if sigma is not None:
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
    return flux, sigma, squeeze


@torch.no_grad()
def denoise_array(model: torch.nn.Module, flux, batch_size: int = 256,
                  device=None, sigma=None) -> np.ndarray:
    """Denoise spectra ``flux`` (n, n_wave) float32, any flux units; returns (n, n_wave) float32.

    A 1-D input (n_wave,) gives a 1-D output. ``device``: where to run (default: the model's).
    ``sigma``: the 1-sigma noise of ``flux`` in the same units, for models that take it
    (``in_channels`` 2); ignored by the others.
    """
    needs_sigma = getattr(model, "in_channels", 1) == 2
    flux, sigma, squeeze = _check_inputs(model, flux, sigma, needs_sigma)
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


@dataclass
class DenoisedBlock:
    """What denoising a block of n spectra of n_wave pixels gives.

    ``flux_denoised`` (n, n_wave) float32, in the input's flux units; ``sigma_denoised``
    (n, n_wave) float32, the calibrated 1-sigma error of each denoised pixel in the same units
    (None when no uncertainty was asked for); ``chi2_red``, ``chi2_peak`` and ``sky_excess``
    (n,) float32, the consistency statistics (NaN: not computed, the input had no sigma or
    the calibration no sky template; see :mod:`specdenoise.train.uncertainty`); ``suspect``
    (n,) int8: 1 suspect, 0 consistent, -1 not checked (no calibration or no input sigma).
    """

    flux_denoised: np.ndarray
    sigma_denoised: np.ndarray | None
    chi2_red: np.ndarray
    suspect: np.ndarray
    chi2_peak: np.ndarray | None = None
    sky_excess: np.ndarray | None = None

    def checks(self) -> dict[str, np.ndarray]:
        """The per-spectrum checks by name (:data:`CHECK_VARS`), NaN where not computed."""
        nan = np.full(len(self.flux_denoised), np.nan, np.float32)
        return {CHI2_VAR: self.chi2_red,
                PEAK_VAR: nan if self.chi2_peak is None else self.chi2_peak,
                SKY_VAR: nan if self.sky_excess is None else self.sky_excess,
                SUSPECT_VAR: self.suspect}


def spectrum_csv(wave, flux, denoised, sigma_denoised=None, checks=None) -> str:
    """The text of a denoised-spectrum CSV: ``[spectrum,]wave,flux,flux_denoised`` (a leading
    ``spectrum`` column numbers several spectra), then ``sigma_denoised`` per pixel when given
    and, with ``checks`` (:meth:`DenoisedBlock.checks`), the :data:`CHECK_VARS` of each
    spectrum repeated on each of its rows. ``wave`` (n_pix,) or (n, n_pix)."""
    many = len(flux) > 1
    wave = np.broadcast_to(wave, np.shape(flux))
    names = CHECK_VARS if checks is not None else ()
    lines = [("spectrum," if many else "") + "wave,flux,flux_denoised"
             + (f",{SIGMA_VAR}" if sigma_denoised is not None else "")
             + "".join(f",{name}" for name in names)]
    for i in range(len(flux)):
        prefix = f"{i}," if many else ""
        tail = "".join(f",{int(checks[n][i])}" if n == SUSPECT_VAR else f",{checks[n][i]:.6g}"
                       for n in names)
        if sigma_denoised is None:
            lines += [f"{prefix}{w:.6f},{f:.8g},{d:.8g}{tail}"
                      for w, f, d in zip(wave[i], flux[i], denoised[i], strict=True)]
        else:
            lines += [f"{prefix}{w:.6f},{f:.8g},{d:.8g},{e:.6g}{tail}"
                      for w, f, d, e in zip(wave[i], flux[i], denoised[i], sigma_denoised[i],
                                            strict=True)]
    return "\n".join(lines) + "\n"


def denoise_with_uncertainty(model: torch.nn.Module, flux, sigma=None, *, calibration=None,
                             method: str | None = None, samples: int | None = None,
                             good=None, batch_size: int = 256, device=None,
                             seed: int = 0) -> DenoisedBlock:
    """Denoise ``flux`` (n, n_wave) and give each pixel's error and each spectrum's check.

    ``sigma`` (n, n_wave): the input's 1-sigma noise in the units of ``flux`` (needed for
    sampling, for models that take it and for the consistency check). ``calibration``: a
    :class:`~specdenoise.train.uncertainty.Calibration` (None: raw sigma, nothing flagged).
    ``method`` (``head``, ``sample``, ``both``; None: the calibration's, else ``head`` for a
    network with an uncertainty head and ``sample`` for any other) and ``samples`` (K; None:
    the calibration's or 8). A calibration fitted for another method is not applied.
    ``good`` (n, n_wave) bool: pixels the check may use (None: all). ``flux_denoised`` is
    what :func:`denoise_array` gives, except in the S/N bins where the calibration has the
    input guard (:mod:`specdenoise.train.uncertainty`): there it leans on the input where the
    network is less sure than the input's noise.
    """
    from specdenoise.train import uncertainty as unc

    needs_sigma = getattr(model, "in_channels", 1) == 2
    flux, sigma, _ = _check_inputs(model, flux, sigma, needs_sigma)
    method, samples, calibration = resolve_uncertainty(model, calibration, method, samples)
    den, raw = unc.raw_uncertainty(model, flux, sigma, method=method, samples=samples,
                                   seed=seed, batch_size=batch_size, device=device)
    if not (np.isfinite(den).all() and np.isfinite(raw).all()):
        row = int(np.nonzero(~(np.isfinite(den) & np.isfinite(raw)).all(axis=1))[0][0])
        raise SpecdenoiseError(f"the model gives NaN or infinite flux for spectrum {row}; its "
                               "weights are damaged (retrain, or use an earlier checkpoint)")
    out = unc.apply(calibration, den, raw, flux, sigma, good)
    return DenoisedBlock(out["flux_denoised"], out["sigma_denoised"], out["chi2_red"],
                         out["suspect"],
                         out["chi2_peak"], out["sky_excess"])


def resolve_uncertainty(model: torch.nn.Module, calibration, method: str | None,
                        samples: int | None) -> tuple[str, int, object | None]:
    """``(method, samples, calibration)`` as :func:`denoise_with_uncertainty` uses them:
    ``method`` None is the calibration's (else ``head`` for a network with an uncertainty head,
    ``sample`` for any other), ``samples`` None the calibration's (else 8); a calibration fitted
    for another method or sample count is dropped (None), with a warning."""
    from specdenoise.train import uncertainty as unc

    if method is None:
        method = calibration.method if calibration is not None else unc.default_method(model)
    if samples is None:
        samples = (calibration.samples if calibration is not None
                   and calibration.method == method else unc.DEFAULT_SAMPLES)
    if calibration is not None and (calibration.method != method
                                    or (method != "head" and calibration.samples != samples)):
        log.warning("the run is calibrated for uncertainty %r with %d samples, not %r with %d: "
                    "sigma_denoised is not calibrated and nothing is flagged",
                    calibration.method, calibration.samples, method, samples)
        calibration = None
    return method, samples, calibration


def denoise_array_with_sigma(model: torch.nn.Module, flux, sigma=None, *, calibration=None,
                             method: str | None = None, samples: int | None = None,
                             batch_size: int = 256, device=None,
                             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(denoised, sigma_denoised)``, both (n, n_wave) float32 in the units of ``flux``.

    :func:`denoise_with_uncertainty` without the consistency check.
    """
    b = denoise_with_uncertainty(model, flux, sigma, calibration=calibration, method=method,
                                 samples=samples, batch_size=batch_size, device=device,
                                 seed=seed)
    return b.flux_denoised, b.sigma_denoised


@dataclass
class Denoiser:
    """A trained run ready to denoise blocks of spectra with uncertainties.

    ``denoiser(flux, sigma, good=None, seed=0)`` returns a :class:`DenoisedBlock`. Built by
    :func:`load_denoiser`; ``method``/``samples`` None means the run's calibrated choice.
    """

    model: torch.nn.Module
    config: dict
    calibration: object | None
    method: str | None = None
    samples: int | None = None
    batch_size: int = 256

    def __call__(self, flux, sigma=None, good=None, seed: int = 0) -> DenoisedBlock:
        return denoise_with_uncertainty(self.model, flux, sigma, calibration=self.calibration,
                                        method=self.method, samples=self.samples, good=good,
                                        batch_size=self.batch_size, seed=seed)

    @property
    def uncertainty_method(self) -> str:
        from specdenoise.train import uncertainty as unc

        if self.method is not None:
            return self.method
        return (self.calibration.method if self.calibration is not None
                else unc.default_method(self.model))


def load_denoiser(model_path, *, device=None, method: str | None = None,
                  samples: int | None = None, batch_size: int = 256) -> Denoiser:
    """A :class:`Denoiser` from a run directory or checkpoint, with its calibration (if the
    run has one; see ``specdenoise calibrate``)."""
    from specdenoise.train import uncertainty as unc

    model, config = load_model(model_path, device=device)
    cal = unc.read_calibration(config["path"])
    if method is not None:
        unc.check_method(model, method, unc.DEFAULT_SAMPLES if samples is None else samples)
    return Denoiser(model, config, cal, method, samples, batch_size)


def denoise_dataset(model_path, in_zarr, out_zarr, *, batch_size: int = 256, device=None,
                    overwrite: bool = False, progress: bool | None = None,
                    uncertainty: str = "auto", samples: int | None = None) -> Path:
    """Denoise every spectrum's ``flux`` of a dataset into a new store at ``out_zarr``.

    The output holds ``flux_denoised`` (spectrum, wave) float32, chunked like the input, with
    all of the input's coordinates (``wave`` and the per-spectrum parameters). Unless
    ``uncertainty`` is ``"none"`` it also holds ``sigma_denoised`` (spectrum, wave) float32
    (flux units), ``chi2_red`` and ``chi2_peak`` (spectrum,) float32 and ``suspect``
    (spectrum,) int8 (see
    :class:`DenoisedBlock`); ``uncertainty`` ``"auto"`` uses the run's calibrated method,
    else ``head``, ``sample`` or ``both`` with ``samples`` draws. It is written in a
    temporary folder and renamed when complete, so an interrupted run leaves nothing that
    looks finished; ``overwrite`` replaces only a denoised store, never the input.
    """
    if uncertainty not in UNCERTAINTY_CHOICES:
        raise SpecdenoiseError(f"unknown uncertainty {uncertainty!r}; choose one of "
                               f"{', '.join(UNCERTAINTY_CHOICES)}")
    from specdenoise.schema import per_spectrum_names

    out = Path(out_zarr)
    if tdata.is_url(out_zarr):
        raise SpecdenoiseError(f"cannot write {out_zarr}: denoised output must be a local path")
    stores.check_output(out, stores.DENOISED, overwrite=overwrite, inputs=(in_zarr,))
    den = None
    if uncertainty == "none":
        model, config = load_model(model_path, device=device)
        needs = _inputs(model)
    else:
        den = load_denoiser(model_path, device=device, samples=samples, batch_size=batch_size,
                            method=None if uncertainty == "auto" else uncertainty)
        model, config = den.model, den.config
        needs = ("flux", "sigma")  # the check and sampling need the noise
    info = tdata.inspect_store(in_zarr, needs, n_wave=model.n_wave)
    _check_data_wave(config.get("wave"), tdata.read_wave(info), in_zarr)
    if not tdata.is_url(in_zarr):
        # a lost chunk would read as fill values: refuse rather than denoise them
        stores.check_chunks(in_zarr, needs, optional=("wave", *per_spectrum_names()))
    with stores.locked(out):
        return _denoise_dataset(model, config, in_zarr, out, info, batch_size=batch_size,
                                overwrite=overwrite, progress=progress, denoiser=den)


def _check_data_wave(model_wave, wave, in_zarr) -> None:
    """Refuse a dataset on another pixel grid than the model's (shifted, reversed, or holding
    a NaN), as evaluate and train do."""
    from specdenoise.train.guards import describe_grid, grid_mismatch

    if model_wave is None or wave is None:
        return
    off = grid_mismatch(model_wave, wave)
    if off is not None:
        raise SpecdenoiseError(
            f"the model was trained on another wavelength grid ({describe_grid(model_wave)}) "
            f"than {in_zarr} ({describe_grid(wave)}; they differ by up to {off:.3g} pixels); "
            "denoise data simulated on its grid")


#: a spectrum whose median noise is more than this many times its median flux holds no
#: signal to recover (its noise column is in other units, or it is not a spectrum)
MAX_NOISE_TO_SIGNAL = 100.0


def check_noise(flux: np.ndarray, sigma: np.ndarray, name) -> None:
    """Refuse noise that swamps the flux (median sigma / median flux > MAX_NOISE_TO_SIGNAL):
    the denoiser would return a flat nothing, and say nothing."""
    ratio = np.median(sigma, axis=1) / np.abs(np.median(flux, axis=1))
    bad = np.nonzero(~(ratio <= MAX_NOISE_TO_SIGNAL))[0]
    if bad.size:
        row = int(bad[0])
        raise SpecdenoiseError(
            f"{name}: spectrum {row}'s noise is {ratio[row]:.3g} times its flux (median); "
            "check the noise column's units (sigma, inverse variance or variance?)")


def _denoise_dataset(model, config, in_zarr, out: Path, info, *, batch_size, overwrite,
                     progress, denoiser=None) -> Path:
    import dask.array as da
    import xarray as xr
    import zarr

    from specdenoise import schema
    from specdenoise.progress import iterate
    from specdenoise.schema import SPECTRUM_DIM, WAVE_DIM

    with codecs.quiet_legacy():
        src = xr.open_zarr(str(in_zarr), consolidated=None)
    with codecs.reading(in_zarr, list(src.coords)):
        coords = {k: v.variable.compute() for k, v in src.coords.items()}
    n, n_wave = info.n_spectrum, info.n_wave
    chunks2 = (info.chunk_size, n_wave)
    data_vars = {DENOISED_VAR: ((SPECTRUM_DIM, WAVE_DIM),
                                da.zeros((n, n_wave), dtype=np.float32, chunks=chunks2),
                                schema.attrs_of(DENOISED_VAR))}
    unc_attrs = {}
    if denoiser is not None:
        data_vars.update(_uncertainty_vars(n, n_wave, info.chunk_size, schema.UNITS["flux"]))
        cal = denoiser.calibration
        unc_attrs = {"uncertainty_method": denoiser.uncertainty_method,
                     "uncertainty_calibrated": cal is not None
                     and cal.method == denoiser.uncertainty_method,
                     "uncertainty_calibration": "" if cal is None else cal.dataset}
    template = xr.Dataset(
        data_vars,
        coords=coords,
        attrs={
            "specdenoise_kind": DENOISED_KIND,
            "complete": False,
            "source": str(in_zarr),
            "model": config["path"],
            "model_name": config["model"]["name"],
            "model_epoch": config["epoch"],
            "chunk_size": info.chunk_size,
            **unc_attrs,
        },
    )
    encoding = {name: {"chunks": v.data.chunksize, "compressors": codecs.default_compressors()}
                for name, v in template.data_vars.items()}
    for k, v in coords.items():
        encoding[k] = {"compressors": codecs.default_compressors()}
        if v.dims == (SPECTRUM_DIM,):
            encoding[k]["chunks"] = (info.chunk_size,)
    with stores.assembled(out, stores.DENOISED, overwrite=overwrite,
                          finish=finalize_dataset) as tmp:
        template.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, compute=False,
                         encoding=encoding)
        src_group = tdata.open_group(info.path, info.storage_options)
        dst = zarr.open_group(str(tmp), mode="r+")
        for chunk in iterate(range(info.n_chunks), "denoise", "chunk", enabled=progress):
            lo, hi = info.chunk_bounds(chunk)
            if denoiser is None:
                arrays = tdata.read_chunk(src_group, info, chunk, _inputs(model))
                dst[DENOISED_VAR][lo:hi] = denoise_array(model, arrays["flux"],
                                                         batch_size=batch_size,
                                                         sigma=arrays.get("sigma"))
                continue
            arrays = tdata.read_chunk(src_group, info, chunk, ("flux", "sigma"))
            block = denoiser(arrays["flux"], arrays["sigma"], good=arrays["good"], seed=chunk)
            dst[DENOISED_VAR][lo:hi] = block.flux_denoised
            dst[SIGMA_VAR][lo:hi] = block.sigma_denoised
            dst[CHI2_VAR][lo:hi] = block.chi2_red
            dst[PEAK_VAR][lo:hi] = block.chi2_peak
            dst[SKY_VAR][lo:hi] = block.sky_excess
            dst[SUSPECT_VAR][lo:hi] = block.suspect
    return out


def _uncertainty_vars(n: int, n_wave: int, chunk: int, units: str) -> dict:
    """Empty (lazy) ``sigma_denoised``, ``chi2_red``, ``chi2_peak``, ``sky_excess`` and
    ``suspect`` of a denoised store."""
    import dask.array as da

    from specdenoise.schema import SPECTRUM_DIM, WAVE_DIM

    return {
        SIGMA_VAR: ((SPECTRUM_DIM, WAVE_DIM),
                    da.zeros((n, n_wave), dtype=np.float32, chunks=(chunk, n_wave)),
                    {"units": units, "long_name": "1-sigma error of flux_denoised "
                     "(calibrated on the run's validation set)"}),
        CHI2_VAR: ((SPECTRUM_DIM,), da.zeros((n,), dtype=np.float32, chunks=(chunk,)),
                   {"units": "1", "long_name": "mean over unmasked pixels of (flux - "
                    "flux_denoised)^2 / (sigma^2 + sigma_denoised^2)"}),
        PEAK_VAR: ((SPECTRUM_DIM,), da.zeros((n,), dtype=np.float32, chunks=(chunk,)),
                   {"units": "1", "long_name": "largest mean of (flux - flux_denoised)^2 / "
                    "(sigma^2 + sigma_denoised^2) over 5 neighbouring pixels"}),
        SKY_VAR: ((SPECTRUM_DIM,), da.full((n,), np.nan, dtype=np.float32, chunks=(chunk,)),
                  {"units": "1", "long_name": "matched-filter significance of the sky-line "
                   "template in flux - flux_denoised, in sigma (> 0: sky left in, < 0: "
                   "oversubtracted; NaN: no sky check)"}),
        SUSPECT_VAR: ((SPECTRUM_DIM,), da.full((n,), -1, dtype=np.int8, chunks=(chunk,)),
                      dict(SUSPECT_ATTRS)),
    }


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
    path = stores.regular_file(path, "spectrum file", max_bytes=MAX_SPECTRUM_FILE)
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
    wave_col = next((header.index(w) for w in WAVE_NAMES if w in header), None)
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
                wname = next((names[w] for w in WAVE_NAMES if w in names), None)
                wave = None if wname is None else np.asarray(hdu.data[wname], np.float64)
                if flux.ndim == 2 and wave is not None and wave.ndim == 2:
                    if not np.array_equal(wave, np.broadcast_to(wave[0], wave.shape)):
                        raise SpecdenoiseError(
                            f"{path}: the table's rows have different wavelength grids; "
                            "resample them onto one grid first")
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
            return _wcs_wave(hdu.header, data.shape[-1], path), data, None
    raise SpecdenoiseError(f"{path}: no HDU with data")


def _wcs_wave(header, n_pix: int, path) -> np.ndarray | None:
    """The wavelengths (nm) an image's linear WCS gives its pixels (FITS paper III: CRVAL1,
    CRPIX1, CDELT1 or CD1_1, CUNIT1; Angstrom when no unit and the values are > 2000; a
    log10 axis from CTYPE1 '...-LOG' or the IRAF keyword DC-FLAG = 1); None without one."""
    if "CRVAL1" not in header:
        return None
    step = header.get("CDELT1", header.get("CD1_1"))
    if step is None:
        return None
    pix = np.arange(1, n_pix + 1, dtype=np.float64)
    x = float(header["CRVAL1"]) + (pix - float(header.get("CRPIX1", 1.0))) * float(step)
    ctype = str(header.get("CTYPE1", "")).upper()
    if ctype.endswith("-LOG") or header.get("DC-FLAG") == 1:
        x = 10.0 ** x
    elif ctype and not ctype.startswith(("WAVE", "AWAV", "LINEAR")):
        raise SpecdenoiseError(f"{path}: the image's axis is {ctype!r}, not wavelength; "
                               "give a spectrum with a wavelength axis")
    unit = str(header.get("CUNIT1", "")).strip().lower()
    scale = {"angstrom": 0.1, "a": 0.1, "nm": 1.0, "m": 1e9, "um": 1e3, "micron": 1e3}.get(
        unit, 0.1 if not unit and np.nanmedian(x) > 2000 else 1.0 if not unit else None)
    if scale is None:
        raise SpecdenoiseError(f"{path}: unknown wavelength unit CUNIT1 = {unit!r}")
    return x * scale


def require_sigma(model: torch.nn.Module, sigma, in_path) -> bool:
    """Whether ``model`` takes each pixel's noise; one line when it does and ``in_path`` has
    none."""
    takes_sigma = "sigma" in _inputs(model)
    if takes_sigma and sigma is None:
        raise SpecdenoiseError(
            f"this model also takes each pixel's noise, and {in_path} has none: add a "
            "'sigma' (or 'error'), 'ivar' or 'variance' column (a third column in a bare "
            "text file), or use a model trained with in_channels 1")
    return takes_sigma


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


def denoise_file(model_path, in_path, out_csv, *, device=None, overwrite: bool = False,
                 uncertainty: str = "auto", samples: int | None = None) -> Path:
    """Denoise the spectrum (or spectra) in a FITS or CSV file; write ``out_csv``.

    Columns: ``wave`` (nm; from the file, else the model's training grid), ``flux`` and
    ``flux_denoised``; with several spectra a leading ``spectrum`` column numbers them.
    Unless ``uncertainty`` is ``"none"`` (see :func:`denoise_dataset`): ``sigma_denoised``
    (flux units) per pixel, and ``chi2_red``, ``chi2_peak``, ``sky_excess`` and ``suspect``
    (1, 0, or -1 = not checked), per spectrum, repeated on each of its rows. A file without a
    noise column gets a sigma only from a network with an uncertainty head, and no check.
    An existing ``out_csv`` is replaced only with ``overwrite``.
    """
    if uncertainty not in UNCERTAINTY_CHOICES:
        raise SpecdenoiseError(f"unknown uncertainty {uncertainty!r}; choose one of "
                               f"{', '.join(UNCERTAINTY_CHOICES)}")
    out = Path(out_csv)
    stores.check_output(out, None, overwrite=overwrite, inputs=(in_path,))
    if not out.parent.is_dir():
        raise SpecdenoiseError(f"cannot write {out}: folder {out.parent} does not exist")
    denoiser = None
    if uncertainty == "none":
        model, config = load_model(model_path, device=device)
    else:
        denoiser = load_denoiser(model_path, device=device, samples=samples,
                                 method=None if uncertainty == "auto" else uncertainty)
        model, config = denoiser.model, denoiser.config
    wave, flux, sigma = read_spectrum_file(in_path)
    n_wave = model.n_wave
    if flux.shape[1] != n_wave:
        raise SpecdenoiseError(
            f"{in_path} has {flux.shape[1]} pixels; the model expects {n_wave} "
            "(PFS red-arm MR pixels); resample it onto the training grid first"
        )
    model_wave = config.get("wave")
    if wave is not None and model_wave is not None:
        from specdenoise.train.guards import grid_mismatch

        if grid_mismatch(wave, model_wave) is not None:
            raise SpecdenoiseError(
                f"{in_path}: wavelengths differ from the model's grid "
                f"({model_wave[0]:.3f}-{model_wave[-1]:.3f} nm, vacuum) by more than half a "
                "pixel; resample it first"
            )
    if wave is None:
        wave = np.asarray(model_wave if model_wave is not None else np.arange(n_wave), float)
    check_spectra(flux, in_path)
    if sigma is not None:
        check_noise(flux, sigma, in_path)
    takes_sigma = require_sigma(model, sigma, in_path)
    if denoiser is None:
        den = denoise_array(model, flux, sigma=sigma if takes_sigma else None)
        text = spectrum_csv(wave, flux, den)
    else:
        if sigma is None and denoiser.uncertainty_method != "head":
            if uncertainty != "auto":
                raise SpecdenoiseError(
                    f"{in_path} has no noise column: uncertainty {uncertainty!r} samples the "
                    "input's noise. Add a 'sigma' (or 'error'), 'ivar' or 'variance' column, "
                    "or pass --uncertainty none")
            log.warning("%s has no noise column: sigma_denoised and chi2_red are left NaN "
                        "(this network's uncertainty is sampled from the input's noise)",
                        in_path)
            den = denoise_array(model, flux)
            nan = np.full(len(den), np.nan, np.float32)
            block = DenoisedBlock(den, np.full_like(den, np.nan), nan,
                                  np.full(len(den), -1, np.int8), nan, nan)
        else:
            block = denoiser(flux, sigma)
        text = spectrum_csv(wave, flux, block.flux_denoised, block.sigma_denoised,
                            block.checks())
        n_sus = int((block.suspect == 1).sum())
        if n_sus:
            log.warning("%d of %d spectra in %s are suspect: the denoised flux does not explain "
                        "the input (see README, 'suspect')", n_sus, len(flux), in_path)
    return stores.write_file(out, lambda tmp: tmp.write_text(text), overwrite=overwrite,
                             inputs=(in_path,))
