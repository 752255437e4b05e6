"""The simulation configuration: TOML on disk, a frozen :class:`SimConfig` in memory, one error
listing every mistake.

On disk and on the command line a configuration has the nested layout of :data:`DEFAULTS`.
:func:`load_config` merges a user TOML file and ``--set key=value`` overrides into the defaults
and builds a :class:`SimConfig` from the result, which validates itself where it is built: every
problem found is reported on its own line in a single :class:`ConfigError` (a
:class:`SpecdenoiseError`). :meth:`SimConfig.to_dict` / :meth:`SimConfig.from_dict` convert to
and from the plain layout; :func:`config_hash` depends on the settings only. The observing
conditions' defaults and ranges come from their one table, :data:`specdenoise.schema.OBSERVING`.

Distributions (one per parameter and condition, table ``[params.<name>]``)::

    {dist = "fixed",   value = 900}
    {dist = "uniform", low = 19.0, high = 22.5}
    {dist = "normal",  mean = 0.0, std = 300.0, low = -600.0, high = 600.0}   # clipped
    {dist = "beta",    a = 2.0, b = 5.0, low = 0.0, high = 0.1}              # scaled to [low, high]
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from specdenoise.errors import SpecdenoiseError
from specdenoise.schema import CONDITIONS, OBSERVING, PARAMS
from specdenoise.simulate.constants import C_KM_PER_S
from specdenoise.simulate.source import DEFAULT_FILTER, EXTINCTION_LAWS

DEFAULTS: dict = {
    "n": 1000,
    "chunk_size": 1000,
    "seed": 1,
    "out": "dataset.zarr",
    "grid": "builtin",
    "noise": "builtin",
    "compressor": "zstd-bitround",
    "keepbits": 13,
    "split": "",
    "missing": "error",
    # several grids mixed (issue 19): [{grid = "builtin", weight = 0.7}, {grid = "p.zarr",
    # weight = 0.3}]; each spectrum's grid is drawn with these weights and recorded in the
    # per-spectrum coordinate ``grid`` (its index here; the specs in the ``grids`` attribute).
    # Empty (default): the one ``grid`` above, and nothing new is recorded.
    "grids": [],
    "observe": {
        "lsf_fwhm_pix": [3.1, 3.2],
        "distortion": 0.02,
        "noise_kind": "gaussian",
        "extinction_law": "F99",
        "filter": DEFAULT_FILTER,
        # the wider nuisance model (issue 19; specdenoise.simulate.nuisance), all off: smooth
        # continuum shape up to this max |factor - 1| (Legendre orders 1..continuum_order),
        # LSF FWHM varying by fibre by +-lsf_scatter (0.1 = 10 %), sky-subtraction residual
        # (rms fraction of the sky), telluric-correction residual (rms depth scale of the O2 A
        # and H2O 810-835 nm band template)
        "continuum": 0.0,
        "continuum_order": 8,
        "lsf_scatter": 0.0,
        "sky_residual": 0.0,
        "telluric_residual": 0.0,
    },
    "params": {
        "teff": {"dist": "uniform", "low": 3500.0, "high": 7500.0},
        "logg": {"dist": "uniform", "low": 0.0, "high": 5.0},
        "m_h": {"dist": "uniform", "low": -2.5, "high": 0.75},
        "a_m": {"dist": "uniform", "low": -0.25, "high": 0.5},
        "rv": {"dist": "normal", "mean": 0.0, "std": 300.0, "low": -600.0, "high": 600.0},
        "ebv": {"dist": "uniform", "low": 0.0, "high": 0.1},
        "mag": {"dist": "uniform", "low": 19.0, "high": 22.5},
        # the observing conditions: schema.OBSERVING, the one table of them
        **{c.name: dict(c.default) for c in OBSERVING},
    },
}

#: named starting points over DEFAULTS (``simulate --preset NAME``); a config file, ``--set``
#: and explicit options still apply on top
PRESETS: dict[str, dict] = {
    "default": {},
    # Our reading of Pal & Dobos (2025) and Dobos et al. (2024): their targets span 6-7
    # magnitudes at one exposure time; HSC-i 16.0-22.5 spans 6.5 (the default 19-22.5 spans
    # 3.5, median S/N 7.5, a quarter of the spectra below S/N 3).
    "paper": {"params": {"mag": {"dist": "uniform", "low": 16.0, "high": 22.5}}},
}

DIST_KEYS = {
    "fixed": ("value",),
    "uniform": ("low", "high"),
    "normal": ("mean", "std", "low", "high"),
    "beta": ("a", "b", "low", "high"),
}
#: the values each parameter and condition may take: (low, high, low included, high included,
#: what the quantity is). Checked where numbers enter (configs and ``specdenoise etc``), so that
#: nonsense is refused before any store is created instead of turning into NaN spectra.
RANGES = {
    "teff": (0.0, math.inf, False, False, "K"),
    "rv": (-C_KM_PER_S, C_KM_PER_S, False, False, "km/s, below the speed of light"),
    "ebv": (0.0, 10.0, True, True, "mag"),
    "mag": (-30.0, 50.0, True, True, "AB mag"),
    **{c.name: (c.low, c.high, c.low_included, c.high_included, c.meaning) for c in OBSERVING},
}


def range_problem(name: str, value) -> str | None:
    """Why ``value`` cannot be a ``name`` (NaN, infinite or out of :data:`RANGES`), or None."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return f"{name} must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"{name} must be a finite number, got {value!r}"
    if name not in RANGES:
        return None
    lo, hi, lo_in, hi_in, what = RANGES[name]
    ok = (value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)
    if ok:
        return None
    lo_s = f"{'[' if lo_in else '('}{lo:g}"
    hi_s = f"{hi:g}{']' if hi_in else ')'}"
    return f"{name} = {value:g} is outside {lo_s}, {hi_s} ({what})"


COMPRESSORS = ("zstd", "zstd-bitround", "lz4", "none")


def _merge(base: dict, new: Mapping, where: str, errors: list[str]) -> dict:
    out = copy.deepcopy(base)
    for key, value in new.items():
        path = f"{where}{key}"
        if key not in base:
            if where.startswith("params."):
                out[key] = value  # a distribution may switch to keys of another kind
                continue
            errors.append(f"unknown option '{path}'")
            continue
        if isinstance(base[key], dict) and key != "params" and not where.startswith("params"):
            if not isinstance(value, Mapping):
                errors.append(f"'{path}' must be a table")
                continue
            out[key] = _merge(base[key], value, path + ".", errors)
        elif key == "params":
            if not isinstance(value, Mapping):
                errors.append("'params' must be a table of distributions")
                continue
            for pname, dist in value.items():
                if pname not in base["params"]:
                    errors.append(
                        f"unknown parameter 'params.{pname}'; known: {', '.join(base['params'])}"
                    )
                elif not isinstance(dist, Mapping):
                    errors.append(f"'params.{pname}' must be a table like {{dist = \"uniform\"}}")
                else:
                    d = dict(dist)
                    old = base["params"][pname]
                    if "dist" in d and d["dist"] != old["dist"]:
                        # a new kind keeps only the old keys it also uses (e.g. low, high)
                        keep = DIST_KEYS.get(d["dist"], ())
                        out["params"][pname] = {
                            **{k: v for k, v in old.items() if k in keep}, **d
                        }
                    else:
                        out["params"][pname] = {**base["params"][pname], **d}
        else:
            out[key] = value
    return out


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word such as a path or a name


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as TOML, else taken as text)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise SpecdenoiseError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = cfg
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SpecdenoiseError(f"--set {key}: '{p}' is not a table")
        node[parts[-1]] = _parse_value(text.strip())
    return cfg


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class ConfigError(SpecdenoiseError):
    """A configuration with mistakes; ``problems`` lists each on its own (one line each)."""

    def __init__(self, problems: list[str], where: str = ""):
        self.problems = list(problems)
        super().__init__(f"invalid configuration{where}: " + "; ".join(self.problems))


def _raise_problems(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


@dataclass(frozen=True)
class Distribution:
    """One parameter's or condition's distribution (module docstring): ``dist`` and the numbers
    its kind uses (:data:`DIST_KEYS`), in the parameter's unit. Checked by the
    :class:`SimConfig` it is part of (:meth:`problems`: the kind's rules and the parameter's
    range, :data:`RANGES`)."""

    dist: str
    value: float | None = None
    low: float | None = None
    high: float | None = None
    mean: float | None = None
    std: float | None = None
    a: float | None = None
    b: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping, name: str = "") -> Distribution:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            kind = d.get("dist")
            need = DIST_KEYS.get(kind, ())
            raise ConfigError([f"'params.{name}' has keys {unknown} not used by "
                               f"dist = \"{kind}\" (uses {', '.join(need)})"])
        if "dist" not in d:
            raise ConfigError([f"'params.{name}.dist' must be one of {', '.join(DIST_KEYS)}, "
                               "got None"])
        return cls(**d)

    def to_dict(self) -> dict:
        """``{"dist": ..., <the kind's numbers>}``, the layout of :data:`DEFAULTS`."""
        keys = DIST_KEYS.get(self.dist, ())
        rest = [f.name for f in fields(self)[1:] if f.name not in keys]
        return {"dist": self.dist, **{k: getattr(self, k) for k in (*keys, *rest)
                                      if getattr(self, k) is not None}}

    def problems(self, name: str) -> list[str]:
        """Every mistake, one line each, as the distribution of the parameter ``name``."""
        d, kind, errors = self.to_dict(), self.dist, []
        if kind not in DIST_KEYS:
            return [f"'params.{name}.dist' must be one of {', '.join(DIST_KEYS)}, got {kind!r}"]
        need = DIST_KEYS[kind]
        for k in need:
            if not _is_number(d.get(k)):
                errors.append(f"'params.{name}.{k}' must be a number for dist = \"{kind}\"")
            elif not math.isfinite(d[k]):
                errors.append(f"'params.{name}.{k}' must be a finite number, got {d[k]!r}")
        # every value the distribution can draw lies in [low, high] (or is ``value``)
        for k in ("value", "low", "high"):
            v = d.get(k)
            if k in need and _is_number(v) and math.isfinite(v):
                problem = range_problem(name, v)
                if problem:
                    errors.append(f"'params.{name}.{k}': {problem}")
        extra = set(d) - set(need) - {"dist"}
        if extra:
            errors.append(f"'params.{name}' has keys {sorted(extra)} not used by "
                          f"dist = \"{kind}\" (uses {', '.join(need)})")
        if all(_is_number(d.get(k)) for k in need):
            if "low" in need and d["low"] > d["high"]:
                errors.append(f"'params.{name}': low > high")
            if kind == "normal" and d["std"] < 0:
                errors.append(f"'params.{name}.std' must be >= 0")
            if kind == "beta" and (d["a"] <= 0 or d["b"] <= 0):
                errors.append(f"'params.{name}': beta a and b must be > 0")
        return errors


@dataclass(frozen=True)
class ObserveConfig:
    """The ``[observe]`` table: how a model spectrum becomes an observation (see
    :class:`specdenoise.simulate.observe.Observer` for each setting's meaning and unit)."""

    lsf_fwhm_pix: tuple[float, float] = (3.1, 3.2)
    distortion: float = 0.02
    noise_kind: str = "gaussian"
    extinction_law: str = "F99"
    filter: str = DEFAULT_FILTER
    continuum: float = 0.0
    continuum_order: int = 8
    lsf_scatter: float = 0.0
    sky_residual: float = 0.0
    telluric_residual: float = 0.0

    def __post_init__(self):
        if isinstance(self.lsf_fwhm_pix, list):  # TOML gives lists; frozen wants a tuple
            object.__setattr__(self, "lsf_fwhm_pix", tuple(self.lsf_fwhm_pix))
        _raise_problems(self.problems())

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["lsf_fwhm_pix"] = list(self.lsf_fwhm_pix)
        return out

    def problems(self) -> list[str]:
        # the observer owns the noise kinds (imported here: the command line reads this
        # module, and the observer's module compiles kernels)
        from specdenoise.simulate.observe import NOISE_KINDS

        errors = []
        fw = self.lsf_fwhm_pix
        if not (isinstance(fw, tuple) and len(fw) == 2
                and all(isinstance(x, int | float) and 0 < x < math.inf for x in fw)):
            errors.append("'observe.lsf_fwhm_pix' must be [fwhm_at_710nm, fwhm_at_885nm] in "
                          "pixels")
        d = self.distortion
        if not isinstance(d, int | float) or not 0 <= d <= 0.2:
            errors.append(f"'observe.distortion' must be an amplitude 0..0.2, got {d!r}")
        for key in ("continuum", "lsf_scatter", "sky_residual", "telluric_residual"):
            v, hi = getattr(self, key), 0.5
            if not _is_number(v) or not 0 <= v <= hi:
                errors.append(f"'observe.{key}' must be a number 0..{hi:g} (0: off), got {v!r}")
        co = self.continuum_order
        if not _is_count(co) or not 1 <= co <= 30:
            errors.append(f"'observe.continuum_order' must be an integer 1..30, got {co!r}")
        if self.noise_kind not in NOISE_KINDS:
            errors.append(f"'observe.noise_kind' must be one of {', '.join(NOISE_KINDS)}")
        if self.extinction_law not in EXTINCTION_LAWS:
            errors.append(f"'observe.extinction_law' must be one of {', '.join(EXTINCTION_LAWS)}")
        return errors


@dataclass(frozen=True)
class SimConfig(Mapping):
    """The simulation configuration, frozen and validated where it is built.

    Build it with :func:`load_config` (defaults, preset, TOML, ``--set``, explicit values) or
    :meth:`from_dict` (the nested plain layout of :data:`DEFAULTS`, e.g. a dataset's ``config``
    attribute); :meth:`to_dict` gives that layout back. It also reads like that dict
    (``cfg["params"]["mag"]``; each read returns a fresh copy), so code written against the
    dict keeps working; nothing can change it after it is built (``dataclasses.replace`` makes
    a changed copy, validated again).
    """

    n: int = 1000
    chunk_size: int = 1000
    seed: int = 1
    out: str = "dataset.zarr"
    grid: str = "builtin"
    noise: str = "builtin"
    compressor: str = "zstd-bitround"
    keepbits: int = 13
    split: str = ""
    missing: str = "error"
    grids: tuple = ()
    observe: ObserveConfig = field(default_factory=ObserveConfig)
    params: tuple[tuple[str, Distribution], ...] = ()

    def __post_init__(self):
        if isinstance(self.grids, list):
            object.__setattr__(self, "grids", tuple(dict(g) if isinstance(g, Mapping) else g
                                                    for g in self.grids))
        if isinstance(self.params, Mapping):
            object.__setattr__(self, "params", tuple(self.params.items()))
        if not self.params:
            object.__setattr__(self, "params", tuple(
                (k, Distribution.from_dict(v, k)) for k, v in DEFAULTS["params"].items()))
        _raise_problems(self.problems())
        if self.grids and self.grid != self.grids[0]["grid"]:
            # the first stands for the mix where one grid is named
            object.__setattr__(self, "grid", self.grids[0]["grid"])
        object.__setattr__(self, "_layout", self._layout_dict())

    # -- the plain layout -------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Mapping) -> SimConfig:
        """From the nested layout of :data:`DEFAULTS` (keys left out take the defaults; a
        dataset's ``config`` attribute is one); every mistake in one :class:`ConfigError`."""
        names = {f.name for f in fields(cls)}
        errors = [f"unknown option '{k}'" for k in d if k not in names]
        top = {k: v for k, v in d.items() if k in names - {"observe", "params"}}
        defaults = {f.name: (f.default if f.default is not MISSING else f.default_factory())
                    for f in fields(cls) if f.name not in ("observe", "params")}
        errors += _top_problems({**defaults, **top})
        observe, obs = None, d.get("observe", {})
        if not isinstance(obs, Mapping):
            errors.append("'observe' must be a table")
        else:
            unknown = [k for k in obs if k not in {f.name for f in fields(ObserveConfig)}]
            errors += [f"unknown option 'observe.{k}'" for k in unknown]
            try:
                observe = ObserveConfig(**{k: v for k, v in obs.items() if k not in unknown})
            except ConfigError as exc:
                errors += exc.problems
        params = []
        for name, dist in (d.get("params") or DEFAULTS["params"]).items():
            try:
                params.append((name, Distribution.from_dict(dist, name)))
            except ConfigError as exc:
                errors += exc.problems
            except TypeError:
                errors.append(f"'params.{name}' must be a table like {{dist = \"uniform\"}}")
        errors += _params_problems(params)
        if errors:
            raise ConfigError(errors)
        return cls(**top, observe=observe, params=tuple(params))

    def to_dict(self) -> dict:
        """The nested plain layout of :data:`DEFAULTS` (a fresh copy)."""
        return copy.deepcopy(self._layout)

    def _layout_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["grids"] = [dict(g) for g in self.grids]
        out["observe"] = self.observe.to_dict()
        out["params"] = {k: v.to_dict() for k, v in self.params}
        return out

    # -- read like the dict it replaces -----------------------------------------------------

    def __getitem__(self, key: str):
        return copy.deepcopy(self._layout[key])

    def __iter__(self):
        return iter(self._layout)

    def __len__(self) -> int:
        return len(self._layout)

    def problems(self) -> list[str]:
        """Every mistake, one line each (the observe table checks itself when built)."""
        top = {f.name: getattr(self, f.name) for f in fields(self)}
        return _top_problems(top) + _params_problems(self.params)


def _top_problems(cfg: Mapping) -> list[str]:
    """The top-level options' mistakes (a :class:`SimConfig`'s fields by name)."""
    errors: list[str] = []
    for name in ("n", "chunk_size"):
        v = cfg[name]
        if not _is_count(v) or v < 1:
            errors.append(f"'{name}' must be a positive integer, got {v!r}")
    if not isinstance(cfg["seed"], int) or cfg["seed"] < 0:
        errors.append(f"'seed' must be a non-negative integer, got {cfg['seed']!r}")
    if cfg["compressor"] not in COMPRESSORS:
        errors.append(f"'compressor' must be one of {', '.join(COMPRESSORS)}")
    kb = cfg["keepbits"]
    if not isinstance(kb, int) or not 4 <= kb <= 23:
        errors.append(f"'keepbits' must be an integer 4..23 (mantissa bits kept), got {kb!r}")
    if cfg["missing"] not in ("error", "renormalize"):
        errors.append("'missing' must be 'error' or 'renormalize'")
    grids = cfg["grids"]
    if not isinstance(grids, list | tuple) or not all(
            isinstance(g, Mapping) and set(g) == {"grid", "weight"}
            and isinstance(g["grid"], str) and _is_number(g["weight"])
            and math.isfinite(g["weight"]) and g["weight"] > 0 for g in grids):
        errors.append("'grids' must be a list of {grid = \"builtin\" or a store, weight = "
                      "a positive number}")
    elif len({g["grid"] for g in grids}) < len(grids):
        errors.append("'grids' names a grid twice")
    if cfg["split"]:
        try:
            parse_split(cfg["split"])
        except SpecdenoiseError as exc:
            errors.append(str(exc))
    return errors


def _params_problems(params) -> list[str]:
    """The distributions' mistakes, and parameters left without one; ``params`` (name,
    :class:`Distribution`) pairs."""
    errors = [p for name, dist in params for p in dist.problems(name)]
    have = {name for name, _ in params}
    missing = [p for p in (*PARAMS, *CONDITIONS) if p not in have]
    if missing:
        errors.append(f"no distribution for {', '.join(missing)}")
    return errors


def parse_split(text: str) -> dict[str, float]:
    """``"train=0.8,val=0.1,test=0.1"`` -> {"train": 0.8, ...}; fractions must sum to 1."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, frac = part.partition("=")
        name = name.strip()
        try:
            value = float(frac)
        except ValueError:
            raise SpecdenoiseError(f"split {text!r}: expected NAME=FRACTION items") from None
        if not name.isidentifier() or value <= 0:
            raise SpecdenoiseError(f"split {text!r}: bad item {part!r}")
        out[name] = value
    if abs(sum(out.values()) - 1) > 1e-6:
        raise SpecdenoiseError(f"split {text!r}: fractions sum to {sum(out.values()):g}, not 1")
    return out


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                preset: str | None = None, **values) -> SimConfig:
    """Defaults, the preset, then the TOML file, ``--set`` overrides, explicit ``values``;
    every mistake of all of them in one :class:`ConfigError`."""
    errors: list[str] = []
    cfg = copy.deepcopy(DEFAULTS)
    if preset is not None:
        if preset not in PRESETS:
            raise SpecdenoiseError(f"unknown simulation preset {preset!r}; choose one of "
                                   f"{', '.join(PRESETS)}")
        cfg = _merge(cfg, PRESETS[preset], "", errors)
    if path is not None:
        from specdenoise.stores import read_text

        path = Path(path)
        text = read_text(path, "config file")
        try:
            user = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecdenoiseError(f"config file {path} is not valid TOML: {exc}") from None
        cfg = _merge(cfg, user, "", errors)
    if overrides:
        cfg = _merge(cfg, apply_overrides({}, overrides), "", errors)
    explicit = {k: v for k, v in values.items() if v is not None}
    cfg = _merge(cfg, explicit, "", errors)
    where = f" in {path}" if path else ""
    try:
        built = SimConfig.from_dict(cfg)
    except ConfigError as exc:
        raise ConfigError(errors + exc.problems, where) from None
    if errors:
        raise ConfigError(errors, where)
    return built


#: observe options at which the forward model is as it was before they existed
OBSERVE_NEUTRAL: dict = {"continuum": 0.0, "continuum_order": 8, "lsf_scatter": 0.0,
                         "sky_residual": 0.0, "telluric_residual": 0.0}

#: options added after stores were written: at these values they leave the simulated numbers
#: as they were, so they are left out of the hash (stores written before them still resume)
NEUTRAL = {"grids": []}


def config_hash(cfg: Mapping, keys_ignored: Iterable[str] = ("out",)) -> str:
    """A short hash of everything that changes the simulated numbers."""
    data = {k: v for k, v in cfg.items()
            if k not in set(keys_ignored) and not (k in NEUTRAL and v == NEUTRAL[k])}
    obs = data.get("observe")
    if isinstance(obs, Mapping):
        data["observe"] = {k: v for k, v in obs.items()
                           if not (k in OBSERVE_NEUTRAL and v == OBSERVE_NEUTRAL[k])}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def to_toml(cfg: Mapping) -> str:
    """Render a configuration as TOML (the writer every stage's config shares)."""
    from specdenoise.configfile import dumps

    return dumps(cfg, comments={"params": "one distribution per parameter: fixed, uniform, "
                                          "normal (clipped), beta"})
