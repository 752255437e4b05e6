"""The forward model, assembled in one place: grid interpolator + observer + noise model.

Everything that observes a model spectrum -- the simulate stage (one engine per Dask worker),
the ``etc`` command and the template-fit baseline -- builds it here from a simulation config
(the layout of :data:`specdenoise.config.DEFAULTS`), so the three can never disagree.

Noise models are chosen by a spec string through :data:`NOISE_MODELS`: ``"builtin"`` (the
project's ETC-like model) or the path of an imported ETC table. A new kind is one entry: a
predicate on the spec and a constructor.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path

from specdenoise.errors import SpecdenoiseError

#: grids smaller than this are loaded whole into each process; larger ones are read lazily
LOAD_WHOLE_GRID_BYTES = 1_500_000_000


def _builtin(spec: str):
    from specdenoise.simulate.noise import BuiltinNoise

    return BuiltinNoise()


def _table(spec: str):
    from specdenoise.simulate.etc_table import TableNoise

    return TableNoise(spec)


#: name -> (does this spec select it?, constructor from the spec); the first match wins
NOISE_MODELS: dict[str, tuple[Callable[[str], bool], Callable[[str], object]]] = {
    "builtin": (lambda spec: spec == "builtin", _builtin),
    "etc-table": (lambda spec: spec != "builtin", _table),
}


def noise_model(spec: str):
    """The noise model a config's ``noise`` entry names (see :data:`NOISE_MODELS`)."""
    for _name, (matches, build) in NOISE_MODELS.items():
        if matches(str(spec)):
            return build(str(spec))
    raise SpecdenoiseError(f"no noise model for {spec!r}; use 'builtin' or an ETC table store")


def observer(wave, noise, obs: Mapping, *, model_resolution: float | None = None):
    """An :class:`~specdenoise.simulate.observe.Observer` from a config's ``observe`` table."""
    from specdenoise.simulate import nuisance
    from specdenoise.simulate.observe import Observer

    return Observer(
        wave,
        noise,
        lsf_fwhm_pix=tuple(obs["lsf_fwhm_pix"]),
        model_resolution=model_resolution,
        extinction_law=obs["extinction_law"],
        filter_name=obs["filter"],
        distortion=obs["distortion"],
        noise_kind=obs["noise_kind"],
        nuisance=nuisance.settings(obs),
    )


def engine_key(cfg: Mapping) -> str:
    """The part of a config that the interpolator and observer depend on (a cache key)."""
    return json.dumps({k: cfg[k] for k in ("grid", "noise", "missing", "observe")},
                      sort_keys=True)


@functools.lru_cache(maxsize=4)  # a mixed-grid simulation keeps one per grid
def _cached(key: str, grid_path: str):
    from specdenoise.simulate.grids import open_grid
    from specdenoise.simulate.interp import GridInterpolator

    cfg = json.loads(key)
    grid = open_grid(grid_path)  # metadata only: size decides whether to load it whole
    load = grid["flux"].size * 4 <= LOAD_WHOLE_GRID_BYTES
    interp = GridInterpolator(grid, missing=cfg["missing"], load=load)
    resolution = grid.attrs.get("resolution")
    obs = observer(interp.wave, noise_model(cfg["noise"]), cfg["observe"],
                   model_resolution=float(resolution) if resolution else None)
    return interp, obs


def forward_model(cfg: Mapping, grid_path: str | Path):
    """``(interpolator, observer)`` for a simulation config and the grid store it names.

    Built once per process and config (cached): a Dask worker builds it for its first task
    and reuses it for the rest.
    """
    return _cached(engine_key(cfg), str(grid_path))
