"""``specdenoise evaluate``: the command line of :mod:`specdenoise.stage_evaluate`."""

from __future__ import annotations

import argparse

from specdenoise import options
from specdenoise.evaluate.baselines import BASELINES
from specdenoise.stage_evaluate import (
    DEFAULT_TEMPLATE_N,
    UNCERTAINTY_CHOICES,
    EvaluateConfig,
    evaluate,
)


def _template_n(text: str) -> int | str:
    if text.lower() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="error cube, summaries, figures and report for denoisers on a validation set",
        description=(
            "Denoise a validation dataset (its stored noisy flux) with trained models and "
            "baselines; write the relative-error cube |D - F| / F (Zarr), summaries binned in "
            "S/N, Teff, log g, [M/H] and [alpha/M] (Zarr and CSV), figures and a Markdown and "
            "HTML report into EVAL_DIR."
        ),
    )
    options.add_config(p, "these options", "by name (runs, data, out, train, baselines, "
                       "template_n, bins, ...)")
    options.add_run(p, several=True)
    p.add_argument("--data", metavar="VAL.zarr", help="dataset to evaluate on; required (or "
                   "'data' in the --config file)")
    p.add_argument("--out", metavar="EVAL_DIR", help="output folder; required (or 'out' in the "
                   "--config file)")
    p.add_argument("--train", metavar="TRAIN.zarr",
                   help="training dataset; the pca baseline learns its basis from its flux_clean")
    p.add_argument("--baselines", default=None,
                   help="comma-separated subset of " + ",".join(BASELINES)
                        + " ('' for none; default: all that can run)")
    p.add_argument("--template-n", type=_template_n, metavar="N",
                   help=f"template-fit only the first N spectra, or 'all' (default "
                        f"{DEFAULT_TEMPLATE_N}; about 0.1-0.5 s per spectrum)")
    p.add_argument("--bins", action="append", metavar="SPEC",
                   help="summary bins: N (for every variable), NAME=N or NAME=e0,e1,... "
                        "(e.g. --bins snr=0,5,10,20,50,inf); repeatable. Default: S/N "
                        "0,2,5,10,20,50,inf (it is log-distributed), 8 equal-width bins over "
                        "the range of Teff, log g, [M/H] and [alpha/M]")
    p.add_argument("--pca-k", type=int,
                   help=f"PCA components (default {EvaluateConfig.pca_k})")
    p.add_argument("--savgol-window", type=int,
                   help=f"Savitzky-Golay window in pixels, odd (default "
                        f"{EvaluateConfig.savgol_window}, order 4)")
    p.add_argument("--gaussian-sigma", type=float,
                   help=f"Gaussian smoothing sigma in pixels (default "
                        f"{EvaluateConfig.gaussian_sigma})")
    p.add_argument("--uncertainty", choices=UNCERTAINTY_CHOICES, default=None,
                   help="how each network's sigma_denoised is estimated: auto (default: the "
                        "way the run is calibrated for, else 'head' for a network trained "
                        "with uncertainty \"nll\", else 'sample', 9 passes per spectrum), head, "
                        "sample, both, or none (no sigma_denoised, calibration table or flags; "
                        "one pass per spectrum)")
    options.add_device(p)
    p.add_argument("--batch-size", type=int,
                   help=f"spectra per forward pass of a network (default "
                        f"{EvaluateConfig.batch_size}; smaller needs less memory)")
    options.add_overwrite(p, "the outputs evaluate writes in EVAL_DIR (nothing else there)")
    options.add_no_progress(p)
    p.set_defaults(func=run)


def config(args: argparse.Namespace) -> EvaluateConfig:
    """The evaluation the command line asks for: its options over the --config file's."""
    from specdenoise import configfile

    given = {"runs": args.runs or None, "data": args.data, "out": args.out, "train": args.train,
             "template_n": args.template_n, "bins": args.bins, "device": args.device,
             "batch_size": args.batch_size, "pca_k": args.pca_k,
             "savgol_window": args.savgol_window, "gaussian_sigma": args.gaussian_sigma,
             "uncertainty": args.uncertainty}
    if args.baselines is not None:
        given["baselines"] = [b.strip() for b in args.baselines.split(",") if b.strip()]
    table = configfile.read(args.config) if args.config is not None else {}
    return EvaluateConfig.from_dict(configfile.overlay(table, given),
                                    f"config file {args.config}")


def run(args: argparse.Namespace) -> int:
    cfg = config(args)
    if args.print_config:
        from specdenoise.configfile import dumps

        print(dumps(cfg.to_dict()), end="")
        return 0
    if cfg.runs:
        options.check_device(cfg.device)
    evaluate(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    return 0
