"""What each effect of the wider nuisance model costs a network trained without it, and whether
the ``suspect`` flag notices (issue 19, point 6).

The effects (:mod:`specdenoise.simulate.nuisance`, each an ``observe`` key, off by default):

    continuum          0.10   continuum-shape variation up to 10 % (part of the truth)
    lsf_scatter        0.10   line-spread-function width +-10 % by fibre (part of the truth)
    sky_residual       0.01   sky-subtraction residual, N(0, 1 %) of the sky (not in the truth)
    telluric_residual  0.02   telluric-correction residual, N(0, 2 %) of the O2 A and H2O bands
                              (not in the truth)

For ``none`` (the default config) and each effect alone at the value above (``--value NAME=X``
changes one), ``--n`` spectra are simulated with the default config's distributions and the
same seed: the same stars and observing conditions (the effect's own draws come from a
generator of their own, which moves the noise draws). Each set is denoised by every ``--model``
with its calibrated uncertainty (``specdenoise denoise``'s defaults). Per model, effect and S/N
bin: the mean |R| of the denoised spectrum and of the noisy input against the truth, the ratio
to ``none`` in the same bin, the fraction flagged ``suspect`` and, for the effects that are
not part of the truth, the mean |sky_excess|.

    python benchmarks/nuisance.py --model RUN [--model RUN2] --n 300 --seed 11 \\
        --work WORK --out results/nuisance

Writes ``nuisance.csv`` (per model, effect and S/N bin), ``nuisance_summary.csv`` (per model
and effect) and ``nuisance.md``. The simulated sets are kept in ``--work`` as .npz and reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

from specdenoise import schema
from specdenoise.config import load_config
from specdenoise.simulate import engine
from specdenoise.simulate.sampling import draw_params
from specdenoise.stage_grid import resolve_grid
from specdenoise.train import infer
from specdenoise.train import uncertainty as unc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ood import _write_csv, grid_key, mean_rel  # noqa: E402  (a sibling script)

EFFECTS = {"none": 0.0, "continuum": 0.10, "lsf_scatter": 0.10, "sky_residual": 0.01,
           "telluric_residual": 0.02}
EDGES = unc.SNR_EDGES


def simulate_effect(name: str, value: float, n: int, seed: int,
                    grid: str | None = None) -> dict[str, np.ndarray]:
    """``flux``, ``flux_clean``, ``sigma`` (n, n_pix) and ``snr`` (n,) with one effect on
    (``grid``: a grid store instead of the default config's)."""
    cfg = load_config()
    if name != "none":
        cfg = dataclasses.replace(cfg, observe=dataclasses.replace(cfg.observe, **{name: value}))
    interp, obs = engine.forward_model(cfg, grid or resolve_grid(cfg["grid"]))
    rng = np.random.default_rng(seed)
    values = draw_params(cfg["params"], rng, n, grid_names=tuple(interp.names),
                         valid=interp.valid)
    model = interp(np.stack([values[g] for g in interp.names], axis=1))
    out = obs.observe(model, rng=rng, **{k: values[k] for k in schema.CONDITIONS})
    return {"flux": out["flux"], "flux_clean": out["flux_clean"], "sigma": out["sigma"],
            "snr": out["snr"]}


def main(argv=None) -> list[dict]:
    """Run the benchmark; returns the summary rows (also written to ``--out``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="run directory (repeat)")
    p.add_argument("--n", type=int, default=300, help="spectra per effect")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--value", action="append", default=[], metavar="NAME=X",
                   help="another value for one effect")
    p.add_argument("--grid", default=None, help="grid store (default: the config's, built-in)")
    p.add_argument("--work", required=True, help="where the simulated sets are kept")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    effects = dict(EFFECTS)
    for item in args.value:
        name, _, x = item.partition("=")
        if name not in effects or name == "none":
            p.error(f"--value: unknown effect {name!r}; one of {', '.join(list(EFFECTS)[1:])}")
        effects[name] = float(x)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    data = {}
    grid = args.grid or resolve_grid(load_config()["grid"])
    for name, value in effects.items():
        f = work / f"{name}_{value:g}_{args.n}_{args.seed}_{grid_key(grid)}.npz"
        if not f.exists():
            t0 = time.perf_counter()
            np.savez(f, **simulate_effect(name, value, args.n, args.seed, args.grid))
            print(f"simulated {name}={value:g}: {args.n} spectra in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        data[name] = dict(np.load(f))

    rows, summary = [], []
    for run in args.model:
        label = Path(run).name
        d = infer.load_denoiser(run, device="cpu")
        res = {}
        for i, (name, a) in enumerate(data.items()):
            b = d(a["flux"], a["sigma"], seed=i)
            res[name] = {"rel": mean_rel(b.flux_denoised, a["flux_clean"]),
                         "input": mean_rel(a["flux"], a["flux_clean"]),
                         "suspect": b.suspect, "sky": b.sky_excess,
                         "bin": unc.snr_bin(a["snr"], EDGES)}
        base = res["none"]
        for name, r in res.items():
            for i in range(len(EDGES) - 1):
                sel, ref = r["bin"] == i, base["bin"] == i
                if not sel.any():
                    continue
                mean = float(r["rel"][sel].mean())
                ref_mean = float(base["rel"][ref].mean()) if ref.any() else math.nan
                rows.append({"model": label, "effect": name, "value": effects[name],
                             "snr_lo": EDGES[i], "snr_hi": EDGES[i + 1], "n": int(sel.sum()),
                             "mean_rel_err": mean, "input_mean_rel_err":
                             float(r["input"][sel].mean()), "ratio_to_none": mean / ref_mean,
                             "flag_rate": float((r["suspect"][sel] == 1).mean()),
                             "mean_abs_sky_excess": float(np.nanmean(np.abs(r["sky"][sel])))
                             if np.isfinite(r["sky"][sel]).any() else math.nan})
            summary.append({"model": label, "effect": name, "value": effects[name],
                            "n": len(r["rel"]), "mean_rel_err": float(r["rel"].mean()),
                            "input_mean_rel_err": float(r["input"].mean()),
                            "ratio_to_none": float(r["rel"].mean() / base["rel"].mean()),
                            "flag_rate": float((r["suspect"] == 1).mean()),
                            "mean_abs_sky_excess": float(np.nanmean(np.abs(r["sky"])))
                            if np.isfinite(r["sky"]).any() else math.nan})
    _write_csv(out / "nuisance.csv", rows)
    _write_csv(out / "nuisance_summary.csv", summary)
    _write_md(out / "nuisance.md", summary, rows)
    print((out / "nuisance.md").read_text())
    return summary


def _pct(v) -> str:
    return "" if isinstance(v, float) and math.isnan(v) else f"{100 * v:.2f} %"


def _write_md(path: Path, summary: list[dict], rows: list[dict]) -> None:
    lines = ["| model | effect | value | n | mean abs R | noisy input | x none | flagged | "
             "mean abs sky_excess |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['model']} | {s['effect']} | {s['value']:g} | {s['n']} | "
                     f"{_pct(s['mean_rel_err'])} | {_pct(s['input_mean_rel_err'])} | "
                     f"{s['ratio_to_none']:.2f} | {_pct(s['flag_rate'])} | "
                     f"{s['mean_abs_sky_excess']:.2f} |")
    lines += ["", "Per S/N bin:", "", "| model | effect | S/N | n | mean abs R | noisy input | "
              "x none | flagged |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hi = "inf" if math.isinf(r["snr_hi"]) else f"{r['snr_hi']:g}"
        lines.append(f"| {r['model']} | {r['effect']} | {r['snr_lo']:g}-{hi} | {r['n']} | "
                     f"{_pct(r['mean_rel_err'])} | {_pct(r['input_mean_rel_err'])} | "
                     f"{r['ratio_to_none']:.2f} | {_pct(r['flag_rate'])} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
