"""Several grids in one simulation (issue 19, point 3): each spectrum's grid drawn with the
configured weights, recorded per spectrum, the same store at any worker count."""

import json
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from conftest import assert_identical, simulate_in_process, toy_grid_flux

from specdenoise import schema
from specdenoise.config import load_config
from specdenoise.errors import SpecdenoiseError
from specdenoise.stage_simulate import simulate

N, CHUNK = 60, 20
DIP_NM = 800.0  # grid B has a deep dip here, grid A none


@pytest.fixture(scope="module")
def two_grids(tmp_path_factory):
    from specdenoise.simulate.grids import write_grid

    axes = {"teff": np.array([3500.0, 5500.0, 7500.0]), "logg": np.array([0.0, 5.0]),
            "m_h": np.array([-2.5, 0.75]), "a_m": np.array([-0.25, 0.5])}
    wave = 700.0 * np.exp(np.arange(int(np.log(900 / 700) * 20000) + 1) / 20000.0)
    flux = toy_grid_flux(axes, wave)
    d = tmp_path_factory.mktemp("grids")
    a = write_grid(d / "a.zarr", flux, axes, wave, attrs={"source": "a", "resolution": 20000})
    dip = 1 - 0.8 * np.exp(-0.5 * ((wave - DIP_NM) / 0.15) ** 2)
    b = write_grid(d / "b.zarr", (flux * dip).astype(np.float32), axes, wave,
                   attrs={"source": "b", "resolution": 20000})
    return a, b


def _cfg(grids, out, weights=(0.3, 0.7)):
    mix = [{"grid": str(g), "weight": w} for g, w in zip(grids, weights, strict=True)]
    return load_config(n=N, chunk_size=CHUNK, seed=5, grids=mix, out=str(out))


@pytest.fixture(scope="module")
def mixed(two_grids, tmp_path_factory):

    out = tmp_path_factory.mktemp("mixed") / "mixed.zarr"
    simulate_in_process(_cfg(two_grids, out))
    return out


def test_each_spectrum_records_its_grid(two_grids, mixed):
    ds = schema.open_dataset(mixed)
    which = ds["grid"].values
    assert ds["grid"].dims == ("spectrum",) and set(np.unique(which)) == {0.0, 1.0}
    assert 0.45 < which.mean() < 0.9  # weight 0.7 for grid 1 over 60 spectra
    grids = json.loads(ds.attrs["grids"])  # JSON text, as every nested attribute
    assert [g["grid"] for g in grids] == [str(p) for p in two_grids]
    assert [g["source"] for g in grids] == ["a", "b"] and [g["weight"] for g in grids] == [0.3, 0.7]
    # the dip of grid B shows in exactly the spectra recorded as grid 1 (rv moves it < 2 nm)
    wave = ds["wave"].values
    clean = ds["flux_clean"].values
    rv = ds["rv"].values
    for i in range(N):
        centre = DIP_NM * (1 + rv[i] / 299792.458)
        near = np.abs(wave - centre) < 0.15
        side = (np.abs(wave - centre) > 1.0) & (np.abs(wave - centre) < 2.0)
        depth = 1 - clean[i, near].min() / np.median(clean[i, side])
        assert (depth > 0.3) == (which[i] == 1.0), (i, which[i], depth)
    # evaluation can group by it with plain xarray
    counts = ds["snr"].groupby(ds["grid"].compute()).count()
    assert counts.sum() == N


def test_two_worker_processes_identical(two_grids, mixed, tmp_path):
    out = tmp_path / "two.zarr"
    simulate(_cfg(two_grids, out), cluster="local", workers=2, progress=False)
    assert_identical(mixed, out)


def test_single_grid_records_nothing_new(two_grids, tmp_path):

    out = tmp_path / "one.zarr"
    cfg = load_config(n=CHUNK, chunk_size=CHUNK, seed=5, grid=str(two_grids[0]), out=str(out))
    simulate_in_process(cfg)
    ds = schema.open_dataset(out)
    assert "grid" not in ds and "grids" not in ds.attrs


def test_bad_mixes_refused_in_one_line(two_grids, tmp_path):
    a, b = (str(p) for p in two_grids)
    for bad in ([{"grid": a, "weight": 0.0}, {"grid": b, "weight": 1.0}],
                [{"grid": a, "weight": 1.0}, {"grid": a, "weight": 1.0}],
                [{"grid": a}]):
        with pytest.raises(SpecdenoiseError, match="'grids'") as e:
            load_config(grids=bad)
        assert "\n" not in str(e.value)
    cli = [sys.executable, "-m", "specdenoise.cli", "simulate", "--grid", a, "--grid", b]
    r = subprocess.run([*cli, "--grid-weights", "1", "--out", str(tmp_path / "x.zarr")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--grid-weights has 1 value(s) for 2 --grid" in r.stderr
    assert not (tmp_path / "x.zarr").exists()
    r = subprocess.run([*cli, "--grid-weights", "1", "3", "--print-config"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert tomllib.loads(r.stdout)["grids"] == [{"grid": a, "weight": 1.0},
                                                {"grid": b, "weight": 3.0}]
