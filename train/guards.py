"""Checks that keep training honest: finite losses and weights, sane inputs, the same data.

The training loop calls these at a few points (kept out of the loop itself so that it stays a
readable composition of steps):

- :func:`check_loss_sum` on the running sum of the batch losses, every few steps and at the end
  of an epoch. Every loss is non-negative, so the sum is finite exactly when every batch's
  loss was; checking the sum needs no extra device synchronisation per batch.
- :func:`check_weights` after each epoch, before the checkpoint is written; and
  :func:`finite_state` in :func:`~specdenoise.train.checkpoint.save_checkpoint`, so a non-finite
  checkpoint is never written (it would replace the last good one).
- :func:`check_chunk_values` on every chunk read: normalised spectra have median 0.5, so a
  value beyond :data:`MAX_ABS_VALUE` is corrupt data (its square overflows float32 in the loss).
- :func:`check_same_data` (of what :func:`specdenoise.train.data.data_identity` read): a resumed
  run must see the same training and validation data as the run it continues, not a store
  replaced at the same path.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from specdenoise.errors import SpecdenoiseError

#: largest |value| accepted in a normalised spectrum (median 0.5): 20,000 times the median
MAX_ABS_VALUE = 1e4


def check_loss_sum(total, epoch: int, step: int | None = None) -> None:
    """Stop when the summed training loss of this epoch is NaN or infinite."""
    value = float(total.item() if torch.is_tensor(total) else total)
    if not math.isfinite(value):
        where = f" by batch {step + 1}" if step is not None else ""
        raise SpecdenoiseError(
            f"training stopped in epoch {epoch + 1}: the loss became {value}{where} (diverged, "
            "or extreme values in the data); lower --lr or check the dataset; the last "
            "checkpoint is kept")


def finite_state(state_dict) -> str | None:
    """The name of the first floating-point tensor with a NaN or infinite value, or None."""
    for name, t in state_dict.items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_weights(model: torch.nn.Module, epoch: int) -> None:
    """Stop when any weight or buffer of ``model`` is NaN or infinite after ``epoch``."""
    bad = finite_state(model.state_dict())
    if bad is not None:
        raise SpecdenoiseError(
            f"training stopped after epoch {epoch + 1}: weights ({bad}) became NaN or infinite; "
            "lower --lr or check the dataset; the last checkpoint is kept")


def check_chunk_values(arrays: dict, good: np.ndarray, path: str, first_row: int) -> None:
    """Refuse absurdly large values in the unmasked pixels of a chunk's spectra."""
    for name, a in arrays.items():
        if a.size == 0 or (a.max() <= MAX_ABS_VALUE and a.min() >= -MAX_ABS_VALUE):
            continue  # the usual case: two passes, no temporaries
        big = (np.abs(a) > MAX_ABS_VALUE) & good
        if big.any():
            row = first_row + int(np.nonzero(big.any(axis=1))[0][0])
            raise SpecdenoiseError(
                f"dataset {path}: {name} has values beyond +-{MAX_ABS_VALUE:g} in unmasked "
                f"pixels (first at spectrum {row}); normalised spectra have median 0.5: fix "
                "or mask them")


def describe_grid(wave) -> str:
    wave = np.asarray(wave, dtype=np.float64)
    return f"{wave.size} pixels, {wave[0]:.4f}-{wave[-1]:.4f} nm"


def grid_mismatch(a, b) -> float | None:
    """The largest difference of two pixel grids in pixels (None when they agree to within
    half a pixel); grids of different lengths differ by ``inf``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.inf  # (a NaN would compare as "close": NaN > 0.5 is False)
    step = abs(float(a[1] - a[0])) if a.size > 1 else 1.0
    worst = float(np.max(np.abs(a - b))) / step if a.size else 0.0
    return worst if worst > 0.5 else None


def check_same_wave(train_wave, val_wave, train_path, val_path) -> None:
    """Refuse a validation set on another pixel grid than the training set."""
    if train_wave is None or val_wave is None:
        return
    off = grid_mismatch(train_wave, val_wave)
    if off is not None:
        raise SpecdenoiseError(
            f"the validation set {val_path} is on another wavelength grid "
            f"({describe_grid(val_wave)}) than the training set {train_path} "
            f"({describe_grid(train_wave)}; they differ by up to {off:.3g} pixels); simulate "
            "both on one grid")


def check_same_data(saved: dict | None, current: dict, run: str) -> None:
    """Refuse to resume on data other than the run was trained on (``saved`` None: a
    checkpoint written before this check existed, accepted)."""
    if not saved:
        return
    for which, ident in current.items():
        old = saved.get(which)
        if old is None or ident is None:
            continue
        if old != ident:
            diff = next((k for k in ident if ident.get(k) != old.get(k)), "content")
            raise SpecdenoiseError(
                f"run {run} was trained on other {which} data than the store now at that path "
                f"({diff} differs: the store was replaced); resume with the original data or "
                "start a new --out")
