"""Which residual statistics could tell the out-of-distribution spectra of
``benchmarks/ood.py`` from ordinary ones? The comparison behind the ``suspect`` flag's checks.

A calibrated run denoises its default validation set (``--val``, the in-domain reference) and
the kinds ``benchmarks/ood.py`` keeps in ``--work`` (simulated there first if missing). For
every spectrum it computes candidate statistics of the residual ``flux - D`` (D: the network's
own output; weights 1 / (sigma^2 + sigma_D^2) with the run's calibrated sigma_D):

    chi2, peak, sky    the flag's checks: chi2_red, chi2_peak, |sky_excess|
    block<m>           chi2_binned: the whitened residual summed over blocks of m pixels,
                       m = 2 ... 128
    line, shift, width matched filters of the residual (its running median over 51 pixels
                       removed) with D's own line profile (running median of D less D), its
                       first derivative (a line shift) and second derivative (a line width),
                       in absolute value
    legendre7          the chi2 of a degree 1-7 Legendre fit to the whitened residual (a
                       continuum)

Each is standardised per S/N bin on the validation spectra (median, 1.4826 MAD). Printed and
written (``ood_statistics.csv``): for each statistic alone at its own 1 % level on the
validation spectra, and for combinations (the largest of several, with and without each
counted in units of its own level), the fraction of the independent in-domain kind flagged
and how many of the bad OOD spectra at S/N >= 10 (as ``benchmarks/ood.py`` defines them) are
caught.

    python benchmarks/ood_statistics.py --model RUN --val VAL.zarr --work ood_work --out DIR
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from numpy.polynomial import legendre
from scipy.ndimage import median_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ood  # noqa: E402  (the benchmark next to this one: its kinds and their files)
from uncertainty import read  # noqa: E402  (benchmarks/uncertainty.py: a validation set)

from specdenoise.config import load_config  # noqa: E402
from specdenoise.stage_grid import resolve_grid  # noqa: E402
from specdenoise.train import infer  # noqa: E402
from specdenoise.train import uncertainty as unc  # noqa: E402

BLOCKS = (2, 4, 8, 16, 32, 64, 128)
FALSE_ALARM = 0.01
#: combinations scored (the flag's own since 2026-12-07 is the third)
COMBINATIONS = (("chi2", "peak", "sky"),
                ("chi2", "peak", "sky", "block4", "block16", "block64"),
                ("chi2", "peak", "sky", "block4", "block16", "block64", "@levels"),
                ("chi2", "peak", "sky", "line", "shift", "width", "@levels"),
                ("chi2", "peak", "sky", "legendre7", "@levels"))


def statistics(cal, den, raw, flux, sigma, good) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every candidate statistic, (n,) each, and the spectra's S/N."""
    den, raw, flux, sigma = (np.asarray(a, np.float64) for a in (den, raw, flux, sigma))
    snr = unc.spectrum_snr(flux, sigma, good)
    s_cal = raw * cal.scale_for(snr)[:, None]
    chi2, peak = unc.consistency(flux, sigma, den, s_cal, good)
    out = {"chi2": chi2, "peak": peak}
    template = cal.template(den.shape[1])
    if template is not None:
        out["sky"] = np.abs(unc.sky_excess(flux, sigma, den, s_cal, template, good))
    for m, v in zip(BLOCKS, unc.chi2_binned(flux, sigma, den, s_cal, good, BLOCKS).T,
                    strict=True):
        out[f"block{m}"] = v
    w = np.where(good, 1.0 / (sigma ** 2 + s_cal ** 2), 0.0)
    r = np.where(good, flux - den, 0.0)
    rm = r - median_filter(r, size=(1, 51), mode="nearest")
    profile = median_filter(den, size=(1, 51), mode="nearest") - den
    d1 = np.gradient(den, axis=1)
    for name, t in (("line", profile), ("shift", d1), ("width", np.gradient(d1, axis=1))):
        with np.errstate(divide="ignore", invalid="ignore"):
            out[name] = np.abs((w * rm * t).sum(axis=1) / np.sqrt((w * t * t).sum(axis=1)))
    x = np.linspace(-1, 1, den.shape[1])
    basis = np.stack([legendre.legval(x, np.eye(8)[k]) for k in range(1, 8)], axis=1)
    sw = np.sqrt(w)
    fit = np.empty(len(den))
    for i in range(len(den)):
        a = basis * sw[i][:, None]
        coef, *_ = np.linalg.lstsq(a, r[i] * sw[i], rcond=None)
        fit[i] = float(((a @ coef) ** 2).sum())
    out["legendre7"] = fit
    return out, snr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="calibrated run directory")
    p.add_argument("--val", required=True, help="its default validation set (in-domain)")
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--n", type=int, default=300, help="spectra per kind (as benchmarks/ood.py)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work", required=True, help="benchmarks/ood.py's folder of kinds")
    p.add_argument("--grid", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    d = infer.load_denoiser(args.model, device="cpu")
    cal = d.calibration
    if cal is None:
        raise SystemExit(f"{args.model} has no calibration (run specdenoise calibrate)")
    method, samples = cal.method, cal.samples

    def run(flux, sigma, good, seed):
        den, raw = unc.raw_uncertainty(d.model, flux, sigma, method=method, samples=samples,
                                       seed=seed)
        return den, raw, unc.apply(cal, den, raw, flux, sigma, good)

    v = read(args.val, args.n_val)
    den, raw, _ = run(v["flux"], v["sigma"], v["good"], 100)
    val_stats, val_snr = statistics(cal, den, raw, v["flux"], v["sigma"], v["good"])
    val_bin = unc.snr_bin(val_snr)
    print(f"validation: {len(den)} spectra", flush=True)

    grid_path = args.grid or resolve_grid(load_config()["grid"])
    kinds = {}
    for kind in ood.KINDS:
        f = Path(args.work) / f"{kind}_{args.n}_{args.seed}_{ood.grid_key(grid_path)}.npz"
        if not f.exists():
            np.savez(f, **ood.simulate_kind(kind, load_config(), grid_path, args.n, args.seed))
        a = dict(np.load(f))
        good = a["flux_clean"] > 0
        den, raw, out = run(a["flux"], a["sigma"], None, ood.KINDS.index(kind))  # as ood.py
        st, snr = statistics(cal, den, raw, a["flux"], a["sigma"], good)
        # the bad ones as benchmarks/ood.py counts them: by the S/N kept with the set
        kinds[kind] = (st, snr, ood.mean_rel(out["flux_denoised"], a["flux_clean"]), a["snr"])
        print(f"{kind}: {len(den)} spectra", flush=True)

    st, snr, rel, snr_kept = kinds["in_domain"]
    b = unc.snr_bin(snr_kept, ood.EDGES)
    ref = np.array(unc._fill_bins([float(rel[b == i].mean()) if (b == i).any() else None
                                   for i in range(len(ood.EDGES) - 1)]))
    standard = {}
    for name, values in val_stats.items():
        med, spread = unc._robust(values, val_bin, len(unc.SNR_EDGES) - 1)
        standard[name] = (np.asarray(med), np.asarray(spread))

    def z(name, values, snr_):
        k = unc.snr_bin(snr_)
        med, spread = standard[name]
        return (values - med[k]) / spread[k]

    levels = {name: float(np.nanquantile(z(name, val_stats[name], val_snr), 1 - FALSE_ALARM))
              for name in val_stats}

    def score(names, stats_, snr_):
        use_levels = "@levels" in names
        parts_ = [z(k, stats_[k], snr_) / (levels[k] if use_levels else 1.0)
                  for k in names if k != "@levels" and k in stats_]
        return np.nanmax(np.stack(parts_), axis=0)

    rows = []
    for names in [(k,) for k in val_stats] + [c for c in COMBINATIONS]:
        if any(k not in val_stats for k in names if k != "@levels"):
            continue
        threshold = float(np.nanquantile(score(names, val_stats, val_snr), 1 - FALSE_ALARM))
        row = {"statistics": "+".join(names).replace("+@levels", " (levels)"),
               "threshold": threshold}
        caught = total = 0
        for kind, (st, snr, rel, snr_kept) in kinds.items():
            flagged = score(names, st, snr) > threshold
            if kind == "in_domain":
                row["in_domain_flagged"] = float(flagged.mean())
                continue
            k = unc.snr_bin(snr_kept, ood.EDGES)
            bad = (rel > 2 * ref[k]) & (snr_kept >= ood.MIN_SNR_BAD)
            row[kind] = f"{int((bad & flagged).sum())}/{int(bad.sum())}"
            caught += int((bad & flagged).sum())
            total += int(bad.sum())
        row["bad_caught"] = caught
        row["bad_total"] = total
        rows.append(row)
        print(f"{row['statistics']:55s} in-domain {100 * row['in_domain_flagged']:4.1f} %  "
              f"bad caught {caught}/{total}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "ood_statistics.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()}
                    for r in rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
