"""``specdenoise run``: grid -> simulate -> train -> evaluate -> report, in one command."""

from __future__ import annotations

import argparse
from pathlib import Path

from specdenoise import options
from specdenoise.stage_run import PRESETS, RunConfig, run

#: ``run --preset`` choices with what each costs (README, 'What it measures')
PRESET_HELP = {
    "quick": "12,000 + 300 spectra, the quick training preset (10 epochs of 3000 spectra), "
             "every baseline: about 8 min on two CPU cores and 658 MiB of disk, built-in "
             "grid included",
    "paper": "the published set-up: 1000 + 1000 spectra, U-Net and DAE, 50 epochs each: "
             "83 min on two CPU cores",
    "best": "the best training preset (700,000 spectra drawn from a pool of 100,000, 1.9 GB) "
            "and a wide-S/N validation set: about 2.5-3 h on two CPU cores to itself, "
            "validation mean |R| 0.81 %",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the whole pipeline on built-in defaults (grid, simulate, train, evaluate)",
        description=(
            "Build the built-in grid, simulate training and validation sets on a local Dask "
            "cluster, train the denoiser(s), evaluate them against baselines and write a "
            "report. Each step prints the command it runs. Re-running the same command "
            "continues an interrupted run."
        ),
    )
    options.add_config(p, "the run", "preset, workdir, seed, workers, device and, over the "
                       "preset's, [[simulate]], [[train]] (as train --config reads) and "
                       "[[evaluate]] (as evaluate --config reads) tables")
    options.add_preset(p, {name: PRESET_HELP.get(name, "") for name in PRESETS}, "quick",
                       store_default=False)
    p.add_argument("--workdir", type=Path,
                   help="folder for every output (default ./specdenoise-run)")
    p.add_argument("--seed", type=int,
                   help="simulation seed of the training set; the validation set uses seed+1 "
                        "(default 1)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="Dask worker processes of the simulation (default: one per CPU core)")
    options.add_device(p)
    options.add_overwrite(p, "the datasets, training runs and evaluation in WORKDIR "
                             "(default: keep what is complete and continue)")
    options.add_no_progress(p)
    p.set_defaults(func=_run, on_interrupt=lambda args: "finished steps are kept: re-run the "
                   "same command to continue")


def config(args) -> RunConfig:
    """The run the command line asks for: its options over the --config file's."""
    from specdenoise import configfile

    table = configfile.read(args.config) if args.config is not None else {}
    given = {"preset": args.preset, "workdir": None if args.workdir is None else str(args.workdir),
             "seed": args.seed, "workers": args.workers, "device": args.device}
    return RunConfig.from_dict(configfile.overlay(table, given), f"config file {args.config}")


def _run(args) -> int:
    cfg = config(args)
    if args.print_config:
        from specdenoise.configfile import dumps

        print(dumps(cfg.to_dict()), end="")
        return 0
    options.check_device(cfg.device)
    run(cfg, progress=not args.no_progress, overwrite=args.overwrite)
    return 0
