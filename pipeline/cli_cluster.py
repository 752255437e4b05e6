"""``specdenoise cluster``: inspect batch-system profiles."""

from __future__ import annotations

import argparse

from specdenoise.errors import SpecdenoiseError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="inspect Dask cluster profiles (SLURM, PBS, SGE, LSF)")
    csub = p.add_subparsers(dest="cluster_command", metavar="ACTION")
    csub.required = True
    s = csub.add_parser("show", help="print the batch job script a profile submits")
    s.add_argument("profile", help="a shipped profile (slurm, pbs) or a YAML file")
    s.set_defaults(func=_show)
    i = csub.add_parser("init", help="write a commented starter profile for your site")
    i.add_argument("--system", required=True, choices=("slurm", "pbs"),
                   help="the batch system")
    i.add_argument("--interface", help="network interface the compute nodes reach this "
                   "machine on (e.g. ib0); default: the address on the default route")
    i.add_argument("--partition", help="SLURM partition / PBS queue")
    i.add_argument("--account", help="account to charge")
    i.add_argument("--walltime", help="time limit per job, e.g. 02:00:00")
    i.add_argument("--out", help="profile file to write (default SYSTEM.yaml here)")
    i.add_argument("--overwrite", action="store_true", help="replace an existing file")
    i.set_defaults(func=_init)


def _show(args) -> int:
    import sys

    from specdenoise.cluster import worker_job_script

    script, notes = worker_job_script(args.profile)
    print(script)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _init(args) -> int:
    from pathlib import Path

    from specdenoise import stores
    from specdenoise.cluster.profiles import load_profile, starter_profile

    out = Path(args.out or f"{args.system}.yaml")
    if out.suffix not in (".yaml", ".yml"):
        raise SpecdenoiseError(f"--out {out}: a profile's name ends in .yaml")
    text = starter_profile(args.system, interface=args.interface, partition=args.partition,
                           account=args.account, walltime=args.walltime)

    def write(tmp):
        tmp.write_text(text)
        load_profile(tmp)  # what we write must read back as a valid profile

    stores.write_file(out, write, overwrite=args.overwrite)
    print(f"wrote {out}; check it with 'specdenoise cluster show {out}', then use "
          f"'--cluster {out}'")
    return 0
