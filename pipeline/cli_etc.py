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
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from specdenoise import options, stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.schema import OBSERVING
from specdenoise.simulate.constants import AB_ZEROPOINT_CGS
from specdenoise.simulate.source import (
    DEFAULT_FILTER,
    Bandpass,
    f_lambda_to_f_nu,
    f_nu_to_f_lambda,
)

#: arrays written by ``specdenoise etc``, in this order (names are a public interface)
COLUMNS = ("wavelength", "signal", "sky", "variance", "conversion", "snr")


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


DEFAULTS = {c.name: c.value for c in OBSERVING}


def run(args) -> int:
    if args.action:
        if args.action[0] != "import":
            raise SpecdenoiseError(
                f"unknown etc action {args.action[0]!r}; use `specdenoise etc import PATH... "
                "--out TABLE.zarr` or options only")
        return run_import(args, args.action[1:])
    return run_calc(args)


def _conditions(args, defaults: bool) -> dict:
    """The observing conditions given (and the defaults), each checked against its range."""
    from specdenoise.config import range_problem

    out = {}
    for k, d in DEFAULTS.items():
        v = getattr(args, k)
        if v is not None:
            problem = range_problem(k, float(v))
            if problem:
                raise SpecdenoiseError(f"--{k.replace('_', '-')}: {problem}")
            out[k] = float(v)
        elif defaults:
            out[k] = float(d)
    return out


def run_import(args, paths) -> int:
    from specdenoise.simulate import etc_table

    if not paths:
        raise SpecdenoiseError("etc import: give the ETC output files or folders to import")
    # the output is checked before any file is read (write_table checks it again), and its
    # folder made: an unwritable place fails now, not after the whole import
    stores.check_output(args.out, stores.ETC_TABLE, overwrite=args.overwrite)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = etc_table.import_etc_runs(paths, _conditions(args, defaults=False),
                                     progress=not args.no_progress)
    ds = etc_table.runs_to_dataset(runs, source=" ".join(str(p) for p in paths))
    out = etc_table.write_table(ds, args.out, overwrite=args.overwrite)
    axes = [d for d in ds["sky_rate"].dims if d != "wave"]
    shape = " x ".join(f"{a}[{ds.sizes[a]}]" for a in axes) or "a single run"
    print(f"imported {len(runs)} ETC run(s) into {out}: {shape}")
    return 0


def source_fnu(wave, mag, spectrum=None, filter_name=DEFAULT_FILTER, flux_unit="flam"):
    """f_nu (erg s^-1 cm^-2 Hz^-1) at ``wave`` (nm) of the source the CLI describes."""
    if mag is None:
        raise SpecdenoiseError("give --mag (AB magnitude of the source)")
    if spectrum is None:
        return np.full(wave.shape, AB_ZEROPOINT_CGS * 10.0 ** (-0.4 * mag))
    try:
        data = np.loadtxt(spectrum, delimiter=None if _whitespace(spectrum) else ",",
                          comments="#", ndmin=2)
    except (OSError, ValueError) as exc:
        raise SpecdenoiseError(f"cannot read spectrum {spectrum}: need two numeric columns "
                               f"(wavelength nm, flux) ({exc})") from None
    if data.shape[1] < 2 or data.shape[0] < 2:
        raise SpecdenoiseError(f"{spectrum}: need two columns (wavelength nm, flux)")
    lam, flux = data[:, 0], data[:, 1]
    order = np.argsort(lam)
    lam, flux = lam[order], flux[order]
    if lam[0] > wave[0] or lam[-1] < wave[-1]:
        raise SpecdenoiseError(f"{spectrum} covers {lam[0]:.1f}-{lam[-1]:.1f} nm; it must "
                               f"cover {wave[0]:.0f}-{wave[-1]:.0f} nm")
    flam = flux if flux_unit == "flam" else f_nu_to_f_lambda(lam, flux)
    m0 = _ab_mag(lam, flam, filter_name, spectrum)
    # f_lambda taken as erg/s/cm^2/nm (m0 refers to that scale)
    fnu = f_lambda_to_f_nu(wave, np.interp(wave, lam, flam))
    return fnu * 10.0 ** (-0.4 * (mag - m0))


def _whitespace(path: Path) -> bool:
    try:
        with open(path) as fh:
            for line in fh:
                if line.strip() and not line.lstrip().startswith("#"):
                    return "," not in line
    except OSError as exc:
        raise SpecdenoiseError(f"cannot read spectrum {path}: {exc.strerror}") from None
    return True


def _ab_mag(lam_nm, flam, filter_name, path) -> float:
    """AB magnitude through a speclite filter of f_lambda given per nm in arbitrary units."""
    band = Bandpass(filter_name)
    lo, hi = band.support
    if lam_nm[0] > lo or lam_nm[-1] < hi:
        raise SpecdenoiseError(f"{path}: cannot integrate through {filter_name}: the spectrum "
                               f"covers {lam_nm[0]:.1f}-{lam_nm[-1]:.1f} nm, the filter "
                               f"{lo:.1f}-{hi:.1f} nm")
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = band.ab_mag(lam_nm, flam)
    if not np.isfinite(mag):
        raise SpecdenoiseError(f"{path}: zero or negative flux through {filter_name}")
    return float(mag)


def run_calc(args) -> int:
    from specdenoise.simulate import engine
    from specdenoise.simulate.noise import snr

    suffix = args.out.suffix.lower()
    if suffix not in (".npz", ".csv"):
        raise SpecdenoiseError(f"--out must end in .npz or .csv, not {args.out.name}")
    c = _conditions(args, defaults=True)
    if args.mag is not None:
        from specdenoise.config import range_problem

        problem = range_problem("mag", args.mag)
        if problem:
            raise SpecdenoiseError(f"--mag: {problem}")
    stores.check_output(args.out, None, overwrite=args.overwrite)
    if args.plot is not None:
        stores.check_output(args.plot, None, overwrite=args.overwrite)
    model = engine.noise_model("builtin" if args.table is None else str(args.table))
    res = model.evaluate(c)
    wave = model.wave
    fnu = source_fnu(wave, args.mag, args.spectrum, args.filter, args.flux_unit)
    arrays = {"wavelength": wave, "conversion": res["conversion"][0], "sky": res["sky"][0],
              "variance": res["variance"][0]}
    arrays["signal"] = arrays["conversion"] * fnu
    arrays["snr"] = snr(arrays["signal"], arrays["variance"], c["n_exp"])
    if not np.isfinite(arrays["snr"]).all():  # a spectrum file with NaN, say
        raise SpecdenoiseError("the S/N is not finite at some pixels; check --spectrum "
                               "and the conditions")
    _write(args.out, {k: arrays[k] for k in COLUMNS}, overwrite=args.overwrite)
    _summary(arrays, c, args)
    if args.plot is not None:
        _plot(args.plot, arrays, c, args)
        print(f"  wrote the plot (signal, sky, S/N) to {args.plot}")
    return 0


def _write(path: Path, arrays: dict, overwrite: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        if path.suffix.lower() == ".npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        else:
            np.savetxt(tmp, np.column_stack(list(arrays.values())), delimiter=",",
                       header=",".join(arrays), comments="", fmt="%.8g")

    try:
        stores.write_file(path, write, overwrite=overwrite)
    except OSError as exc:
        raise SpecdenoiseError(f"cannot write {path}: {exc.strerror}") from None


def _summary(a: dict, c: dict, args) -> None:
    src = (f"AB {args.mag:g}" + (f" ({args.spectrum.name} through {args.filter})"
                                 if args.spectrum else " flat in f_nu"))
    moon = "no Moon" if c["moon_zenith"] >= 90 else (
        f"Moon phase {c['moon_phase']:g} at zenith angle {c['moon_zenith']:g} deg, "
        f"{c['moon_separation']:g} deg away")
    print(f"PFS MR red arm, {src}; seeing {c['seeing']:g}\", zenith {c['zenith']:g} deg, field "
          f"{c['field_angle']:g} deg, {moon}; {int(c['n_exp'])} x {c['exp_time']:g} s")
    print(f"  S/N per pixel after {int(c['n_exp'])} exposures: median {np.median(a['snr']):.2f}")
    w = a["wavelength"]
    for lo in (710, 745, 780, 815, 850):
        sel = (w >= lo) & (w < lo + 35)
        print(f"    {lo}-{lo + 35} nm: median S/N {np.median(a['snr'][sel]):7.2f}, signal "
              f"{np.median(a['signal'][sel]):9.2f} e-, sky {np.median(a['sky'][sel]):9.2f} e-"
              " per exposure")
    print(f"  wrote {len(COLUMNS)} arrays x {w.size} pixels to {args.out}")


def _plot(path: Path, a: dict, c: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ax1.plot(a["wavelength"], a["sky"], lw=0.5, color="0.6", label="sky")
    ax1.plot(a["wavelength"], a["signal"], lw=0.7, label="signal")
    ax1.set_yscale("log")
    ax1.set_ylabel("e$^-$ per exposure per pixel")
    ax1.legend(loc="upper left")
    ax2.plot(a["wavelength"], a["snr"], lw=0.5)
    ax2.set_ylabel(f"S/N after {int(c['n_exp'])} exposures")
    ax2.set_xlabel("vacuum wavelength (nm)")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise SpecdenoiseError(f"cannot write plot {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
