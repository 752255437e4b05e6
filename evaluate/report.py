"""The evaluation report: one Markdown file and one self-contained HTML file.

Both are rendered from the same list of blocks (headings, paragraphs, tables, figures, code), so
they always say the same thing. Markdown links the PNG figures beside it (``figures/*.png``);
HTML embeds them (base64), so it can be mailed or opened anywhere on its own.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from specdenoise import __version__
from specdenoise.evaluate.cube import METHOD_DIM, method_info

#: above this many spectra, pixel quantiles in the methods table come from an even subsample
MAX_TABLE_SPECTRA = 5000

#: the S/N of a spectrum, as the dataset defines it (``snr``)
SNR_DEFINITION = (
    "S/N is the signal-to-noise ratio of a whole spectrum: the median over its pixels of the "
    "noisy flux divided by its noise sigma (the dataset's 'snr'), after all exposures.")

HOW_TO_READ = [
    "Each method gets the same noisy spectra (the validation set's stored noise) and returns "
    "its estimate of the noiseless spectrum. Its error at a pixel is the relative error "
    "|R| = |D - F| / F: the difference between the denoised flux D and the true noiseless flux "
    "F, as a fraction of F. |R| = 0.01 means the denoised spectrum is off by 1 % at that "
    "pixel. Smaller is better.",
    "'none' is the noisy spectrum itself: its |R| is simply the noise level, the number every "
    "denoiser has to beat. 'template' fits the very model that generated the spectra, so it is "
    "close to the best any method can do with this noise; a network near it has little left to "
    "gain. It is slow, so it may run on the first spectra only: every comparison with it uses "
    "exactly those spectra. Smoothing filters (Savitzky-Golay, Gaussian) remove noise but also "
    "fill in narrow absorption lines; PCA can only produce spectra that look like its training "
    "set.",
    SNR_DEFINITION + " Its bins (0-2, 2-5, 5-10, 10-20, 20-50, above 50 by default) widen with "
    "S/N because the values spread over orders of magnitude.",
    "Mean |R| summarises the typical error; the median and the 90th percentile show the spread "
    "over pixels (a few bad pixels, such as line cores or sky-line residuals, raise the mean and "
    "the 90 % value but not the median). Speed is spectra per second on this machine (networks: "
    "on the device named in the table).",
    "Each mean carries a bootstrap 68 % interval: the spectra of a bin are drawn again with "
    "replacement 400 times (a fixed seed, so the numbers repeat) and the 16th to 84th "
    "percentiles of the resampled means are given. A lead is called a tie, not a win, when "
    "either method's mean lies inside the other's interval, or when the 68 % interval of their "
    "difference on the same resampled spectra includes zero: the data cannot order them.",
    "In the parameter figure each column groups the spectra into bins of one quantity (S/N, "
    "effective temperature, surface gravity, metallicity, alpha enhancement); the top row is "
    "the mean |R| of all pixels in a bin, the bottom row the single worst pixel (its own panel: "
    "it is tens of times larger). Expect errors to fall as S/N rises. Empty bins are left out.",
]


# --------------------------------------------------------------------------- numbers


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.3g} %"


def _ci(iv, short: bool = False) -> str:
    """" (68 %: 1.2 to 1.3 %)" for a bootstrap interval of a fraction (``short``:
    " (1.2 to 1.3)", for table cells under a header that says so), "" without one."""
    if iv is None or not all(np.isfinite(iv)):
        return ""
    if short:
        return f" ({100 * iv[0]:.3g} to {100 * iv[1]:.3g})"
    return f" (68 %: {100 * iv[0]:.3g} to {_pct(iv[1])})"


def _fmt(x: float, unit: str, signed: bool = False, bare: bool = False) -> str:
    """A metric value in its unit: per cent, Angstrom or a plain number (``bare``: the
    number only, in that unit)."""
    if not np.isfinite(x):
        return "-"
    sign = "+" if signed and x > 0 else ""
    if unit == "percent":
        return f"{sign}{100 * x:.3g}" + ("" if bare else " %")
    if unit == "angstrom":
        return f"{sign}{x:.3g}" + ("" if bare else " A")
    return f"{sign}{x:.3g}"


def _rate(x: float) -> str:
    if not np.isfinite(x):
        return "n/a"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def method_stats(cube: xr.Dataset, spectra: Sequence[int] | None = None) -> list[dict]:
    """Per method: spectra denoised, mean / median / 90th percentile of |R| over pixels, speed.

    ``spectra`` restricts the statistics to those spectrum indices (e.g. the template subset).
    """
    n = cube.sizes["spectrum"]
    idx = np.arange(n) if spectra is None else np.asarray(spectra, dtype=np.int64)
    if idx.size > MAX_TABLE_SPECTRA:
        idx = idx[np.linspace(0, idx.size - 1, MAX_TABLE_SPECTRA).round().astype(np.int64)]
    info = method_info(cube)
    rows = []
    for j, name in enumerate(cube[METHOD_DIM].values):
        rel = cube["rel_err"].isel({METHOD_DIM: j, "spectrum": idx}).values
        vals = rel[np.isfinite(rel)]
        done = np.isfinite(cube["mean_rel_err"].isel({METHOD_DIM: j}).values)
        rows.append({
            "method": str(name),
            "kind": str(cube["denoiser_kind"].values[j]),
            "description": info.get(str(name), {}).get("description", ""),
            "n_spectra": int(done[idx].sum()) if spectra is not None else int(done.sum()),
            "mean": float(vals.mean()) if vals.size else float("nan"),
            "median": float(np.median(vals)) if vals.size else float("nan"),
            "p90": float(np.quantile(vals, 0.9)) if vals.size else float("nan"),
            "spectra_per_s": float(cube["spectra_per_s"].values[j]),
            "device": info.get(str(name), {}).get("device", "cpu"),
        })
    return rows


# --------------------------------------------------------------------------- comparison


def _candidates(stats: Sequence[dict]) -> list[dict]:
    """Methods that compete for 'best': networks and baselines, not 'none' nor the reference."""
    return [r for r in stats if r["kind"] != "reference" and r["method"] != "none"
            and np.isfinite(r["mean"])]


def _pooled_by_spectrum(cube: xr.Dataset, name: str, idx: np.ndarray) -> tuple:
    """Per spectrum of ``idx``: sum and count of the finite |R| of method ``name``."""
    rel = cube["rel_err"].sel({METHOD_DIM: name}).isel(spectrum=idx).values
    finite = np.isfinite(rel)
    return np.where(finite, rel, 0).sum(axis=1, dtype=np.float64), finite.sum(axis=1)


def _ratio_pct(a: float, b: float) -> str:
    """How much larger ``b`` is than ``a``: "12 % higher", or "3.5 times as high" from 2x."""
    if not (a > 0 and np.isfinite(b)):
        return "n/a"
    r = b / a
    return f"{r:.2g} times as high" if r >= 2 else f"{100 * (r - 1):.0f} % higher"


def comparison(cube: xr.Dataset, tree: xr.DataTree) -> dict:
    """Every number the report's answer and the terminal table need.

    Keys: ``stats`` (:func:`method_stats`), ``bins`` (labels of the S/N bins), ``counts``
    (spectra per S/N bin), ``by_bin`` (method -> mean |R| per S/N bin, over the spectra the
    method denoised), ``best`` (overall: best and runner-up rows), ``best_by_bin`` (per bin:
    None or (best, mean, runner-up, mean)), ``template`` (None or a dict: ``n`` spectra, their
    indices ``subset``, ``ratio`` method -> mean |R| / template's on those spectra,
    ``ratio_by_bin`` method -> per-bin ratio, ``counts`` template spectra per bin).
    """
    from specdenoise.evaluate.summary import bin_label

    stats = method_stats(cube)
    names = [r["method"] for r in stats]
    out: dict = {"stats": stats, "bins": [], "counts": [], "by_bin": {}, "best_by_bin": []}
    cands = sorted(_candidates(stats), key=lambda r: r["mean"])
    out["best"] = (cands[0] if cands else None, cands[1] if len(cands) > 1 else None)
    edges = None
    if "snr" in tree.children:
        ds = tree["snr"].to_dataset()
        lo, hi = ds["snr_lo"].values, ds["snr_hi"].values
        edges = np.append(lo, hi[-1])
        out["bins"] = [bin_label(a, b) for a, b in zip(lo, hi, strict=True)]
        counts = ds["n_spectra"].max(METHOD_DIM).values
        out["counts"] = [int(c) for c in counts]
        for m in names:
            out["by_bin"][m] = [float(x) for x in ds["mean"].sel({METHOD_DIM: m}).values]
        competing = [r["method"] for r in cands]
        for i in range(len(lo)):
            vals = sorted((out["by_bin"][m][i], m) for m in competing
                          if np.isfinite(out["by_bin"][m][i]))
            out["best_by_bin"].append(
                None if not vals else (vals[0][1], vals[0][0],
                                       *(vals[1][::-1] if len(vals) > 1 else (None, np.nan))))
    _add_intervals_and_ties(out, tree, names)
    out["template"] = None
    if "template" in names:
        subset = np.flatnonzero(np.isfinite(
            cube["mean_rel_err"].sel({METHOD_DIM: "template"}).values))
        if subset.size:
            subset = subset[:MAX_TABLE_SPECTRA]
            snr = cube["snr"].values[subset]
            which = (np.clip(np.searchsorted(edges, snr, side="left") - 1, 0, edges.size - 2)
                     if edges is not None else np.zeros(subset.size, np.int64))
            n_bins = 1 if edges is None else edges.size - 1
            sums = {m: _pooled_by_spectrum(cube, m, subset) for m in names}

            def mean_of(m, sel):
                s, c = sums[m][0][sel].sum(), sums[m][1][sel].sum()
                return s / c if c else np.nan

            t_all = mean_of("template", slice(None))
            t_bin = [mean_of("template", which == i) for i in range(n_bins)]
            out["template"] = {
                "n": int(subset.size), "subset": subset, "mean": float(t_all),
                "counts": [int((which == i).sum()) for i in range(n_bins)],
                "ratio": {m: float(mean_of(m, slice(None)) / t_all) for m in names},
                "ratio_by_bin": {m: [float(mean_of(m, which == i) / t_bin[i])
                                     if t_bin[i] > 0 else np.nan for i in range(n_bins)]
                                 for m in names},
            }
    return out


def _interval(ds: xr.Dataset, key: str, m: str) -> list[tuple[float, float]]:
    if f"{key}_p16" not in ds:
        return []
    lo = ds[f"{key}_p16"].sel({METHOD_DIM: m}).values
    hi = ds[f"{key}_p84"].sel({METHOD_DIM: m}).values
    return [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


def _is_tie(ds: xr.Dataset, key: str, m: str, best: str, i: int) -> bool:
    """Whether the lead of ``best`` over the runner-up ``m`` in bin ``i`` is within the
    bootstrap 68 % intervals: either mean lies inside the other's interval, or the interval of
    their difference on the same resampled spectra reaches 0."""
    if f"{key}_p16" not in ds:
        return False

    def at(name, var):
        return float(ds[var].sel({METHOD_DIM: name}).values[i])

    v_m, v_b = at(m, key), at(best, key)
    inside = any(at(a, f"{key}_p16") <= at(b, key) <= at(a, f"{key}_p84")
                 for a, b in ((best, m), (m, best)))
    lo = at(m, f"{key}_vs_best_p16") if f"{key}_vs_best_p16" in ds else np.nan
    return bool(np.isfinite(v_m) and np.isfinite(v_b) and (inside or lo <= 0))


def _add_intervals_and_ties(out: dict, tree: xr.DataTree, names: Sequence[str]) -> None:
    """``interval_by_bin`` (method -> per-bin 68 % interval of mean |R|), ``tie_by_bin`` (per
    bin: whether the runner-up is within the interval of the best), ``interval`` and ``tie``
    (the same over all spectra) and ``worse_than_input`` (see :func:`worse_than_input`)."""
    out["interval_by_bin"], out["tie_by_bin"] = {}, []
    out["interval"], out["tie"], out["worse_than_input"] = {}, False, []
    if "snr" in tree.children:
        ds = tree["snr"].to_dataset()
        out["interval_by_bin"] = {m: _interval(ds, "abs_rel", m) for m in names}
        for i, b in enumerate(out["best_by_bin"]):
            out["tie_by_bin"].append(bool(b is not None and b[2] is not None
                                          and _is_tie(ds, "abs_rel", b[2], b[0], i)))
        out["worse_than_input"] = worse_than_input(ds, out["bins"])
    if "all" in tree.children:
        ds = tree["all"].to_dataset()
        out["interval"] = {m: (_interval(ds, "abs_rel", m) or [(np.nan, np.nan)])[0]
                           for m in names}
        best, second = out["best"]
        out["tie"] = bool(second is not None
                          and _is_tie(ds, "abs_rel", second["method"], best["method"], 0))


#: a method worse than the noisy input is reported in every S/N bin holding at least this many
#: of the spectra it denoised (issue 18: "in every S/N bin with >= 30 spectra")
WORSE_MIN_SPECTRA = 30


def worse_than_input(ds: xr.Dataset, bins: Sequence[str]) -> list[dict]:
    """Methods (networks and baselines) whose mean |R| in an S/N bin of at least
    :data:`WORSE_MIN_SPECTRA` spectra is above the noisy input's ('none'): a list of dicts
    (``method``, ``bin``, ``n``, ``mean``, ``none``, ``clear``: True when the noisy input's
    mean is also below the method's 68 % interval)."""
    methods = [str(m) for m in ds[METHOD_DIM].values]
    if "none" not in methods:
        return []
    kinds = dict(zip(methods, (str(k) for k in ds["denoiser_kind"].values), strict=True)) \
        if "denoiser_kind" in ds.coords else {}
    none = ds["mean"].sel({METHOD_DIM: "none"}).values
    found = []
    for m in methods:
        if m == "none" or kinds.get(m) == "reference":
            continue
        mean = ds["mean"].sel({METHOD_DIM: m}).values
        n = ds["n_spectra"].sel({METHOD_DIM: m}).values
        lo = (ds["abs_rel_p16"].sel({METHOD_DIM: m}).values if "abs_rel_p16" in ds
              else np.full(mean.shape, np.nan))
        for i, label in enumerate(bins):
            if n[i] >= WORSE_MIN_SPECTRA and mean[i] > none[i]:
                found.append({"method": m, "bin": label, "n": int(n[i]), "mean": float(mean[i]),
                              "none": float(none[i]), "clear": bool(lo[i] > none[i])})
    return found


def _order(stats: Sequence[dict]) -> list[dict]:
    """Networks, then baselines, then the reference, each by mean |R|."""
    rank = {"network": 0, "baseline": 1, "reference": 2}
    return sorted(stats, key=lambda r: (rank.get(r["kind"], 1), r["method"] == "none",
                                        r["mean"] if np.isfinite(r["mean"]) else np.inf))


def comparison_table(comp: Mapping, intervals: bool = False) -> tuple[list[str], list[list[str]]]:
    """One table, every method and the template fit: mean |R| overall and per S/N bin, and its
    distance from the template fit on the spectra the template fit ran on. ``intervals``: each
    mean followed by its bootstrap 68 % interval (the report; the terminal keeps it short)."""
    tmpl = comp["template"]
    header = ["method", "kind", "spectra", "mean |R|", *[f"S/N {b}" for b in comp["bins"]]]
    if tmpl:
        header.append(f"x template ({tmpl['n']} spectra)")
    rows = []
    for r in _order(comp["stats"]):
        m = r["method"]
        ivs = comp.get("interval_by_bin", {}).get(m) or [None] * len(comp["by_bin"].get(m, []))
        row = [m, r["kind"], str(r["n_spectra"]),
               _pct(r["mean"]) + (_ci(comp.get("interval", {}).get(m), True) if intervals
                                  else "")]
        row += [(_pct(x) + (_ci(iv, True) if intervals else "")) if np.isfinite(x) else "-"
                for x, iv in zip(comp["by_bin"].get(m, []), ivs, strict=True)]
        if tmpl:
            row.append(f"{tmpl['ratio'][m]:.3g}" if np.isfinite(tmpl["ratio"][m]) else "n/a")
        rows.append(row)
    if comp["bins"]:
        rows.append(["spectra in bin", "", "", "", *[str(c) for c in comp["counts"]],
                     *([""] if tmpl else [])])
    return header, rows


def answer(comp: Mapping) -> list[str]:
    """The report's answer in sentences: best overall and per S/N bin, by how much, and how
    far each method is from the template-fit reference."""
    lines = []
    best, second = comp["best"]
    stats = {r["method"]: r for r in comp["stats"]}
    if best is None:
        lines.append("No denoiser was run (only the noisy input or the reference).")
    else:
        text = (f"Best overall: **{best['method']}**, mean |R| {_pct(best['mean'])}"
                f"{_ci(comp.get('interval', {}).get(best['method']))} over "
                f"{best['n_spectra']} spectra")
        if second is not None:
            text += (f"; next {second['method']} {_pct(second['mean'])} "
                     f"({_ratio_pct(best['mean'], second['mean'])})")
            if comp.get("tie"):
                text += (f": a tie, {best['method']}'s lead is within the bootstrap 68 % "
                         "interval")
        med = min(_candidates(comp["stats"]), key=lambda r: r["median"])
        if med["method"] != best["method"]:
            text += (f". By the median |R| {med['method']} is best ({_pct(med['median'])} "
                     f"against {best['method']}'s {_pct(best['median'])}): {best['method']}'s "
                     "lower mean comes from fewer large errors")
        lines.append(text + ".")
    per_bin, per_bin_all = [], []
    for label, n, b in zip(comp["bins"], comp["counts"], comp["best_by_bin"], strict=True):
        if b is None or n == 0:
            per_bin_all.append(None)
            continue
        name, mean, runner, rmean = b
        tie = bool(comp.get("tie_by_bin")) and comp["tie_by_bin"][len(per_bin_all)]
        per_bin_all.append(None)
        if tie:
            part = (f"S/N {label} ({n} spectra): a tie between **{name}** {_pct(mean)} and "
                    f"**{runner}** {_pct(rmean)} (within the 68 % interval)")
        else:
            part = f"S/N {label} ({n} spectra): **{name}** {_pct(mean)}"
            if runner is not None:
                part += f", next {runner} {_pct(rmean)} ({_ratio_pct(mean, rmean)})"
        per_bin.append(part)
    if per_bin:
        lines.append("Best by S/N: " + "; ".join(per_bin) + ".")
    if "none" in stats:
        lines.append(f"Without denoising the mean |R| is {_pct(stats['none']['mean'])}.")
    tmpl = comp["template"]
    if tmpl:
        n_all = max(r["n_spectra"] for r in comp["stats"])
        where = ("all" if tmpl["n"] == n_all else f"the first {tmpl['n']} of the {n_all}")
        others = [r["method"] for r in _order(comp["stats"])
                  if r["method"] not in ("template",) and np.isfinite(tmpl["ratio"][r["method"]])]
        dist = ", ".join(f"{m} {tmpl['ratio'][m]:.3g}x" for m in others)
        lines.append(f"The template-fit reference (the simulation's own model fitted to each "
                     f"spectrum) ran on {where} spectra: mean |R| {_pct(tmpl['mean'])}. On those "
                     f"same spectra each method's mean |R| is a multiple of it: {dist}.")
    elif "template" not in stats:
        lines.append("The template-fit reference was not run.")
    return lines


def _same_path(a, b) -> bool:
    if not a or not b:
        return False
    try:
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    except OSError:
        return str(a) == str(b)


def training_set_warnings(cube: xr.Dataset) -> list[str]:
    """Sentences for each method trained (or, for PCA, fitted) on the very dataset evaluated:
    the same path, or the same simulation (configuration hash, which covers the seed)."""
    data = cube.attrs.get("dataset")
    chash = cube.attrs.get("dataset_config_hash")
    seed = cube.attrs.get("dataset_seed")
    out = []
    for name, meta in method_info(cube).items():
        train = meta.get("train_data") if meta.get("kind") == "network" else meta.get("train")
        ident = meta.get("train_identity") or {}
        how = None
        if _same_path(train, data):
            how = f"the same store (`{data}`)"
        elif chash and ident.get("config_hash") == chash:
            how = (f"the same simulation (configuration hash `{chash}`"
                   + (f", seed {seed}" if seed is not None else "") + ")")
        if how:
            what = "trained" if meta.get("kind") == "network" else "fitted"
            out.append(f"**{name}** was {what} on the evaluation set itself: {how}. Its numbers "
                       "measure memory, not denoising of new spectra; evaluate on a set "
                       "simulated with another seed.")
    return out


def warnings(cube: xr.Dataset, comp: Mapping) -> list[str]:
    """The report's warnings in words: methods worse than the noisy input in an S/N bin of at
    least :data:`WORSE_MIN_SPECTRA` spectra, and an evaluation set that is a training set."""
    out = []
    for w in comp.get("worse_than_input", []):
        out.append(f"**{w['method']}** is worse than the noisy input at S/N {w['bin']} "
                   f"({w['n']} spectra): mean |R| {_pct(w['mean'])} against "
                   f"{_pct(w['none'])} without denoising"
                   + ("" if w["clear"] else " (within its bootstrap 68 % interval)")
                   + ". Do not use it on such spectra.")
    return out + training_set_warnings(cube)


def metric_table(tree: xr.DataTree, name: str, by: str = "snr",
                 methods: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """One registry metric per method and bin of ``by``: the value and its bootstrap 68 %
    interval; methods without a finite value are left out."""
    from specdenoise.evaluate.summary import bin_label
    from specdenoise.metrics import METRICS

    m = METRICS[name]
    ds = tree[by].to_dataset()
    labels = [bin_label(a, b) for a, b in zip(ds[f"{by}_lo"].values, ds[f"{by}_hi"].values,
                                              strict=True)]
    signed = m.better == "zero"
    rows = []
    for meth in (methods or [str(x) for x in ds[METHOD_DIM].values]):
        v = ds[name].sel({METHOD_DIM: meth}).values
        if not np.isfinite(v).any():
            continue
        lo = ds[f"{name}_p16"].sel({METHOD_DIM: meth}).values
        hi = ds[f"{name}_p84"].sel({METHOD_DIM: meth}).values
        cells = []
        for x, a, b in zip(v, lo, hi, strict=True):
            cell = _fmt(x, m.unit, signed)
            if np.isfinite(x) and np.isfinite(a) and np.isfinite(b):
                cell += (f" ({_fmt(a, m.unit, signed, bare=True)} to "
                         f"{_fmt(b, m.unit, signed, bare=True)})")
            cells.append(cell)
        rows.append([meth, *cells])
    if rows:
        rows.append(["spectra in bin", *[str(int(c)) for c in
                                         ds["n_spectra"].max(METHOD_DIM).values]])
    return ["method", *[f"{by.replace('snr', 'S/N')} {x}" for x in labels]], rows


def format_text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with aligned columns (first column left, the others right)."""
    cols = list(zip(header, *rows, strict=True))
    widths = [max(len(c) for c in col) for col in cols]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths),
                      *(line(r) for r in rows)])


def terminal_summary(cube: xr.Dataset, tree: xr.DataTree) -> str:
    """What ``evaluate`` and ``run`` print last: the answer and the comparison table."""
    import re

    comp = comparison(cube, tree)
    text = [re.sub(r"\*\*(.+?)\*\*", r"\1", ln) for ln in answer(comp)]
    warn = [re.sub(r"\*\*(.+?)\*\*|`(.+?)`", lambda m: m.group(1) or m.group(2),
                   "Warning: " + ln) for ln in warnings(cube, comp)]
    header, rows = comparison_table(comp)
    return "\n".join(["Mean |R| = |D - F| / F by method and S/N. " + SNR_DEFINITION,
                      "", format_text_table(header, rows), "", *text,
                      *([""] + warn if warn else [])])


# --------------------------------------------------------------------------- blocks


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple:
    return ("table", list(header), [list(r) for r in rows])


#: report sections of the registry's metric groups: title and what the reader should know
SECTIONS = {
    "error": ("Signed bias by S/N",
              "Is the denoised flux systematically high or low? The mean of (D - F) / F over "
              "the pixels of each bin (positive: too bright); 0 is unbiased. A bias as large "
              "as the mean |R| means the error is systematic, not noise."),
    "lines": ("Spectral lines by S/N",
              "The mean |R| hides how lines fare: they are a minority of pixels. Line pixels "
              "lie more than 3 % below the truth's continuum (the upper decile of the noiseless "
              "flux in 64-pixel segments, interpolated); 'structure kept' is the slope of the "
              "denoised spectrum's lines on the truth's after removing a smooth continuum "
              "(1: every line at its true depth, 0.8: lines 20 % too shallow); the Ca II "
              "triplet equivalent widths use the CaT bands of Cenarro et al. (2001), in "
              "vacuum, summed over the three lines, in Angstrom (A)."),
    "calibration": ("Calibration of the uncertainties",
                    "For methods that give a per-pixel uncertainty sigma_denoised: the fraction "
                    "of pixels whose error |D - F| is within 1 and 2 sigma (Gaussian: 0.683 and "
                    "0.954), the standard deviation of z = (D - F) / sigma (1 when the "
                    "uncertainty is right; above 1 it is too small) and the fraction of "
                    "spectra flagged suspect. Target on the default validation set, every "
                    "S/N bin: 0.63-0.73, 0.92-0.97 and 0.85-1.15. A suspect spectrum is one "
                    "whose denoised flux explains its noisy input worse than 99 % of the "
                    "validation spectra are explained (chi2_red: everywhere; chi2_peak: in a "
                    "few pixels, as a cosmic-ray hit or an emission line; the residual "
                    "summed over blocks of 4, 16 and 64 pixels: a misfit below the noise in "
                    "each pixel but coherent over many, as a line shape or a continuum the "
                    "network does not know; sky_excess: sky emission lines left in the "
                    "input). About 1 % of ordinary spectra are "
                    "flagged by design; for a flagged one, look at the residual flux - D and "
                    "mask, re-reduce or use the noisy input rather than trust D. In the S/N "
                    "bins where a network's calibration turned the input guard on (the "
                    "cube's method attributes, 'input_guard', with its strength), D is a "
                    "weighted mean of the network's output and the noisy input (weights from "
                    "their sigmas) and sigma that mean's."),
}


def _metric_sections(tree: xr.DataTree, by: str = "snr") -> list[tuple]:
    """A section per metric group of the registry: a table per metric (every metric the
    summary holds except the mean |R|, which the comparison table gives)."""
    from specdenoise.metrics import METRICS

    if by not in tree.children:
        return []
    have = [k for k in tree.attrs.get("metrics", []) if k in METRICS and k != "abs_rel"]
    out = []
    for group, (title, text) in SECTIONS.items():
        names = [k for k in have if METRICS[k].group == group]
        tables = [(k, metric_table(tree, k, by)) for k in names]
        tables = [(k, t) for k, t in tables if t[1]]
        if not tables:
            continue
        out += [("h2", title), ("p", text)]
        for k, (header, rows) in tables:
            out.append(("p", f"**{METRICS[k].label}**: {METRICS[k].description}."))
            out.append(_table(header, rows))
    return out


def _companion(title: str, cube: xr.Dataset, tree: xr.DataTree) -> list[tuple]:
    """A second evaluation set (e.g. the wide-S/N set of ``run --preset best``), shown beside
    the main one: its warnings, answer and comparison table."""
    comp = comparison(cube, tree)
    out = [("h2", title)]
    warn = warnings(cube, comp)
    out.append(("p", f"Dataset `{cube.attrs.get('dataset', '?')}` "
                     f"({cube.sizes['spectrum']} spectra). "
                     + ("Warnings:" if warn else "No warnings on this set.")))
    if warn:
        out.append(("ul", warn))
    out += [("p", t) for t in answer(comp)]
    header, rows = comparison_table(comp, intervals=True)
    out.append(_table(header, rows))
    return out


def _recovery_section(rows: Sequence[dict], bins: Sequence[float] | None) -> list[tuple]:
    """Stellar parameters from the template fit of the noisy input and of each network's
    denoised spectra, against the truth: bias and scatter overall and by S/N."""
    from specdenoise.evaluate.recovery import UNITS, recovery_stats
    from specdenoise.evaluate.summary import bin_label

    if not rows:
        return []
    stats = recovery_stats(rows)
    params = list(next(iter(stats.values())))
    n = max(c[0][0] for c in next(iter(stats.values())).values())
    out = [("h2", "Stellar parameters recovered by the template fit"),
           ("p", f"The template fit (the simulation's own model) run on the noisy input and "
                 f"on each network's denoised spectra, on the same {n} spectra; per parameter "
                 "the bias (median of fit - truth) and, after +-, the scatter (half the 16-84 "
                 "percentile range). A denoiser that helps gives a smaller scatter than the "
                 "noisy input without a larger bias.")]
    head = ["source", *[f"{p} [{UNITS[p]}]" for p in params]]
    body = [[s, *[f"{c[0][1]:+.3g} +- {c[0][2]:.3g}" if c[0][0] else "-"
                  for c in (stats[s][p] for p in params)]] for s in stats]
    out.append(_table(head, body))
    if bins is not None and len(bins) > 2:
        by = recovery_stats(rows, bins)
        labels = [bin_label(a, b) for a, b in zip(bins[:-1], bins[1:], strict=True)]
        for p in ("teff", "logg", "m_h"):
            if p not in params:
                continue
            out.append(("p", f"**{p}** by S/N (bias +- scatter, {UNITS[p]}):"))
            out.append(_table(["source", *[f"S/N {x}" for x in labels]],
                              [[s, *[f"{b:+.3g} +- {w:.3g} ({k})" if k else "-"
                                     for k, b, w in by[s][p]]] for s in by]))
    return out


def _blocks(cube: xr.Dataset, tree: xr.DataTree, figures: Mapping[str, Path],
            outputs: Mapping[str, Path], companions: Mapping | None = None,
            recovery: Sequence[dict] | None = None) -> list[tuple]:
    info = method_info(cube)
    comp = comparison(cube, tree)
    stats = comp["stats"]
    by_name = {r["method"]: r for r in stats}
    n = cube.sizes["spectrum"]
    b: list[tuple] = [("h1", "specdenoise evaluation report")]

    # warnings before anything else: what a reader must not miss
    warn = warnings(cube, comp)
    b.append(("h2", "Warnings"))
    if warn:
        b.append(("ul", warn))
    else:
        b.append(("p", "None: no method is worse than the noisy input in any S/N bin with at "
                       f"least {WORSE_MIN_SPECTRA} spectra, and no method was trained or "
                       "fitted on the evaluation set."))

    # the answer first: which method is best, overall and by S/N, and how far from the reference
    b.append(("h2", "Which denoiser is best"))
    b += [("p", t) for t in answer(comp)]
    b.append(("p", SNR_DEFINITION + " Every method and the template fit, mean |R| over all "
                   "pixels (the template fit: over the spectra it ran on); the last column "
                   "divides each method's mean |R| by the template fit's on exactly the spectra "
                   "the template fit ran on (1 = as good as the reference):"))
    header, rows = comparison_table(comp, intervals=True)
    b.append(_table(header, rows))
    b.append(("p", "In brackets: the bootstrap 68 % interval of each mean, in per cent "
                   "(spectra resampled with replacement, a fixed seed). A lead inside these "
                   "intervals is reported as a tie, not a win."))
    tmpl = by_name.get("template")
    nets = [r for r in stats if r["kind"] == "network" and np.isfinite(r["mean"])]
    if tmpl and tmpl["n_spectra"] and nets and tmpl["spectra_per_s"] > 0:
        # the network a user would pick (the most accurate), not the fastest one
        top = min(nets, key=lambda r: r["mean"])
        ratio = top["spectra_per_s"] / tmpl["spectra_per_s"]
        b.append(("p", f"Speed: the best network, {top['method']}, denoises "
                       f"{_rate(top['spectra_per_s'])} spectra per second ({top['device']}), "
                       f"{ratio:,.0f} times the template fit's "
                       f"{_rate(tmpl['spectra_per_s'])} fits per second."))
    if comp["template"] and any(c for c in comp["template"]["counts"]) and comp["bins"]:
        t = comp["template"]
        b.append(("p", f"Distance from the template fit by S/N, on the {t['n']} spectra it ran "
                       "on (mean |R| of the method / mean |R| of the template fit in the bin):"))
        rows = [[r["method"], *[(f"{x:.3g}" if np.isfinite(x) else "") for x in
                                t["ratio_by_bin"][r["method"]]]]
                for r in _order(stats) if r["method"] != "template"]
        rows.append(["template spectra in bin", *[str(c) for c in t["counts"]]])
        b.append(_table(["method", *[f"S/N {x}" for x in comp["bins"]]], rows))

    b += _metric_sections(tree)
    snr_edges = None
    if "snr" in tree.children:
        ds = tree["snr"].to_dataset()
        snr_edges = [*ds["snr_lo"].values.tolist(), float(ds["snr_hi"].values[-1])]
    b += _recovery_section(recovery or [], snr_edges)
    for title, (c_cube, c_tree) in (companions or {}).items():
        b += _companion(title, c_cube, c_tree)

    b.append(("h2", "How to read this report"))
    b += [("p", t) for t in HOW_TO_READ]

    b.append(("h2", "Methods"))
    b.append(_table(
        ["method", "kind", "spectra", "mean |R|", "median |R|", "90 % |R|", "spectra / s"],
        [[r["method"], r["kind"], str(r["n_spectra"]), _pct(r["mean"]), _pct(r["median"]),
          _pct(r["p90"]), _rate(r["spectra_per_s"])] for r in stats]))
    if n > MAX_TABLE_SPECTRA:
        b.append(("p", f"Median and 90 % values are computed on {MAX_TABLE_SPECTRA} of the {n} "
                       "spectra, evenly spaced; the summary files use all of them."))
    if tmpl and 0 < tmpl["n_spectra"] < n:
        subset = np.flatnonzero(np.isfinite(
            cube["mean_rel_err"].sel({METHOD_DIM: "template"}).values))
        sub = method_stats(cube, subset)
        b.append(("p", f"The template fit ran on {tmpl['n_spectra']} of the {n} spectra only "
                       "(it is slow). On exactly those spectra:"))
        b.append(_table(["method", "spectra", "mean |R|", "median |R|", "90 % |R|"],
                        [[r["method"], str(r["n_spectra"]), _pct(r["mean"]), _pct(r["median"]),
                          _pct(r["p90"])] for r in sub]))
    b.append(("h3", "What each method is"))
    b.append(("ul", [f"**{r['method']}** ({r['kind']}): {r['description']}" for r in stats]))

    b.append(("h2", "Figures"))
    captions = {
        "error_vs_snr": "Mean |R| against S/N for every method and the template fit (dashed; "
                        "on the spectra it ran on), one point per S/N bin at the mean S/N of "
                        "its spectra; beside it |R| on line pixels, the line structure kept "
                        "(1 = lines at full depth) and the signed bias. Error bars: bootstrap "
                        "68 % intervals.",
        "error_vs_parameters": "Mean |R| (top row) and the largest |R| (bottom row) in bins of "
                               "S/N, Teff, log g, [M/H] and [alpha/M], as in Fig. 2 of Pal & "
                               "Dobos (2025).",
        "examples": "Example spectra from low to high S/N: noisy input (light grey), noiseless "
                    "truth (black) and denoised estimates (the template fit in dark gold), "
                    "with the relative residual (D - F) / F below; right: the Ca II triplet. "
                    "Y ranges span the 1-99 percentiles, so rare spikes run off the panel.",
        "error_vs_wavelength": "Mean |R| over all spectra at each pixel: where in the arm "
                               "each method struggles (sky lines, strong stellar lines, edges).",
    }
    for key, path in figures.items():
        b.append(("fig", Path(path), captions.get(key, key)))

    b.append(("h2", "Dataset and provenance"))
    cfg = _json_attr(cube.attrs.get("dataset_config"))
    grid = _json_attr(cube.attrs.get("dataset_grid_provenance"))
    items = [f"dataset: `{cube.attrs.get('dataset', '?')}` ({n} spectra)"]
    if cfg:
        obs = cfg.get("observe", {})
        items += [
            f"simulated with seed {cfg.get('seed')}, grid `{cfg.get('grid')}`, noise model "
            f"`{cfg.get('noise')}` ({obs.get('noise_kind', '?')} noise), flux-calibration "
            f"distortion up to {100 * float(obs.get('distortion', 0)):.3g} %",
            f"configuration hash `{cube.attrs.get('dataset_config_hash', '?')}`, written by "
            f"specdenoise {cube.attrs.get('dataset_package_version', '?')}",
        ]
    if grid:
        items.append("grid provenance: " + ", ".join(f"{k} = `{v}`" for k, v in grid.items()))
    for name, meta in info.items():
        if meta.get("kind") == "network":
            items.append(f"model **{name}**: checkpoint `{meta.get('checkpoint')}`, "
                         f"{meta.get('epochs')} epochs, trained on `{meta.get('train_data')}`")
        elif name == "pca":
            items.append(f"PCA basis: {meta.get('k')} components from the noiseless flux of "
                         f"`{meta.get('train')}` ({meta.get('n_train')} spectra, "
                         f"{100 * meta.get('explained_variance', 0):.4g} % of its variance)")
        elif name == "template":
            items.append(f"template fit: polynomial order {meta.get('poly_order')}, "
                         f"{meta.get('library_nodes')} grid nodes in the coarse search, "
                         f"{meta.get('n_starts')} starts, "
                         f"set-up {meta.get('setup_seconds', 0):.1f} s")
    items.append(f"report written by specdenoise {__version__}")
    b.append(("ul", items))

    b.append(("h2", "Files"))
    b.append(("ul", [f"{k}: `{v}`" for k, v in outputs.items()]))
    b.append(("p", "Open the error cube in Python:"))
    b.append(("code", 'import xarray as xr\n'
                      f'cube = xr.open_zarr("{outputs.get("cube", "cube.zarr")}")\n'
                      '# mean |R| per method in S/N bins\n'
                      'cube.mean_rel_err.groupby_bins("snr", [0, 5, 10, 20, 50]).mean()\n'
                      '# one method, mean over spectra, against wavelength\n'
                      'cube.rel_err.sel(denoiser="none").mean("spectrum")\n'
                      '# the binned summary\n'
                      f'summary = xr.open_datatree("{outputs.get("summary", "summary.zarr")}", '
                      'engine="zarr")\nsummary["snr"].ds'))
    return b


def _json_attr(value) -> dict:
    if not value:
        return {}
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return {}
    return dict(value)


# --------------------------------------------------------------------------- rendering


def _html_inline(text: str) -> str:
    """Escape, then the two Markdown inlines we use: **bold** and `code`."""
    import re

    t = html.escape(text, quote=False)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def render_markdown(blocks: list[tuple], base: Path) -> str:
    out = []
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + blk[1])
        elif kind == "p":
            out.append(blk[1])
        elif kind == "ul":
            out.append("\n".join(f"- {x}" for x in blk[1]))
        elif kind == "table":
            def cells(row):  # a bare "|" (as in |R|) would end a cell
                return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

            head, rows = blk[1], blk[2]
            lines = [cells(head), "|" + "---|" * len(head)] + [cells(r) for r in rows]
            out.append("\n".join(lines))
        elif kind == "fig":
            rel = os.path.relpath(blk[1], base)
            out.append(f"![{blk[2]}]({Path(rel).as_posix()})\n\n*{blk[2]}*")
        elif kind == "code":
            out.append("```python\n" + blk[1] + "\n```")
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
code { font-size: 0.92em; }
"""


def render_html(blocks: list[tuple]) -> str:
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           "<title>specdenoise evaluation report</title>", f"<style>{_CSS}</style>",
           "</head><body>"]
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{_html_inline(blk[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_html_inline(blk[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_html_inline(x)}</li>" for x in blk[1])
                       + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_html_inline(h)}</th>" for h in blk[1])
            body = "".join("<tr>" + "".join(f"<td>{_html_inline(c)}</td>" for c in r)
                           + "</tr>" for r in blk[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "fig":
            data = base64.b64encode(Path(blk[1]).read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(blk[2])}' "
                       f"src='data:image/png;base64,{data}'>"
                       f"<figcaption>{_html_inline(blk[2])} "
                       f"(<code>{html.escape(Path(blk[1]).name)}</code>)</figcaption></figure>")
        elif kind == "code":
            out.append(f"<pre><code>{html.escape(blk[1])}</code></pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(cube: xr.Dataset, tree: xr.DataTree, figures: Mapping[str, Path], out_dir,
                 outputs: Mapping[str, Path] | None = None,
                 companions: Mapping[str, tuple] | None = None,
                 recovery: Sequence[dict] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` in ``out_dir``; returns their paths.

    ``companions``: title -> (cube, summary) of other evaluation sets shown beside this one
    (their own section each); ``recovery``: rows of the parameter-recovery table
    (:mod:`specdenoise.evaluate.recovery`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = _blocks(cube, tree, figures, dict(outputs or {}), companions, recovery)
    md, page = out_dir / "report.md", out_dir / "report.html"
    for path, text in ((md, render_markdown(blocks, out_dir)), (page, render_html(blocks))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return md, page


#: the figures an evaluation folder holds, in the report's order (``plots.make_figures``)
FIGURE_ORDER = ("error_vs_snr", "error_vs_parameters", "examples", "error_vs_wavelength")


def rewrite_with_companions(out_dir, companions: Mapping[str, Path]) -> tuple[Path, Path]:
    """Render again the report of the evaluation folder ``out_dir`` (``cube.zarr``,
    ``summary.zarr``, ``figures/``) with other evaluation folders shown beside it: title ->
    folder (e.g. the wide-S/N set of ``run --preset best``)."""
    from specdenoise.evaluate.cube import open_cube
    from specdenoise.evaluate.recovery import read_csv
    from specdenoise.evaluate.summary import open_summary

    out_dir = Path(out_dir)
    figures = {k: out_dir / "figures" / f"{k}.png" for k in FIGURE_ORDER
               if (out_dir / "figures" / f"{k}.png").is_file()}
    others = {title: (open_cube(Path(d) / "cube.zarr"), open_summary(Path(d) / "summary.zarr"))
              for title, d in companions.items()}
    outputs = {"cube": out_dir / "cube.zarr", "summary": out_dir / "summary.zarr",
               "summary CSV": out_dir / "summary.csv",
               **{f"{title}: report": Path(d) / "report.html"
                  for title, d in companions.items()}}
    table = out_dir / "parameters.csv"
    if table.is_file():
        outputs["parameters CSV"] = table
    return write_report(open_cube(out_dir / "cube.zarr"), open_summary(out_dir / "summary.zarr"),
                        figures, out_dir, outputs=outputs, companions=others,
                        recovery=read_csv(table) if table.is_file() else None)
