"""The etc stage: the exposure-time calculator for the PFS MR red arm, and ETC-table import.

``specdenoise etc`` (:mod:`specdenoise.cli_etc`) is a thin command line over two functions:

- :func:`calculate`: the S/N of a source under given observing conditions. It writes per-pixel
  arrays (:data:`COLUMNS`) ``wavelength`` (nm, vacuum), ``signal`` (e^- per exposure), ``sky``
  (e^- per exposure), ``variance`` (e^-2 per exposure, sky and detector terms, object
  excluded), ``conversion`` (signal / f_nu, f_nu in erg s^-1 cm^-2 Hz^-1) and ``snr`` (after
  all exposures) to ``.npz`` or ``.csv``, prints a summary and optionally draws a plot. The
  source's f_nu is physics (:func:`specdenoise.simulate.source.source_fnu`), and so is the noise
  model (:func:`specdenoise.simulate.engine.noise_model`).
- :func:`import_table`: outputs of the real PFS ETC into an ETC table (Zarr) for
  ``specdenoise simulate --noise TABLE.zarr`` (:mod:`specdenoise.simulate.etc_table`).

The observing conditions are a mapping by name (:data:`DEFAULTS` lists them with their
defaults); :func:`conditions` checks each against its range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from specdenoise import stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.schema import OBSERVING
from specdenoise.simulate.source import DEFAULT_FILTER

#: arrays written by ``specdenoise etc``, in this order (names are a public interface)
COLUMNS = ("wavelength", "signal", "sky", "variance", "conversion", "snr")

#: the observing conditions and their defaults, from the one table of them (schema.OBSERVING)
DEFAULTS = {c.name: c.value for c in OBSERVING}


def conditions(given: Mapping, defaults: bool) -> dict:
    """The observing conditions given (None: not given), each checked against its range, and
    with ``defaults`` the defaults of those not given; name -> float."""
    from specdenoise.config import range_problem

    out = {}
    for k, d in DEFAULTS.items():
        v = given.get(k)
        if v is not None:
            problem = range_problem(k, float(v))
            if problem:
                raise SpecdenoiseError(f"--{k.replace('_', '-')}: {problem}")
            out[k] = float(v)
        elif defaults:
            out[k] = float(d)
    return out


def import_table(paths: Sequence, out: Path, given: Mapping, *, overwrite: bool = False,
                 progress: bool = True, log=print) -> Path:
    """Import ETC outputs (files or folders) into the ETC table ``out``; ``given``: the
    observing conditions of lone legacy ``.dat`` files (no parameter file)."""
    from specdenoise.simulate import etc_table

    if not paths:
        raise SpecdenoiseError("etc import: give the ETC output files or folders to import")
    # the output is checked before any file is read (write_table checks it again), and its
    # folder made: an unwritable place fails now, not after the whole import
    stores.check_output(out, stores.ETC_TABLE, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = etc_table.import_etc_runs(paths, conditions(given, defaults=False),
                                     progress=progress)
    ds = etc_table.runs_to_dataset(runs, source=" ".join(str(p) for p in paths))
    out = etc_table.write_table(ds, out, overwrite=overwrite)
    axes = [d for d in ds["sky_rate"].dims if d != "wave"]
    shape = " x ".join(f"{a}[{ds.sizes[a]}]" for a in axes) or "a single run"
    log(f"imported {len(runs)} ETC run(s) into {out}: {shape}")
    return out


def calculate(given: Mapping, mag: float | None, out: Path, *, spectrum: Path | None = None,
              filter_name: str = DEFAULT_FILTER, flux_unit: str = "flam",
              table: Path | None = None, plot: Path | None = None, overwrite: bool = False,
              log=print) -> dict[str, np.ndarray]:
    """The S/N of a source of AB magnitude ``mag`` (flat in f_nu, or ``spectrum`` scaled to it
    through ``filter_name``) under the conditions ``given`` (the defaults for those not given),
    with the built-in noise model or the ETC ``table``. Writes :data:`COLUMNS` to ``out``
    (``.npz`` or ``.csv``), logs a summary, draws ``plot`` (PNG) when given; returns the
    arrays, each (4096,)."""
    from specdenoise.simulate import engine
    from specdenoise.simulate.noise import snr
    from specdenoise.simulate.source import source_fnu

    suffix = out.suffix.lower()
    if suffix not in (".npz", ".csv"):
        raise SpecdenoiseError(f"--out must end in .npz or .csv, not {out.name}")
    c = conditions(given, defaults=True)
    if mag is not None:
        from specdenoise.config import range_problem

        problem = range_problem("mag", mag)
        if problem:
            raise SpecdenoiseError(f"--mag: {problem}")
    stores.check_output(out, None, overwrite=overwrite)
    if plot is not None:
        stores.check_output(plot, None, overwrite=overwrite)
    model = engine.noise_model("builtin" if table is None else str(table))
    res = model.evaluate(c)
    wave = model.wave
    fnu = source_fnu(wave, mag, spectrum, filter_name, flux_unit)
    arrays = {"wavelength": wave, "conversion": res["conversion"][0], "sky": res["sky"][0],
              "variance": res["variance"][0]}
    arrays["signal"] = arrays["conversion"] * fnu
    arrays["snr"] = snr(arrays["signal"], arrays["variance"], c["n_exp"])
    if not np.isfinite(arrays["snr"]).all():  # a spectrum file with NaN, say
        raise SpecdenoiseError("the S/N is not finite at some pixels; check --spectrum "
                               "and the conditions")
    _write(out, {k: arrays[k] for k in COLUMNS}, overwrite=overwrite)
    _summary(arrays, c, mag, spectrum, filter_name, out, log)
    if plot is not None:
        _plot(plot, arrays, c)
        log(f"  wrote the plot (signal, sky, S/N) to {plot}")
    return arrays


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


def _summary(a: dict, c: dict, mag, spectrum, filter_name, out, log) -> None:
    src = (f"AB {mag:g}" + (f" ({spectrum.name} through {filter_name})"
                            if spectrum else " flat in f_nu"))
    moon = "no Moon" if c["moon_zenith"] >= 90 else (
        f"Moon phase {c['moon_phase']:g} at zenith angle {c['moon_zenith']:g} deg, "
        f"{c['moon_separation']:g} deg away")
    log(f"PFS MR red arm, {src}; seeing {c['seeing']:g}\", zenith {c['zenith']:g} deg, field "
          f"{c['field_angle']:g} deg, {moon}; {int(c['n_exp'])} x {c['exp_time']:g} s")
    log(f"  S/N per pixel after {int(c['n_exp'])} exposures: median {np.median(a['snr']):.2f}")
    w = a["wavelength"]
    for lo in (710, 745, 780, 815, 850):
        sel = (w >= lo) & (w < lo + 35)
        log(f"    {lo}-{lo + 35} nm: median S/N {np.median(a['snr'][sel]):7.2f}, signal "
              f"{np.median(a['signal'][sel]):9.2f} e-, sky {np.median(a['sky'][sel]):9.2f} e-"
              " per exposure")
    log(f"  wrote {len(COLUMNS)} arrays x {w.size} pixels to {out}")


def _plot(path: Path, a: dict, c: dict) -> None:
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
