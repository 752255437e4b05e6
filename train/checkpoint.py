"""Checkpoints: everything needed to resume a run exactly, or to rebuild its model.

A run directory holds ``checkpoint.pt`` (rewritten atomically after every epoch), ``config.json``
and ``metrics.csv``. The checkpoint is a plain dict readable with ``torch.load(...,
weights_only=True)``:

``format``, ``format_version``, ``package_version``, ``epoch`` (epochs completed), ``model``
(``name``, ``cfg``, ``state``, ``summary``; a network trained on a frozen one's outputs holds
that one's ``name`` and ``cfg`` under ``cfg["first"]``, and earlier versions stored such a pair
as ``chain``, which :func:`specdenoise.train.nets.upgrade_spec` reads), ``optimizer``,
``scheduler``, ``rng``, ``config`` (the training configuration), ``normalisation`` (how inputs
were scaled and what the target is), ``wave`` (nm, the model's pixel grid) and ``history``
(per-epoch metrics rows).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from specdenoise import __version__, stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.stores import CHECKPOINT_NAME
from specdenoise.train.config import RESUME_MAY_CHANGE, TrainConfig, norm_option, upgrade_config
from specdenoise.train.nets import build_model

FORMAT = "specdenoise-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename).

    Refuses a model whose weights are not all finite: it would replace the last good
    checkpoint with one that denoises everything to NaN.
    """
    from specdenoise.train.guards import finite_state

    bad = finite_state(state.get("model", {}).get("state", {}))
    if bad is not None:
        raise SpecdenoiseError(f"not writing {path}: weight {bad} is NaN or infinite; the "
                               "last checkpoint is kept")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "format_version": FORMAT_VERSION,
             "package_version": __version__, **state}
    return stores.write_file(path, lambda tmp: _save(state, tmp), overwrite=True)


def _save(state: dict, tmp: Path) -> None:
    """``torch.save``, whose failure to write (a full disk, a quota) is a RuntimeError naming
    a position in its zip writer: one line instead, the last checkpoint kept."""
    try:
        torch.save(state, tmp)
    except RuntimeError as exc:
        try:
            st = os.statvfs(tmp.parent)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = None
        why = ("the disk is full" if free is not None and free < (1 << 20) else
               f"the write failed ({' '.join(str(exc).split())[:120]})")
        raise SpecdenoiseError(f"cannot write the checkpoint in {tmp.parent}: {why}; the last "
                               "checkpoint is kept") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, given either it or its run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise SpecdenoiseError(f"no checkpoint at {path}; pass a run directory or a .pt file "
                               "written by 'specdenoise train'")
    return path


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load and check a checkpoint (file or run directory)."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise SpecdenoiseError(f"cannot read checkpoint {path}: {exc}".splitlines()[0]) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SpecdenoiseError(f"{path} is not a specdenoise checkpoint")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise SpecdenoiseError(
            f"{path} was written by a newer specdenoise ({state.get('package_version')}); "
            "upgrade to read it"
        )
    return state


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_model(path: str | Path, device=None) -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model in eval mode on ``device`` (default: cuda, mps or cpu).

    Returns ``(model, config)``; ``config`` has the training configuration under ``train``,
    and ``model`` (name, cfg, summary), ``normalisation``, ``wave``, ``epoch``,
    ``package_version``, ``history``, ``data_identity`` and ``path``.
    """
    state = read_checkpoint(path)
    device = torch.device(device) if device is not None else default_device()
    m = state.get("model")
    where = resolve_checkpoint(path)
    if not (isinstance(m, dict) and isinstance(m.get("name"), str)
            and isinstance(m.get("cfg"), dict) and isinstance(m.get("state"), dict)):
        raise SpecdenoiseError(f"checkpoint {where} lacks its model entry (name, cfg, weights); "
                               "it was not written by 'specdenoise train' or is damaged")
    huge = _huge_number(m["cfg"])
    if huge is not None:
        raise SpecdenoiseError(f"checkpoint {where} asks for a model with {huge[0]} = {huge[1]}; "
                               "refused (a damaged or foreign checkpoint)")
    try:
        model = build_model(m["name"], **m["cfg"])
        model.load_state_dict(m["state"])
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        first = " ".join(str(exc).split())[:300]
        raise SpecdenoiseError(f"checkpoint {where}: its weights do not fit its model "
                               f"{m['name']!r} ({first})") from None
    model.to(device).eval()
    config = {
        "path": str(resolve_checkpoint(path)),
        "train": state.get("config", {}),
        "model": {k: m[k] for k in ("name", "cfg", "summary") if k in m},
        "normalisation": state.get("normalisation", {}),
        "wave": state.get("wave"),
        "epoch": state.get("epoch"),
        "package_version": state.get("package_version"),
        "history": state.get("history", []),
        "data_identity": state.get("data_identity"),  # what it was trained on (guards)
    }
    return model, config


#: the largest number a model configuration may hold (pixels, filters, widths): larger ones
#: would allocate without end before any check
MAX_MODEL_NUMBER = 10**6


def _huge_number(cfg, key: str = "cfg") -> tuple[str, object] | None:
    """(key, value) of the first number in a model configuration beyond MAX_MODEL_NUMBER."""
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            found = _huge_number(v, str(k))
            if found:
                return found
    elif isinstance(cfg, list | tuple):
        for v in cfg:
            found = _huge_number(v, key)
            if found:
                return found
    elif isinstance(cfg, int | float) and not isinstance(cfg, bool):
        if not abs(cfg) <= MAX_MODEL_NUMBER:
            return key, cfg
    return None


def _same_option(key: str, stored, given) -> bool:
    """Whether a resume's option ``given`` is the stored one; a dataset given by another
    name of the same local path (relative, with ``~``, through a link) is the same."""
    a, b = norm_option(stored), norm_option(given)
    if a == b:
        return True
    if key in ("data", "val") and isinstance(a, str) and isinstance(b, str) \
            and "://" not in a and "://" not in b:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return False


def resume_config(out, **overrides) -> TrainConfig:
    """The configuration of the run in ``out``, with the options a resume may change.

    Any other option given (not None) must equal the stored one.
    """
    state = read_checkpoint(Path(out) / CHECKPOINT_NAME)
    stored = upgrade_config(state["config"])
    stored.setdefault("threads", 0)  # runs made before --threads computed with PyTorch's count
    cfg = TrainConfig(**stored)
    for k, v in overrides.items():
        if v is None:
            continue
        if k in RESUME_MAY_CHANGE:
            cfg = dataclasses.replace(cfg, **{k: v})
        elif k == "model_cfg":
            if {**cfg.model_cfg, **v} != cfg.model_cfg:
                raise SpecdenoiseError(f"run {out} was trained with model_cfg {cfg.model_cfg}; "
                                       "resume with the same options or start a new --out")
        elif not _same_option(k, getattr(cfg, k), v):
            raise SpecdenoiseError(
                f"run {out} was trained with {k} = {getattr(cfg, k)!r}, not {v!r}; resume with "
                "the same options or start a new --out"
            )
    return cfg
