"""The simulation configuration as a frozen dataclass: validated where built, plain layout in
and out, the same hashes as the dict it replaced, and the stage planning and opening once."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from conftest import simulate_in_process

from specdenoise.config import (
    ConfigError,
    Distribution,
    ObserveConfig,
    SimConfig,
    config_hash,
    load_config,
)

#: config_hash values computed by the code before the dataclass (commit c4a96c1, where
#: load_config returned a plain dict): `run` reuses a store only when its hash matches, so
#: stores written then must keep matching
HASH_BEFORE = {
    "defaults": "046024fb409e9d95",
    "changed": "c730baf6503e96b7",
}
CHANGED = dict(preset="paper", n=200, chunk_size=50, seed=9, out="x.zarr",
               overrides=["observe.noise_kind=poisson", "params.ebv.dist=beta",
                          "params.ebv.a=2", "params.ebv.b=5"])


def test_hash_is_the_one_stores_were_written_with():
    assert config_hash(load_config()) == HASH_BEFORE["defaults"]
    assert config_hash(load_config(**CHANGED)) == HASH_BEFORE["changed"]


def test_frozen_and_round_trips_through_plain_types():
    cfg = load_config(**CHANGED)
    assert isinstance(cfg, SimConfig) and isinstance(cfg.observe, ObserveConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n = 5
    # reading it like the old dict gives copies: the config itself cannot be changed
    cfg["params"]["mag"]["low"] = 0.0
    assert cfg["params"]["mag"]["low"] == 16.0
    plain = cfg.to_dict()

    def plain_types(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain_types(v) for k, v in x.items())
        if isinstance(x, list):
            return all(plain_types(v) for v in x)
        return isinstance(x, str | int | float | bool)

    assert plain_types(plain)
    again = SimConfig.from_dict(plain)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # as Dask ships it to workers
    assert dict(cfg.params)["ebv"] == Distribution("beta", low=0.0, high=0.1, a=2, b=5)


def test_validated_where_built():
    with pytest.raises(ConfigError, match="'n' must be a positive integer"):
        SimConfig(n=0)
    with pytest.raises(ConfigError, match="'observe.distortion' must be an amplitude"):
        ObserveConfig(distortion=0.5)
    with pytest.raises(ConfigError, match="'keepbits'"):
        dataclasses.replace(load_config(), keepbits=2)
    bad = load_config().to_dict()
    bad["params"]["seeing"] = {"dist": "uniform", "low": 1.0, "high": 20.0}
    bad["chunk_size"] = "x"
    with pytest.raises(ConfigError) as err:
        SimConfig.from_dict(bad)
    assert len(err.value.problems) == 2 and "\n" not in str(err.value)
    assert "params.seeing.high': seeing = 20 is outside (0, 10]" in str(err.value)


def test_stage_plans_once_and_opens_the_grid_once(small_grid, tmp_path, monkeypatch):

    from specdenoise import stage_simulate
    from specdenoise.simulate import grids

    calls = {"plan": 0, "open_grid": 0}
    started = tmp_path / "first-task-started"  # a file: Dask may ship the task function by value
    plan, open_grid, run_chunk = stage_simulate.plan, grids.open_grid, stage_simulate.run_chunk

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            if not started.exists():
                calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    def first_task(*args, **kwargs):
        started.touch()
        return run_chunk(*args, **kwargs)

    monkeypatch.setattr(stage_simulate, "plan", counted("plan", plan))
    monkeypatch.setattr(grids, "open_grid", counted("open_grid", open_grid))
    monkeypatch.setattr(stage_simulate, "run_chunk", first_task)
    cfg = load_config(n=8, chunk_size=4, seed=1, grid=str(small_grid), out=str(tmp_path / "s"),
                      split="train=0.5,val=0.5")
    paths = simulate_in_process(cfg)
    assert started.exists() and [p.name for p in paths] == ["train.zarr", "val.zarr"]
    assert calls == {"plan": 1, "open_grid": 1}
