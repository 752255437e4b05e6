"""Multilinear grid interpolation: exactness, linearity, Numba vs NumPy, off-grid and holes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate.grids import NodeReader, open_grid, write_grid
from specdenoise.simulate.interp import (
    GridInterpolator,
    corner_weights,
    interp_nodes_numba,
    interp_nodes_numpy,
    interpolate_numba,
    interpolate_numpy,
    locate,
    valid_mask,
)

NAMES = ("teff", "logg", "m_h", "a_m")
AXES = (
    np.array([3500.0, 4000.0, 4500.0, 5500.0]),  # uneven step on purpose
    np.array([0.0, 0.5, 1.0]),
    np.array([-1.0, -0.5, 0.0]),
    np.array([0.0, 0.4]),
)
WAVE = np.linspace(700.0, 900.0, 9)
INTERPOLATORS = [interpolate_numba, interpolate_numpy]


def _random_flux(rng, shape, n_wave):
    return rng.uniform(0.5, 2.0, size=(*shape, n_wave)).astype(np.float32)


def _inside(rng, axes, n):
    return np.stack([rng.uniform(a[0], a[-1], n) for a in axes], axis=1)


def _affine_grid(axes, n_wave):
    """flux = c0 + sum_d c_d(wave) * p_d, linear in every parameter, so interpolation is exact."""
    coef = np.linspace(1.0, 2.0, n_wave)
    scales = [1e-4, 0.3, 0.2, -0.5, 0.1][: len(axes)]
    mesh = np.meshgrid(*axes, indexing="ij")

    def truth(p):
        return 5.0 + sum(s * p[..., d, None] * coef for d, s in enumerate(scales))

    return truth(np.stack(mesh, axis=-1)).astype(np.float32), truth


@pytest.fixture
def grid_path(tmp_path):
    flux = _random_flux(np.random.default_rng(1), tuple(a.size for a in AXES), WAVE.size)
    path = write_grid(tmp_path / "g.zarr", flux, dict(zip(NAMES, AXES, strict=True)), WAVE)
    return path, flux


# --- locate -------------------------------------------------------------------------------


def test_locate_cells_and_ends():
    a = (np.array([0.0, 1.0, 3.0]), np.array([2.0]))
    lo, frac = locate(a, np.array([[0.0, 2.0], [2.0, 2.0], [3.0, 2.0], [1.0, 2.0]]))
    np.testing.assert_array_equal(lo, [[0, 0], [1, 0], [1, 0], [1, 0]])
    np.testing.assert_array_equal(frac, [[0, 0], [0.5, 0], [1, 0], [0, 0]])


def test_off_grid_error_names_parameter_and_range():
    with pytest.raises(SpecdenoiseError, match=r"logg=5\.5 .*0\.\.1 .*clip=True"):
        locate(AXES, np.array([[4000.0, 5.5, 0.0, 0.0]]), names=NAMES)
    with pytest.raises(SpecdenoiseError, match="teff is NaN"):
        locate(AXES, np.array([[np.nan, 0.5, 0.0, 0.0]]), names=NAMES)


def test_clip_clamps_to_edges():
    rng = np.random.default_rng(2)
    flux = _random_flux(rng, tuple(a.size for a in AXES), WAVE.size)
    p = np.array([[9000.0, -1.0, 0.5, 0.2]])
    clamped = np.array([[5500.0, 0.0, 0.0, 0.2]])
    for interp in INTERPOLATORS:
        np.testing.assert_array_equal(interp(flux, AXES, p, clip=True), interp(flux, AXES, clamped))
        with pytest.raises(SpecdenoiseError, match="off the grid"):
            interp(flux, AXES, p)


# --- maths -------------------------------------------------------------------------------


@pytest.mark.parametrize("interp", INTERPOLATORS)
def test_exact_at_nodes(interp):
    flux = _random_flux(np.random.default_rng(3), tuple(a.size for a in AXES), WAVE.size)
    mesh = np.stack(np.meshgrid(*AXES, indexing="ij"), axis=-1).reshape(-1, len(AXES))
    out = interp(flux, AXES, mesh)
    np.testing.assert_array_equal(out, flux.reshape(-1, WAVE.size))


@pytest.mark.parametrize("interp", INTERPOLATORS)
def test_affine_flux_reproduced_inside(interp):
    flux, truth = _affine_grid(AXES, WAVE.size)
    p = _inside(np.random.default_rng(4), AXES, 300)
    np.testing.assert_allclose(interp(flux, AXES, p), truth(p), rtol=2e-6)


def test_linear_between_two_nodes():
    flux = _random_flux(np.random.default_rng(5), tuple(a.size for a in AXES), WAVE.size)
    t = np.array([0.0, 0.25, 0.5, 1.0])
    # along logg from node (1, 0, 2, 1) to (1, 1, 2, 1)
    p = np.stack([np.full(4, 4000.0), 0.5 * t, np.zeros(4), np.full(4, 0.4)], axis=1)
    expect = (1 - t)[:, None] * flux[1, 0, 2, 1] + t[:, None] * flux[1, 1, 2, 1]
    np.testing.assert_allclose(interpolate_numba(flux, AXES, p), expect, rtol=1e-6)


@st.composite
def random_grids(draw):
    n_axes = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=n_axes, max_size=n_axes)))
    n_wave = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    axes = [np.sort(rng.choice(np.arange(-20, 20), size=s, replace=False) * 0.25) for s in shape]
    flux = rng.normal(size=(*shape, n_wave)).astype(np.float32)
    n = draw(st.integers(1, 8))
    p = _inside(rng, axes, n)
    # put some coordinates exactly on nodes (faces, edges, corners of cells)
    on_node = rng.random(p.shape) < 0.3
    nodes = np.stack([rng.choice(a, n) for a in axes], axis=1)
    p = np.where(on_node, nodes, p)
    exists = rng.random(shape) < 0.8
    exists.flat[seed % exists.size] = True  # 'nearest' needs one node
    return axes, flux, p, exists


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_grids())
def test_numba_equals_numpy(case):
    axes, flux, p, exists = case
    a = interpolate_numba(flux, axes, p)
    b = interpolate_numpy(flux, axes, p)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # the kernels agree on any corner table, including the renormalized one
    node_index, w = corner_weights(axes, p, exists, "nearest")
    nodes = flux.reshape(-1, flux.shape[-1])
    out = np.empty((len(p), nodes.shape[1]), np.float32)
    np.testing.assert_allclose(
        interp_nodes_numba(nodes, node_index, w, out),
        interp_nodes_numpy(nodes, node_index, w),
        rtol=1e-6,
        atol=1e-6,
    )
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)


# --- missing nodes -----------------------------------------------------------------------


def _holey():
    """A 2-D grid 3x3 whose node (1, 1) is missing (NaN in the store)."""
    axes = (np.array([0.0, 1.0, 2.0]), np.array([10.0, 20.0, 30.0]))
    flux = np.arange(9 * 2, dtype=np.float32).reshape(3, 3, 2) + 1
    exists = np.ones((3, 3), bool)
    exists[1, 1] = False
    flux[1, 1] = np.nan
    return axes, flux, exists


@pytest.mark.parametrize("interp", INTERPOLATORS)
def test_missing_error_names_the_node(interp):
    axes, flux, exists = _holey()
    with pytest.raises(SpecdenoiseError, match=r"grid node teff=1, logg=20 does not exist"):
        interp(flux, axes, np.array([[0.5, 15.0]]), exists, names=("teff", "logg"))


@pytest.mark.parametrize("interp", INTERPOLATORS)
def test_zero_weight_missing_corner_is_fine(interp):
    axes, flux, exists = _holey()
    # on the face teff=0 the missing node (teff=1) has weight 0
    out = interp(flux, axes, np.array([[0.0, 15.0], [2.0, 20.0]]), exists)
    np.testing.assert_allclose(out[0], 0.5 * (flux[0, 0] + flux[0, 1]))
    np.testing.assert_array_equal(out[1], flux[2, 1])
    assert np.isfinite(out).all()


@pytest.mark.parametrize("interp", INTERPOLATORS)
def test_missing_renormalize(interp):
    axes, flux, exists = _holey()
    p = np.array([[0.5, 15.0], [0.25, 10.0]])
    out = interp(flux, axes, p, exists, missing="renormalize")
    # cell corners (0,0) (0,1) (1,0) [(1,1) missing], bilinear weights .25 each -> 1/3 each
    np.testing.assert_allclose(out[0], (flux[0, 0] + flux[0, 1] + flux[1, 0]) / 3, rtol=1e-6)
    # a row that needs no missing node is untouched
    np.testing.assert_allclose(out[1], 0.75 * flux[0, 0] + 0.25 * flux[1, 0], rtol=1e-6)
    with pytest.raises(SpecdenoiseError, match="nothing to average"):
        interp(flux, axes, np.array([[1.0, 20.0]]), exists, missing="renormalize")


@pytest.mark.parametrize("interp", INTERPOLATORS)
def test_missing_nearest(interp):
    axes, flux, exists = _holey()
    out = interp(flux, axes, np.array([[0.9, 12.0], [1.0, 20.0]]), exists, missing="nearest")
    np.testing.assert_array_equal(out[0], flux[1, 0])  # index distance ~0.22 to (1, 0)
    assert np.isfinite(out).all()


def test_valid_mask():
    axes, _, exists = _holey()
    p = np.array([[0.5, 15.0], [0.0, 15.0], [1.5, 25.0], [2.0, 30.0], [3.0, 10.0], [1.0, 25.0]])
    np.testing.assert_array_equal(
        valid_mask(axes, exists, p), [False, True, False, True, False, False]
    )
    assert valid_mask(axes, None, p).tolist() == [True] * 4 + [False, True]
    assert valid_mask(axes, exists, p, clip=True)[4]


def test_unknown_policy():
    axes, flux, exists = _holey()
    with pytest.raises(SpecdenoiseError, match="missing-node policy"):
        interpolate_numba(flux, axes, np.array([[0.5, 15.0]]), exists, missing="zero")


# --- GridInterpolator on a Zarr store -----------------------------------------------------


def test_grid_interpolator_lazy_equals_in_memory(grid_path):
    path, flux = grid_path
    gi = GridInterpolator(path, cache_nodes=10)
    assert gi.names == NAMES
    np.testing.assert_array_equal(gi.wave, WAVE)
    p = _inside(np.random.default_rng(6), AXES, 50)
    expect = interpolate_numpy(flux, AXES, p)
    np.testing.assert_allclose(gi(p), expect, rtol=1e-6)
    # a second call partly served by the (small) cache gives the same answer
    np.testing.assert_allclose(gi(p), expect, rtol=1e-6)
    assert len(gi._cache) == 10
    loaded = GridInterpolator(open_grid(path), load=True)
    np.testing.assert_allclose(loaded(p), expect, rtol=1e-6)
    as_dict = gi({n: p[:, d] for d, n in enumerate(NAMES)} | {"rv": 0.0})
    np.testing.assert_allclose(as_dict, expect, rtol=1e-6)


def test_grid_interpolator_reads_only_corner_nodes(grid_path):
    path, flux = grid_path
    gi = GridInterpolator(path)
    p = np.array([[3750.0, 0.25, -0.75, 0.2], [3800.0, 0.3, -0.7, 0.1]])  # one cell, 16 corners
    gi(p)
    assert gi.nodes_read == 16
    gi(p[:1])
    assert gi.nodes_read == 16  # served from the cache
    gi(np.array([[4000.0, 0.5, 0.0, 0.0]]))  # on a node: a single read
    assert gi.nodes_read == 17


def test_grid_interpolator_pickles_without_cache(grid_path):
    path, flux = grid_path
    gi = GridInterpolator(path, missing="renormalize")
    p = _inside(np.random.default_rng(7), AXES, 20)
    first = gi(p)
    blob = pickle.dumps(gi)
    assert len(blob) < 20_000  # no node spectra travel with it
    clone = pickle.loads(blob)
    assert clone.nodes_read == 0 and clone.missing == "renormalize"
    np.testing.assert_array_equal(clone(p), first)


def test_grid_interpolator_missing_nodes_in_store(tmp_path):
    axes, flux, exists = _holey()
    path = write_grid(
        tmp_path / "h.zarr",
        flux,
        {"teff": axes[0], "logg": axes[1]},
        np.array([1.0, 2.0]),
        exists=exists,
    )
    p = np.array([[0.5, 15.0]])
    with pytest.raises(SpecdenoiseError, match="teff=1, logg=20 does not exist"):
        GridInterpolator(path)(p)
    out = GridInterpolator(path, missing="renormalize")(p)
    np.testing.assert_allclose(out, interpolate_numpy(flux, axes, p, exists, "renormalize"))
    assert GridInterpolator(path).valid(p).tolist() == [False]
    with pytest.raises(SpecdenoiseError, match="parameter 'logg' is missing"):
        GridInterpolator(path)({"teff": [0.5]})


# --- direct chunk reads (NodeReader) ------------------------------------------------------


def _zarr_nodes(path):
    import zarr

    flux = zarr.open_array(str(path / "flux"), mode="r")[...]
    return flux.reshape(-1, flux.shape[-1])


def test_node_reader_equals_zarr_including_absent_chunks(grid_path):
    path, flux = grid_path
    # drop one node's chunk file: both readers must give the fill value (NaN) for it
    reader = NodeReader.open(path / "flux")
    assert reader is not None
    missing = (2, 1, 0, 1)
    reader._chunk_path(missing).unlink()
    expect = _zarr_nodes(path)
    flat = np.ravel_multi_index(missing, flux.shape[:-1])
    assert np.isnan(expect[flat]).all()
    got = reader.read(np.arange(expect.shape[0]))
    np.testing.assert_array_equal(got, expect)  # NaNs compare equal here
    picks = np.array([5, flat, 0, 5])
    np.testing.assert_array_equal(reader.read(picks), expect[picks])


def test_interpolator_falls_back_to_zarr_for_other_layouts(grid_path, tmp_path):
    import shutil

    import zarr

    path, flux = grid_path
    p = _inside(np.random.default_rng(8), AXES, 30)
    expect = interpolate_numpy(flux, AXES, p)
    # rewrite flux sharded (several one-node chunks per file): the direct reader declines
    sharded = tmp_path / "sharded.zarr"
    shutil.copytree(path, sharded)
    shutil.rmtree(sharded / "flux")
    arr = zarr.create_array(str(sharded / "flux"), shape=flux.shape, dtype="float32",
                            chunks=(1, 1, 1, 1, WAVE.size), shards=(1, 3, 3, 2, WAVE.size),
                            fill_value=np.nan, dimension_names=(*NAMES, "wave"))
    arr[...] = flux
    zarr.consolidate_metadata(str(sharded))
    assert NodeReader.open(sharded / "flux") is None
    for load in (False, True):
        gi = GridInterpolator(sharded, load=load)
        np.testing.assert_allclose(gi(p), expect, rtol=1e-6)
        assert gi._node_reader() is None
        direct = GridInterpolator(path, load=load)
        np.testing.assert_allclose(direct(p), expect, rtol=1e-6)
        assert direct._node_reader() is not None


def test_node_reader_corrupt_chunk_is_one_clear_error(grid_path):
    path, _ = grid_path
    reader = NodeReader.open(path / "flux")
    reader._chunk_path((0, 0, 0, 0)).write_bytes(b"not a blosc frame")
    gi = GridInterpolator(path, load=True)
    with pytest.raises(SpecdenoiseError, match=r"^corrupt chunk 0 of flux in .*g\.zarr .*rebuild"):
        gi(np.array([[3500.0, 0.0, -1.0, 0.0]]))
