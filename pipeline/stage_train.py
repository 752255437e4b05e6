"""The training stage: a run configuration from a preset and options (or from the checkpoint of
the run being resumed), one writer per run directory, then the training loop
(:func:`specdenoise.train.loop.train`); or the same command submitted as a batch job.

``specdenoise train`` is a thin command line over :func:`train` and :func:`submit`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from specdenoise import stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.train.presets import DEFAULT_MODEL, DEFAULT_PRESET

#: DataLoader worker processes of a new run (a resumed run keeps its own)
DEFAULT_WORKERS = 2


def train_config(data, val, out, *, model: str | None = None, preset: str | None = None,
                 model_cfg: dict | None = None, resume: bool = False, **options):
    """The :class:`~specdenoise.train.config.TrainConfig` that :func:`train` runs (what
    ``train --print-config`` prints), built from the same arguments.

    ``options`` are :class:`~specdenoise.train.config.TrainConfig` fields; None keeps the
    preset's value (or, on resume, the stored one; a resume may change only some). A new run
    defaults to :data:`DEFAULT_MODEL` with :data:`DEFAULT_PRESET` and :data:`DEFAULT_WORKERS`.
    An optimizer given without a scheduler brings its own (sgd: step, adamw: cosine).
    """
    from specdenoise.train import config

    opts = dict(options)
    if opts.get("scheduler") is None and opts.get("optimizer") is not None:
        opts["scheduler"] = "step" if opts["optimizer"] == "sgd" else "cosine"
    if resume:
        from specdenoise.train.checkpoint import resume_config  # reads the checkpoint: torch

        cfg = resume_config(out, model=model, preset=preset, data=data, val=val,
                            model_cfg=model_cfg, **opts)
    else:
        if opts.get("workers") is None:
            opts["workers"] = DEFAULT_WORKERS
        cfg = config.make_config(data, val, out, model=model or DEFAULT_MODEL,
                                 preset=preset or DEFAULT_PRESET, model_cfg=model_cfg, **opts)
    return cfg


def train(data, val, out, *, model: str | None = None, preset: str | None = None,
          model_cfg: dict | None = None, resume: bool = False, progress: bool | None = None,
          overwrite: bool = False, **options):
    """Train a denoiser into the run directory ``out``, or continue it with ``resume``.

    The run's configuration is :func:`train_config` of the same arguments.
    ``progress``: a progress bar per epoch (None: only on a terminal).
    ``overwrite``: replace a run in ``out`` (only a folder holding nothing but a run's files);
    the old run is kept aside until the new one has its first checkpoint, and put back if
    the new one stops before. Returns ``(config, last epoch's metrics row)``.
    """
    from specdenoise.train import loop

    if resume and overwrite:
        raise SpecdenoiseError("--resume continues a run and --overwrite replaces it; pass one")
    rank0 = int(os.environ.get("RANK", "0")) == 0
    # (under torchrun only rank 0 checks: the others may see the folder rank 0 just began)
    replace = rank0 and stores.check_run_folder(
        out, inputs=(data, val, options.get("init_from")), overwrite=overwrite, resume=resume)

    cfg = train_config(data, val, out, model=model, preset=preset, model_cfg=model_cfg,
                       resume=resume, **options)
    # one writer per run directory (under torchrun only rank 0 writes, and holds the lock)
    lock = stores.locked(cfg.out) if rank0 else contextlib.nullcontext()
    with lock:
        aside = stores.move_aside(cfg.out) if replace else None
        try:
            row = loop.train(cfg, resume=resume, progress=progress)
        except BaseException:
            out_path = Path(cfg.out)
            if aside is not None and not (out_path / stores.CHECKPOINT_NAME).exists():
                shutil.rmtree(out_path, ignore_errors=True)  # the new run had no epoch yet
                os.rename(aside, out_path)
                aside = None
            raise
        finally:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
    return cfg, row


def submit(profile: str | Path, argv: list[str], out: str | Path, *,
           inputs=(), overwrite: bool = False) -> int:
    """Run ``specdenoise train ARGV`` as a batch job from a cluster profile (the job script
    resumes from the run's checkpoint when submitted again); returns the exit status.

    The run folder is checked as for :func:`train` (a run already there is continued by the
    job; ``overwrite`` replaces it and an existing job script)."""
    from specdenoise.submit import submit as submit_job

    if stores.check_run_folder(out, inputs=inputs, overwrite=overwrite,
                               resume=not overwrite):
        with stores.locked(out):
            shutil.rmtree(stores.move_aside(out))
    return submit_job(profile, "train", argv, out, overwrite=overwrite)
