"""Transfer benchmark (issue 19, point 4): a network trained on grid A, tested on spectra from
grid B against B's twins in A (same stellar parameters, same noise draws).

Each ``--pair REAL TWIN`` names two simulated stores made with the same command and seed, one
from grid B (``--grid B.zarr``) and one from grid A: their noise draws, conditions and
parameters are identical, only the model spectrum differs.  Each model (``--model RUN``,
repeatable) denoises both (``specdenoise denoise``, in ``--work``), and per S/N bin this prints
and writes (``--out`` CSV):

- ``R``: mean |D - F| / F over unmasked pixels (per cent), D denoised, F the clean truth;
- ``R_line``: the same over line pixels (the truth more than 2 % below its running
  continuum: the 98th percentile in a 101-pixel window);
- ``kept``: the fraction of the truth's line structure the denoised spectrum keeps: the
  regression slope of D_hp on F_hp, ``_hp`` the truth's and denoised spectrum's departure from
  that continuum (1: all kept, 0: smoothed away);
- ``ew_err``: the Ca II triplet's equivalent-width error, mean |EW(D) - EW(F)| / EW(F) over
  the three lines (vacuum 850.04, 854.44, 866.45 nm moved by each spectrum's RV; +-0.6 nm
  windows, continuum from the same running percentile), per cent.

and the ratios real/twin of R and of kept.  The metrics are simple local versions written here
(:func:`metrics`); the project's line-aware metrics (``evaluate/metrics.py``) can replace that
one function.  Command::

    python benchmarks/transfer.py --model runs/unet --pair bosz_t6000.zarr builtin_t6000.zarr \\
        [--pair ...] --work W --out results/transfer/transfer.csv
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

C_KM_S = 299792.458
#: vacuum wavelengths of the Ca II infrared triplet, nm
CA_II = (850.036, 854.444, 866.452)
EW_HALF_WIDTH = 0.6
SNR_EDGES = (0, 2, 5, 10, 20, 50, np.inf)
CONT_WINDOW = 101
LINE_THRESHOLD = 0.02


def continuum(f: np.ndarray, window: int = CONT_WINDOW) -> np.ndarray:
    """Running 98th percentile (n, n_wave) of spectra (n, n_wave): the local continuum."""
    from scipy.ndimage import percentile_filter

    return percentile_filter(f, 98, size=(1, window), mode="nearest")


def equivalent_widths(wave: np.ndarray, f: np.ndarray, cont: np.ndarray,
                      rv: np.ndarray | None = None) -> np.ndarray:
    """EW (nm) of the Ca II lines (n, 3) from spectra and their continuum (n, n_wave), the
    windows moved by each spectrum's radial velocity ``rv`` (n,) km/s."""
    dw = np.gradient(wave)
    shift = 1.0 + (np.zeros(len(f)) if rv is None else np.asarray(rv)) / C_KM_S
    out = []
    for c in CA_II:
        sel = np.abs(wave[None, :] - c * shift[:, None]) < EW_HALF_WIDTH
        out.append(np.sum(sel * (1 - f / cont) * dw[None, :], axis=1))
    return np.stack(out, axis=1)


def metrics(wave, clean, denoised, mask=None, rv=None) -> dict[str, np.ndarray]:
    """Per-spectrum metrics (each (n,)): R, R_line (per cent), kept, ew_err (per cent);
    ``rv`` (n,) km/s moves the Ca II windows."""
    good = np.ones(clean.shape, bool) if mask is None else mask == 0
    rel = np.abs(denoised - clean) / np.abs(clean)
    cont = continuum(clean)
    line = good & (clean < (1 - LINE_THRESHOLD) * cont)
    f_hp, d_hp = clean - cont, denoised - cont
    w = good.astype(float)
    kept = np.sum(w * f_hp * d_hp, axis=1) / np.sum(w * f_hp * f_hp, axis=1)
    ew_t = equivalent_widths(wave, clean, cont, rv)
    ew_d = equivalent_widths(wave, denoised, cont, rv)
    return {
        "R": 100 * np.sum(rel * good, axis=1) / good.sum(axis=1),
        "R_line": 100 * np.sum(rel * line, axis=1) / np.maximum(line.sum(axis=1), 1),
        "kept": kept,
        "ew_err": 100 * np.mean(np.abs(ew_d - ew_t) / np.abs(ew_t), axis=1),
    }


def denoise(model: Path, store: Path, work: Path) -> Path:
    out = work / f"{model.name}__{store.stem}.zarr"
    if not out.exists():
        subprocess.run([sys.executable, "-m", "specdenoise.cli", "denoise", "--model",
                        str(model), "--data", str(store), "--out", str(out)], check=True)
    return out


def load(store: Path, den: Path):
    import xarray as xr

    ds = xr.open_zarr(store)
    dd = xr.open_zarr(den)
    return (ds["wave"].values, ds["flux_clean"].values, dd["flux_denoised"].values,
            ds["mask"].values, ds["snr"].values, ds["flux"].values, ds["rv"].values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, type=Path)
    ap.add_argument("--pair", nargs=2, action="append", required=True, type=Path,
                    metavar=("REAL", "TWIN"))
    ap.add_argument("--work", type=Path, required=True, help="folder for denoised stores")
    ap.add_argument("--out", type=Path, help="CSV of the table")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.model:
        for real, twin in args.pair:
            res = {}
            for kind, store in (("real", real), ("twin", twin)):
                wave, clean, den, mask, snr, flux, rv = load(
                    store, denoise(model, store, args.work))
                res[kind] = metrics(wave, clean, den, mask, rv), snr
                res[kind + "_input"] = metrics(wave, clean, flux, mask, rv), snr
            if not np.allclose(res["real"][1], res["twin"][1], rtol=0.2):
                print(f"warning: {real.name} and {twin.name} have different S/N: not twins?")
            snr = res["twin"][1]
            for lo, hi in zip(SNR_EDGES[:-1], SNR_EDGES[1:], strict=True):
                sel = (snr >= lo) & (snr < hi)
                if not sel.any():
                    continue
                row = {"model": model.name, "real": real.name, "twin": twin.name,
                       "snr_bin": f"{lo:g}-{hi:g}", "n": int(sel.sum())}
                for kind in ("real", "twin", "real_input"):
                    m = res[kind][0]
                    for k in ("R", "R_line", "kept", "ew_err"):
                        row[f"{k}_{kind}"] = float(np.mean(m[k][sel]))
                row["R_ratio"] = row["R_real"] / row["R_twin"]
                row["kept_ratio"] = row["kept_real"] / row["kept_twin"]
                rows.append(row)
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
