"""Figures of an evaluation (matplotlib, Agg backend: no display needed).

- :func:`plot_error_vs_snr` -- mean |R| against S/N, every denoiser and the template fit in one
  panel (log axes);
- :func:`plot_error_vs_parameters` -- like Fig. 2 of Pal & Dobos (2025): mean |R| (top row) and
  maximum |R| (bottom row, its own panels) against S/N, Teff, log g, [M/H] and [alpha/M];
- :func:`plot_examples` -- like their Fig. 1: noisy, noiseless and denoised spectra of a few
  stars and the relative residual of each method, over the whole arm and around the Ca II
  triplet;
- :func:`plot_error_vs_wavelength` -- mean |R| over the spectra at each pixel.

Every method keeps one colour in every figure (:func:`method_colors`); the noiseless truth is
black and no method shares its colour. Flux and residual axes span percentiles of what they
show, so one noise spike does not flatten everything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from specdenoise.evaluate.cube import METHOD_DIM  # noqa: E402

#: axis labels of the binning variables
LABELS = {
    "snr": "S/N (median over pixels of flux / sigma)",
    "teff": "Teff [K]",
    "logg": "log g [dex]",
    "m_h": "[M/H] [dex]",
    "a_m": "[alpha/M] [dex]",
}
#: plain words for the curves that are not methods
TRUTH_LABEL, NOISY_LABEL = "truth (noiseless)", "noisy input"
#: the zoom of the example figure: the Ca II infrared triplet, nm (vacuum)
ZOOM_NM = (848.0, 868.0)
#: colours kept for the truth and the template fit (no method takes them)
TRUTH_COLOR, TEMPLATE_COLOR, NOISY_COLOR = "k", "#b8860b", "0.6"


def method_colors(names: Sequence[str]) -> dict[str, str]:
    """A fixed colour per method: grey for ``none``, dark gold for ``template``, tab10 (without
    its grey) for the others; black stays the truth's."""
    cycle = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]
    out, k = {}, 0
    for name in names:
        if name == "none":
            out[name] = NOISY_COLOR
        elif name == "template":
            out[name] = TEMPLATE_COLOR
        else:
            out[name] = matplotlib.colors.to_hex(cycle[k % len(cycle)])
            k += 1
    return out


def method_label(name: str) -> str:
    """Legend words: 'none' is the noisy input, 'template' the template fit."""
    return {"none": "none (noisy input)", "template": "template fit"}.get(name, name)


def robust_limits(*arrays, lo: float = 0.5, hi: float = 99.5, pad: float = 0.08):
    """(bottom, top) spanning the ``lo``-``hi`` percentiles of the finite values, padded."""
    v = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    a, b = np.percentile(v, [lo, hi])
    span = (b - a) or abs(a) or 1.0
    return a - pad * span, b + pad * span


def percent_axis(ax, axis: str = "y") -> None:
    """Label a log axis of fractions in per cent (0.01 -> "1"), as the tables are."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{100 * v:.3g}")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(fmt)
    target.set_minor_formatter(FuncFormatter(
        lambda v, _: f"{100 * v:.2g}" if str(f"{100 * v:.2g}")[0] in "235" else ""))


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _names(tree: xr.DataTree, by: str) -> list[str]:
    return [str(n) for n in tree[by].to_dataset()[METHOD_DIM].values]


#: the panels of the S/N figure: summary variable, axis label, log scale, in per cent, the
#: value that means perfect (a reference line)
SNR_PANELS = (
    ("mean", "mean |R| (%)", True, True, None),
    ("line_abs_rel", "mean |R| on line pixels (%)", True, True, None),
    ("structure_kept", "line structure kept (1 = all)", False, False, 1.0),
    ("bias", "signed bias (D - F) / F (%)", False, True, 0.0),
)


def plot_error_vs_snr(tree: xr.DataTree, path, template_n: int | None = None) -> Path:
    """Mean |R| per S/N bin, every method and the template fit (log axes); beside it, when the
    summary has them, |R| on line pixels, the line structure kept and the signed bias, with
    bootstrap 68 % intervals as error bars."""
    ds = tree["snr"].to_dataset()
    names = _names(tree, "snr")
    colors = method_colors(names)
    x = ds["snr_bins"].values
    panels = [p for p in SNR_PANELS if p[0] in ds]
    ncol = 1 if len(panels) == 1 else 2
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(7.5 if ncol == 1 else 12, 4.8 * nrow / (
        1 if ncol == 1 else 1.3)), squeeze=False)
    for ax, (var, ylabel, logy, pct, ref) in zip(axes.ravel(), panels, strict=False):
        key = "abs_rel" if var == "mean" else var
        for name in names:
            y = ds[var].sel({METHOD_DIM: name}).values
            ok = np.isfinite(y) & (x > 0)
            label = method_label(name)
            if name == "template" and template_n:
                label += f" (on its {template_n} spectra)"
            err = None
            if f"{key}_p16" in ds:
                lo = ds[f"{key}_p16"].sel({METHOD_DIM: name}).values[ok]
                hi = ds[f"{key}_p84"].sel({METHOD_DIM: name}).values[ok]
                err = np.abs(np.stack([y[ok] - lo, hi - y[ok]]))
                err = np.where(np.isfinite(err), err, 0)
            ax.errorbar(x[ok], y[ok], yerr=err, marker="o", color=colors[name], ms=4,
                        capsize=2, ls="--" if name == "template" else "-", label=label)
        if ref is not None:
            ax.axhline(ref, color="k", lw=0.6)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        if logy:
            ax.set_yscale("log")
        if pct:
            percent_axis(ax)
        ax.set_xlabel(LABELS["snr"])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_error_vs_parameters(tree: xr.DataTree, path,
                             by: Sequence[str] = ("snr", "teff", "logg", "m_h", "a_m")) -> Path:
    """Mean |R| (top row) and max |R| (bottom row) per bin against each variable of ``by``."""
    by = [b for b in by if b in tree.children]
    ncol = max(len(by), 1)
    fig, axes = plt.subplots(2, ncol, figsize=(3.6 * ncol, 6.4), squeeze=False,
                             sharey="row")
    names = _names(tree, by[0]) if by else []
    colors = method_colors(names)
    for col, b in enumerate(by):
        ds = tree[b].to_dataset()
        x = ds[f"{b}_bins"].values
        for row, stat in enumerate(("mean", "max")):
            ax = axes[row, col]
            for name in names:
                y = ds[stat].sel({METHOD_DIM: name}).values
                ax.plot(x, y, "o-", color=colors[name], ms=3, lw=1.2 if row == 0 else 0.9)
            ax.set_yscale("log")
            percent_axis(ax)
            if b == "snr" and np.all(x > 0):
                ax.set_xscale("log")
            ax.grid(alpha=0.3, which="both")
            if row == 1:
                ax.set_xlabel(LABELS.get(b, b))
            if col == 0:
                ax.set_ylabel(f"{stat} |R| in the bin (%)")
    if by:
        handles = [plt.Line2D([], [], color=colors[n], marker="o", ms=3, label=method_label(n))
                   for n in names]
        fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 7),
                   bbox_to_anchor=(0.5, 1.0 + 0.03 * (1 + len(handles) // 7)), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def pick_examples(cube: xr.Dataset, n: int = 3) -> list[int]:
    """Indices of ``n`` spectra spread over S/N (low to high), preferring spectra that every
    method denoised (the template fit may cover only the first few)."""
    done = cube["mean_rel_err"].notnull().all(METHOD_DIM).values
    idx = np.flatnonzero(done)
    if idx.size == 0:
        idx = np.arange(cube.sizes["spectrum"])
    snr = cube["snr"].values[idx]
    order = idx[np.argsort(snr)]
    take = np.unique(np.linspace(0, order.size - 1, min(n, order.size)).round().astype(int))
    return [int(i) for i in order[take]]


def plot_examples(cube: xr.Dataset, path, spectra: Sequence[int] | None = None,
                  methods: Sequence[str] | None = None) -> Path:
    """Noisy input, truth and denoised flux and the relative residual (D - F) / F of a few
    spectra (y ranges: 1-99 percentiles of what the panel shows).

    Left: the whole arm; right: the Ca II triplet. ``methods`` default: the networks, ``pca`` and
    ``template`` (all but ``none`` when there is none of those).
    """
    names = [str(n) for n in cube[METHOD_DIM].values]
    colors = method_colors(names)
    if methods is None:
        kinds = dict(zip(names, (str(k) for k in cube["denoiser_kind"].values), strict=True))
        methods = [m for m in names if kinds[m] == "network" or m in ("pca", "template")]
        methods = methods or [m for m in names if m != "none"]
    spectra = list(spectra) if spectra is not None else pick_examples(cube)
    wave = cube["wave"].values
    zoom = (wave >= ZOOM_NM[0]) & (wave <= ZOOM_NM[1])
    fig, axes = plt.subplots(2 * len(spectra), 2, figsize=(12, 3.2 * len(spectra)),
                             gridspec_kw={"width_ratios": [2.2, 1],
                                          "height_ratios": [2.2, 1] * len(spectra)},
                             squeeze=False)
    for k, i in enumerate(spectra):
        s = cube.isel(spectrum=i)
        flux, clean = s["flux"].values, s["flux_clean"].values
        title = (f"spectrum {i}: S/N {float(s['snr']):.1f}, Teff {float(s['teff']):.0f} K, "
                 f"log g {float(s['logg']):.2f}, [M/H] {float(s['m_h']):+.2f}")
        for col, sel in enumerate((slice(None), zoom)):
            top, bottom = axes[2 * k, col], axes[2 * k + 1, col]
            top.plot(wave[sel], flux[sel], color="0.8", lw=0.6, label=NOISY_LABEL)
            top.plot(wave[sel], clean[sel], color=TRUTH_COLOR, lw=1.0, label=TRUTH_LABEL)
            residuals = []
            for m in methods:
                den = s["denoised"].sel({METHOD_DIM: m}).values if "denoised" in s else None
                if den is None or not np.isfinite(den).any():
                    continue
                top.plot(wave[sel], den[sel], color=colors[m], lw=0.8, label=method_label(m))
                res = 100 * (den[sel] - clean[sel]) / clean[sel]  # per cent
                residuals.append(res)
                bottom.plot(wave[sel], res, color=colors[m], lw=0.6)
            # percentiles, not extremes: a noise spike or a line core must not flatten the rest
            lim = robust_limits(clean[sel], flux[sel], lo=1, hi=99)
            if lim is not None:
                top.set_ylim(*lim)
            lim = robust_limits(*residuals, lo=1, hi=99) if residuals else None
            if lim is not None:
                half = max(abs(lim[0]), abs(lim[1]))
                bottom.set_ylim(-half, half)
            bottom.axhline(0, color="k", lw=0.5)
            bottom.set_ylabel("(D - F) / F (%)")
            top.set_ylabel("normalised flux")
            if col == 0:
                top.set_title(title, fontsize=9, loc="left")
            if k == 0 and col == 0:  # above the first panel, not over a spectrum
                top.legend(fontsize=7, ncol=6, loc="lower left", bbox_to_anchor=(0, 1.12),
                           frameon=False, borderaxespad=0)
            if k == len(spectra) - 1:
                bottom.set_xlabel("wavelength [nm, vacuum]")
    fig.tight_layout()
    return _save(fig, path)


def plot_error_vs_wavelength(cube: xr.Dataset, path) -> Path:
    """Mean |R| over all spectra at each pixel, per method (log scale)."""
    names = [str(n) for n in cube[METHOD_DIM].values]
    colors = method_colors(names)
    fig, ax = plt.subplots(figsize=(11, 3.8))
    wave = cube["wave"].values
    curves = []
    for name in names:
        mean = cube["rel_err"].sel({METHOD_DIM: name}).mean("spectrum", skipna=True).values
        curves.append(mean)
        ax.plot(wave, mean, color=colors[name], lw=0.7, label=method_label(name))
    ax.set_yscale("log")
    v = np.concatenate(curves)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size:  # a few line cores and sky lines reach far up: show them cut, not the rest squeezed
        ax.set_ylim(0.7 * np.percentile(v, 0.5), 1.5 * np.percentile(v, 99.8))
    ax.set_xlabel("wavelength [nm, vacuum]")
    ax.set_ylabel("mean |R| over spectra (%)")
    percent_axis(ax)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=min(len(names), 6))
    fig.tight_layout()
    return _save(fig, path)


def make_figures(cube: xr.Dataset, tree: xr.DataTree, out_dir) -> dict[str, Path]:
    """All figures as PNG files in ``out_dir``; returns name -> path."""
    out_dir = Path(out_dir)
    figures = {}
    if "snr" in tree.children:
        done = cube["mean_rel_err"].notnull().sum("spectrum")
        names = [str(x) for x in cube[METHOD_DIM].values]
        n_t = int(done.sel({METHOD_DIM: "template"})) if "template" in names else None
        figures["error_vs_snr"] = plot_error_vs_snr(tree, out_dir / "error_vs_snr.png", n_t)
    return {
        **figures,
        "error_vs_parameters": plot_error_vs_parameters(tree, out_dir / "error_vs_parameters.png"),
        "examples": plot_examples(cube, out_dir / "examples.png"),
        "error_vs_wavelength": plot_error_vs_wavelength(cube, out_dir / "error_vs_wavelength.png"),
    }
