"""The grid store: layout, lazy opening, content hash, and never a half-written store."""

import numpy as np
import pytest
import zarr

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate.grids import (
    finalize_grid_store,
    grid_axes,
    open_grid,
    partial_path,
    write_grid,
    write_nodes,
)
from specdenoise.stage_grid import create_grid_store

AXES = {"teff": np.array([4000.0, 5000.0]), "logg": np.array([1.0, 2.0, 3.0]),
        "m_h": np.array([0.0]), "a_m": np.array([0.0, 0.25])}
WAVE = np.linspace(700, 900, 300)


def _flux(seed=0):
    return np.random.default_rng(seed).random((2, 3, 1, 2, WAVE.size)).astype(np.float32)


def test_roundtrip_layout_and_units(tmp_path):
    f = _flux()
    path = write_grid(tmp_path / "g.zarr", f, AXES, WAVE, attrs={"source": "test"})
    ds = open_grid(path)
    assert ds["flux"].dims == ("teff", "logg", "m_h", "a_m", "wave")
    assert ds["flux"].dtype == np.float32 and "units" in ds["flux"].attrs
    assert ds["teff"].attrs["units"] == "K" and ds["wave"].attrs["units"] == "nm"
    assert ds.attrs["wave_medium"] == "vacuum" and ds.attrs["complete"]
    assert ds.attrs["content_hash"].startswith("sha256:")
    # one node = one chunk = one read, and opening is lazy
    assert ds["flux"].encoding["chunks"] == (1, 1, 1, 1, WAVE.size)
    assert ds["flux"].chunks is not None
    np.testing.assert_array_equal(ds["flux"][1, 2, 0, 1].values, f[1, 2, 0, 1])
    assert list(grid_axes(ds)) == ["teff", "logg", "m_h", "a_m"]


def test_content_hash_tracks_content(tmp_path):
    a = open_grid(write_grid(tmp_path / "a.zarr", _flux(0), AXES, WAVE)).attrs["content_hash"]
    b = open_grid(write_grid(tmp_path / "b.zarr", _flux(0), AXES, WAVE)).attrs["content_hash"]
    c = open_grid(write_grid(tmp_path / "c.zarr", _flux(1), AXES, WAVE)).attrs["content_hash"]
    assert a == b != c


def test_unwritten_existing_node_blocks_finalize(tmp_path):
    out = tmp_path / "g.zarr"
    tmp = create_grid_store(out, AXES, WAVE)
    idx = [i for i in np.ndindex(2, 3, 1, 2)][:-1]  # the last node is never written
    write_nodes(tmp, idx, np.ones((len(idx), WAVE.size)))
    with pytest.raises(SpecdenoiseError, match="never written"):
        finalize_grid_store(tmp, out)
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(SpecdenoiseError, match="never completed"):
        open_grid(out)


def test_missing_nodes_are_recorded(tmp_path):
    exists = np.ones((2, 3, 1, 2), bool)
    exists[0, 0, 0, 0] = False
    out = tmp_path / "g.zarr"
    tmp = create_grid_store(out, AXES, WAVE, exists=exists)
    idx = [i for i in np.ndindex(2, 3, 1, 2) if exists[i]]
    write_nodes(tmp, idx, np.ones((len(idx), WAVE.size)))
    ds = open_grid(finalize_grid_store(tmp, out))
    assert not bool(ds["exists"][0, 0, 0, 0]) and int(ds["exists"].sum()) == 11


def test_refuses_overwrite_and_foreign_stores(tmp_path):
    path = write_grid(tmp_path / "g.zarr", _flux(), AXES, WAVE)
    with pytest.raises(SpecdenoiseError, match="already exists"):
        write_grid(path, _flux(), AXES, WAVE)
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(SpecdenoiseError, match="not a specdenoise grid store"):
        open_grid(tmp_path / "other.zarr")


def test_axis_checks(tmp_path):
    with pytest.raises(SpecdenoiseError, match="strictly increasing"):
        write_grid(tmp_path / "g.zarr", _flux(), {**AXES, "logg": np.array([3.0, 2, 1])}, WAVE)
    with pytest.raises(SpecdenoiseError, match="unknown grid axis"):
        write_grid(tmp_path / "g.zarr", _flux(), {"tef": AXES["teff"]}, WAVE)
