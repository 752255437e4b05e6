"""Figures of an evaluation (matplotlib, Agg backend: no display needed).

- :func:`plot_error_vs_parameters` -- like Fig. 2 of Pal & Dobos (2025): mean (solid) and maximum
  (dashed) |R| against S/N, Teff, log g and [M/H], one panel each, methods overlaid;
- :func:`plot_examples` -- like their Fig. 1: noisy, noiseless and denoised spectra of a few
  stars and the relative residual of each method, over the whole arm and around the Ca II
  triplet;
- :func:`plot_error_vs_wavelength` -- mean |R| over the spectra at each pixel.

Every method keeps one colour in every figure (:func:`method_colors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from specdenoise.evaluate.cube import METHOD_DIM  # noqa: E402

#: axis labels of the binning variables
LABELS = {
    "snr": "S/N (median flux / sigma)",
    "teff": "Teff [K]",
    "logg": "log g [dex]",
    "m_h": "[M/H] [dex]",
    "a_m": "[alpha/M] [dex]",
}
#: the zoom of the example figure: the Ca II infrared triplet, nm (vacuum)
ZOOM_NM = (848.0, 868.0)


def method_colors(names: Sequence[str]) -> dict[str, str]:
    """A fixed colour per method: grey for ``none``, black for ``template``, tab10 for others."""
    cycle = plt.get_cmap("tab10").colors
    out, k = {}, 0
    for name in names:
        if name == "none":
            out[name] = "0.6"
        elif name == "template":
            out[name] = "k"
        else:
            out[name] = matplotlib.colors.to_hex(cycle[k % len(cycle)])
            k += 1
    return out


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_error_vs_parameters(tree: xr.DataTree, path,
                             by: Sequence[str] = ("snr", "teff", "logg", "m_h")) -> Path:
    """Mean and max |R| per bin against each variable of ``by`` (one panel each)."""
    by = [b for b in by if b in tree.children]
    ncol = 2 if len(by) > 1 else 1
    nrow = -(-len(by) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.6 * nrow), squeeze=False)
    names = [str(n) for n in tree[by[0]].to_dataset()[METHOD_DIM].values] if by else []
    colors = method_colors(names)
    for ax, b in zip(axes.flat, by, strict=False):
        ds = tree[b].to_dataset()
        x = ds[f"{b}_bins"].values
        for name in names:
            d = ds.sel({METHOD_DIM: name})
            ax.plot(x, d["mean"].values, "o-", color=colors[name], label=f"{name} mean", ms=3)
            ax.plot(x, d["max"].values, "--", color=colors[name], lw=1, alpha=0.8)
        ax.set_yscale("log")
        ax.set_xlabel(LABELS.get(b, b))
        ax.set_ylabel("|R| = |D - F| / F")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(by):]:
        ax.set_visible(False)
    if by:
        handles = [plt.Line2D([], [], color=colors[n], marker="o", ms=3, label=n) for n in names]
        handles += [plt.Line2D([], [], color="0.3", ls="-", label="mean |R|"),
                    plt.Line2D([], [], color="0.3", ls="--", label="max |R|")]
        fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 5),
                   bbox_to_anchor=(0.5, 1.0 + 0.04 * (1 + len(handles) // 5)), frameon=False)
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
    """Noisy, clean and denoised flux and the relative residual (D - F) / F of a few spectra.

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
            top.plot(wave[sel], flux[sel], color="0.75", lw=0.6, label="noisy F_hat")
            top.plot(wave[sel], clean[sel], color="k", lw=1.0, label="clean F")
            for m in methods:
                den = s["denoised"].sel({METHOD_DIM: m}).values if "denoised" in s else None
                if den is None or not np.isfinite(den).any():
                    continue
                top.plot(wave[sel], den[sel], color=colors[m], lw=0.8, label=m)
                bottom.plot(wave[sel], (den[sel] - clean[sel]) / clean[sel], color=colors[m],
                            lw=0.6)
            bottom.axhline(0, color="k", lw=0.5)
            bottom.set_ylabel("(D - F) / F")
            top.set_ylabel("normalised flux")
            if col == 0:
                top.set_title(title, fontsize=9, loc="left")
            if k == 0 and col == 0:
                top.legend(fontsize=7, ncol=4, loc="lower left")
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
    for name in names:
        mean = cube["rel_err"].sel({METHOD_DIM: name}).mean("spectrum", skipna=True).values
        ax.plot(wave, mean, color=colors[name], lw=0.7, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("wavelength [nm, vacuum]")
    ax.set_ylabel("mean |R| over spectra")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=min(len(names), 6))
    fig.tight_layout()
    return _save(fig, path)


def make_figures(cube: xr.Dataset, tree: xr.DataTree, out_dir) -> dict[str, Path]:
    """All figures as PNG files in ``out_dir``; returns name -> path."""
    out_dir = Path(out_dir)
    return {
        "error_vs_parameters": plot_error_vs_parameters(tree, out_dir / "error_vs_parameters.png"),
        "examples": plot_examples(cube, out_dir / "examples.png"),
        "error_vs_wavelength": plot_error_vs_wavelength(cube, out_dir / "error_vs_wavelength.png"),
    }
