"""ETC noise tables: import real PFS ETC runs into Zarr and use them instead of the built-in model.

How the authors ran: the PFS ETC evaluated once per set of observing conditions, its outputs kept
on disk, and the simulator looking them up.  Here a set of ETC runs over a grid of conditions is
read (:func:`import_etc_runs`) into one xarray-on-Zarr store (:func:`write_table`) and
:class:`TableNoise` interpolates it over the condition axes, with the same interface as
:class:`~specdenoise.simulate.noise.BuiltinNoise`.

Readers
-------
* legacy whitespace ``.dat`` (C ``gsetc`` and ``pfsspecsim`` < 2): noise files with rows
  ``arm pixel wavelength variance sky`` and S/N (``snc``) files with rows ``arm pixel wavelength
  snr signal noise_variance noise_variance_tot input_mag conversion_factor sampling_factor sky``;
  only the red arm is kept (arm 3 = red MR, else arm 1 = red LR);
* the ``gsetc`` parameter file (one value a line) that produced a noise/snc pair -- it names the
  two output files and holds the conditions;
* v2 ECSV tables (``pfsspecsim.etc``) whose YAML header carries the run's parameters
  (``meta["params"]``: ``seeing``, ``zenith_ang``, ``field_ang``, ``moon_zenith_ang``,
  ``moon_target_ang``, ``moon_phase``, ``exp_time``, ``exp_num``).

Store layout
------------
``sky_rate[<axes>, wave]`` sky e^-/s/pixel, ``conversion_rate[<axes>, wave]`` object e^-/s per
unit f_nu (NaN where a run had no S/N file), ``variance[<axes>, wave]`` the ETC's own per-exposure
noise variance, ``exp_time[<axes>]``, ``n_exp[<axes>]``; ``<axes>`` are the conditions that vary
between runs (any of :data:`AXES`), each a sorted coordinate; conditions common to all runs are in
``attrs["fixed"]``.  The runs must fill the grid (every combination once).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from specdenoise import stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.progress import iterate
from specdenoise.simulate import atmosphere, pfs
from specdenoise.simulate.noise import (
    CONDITIONS,
    BuiltinNoise,
    check_backend,
    etc_variance,
    read_conditions,
)

#: conditions a table stores per run but does not interpolate over: it keeps rates per second
#: and forms the variance for any number of exposures (:class:`TableNoise`)
SCALED = ("exp_time", "n_exp")
#: condition axes a table can vary over: every other observing condition
AXES = tuple(c for c in CONDITIONS if c not in SCALED)
TABLE_KIND = stores.ETC_TABLE.name
#: ETC parameter names -> ours
ETC_PARAM_NAMES = {
    "seeing": "seeing", "zenith_ang": "zenith", "field_ang": "field_angle",
    "moon_zenith_ang": "moon_zenith", "moon_target_ang": "moon_separation",
    "moon_phase": "moon_phase", "exp_time": "exp_time", "exp_num": "n_exp",
}
CONDITION_KEYS = CONDITIONS
#: positions in a gsetc parameter file (0-based line numbers)
_GSETC_LINES = {"seeing": 3, "zenith": 4, "field_angle": 6, "moon_zenith": 8,
                "moon_separation": 9, "moon_phase": 10, "exp_time": 11, "n_exp": 12}
_GSETC_NOISE_LINE, _GSETC_SNC_LINE = 16, 21


# --- readers -----------------------------------------------------------------------------------


def _numeric_rows(path: Path) -> np.ndarray | None:
    """The file as a float array if every non-empty line is numbers of one width, else None."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecdenoiseError(f"cannot read ETC file {path}: {exc}") from None
    rows = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) < 5:
        return None
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        return None


def _red_arm(rows: np.ndarray, path: Path) -> np.ndarray:
    arms = rows[:, 0].astype(int)
    for arm in (3, 1):
        sel = rows[arms == arm]
        if len(sel):
            if len(sel) != pfs.RED_MR_NPIX:
                raise SpecdenoiseError(
                    f"{path}: red arm has {len(sel)} rows, expected {pfs.RED_MR_NPIX}")
            return sel[np.argsort(sel[:, 1])]
    raise SpecdenoiseError(f"{path}: no red-arm rows (arm 3 or 1) in this ETC output")


def read_legacy(path) -> dict:
    """Read a legacy ``.dat`` noise (5 columns) or snc (11 columns) file, red arm only.

    Returns ``{"kind": "noise"|"snc", "wave": snc-grid wavelengths nm, "sky", "variance",
    ["conversion"]}`` (arrays of 4096).
    """
    path = Path(path)
    rows = _numeric_rows(path)
    if rows is None or rows.shape[1] not in (5, 11):
        raise SpecdenoiseError(
            f"{path}: not a PFS ETC noise (5 columns) or snc (11 columns) table")
    red = _red_arm(rows, path)
    if rows.shape[1] == 5:
        dl = (red[-1, 2] - red[0, 2]) / (len(red) - 1)
        return {"kind": "noise", "wave": red[:, 2] - 0.5 * dl, "variance": red[:, 3],
                "sky": red[:, 4]}
    return {"kind": "snc", "wave": red[:, 2], "variance": red[:, 5], "sky": red[:, 10],
            "conversion": red[:, 8]}


def read_gsetc_params(path) -> dict:
    """Conditions and output file names from a ``gsetc`` parameter file (one value a line)."""
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecdenoiseError(f"cannot read ETC parameter file {path}: {exc}") from None
    if len(lines) <= _GSETC_SNC_LINE:
        raise SpecdenoiseError(f"{path}: too short for a gsetc parameter file")
    try:
        cond = {k: float(lines[i]) for k, i in _GSETC_LINES.items()}
    except ValueError:
        raise SpecdenoiseError(f"{path}: malformed gsetc parameter file (non-numeric "
                               "condition)") from None
    return {"conditions": cond, "noise": lines[_GSETC_NOISE_LINE],
            "snc": lines[_GSETC_SNC_LINE]}


def _column(table, names, path):
    for n in names:
        if n in table.colnames:
            return np.asarray(table[n], dtype=np.float64)
    raise SpecdenoiseError(f"{path}: ECSV table lacks a column {' or '.join(names)}")


def read_ecsv(path) -> dict:
    """Read a v2 ETC ECSV table (noise or snc), red arm only, with its conditions."""
    from astropy.table import Table

    path = Path(path)
    try:
        table = Table.read(path, format="ascii.ecsv")
    except Exception as exc:  # astropy raises many types for a corrupt file
        raise SpecdenoiseError(f"{path}: not a readable ECSV table ({exc})") from None
    meta = dict(table.meta)
    params = meta.get("params", meta)
    cond = {ours: float(params[theirs]) for theirs, ours in ETC_PARAM_NAMES.items()
            if theirs in params and params[theirs] is not None}
    if "arm" in table.colnames:
        arms = np.asarray(table["arm"]).astype(int)
        arm = 3 if np.any(arms == 3) else 1
        table = table[arms == arm]
    if len(table) != pfs.RED_MR_NPIX:
        raise SpecdenoiseError(f"{path}: {len(table)} red-arm rows, expected {pfs.RED_MR_NPIX}")
    out = {"conditions": cond, "sky": _column(table, ("sky",), path),
           "variance": _column(table, ("noise_variance", "variance", "noise"), path)}
    wave = _column(table, ("wavelength", "wave", "lambda"), path)
    if "conversion_factor" in table.colnames:
        out.update(kind="snc", wave=wave,
                   conversion=_column(table, ("conversion_factor",), path))
    else:
        out.update(kind="noise", wave=wave - 0.5 * (wave[-1] - wave[0]) / (len(wave) - 1))
    return out


# --- assembling runs ---------------------------------------------------------------------------


def _is_gsetc_params(path: Path) -> bool:
    try:
        read_gsetc_params(path)
    except SpecdenoiseError:
        return False
    return True


def _expand(paths: Iterable) -> list[Path]:
    """Files named, plus the ETC outputs and parameter files found in folders named."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            for q in sorted(p.iterdir()):
                if not q.is_file() or q.suffix.lower() not in (".dat", ".txt", ".ecsv"):
                    continue
                rows = _numeric_rows(q) if q.suffix.lower() != ".ecsv" else None
                if q.suffix.lower() == ".ecsv" or (rows is not None and rows.shape[1] in (5, 11)) \
                        or (rows is None and _is_gsetc_params(q)):
                    files.append(q)
        elif p.is_file():
            files.append(p)
        else:
            raise SpecdenoiseError(f"ETC output {p} does not exist")
    return files


def _merge(noise: dict | None, snc: dict | None, cond: Mapping, where: str) -> dict:
    missing = [k for k in CONDITION_KEYS if k not in cond]
    if missing:
        raise SpecdenoiseError(
            f"{where}: conditions unknown ({', '.join(missing)}); give them on the command "
            "line (--seeing, --zenith, ...) or import the gsetc parameter file with the outputs")
    base = snc if snc is not None else noise
    run = {"conditions": {k: float(cond[k]) for k in CONDITION_KEYS}, "sky": base["sky"],
           "variance": (noise or snc)["variance"], "wave": base["wave"],
           "conversion": snc["conversion"] if snc is not None else None}
    return run


def import_etc_runs(paths, conditions: Mapping | None = None, progress: bool = False
                    ) -> list[dict]:
    """Collect ETC runs from files and folders.

    Each gsetc parameter file contributes one run (its noise and snc files, looked up next to it
    or among ``paths``); ECSV tables pair by identical conditions; legacy ``.dat`` files without
    a parameter file take ``conditions`` (one run only); ``progress``: a bar (or a line per
    tenth of the files in a log file).  Returns a list of runs
    ``{"conditions", "wave", "sky", "variance", "conversion"}``.
    """
    files = _expand(paths)
    if not files:
        raise SpecdenoiseError("no ETC output files given")
    by_name = {f.name: f for f in files}
    used: set[Path] = set()
    runs = []
    legacy, ecsv = {}, []
    for f in iterate(files, "etc import", "file", enabled=progress):
        if f.suffix.lower() == ".ecsv":
            ecsv.append(read_ecsv(f) | {"path": f})
            continue
        rows = _numeric_rows(f)
        if rows is not None:
            legacy[f] = read_legacy(f)
            continue
        par = read_gsetc_params(f)
        pair = {}
        for kind in ("noise", "snc"):
            name = par[kind]
            if name in ("-", ""):
                continue
            cand = by_name.get(Path(name).name) or (f.parent / name)
            if not cand.is_file():
                raise SpecdenoiseError(f"{f}: its {kind} output {name} was not found")
            pair[kind] = legacy.get(cand) or read_legacy(cand)
            used.add(cand.resolve())
        runs.append(_merge(pair.get("noise"), pair.get("snc"), par["conditions"], str(f)))
    # ECSV: pair noise and snc tables with identical conditions
    groups: dict = {}
    for t in ecsv:
        key = json.dumps(t["conditions"], sort_keys=True)
        groups.setdefault(key, {})
        if t["kind"] in groups[key]:
            raise SpecdenoiseError(f"{t['path']}: two ECSV {t['kind']} tables with the same "
                                   "conditions")
        groups[key][t["kind"]] = t
    for g in groups.values():
        any_t = next(iter(g.values()))
        runs.append(_merge(g.get("noise"), g.get("snc"), any_t["conditions"], str(any_t["path"])))
    # legacy files without a parameter file
    rest = {f: r for f, r in legacy.items() if f.resolve() not in used}
    if rest:
        noise = [f for f, r in rest.items() if r["kind"] == "noise"]
        snc = [f for f, r in rest.items() if r["kind"] == "snc"]
        if len(noise) > 1 or len(snc) > 1:
            raise SpecdenoiseError(
                "several ETC .dat outputs without gsetc parameter files: import each with its "
                "parameter file, or one noise/snc pair at a time with the conditions given")
        r_noise = rest[noise[0]] if noise else None
        r_snc = rest[snc[0]] if snc else None
        runs.append(_merge(r_noise, r_snc, conditions or {}, str((noise + snc)[0])))
    return runs


def runs_to_dataset(runs: list[dict], source: str = "") -> xr.Dataset:
    """Arrange runs on the grid of the conditions that vary; every combination exactly once."""
    if not runs:
        raise SpecdenoiseError("no ETC runs to tabulate")
    wave = pfs.pixel_wave()
    for r in runs:
        if r["wave"].shape != wave.shape or np.max(np.abs(r["wave"] - wave)) > 1e-3:
            raise SpecdenoiseError("an ETC run is not on the PFS MR red-arm grid (710-885 nm, "
                                   "4096 pixels)")
    keys = [tuple(r["conditions"][a] for a in AXES) for r in runs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise SpecdenoiseError(
            f"several ETC runs share the conditions {dict(zip(AXES, dup, strict=True))}; "
            "import runs of one instrument and sky model that differ in their conditions")
    values = {a: sorted({r["conditions"][a] for r in runs}) for a in AXES}
    axes = [a for a in AXES if len(values[a]) > 1]
    shape = tuple(len(values[a]) for a in axes)
    if int(np.prod(shape, dtype=np.int64)) != len(runs):
        raise SpecdenoiseError(
            f"the {len(runs)} ETC runs do not fill a grid over {', '.join(axes) or 'nothing'} "
            f"({' x '.join(map(str, shape))} combinations); run the ETC on a full grid")
    arrays = {k: np.full(shape + (wave.size,), np.nan) for k in ("sky_rate", "conversion_rate",
                                                                  "variance")}
    t_arr, n_arr = np.full(shape, np.nan), np.full(shape, np.nan)
    seen = np.zeros(shape, dtype=bool)
    for r in runs:
        c = r["conditions"]
        idx = tuple(values[a].index(c[a]) for a in axes)
        if seen[idx]:
            raise SpecdenoiseError(f"two ETC runs with the same conditions {c}")
        seen[idx] = True
        arrays["sky_rate"][idx] = r["sky"] / c["exp_time"]
        arrays["variance"][idx] = r["variance"]
        if r["conversion"] is not None:
            arrays["conversion_rate"][idx] = r["conversion"] / c["exp_time"]
        t_arr[idx], n_arr[idx] = c["exp_time"], c["n_exp"]
    dims = tuple(axes) + ("wave",)
    ds = xr.Dataset(
        {"sky_rate": (dims, arrays["sky_rate"], {"units": "electron / s / pixel"}),
         "conversion_rate": (dims, arrays["conversion_rate"],
                             {"units": "electron / s per erg s-1 cm-2 Hz-1"}),
         "variance": (dims, arrays["variance"],
                      {"units": "electron2 / exposure / pixel, object excluded"}),
         "exp_time": (tuple(axes), t_arr, {"units": "s"}),
         "n_exp": (tuple(axes), n_arr)},
        coords={a: np.array(values[a]) for a in axes} | {"wave": ("wave", wave, {"units": "nm"})},
        attrs={stores.KIND_ATTR: TABLE_KIND, "source": source,
               "fixed": json.dumps({a: values[a][0] for a in AXES if a not in axes})},
    )
    return ds


def write_table(ds: xr.Dataset, path, overwrite: bool = False) -> Path:
    """Write the table to Zarr (v3) at ``path``, assembled under a unique temporary first.

    ``overwrite`` replaces only an ETC table (:func:`specdenoise.stores.publish`).
    """
    path = Path(path)
    stores.check_output(path, stores.ETC_TABLE, overwrite=overwrite)
    with stores.locked(path):
        with stores.assembled(path, stores.ETC_TABLE, overwrite=overwrite) as tmp:
            ds = ds.copy()
            ds.attrs = {**ds.attrs, stores.KIND_ATTR: TABLE_KIND, "complete": True}
            ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
    return path


def open_table(path) -> xr.Dataset:
    """Open an ETC table store, refusing anything else (tables of older versions included)."""
    path = Path(path)
    ds = stores.open_store(
        path, stores.ETC_TABLE, consolidated=False,
        missing=f"ETC table {path} does not exist; create it with `specdenoise etc import`",
        not_kind=f"{path}: not a specdenoise ETC table")
    try:
        return ds.load()
    except Exception as exc:
        raise SpecdenoiseError(f"{path}: not a readable ETC table ({exc})") from None


class TableNoise:
    """Noise model backed by an ETC table; interpolates multilinearly over its condition axes.

    Sky and conversion are interpolated per second (linearly in airmass along the zenith axis,
    linearly in the other conditions) and scaled by the exposure time; the variance
    is formed from the interpolated sky with the ETC's formula
    (:func:`~specdenoise.simulate.noise.etc_variance`), so ``n_exp`` and ``exp_time`` may differ
    from the runs'.  Conditions outside the table are clamped to its edges; conditions the
    table does not vary are ignored (the table's fixed values apply).  Where the table has no
    conversion (noise files only) the built-in model's conversion is used.
    """

    def __init__(self, path):
        from scipy.interpolate import RegularGridInterpolator

        ds = open_table(path)
        self.path = Path(path)
        self.wave = np.asarray(ds["wave"].values, dtype=np.float64)
        self.axes = [d for d in ds["sky_rate"].dims if d != "wave"]
        self.fixed = json.loads(ds.attrs.get("fixed", "{}"))
        self._lo = np.array([ds[a].values.min() for a in self.axes])
        self._hi = np.array([ds[a].values.max() for a in self.axes])
        grid = tuple(self._coord(a, np.asarray(ds[a].values, dtype=np.float64))
                     for a in self.axes)
        sky = np.asarray(ds["sky_rate"].values)
        conv = np.asarray(ds["conversion_rate"].values)
        self._builtin = BuiltinNoise() if np.isnan(conv).any() else None
        if self.axes:
            self._sky = RegularGridInterpolator(grid, sky)
            self._conv = RegularGridInterpolator(grid, conv) if self._builtin is None else None
        else:
            self._sky_const, self._conv_const = sky, conv

    @staticmethod
    def _coord(axis: str, values: np.ndarray) -> np.ndarray:
        # sky and extinction are close to linear in airmass, not in zenith angle
        return atmosphere.airmass(values) if axis == "zenith" else values

    def evaluate(self, conditions=None, /, *, backend: str = "numba",
                 **named) -> dict[str, np.ndarray]:
        """Same arguments and result as :meth:`BuiltinNoise.evaluate` (one backend: the
        interpolation is NumPy's either way)."""
        check_backend(backend)
        cond = read_conditions(conditions, named)
        t = cond["exp_time"][:, None]
        n = t.shape[0]
        if self.axes:
            pts = np.stack([cond[a] for a in self.axes], axis=-1)
            pts = np.clip(pts, self._lo, self._hi)
            pts = np.stack([self._coord(a, pts[:, i]) for i, a in enumerate(self.axes)], axis=-1)
            sky = self._sky(pts) * t
            conv = self._conv(pts) * t if self._conv is not None else None
        else:
            sky = np.repeat(self._sky_const[None], n, axis=0) * t
            conv = np.repeat(self._conv_const[None], n, axis=0) * t
        if self._builtin is not None:
            # one exposure, as before: the conversion does not depend on their number
            conv = self._builtin.evaluate({**cond, "n_exp": 1})["conversion"]
        var = etc_variance(sky, cond["exp_time"], cond["n_exp"])
        return {"conversion": conv, "sky": sky, "variance": var}
