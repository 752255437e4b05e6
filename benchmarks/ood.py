"""Out-of-distribution spectra on purpose: does the ``suspect`` flag catch what the network
gets wrong?

Every kind is made by the project's own forward model (``engine.forward_model``: the grid
interpolator and the PFS observer of the default simulation config), changed in one way:

    in_domain    as the training data (default simulation config)
    lsf_wide     line-spread function 1.5 times wider (an observer built with 1.5 x the FWHM)
    tilt         the model spectrum times a linear continuum tilt of 10-30 % end to end
                 (either sign), beyond the 2 % calibration distortion of the training data
    rv_high      radial velocity 700-1000 km/s (either sign); training is clipped at 600
    hot          Teff 8000-11000 K, hotter than the grid (3500-7500 K): rendered by the
                 built-in grid's own generator (``builtin_grid.synthesize``, the same physics
                 the grid nodes come from) rather than extrapolated from the interpolator,
                 then observed as usual. With a BOSZ grid these would be real hotter models.
    emission     1-3 emission lines (Gaussian, 0.02 nm wide before the LSF, peak 30-100 % of
                 the continuum) added to the model spectrum before observing it
    cosmic       1-4 cosmic-ray hits after observation: 1-2 pixels each, 10-200 sigma
                 (log-uniform); the truth is the spectrum without them
    sky          unsubtracted sky: 2-10 % of the sky spectrum the noise model uses (OH and O2
                 lines and continuum) left in the flux; the truth is without it

Each kind is denoised by each ``--model`` run (with its calibration; ``--uncertainty`` as for
``specdenoise denoise``); per kind and S/N bin the table gives the flag rate, the mean |R| and,
for "bad" spectra -- denoised mean |R| more than twice the in-domain mean |R| of the same S/N
bin -- the fraction flagged. Targets (issue 18): <= 2 % flagged in-domain; >= 90 % of the
bad OOD spectra with S/N >= 10 flagged.

    python benchmarks/ood.py --model RUN [--model RUN2] --n 300 --seed 7 --out results/ood

Writes ``ood.csv`` (one row per model, kind and S/N bin), ``ood_summary.csv`` (per model and
kind), ``ood.md`` and, for runs whose calibration has them, ``ood_checks.csv`` under ``--out``:
per model and OOD kind, of the bad spectra at S/N >= 10, how many are flagged, how many each
check flags alone at its own level (``alone_chi2``, ``alone_block16``, ...: a scaled check
above 1), and how many have a misfit (:func:`misfit`, the error's visibility in the noise to a
test that knew its shape) no larger than the 99th percentile of the in-domain set's own at the
same S/N bin (``misfit_within_in_domain``, and ``flagged_of_those``): these a check on the
residual can hardly tell from ordinary spectra. The simulated spectra are kept in ``--work`` as .npz
(re-running reuses them).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np

from specdenoise import schema
from specdenoise.config import load_config
from specdenoise.simulate import builtin_grid, engine
from specdenoise.simulate.sampling import draw_params
from specdenoise.stage_grid import resolve_grid
from specdenoise.train import infer
from specdenoise.train import uncertainty as unc

KINDS = ("in_domain", "lsf_wide", "tilt", "rv_high", "hot", "emission", "cosmic", "sky")
EDGES = unc.SNR_EDGES
MIN_SNR_BAD = 10.0  # the target counts bad spectra from this S/N up


def _draw(cfg, interp, rng, n):
    values = draw_params(cfg["params"], rng, n, grid_names=tuple(interp.names),
                         valid=interp.valid)
    grid = np.stack([values[g] for g in interp.names], axis=1)
    return values, grid


def _conditions(values):
    return {k: values[k] for k in schema.CONDITIONS}


def grid_key(grid_path) -> str:
    """A short name for the grid's content, part of each kept set's file name: a set simulated
    from another grid (an older built-in version) is simulated again, not reused."""
    import zarr

    attrs = zarr.open_group(str(grid_path), mode="r").attrs
    return str(attrs.get("content_hash", Path(grid_path).stem)).removeprefix("sha256:")[:12]


def simulate_kind(kind: str, cfg, grid_path, n: int, seed: int) -> dict[str, np.ndarray]:
    """``flux``, ``flux_clean``, ``sigma`` (n, 4096) normalised and ``snr`` (n,) of one kind."""
    interp, obs = engine.forward_model(cfg, grid_path)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(KINDS.index(kind),)))
    values, grid = _draw(cfg, interp, rng, n)
    model = interp(grid)
    cond = _conditions(values)
    observer = obs
    sign = rng.choice([-1.0, 1.0], n)
    if kind == "lsf_wide":
        o = dict(cfg["observe"])
        o["lsf_fwhm_pix"] = [1.5 * v for v in o["lsf_fwhm_pix"]]
        observer = engine.observer(interp.wave, engine.noise_model(cfg["noise"]), o,
                                   model_resolution=_grid_resolution(grid_path))
    elif kind == "tilt":
        w = interp.wave
        x = np.clip((w - obs.wave[0]) / (obs.wave[-1] - obs.wave[0]) * 2 - 1, -1, 1)
        t = sign * rng.uniform(0.10, 0.30, n)
        model = model * (1 + 0.5 * t[:, None] * x[None, :])
    elif kind == "rv_high":
        cond["rv"] = sign * rng.uniform(700.0, 1000.0, n)
    elif kind == "hot":
        model = _hot_models(interp.wave, rng, n)
    elif kind == "emission":
        w = interp.wave
        model = model.copy()
        for i in range(n):
            cont = np.median(model[i])
            for _ in range(rng.integers(1, 4)):
                c = rng.uniform(obs.wave[0] + 2, obs.wave[-1] - 2)
                model[i] += rng.uniform(0.3, 1.0) * cont * np.exp(-0.5 * ((w - c) / 0.02) ** 2)
    out = observer.observe(model, rng=rng, return_physical=(kind == "sky"), **cond)
    flux, clean, sigma = out["flux"].copy(), out["flux_clean"], out["sigma"]
    if kind == "cosmic":
        for i in range(n):
            for _ in range(rng.integers(1, 5)):
                p = rng.integers(2, flux.shape[1] - 4)
                width = rng.integers(1, 3)
                amp = np.exp(rng.uniform(np.log(10), np.log(200)))
                flux[i, p:p + width] += amp * sigma[i, p:p + width]
    elif kind == "sky":
        frac = rng.uniform(0.02, 0.10, n)
        sky_fnu = np.asarray(out["sky"]) / out["conversion"]  # f_nu units per exposure
        flux += (frac[:, None] * sky_fnu / out["norm"][:, None]).astype(np.float32)
    return {"flux": flux, "flux_clean": clean, "sigma": sigma, "snr": out["snr"],
            "teff": values["teff"] if kind != "hot" else np.full(n, np.nan)}


def _grid_resolution(grid_path):
    from specdenoise.simulate.grids import open_grid

    res = open_grid(grid_path).attrs.get("resolution")
    return float(res) if res else None


def _hot_models(wave, rng, n, n_models: int = 16):
    """``n`` spectra drawn from ``n_models`` built-in models at Teff 8000-11000 K."""
    teff = rng.uniform(8000, 11000, n_models)
    logg = rng.uniform(3.5, 4.5, n_models)
    m_h = rng.uniform(-1.5, 0.5, n_models)
    models = np.stack([builtin_grid.synthesize(t, g, m, 0.0, wave=wave)[0]
                       for t, g, m in zip(teff, logg, m_h, strict=True)])
    return models[rng.integers(0, n_models, n)].astype(np.float32)


def mean_rel(den, clean):
    good = clean > 0
    r = np.where(good, np.abs(den - clean) / np.where(good, clean, 1), 0)
    return r.sum(axis=1) / np.maximum(good.sum(axis=1), 1)


def misfit(den, clean, sigma):
    """sqrt(sum((F - D)^2 / sigma^2)) per spectrum: how visible the network's own error is in
    the noise to a test that knew its shape (the matched filter's S/N); any check on the
    residual flux - D sees at most this."""
    good = (clean > 0) & (sigma > 0)
    e = np.where(good, (clean - den) / np.where(good, sigma, 1), 0.0)
    return np.sqrt((e.astype(np.float64) ** 2).sum(axis=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="run directory (repeat)")
    p.add_argument("--n", type=int, default=300, help="spectra per kind")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--uncertainty", default="auto")
    p.add_argument("--out", required=True)
    p.add_argument("--work", default=None, help="where the simulated kinds are kept")
    p.add_argument("--grid", default=None, help="grid store (default: the config's, built-in)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or out / "work")
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config()
    grid_path = args.grid or resolve_grid(cfg["grid"])
    data = {}
    for kind in KINDS:
        f = work / f"{kind}_{args.n}_{args.seed}_{grid_key(grid_path)}.npz"
        if not f.exists():
            t0 = time.perf_counter()
            arrays = simulate_kind(kind, cfg, grid_path, args.n, args.seed)
            np.savez(f, **arrays)
            print(f"simulated {kind}: {args.n} spectra in {time.perf_counter() - t0:.1f} s",
                  flush=True)
        data[kind] = dict(np.load(f))

    rows, summary, checks_rows = [], [], []
    for run in args.model:
        name = Path(run).name
        d = infer.load_denoiser(run, device="cpu",
                                method=None if args.uncertainty == "auto" else args.uncertainty)
        res = {}
        method, samples, cal = infer.resolve_uncertainty(d.model, d.calibration, d.method,
                                                         d.samples)
        for kind in KINDS:
            a = data[kind]
            t0 = time.perf_counter()
            # what the Denoiser does, in its two steps, to keep the network's own output
            den, raw = unc.raw_uncertainty(d.model, a["flux"], a["sigma"], method=method,
                                           samples=samples, seed=KINDS.index(kind))
            b = unc.apply(cal, den, raw, a["flux"], a["sigma"])
            snr = unc.spectrum_snr(a["flux"], a["sigma"])
            res[kind] = {"rel": mean_rel(b["flux_denoised"], a["flux_clean"]),
                         "suspect": b["suspect"], "snr": a["snr"], "chi2": b["chi2_red"],
                         "peak": b["chi2_peak"], "seconds": time.perf_counter() - t0,
                         "misfit": misfit(den, a["flux_clean"], a["sigma"]),
                         "checks": {} if cal is None or cal.levels is None
                         else cal.scaled_checks(
                             b["chi2_red"], b["chi2_peak"], snr, b["sky_excess"],
                             b["chi2_binned"])}
        ref_bin = unc.snr_bin(res["in_domain"]["snr"], EDGES)
        ref = np.array([res["in_domain"]["rel"][ref_bin == i].mean() if (ref_bin == i).any()
                        else np.nan for i in range(len(EDGES) - 1)])
        # bins with no in-domain spectra take the nearest bin's reference
        ref = np.array(unc._fill_bins([None if not np.isfinite(v) else float(v)
                                       for v in ref]))
        for kind in KINDS:
            r = res[kind]
            b_idx = unc.snr_bin(r["snr"], EDGES)
            bad = r["rel"] > 2 * ref[b_idx]
            flagged = r["suspect"] == 1
            for i in range(len(EDGES) - 1):
                sel = b_idx == i
                if not sel.any():
                    continue
                nb = int((bad & sel).sum())
                rows.append({"model": name, "kind": kind, "snr_lo": EDGES[i],
                             "snr_hi": EDGES[i + 1], "n": int(sel.sum()),
                             "flag_rate": float(flagged[sel].mean()),
                             "mean_rel_err": float(r["rel"][sel].mean()),
                             "in_domain_mean_rel_err": float(ref[i]), "n_bad": nb,
                             "bad_flagged": float((flagged & bad & sel).sum() / nb) if nb
                             else math.nan})
            hi = r["snr"] >= MIN_SNR_BAD
            nb = int((bad & hi).sum())
            summary.append({"model": name, "kind": kind, "n": len(r["rel"]),
                            "flag_rate": float(flagged.mean()),
                            "flag_rate_snr10": float(flagged[hi].mean()) if hi.any()
                            else math.nan,
                            "mean_rel_err": float(r["rel"].mean()),
                            "n_bad_snr10": nb,
                            "bad_flagged_snr10": float((flagged & bad & hi).sum() / nb) if nb
                            else math.nan,
                            "seconds": r["seconds"]})
        ood = [k for k in KINDS if k != "in_domain"]
        # the in-domain set's own misfit, 99th percentile per S/N bin
        ind = res["in_domain"]
        i_idx = unc.snr_bin(ind["snr"], EDGES)
        top = np.array(unc._fill_bins([
            float(np.quantile(ind["misfit"][i_idx == i], 0.99)) if (i_idx == i).any()
            else None for i in range(len(EDGES) - 1)]))
        bad_all = flag_all = 0
        for kind in ood:
            r = res[kind]
            b_idx = unc.snr_bin(r["snr"], EDGES)
            bad = (r["rel"] > 2 * ref[b_idx]) & (r["snr"] >= MIN_SNR_BAD)
            flagged = bad & (r["suspect"] == 1)
            bad_all += int(bad.sum())
            flag_all += int(flagged.sum())
            within = bad & (r["misfit"] <= top[b_idx])
            row = {"model": name, "kind": kind, "n_bad_snr10": int(bad.sum()),
                   "flagged": int(flagged.sum()), "misfit_within_in_domain": int(within.sum()),
                   "flagged_of_those": int((within & flagged).sum())}
            for check, v in r["checks"].items():
                row[f"alone_{check}"] = int((bad & (np.nan_to_num(v, nan=-np.inf) > 1)).sum())
            checks_rows.append(row)
        summary.append({"model": name, "kind": "all_ood", "n": len(ood) * args.n,
                        "flag_rate": float(np.mean([res[k]["suspect"] == 1 for k in ood])),
                        "flag_rate_snr10": math.nan, "mean_rel_err": math.nan,
                        "n_bad_snr10": bad_all,
                        "bad_flagged_snr10": flag_all / bad_all if bad_all else math.nan,
                        "seconds": math.nan})
    _write_csv(out / "ood.csv", rows)
    if checks_rows:
        _write_csv(out / "ood_checks.csv", checks_rows)
    _write_csv(out / "ood_summary.csv", summary)
    _write_md(out / "ood.md", summary, rows)
    print((out / "ood.md").read_text())
    return 0


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        names = list(dict.fromkeys(k for r in rows for k in r))  # models may differ
        w = csv.DictWriter(fh, fieldnames=names, restval="")
        w.writeheader()
        w.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)


def _write_md(path: Path, summary: list[dict], rows: list[dict]) -> None:
    lines = ["| model | kind | n | flagged | flagged, S/N >= 10 | mean abs R | bad, S/N >= 10 | "
             "bad flagged |", "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['model']} | {s['kind']} | {s['n']} | {_pct(s['flag_rate'])} | "
                     f"{_pct(s['flag_rate_snr10'])} | {_pct(s['mean_rel_err'])} | "
                     f"{s['n_bad_snr10']} | {_pct(s['bad_flagged_snr10'])} |")
    lines += ["", "Per S/N bin:", "",
              "| model | kind | S/N | n | flagged | mean abs R | in-domain mean abs R | bad | "
              "bad flagged |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hi = "inf" if math.isinf(r["snr_hi"]) else f"{r['snr_hi']:g}"
        lines.append(f"| {r['model']} | {r['kind']} | {r['snr_lo']:g}-{hi} | {r['n']} | "
                     f"{_pct(r['flag_rate'])} | {_pct(r['mean_rel_err'])} | "
                     f"{_pct(r['in_domain_mean_rel_err'])} | {r['n_bad']} | "
                     f"{_pct(r['bad_flagged'])} |")
    path.write_text("\n".join(lines) + "\n")


def _pct(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


if __name__ == "__main__":
    raise SystemExit(main())
