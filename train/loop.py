"""The training loop: presets, one epoch of training and validation, checkpoints, DDP.

Exactness: everything random in an epoch is keyed by (seed, epoch[, rank]) -- the data order
and noise (see :mod:`specdenoise.train.data`) and the global torch generator used by dropout,
reseeded at the start of each epoch -- and the learning rate is a pure function of the epoch.
So a run resumed from the checkpoint of epoch k repeats epochs k+1... bit for bit on a CPU.

Multi-GPU: start with ``torchrun --nproc_per_node N -m specdenoise.cli train ...``; each rank
streams its own share of the spectra (no duplicates, no gaps; shares differ by at most a few
spectra, handled with DDP's ``Join``). ``--batch-size`` is the global batch, split over ranks.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from specdenoise import metrics
from specdenoise.errors import SpecdenoiseError
from specdenoise.train import data as tdata
from specdenoise.train import guards
from specdenoise.train.checkpoint import (
    CHECKPOINT_NAME,
    default_device,
    read_checkpoint,
    resume_config,  # noqa: F401 (train.loop.resume_config, as before)
    save_checkpoint,
)

# the run's configuration (TrainConfig, its checks and resume) is train/config.py, which
# imports no torch (run presets and --help are built from it); its names stay importable here
from specdenoise.train.config import (  # noqa: F401
    LOSSES,
    OPTIMIZERS,
    PRECISIONS,
    RESUME_MAY_CHANGE,
    SCHEDULERS,
    TrainConfig,
    check_config,
    make_config,
    upgrade_config,
)
from specdenoise.train.models import MODELS, build_model, model_input, model_summary

log = logging.getLogger("specdenoise.train")


#: one-cycle schedule: fraction of the run spent warming up, start and end as fractions of lr
ONECYCLE_WARMUP, ONECYCLE_START, ONECYCLE_END = 0.25, 0.04, 1e-3


def lr_at(cfg: TrainConfig, epoch: int, frac: float = 0.0) -> float:
    """Learning rate ``frac`` of the way through (0-based) ``epoch``.

    A pure function of the position in the run, so resuming is exact. Only ``onecycle``
    changes within an epoch: a cosine warm-up from ``ONECYCLE_START * lr`` to ``lr`` over the
    first quarter of the run, then a cosine decay to ``ONECYCLE_END * lr``.
    """
    if cfg.scheduler == "onecycle":
        t = min(max((epoch + frac) / cfg.epochs, 0.0), 1.0)
        if t < ONECYCLE_WARMUP:
            lo, hi, u = ONECYCLE_START, 1.0, t / ONECYCLE_WARMUP
        else:
            lo, hi, u = 1.0, ONECYCLE_END, (t - ONECYCLE_WARMUP) / (1 - ONECYCLE_WARMUP)
        return cfg.lr * (hi + (lo - hi) * 0.5 * (1.0 + math.cos(math.pi * u)))
    if cfg.scheduler == "step":  # the paper's: one drop, by lr_gamma, after lr_step_epoch epochs
        return cfg.lr * (cfg.lr_gamma if epoch >= cfg.lr_step_epoch else 1.0)
    if cfg.scheduler == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr


# --------------------------------------------------------------------------- losses


def masked_mean(values: torch.Tensor, good: torch.Tensor) -> torch.Tensor:
    w = good.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def loss_terms(name: str, pred, target, sigma) -> torch.Tensor:
    """Per-pixel loss (b, n_wave) in float32."""
    diff = pred.float() - target
    if name == "mse":
        return diff.square()
    if name == "l1":
        return diff.abs()
    if name == "chi2":  # sigma-weighted: residuals in units of the noise
        return (diff / sigma).square()
    if name == "rel_l1":  # the evaluation metric |R| itself
        return diff.abs() / target.abs().clamp_min(1e-3)
    if name == "rel_l1_lines":  # |R| with line pixels weighted up (line_weights)
        return diff.abs() / target.abs().clamp_min(1e-3) * line_weights(target)
    raise SpecdenoiseError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


#: the weight of a line pixel in the ``rel_l1_lines`` loss (continuum pixels weigh 1)
LINE_LOSS_WEIGHT = 3.0
#: width in pixels of the running maximum and running mean that give the loss's continuum
LINE_LOSS_WINDOW = 129


def line_weights(target: torch.Tensor, weight: float = LINE_LOSS_WEIGHT) -> torch.Tensor:
    """Per-pixel loss weights (b, n): ``weight`` on line pixels of the clean ``target``, else 1.

    A line pixel is deeper than 3 % (:data:`specdenoise.metrics.LINE_DEPTH`, the line-aware
    metrics' threshold) below a continuum taken as the morphological closing of the target
    over :data:`LINE_LOSS_WINDOW` pixels (5.5 nm: a running maximum, then a running minimum,
    which fills every dip narrower than the window and keeps a sloped continuum), smoothed by
    a running mean of the same width. That continuum is cruder than the metrics' (which fits
    segments) and biased within half a window of the ends, but it is cheap on a batch and only
    decides where the loss leans; the metric is unchanged.
    """
    from specdenoise.metrics import LINE_DEPTH

    t = target.float().unsqueeze(1)
    half = LINE_LOSS_WINDOW // 2
    pool = torch.nn.functional.max_pool1d
    env = -pool(-pool(t, LINE_LOSS_WINDOW, stride=1, padding=half), LINE_LOSS_WINDOW, stride=1,
                padding=half)
    cont = torch.nn.functional.avg_pool1d(env, LINE_LOSS_WINDOW, stride=1, padding=half,
                                          count_include_pad=False)
    line = (1 - t / cont.clamp_min(1e-3)) > LINE_DEPTH
    return (1 + (weight - 1) * line.float()).squeeze(1)


def beta_nll(mean, logvar, target, beta: float = 0.5) -> torch.Tensor:
    """Per-pixel beta-NLL (b, n_wave) in float32 (Seitz et al. 2022, ICLR, arXiv:2203.09168).

    The Gaussian negative log-likelihood ``(log var + (target - mean)^2 / var) / 2``, each
    pixel weighted by ``var^beta`` treated as a constant. Plain NLL (beta 0) lets the network
    buy a low loss by declaring hard pixels noisy and then stop fitting them; beta 0.5 keeps
    the mean's gradient close to that of a squared error, so the denoised flux does not pay
    for the uncertainty it learns. Units: normalised flux (median 0.5).
    """
    logvar = logvar.float()
    nll = 0.5 * (logvar + (target - mean.float()).square() * torch.exp(-logvar))
    if beta:
        nll = nll * torch.exp(beta * logvar).detach()
    return nll


# --------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def _init_distributed(device_pref: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    started = False
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and not device_pref.startswith(("cpu", "mps"))
        dist.init_process_group("nccl" if use_nccl else "gloo")
        started = True
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                 started)


def resolve_device(pref: str, ctx: _Dist | None = None) -> torch.device:
    ctx = ctx or _Dist()
    if pref == "auto":
        dev = default_device()
    else:
        try:
            dev = torch.device(pref)
        except RuntimeError:
            raise SpecdenoiseError(f"unknown device {pref!r}; use auto, cpu, cuda or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecdenoiseError("--device cuda asked for, but torch sees no CUDA GPU")
        if ctx.active and dev.index is None:
            dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise SpecdenoiseError("--device mps asked for, but MPS is not available")
    return dev


# --------------------------------------------------------------------------- the run


def _loader(ds, workers: int, device: torch.device, seed: int) -> DataLoader:
    # its own generator, so creating loaders never consumes the global torch RNG
    return DataLoader(ds, batch_size=None, num_workers=workers,
                      pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(seed),
                      prefetch_factor=4 if workers else None)


def _to(batch: dict, device: torch.device) -> dict:
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) for k, v in batch.items()}


def _unwrap_loader_error(exc: SpecdenoiseError) -> SpecdenoiseError:
    """A SpecdenoiseError re-raised by a DataLoader worker carries a traceback; keep its line."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    msg = lines[-1] if lines else str(exc)
    prefix = "SpecdenoiseError: "
    return SpecdenoiseError(msg.split(prefix, 1)[1] if prefix in msg else msg)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None) -> dict:
    """Train (or resume) the run ``cfg.out``; returns the last epoch's metrics row.

    ``progress``: show a progress bar (None: only on a terminal; rank 0 only), see
    :func:`specdenoise.progress.bar`.
    """
    from specdenoise.progress import bar as progress_bar

    check_config(cfg)
    ctx = _init_distributed(cfg.device)
    try:
        out = Path(cfg.out)
        ckpt_path = out / CHECKPOINT_NAME
        if ckpt_path.exists() and not resume:
            raise SpecdenoiseError(f"{out} already holds a training run; pass --resume to "
                                   "continue it or choose another --out")
        if resume and not ckpt_path.exists():
            raise SpecdenoiseError(f"nothing to resume: {ckpt_path} does not exist")
        device = resolve_device(cfg.device, ctx)
        train_info = tdata.inspect_store(cfg.data, tdata.TRAIN_VARS, n_wave=cfg.n_wave)
        val_info = (tdata.inspect_store(cfg.val, tdata.VAL_VARS, n_wave=cfg.n_wave)
                    if cfg.val else None)
        wave = _read_wave(train_info)
        if val_info is not None:
            guards.check_same_wave(wave, _read_wave(val_info), cfg.data, cfg.val)
        identity = {"train": tdata.data_identity(train_info),
                    "val": tdata.data_identity(val_info) if val_info else None}

        torch.manual_seed(tdata.key(cfg.seed, 6))  # initial weights
        state = read_checkpoint(ckpt_path, map_location=device) if resume else None
        stored_model = None if state is None else state["model"]
        spec_name, spec_cfg, init_state = _model_spec(cfg, stored_model, train_info)
        model = build_model(spec_name, **spec_cfg)
        if init_state is not None:  # weights of the run it starts from (--init-from)
            unexpected = model.load_state_dict(init_state, strict=False).unexpected_keys
            if unexpected:
                raise SpecdenoiseError(f"{cfg.init_from} holds weights this model lacks "
                                       f"({unexpected[0]}, ...)")
        train_info, val_info = _with_params(cfg, model, train_info, val_info)
        summary = model_summary(model, cfg.n_wave)
        model.to(device)
        optimizer = _make_optimizer(cfg, model)
        history: list[dict] = []
        start = 0
        if state is not None:
            guards.check_same_data(state.get("data_identity"), identity, str(out))
            model.load_state_dict(state["model"]["state"])
            optimizer.load_state_dict(state["optimizer"])
            _set_rng(state.get("rng", {}))
            start, history = int(state["epoch"]), list(state.get("history", []))
        if ctx.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            _write_json(out / "config.json", {"train": dataclasses.asdict(cfg),
                                              "model_summary": summary})
            log.info("%s: %s parameters, %.3g GFLOP per spectrum; %d training spectra on %s%s",
                     cfg.model, f"{summary['parameters']:,}",
                     summary["flops_per_spectrum"] / 1e9, train_info.n_spectrum, device,
                     f" x {ctx.world} ranks" if ctx.active else "")
        if start >= cfg.epochs and ctx.rank == 0:
            log.info("%s already has %d of %d epochs; nothing to do", out, start, cfg.epochs)

        net = model
        if ctx.active:
            ddp_ids = [device.index] if device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ddp_ids)
        if cfg.compile:
            net = torch.compile(net)
        per_rank_batch = max(1, cfg.batch_size // ctx.world)
        tb = _tensorboard(out) if ctx.rank == 0 else None
        show = progress if ctx.rank == 0 else False

        row = history[-1] if history else {}
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(tdata.key(cfg.seed, epoch, 4, ctx.rank))  # dropout masks
            lr = lr_at(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            ds = tdata.SpectrumStream(
                train_info, batch_size=per_rank_batch, mode="train", seed=cfg.seed,
                shuffle_buffer=cfg.shuffle_buffer, rank=ctx.rank, world_size=ctx.world,
                noise=cfg.noise, distortion=cfg.distortion,
                distortion_max=cfg.distortion_max, target_distortion=cfg.target_distortion,
                epoch_size=cfg.epoch_size)
            ds.set_epoch(epoch)
            bar = progress_bar(ds.rank_size(cfg.workers), f"epoch {epoch + 1}/{cfg.epochs}",
                               "spec", enabled=show, leave=False)
            try:
                stats = _train_epoch(cfg, ctx, net, optimizer, ds, device, epoch, bar)
                vstats = (_validate(cfg, ctx, model, net, val_info, per_rank_batch, device)
                          if val_info is not None else {})
            except SpecdenoiseError as exc:
                raise _unwrap_loader_error(exc) from None
            finally:
                bar.close()
            guards.check_weights(model, epoch)
            row = {"epoch": epoch + 1, "lr": lr, **stats, **vstats,
                   "epoch_time_s": time.perf_counter() - t0}
            history.append(row)
            if ctx.rank == 0:
                save_checkpoint(ckpt_path, {**_state(cfg, model, optimizer, epoch + 1, summary,
                                                     wave, history, (spec_name, spec_cfg)),
                                            "data_identity": identity})
                _write_metrics(out / "metrics.csv", history)
                plot_learning_curve(history, out / "learning_curve.png")
                if tb is not None:
                    for k, v in row.items():
                        if k != "epoch":
                            tb.add_scalar(k, v, epoch + 1)
                log.info("epoch %d/%d  %s", epoch + 1, cfg.epochs,
                         "  ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k != "epoch"))
            ctx.barrier()
        if tb is not None:
            tb.close()
        if ctx.rank == 0 and val_info is not None and cfg.calibrate_spectra > 0 \
                and len(history) >= cfg.epochs:
            _calibrate(cfg, model, device, per_rank_batch)
        return row
    finally:
        if ctx.started_here:
            dist.destroy_process_group()


def _calibrate(cfg: TrainConfig, model, device, batch_size: int) -> None:
    """Fit the uncertainty calibration and suspect threshold on the validation set."""
    from specdenoise.train import uncertainty

    path = uncertainty.calibration_path(cfg.out)
    if path.exists():  # a resumed, finished run: keep it (``specdenoise calibrate`` redoes it)
        return
    n_val = tdata.inspect_store(cfg.val, tdata.VAL_VARS, n_wave=cfg.n_wave).n_spectrum
    if n_val < uncertainty.MIN_BIN_SPECTRA:
        log.info("not calibrating the uncertainty: %d validation spectra are too few (at least "
                 "%d; 'specdenoise calibrate' on a larger set)", n_val,
                 uncertainty.MIN_BIN_SPECTRA)
        return
    t0 = time.perf_counter()
    cal = uncertainty.calibrate(model, cfg.val, max_spectra=cfg.calibrate_spectra,
                                batch_size=max(batch_size, 64), device=device, seed=cfg.seed)
    uncertainty.write_calibration(cfg.out, cal)
    log.info("uncertainty (%s) calibrated on %d validation spectra in %.1f s: scale %s, "
             "suspect above %.2f", cal.method, cal.n_spectra, time.perf_counter() - t0,
             " ".join(f"{s:.3g}" for s in cal.scale), cal.threshold)


def model_of(net: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a compiled and/or DDP wrapper."""
    net = getattr(net, "_orig_mod", net)
    return getattr(net, "module", net)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bfloat16 natively (AVX-512 BF16 or AMX): autocast pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(pref: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``pref`` on ``device`` (``auto``: bf16 where it is fast)."""
    if pref != "auto":
        return pref
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def _model_spec(cfg: TrainConfig, stored: dict | None = None, train_info=None):
    """(name, build_model kwargs, initial weights or None) of the run's model.

    ``stored``: the checkpoint's ``model`` entry when resuming (its spec is kept). With
    ``init_from`` the model is a :class:`~specdenoise.train.models.Chain` whose first network
    is the trained run's, described in full so the checkpoint stands on its own; a physics
    model starting from a physics run takes that run's encoder and emulator instead
    (:func:`_physics_from`). A model class with ``complete_config(cfg, store)`` (the physics
    model) takes what it needs from the training store ``train_info`` into its spec. The
    initial weights are a partial state dict (names as in the model).
    """
    if stored is not None:
        return stored["name"], dict(stored["cfg"]), None
    if not cfg.init_from:
        spec = {"n_wave": cfg.n_wave, **cfg.model_cfg}
        complete = getattr(MODELS.get(cfg.model), "complete_config", None)
        if complete is not None and train_info is not None:
            spec = complete(spec, train_info)
        return cfg.model, spec, None
    first = read_checkpoint(cfg.init_from)["model"]
    first_cfg = {k: v for k, v in first["cfg"].items() if k != "n_wave"}
    if first["cfg"].get("n_wave", cfg.n_wave) != cfg.n_wave:
        raise SpecdenoiseError(f"{cfg.init_from} was trained on {first['cfg']['n_wave']} "
                               f"pixels, not {cfg.n_wave}")
    if "physics" in (cfg.model, first["name"]):
        return _physics_from(cfg, first)
    if first["name"] == "chain":
        raise SpecdenoiseError(f"{cfg.init_from} is already a chain; start from a single "
                               "network")
    spec = {"n_wave": cfg.n_wave, "first": {"name": first["name"], "cfg": first_cfg},
            "second": {"name": cfg.model, "cfg": dict(cfg.model_cfg)}}
    return "chain", spec, {f"first.{k}": v for k, v in first["state"].items()}


#: what a physics model started from another takes from it: the parts its weights define
PHYSICS_INHERITED = ("params", "param_loc", "param_scale", "wave_start", "wave_step",
                     "extinction_law", "r_v", "encoder", "emulator")


def _physics_from(cfg: TrainConfig, first: dict):
    """A physics model whose encoder and emulator start as the run ``cfg.init_from`` left them.

    Staged training: first fit the forward model alone (``"unet": null``), which is cheap,
    then train the whole model from that fit. The new spec takes the first run's parameters,
    their normalisation, pixel grid, encoder and emulator (over any given here: the weights
    define them); the U-Net (and the loss weights) are this run's. Encoder and emulator keep
    learning from their own losses.
    """
    if cfg.model != "physics" or first["name"] != "physics":
        raise SpecdenoiseError(f"--init-from {cfg.init_from}: a physics model starts only from "
                               f"another physics run (here {first['name']} -> {cfg.model})")
    spec = {"n_wave": cfg.n_wave, **cfg.model_cfg}
    replaced = [k for k in PHYSICS_INHERITED
                if k in first["cfg"] and k in spec and spec[k] != first["cfg"][k]]
    if replaced:
        log.info("--init-from %s: its %s replace this run's", cfg.init_from, ", ".join(replaced))
    spec.update({k: first["cfg"][k] for k in PHYSICS_INHERITED if k in first["cfg"]})
    state = {k: v for k, v in first["state"].items() if k.startswith(("encoder.", "emulator."))}
    return "physics", spec, state


def _with_params(cfg: TrainConfig, model, train_info, val_info):
    """The stores again, their batches carrying the parameters ``model`` learns (if any)."""
    names = tuple(getattr(model, "param_names", ()))
    if not names:
        return train_info, val_info
    if cfg.distortion != "stored" or not cfg.target_distortion:
        raise SpecdenoiseError(f"model {cfg.model!r} learns the calibration distortion the "
                               "dataset records: train it with --distortion stored and without "
                               "--no-target-distortion")
    train_info = tdata.inspect_store(cfg.data, tdata.TRAIN_VARS, n_wave=cfg.n_wave,
                                     params=names)
    if val_info is not None:
        val_info = tdata.inspect_store(cfg.val, tdata.VAL_VARS, n_wave=cfg.n_wave, params=names)
    return train_info, val_info


def _aux_names(model, info) -> list[str]:
    """The auxiliary losses ``model`` returns on batches of the store ``info``."""
    names = list(getattr(model, "aux_losses", ())) if info.params else []
    if getattr(model, "uncertainty", "none") == "nll":
        names.append("nll")
    return names


def _forward(net, model, batch: dict, cfg: TrainConfig | None = None):
    """(prediction, auxiliary losses) for a batch; models that learn the forward model's
    parameters get them, the target and the good pixels, and return their own losses. A
    model with an uncertainty head adds its beta-NLL (weighted by ``cfg.nll_weight``)."""
    x = model_input(model, batch["x"], batch["sigma"])
    if getattr(model, "uncertainty", "none") == "nll":
        pred, logvar = net(x, return_logvar=True)
        beta, weight, detach = ((0.5, 1.0, False) if cfg is None
                                else (cfg.nll_beta, cfg.nll_weight, cfg.nll_detach_mean))
        # the NLL's gradient on the mean is (mean - y) / sigma^(2 - 2 beta): with sigma ~0.5 %
        # of the flux it outweighs an MSE's 2 (mean - y) a hundredfold. Detaching the mean
        # does not stop that on the shared layers, and measured worse after one epoch of the
        # quick U-Net (6.41 % against 4.60 %; results/uncertainty/README.md)
        mean = pred.detach() if detach else pred
        nll = masked_mean(beta_nll(mean, logvar, batch["y"], beta), batch["good"])
        return pred, {"nll": weight * nll}
    if "params" not in batch:
        return net(x), {}
    out = net(x, params=batch["params"], target=batch["y"], good=batch["good"])
    return out["flux"], out["losses"]


def _make_optimizer(cfg: TrainConfig, model) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]  # a chain's first is frozen
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _autocast(cfg: TrainConfig, device: torch.device):
    """bf16 autocast where the run's precision says so (the models' heads leave it)."""
    if resolve_precision(cfg.precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _train_epoch(cfg, ctx, net, optimizer, ds, device, epoch, bar) -> dict:
    net.train()
    loader = _loader(ds, cfg.workers, device, tdata.key(cfg.seed, epoch, 5, ctx.rank))
    gen = (tdata.device_generator(device, cfg.seed, epoch, ctx.rank)
           if cfg.noise == "device" else None)
    stored_basis, fresh_basis = tdata.bases(ds.info)
    stored_basis = None if stored_basis is None else stored_basis.to(device)
    fresh_basis = fresh_basis.to(device)
    aux_names = _aux_names(model_of(net), ds.info)
    # loss * n, n, then each auxiliary loss * n
    sums = torch.zeros(2 + len(aux_names), dtype=torch.float64, device=device)
    seen, total = 0, max(ds.rank_size(cfg.workers), 1)
    t0 = time.perf_counter()
    join = contextlib.nullcontext()
    if ctx.active:
        from torch.distributed.algorithms.join import Join

        join = Join([getattr(net, "_orig_mod", net)])
    with join:
        for step, batch in enumerate(loader):
            batch = _to(batch, device)
            if "clean" in batch:
                calib = batch.pop("calib", None)
                d_sim = (None if calib is None
                         else tdata.calibration.distortion(calib, stored_basis))
                batch.update(tdata.augment(batch.pop("clean"), batch["sigma"], gen,
                                           basis=fresh_basis, distortion_mode=cfg.distortion,
                                           distortion_max=cfg.distortion_max, stored=d_sim,
                                           target_distortion=cfg.target_distortion))
            if cfg.scheduler == "onecycle":
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(cfg, epoch, seen / total)
            with _autocast(cfg, device):
                pred, aux = _forward(net, model_of(net), batch, cfg)
            loss = masked_mean(loss_terms(cfg.loss, pred, batch["y"], batch["sigma"]),
                               batch["good"])
            optimizer.zero_grad(set_to_none=True)
            (loss + sum(aux.values())).backward()
            optimizer.step()
            n = len(batch["index"])
            seen += n
            sums += torch.stack([loss.detach().double() * n, torch.tensor(n, device=device,
                                                                          dtype=torch.float64),
                                 *(aux[k].detach().double() * n for k in aux_names)])
            bar.update(n)
            if step % 10 == 9 and not ctx.active:  # DDP ranks check together below
                guards.check_loss_sum(sums[0], epoch, step)
            if step % 10 == 0 and not bar.disable:
                rate = bar.n / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.4g}", spec_s=f"{rate:.0f}")
    elapsed = time.perf_counter() - t0
    ctx.all_sum(sums)
    guards.check_loss_sum(sums[0], epoch)
    n = int(sums[1].item())
    row = {"train_loss": float(sums[0].item() / max(n, 1)), "n_train": n,
           "spectra_per_s": n / max(elapsed, 1e-9)}
    for i, k in enumerate(aux_names):
        row[f"train_{k}_loss"] = float(sums[2 + i].item() / max(n, 1))
    guards.check_loss_sum(sums[2:].sum(), epoch)
    return row


@torch.no_grad()
def _validate(cfg, ctx, model, net, info, batch_size, device) -> dict:
    """Loss and mean |R| = mean |F_hat - F| / F over unmasked pixels, on the stored noise."""
    if ctx.active:  # the copy saved is rank 0's; validate with its batch-norm statistics
        for b in model.buffers():
            dist.broadcast(b, 0)
    # the bare module: no DDP collectives, so ranks may run different numbers of batches
    fwd = model if ctx.active else net
    model.eval()
    ds = tdata.SpectrumStream(info, batch_size=batch_size, mode="val", rank=ctx.rank,
                              world_size=ctx.world, target_distortion=cfg.target_distortion)
    aux_names = _aux_names(model, info)
    # loss*n, n, |R| sum, |R| count, then each auxiliary loss * n
    sums = torch.zeros(4 + len(aux_names), dtype=torch.float64, device=device)
    for batch in _loader(ds, cfg.workers, device, 0):
        batch = _to(batch, device)
        with _autocast(cfg, device):
            pred, aux = _forward(fwd, model, batch, cfg)
        pred = pred.float()
        n = len(batch["index"])
        loss = masked_mean(loss_terms(cfg.loss, pred, batch["y"], batch["sigma"]), batch["good"])
        # the evaluation's own definition of |R| (specdenoise.metrics), summed over pixels
        rel_sum, rel_n = metrics.pixel_sum_count(metrics.VALIDATION_METRIC, pred.double(),
                                                 batch["y"].double(), batch["good"])
        sums += torch.stack([loss.double() * n, torch.tensor(float(n), device=device).double(),
                             rel_sum.double(), rel_n.double(),
                             *(aux[k].double() * n for k in aux_names)])
    ctx.all_sum(sums)
    model.train()
    n = int(sums[1].item())
    row = {"val_loss": float(sums[0].item() / max(n, 1)),
           "val_mean_abs_rel": float(sums[2].item() / max(sums[3].item(), 1.0)),
           "n_val": n}
    for i, k in enumerate(aux_names):
        row[f"val_{k}_loss"] = float(sums[4 + i].item() / max(n, 1))
    return row


def _state(cfg, model, optimizer, epoch, summary, wave, history, spec) -> dict:
    spec_name, spec_cfg = spec
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "epoch": epoch,
        "model": {"name": spec_name, "cfg": spec_cfg, "state": model.state_dict(),
                  "summary": summary},
        "optimizer": optimizer.state_dict(),
        "scheduler": {"kind": cfg.scheduler, "next_epoch": epoch,
                      "next_lr": lr_at(cfg, epoch) if epoch < cfg.epochs else None},
        "rng": rng,
        "config": dataclasses.asdict(cfg),
        "normalisation": {
            "median": tdata.MEDIAN,
            "method": "input and target divided by median(input) / 0.5, per spectrum",
            "target_distortion": cfg.target_distortion,
            "distortion": cfg.distortion,
            "distortion_max": cfg.distortion_max,
        },
        "wave": wave,
        "history": history,
    }


def _set_rng(rng: dict) -> None:
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def _read_wave(info: tdata.StoreInfo) -> list[float] | None:
    wave = tdata.read_wave(info)
    return None if wave is None else wave.tolist()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _write_metrics(path: Path, history: list[dict]) -> None:
    """Rewrite the per-epoch CSV from the history (so a resumed run never duplicates rows)."""
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(history)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))
