"""Denoise spectrum files: PFS products (pfsArm, pfsMerged, pfsObject) and plain FITS/text
spectra, into FITS (chosen by the output's extension) or CSV.

The steps, for each spectrum of the file (:mod:`specdenoise.pfsio` reads and writes):

1. pixels the file masks (:data:`specdenoise.pfsio.UNTRUSTED_PLANES`, non-finite values, no
   variance) get their flux filled by linear interpolation from the trusted ones;
2. a spectrum on the model's grid (every pixel within :data:`SAME_GRID` of a model pixel) is
   used as it is; any other grid must cover the model's range and is resampled onto it
   flux-conservingly with its covariance propagated (:mod:`specdenoise.resample`);
3. untrusted pixels get the noise of a pixel without information (100 times the spectrum's
   median flux: 'ignore me', as :func:`specdenoise.train.infer.read_spectrum_file` does), and
   the network denoises;
4. the result goes back onto the file's own grid (resampled again when it was resampled);
   pixels outside the model's range keep the input's flux and variance and get the mask plane
   ``NOT_DENOISED``; masked pixels keep their bits.

The output's variance is the denoiser's own uncertainty ``sigma_denoised**2`` when one is given
(``sigma_fn``), otherwise the input's, and the header keyword ``SDVARSRC`` says which.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from specdenoise import __version__, pfsio, stores
from specdenoise import resample as rs
from specdenoise.errors import SpecdenoiseError

#: a file's grid counts as the model's when no pixel is further than this (model pixels) away
SAME_GRID = 0.1
#: the noise given to an untrusted pixel, in units of the spectrum's median flux
IGNORE_SIGMA = 100.0
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")

log = logging.getLogger("specdenoise.denoise")


def is_fits(path) -> bool:
    return str(path).lower().endswith(FITS_SUFFIXES)


def _fill(flux: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """``flux`` with its ``bad`` pixels linearly interpolated from the good ones."""
    out = flux.copy()
    x = np.arange(flux.size)
    good = ~bad
    if bad.any():
        out[bad] = np.interp(x[bad], x[good], flux[good])
    return out


def _on_model_grid(wave: np.ndarray, model_wave: np.ndarray) -> bool:
    step = abs(model_wave[1] - model_wave[0])
    return wave.shape == model_wave.shape and \
        float(np.max(np.abs(wave - model_wave))) <= SAME_GRID * step


def to_model_grid(s: pfsio.Spectra, model_wave, n_wave: int):
    """(flux, sigma, bad, resampled) on the model's grid, (n, n_wave) each, from ``s``."""
    n = len(s.flux)
    flux = np.empty((n, n_wave))
    var = np.full((n, n_wave), np.nan) if s.covar is not None else None
    bad = np.zeros((n, n_wave), bool)
    resampled = np.zeros(n, bool)
    labels = s.labels()
    for k in range(n):
        f = _fill(s.flux[k], s.bad[k])
        if s.wave is None or model_wave is None or _on_model_grid(s.wave[k], model_wave):
            if f.size != n_wave:
                raise SpecdenoiseError(
                    f"{s.path} has {f.size} pixels and no wavelengths; the model expects "
                    f"{n_wave} (PFS red-arm MR pixels): give wavelengths, or resample it")
            flux[k], bad[k] = f, s.bad[k]
            if var is not None:
                var[k] = s.covar[k, 0]
            continue
        wave = s.wave[k]
        if not np.all(np.diff(wave) > 0):
            raise SpecdenoiseError(f"{s.path}: {labels[k]}: wavelengths do not increase")
        good = ~s.bad[k]
        lo, hi = rs.edges(wave)[[0, -1]]
        data_lo, data_hi = wave[good][0], wave[good][-1]
        mlo, mhi = rs.edges(model_wave)[[0, -1]]
        if lo > mlo + 1e-9 or hi < mhi - 1e-9 or data_lo > model_wave[0] or \
                data_hi < model_wave[-1]:
            raise SpecdenoiseError(
                f"{s.path}: {labels[k]} has data at {data_lo:.3f}-{data_hi:.3f} nm, which does "
                f"not cover the model's range {model_wave[0]:.3f}-{model_wave[-1]:.3f} nm "
                "(vacuum); give a spectrum of the medium-resolution red arm over that range")
        covar = None if s.covar is None else np.where(np.isfinite(s.covar[k]), s.covar[k], 0)
        if covar is not None:
            covar[0] = np.where(s.bad[k], 0.0, covar[0])
        f2, c2, b2 = rs.resample(wave, f, model_wave, covar=covar, bad=s.bad[k],
                                 per_pixel=s.per_pixel)
        flux[k], bad[k], resampled[k] = f2, b2, True
        if var is not None:
            var[k] = c2[0]
    sigma = None
    if var is not None:
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(var) & (var > 0) & ~bad
            sigma = np.where(ok, np.sqrt(np.where(ok, var, 1.0)), np.nan)
        big = IGNORE_SIGMA * np.abs(np.median(flux, axis=1, keepdims=True))
        sigma = np.where(ok, sigma, big)
    return flux, sigma, bad, resampled


def back_to_file(s: pfsio.Spectra, model_wave, resampled, denoised, sigma_den):
    """(flux, covar, not_denoised) on the file's grid, (n, n_pix) / (n, 3, n_pix) / (n, n_pix).

    ``sigma_den``: the denoiser's own 1-sigma (n, n_wave) or None (the input's covariance is
    kept). Pixels outside the model's range keep the input's flux and covariance.
    """
    n, n_pix = s.flux.shape
    flux = s.flux.copy()
    covar = np.zeros((n, 3, n_pix)) if s.covar is None else s.covar.copy()
    outside = np.zeros((n, n_pix), bool)
    for k in range(n):
        if not resampled[k]:
            flux[k] = denoised[k]
            if sigma_den is not None:
                covar[k] = 0.0
                covar[k, 0] = sigma_den[k] ** 2
            continue
        wave = s.wave[k]
        mlo, mhi = rs.edges(model_wave)[[0, -1]]
        we = rs.edges(wave)
        inside = (we[:-1] >= mlo - 1e-9) & (we[1:] <= mhi + 1e-9)
        c = None
        if sigma_den is not None:
            c = np.zeros((3, model_wave.size))
            c[0] = sigma_den[k] ** 2
        f2, c2, _ = rs.resample(model_wave, denoised[k], wave[inside], covar=c,
                                per_pixel=s.per_pixel)
        flux[k, inside] = f2
        if c2 is not None:
            covar[k][:, inside] = c2
        outside[k] = ~inside
    return flux, covar, outside


def run_info(config: dict, in_path, variance_source: str, resampled: bool) -> dict:
    train = config.get("train", {}) or {}
    model = config.get("path")
    return {"version": __version__, "model": None if model is None else str(Path(model).resolve()),
            "model_name": (config.get("model") or {}).get("name"), "epoch": config.get("epoch"),
            "train_data": train.get("data"), "variance_source": variance_source,
            "resampled": resampled, "input": str(Path(in_path).resolve())}


def _uncertainty_fn(model_path, device, method, bad, samples=None):
    """The denoiser's own uncertainty, where this installation has one
    (``infer.load_denoiser``, issue 18): a ``sigma_fn`` for :func:`denoise_spectrum_file`, or
    None (then the input's variance is written and the header says so)."""
    from specdenoise.train import infer

    load = getattr(infer, "load_denoiser", None)
    if load is None:
        return None
    denoiser = load(model_path, device=device,
                    method=None if method in (None, "auto") else method, samples=samples)

    def sigma_fn(model, flux, sigma):
        block = denoiser(flux, sigma, good=~bad)
        return block.flux_denoised, block.sigma_denoised, block.checks()

    return sigma_fn


def denoise_spectrum_file(model_path, in_path, out, *, fiber_ids=None, device=None,
                          overwrite: bool = False, sigma_fn=None,
                          uncertainty: str | None = None, samples: int | None = None) -> Path:
    """Denoise the spectra of ``in_path`` (PFS product, FITS or text) into ``out``.

    ``out`` ending in ``.fits`` (``.fit``, ``.fts``, ``.fits.gz``) is FITS: a PFS input gives
    the same product's layout (:func:`specdenoise.pfsio.write_pfs`), a plain one an image or a
    table (:func:`specdenoise.pfsio.write_plain`); any other name is CSV (columns ``[spectrum,]
    wave, flux, flux_denoised``). ``fiber_ids``: only these fibers of a pfsArm/pfsMerged file.
    ``sigma_fn(model, flux, sigma) -> (denoised, sigma_denoised[, checks])``, both (n, n_wave)
    on the model's grid, ``checks`` each spectrum's ``chi2_red``, ``chi2_peak``,
    ``sky_excess`` and ``suspect`` (written to FITS outputs as the table
    :data:`specdenoise.pfsio.CHECK_HDU`, and logged when any is suspect): a denoiser that gives
    its own uncertainty; without it the network's output is
    the flux and the input's variance is written (header ``SDVARSRC = 'input'``). Without
    ``sigma_fn`` the denoiser's own uncertainty is used where this installation has one
    (``infer.load_denoiser``), unless ``uncertainty`` is ``"none"``; ``uncertainty`` (``auto``,
    ``head``, ``sample``, ``both``) picks its method and ``samples`` its number of draws.
    Nothing is written unless every spectrum denoises; the file appears complete or not at all.
    """
    from specdenoise.train.checkpoint import load_model
    from specdenoise.train.infer import check_spectra, denoise_array, require_sigma

    out = Path(out)
    stores.check_output(out, None, overwrite=overwrite, inputs=(in_path,))
    if not out.parent.is_dir():
        raise SpecdenoiseError(f"cannot write {out}: folder {out.parent} does not exist")
    spectra = pfsio.read(in_path, fiber_ids=fiber_ids)
    model, config = load_model(model_path, device=device)
    n_wave = model.n_wave
    model_wave = None if config.get("wave") is None else np.asarray(config["wave"], np.float64)
    flux, sigma, bad, resampled = to_model_grid(spectra, model_wave, n_wave)
    flux32 = flux.astype(np.float32)
    check_spectra(flux32, in_path)
    takes_sigma = require_sigma(model, sigma, in_path)
    sig32 = None if sigma is None else sigma.astype(np.float32)
    if sigma_fn is None and uncertainty != "none":
        sigma_fn = _uncertainty_fn(model_path, device, uncertainty, bad, samples)
    checks = None
    if sigma_fn is not None:
        result = sigma_fn(model, flux32, sig32)
        denoised, sigma_den = result[0], result[1]
        checks = result[2] if len(result) > 2 else None
    else:
        denoised = denoise_array(model, flux32, sigma=sig32 if takes_sigma else None)
        sigma_den = None
    denoised = np.asarray(denoised, np.float64)
    if sigma_den is not None:
        sigma_den = np.asarray(sigma_den, np.float64)
    file_flux, covar, outside = back_to_file(spectra, model_wave, resampled, denoised,
                                             sigma_den)
    info = run_info(config, in_path, "denoiser" if sigma_den is not None else "input",
                    bool(resampled.any()))
    if checks is not None:
        n_sus = int((np.asarray(checks["suspect"]) == 1).sum())
        if n_sus:
            labels = spectra.labels()
            which = [labels[i] for i in np.nonzero(np.asarray(checks["suspect"]) == 1)[0][:5]]
            log.warning("%d of %d spectra in %s are suspect (%s%s): the denoised flux does not "
                        "explain the input; see README, 'suspect'", n_sus, len(labels), in_path,
                        ", ".join(which), ", ..." if n_sus > 5 else "")

    def write(tmp: Path) -> None:
        if not is_fits(out):
            sig_file = None
            if sigma_den is not None:
                with np.errstate(invalid="ignore"):
                    sig_file = np.sqrt(covar[:, 0])
            _write_csv(tmp, spectra, model_wave, n_wave, file_flux, sig_file, checks)
        elif spectra.is_pfs:
            planes = dict(spectra.planes)
            mask = spectra.mask.copy()
            if outside.any():
                planes = pfsio.with_not_denoised(planes)
                mask[outside] |= 1 << planes[pfsio.NOT_DENOISED_PLANE]
            pfsio.write_pfs(spectra, tmp, file_flux, covar, mask, {**info, "planes": planes},
                            checks)
        else:
            wave = spectra.wave if spectra.wave is not None else np.broadcast_to(
                model_wave if model_wave is not None else np.arange(n_wave, dtype=float),
                file_flux.shape)
            sig = None
            if sigma_den is not None or spectra.covar is not None:
                with np.errstate(invalid="ignore"):
                    sig = np.sqrt(covar[:, 0])
            pfsio.write_plain(spectra, tmp, wave, spectra.flux, file_flux, sig, info, checks)

    return stores.write_file(out, write, overwrite=overwrite, inputs=(in_path,))


def _write_csv(tmp: Path, s: pfsio.Spectra, model_wave, n_wave: int, den: np.ndarray,
               sigma_den: np.ndarray | None = None, checks: dict | None = None) -> None:
    """The CSV of :func:`specdenoise.train.infer.denoise_file`
    (:func:`~specdenoise.train.infer.spectrum_csv`), on the file's grid."""
    from specdenoise.train.infer import spectrum_csv

    wave = s.wave if s.wave is not None else (
        model_wave if model_wave is not None else np.arange(n_wave, dtype=float))
    tmp.write_text(spectrum_csv(wave, s.flux, den, sigma_den, checks))
