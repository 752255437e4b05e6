"""``specdenoise etc``: an exposure-time calculator for the PFS MR red arm, and ETC-table import.

Two forms::

    specdenoise etc --seeing 0.8 --zenith 35 --field-angle 0 --moon-zenith 90 \\
        --moon-separation 60 --moon-phase 0 --exp-time 900 --n-exp 4 --mag 22 \\
        [--filter hsc2017-i] [--spectrum FILE [--flux-unit flam|fnu]] [--table TABLE.zarr] \\
        --out OUT.npz|OUT.csv [--plot PNG]
    specdenoise etc import PATH... --out TABLE.zarr [--seeing ... for lone .dat files]

The first prints an S/N summary and writes per-pixel arrays ``wavelength`` (nm, vacuum),
``signal`` (e^- per exposure), ``sky`` (e^- per exposure), ``variance`` (e^-2 per exposure, sky
and detector terms, object excluded), ``conversion`` (signal / f_nu, f_nu in erg s^-1 cm^-2
Hz^-1) and ``snr`` (after all exposures).  With ``--mag`` alone the source is flat in f_nu at that
AB magnitude.  ``--spectrum`` reads two columns, wavelength in nm and flux (``--flux-unit flam``,
the default: f_lambda, or ``fnu``: f_nu; any scale), comma- or whitespace-separated, ``#``
comments; it is scaled so that its AB magnitude through ``--filter`` (any speclite filter) is
``--mag`` and sampled at the pixel wavelengths by linear interpolation (no line-spread function is
applied -- give a spectrum at PFS resolution).  ``--moon-zenith`` >= 90 turns moonlight off.

The stage is :mod:`specdenoise.stage_etc`; this module is its argparse.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from specdenoise import options
from specdenoise.errors import SpecdenoiseError
from specdenoise.schema import OBSERVING
from specdenoise.stage_etc import DEFAULT_FILTER, DEFAULTS, calculate, import_table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "etc", help="exposure-time calculator for the PFS MR red arm; `etc import` builds "
        "an ETC noise table",
        description=__doc__.split("\n\n")[0] + " See `specdenoise etc import --help` for the "
        "second form.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Forms:\n  specdenoise etc --mag 22 --out snr.npz [conditions]\n"
               "  specdenoise etc import PATH... --out TABLE.zarr",
        add_help=False,
    )
    p.add_argument("-h", "--help", action=_Help, help="show this help message and exit "
                   "(`etc import --help`: the help of the import form)")
    p.add_argument("action", nargs="*", metavar="import PATH",
                   help="`import` followed by ETC outputs (.dat, gsetc parameter files, .ecsv, "
                        "or folders of them)")
    _add_conditions(p, "observing conditions")
    src = p.add_argument_group("source")
    src.add_argument("--mag", type=float, help="AB magnitude (flat f_nu, or the spectrum's "
                     "magnitude through --filter)")
    src.add_argument("--filter", default=DEFAULT_FILTER, help="speclite filter for --spectrum "
                     f"(default {DEFAULT_FILTER})")
    src.add_argument("--spectrum", type=Path, help="two columns: wavelength nm, flux")
    src.add_argument("--flux-unit", choices=("flam", "fnu"), default="flam",
                     help="the spectrum's flux is f_lambda (default) or f_nu")
    p.add_argument("--table", type=Path, help="use this ETC table (Zarr) instead of the "
                   "built-in noise model")
    p.add_argument("--out", type=Path, required=True, help="OUT.npz or OUT.csv; TABLE.zarr "
                   "for `import`")
    p.add_argument("--plot", type=Path, help="also draw signal, sky and S/N to this PNG")
    options.add_overwrite(p, "an existing OUT.npz/OUT.csv/PNG, or an existing ETC table")
    options.add_no_progress(p)
    p.set_defaults(func=run)


def _add_conditions(p, title: str) -> None:
    cond = p.add_argument_group(title)
    for c in OBSERVING:  # the one table of observing conditions
        cond.add_argument(c.option, type=type(c.value), default=None,
                          help=f"{c.help} ({c.value:g})")


def import_parser() -> argparse.ArgumentParser:
    """The help of ``specdenoise etc import`` (its options are parsed by the etc parser)."""
    p = argparse.ArgumentParser(
        prog="specdenoise etc import",
        description="Build an ETC noise table (Zarr) from outputs of the real PFS ETC, for "
                    "`specdenoise simulate --noise TABLE.zarr`: legacy .dat noise/snc files with "
                    "their gsetc parameter files (one run per parameter file), v2 ECSV tables "
                    "(noise and snc paired by identical conditions), or folders of them.",
        epilog="Example: specdenoise etc import runs/ --out etc_table.zarr")
    p.add_argument("paths", nargs="+", metavar="PATH", help="ETC output files or folders")
    p.add_argument("--out", type=Path, required=True, metavar="TABLE.zarr",
                   help="the ETC table to write")
    _add_conditions(p, "observing conditions of lone legacy .dat files (no parameter file)")
    options.add_overwrite(p, "an existing ETC table")
    options.add_no_progress(p)
    from specdenoise.cli import DEBUG_HELP

    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return p


class _Help(argparse.Action):
    """``etc --help``, or after ``import`` the import form's own help."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        action = getattr(namespace, "action", None) or []
        (import_parser() if action[:1] == ["import"] else parser).print_help()
        parser.exit()


def run(args) -> int:
    given = {k: getattr(args, k) for k in DEFAULTS}
    if args.action:
        if args.action[0] != "import":
            raise SpecdenoiseError(
                f"unknown etc action {args.action[0]!r}; use `specdenoise etc import PATH... "
                "--out TABLE.zarr` or options only")
        import_table(args.action[1:], args.out, given, overwrite=args.overwrite,
                     progress=not args.no_progress)
        return 0
    calculate(given, args.mag, args.out, spectrum=args.spectrum, filter_name=args.filter,
              flux_unit=args.flux_unit, table=args.table, plot=args.plot,
              overwrite=args.overwrite)
    return 0
