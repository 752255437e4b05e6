"""The noise-model contract: a new noise model is its class plus one registry entry.

The model below lives in this test file only and is registered from here; the simulation
reaches it through the public API (``load_config(noise=...)`` and ``stage_simulate.simulate``
on a real in-process Dask cluster and a real Zarr store). In the package the same model would
touch two files: its module and its entry in ``simulate/engine.py:NOISE_MODELS``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import simulate_in_process

from specdenoise import schema
from specdenoise.config import DEFAULTS, RANGES, load_config, range_problem
from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate import engine, pfs
from specdenoise.simulate.noise import BuiltinNoise, NoiseModel, read_conditions

READ_NOISE_E = 10.0  # e- per pixel per exposure
CONVERSION = 3.0e21  # e- per exposure and second per erg s^-1 cm^-2 Hz^-1


class FlatNoise:
    """A detector with no sky: conversion and read noise flat over the arm."""

    def __init__(self):
        self.wave = pfs.pixel_wave()
        self.backends = []

    def evaluate(self, conditions, /, *, backend="numba"):
        self.backends.append(backend)
        c = read_conditions(conditions)
        shape = (c["exp_time"].size, self.wave.size)
        conversion = np.broadcast_to(CONVERSION * c["exp_time"][:, None], shape).copy()
        return {"conversion": conversion, "sky": np.zeros(shape),
                "variance": np.full(shape, READ_NOISE_E**2)}


@pytest.fixture
def flat_registered(monkeypatch):
    """FlatNoise as ``noise = "flat"``, placed first in the registry (order must not matter)."""
    kind = engine.NoiseModelKind(lambda spec: spec == "flat", lambda spec: FlatNoise(), "'flat'")
    monkeypatch.setattr(engine, "NOISE_MODELS", {"flat": kind, **engine.NOISE_MODELS})
    return kind


def test_a_noise_model_added_from_here_simulates_through_the_public_api(
        flat_registered, small_grid, tmp_path):


    out = tmp_path / "flat.zarr"
    cfg = load_config(n=8, chunk_size=4, seed=2, grid=str(small_grid), out=str(out),
                      noise="flat", compressor="none",
                      overrides=["observe.distortion=0", "params.exp_time.value=600",
                                 "params.n_exp.value=3"])
    simulate_in_process(cfg)
    ds = schema.open_dataset(out)
    assert json.loads(ds.attrs["noise_provenance"]) == {"noise": "flat"}
    # sigma is FlatNoise's: sigma_nu = sqrt((RN^2 + C f_nu) / N) / C, C = conversion x t
    norm = ds["norm"].values[:, None].astype(np.float64)
    fnu = ds["flux_clean"].values * norm
    conv = CONVERSION * 600.0
    want = np.sqrt((READ_NOISE_E**2 + conv * fnu) / 3.0) / conv
    np.testing.assert_allclose(ds["sigma"].values * norm, want, rtol=1e-5)
    # and not the built-in model's (sky, another throughput): off by more than a factor 2
    builtin = BuiltinNoise().evaluate({k: ds[k].values for k in schema.CONDITIONS})
    sky_sigma = np.sqrt((builtin["variance"] + builtin["conversion"] * fnu) / 3.0) \
        / builtin["conversion"]
    assert abs(np.log(np.median(sky_sigma / want))) > np.log(2)


def test_the_observer_hands_the_backend_to_any_model(flat_registered, small_grid):
    model = engine.noise_model("flat")
    assert isinstance(model, NoiseModel) and isinstance(BuiltinNoise(), NoiseModel)
    from specdenoise.simulate.grids import open_grid
    from specdenoise.simulate.observe import Observer

    grid = open_grid(small_grid)
    obs = Observer(np.asarray(grid["wave"].values), model)
    flux = np.asarray(grid["flux"].values).reshape(-1, grid.sizes["wave"])[:2]
    cond = {c.name: c.value for c in schema.OBSERVING}
    for backend in ("numba", "numpy"):
        obs.observe(flux, 0.0, 0.0, 20.0, cond, rng=np.random.default_rng(0), backend=backend)
    assert model.backends == ["numba", "numpy"]


def test_registry_has_no_order_and_no_catch_all(flat_registered, tmp_path, monkeypatch):
    # placed first, the new kind does not take the others' specs, nor they its
    assert engine.noise_kind_of("builtin") == "builtin"
    assert engine.noise_kind_of(str(tmp_path / "t.zarr")) == "etc-table"
    assert engine.noise_kind_of("flat") == "flat"
    with pytest.raises(SpecdenoiseError, match="no noise model for 'nothing'"):
        engine.noise_kind_of("nothing")
    greedy = engine.NoiseModelKind(lambda spec: spec.endswith(".zarr"), FlatNoise, "any .zarr")
    monkeypatch.setitem(engine.NOISE_MODELS, "greedy", greedy)
    with pytest.raises(SpecdenoiseError, match="matches several noise models"):
        engine.noise_model("t.zarr")


def test_conditions_come_from_one_table():
    from specdenoise.cli_etc import DEFAULTS as ETC_DEFAULTS
    from specdenoise.cli_etc import import_parser
    from specdenoise.simulate import etc_table, noise

    names = tuple(c.name for c in schema.OBSERVING)
    assert noise.CONDITIONS == names == etc_table.CONDITION_KEYS
    assert schema.CONDITIONS[-len(names):] == names
    options = {a.dest for a in import_parser()._actions}
    for c in schema.OBSERVING:
        assert DEFAULTS["params"][c.name] == c.default and ETC_DEFAULTS[c.name] == c.value
        assert RANGES[c.name][:2] == (c.low, c.high) and c.name in options
        assert schema.attrs_of(c.name)["units"] == c.unit
        assert range_problem(c.name, c.value) is None
        assert range_problem(c.name, c.high + 1.0) is not None
    # every ETC parameter name maps onto the table
    assert set(etc_table.ETC_PARAM_NAMES.values()) == set(names)


def test_missing_condition_is_one_clear_error():
    with pytest.raises(SpecdenoiseError, match="needs the observing condition.*moon_phase"):
        read_conditions({"seeing": 0.8, "zenith": 0.0, "field_angle": 0.0, "moon_zenith": 90.0,
                         "moon_separation": 60.0, "exp_time": 900.0})
    got = read_conditions({c.name: c.value for c in schema.OBSERVING}, {"seeing": [1.0, 2.0]})
    assert got["seeing"].tolist() == [1.0, 2.0] and got["zenith"].shape == (2,)
