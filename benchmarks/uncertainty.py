"""Ways of getting ``sigma_denoised``, compared: accuracy, calibration per S/N bin, cost.

For each ``--model`` run and each way (``head``: the network's own log-variance, a network
trained with ``uncertainty: "nll"`` only; ``sample``: the parametric bootstrap with K draws,
any network; ``both``: the two in quadrature), the raw sigma is computed on the first
``--n-val`` spectra of ``--val`` and on the first ``--n-test`` of ``--test``; the calibration
(:func:`specdenoise.train.uncertainty.fit_calibration`: a scale per S/N bin and the suspect
threshold) is fitted on the first and scored on the second:

    coverage at 1 and 2 sigma and std(z), z = (D - F) / sigma_denoised, per S/N bin
    (targets 0.63-0.73, 0.92-0.97, 0.85-1.15); the flag rate on the test spectra (target ~1 %);
    mean |R| of the denoised flux; seconds per spectrum of the test pass (CPU, one thread).

    python benchmarks/uncertainty.py --model RUN_PLAIN --model RUN_NLL --val val.zarr \\
        --test test.zarr --samples 4 --samples 8 --out results/uncertainty

Writes ``uncertainty.csv`` (per model, way and S/N bin) and ``uncertainty.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np

from specdenoise.train import data as tdata
from specdenoise.train import uncertainty as unc
from specdenoise.train.checkpoint import load_model
from specdenoise.train.infer import denoise_array


def read(path, n):
    info = tdata.inspect_store(path, tdata.VAL_VARS)
    group = tdata.open_group(info.path, info.storage_options)
    parts = []
    for chunk in range(info.n_chunks):
        parts.append(tdata.read_chunk(group, info, chunk, tdata.VAL_VARS))
        if sum(len(p["flux"]) for p in parts) >= n:
            break
    a = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
    a["good"] &= a["flux_clean"] > 0
    return a


def raw(model, a, method, k, seed):
    t0 = time.perf_counter()
    den, s = unc.raw_uncertainty(model, a["flux"], a["sigma"], method=method, samples=k,
                                 seed=seed, batch_size=64)
    return den, s, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--samples", type=int, action="append", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    ks = args.samples or [8]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    val, test = read(args.val, args.n_val), read(args.test, args.n_test)
    rows = []
    for run in args.model:
        model, _ = load_model(run, device="cpu")
        name = Path(run).name
        ways = {}
        # the plain pass: its cost is the baseline every way is compared with
        t0 = time.perf_counter()
        denoise_array(model, test["flux"], sigma=test["sigma"], batch_size=64)
        t_plain = time.perf_counter() - t0
        if unc.has_head(model):
            ways["head"] = (raw(model, val, "head", 0, 1), raw(model, test, "head", 0, 2))
        for k in ks:
            ways[f"sample_k{k}"] = (raw(model, val, "sample", k, 1),
                                    raw(model, test, "sample", k, 2))
        if unc.has_head(model):
            for k in ks:
                (hv, ht), (sv, st) = ways["head"], ways[f"sample_k{k}"]
                ways[f"both_k{k}"] = tuple(
                    (h[0], np.hypot(h[1], s[1]), h[2] + s[2]) for h, s in ((hv, sv), (ht, st)))
        for way, ((dv, sv, _), (dt, st, secs)) in ways.items():
            cal = unc.fit_calibration(dv, sv, val["flux"], val["sigma"], val["flux_clean"],
                                      val["good"], method=way.split("_")[0],
                                      samples=int(way.split("_k")[1]) if "_k" in way else 0)
            res = unc.apply(cal, dt, st, test["flux"], test["sigma"], test["good"])
            dt = res["flux_denoised"]  # the input guard, where the calibration chose it
            z = np.where(test["good"], (dt - test["flux_clean"]) / res["sigma_denoised"], np.nan)
            rel = np.where(test["good"], np.abs(dt - test["flux_clean"])
                           / np.where(test["good"], test["flux_clean"], 1), np.nan)
            snr = unc.spectrum_snr(test["flux"], test["sigma"], test["good"])
            b = unc.snr_bin(snr)
            for i in [*range(len(unc.SNR_EDGES) - 1), None]:
                sel = np.ones(len(b), bool) if i is None else b == i
                if not sel.any():
                    continue
                c = unc.coverage(z[sel].ravel())
                hi = None if i is None else unc.SNR_EDGES[i + 1]
                rows.append({
                    "model": name, "way": way,
                    "snr": "all" if i is None else
                    f"{unc.SNR_EDGES[i]:g}-{'inf' if math.isinf(hi) else f'{hi:g}'}",
                    "n_spectra": int(sel.sum()),
                    "mean_rel_err": float(np.nanmean(rel[sel])),
                    "cover1": c["cover1"], "cover2": c["cover2"], "std_z": c["std_z"],
                    "flag_rate": float((res["suspect"][sel] == 1).mean()),
                    "scale": math.nan if i is None else cal.scale[i],
                    "s_per_spectrum": secs / len(dt), "cost_vs_plain": secs / t_plain,
                })
    with (out / "uncertainty.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()}
                    for r in rows)
    lines = ["| model | way | S/N | n | mean abs R | 1 sigma | 2 sigma | std z | flagged | "
             "scale | s/spectrum | cost x plain |", "|" + "---|" * 12]
    for r in rows:
        ok = (0.63 <= r["cover1"] <= 0.73 and 0.92 <= r["cover2"] <= 0.97
              and 0.85 <= r["std_z"] <= 1.15)
        lines.append(
            f"| {r['model']} | {r['way']} | {r['snr']} | {r['n_spectra']} | "
            f"{100 * r['mean_rel_err']:.2f} % | {r['cover1']:.3f} | {r['cover2']:.3f} | "
            f"{r['std_z']:.2f}{'' if ok else ' (miss)'} | {100 * r['flag_rate']:.1f} % | "
            f"{_g(r['scale'])} | "
            f"{r['s_per_spectrum']:.3g} | {r['cost_vs_plain']:.1f} |")
    (out / "uncertainty.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _g(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.3g}"


if __name__ == "__main__":
    raise SystemExit(main())
