"""``specdenoise simulate``: write a chunked Zarr training set with Dask."""

from __future__ import annotations

import argparse
from pathlib import Path

from specdenoise import options
from specdenoise.config import COMPRESSORS, PRESETS
from specdenoise.errors import SpecdenoiseError

#: what each simulation preset draws, for ``--help``
PRESET_HELP = {
    "default": "HSC-i 19-22.5",
    "paper": "HSC-i 16.0-22.5, our reading of the papers' 6-7 magnitude range at one exposure "
             "time",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate PFS MR red-arm spectra into a Zarr dataset (Dask)",
        description=(
            "Draw stellar parameters and observing conditions, interpolate the grid, observe "
            "through the PFS MR red arm with the ETC noise model, and write flux, flux_clean, "
            "sigma and mask to a chunked Zarr store. Every option of the TOML config can also "
            "be set here (--set KEY=VALUE for nested ones, e.g. --set params.teff.low=4000)."
        ),
        epilog="Example: specdenoise simulate --n 20000 --chunk-size 1000 --seed 1 "
               "--out train.zarr --cluster local --workers 2",
    )
    options.add_config(p, "the simulation", "the keys of --print-config's output (n, seed, "
                       "grid, noise, [parameters], [observing], ...)", type=Path)
    options.add_preset(
        p, {name: PRESET_HELP.get(name, "see README") for name in PRESETS}, "default",
        extra="starting point under --config and --set; each costs about 900 spectra/s per "
              "worker process and 18.4 KiB per spectrum on disk.")
    p.add_argument("--n", type=int, metavar="N", help="number of spectra (default 1000)")
    p.add_argument("--chunk-size", type=int, help="spectra per chunk and per task (default 1000)")
    p.add_argument("--seed", type=int, help="seed of every random draw (default 1); the same "
                   "seed gives the same store bit for bit, whatever the workers")
    p.add_argument("--out", type=Path, metavar="OUT.zarr",
                   help="output store, or a folder with --split; required (or 'out' in the "
                        "--config file)")
    p.add_argument("--grid", action="append",
                   help="'builtin' (default) or a grid store path; repeat it to mix grids "
                        "(each spectrum's grid recorded in the coordinate 'grid')")
    p.add_argument("--grid-weights", nargs="+", type=float, metavar="W",
                   help="with several --grid: their weights (default equal)")
    p.add_argument("--noise", help="'builtin' (default) or an ETC noise table (Zarr)")
    p.add_argument("--compressor", choices=COMPRESSORS,
                   help="codec of the spectral arrays: zstd-bitround (default; keeps 13 "
                        "mantissa bits, relative rounding <= 6e-5, set with --set keepbits=N), "
                        "zstd or lz4 (lossless), none")
    p.add_argument("--split", help="e.g. train=0.8,val=0.1,test=0.1 (writes OUT/NAME.zarr)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config option, e.g. --set params.mag.high=21")
    g = p.add_argument_group("execution")
    g.add_argument("--cluster", default="local",
                   help="'local' (default), a scheduler address tcp://HOST:PORT, or a YAML "
                        "profile (cluster/slurm.yaml, cluster/pbs.yaml)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="Dask worker processes (default: one per CPU core), or batch jobs with "
                        "a cluster profile")
    g.add_argument("--threads-per-worker", type=int, help="threads per local worker (default 1)")
    g.add_argument("--memory-limit", help="memory per local worker, e.g. 4GB")
    g.add_argument("--resume", action="store_true",
                   help="finish an interrupted run: only missing chunks are computed")
    options.add_overwrite(g, "an existing dataset store")
    options.add_no_progress(g)
    p.set_defaults(func=_run, on_interrupt=_on_interrupt)


def _on_interrupt(args) -> str:
    if args.out is not None and Path(args.out).exists():
        return ("finished chunks are kept: re-run the same command with --resume to compute "
                "only the missing ones")
    return "nothing was written: re-run the same command to start again"


def _out_given(args) -> bool:
    """--out, ``--set out=...`` or ``out`` in the --config file (never ./dataset.zarr silently)."""
    if args.out is not None or any(s.split("=", 1)[0].strip() == "out" for s in args.set):
        return True
    if args.config is None:
        return False
    import tomllib

    return "out" in tomllib.loads(Path(args.config).read_text())


def _run(args) -> int:
    from specdenoise.config import load_config, to_toml

    grids, weights = args.grid or [], args.grid_weights
    if weights is not None and len(weights) != len(grids):
        raise SpecdenoiseError(f"--grid-weights has {len(weights)} value(s) for {len(grids)} "
                               "--grid")
    mixed = [{"grid": g, "weight": w} for g, w in
             zip(grids, weights or [1.0] * len(grids), strict=True)] if len(grids) > 1 else None
    cfg = load_config(
        args.config,
        args.set,
        preset=args.preset,
        n=args.n,
        chunk_size=args.chunk_size,
        seed=args.seed,
        out=str(args.out) if args.out else None,
        grid=grids[0] if len(grids) == 1 else None,
        grids=mixed,
        noise=args.noise,
        compressor=args.compressor,
        split=args.split,
    )
    if args.print_config:
        print(to_toml(cfg), end="")
        return 0
    if not _out_given(args):
        raise SpecdenoiseError("give --out OUT.zarr (a folder with --split), or 'out' in the "
                               "--config file")
    from specdenoise.stage_simulate import simulate

    paths = simulate(
        cfg,
        cluster=args.cluster,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    for path in paths:
        print(f"dataset: {path}")
    return 0
