"""Ablation of the 'best' training preset: each ingredient's effect at one fixed budget.

Every variant trains the same U-Net on the same number of training spectra (``--spectra``,
in epochs of ``--epoch-size``) and is scored on the same validation store: mean |R| over all
unmasked pixels and per S/N bin (log-spaced edges). Variants add one ingredient at a time:

    base       MSE loss, AdamW + cosine, flux only, a small fixed training set (fresh noise)
    onecycle   + one-cycle learning-rate schedule
    sigma      + sigma as a second input channel
    rel_l1     + loss on the relative error |F_hat - F| / F
    pool       + epochs drawn from a large pool of spectra instead of the small set
    residual   + the network predicts a correction to the noisy input

plus two side rows on top of ``pool``: ``chi2`` (inverse-variance loss instead of rel_l1) and
``fresh_distortion`` (a new calibration distortion every epoch). CPU seconds per variant are
measured (process CPU time, all threads), so a costlier ingredient shows its price.

    python benchmarks/ablation.py --small quick/train.zarr --pool pool.zarr \\
        --val val.zarr --spectra 30000 --out results/ablation

Writes ``ablation.csv`` and ``ablation.md`` under ``--out`` (one row per variant) and keeps
each run folder under ``--work`` (resumable: a finished variant is not trained again).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from specdenoise.train import data as tdata
from specdenoise.train import loop
from specdenoise.train.checkpoint import CHECKPOINT_NAME, load_model
from specdenoise.train.infer import denoise_array

SNR_EDGES = (0, 2, 5, 10, 20, 50, np.inf)

# cumulative: each variant is the previous one plus one change
STEPS = [
    ("base", {"loss": "mse", "scheduler": "cosine", "in_channels": 1, "pool": False}),
    ("onecycle", {"scheduler": "onecycle"}),
    ("sigma", {"in_channels": 2}),
    ("rel_l1", {"loss": "rel_l1"}),
    ("pool", {"pool": True}),
    ("residual", {"residual": True}),
]
# one change on top of "pool"
SIDE = [("chi2", {"loss": "chi2"}), ("fresh_distortion", {"distortion": "fresh"})]


def variants() -> list[tuple[str, dict]]:
    out, cur = [], {}
    for name, change in STEPS:
        cur = {**cur, **change}
        out.append((name, dict(cur)))
    pool = dict(out[[n for n, _ in STEPS].index("pool")][1])
    out += [(name, {**pool, **change}) for name, change in SIDE]
    return out


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def score(run_dir: Path, val: str) -> dict:
    """Mean |R| overall and per S/N bin on the validation store's stored noise."""
    import zarr

    model, _ = load_model(run_dir, device="cpu")
    g = zarr.open_group(val, mode="r")
    flux, clean, sigma = (np.asarray(g[v][:], np.float32) for v in ("flux", "flux_clean",
                                                                       "sigma"))
    snr = np.asarray(g["snr"][:])
    good = clean > 0
    if "mask" in g:
        good &= np.asarray(g["mask"][:]) == 0
    den = denoise_array(model, flux, sigma=sigma)
    rel = np.where(good, np.abs(den - clean) / np.where(good, clean, 1), np.nan)
    row = {"mean_abs_rel": float(np.nanmean(rel))}
    per_spec = np.nanmean(rel, axis=1)
    for lo, hi in zip(SNR_EDGES[:-1], SNR_EDGES[1:], strict=True):
        sel = (snr >= lo) & (snr < hi)
        row[f"snr_{lo:g}_{hi:g}"] = float(np.mean(per_spec[sel])) if sel.any() else np.nan
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", required=True, help="small training store (fixed set)")
    p.add_argument("--pool", required=True, help="large training store (the pool)")
    p.add_argument("--val", required=True, help="validation store")
    p.add_argument("--spectra", type=int, default=30000, help="training spectra per variant")
    p.add_argument("--epoch-size", type=int, default=3000)
    p.add_argument("--work", default="ablation-runs", help="run folders (resumable)")
    p.add_argument("--out", default="results/ablation")
    p.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    p.add_argument("--model-cfg", default="{}", help="U-Net options over the best preset's "
                   "(JSON), e.g. a tiny net for a smoke test")
    a = p.parse_args(argv)

    small_n = tdata.inspect_store(a.small).n_spectrum
    base_model = {**loop.PRESETS["best"]["model_cfg"]["unet"], **json.loads(a.model_cfg)}
    work, out = Path(a.work), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, v in variants():
        if a.only and name not in a.only:
            continue
        run = work / name
        model_cfg = {**base_model, "in_channels": v["in_channels"]}
        if v.get("residual"):
            model_cfg.update(residual=True, out_activation="identity")
        per_epoch = a.epoch_size if v["pool"] else small_n
        epochs = max(1, round(a.spectra / per_epoch))
        cfg = loop.make_config(
            a.pool if v["pool"] else a.small, a.val, run, preset="best", model_cfg=model_cfg,
            epochs=epochs, epoch_size=a.epoch_size if v["pool"] else 0, loss=v["loss"],
            scheduler=v["scheduler"], distortion=v.get("distortion", "stored"), workers=0,
            seed=1)
        done = (run / "ablation.json")
        if done.exists():
            rows.append(json.loads(done.read_text()))
            print(f"{name}: kept {done}", file=sys.stderr)
            continue
        c0, t0 = cpu_seconds(), time.perf_counter()
        loop.train(cfg, resume=(run / CHECKPOINT_NAME).exists(), progress=False)
        row = {"variant": name, "epochs": epochs,
               "train_spectra": epochs * per_epoch, "cpu_s": round(cpu_seconds() - c0, 1),
               "wall_s": round(time.perf_counter() - t0, 1), **score(run, a.val)}
        done.write_text(json.dumps(row))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    if not rows:
        return 0
    write_table(rows, out / "ablation",
                command_line("benchmarks/ablation.py", argv or sys.argv[1:]))
    return 0


def command_line(script: str, argv: list[str]) -> str:
    """The command as typed, with absolute paths cut to their last part (no machine's folders)."""
    return " ".join(["python", script] + [Path(a).name if a.startswith("/") else a for a in argv])


def write_table(rows: list[dict], stem: Path, cmd: str) -> None:
    """``stem.csv`` and ``stem.md`` (|R| columns in per cent, then the command); prints the
    Markdown table."""
    cols = list(rows[0])
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(
            f"{100 * r[c]:.2f} %" if (c.startswith("snr_") or c == "mean_abs_rel")
            and r[c] == r[c] else str(r[c]) for c in cols) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + f"\n\nCommand: `{cmd}`\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
