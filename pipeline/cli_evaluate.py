"""``specdenoise evaluate``: the command line of :mod:`specdenoise.stage_evaluate`."""

from __future__ import annotations

import argparse

from specdenoise import options
from specdenoise.errors import SpecdenoiseError
from specdenoise.evaluate.baselines import BASELINES
from specdenoise.stage_evaluate import DEFAULT_TEMPLATE_N, evaluate


def _template_n(text: str) -> int | None:
    if text.lower() == "all":
        return None
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
    options.add_run(p, several=True)
    p.add_argument("--data", required=True, metavar="VAL.zarr", help="dataset to evaluate on")
    p.add_argument("--out", required=True, metavar="EVAL_DIR", help="output folder")
    p.add_argument("--train", metavar="TRAIN.zarr",
                   help="training dataset; the pca baseline learns its basis from its flux_clean")
    p.add_argument("--baselines", default=None,
                   help="comma-separated subset of " + ",".join(BASELINES)
                        + " ('' for none; default: all that can run)")
    p.add_argument("--template-n", type=_template_n, default=DEFAULT_TEMPLATE_N, metavar="N",
                   help=f"template-fit only the first N spectra, or 'all' (default "
                        f"{DEFAULT_TEMPLATE_N}; about 0.1-0.5 s per spectrum)")
    p.add_argument("--bins", action="append", default=[], metavar="SPEC",
                   help="summary bins: N (for every variable), NAME=N or NAME=e0,e1,... "
                        "(e.g. --bins snr=0,5,10,20,50,inf); repeatable. Default: S/N "
                        "0,2,5,10,20,50,inf (it is log-distributed), 8 equal-width bins over "
                        "the range of Teff, log g, [M/H] and [alpha/M]")
    p.add_argument("--pca-k", type=int, default=32, help="PCA components (default 32)")
    p.add_argument("--savgol-window", type=int, default=11,
                   help="Savitzky-Golay window in pixels, odd (default 11, order 4)")
    p.add_argument("--gaussian-sigma", type=float, default=1.0,
                   help="Gaussian smoothing sigma in pixels (default 1.0)")
    options.add_device(p)
    p.add_argument("--batch-size", type=int, default=256,
                   help="spectra per forward pass of a network (default 256; smaller needs "
                        "less memory)")
    options.add_overwrite(p, "the outputs evaluate writes in EVAL_DIR (nothing else there)")
    options.add_no_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    baselines = None
    if args.baselines is not None:
        baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    if not args.runs and baselines == []:
        raise SpecdenoiseError("nothing to evaluate: give --run RUN_DIR or some --baselines")
    if args.batch_size < 1:
        raise SpecdenoiseError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.runs:
        options.check_device(args.device)
    evaluate(args.runs, args.data, args.out, train=args.train, baselines=baselines,
             template_n=args.template_n, bins=args.bins, device=args.device,
             batch_size=args.batch_size, pca_k=args.pca_k, savgol_window=args.savgol_window,
             gaussian_sigma=args.gaussian_sigma, overwrite=args.overwrite,
             progress=not args.no_progress)
    return 0
