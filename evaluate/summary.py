"""Summaries of an error cube: |R| statistics in bins of S/N and stellar parameters.

For each binning variable (``snr``, ``teff``, ``logg``, ``m_h``, ``a_m`` by default) the pixels
of all spectra that fall in a bin are pooled, per method, and summarised with xarray's
``groupby_bins`` (flox underneath)::

    cube.rel_err.groupby_bins("snr", edges).mean(dim=["spectrum", "wave"])

The result is an :class:`xarray.DataTree` with one group per binning variable; group ``snr`` holds

=================  ===================================  ==========================================
variable           dims                                 meaning
=================  ===================================  ==========================================
``mean``           (denoiser, snr_bins)                 mean |R| over the bin's pixels
``max``            (denoiser, snr_bins)                 largest |R| in the bin
``quantiles``      (denoiser, snr_bins, quantile)       quantiles of |R| over the bin's pixels
``n_spectra``      (denoiser, snr_bins)                 spectra in the bin that the method denoised
=================  ===================================  ==========================================

and, for every metric ``<name>`` of :data:`specdenoise.metrics.METRICS` the cube can give
(``abs_rel``, ``bias``, ``line_abs_rel``, ``cont_abs_rel``, ``structure_kept``, ``ca2_ew_err``,
``ca2_ew_bias``; with ``sigma_denoised`` in the cube ``cover_1sigma``, ``cover_2sigma``,
``z_std``; with ``suspect`` ``suspect_rate``), (denoiser, snr_bins) variables ``<name>``,
``<name>_p16`` and ``<name>_p84`` (a bootstrap 68 % interval: :data:`N_BOOT` resamples of the
bin's spectra, seeded, so the same cube gives the same numbers) and ``<name>_vs_best_p16`` /
``<name>_vs_best_p84`` (the interval of the method's score minus the best competitor's on the
same resamples: reaching 0, the two are tied; the report also calls a lead inside either
mean's own interval a tie). Group ``all`` holds the same metrics over all
spectra (one bin); it is not a binning variable and stays out of the CSV.

with coordinates ``snr_bins`` (bin centre; for an open-ended bin such as S/N > 50 the mean of
the values in it), ``snr_lo`` and ``snr_hi`` (edges; a bin holds ``lo < x <= hi``, the first one
also ``x = lo``). S/N is spread over orders of magnitude, so its default bins are
``SNR_EDGES`` (0, 2, 5, 10, 20, 50, infinity); the stellar parameters, drawn uniformly, get
``DEFAULT_N_BINS`` equal-width bins over their range. It is saved as Zarr (``xr.open_datatree(path,
engine="zarr")``) and as one long CSV table, a row per (binning variable, method, bin).
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from specdenoise import metrics, schema, stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.evaluate.cube import METHOD_DIM

DEFAULT_BY = ("snr", "teff", "logg", "m_h", "a_m")
DEFAULT_QUANTILES = (0.5, 0.9, 0.99)
DEFAULT_N_BINS = 8
#: default S/N bin edges: S/N is roughly log-distributed (equal-width bins put 130 of 300
#: spectra in the first bin and 2-3 in the last ones)
SNR_EDGES = (0.0, 2.0, 5.0, 10.0, 20.0, 50.0, np.inf)
DEFAULT_EDGES = {"snr": SNR_EDGES}
PIXELS = (schema.SPECTRUM_DIM, schema.WAVE_DIM)
#: bootstrap over spectra: resamples per bin and the fixed seed (with the binning variable and
#: the bin index) that makes every interval reproducible
N_BOOT = 400
BOOT_SEED = 18
#: spectra read at a time when the metrics are computed
METRIC_BLOCK = 512


def bin_edges(values: np.ndarray, spec: int | Sequence[float] = DEFAULT_N_BINS) -> np.ndarray:
    """Bin edges for ``values``: ``spec`` equal-width bins over their range, or ``spec`` itself.

    A constant variable gets one bin of width 1 around its value.
    """
    if isinstance(spec, (int, np.integer)):
        if spec < 1:
            raise SpecdenoiseError(f"the number of bins must be at least 1, got {spec}")
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise SpecdenoiseError("cannot bin a variable without finite values")
        lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            return np.array([lo - 0.5, lo + 0.5])
        return np.linspace(lo, hi, int(spec) + 1)
    edges = np.asarray(spec, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise SpecdenoiseError(f"bin edges must be at least two increasing numbers, got {spec}")
    return edges


def default_edges(name: str, values: np.ndarray) -> np.ndarray | int:
    """The default binning of ``name``: fixed edges (S/N) widened to hold every value, or a
    number of equal-width bins."""
    if name not in DEFAULT_EDGES:
        return DEFAULT_N_BINS
    edges = np.array(DEFAULT_EDGES[name], dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size and v.min() < edges[0]:  # a noisy spectrum may have a negative median S/N
        edges[0] = -np.inf
    return edges


def bin_label(lo: float, hi: float) -> str:
    """``"2-5"``, ``"> 50"`` or ``"<= 2"`` for a bin ``lo < x <= hi``."""
    if np.isinf(hi):
        return f"> {lo:g}"
    if np.isinf(lo):
        return f"<= {hi:g}"
    return f"{lo:g}-{hi:g}"


def bin_centres(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin midpoints; an open-ended bin gets the mean of its values (else its finite edge)."""
    lo, hi = edges[:-1], edges[1:]
    with np.errstate(invalid="ignore"):
        centre = 0.5 * (lo + hi)
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    for i in np.flatnonzero(~np.isfinite(centre)):
        inside = v[((v > lo[i]) | ((i == 0) & (v == lo[i]))) & (v <= hi[i])]
        centre[i] = inside.mean() if inside.size else (lo[i] if np.isfinite(lo[i]) else hi[i])
    return centre


def parse_bins(items: Sequence[str] | None) -> dict[str, int | list[float]]:
    """``--bins`` values: ``N`` (bins for every variable) or ``NAME=N`` or ``NAME=e0,e1,...``.

    The key ``"*"`` holds the default for variables not named.
    """
    out: dict[str, int | list[float]] = {}
    for item in items or ():
        name, _, text = item.rpartition("=")
        name = name.strip() or "*"
        try:
            parts = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise SpecdenoiseError(
                f"--bins {item!r}: expected N, NAME=N or NAME=e0,e1,...") from None
        if len(parts) == 1 and float(parts[0]).is_integer() and "," not in text:
            out[name] = int(parts[0])
        elif len(parts) >= 2:
            out[name] = parts
        else:
            raise SpecdenoiseError(f"--bins {item!r}: expected N, NAME=N or NAME=e0,e1,...")
    return out


def _stats(rel: xr.DataArray, done: xr.DataArray, by: str, edges: np.ndarray,
           quantiles: Sequence[float]) -> xr.Dataset:
    """Statistics of one method's in-memory ``rel_err`` (spectrum, wave) in bins of ``by``."""
    g = rel.groupby_bins(by, edges, include_lowest=True)
    stats = xr.Dataset({
        "mean": g.mean(dim=PIXELS),
        "max": g.max(dim=PIXELS),
        "quantiles": g.quantile(list(quantiles), dim=PIXELS),
        # an empty bin sums to NaN here, not 0
        "n_spectra": done.groupby_bins(by, edges, include_lowest=True).sum(
            dim=schema.SPECTRUM_DIM).fillna(0),
    })
    # every bin present (an empty one as NaN), in order; intervals become plain numbers
    dim = f"{by}_bins"
    mid = np.array([iv.mid for iv in stats[dim].values])
    pos = np.clip(np.searchsorted(edges, mid) - 1, 0, edges.size - 2)
    stats = stats.assign_coords({dim: pos}).reindex({dim: np.arange(edges.size - 1)})
    stats["n_spectra"] = stats["n_spectra"].fillna(0).astype(np.int64)
    return stats


def _finish(ds: xr.Dataset, by: str, edges: np.ndarray, cube: xr.Dataset) -> xr.Dataset:
    dim = f"{by}_bins"
    ds = ds.assign_coords({
        dim: (dim, bin_centres(cube[by].values, edges),
              {"long_name": f"{by} bin centre", "units": schema.UNITS.get(by, "")}),
        f"{by}_lo": (dim, edges[:-1]),
        f"{by}_hi": (dim, edges[1:]),
        METHOD_DIM: ds[METHOD_DIM].values.astype(object),
    })
    if "denoiser_kind" in cube.coords:  # methods were summarised in the cube's order
        ds = ds.assign_coords(denoiser_kind=(METHOD_DIM,
                                             cube["denoiser_kind"].values.astype(object)))
    ds["mean"].attrs = {"long_name": f"mean |R| over the pixels of the spectra in the {by} bin"}
    ds["max"].attrs = {"long_name": f"largest |R| in the {by} bin"}
    ds["quantiles"].attrs = {"long_name": f"quantiles of |R| over the pixels in the {by} bin"}
    ds["n_spectra"].attrs = {"long_name": "spectra in the bin denoised by the method"}
    return ds


def available_metrics(cube: xr.Dataset) -> list[str]:
    """The registry's metrics this cube can give (``metrics.METRICS`` order): those whose
    ``needs`` the cube carries (``z`` stands in for ``sigma_denoised``)."""
    have = set(cube.data_vars)
    if "z" in have:
        have.add("sigma_denoised")
    return [name for name, m in metrics.METRICS.items() if set(m.needs) <= have]


def _per_method(cube: xr.Dataset, name: str, j: int, lo: int, hi: int):
    """Rows lo:hi of a (denoiser, spectrum[, wave]) variable for method j, or None."""
    if name not in cube.data_vars:
        return None
    var = cube[name]
    if METHOD_DIM not in var.dims:
        return var.isel({schema.SPECTRUM_DIM: slice(lo, hi)}).values
    return var.isel({METHOD_DIM: j, schema.SPECTRUM_DIM: slice(lo, hi)}).values


def metric_parts(cube: xr.Dataset, names: Sequence[str] | None = None,
                 block: int = METRIC_BLOCK) -> dict[str, dict[str, np.ndarray]]:
    """Per method and metric, the per-spectrum additive statistics (``Metric.parts``):
    method -> metric -> (n_spectrum, k) float64.

    Reads the cube ``block`` spectra at a time; the truth's continuum and line pixels are
    computed once per block for all methods."""
    names = available_metrics(cube) if names is None else list(names)
    n = cube.sizes[schema.SPECTRUM_DIM]
    chunks = cube["rel_err"].encoding.get("chunks") if "rel_err" in cube else None
    if chunks:  # whole stored chunks: each is read once
        block = max(1, min(int(chunks[1]), 1024))
    wave = cube[schema.WAVE_DIM].values
    methods = [str(m) for m in cube[METHOD_DIM].values]
    out: dict[str, dict[str, list]] = {m: {k: [] for k in names} for m in methods}
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        clean = cube["flux_clean"].isel({schema.SPECTRUM_DIM: slice(lo, hi)}).values
        clean = clean.astype(np.float64)
        shared: dict = {}
        for j, m in enumerate(methods):
            rel = _per_method(cube, "rel_err", j, lo, hi)
            den = _per_method(cube, "denoised", j, lo, hi)
            sig = _per_method(cube, "sigma_denoised", j, lo, hi)
            z = _per_method(cube, "z", j, lo, hi)
            # a method without an uncertainty (all NaN) has no flag rate either
            has_sigma = any(a is not None and np.isfinite(a).any() for a in (sig, z))
            b = metrics.Block(
                denoised=None if den is None else den.astype(np.float64), clean=clean,
                good=np.isfinite(rel), wave=wave, rel_err=rel,
                sigma_denoised=sig, z=z,
                suspect=(_per_method(cube, "suspect", j, lo, hi)
                         if has_sigma or (sig is None and z is None) else None),
                shared=shared)
            for k in names:
                out[m][k].append(metrics.METRICS[k].parts(b))
    return {m: {k: np.concatenate(v, axis=0) for k, v in d.items()} for m, d in out.items()}


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value as ``groupby_bins(include_lowest=True)`` places it (lo < x <= hi,
    the first bin also x = lo); -1 outside every bin."""
    v = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(edges, v, side="left") - 1
    idx[v == edges[0]] = 0
    idx[~np.isfinite(v) | (idx < 0) | (idx > edges.size - 2)] = -1
    return idx


def _score(metric: metrics.Metric, v):
    """A number where lower is better, for ranking methods by ``metric``."""
    return {"lower": v, "higher": -v, "zero": np.abs(v), "one": np.abs(v - 1)}[metric.better]


def _competitors(cube: xr.Dataset) -> list[str]:
    """Methods that compete for 'best': networks and baselines, not 'none' nor a reference."""
    kinds = (cube["denoiser_kind"].values if "denoiser_kind" in cube.coords
             else np.array(["baseline"] * cube.sizes[METHOD_DIM]))
    return [str(m) for m, k in zip(cube[METHOD_DIM].values, kinds, strict=True)
            if k != "reference" and m != "none"]


def metric_stats(cube: xr.Dataset, parts: Mapping[str, Mapping[str, np.ndarray]],
                 which: np.ndarray, n_bins: int, seed_key: str,
                 n_boot: int = N_BOOT) -> dict[str, np.ndarray]:
    """Per metric in bins (``which``: the bin of each spectrum, -1 for none): the value, the
    bootstrap 68 % interval (``_p16``, ``_p84``) and, for ranked metrics, the 68 % interval of
    the method's score minus the best competitor's on the same resamples (``_vs_best_p16``,
    ``_vs_best_p84``; an interval that reaches 0 is a tie). Arrays (denoiser, bin)."""
    methods = list(parts)
    comp = [m for m in _competitors(cube) if m in parts]
    names = list(next(iter(parts.values()))) if parts else []
    shape = (len(methods), n_bins)
    out = {f"{k}{s}": np.full(shape, np.nan) for k in names
           for s in ("", "_p16", "_p84", "_vs_best_p16", "_vs_best_p84")}
    for i in range(n_bins):
        rows = np.flatnonzero(which == i)
        seed = [BOOT_SEED, zlib.crc32(seed_key.encode()), i]
        w = metrics.bootstrap_weights(rows.size, n_boot, seed)
        for k in names:
            mt = metrics.METRICS[k]
            for a, m in enumerate(methods):
                v, lo, hi = metrics.bootstrap(parts[m][k][rows], mt.finish, w)
                out[k][a, i], out[f"{k}_p16"][a, i], out[f"{k}_p84"][a, i] = v, lo, hi
            if mt.better is None or not comp:
                continue
            scores = {m: _score(mt, out[k][methods.index(m), i]) for m in comp}
            ranked = [m for m in comp if np.isfinite(scores[m])]
            if not ranked:
                continue
            best = min(ranked, key=scores.get)
            pb = parts[best][k][rows]
            if w.size == 0:
                continue
            sb = _score(mt, mt.finish(w @ pb))
            for a, m in enumerate(methods):
                if m == best:
                    out[f"{k}_vs_best_p16"][a, i] = out[f"{k}_vs_best_p84"][a, i] = 0.0
                    continue
                d = _score(mt, mt.finish(w @ parts[m][k][rows])) - sb
                d = d[np.isfinite(d)]
                if d.size:
                    lo, hi = np.quantile(d, (0.16, 0.84))
                    out[f"{k}_vs_best_p16"][a, i], out[f"{k}_vs_best_p84"][a, i] = lo, hi
    return out


def _metric_vars(stats: Mapping[str, np.ndarray], dim: str) -> dict:
    out = {}
    for key, arr in stats.items():
        name = key.split("_p16")[0].split("_p84")[0].split("_vs_best")[0]
        m = metrics.METRICS[name]
        unit = {"percent": "1", "angstrom": "Angstrom"}.get(m.unit, m.unit)
        what = {"": m.description, "_p16": f"16th percentile of the bootstrap of {name}",
                "_p84": f"84th percentile of the bootstrap of {name}",
                "_vs_best_p16": f"16th percentile of the bootstrap of the method's {name} "
                                "score minus the best competitor's (<= 0 <= p84: a tie)",
                "_vs_best_p84": f"84th percentile of the bootstrap of the method's {name} "
                                "score minus the best competitor's"}[key[len(name):]]
        out[key] = ((METHOD_DIM, dim), arr, {"long_name": what, "units": unit})
    return out


def summarize(cube: xr.Dataset, bins: Mapping[str, int | Sequence[float]] | None = None,
              by: Sequence[str] = DEFAULT_BY,
              quantiles: Sequence[float] = DEFAULT_QUANTILES) -> xr.DataTree:
    """Statistics of |R| per method in bins of each variable of ``by`` (see module docstring).

    ``bins`` maps a variable to a number of bins or to explicit edges; ``"*"`` is the default
    for the others (otherwise :func:`default_edges`: ``SNR_EDGES`` for S/N, ``DEFAULT_N_BINS``
    equal-width bins over the data's range for the rest).
    """
    bins = dict(bins or {})
    unknown = [k for k in bins if k != "*" and k not in by]
    if unknown:
        raise SpecdenoiseError(f"--bins names {unknown[0]!r}, which is not summarised; "
                               f"choose from {', '.join(by)}")
    q = [float(x) for x in quantiles]
    if any(not 0 <= x <= 1 for x in q):
        raise SpecdenoiseError(f"quantiles must lie in [0, 1], got {quantiles}")
    edges = {}
    for name in by:
        if name not in cube.coords:
            raise SpecdenoiseError(f"the error cube has no per-spectrum coordinate {name!r}")
        values = cube[name].values
        spec = bins.get(name, bins.get("*", default_edges(name, values)))
        edges[name] = bin_edges(values, spec)
    parts: dict[str, list[xr.Dataset]] = {name: [] for name in by}
    by_coords = {name: cube[name].compute() for name in by}
    for method in cube[METHOD_DIM].values:
        # one method in memory at a time, (spectrum, wave) float32, with only the coordinates
        # binned over (fewer coordinates: less work for every group-by)
        rel = cube["rel_err"].sel({METHOD_DIM: method}).reset_coords(drop=True).load()
        rel = rel.assign_coords(by_coords)
        done = cube["mean_rel_err"].sel({METHOD_DIM: method}).reset_coords(drop=True)
        done = done.notnull().load().assign_coords(by_coords)
        for name in by:
            stats = _stats(rel, done, name, edges[name], q)
            parts[name].append(stats.expand_dims({METHOD_DIM: [method]}))
    groups = {name: _finish(xr.concat(parts[name], dim=METHOD_DIM), name, edges[name], cube)
              for name in by}
    # the registry's metrics, with bootstrap intervals over spectra (and an "all" group: one
    # bin holding every spectrum, for the overall numbers)
    mparts = metric_parts(cube)
    for name in by:
        which = _bin_index(cube[name].values, edges[name])
        stats = metric_stats(cube, mparts, which, edges[name].size - 1, name)
        groups[name] = groups[name].assign(_metric_vars(stats, f"{name}_bins"))
    n = cube.sizes[schema.SPECTRUM_DIM]
    done = cube["mean_rel_err"].notnull().sum(schema.SPECTRUM_DIM).values.astype(np.int64)
    everything = xr.Dataset(
        {"n_spectra": ((METHOD_DIM, "all_bins"), done[:, None]),
         **_metric_vars(metric_stats(cube, mparts, np.zeros(n, np.int64), 1, "all"),
                        "all_bins")},
        coords={METHOD_DIM: groups[by[0]][METHOD_DIM].values if by else
                cube[METHOD_DIM].values.astype(object), "all_bins": [0]})
    groups["all"] = everything
    tree = xr.DataTree.from_dict(groups)
    tree.attrs = {
        "definition": "|R| = |D[F_hat] - F| / F; statistics over all pixels of the spectra in "
                      "a bin",
        "quantiles": q,
        "by": list(by),
        "metrics": [k for k in metrics.METRICS if k in groups["all"]],
        "bootstrap": f"{N_BOOT} resamples of the spectra of each bin with replacement, "
                     f"numpy default_rng([{BOOT_SEED}, crc32(variable), bin]); _p16 and _p84 are "
                     "the 16th and 84th percentiles (a 68 % interval)",
        "dataset": cube.attrs.get("dataset", ""),
    }
    return tree


def to_rows(tree: xr.DataTree) -> list[dict]:
    """The summary as a long table: one row per (binning variable, method, bin)."""
    rows = []
    q = tree.attrs.get("quantiles", [])
    for by in tree.attrs.get("by", list(tree.children)):
        ds = tree[by].to_dataset()
        dim = f"{by}_bins"
        for name in ds[METHOD_DIM].values:
            d = ds.sel({METHOD_DIM: name})
            for i in range(ds.sizes[dim]):
                row = {
                    "by": by, "denoiser": str(name),
                    "bin_lo": float(d[f"{by}_lo"][i]), "bin_hi": float(d[f"{by}_hi"][i]),
                    "bin_centre": float(d[dim][i]), "n_spectra": int(d["n_spectra"][i]),
                    "mean": float(d["mean"][i]), "max": float(d["max"][i]),
                }
                for j, qq in enumerate(q):
                    row[f"q{qq * 100:g}"] = float(d["quantiles"][i, j])
                for k in tree.attrs.get("metrics", []):
                    for suffix in ("", "_p16", "_p84"):
                        if f"{k}{suffix}" in d:
                            row[f"{k}{suffix}"] = float(d[f"{k}{suffix}"][i])
                rows.append(row)
    return rows


def write_summary(tree: xr.DataTree, zarr_path, csv_path, *, overwrite: bool = False) -> None:
    """Save the summary as Zarr (a DataTree) and as CSV, each written then renamed into place.

    ``overwrite`` replaces only an earlier summary store and a CSV file.
    """
    zarr_path, csv_path = Path(zarr_path), Path(csv_path)
    stores.check_output(zarr_path, stores.SUMMARY, overwrite=overwrite)
    stores.check_output(csv_path, None, overwrite=overwrite)
    tree = tree.copy()
    tree.attrs = {**tree.attrs, stores.KIND_ATTR: stores.SUMMARY.name, "complete": True}
    with stores.assembled(zarr_path, stores.SUMMARY, overwrite=overwrite) as tmp:
        tree.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True)
    rows = to_rows(tree)

    def write_csv(tmp_csv: Path) -> None:
        with open(tmp_csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["by"])
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})

    stores.write_file(csv_path, write_csv, overwrite=overwrite)


def open_summary(path) -> xr.DataTree:
    """Open a saved summary (one group per binning variable)."""
    path = Path(path)
    if not path.exists():
        raise SpecdenoiseError(f"summary {path} does not exist")
    return xr.open_datatree(path, engine="zarr")
