"""What a training run writes beside its checkpoint, after every epoch: ``config.json``,
``metrics.csv`` (one row per epoch), ``learning_curve.png``, TensorBoard scalars and a log line.

Every file is written through :func:`specdenoise.stores.write_file` (a unique temporary, then a
rename), so an interrupted run never leaves a half-written one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np

from specdenoise import stores

log = logging.getLogger("specdenoise.train")


def report_epoch(out: Path, history: list[dict], epochs: int, tb=None) -> None:
    """Rewrite metrics.csv and the learning curve from ``history``, add the last row to the
    TensorBoard writer ``tb`` (if any) and log it."""
    row = history[-1]
    write_metrics(out / "metrics.csv", history)
    plot_learning_curve(history, out / "learning_curve.png")
    if tb is not None:
        for k, v in row.items():
            if k != "epoch":
                tb.add_scalar(k, v, row["epoch"])
    log.info("epoch %d/%d  %s", row["epoch"], epochs,
             "  ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k != "epoch"))


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON at ``path``, replacing it whole (config.json)."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    stores.write_file(path, lambda tmp: tmp.write_text(text), overwrite=True)


def write_metrics(path: Path, history: list[dict]) -> None:
    """Rewrite the per-epoch CSV from the history (so a resumed run never duplicates rows)."""
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(history)
    stores.write_file(path, lambda tmp: tmp.write_text(buf.getvalue()), overwrite=True)


def plot_learning_curve(history: list[dict], path: Path) -> Path:
    """Training loss and validation mean |R| against epoch, written next to metrics.csv."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", ms=3, color="C0",
            label="training loss")
    if any("val_loss" in r for r in history):
        ax.plot(epochs, [r.get("val_loss", np.nan) for r in history], "s--", ms=3, color="C0",
                alpha=0.6, label="validation loss")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_ylabel("loss", color="C0")
    handles, labels = ax.get_legend_handles_labels()
    if any("val_mean_abs_rel" in r for r in history):
        ax2 = ax.twinx()
        ax2.plot(epochs, [100 * r.get("val_mean_abs_rel", np.nan) for r in history], "o-",
                 ms=3, color="C3", label="validation mean |R|")
        ax2.set_ylabel("validation mean |R| (%)", color="C3")
        ax2.set_yscale("log")
        ax2.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))  # plain per cent, not 6x10^0
        ax2.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right", fontsize="small")
    last = history[-1].get("val_mean_abs_rel")
    ax.set_title(f"{len(history)} epochs" + ("" if last is None else
                                             f"; last validation mean |R| {100 * last:.2f} %"),
                 fontsize="medium")
    return stores.write_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"),
                             overwrite=True)


def tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
