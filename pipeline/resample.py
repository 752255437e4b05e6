"""Flux-conserving resampling of spectra between pixel grids, with the variance propagated.

Each pixel is a bin of wavelength between the midpoints to its neighbours (the outer edges half
a spacing beyond the first and last centre). A spectrum given as a flux density (per nm, or any
unit per unit wavelength, the denoiser's convention) is resampled by averaging: output pixel j
is ``sum_i A[j, i] f[i]`` with ``A[j, i]`` the fraction of output bin j covered by input bin i,
so the integral of the density over any union of whole output bins is conserved (the
operation of Carnall 2017, arXiv:1705.05165, the ``spectres`` package, written here as a
sparse matrix so that a covariance can be propagated: ``C_out = A C A^T``, of which the
diagonal and the first two off-diagonals are returned, the PFS datamodel's ``COVAR`` layout).

Counts per pixel (``per_pixel=True``, e.g. electrons per pixel in a pfsArm file) are divided by
the bin widths before and multiplied by the output widths after, which conserves the total.

Everything here is numpy and scipy.sparse; wavelengths of both grids must be increasing and in
the same unit.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from specdenoise.errors import SpecdenoiseError

#: the PFS datamodel's COVAR rows: variance, covariance with the pixel +1 and +2 away
N_COVAR = 3


def edges(centres: np.ndarray) -> np.ndarray:
    """Bin edges (n + 1,) of pixels centred on increasing ``centres`` (n,), same unit."""
    c = np.asarray(centres, dtype=np.float64)
    if c.ndim != 1 or c.size < 2:
        raise SpecdenoiseError("a wavelength grid needs at least two pixels")
    if not np.all(np.diff(c) > 0):
        raise SpecdenoiseError("wavelengths must increase from pixel to pixel")
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def matrix(src: np.ndarray, dst: np.ndarray) -> sp.csr_matrix:
    """The (n_dst, n_src) sparse averaging operator from pixel centres ``src`` to ``dst``.

    Row j holds the fractions of output bin j covered by each input bin; a row sums to 1 when
    the bin lies inside the input's coverage, to less where it sticks out (and 0 outside).
    """
    se, de = edges(src), edges(dst)
    rows, cols, vals = [], [], []
    # for each output bin, the input bins that overlap it
    first = np.clip(np.searchsorted(se, de[:-1], side="right") - 1, 0, len(src) - 1)
    last = np.clip(np.searchsorted(se, de[1:], side="left") - 1, 0, len(src) - 1)
    width = np.diff(de)
    for j in range(len(dst)):
        i = np.arange(first[j], last[j] + 1)
        overlap = np.minimum(se[i + 1], de[j + 1]) - np.maximum(se[i], de[j])
        keep = overlap > 0
        rows.append(np.full(int(keep.sum()), j))
        cols.append(i[keep])
        vals.append(overlap[keep] / width[j])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(len(dst), len(src)))


def covariance_matrix(covar: np.ndarray) -> sp.csr_matrix:
    """The symmetric (n, n) sparse covariance of the datamodel rows ``covar`` (k, n), k <= 3:
    row 0 the variance, row d the covariance of pixel i with pixel i + d (valid for i < n - d)."""
    covar = np.asarray(covar, dtype=np.float64)
    n = covar.shape[-1]
    diags, offsets = [covar[0]], [0]
    for d in range(1, covar.shape[0]):
        if np.any(covar[d, : n - d]):
            diags += [covar[d, : n - d], covar[d, : n - d]]
            offsets += [d, -d]
    return sp.diags(diags, offsets, shape=(n, n), format="csr")


def covariance_rows(cov: sp.spmatrix, n_rows: int = N_COVAR) -> np.ndarray:
    """The datamodel rows (n_rows, n) of a sparse covariance: diagonal, then +1, +2 (0-padded)."""
    cov = sp.csr_matrix(cov)
    n = cov.shape[0]
    out = np.zeros((n_rows, n))
    for d in range(n_rows):
        out[d, : n - d] = cov.diagonal(d)
    return out


def resample(wave_src, flux, wave_dst, *, covar=None, bad=None, per_pixel: bool = False):
    """Resample one spectrum from pixel centres ``wave_src`` onto ``wave_dst``.

    ``flux`` (n_src,); ``covar`` (k, n_src) the datamodel's rows (variance first) or None;
    ``bad`` (n_src,) bool, pixels not to be trusted. Returns ``(flux, covar, bad)`` on the new
    grid: flux (n_dst,), covar (3, n_dst) or None, bad (n_dst,) True where an untrusted input
    pixel contributes, or where the output bin is not entirely covered by the input.
    ``per_pixel``: ``flux`` holds counts per pixel rather than a density (see the module).
    """
    wave_src = np.asarray(wave_src, np.float64)
    wave_dst = np.asarray(wave_dst, np.float64)
    a = matrix(wave_src, wave_dst)
    f = np.asarray(flux, np.float64)
    if per_pixel:
        w_src, w_dst = np.diff(edges(wave_src)), np.diff(edges(wave_dst))
        f = f / w_src
    out_flux = a @ f
    out_cov = None
    if covar is not None:
        c = covariance_matrix(covar)
        if per_pixel:
            s = sp.diags(1.0 / w_src)
            c = s @ c @ s
        cov = a @ c @ a.T
        if per_pixel:
            s = sp.diags(w_dst)
            cov = s @ cov @ s
        out_cov = covariance_rows(cov)
    if per_pixel:
        out_flux = out_flux * w_dst
    covered = np.isclose(np.asarray(a.sum(axis=1)).ravel(), 1.0, rtol=0, atol=1e-9)
    out_bad = ~covered
    if bad is not None:
        touched = a @ np.asarray(bad, np.float64)
        out_bad |= touched > 0
    return out_flux, out_cov, out_bad
