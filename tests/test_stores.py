"""The guarded store paths of ``specdenoise.stores``: assemble-then-publish, and the chunk
markers of a dataset being written (beside the store, not in it; old stores kept them inside)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import xarray as xr

from specdenoise import SpecdenoiseError, schema, stores
from specdenoise.simulate.pfs import pixel_wave

N, CHUNK = 6, 2
WAVE = pixel_wave()


def _create(path):
    return schema.create_dataset_store(path, N, CHUNK, WAVE, attrs={"config_hash": "t"})


def _write(path, c):
    rng = np.random.default_rng(c)
    flux = rng.uniform(0.4, 0.6, (CHUNK, WAVE.size)).astype(np.float32)
    schema.write_chunk(path, c, CHUNK, {"flux": flux, "flux_clean": flux, "sigma": 0.1 * flux,
                                        "snr": np.full(CHUNK, 5.0, np.float32)})
    return flux


def test_chunk_markers_live_beside_the_store_and_go_when_it_is_complete(tmp_path):
    out = _create(tmp_path / "d.zarr")
    flux = [_write(out, c) for c in (0, 2)]
    assert schema.done_chunks(out) == {0, 2}
    assert schema.done_dir(out) == tmp_path / ".d.zarr.done"
    assert sorted(p.name for p in schema.done_dir(out).iterdir()) == ["00000000", "00000002"]
    assert not (out / ".done").exists()  # the store holds Zarr nodes only
    flux.insert(1, _write(out, 1))
    schema.finalize_dataset(out)
    assert not schema.done_dir(out).exists()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Object at")  # .done is not a Zarr node
        ds = schema.open_dataset(out)
        np.testing.assert_array_equal(ds["flux"].values, np.concatenate(flux))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]


def test_an_old_store_with_markers_inside_resumes_and_reads(tmp_path):
    out = _create(tmp_path / "d.zarr")
    first = _write(out, 0)
    schema.done_dir(out).rename(out / ".done")  # the layout stores were written with before
    assert schema.done_chunks(out) == {0}
    # resuming it: the same settings keep the store, and only the missing chunks are written
    assert _create(out) == out and schema.done_chunks(out) == {0}
    rest = [_write(out, c) for c in (1, 2)]
    assert schema.done_chunks(out) == {0, 1, 2}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Object at")  # the old folder left first
        schema.finalize_dataset(out)
    assert not (out / ".done").exists() and not schema.done_dir(out).exists()
    np.testing.assert_array_equal(schema.open_dataset(out)["flux"].values,
                                  np.concatenate([first, *rest]))
    # a complete old store (markers left inside) still opens and may still be replaced
    (out / ".done").mkdir()
    (out / ".done" / "00000000").touch()
    assert schema.open_dataset(out).sizes["spectrum"] == N
    stores.check_replaceable(out, stores.DATASET)


def test_a_new_store_never_inherits_stale_markers(tmp_path):
    out = tmp_path / "d.zarr"
    stale = schema.done_dir(out)
    stale.mkdir()
    (stale / "00000001").touch()  # beside a store deleted by hand
    _create(out)
    assert schema.done_chunks(out) == set()


def _table(value: float) -> xr.Dataset:
    return xr.Dataset({"rel_err": ("i", np.full(3, value))},
                      attrs={stores.KIND_ATTR: stores.CUBE.name})


def test_assembled_publishes_when_the_block_ends(tmp_path):
    out = tmp_path / "c.zarr"
    with stores.assembled(out, stores.CUBE, overwrite=False,
                          finish=schema.finalize_dataset) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".c.zarr.tmp-")
        assert not any(tmp.iterdir()) and not out.exists()
        _table(1.0).to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]
    ds = stores.open_store(out, stores.CUBE)
    assert ds.attrs["complete"] and float(ds["rel_err"][0]) == 1.0
    with pytest.raises(SpecdenoiseError, match="already exists"):
        with stores.assembled(out, stores.CUBE, overwrite=False) as tmp:
            _table(2.0).to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
    with stores.assembled(out, stores.CUBE, overwrite=True,
                          finish=schema.finalize_dataset) as tmp:
        _table(3.0).to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
    assert float(stores.open_store(out, stores.CUBE)["rel_err"][0]) == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_assembled_leaves_the_old_store_and_nothing_else_on_an_error(tmp_path, error):
    out = tmp_path / "c.zarr"
    with stores.assembled(out, stores.CUBE, overwrite=False,
                          finish=schema.finalize_dataset) as tmp:
        _table(1.0).to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
    finished = []
    with pytest.raises(error):
        with stores.assembled(out, stores.CUBE, overwrite=True, finish=finished.append) as tmp:
            _table(2.0).to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
            raise error()
    assert not finished  # an interrupted store is never finished
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]
    assert float(stores.open_store(out, stores.CUBE)["rel_err"][0]) == 1.0


def test_assembled_waits_for_zarr_writes_in_flight_before_removing(tmp_path):
    """SIGTERM can stop the main thread while zarr's IO thread is still writing (CI saw a
    ``.cube.zarr.tmp-*`` left behind by ``evaluate --overwrite``): such a write must not
    recreate the temporary after it is removed."""
    import asyncio

    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    out = tmp_path / "c.zarr"
    with pytest.raises(KeyboardInterrupt):
        with stores.assembled(out, stores.CUBE, overwrite=False) as tmp:
            sync(asyncio.sleep(0))  # zarr's IO loop is running, as during any zarr write
            from zarr.core.sync import loop as zloop
            local = LocalStore(str(tmp))

            async def late_write():
                await asyncio.sleep(0.3)
                from zarr.core.buffer import default_buffer_prototype
                await local.set("late/c/0", default_buffer_prototype().buffer.from_bytes(b"x"))

            asyncio.run_coroutine_threadsafe(late_write(), zloop[0])  # in flight, not awaited
            raise KeyboardInterrupt
    time.sleep(0.6)  # long after the write would have landed
    assert sorted(p.name for p in tmp_path.iterdir()) == []
