"""``specdenoise calibrate``: fit a trained run's uncertainty calibration and suspect threshold
(the stage is :mod:`specdenoise.stage_calibrate`)."""

from __future__ import annotations

import argparse

from specdenoise import options
from specdenoise.errors import SpecdenoiseError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="(re)calibrate a run's sigma_denoised and suspect threshold on a dataset",
        description=(
            "Denoise in-domain spectra with known truth (a validation set the network was not "
            "trained on), scale sigma_denoised per S/N bin so that 68 % of the pixels lie "
            "within 1 sigma and 95 % within 2 sigma, and set the threshold of the "
            "'suspect' flag for the given false-alarm rate, and decide per S/N bin whether the "
            "output leans on the input where the network is less sure than the input's noise "
            "(the input guard: on, with the strength that lowers the mean |R| of these "
            "spectra most, where one does, and above the S/N they cover). Writes "
            "RUN_DIR/uncertainty.json (training writes one from its --val set)."
        ),
    )
    options.add_run(p)
    p.add_argument("--data", required=True, nargs="+", metavar="VAL.zarr",
                   help="dataset(s) with flux, flux_clean and sigma; each S/N bin is fitted "
                        "on the first one with spectra in it (give a wide-S/N set after the "
                        "default validation set so that every S/N bin has its own scale, "
                        "input-guard choice and suspect threshold)")
    p.add_argument("--uncertainty", default=None, choices=("head", "sample", "both"),
                   help="method to calibrate (default: head for a network trained with "
                        "uncertainty 'nll', else sample)")
    p.add_argument("--samples", type=int, default=8, metavar="K",
                   help="draws for sample/both (default 8)")
    p.add_argument("--max-spectra", type=int, default=2000,
                   help="use at most this many spectra (default 2000; 0: all)")
    p.add_argument("--false-alarm", type=float, default=0.01,
                   help="fraction of in-domain spectra flagged suspect (default 0.01)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="spectra per forward pass (default 256; smaller needs less memory)")
    options.add_device(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from specdenoise.stage_calibrate import calibrate

    run_dir = options.run_dir(args)
    if args.samples < 2:
        raise SpecdenoiseError(f"--samples must be at least 2, got {args.samples}")
    if args.max_spectra < 0:
        raise SpecdenoiseError(f"--max-spectra must be 0 (all) or more, got {args.max_spectra}")
    options.check_device(args.device)
    data = args.data[0] if len(args.data) == 1 else args.data
    calibrate(run_dir, data, method=args.uncertainty, samples=args.samples,
              max_spectra=args.max_spectra or None, false_alarm=args.false_alarm,
              batch_size=args.batch_size, device=args.device)
    return 0
