"""The training run: its configuration (presets, resume) and the epoch loop.

The other jobs live beside it: the losses, optimizer and learning-rate schedule in
:mod:`~specdenoise.train.schedule`; devices, precision and DDP in
:mod:`~specdenoise.train.distributed`; what a run writes besides its checkpoint in
:mod:`~specdenoise.train.report`; the networks, and what they may ask of the loop (the
:class:`~specdenoise.train.nets.base.Denoiser` contract), in :mod:`specdenoise.train.nets`.

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
import dataclasses
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from specdenoise import metrics
from specdenoise.errors import SpecdenoiseError
from specdenoise.train import data as tdata
from specdenoise.train import guards
from specdenoise.train.checkpoint import (
    CHECKPOINT_NAME,
    read_checkpoint,
    resume_config,  # noqa: F401 (train.loop.resume_config, as before)
    save_checkpoint,
)

# the run's configuration (TrainConfig, its checks) is train/config.py, which imports no
# torch (run presets and --help are built from it); its names stay importable here
from specdenoise.train.config import (  # noqa: F401
    RESUME_MAY_CHANGE,
    TrainConfig,
    check_config,
    make_config,
    upgrade_config,
)
from specdenoise.train.distributed import (  # noqa: F401 (PRECISIONS: loop.PRECISIONS)
    PRECISIONS,
    autocast,
    choose_threads,
    init_distributed,
    model_of,
    resolve_device,
)
from specdenoise.train.nets import build_model, network_class, upgrade_spec
from specdenoise.train.nets.base import model_input, model_summary
from specdenoise.train.presets import PRESETS  # noqa: F401 (loop.PRESETS, as before)
from specdenoise.train.report import report_epoch, tensorboard, write_json
from specdenoise.train.schedule import (  # noqa: F401 (loop.LOSSES etc., as before)
    LOSSES,
    OPTIMIZERS,
    SCHEDULERS,
    loss_terms,
    lr_at,
    make_optimizer,
    masked_mean,
    nll_loss,
)

log = logging.getLogger("specdenoise.train")


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
    ctx = init_distributed(cfg.device)
    previous_threads = torch.get_num_threads()
    try:
        out = Path(cfg.out)
        ckpt_path = out / CHECKPOINT_NAME
        if ckpt_path.exists() and not resume:
            raise SpecdenoiseError(f"{out} already holds a training run; pass --resume to "
                                   "continue it or choose another --out")
        if resume and not ckpt_path.exists():
            raise SpecdenoiseError(f"nothing to resume: {ckpt_path} does not exist")
        device = resolve_device(cfg.device, ctx)
        threads, why = choose_threads(cfg.threads, device)
        if cfg.threads is None:  # recorded: a resumed run computes as this one began
            cfg = dataclasses.replace(cfg, threads=threads)
        if threads != previous_threads:
            torch.set_num_threads(threads)
            if ctx.rank == 0:
                log.info("training on %d CPU thread%s: %s", threads, "s" * (threads > 1), why)
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
        optimizer = make_optimizer(cfg, model)
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
            write_json(out / "config.json", {"train": dataclasses.asdict(cfg),
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
        tb = tensorboard(out) if ctx.rank == 0 else None
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
                report_epoch(out, history, cfg.epochs, tb)
            ctx.barrier()
        if tb is not None:
            tb.close()
        if ctx.rank == 0 and val_info is not None and cfg.calibrate_spectra > 0 \
                and len(history) >= cfg.epochs:
            _calibrate(cfg, model, device, per_rank_batch)
        return row
    finally:
        torch.set_num_threads(previous_threads)
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


def _model_spec(cfg: TrainConfig, stored: dict | None = None, train_info=None):
    """(name, build_model kwargs, initial weights or None) of the run's model.

    ``stored``: the checkpoint's ``model`` entry when resuming (its spec is kept). A new run
    asks its network class (:class:`~specdenoise.train.nets.base.Denoiser`) what to take from
    the training store ``train_info`` (``complete_config``) or, with ``init_from``, how to
    start from that trained run (``start_from``: by default as the frozen first network of a
    chain). The initial weights are a partial state dict (names as in the model).
    """
    if stored is not None:
        return stored["name"], dict(stored["cfg"]), None
    spec = {"n_wave": cfg.n_wave, **cfg.model_cfg}
    if not cfg.init_from:
        if train_info is not None:
            spec = network_class(cfg.model).complete_config(spec, train_info)
        return cfg.model, spec, None
    first = read_checkpoint(cfg.init_from)["model"]
    first_name, first_cfg = upgrade_spec(first["name"], first["cfg"])
    first = {**first, "name": first_name, "cfg": first_cfg}
    if first["cfg"].get("n_wave", cfg.n_wave) != cfg.n_wave:
        raise SpecdenoiseError(f"{cfg.init_from} was trained on {first['cfg']['n_wave']} "
                               f"pixels, not {cfg.n_wave}")
    spec, state = network_class(cfg.model).start_from(cfg.model, spec, first, cfg.init_from)
    return cfg.model, spec, state


def _with_params(cfg: TrainConfig, model, train_info, val_info):
    """The stores again, their batches carrying the parameters ``model`` learns (if any)."""
    names = tuple(model.param_names)
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


def _forward(net, model, batch: dict, cfg: TrainConfig | None = None):
    """(prediction, auxiliary losses) for a batch: ``net`` (``model``, perhaps wrapped) is
    given the inputs its contract declares (``Denoiser.training_inputs``); an uncertainty
    head adds its beta-NLL (:func:`~specdenoise.train.schedule.nll_loss`)."""
    x = model_input(model, batch["x"], batch["sigma"])
    pred, logvar, aux = model.training_outputs(net(x, **model.training_inputs(batch)))
    if logvar is not None:
        aux["nll"] = nll_loss(pred, logvar, batch, cfg)
    return pred, aux


def _train_epoch(cfg, ctx, net, optimizer, ds, device, epoch, bar) -> dict:
    net.train()
    loader = _loader(ds, cfg.workers, device, tdata.key(cfg.seed, epoch, 5, ctx.rank))
    gen = (tdata.device_generator(device, cfg.seed, epoch, ctx.rank)
           if cfg.noise == "device" else None)
    stored_basis, fresh_basis = tdata.bases(ds.info)
    stored_basis = None if stored_basis is None else stored_basis.to(device)
    fresh_basis = fresh_basis.to(device)
    aux_names = model_of(net).loss_names()
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
            with autocast(cfg.precision, device):
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
    aux_names = model.loss_names()
    # loss*n, n, |R| sum, |R| count, then each auxiliary loss * n
    sums = torch.zeros(4 + len(aux_names), dtype=torch.float64, device=device)
    for batch in _loader(ds, cfg.workers, device, 0):
        batch = _to(batch, device)
        with autocast(cfg.precision, device):
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
