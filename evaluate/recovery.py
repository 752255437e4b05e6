"""Stellar parameters recovered by the template fit, from the noisy input and from each
network's denoised spectra, against the truth.

An astronomer denoises to measure something. The template fit (:mod:`.baselines`, the
simulation's own model fitted to a spectrum) already gives Teff, log g, [M/H], [alpha/M], RV and
E(B-V) from the noisy input (the cube's ``template_<p>``); here the same fitter is run on the
denoised spectra of every network, on exactly the spectra the template baseline ran on, with
the input's sigma as weights (the denoised flux has no noise of its own to weight by: the
weights only set the relative importance of the pixels). The cost is that of the template
baseline once per network (a few fits per second, so the 200 spectra of ``run --preset best``
take about a minute per network).

The result is one CSV table, ``parameters.csv`` in the evaluation folder: a row per
(source, spectrum), ``source`` being ``noisy input`` or ``<network> denoised``, with ``snr``,
``<p>_true`` and ``<p>_fit`` for every parameter. :func:`recovery_stats` reduces it to a bias
(median of fit - truth) and a scatter (half the 16-84 percentile range of fit - truth) per
source and parameter, overall and in S/N bins.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from specdenoise import stores
from specdenoise.evaluate.cube import METHOD_DIM

PARAMS = ("teff", "logg", "m_h", "a_m", "rv", "ebv")
UNITS = {"teff": "K", "logg": "dex", "m_h": "dex", "a_m": "dex", "rv": "km/s", "ebv": "mag"}
NOISY = "noisy input"


def recover(cube: xr.Dataset, fitter, progress: bool = False,
            log: Callable = print) -> list[dict]:
    """Fit each network's denoised spectra of the template subset; rows of the table (see the
    module docstring). Empty when the template fit did not run or the cube has no
    ``denoised``."""
    names = [str(m) for m in cube[METHOD_DIM].values]
    if "template" not in names or "denoised" not in cube:
        return []
    subset = np.flatnonzero(np.isfinite(
        cube["mean_rel_err"].sel({METHOD_DIM: "template"}).values))
    if subset.size == 0:
        return []
    kinds = dict(zip(names, (str(k) for k in cube["denoiser_kind"].values), strict=True))
    params = [p for p in PARAMS if p in cube.coords]
    truth = {p: cube[p].values[subset].astype(np.float64) for p in params}
    snr = cube["snr"].values[subset]
    sigma = cube["sigma"].isel(spectrum=subset).values
    fits = {NOISY: {p: cube[f"template_{p}"].values[subset] for p in params
                    if f"template_{p}" in cube}}
    for m in names:
        if kinds[m] != "network":
            continue
        den = cube["denoised"].sel({METHOD_DIM: m}).isel(spectrum=subset).values
        bad = ~np.isfinite(cube["rel_err"].sel({METHOD_DIM: m}).isel(spectrum=subset).values)
        res = fitter.fit(np.where(bad, 0, den), sigma, bad.astype(np.uint8), progress=progress)
        log(f"parameters:  template fit of {m}'s denoised spectra, {subset.size} spectra, "
            f"{res.seconds:.0f} s")
        fits[f"{m} denoised"] = {p: res.params[p] for p in params if p in res.params}
    rows = []
    for source, fit in fits.items():
        for i, s in enumerate(subset):
            row = {"source": source, "spectrum": int(s), "snr": float(snr[i])}
            for p in params:
                row[f"{p}_true"] = float(truth[p][i])
                row[f"{p}_fit"] = float(fit[p][i]) if p in fit else float("nan")
            rows.append(row)
    return rows


def write_csv(rows: Sequence[dict], path, *, overwrite: bool = False) -> Path:
    """The table as CSV, written then renamed into place."""
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["source"])
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})

    stores.write_file(path, write, overwrite=overwrite)
    return path


def read_csv(path) -> list[dict]:
    """Rows of a ``parameters.csv`` (numbers as floats)."""
    with open(path, newline="") as f:
        return [{k: (v if k == "source" else float(v)) for k, v in r.items()}
                for r in csv.DictReader(f)]


def recovery_stats(rows: Sequence[dict], edges: Sequence[float] | None = None) -> dict:
    """source -> parameter -> list over bins (one bin, all spectra, when ``edges`` is None) of
    (n, bias, scatter): median and half the 16-84 percentile range of fit - truth."""
    out: dict = {}
    sources = list(dict.fromkeys(r["source"] for r in rows))
    params = [p for p in PARAMS if rows and f"{p}_fit" in rows[0]]
    e = np.array([-np.inf, np.inf] if edges is None else edges, dtype=np.float64)
    for s in sources:
        sel = [r for r in rows if r["source"] == s]
        snr = np.array([r["snr"] for r in sel])
        which = np.searchsorted(e, snr, side="left") - 1
        which[snr == e[0]] = 0
        out[s] = {}
        for p in params:
            d = np.array([r[f"{p}_fit"] - r[f"{p}_true"] for r in sel])
            cells = []
            for i in range(e.size - 1):
                v = d[(which == i) & np.isfinite(d)]
                if v.size == 0:
                    cells.append((0, np.nan, np.nan))
                    continue
                lo, med, hi = np.percentile(v, [16, 50, 84])
                cells.append((int(v.size), float(med), float(0.5 * (hi - lo))))
            out[s][p] = cells
    return out
