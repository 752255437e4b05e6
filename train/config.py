"""The configuration of a training run: :class:`TrainConfig`, built from a preset
(:func:`make_config`) or from the checkpoint of the run being resumed (:func:`resume_config`),
checked where it is built, and written to TOML and read back (``train --config`` /
``--print-config``, :mod:`specdenoise.configfile`).

Imports no torch, so that ``--help`` and the ``run`` presets (made of these objects) stay fast.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from specdenoise import configfile
from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate.pfs import RED_MR_NPIX
from specdenoise.train.presets import DEFAULT_MODEL, DEFAULT_PRESET, PRESETS

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("step", "cosine", "onecycle", "none")
LOSSES = ("mse", "l1", "chi2", "rel_l1", "rel_l1_lines")
PRECISIONS = ("auto", "fp32", "bf16")
#: the calibration distortion the network sees (``train --distortion``)
DISTORTIONS = ("stored", "fresh")

#: options that may change when a run is resumed (they do not change the maths). Not
#: ``workers``: the DataLoader workers split each epoch into shards with shuffle buffers of
#: their own, so the batches (and losses) depend on their number.
RESUME_MAY_CHANGE = ("epochs", "device", "compile", "calibrate_spectra", "threads")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint and config.json).

    Frozen and checked when built (:func:`check_config`): a config that exists is valid. Change
    one with :func:`dataclasses.replace`. In TOML (:meth:`to_dict`) the keys are these field
    names, as in config.json.
    """

    data: str
    val: str | None
    out: str
    model: str = DEFAULT_MODEL
    preset: str = DEFAULT_PRESET
    model_cfg: dict = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 100
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    scheduler: str = "step"
    lr_step_epoch: int = 20
    lr_gamma: float = 0.1
    loss: str = "mse"
    seed: int = 0
    workers: int = 0
    # CPU threads: None (auto) picks PyTorch's count less the cores other processes keep busy
    # when the run starts, and the run records what it picked; 0: PyTorch's count
    threads: int | None = None
    device: str = "auto"
    compile: bool = False
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; head and loss stay float32)
    target_distortion: bool = True  # True: pure denoising (target keeps the distortion)
    distortion: str = "stored"  # stored: the simulation's; fresh: a new draw every epoch
    distortion_max: float = 0.02  # amplitude of the fresh draws
    shuffle_buffer: int = 1024
    epoch_size: int = 0  # spectra per epoch from the training pool (0: all of it every epoch)
    noise: str = "loader"  # or "device": draw noise and distortion on the training device
    init_from: str | None = None  # a trained run: train `model` on its outputs (a chain), or
    # for the physics model, start from that run's encoder and emulator
    n_wave: int = RED_MR_NPIX
    # a network with an uncertainty head (model option uncertainty "nll") also learns the
    # log-variance of its error with beta-NLL (beta_nll), weighted by nll_weight; with
    # nll_detach_mean the NLL does not reach the mean directly (it still shapes the layers
    # the mean and the log-variance share)
    nll_beta: float = 0.5
    nll_weight: float = 1.0
    nll_detach_mean: bool = False
    # after the last epoch, fit the run's uncertainty calibration and suspect threshold on the
    # validation set (uncertainty.json); 0 switches it off, else the spectra used at most
    calibrate_spectra: int = 2000

    def __post_init__(self):
        check_config(self)

    def to_dict(self) -> dict:
        """The fields as plain values for TOML: a ``model_cfg`` holding a null (e.g. the
        physics model's ``unet = null``, which TOML cannot write) is given as its JSON text."""
        d = dataclasses.asdict(self)
        if _has_none(d["model_cfg"]):
            d["model_cfg"] = json.dumps(d["model_cfg"])
        return d

    @classmethod
    def from_dict(cls, table: Mapping) -> TrainConfig:
        """The config a complete table describes (what :meth:`to_dict` gave; ``val`` left
        out is None)."""
        return configfile.build(cls, {"val": None, **table_values(table, "training config")},
                                "training config")


def make_config(data, val, out, *, model: str = DEFAULT_MODEL, preset: str = DEFAULT_PRESET,
                model_cfg: dict | None = None, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a preset; ``None`` overrides keep the preset's value."""
    if preset not in PRESETS:
        raise SpecdenoiseError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = dict(PRESETS[preset])
    cfg_model = dict(p.pop("model_cfg").get(model, {}))
    cfg_model.update(model_cfg or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise SpecdenoiseError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    p.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(data=str(data), val=None if val is None else str(val), out=str(out),
                       model=model, preset=preset, model_cfg=cfg_model, **p)


def check_config(cfg: TrainConfig) -> None:
    """One line for the first option of ``cfg`` that no run could use (its type first: a TOML
    file can put text where a number belongs)."""
    configfile.check_types(cfg, "training option")
    for name, value, allowed in (("optimizer", cfg.optimizer, OPTIMIZERS),
                                 ("scheduler", cfg.scheduler, SCHEDULERS),
                                 ("loss", cfg.loss, LOSSES),
                                 ("noise", cfg.noise, ("loader", "device")),
                                 ("precision", cfg.precision, PRECISIONS),
                                 ("distortion", cfg.distortion, DISTORTIONS)):
        if value not in allowed:
            raise SpecdenoiseError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise SpecdenoiseError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if not 0 <= cfg.seed < 2**63:
        raise SpecdenoiseError(f"seed (--seed) must be a non-negative integer below 2**63, got "
                               f"{cfg.seed}")
    if cfg.threads is not None and cfg.threads < 0:
        raise SpecdenoiseError(f"threads (--threads) must be a positive count or 'auto', got "
                               f"{cfg.threads}")
    if cfg.workers < 0:
        raise SpecdenoiseError(f"workers (--loader-workers) must be 0 or more, got {cfg.workers}")
    if not cfg.lr > 0:
        raise SpecdenoiseError(f"lr must be positive, got {cfg.lr}")
    if cfg.epoch_size < 0:
        raise SpecdenoiseError(f"epoch_size must be 0 (the whole store) or more, got "
                               f"{cfg.epoch_size}")
    if not 0 <= cfg.distortion_max < 1:
        raise SpecdenoiseError(f"distortion_max must be in [0, 1), got {cfg.distortion_max}")
    if not 0 <= cfg.nll_beta <= 1 or cfg.nll_weight < 0:
        raise SpecdenoiseError(f"nll_beta must be in [0, 1] and nll_weight not negative, got "
                               f"{cfg.nll_beta} and {cfg.nll_weight}")


def upgrade_config(stored: dict) -> dict:
    """A stored training configuration in today's terms (older checkpoints say ``amp``)."""
    stored = dict(stored)
    if "amp" in stored:  # before 0.2: bf16 autocast on CUDA only, switched by amp
        stored.setdefault("precision", "auto" if stored.pop("amp") else "fp32")
    return stored


def norm_option(v):
    return str(v) if isinstance(v, Path) else v


def _has_none(value) -> bool:
    if isinstance(value, Mapping):
        return any(_has_none(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_none(v) for v in value)
    return value is None


def table_values(table: Mapping, where: str) -> dict:
    """The :class:`TrainConfig` fields in a TOML table (a ``--config`` file or a ``[[train]]``
    table of a run): unknown keys refused, ``model_cfg`` as a table or its JSON text."""
    configfile.check_keys(table, configfile.field_names(TrainConfig), where)
    values = dict(table)
    if str(values.get("threads")).lower() == "auto":
        values["threads"] = None
    if isinstance(values.get("model_cfg"), str):
        try:
            values["model_cfg"] = json.loads(values["model_cfg"])
        except json.JSONDecodeError as exc:
            raise SpecdenoiseError(f"{where}: model_cfg is not a table or JSON: {exc}") from None
    return configfile.coerce(TrainConfig, values)
