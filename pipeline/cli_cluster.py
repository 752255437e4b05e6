"""``specdenoise cluster``: inspect batch-system profiles."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="inspect Dask cluster profiles (SLURM, PBS, SGE, LSF)")
    csub = p.add_subparsers(dest="cluster_command", metavar="ACTION")
    csub.required = True
    s = csub.add_parser("show", help="print the batch job script a profile submits")
    s.add_argument("profile", type=Path, help="YAML profile, e.g. cluster/slurm.yaml")
    s.set_defaults(func=_show)


def _show(args) -> int:
    from specdenoise.cluster import worker_job_script

    print(worker_job_script(args.profile))
    return 0
