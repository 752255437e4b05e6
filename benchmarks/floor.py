"""Ablation of the high-S/N floor (issue 18, part 4): what moves the U-Net towards the template fit.

The best preset's U-Net is 1.4x the template fit at S/N < 2 but 4.2x at S/N 20-50: at high S/N a
network that sees +-190 pixels shrinks the lines that a fit of all 4096 pixels keeps. Each
variant here changes one thing on top of the best preset's network and ingredients and trains
on the same budget (``--epochs`` x ``--epoch-size`` spectra drawn in turn from one pool); one
``specdenoise evaluate`` then scores every variant and the template fit on the same validation
spectra, so the report's per-S/N-bin table, line-pixel |R|, structure kept and bootstrap
intervals compare them directly.

    base        the best preset's U-Net (rel_l1 loss, sigma input, AdamW one-cycle)
    pool        + global context by pooled-feature modulation at the bottleneck
    attention   + one transformer layer over the 256 bottleneck positions
    lines       + line pixels (> 3 % deep) weighted 3x in the loss (rel_l1_lines)
    physics     the physics model (an amortised template fit in front of the same U-Net)
    head        + an uncertainty head trained with beta-NLL at weight 0.01 (does the head
                cost accuracy when the NLL barely pulls on the mean?)

Variants train ``--jobs`` at a time, each on ``--threads`` threads (on a 2-core machine two
one-thread runs beside each other beat two two-thread runs one after the other, and their
rates are comparable). A finished variant is not trained again (``train --resume``)::

    python benchmarks/floor.py --pool best/train.zarr --val best/val.zarr --work floor-runs \\
        --epochs 10 --epoch-size 3000 --template-n 200 --out results/floor

evaluates into ``WORK/evaluation`` and copies its ``summary.csv`` and ``report.md`` (mean |R|
per S/N bin with bootstrap intervals, line-pixel |R|, structure kept, Ca II equivalent widths,
the template fit beside every variant) and each variant's training rate (``rates.csv``) to
``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

#: per variant: the network, and the options over the best preset's
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "base": ("unet", []),
    "pool": ("unet", ["--model-cfg", json.dumps({"global_context": "pool"})]),
    "attention": ("unet", ["--model-cfg", json.dumps({"global_context": "attention"})]),
    "lines": ("unet", ["--loss", "rel_l1_lines"]),
    "physics": ("physics", []),
    "head": ("unet", ["--model-cfg", json.dumps({"uncertainty": "nll"}), "--nll-weight", "0.01"]),
}


def train_argv(name: str, args) -> list[str]:
    arch, extra = VARIANTS[name]
    run = Path(args.work) / name
    resume = ["--resume"] if (run / "checkpoint.pt").exists() else []
    return ["train", "--arch", arch, "--preset", "best", "--data", args.pool, "--val",
            args.val, "--out", str(run), "--epochs", str(args.epochs), "--epoch-size",
            str(args.epoch_size), "--seed", str(args.seed), *resume, "--no-progress", *extra]


def _finished(run: Path, epochs: int) -> bool:
    try:
        with open(run / "metrics.csv") as fh:
            return sum(1 for _ in csv.DictReader(fh)) >= epochs
    except OSError:
        return False


def train_all(names: list[str], args) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    todo = [n for n in names if not _finished(Path(args.work) / n, args.epochs)]
    running: list[tuple[str, subprocess.Popen, object]] = []
    Path(args.work).mkdir(parents=True, exist_ok=True)
    while todo or running:
        while todo and len(running) < args.jobs:
            name = todo.pop(0)
            argv = train_argv(name, args)
            print(f"$ OMP_NUM_THREADS={args.threads} specdenoise {shlex.join(argv)}",
                  flush=True)
            log = open(Path(args.work) / f"{name}.log", "a")  # noqa: SIM115 (closed below)
            running.append((name, subprocess.Popen(["specdenoise", *argv], env=env, stdout=log,
                                                   stderr=subprocess.STDOUT), log))
        time.sleep(5)
        for item in list(running):
            name, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                if proc.returncode:
                    for _, other, _ in running:
                        other.terminate()
                    raise SystemExit(f"training {name} failed (exit {proc.returncode}); see "
                                     f"{Path(args.work) / (name + '.log')}")
                print(f"   {name} done", flush=True)


def evaluate(names: list[str], args) -> Path:
    out = Path(args.work) / "evaluation"
    argv = ["evaluate", "--data", args.val, "--out", str(out), "--baselines", "none,template",
            "--template-n", str(args.template_n), "--overwrite", "--no-progress"]
    for n in names:
        argv += ["--run", str(Path(args.work) / n)]
    print(f"$ specdenoise {shlex.join(argv)}", flush=True)
    subprocess.run(["specdenoise", *argv], check=True)
    return out


def _rate(run: Path) -> float:
    """Median training rate of a run over its epochs, spectra/s."""
    with open(run / "metrics.csv") as fh:
        rates = sorted(float(r["spectra_per_s"]) for r in csv.DictReader(fh)
                       if r.get("spectra_per_s"))
    return rates[len(rates) // 2] if rates else float("nan")


def publish(names: list[str], eval_dir: Path, args) -> None:
    """Copy the evaluation's summary, report and main figure to ``--out``, with each variant's
    training rate (``rates.csv``)."""
    import shutil

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in ("summary.csv", "report.md"):
        shutil.copy2(eval_dir / f, out / f)
    fig = eval_dir / "figures" / "error_vs_snr.png"
    if fig.exists():
        shutil.copy2(fig, out / "error_vs_snr.png")
    with open(out / "rates.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["variant", "median_spectra_per_s", "threads"])
        for n in names:
            w.writerow([n, f"{_rate(Path(args.work) / n):.1f}", args.threads])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", required=True, help="training pool (best preset: 100,000 spectra)")
    p.add_argument("--val", required=True, help="validation store (default set, seed 2)")
    p.add_argument("--work", default="floor-runs", help="run folders and evaluation")
    p.add_argument("--out", default="results/floor")
    p.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants (default all)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--epoch-size", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="variants trained at once")
    p.add_argument("--threads", type=int, default=1, help="threads per training")
    p.add_argument("--template-n", type=int, default=200)
    p.add_argument("--skip-train", action="store_true", help="only evaluate finished runs")
    args = p.parse_args(argv)
    names = args.only or list(VARIANTS)
    if not args.skip_train:
        train_all(names, args)
    eval_dir = evaluate(names, args)
    publish(names, eval_dir, args)
    print(f"report: {eval_dir / 'report.md'}; summary copied to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
