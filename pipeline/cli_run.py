"""``specdenoise run``: grid -> simulate -> train -> evaluate -> report, in one command."""

from __future__ import annotations

import argparse
from pathlib import Path

from specdenoise.stage_run import PRESETS, run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the whole pipeline on built-in defaults (grid, simulate, train, evaluate)",
        description=(
            "Build the built-in grid, simulate training and validation sets on a local Dask "
            "cluster, train the denoiser(s), evaluate them against baselines and write a "
            "report. 'quick' took 8.1 minutes on two CPU cores, built-in grid build included "
            "(README, 'What it measures'); 'paper' is the published set-up (1000 + 1000 "
            "spectra, U-Net and DAE, 50 epochs; hours on a CPU); 'best' trains the best preset "
            "on a pool of 100,000 spectra (1.9 GB; 1 h 40 min on two CPU cores, mean |R| "
            "1.40 %). "
            "Re-running continues an interrupted run."
        ),
    )
    p.add_argument("--preset", choices=tuple(PRESETS), default="quick")
    p.add_argument("--workdir", type=Path, default=Path("specdenoise-run"),
                   help="folder for every output (default ./specdenoise-run)")
    p.add_argument("--seed", type=int, default=1, help="simulation seed (validation: seed+1)")
    p.add_argument("--workers", type=int, help="local Dask worker processes")
    p.add_argument("--device", help="training device: auto (default), cpu, cuda, mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args) -> int:
    run(args.preset, args.workdir, seed=args.seed, workers=args.workers, device=args.device,
        progress=not args.no_progress)
    return 0
