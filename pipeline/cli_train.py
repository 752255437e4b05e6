"""``specdenoise train``: the command line of :mod:`specdenoise.stage_train`."""

from __future__ import annotations

import argparse
import json

from specdenoise import options
from specdenoise.errors import SpecdenoiseError
from specdenoise.progress import log_to_stdout
from specdenoise.stage_train import DEFAULT_WORKERS
from specdenoise.train.presets import (
    DEFAULT_MODEL,
    DEFAULT_PRESET,
    MODEL_NAMES,
    PRESET_HELP,
    PRESETS,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a U-Net, dense autoencoder or physics-informed denoiser",
        description=(
            "Train a denoiser on a simulated dataset, streaming Zarr chunks with fresh noise "
            "every epoch. Writes RUN_DIR/checkpoint.pt (every epoch), metrics.csv and "
            "config.json. Multi-GPU: torchrun --nproc_per_node N -m specdenoise.cli train ..."
        ),
    )
    options.add_config(p, "training options", "keyed by the names config.json uses (data, "
                       "out, model, preset, epochs, lr, workers, model_cfg over the preset's, ...)")
    p.add_argument("--data", help="training dataset (Zarr path or fsspec URL); required (or "
                   "'data' in the --config file)")
    p.add_argument("--val", help="validation dataset (its stored noisy flux is used as is)")
    p.add_argument("--arch", dest="model", choices=MODEL_NAMES, default=None,
                   help=f"the kind of network: unet, dae (dense autoencoder) or physics "
                        f"(default {DEFAULT_MODEL}; formerly --model)")
    options.add_alias(p, "--model", "--arch", "model", choices=MODEL_NAMES)
    p.add_argument("--model-cfg", metavar="JSON", default=None,
                   help='model options over the preset\'s, e.g. \'{"depth": 3, "filters": 16, '
                        '"kernel_size": 5}\' (unet: depth, filters, bottleneck_filters, '
                        'kernel_size, dropout, out_activation, in_channels, residual, '
                        'uncertainty; dae: widths, batch_norm, dropout, out_activation, '
                        'in_channels, residual, uncertainty; '
                        'physics: params, unet (U-Net options, or null for the template fit '
                        'alone), encoder, emulator, detach, param_weight, emulator_weight). '
                        'in_channels 2 feeds sigma beside the flux; residual predicts a '
                        'correction to the noisy input (with out_activation "identity"); '
                        'uncertainty "nll" adds a head that predicts each pixel\'s error '
                        '(sigma_denoised), trained with beta-NLL')
    options.add_preset(p, {name: PRESET_HELP.get(name, "") for name in PRESETS},
                       DEFAULT_PRESET, store_default=False,
                       extra="training set-up; options given here win over it. Costs "
                             "measured on two CPU cores (README, 'What it measures').")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory; required (or 'out' in the "
                   "--config file)")
    p.add_argument("--init-from", metavar="RUN", default=None,
                   help="chain: train --arch on the outputs of the trained run RUN (kept "
                        "frozen), e.g. a DAE refining a U-Net; the result denoises on its own. "
                        "--arch physics from a physics run: start from its encoder and "
                        "emulator (staged training: fit with '{\"unet\": null}' first)")
    p.add_argument("--epochs", type=int, help="number of epochs (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="spectra per optimizer step, the global "
                   "batch split over DDP ranks (default: the preset's)")
    p.add_argument("--lr", type=float, help="learning rate; the peak one for onecycle "
                   "(default: the preset's)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"),
                   help="sgd (with the step schedule unless --scheduler) or adamw (with the "
                        "cosine schedule unless --scheduler)")
    p.add_argument("--scheduler", choices=("step", "cosine", "onecycle", "none"),
                   help="learning-rate schedule: step (x lr_gamma after 20 epochs), cosine, "
                        "onecycle (warm-up over the first quarter, then cosine decay, per "
                        "step), none")
    p.add_argument("--epoch-size", type=int, metavar="N",
                   help="spectra per epoch, drawn in turn from a larger training store so "
                        "that no spectrum is seen twice before the whole store was seen "
                        "(default: the whole store every epoch)")
    p.add_argument("--loss", choices=("mse", "l1", "chi2", "rel_l1", "rel_l1_lines"),
                   help="chi2: residuals in units of sigma; rel_l1: |F_hat - F| / F; "
                        "rel_l1_lines: rel_l1 with line pixels (> 3 %% deep) weighted 3x")
    p.add_argument("--no-target-distortion", dest="target_distortion", action="store_false",
                   default=None,
                   help="train to also remove the calibration distortion (default: the target "
                        "keeps it, pure denoising)")
    p.add_argument("--noise-on-device", action="store_true",
                   help="draw noise and distortion on the training device (GPU) instead of in "
                        "the loader workers")
    options.add_device(p)
    p.add_argument("--compile", action="store_true", default=None, help="use torch.compile")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="arithmetic of the network: bf16 autocast (the output head and the "
                        "loss stay float32) or fp32; auto (default) = bf16 on CUDA GPUs and on "
                        "CPUs with native bf16 (AVX-512 BF16 or AMX), fp32 elsewhere")
    p.add_argument("--distortion", choices=("stored", "fresh"), default=None,
                   help="the calibration distortion the network sees, one per spectrum: "
                        "stored (default) = the simulation's, as in the dataset; fresh = "
                        "replaced by a new draw every epoch, of amplitude up to "
                        "--distortion-max")
    p.add_argument("--distortion-max", type=float, default=None,
                   help="largest |d - 1| of the fresh distortion draws (default 0.02)")
    p.add_argument("--nll-weight", type=float, default=None, metavar="W",
                   help="weight of the beta-NLL term that trains an uncertainty head "
                        "(uncertainty \"nll\") beside the main loss (default 1.0; 0.01 leaves "
                        "the mean almost to the main loss)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the training run in RUN_DIR (only a folder holding nothing but "
                        "a run's files; the old run is kept until the new one's first epoch)")
    options.add_no_progress(p)
    p.add_argument("--seed", type=int, help="seed of the initial weights, the noise draws and "
                   "the batch order (default 0); the same seed repeats a run bit for bit on a "
                   "CPU")
    p.add_argument("--loader-workers", dest="workers", type=int, metavar="N",
                   help=f"PyTorch DataLoader processes that read and augment batches (default "
                        f"{DEFAULT_WORKERS}); the batches depend on it, so a resumed run keeps "
                        "the number it started with (formerly --workers)")
    options.add_alias(p, "--workers", "--loader-workers", "workers", type=int, metavar="N")
    p.add_argument("--threads", type=_threads, metavar="N|auto",
                   help="CPU threads to compute with (default auto: one per usable core, less "
                        "the cores other processes keep busy when the run starts; beside one "
                        "busy process two threads on two cores kept 0.3-0.4 of the idle rate, "
                        "one thread 0.5-0.8). The run records the count it used and a "
                        "resumed run keeps it, since it changes the floating-point sums")
    p.add_argument("--submit", metavar="PROFILE.yaml",
                   help="run as one batch job instead: write RUN_DIR/train.sbatch from the "
                        "profile (e.g. cluster/slurm.yaml) and sbatch it; the script resumes "
                        "from the checkpoint when submitted again (PBS profiles: qsub)")
    p.set_defaults(func=run, _parser=p, on_interrupt=_on_interrupt)


def _on_interrupt(args) -> str:
    """What to do after Ctrl-C: resume only when an epoch finished and left a checkpoint."""
    from pathlib import Path

    from specdenoise.stores import CHECKPOINT_NAME

    if (Path(args.out) / CHECKPOINT_NAME).exists():
        return ("the checkpoint of the last finished epoch is kept: re-run the same command "
                "with --resume to continue from it")
    return ("no epoch had finished, so there is no checkpoint to resume from: re-run the "
            "same command (without --resume) to start again")


def _options(args: argparse.Namespace) -> dict:
    """The command line as :class:`~specdenoise.train.config.TrainConfig` fields (None: not
    given), over the --config file's."""
    model_cfg = None
    if args.model_cfg is not None:
        try:
            model_cfg = json.loads(args.model_cfg)
        except json.JSONDecodeError as exc:
            raise SpecdenoiseError(f"--model-cfg is not valid JSON: {exc}") from None
        if not isinstance(model_cfg, dict):
            raise SpecdenoiseError("--model-cfg must be a JSON object, e.g. '{\"depth\": 3}'")
    given = {
        "data": args.data, "val": args.val, "out": args.out, "model": args.model,
        "preset": args.preset, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "optimizer": args.optimizer, "scheduler": args.scheduler,
        "loss": args.loss, "device": args.device, "compile": args.compile,
        "precision": args.precision, "seed": args.seed, "workers": args.workers,
        "target_distortion": args.target_distortion, "distortion": args.distortion,
        "distortion_max": args.distortion_max, "epoch_size": args.epoch_size,
        "init_from": args.init_from, "noise": "device" if args.noise_on_device else None,
        "nll_weight": args.nll_weight, "threads": args.threads,
    }
    if args.config is None:
        return {**given, "model_cfg": model_cfg}
    from specdenoise import configfile
    from specdenoise.train.config import table_values

    where = f"config file {args.config}"
    table = table_values(configfile.read(args.config), where)
    file_model_cfg = table.pop("model_cfg", None)
    if file_model_cfg is not None and not isinstance(file_model_cfg, dict):
        raise SpecdenoiseError(f"{where}: model_cfg must be a table")
    if file_model_cfg is not None or model_cfg is not None:  # --model-cfg over the file's
        model_cfg = {**(file_model_cfg or {}), **(model_cfg or {})}
    return {**configfile.overlay(table, given), "model_cfg": model_cfg}


def run(args: argparse.Namespace) -> int:
    from specdenoise import stage_train

    opts = _options(args)
    args.data, args.out = opts.get("data"), opts.get("out")  # for --submit and Ctrl-C
    for name, option in (("data", "--data TRAIN.zarr"), ("out", "--out RUN_DIR")):
        if opts.get(name) is None:
            raise SpecdenoiseError(f"give {option} (or '{name}' in the --config file)")
    data, val, out = opts.pop("data"), opts.pop("val", None), opts.pop("out")
    if args.print_config:
        from specdenoise.configfile import dumps

        cfg = stage_train.train_config(data, val, out, resume=args.resume, **opts)
        print(dumps(cfg.to_dict()), end="")
        return 0
    if getattr(args, "submit", None):
        from specdenoise.submit import rebuild_argv

        argv = rebuild_argv(args._parser, args,
                            skip=("submit", "resume", "overwrite", "print_config"))
        return stage_train.submit(args.submit, argv, out, inputs=(data, val, opts.get("init_from")),
                                  overwrite=args.overwrite)
    options.check_device(opts.get("device"))
    log_to_stdout()  # as the progress lines: standard error holds only a failure's line
    cfg, row = stage_train.train(
        data, val, out, resume=args.resume, progress=False if args.no_progress else None,
        overwrite=args.overwrite, **opts)
    if "val_mean_abs_rel" in row:
        print(f"validation mean |R| = {row['val_mean_abs_rel']:.4%} after epoch {row['epoch']}; "
              f"checkpoint in {cfg.out}")
    return 0


def _threads(text: str) -> int | None:
    """``--threads``: a positive count, or ``auto`` (None)."""
    if text.strip().lower() == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads or 'auto', "
                                         f"got {text!r}")
    return n
