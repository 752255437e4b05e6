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

HOW_TO_READ = [
    "Each method gets the same noisy spectra (the validation set's stored noise) and returns "
    "its estimate of the noiseless spectrum. Its error at a pixel is the relative error "
    "|R| = |D - F| / F: the difference between the denoised flux D and the true noiseless flux "
    "F, as a fraction of F. |R| = 0.01 means the denoised spectrum is off by 1 % at that "
    "pixel. Smaller is better.",
    "'none' is the noisy spectrum itself: its |R| is simply the noise level, the number every "
    "denoiser has to beat. 'template' fits the very model that generated the spectra, so it is "
    "close to the best any method can do with this noise; a network near it has little left to "
    "gain. Smoothing filters (Savitzky-Golay, Gaussian) remove noise but also fill in narrow "
    "absorption lines; PCA can only produce spectra that look like its training set.",
    "Mean |R| summarises the typical error; the median and the 90th percentile show the spread "
    "over pixels (a few bad pixels, such as line cores or sky-line residuals, raise the mean and "
    "the 90 % value but not the median). Speed is spectra per second on this machine (networks: "
    "on the device named in the table).",
    "In the parameter figure each panel groups the spectra into bins of one quantity (S/N, "
    "effective temperature, surface gravity, metallicity); solid lines are the mean |R| of all "
    "pixels in a bin and dashed lines the single worst pixel. Expect errors to fall as S/N "
    "rises. Empty bins are left out.",
]


# --------------------------------------------------------------------------- numbers


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.3g} %"


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


# --------------------------------------------------------------------------- blocks


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple:
    return ("table", list(header), [list(r) for r in rows])


def _blocks(cube: xr.Dataset, tree: xr.DataTree, figures: Mapping[str, Path],
            outputs: Mapping[str, Path]) -> list[tuple]:
    info = method_info(cube)
    stats = method_stats(cube)
    by_name = {r["method"]: r for r in stats}
    n = cube.sizes["spectrum"]
    b: list[tuple] = [("h1", "specdenoise evaluation report")]

    # headline
    nets = [r for r in stats if r["kind"] == "network"]
    lines = []
    if nets:
        best = min(nets, key=lambda r: r["mean"])
        lines.append(f"Best network: **{best['method']}**, mean |R| = {_pct(best['mean'])} "
                     f"over {best['n_spectra']} spectra.")
    if "none" in by_name:
        lines.append(f"Without denoising the mean |R| is {_pct(by_name['none']['mean'])}.")
    tmpl = by_name.get("template")
    if tmpl and tmpl["n_spectra"]:
        lines.append(f"The template-fit reference reaches {_pct(tmpl['mean'])} "
                     f"(first {tmpl['n_spectra']} spectra) at {_rate(tmpl['spectra_per_s'])} "
                     "fits per second.")
        if nets:
            fast = max(nets, key=lambda r: r["spectra_per_s"])
            ratio = fast["spectra_per_s"] / tmpl["spectra_per_s"]
            lines.append(f"Network {fast['method']} denoises {_rate(fast['spectra_per_s'])} "
                         f"spectra per second ({fast['device']}), {ratio:,.0f} times the "
                         "template fit's rate.")
    b.append(("p", " ".join(lines) or "No method was run."))

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
        "error_vs_parameters": "Mean (solid) and maximum (dashed) |R| in bins of S/N, Teff, "
                               "log g and [M/H], as in Fig. 2 of Pal & Dobos (2025).",
        "examples": "Example spectra from low to high S/N: noisy input (grey), noiseless truth "
                    "(black) and denoised estimates, with the relative residual (D - F) / F "
                    "below; right: the Ca II triplet.",
        "error_vs_wavelength": "Mean |R| over all spectra at each pixel: where in the arm "
                               "each method struggles (sky lines, strong stellar lines, edges).",
    }
    for key, path in figures.items():
        b.append(("fig", Path(path), captions.get(key, key)))

    if "snr" in tree.children:
        ds = tree["snr"].to_dataset()
        names = [str(x) for x in ds[METHOD_DIM].values]
        rows = []
        for i in range(ds.sizes["snr_bins"]):
            lo, hi = float(ds["snr_lo"][i]), float(ds["snr_hi"][i])
            cells = [f"{lo:.3g} - {hi:.3g}",
                     str(int(ds["n_spectra"].sel({METHOD_DIM: names[0]})[i]))]
            cells += [_pct(float(ds["mean"].sel({METHOD_DIM: m})[i])) for m in names]
            rows.append(cells)
        b.append(("h2", "Mean |R| by S/N"))
        b.append(_table(["S/N", "spectra", *names], rows))

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
                 outputs: Mapping[str, Path] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = _blocks(cube, tree, figures, dict(outputs or {}))
    md, page = out_dir / "report.md", out_dir / "report.html"
    for path, text in ((md, render_markdown(blocks, out_dir)), (page, render_html(blocks))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return md, page
