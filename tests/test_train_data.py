"""Streaming loader: sharding without duplicates or gaps, augmentation, determinism, bad input.

The datasets come from ``conftest.make_dataset``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import WAVE, make_dataset, synthetic_spectra
from torch.utils.data import DataLoader

from specdenoise import SpecdenoiseError
from specdenoise.train import calibration as tcal
from specdenoise.train import data as tdata

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # 50 spectra in chunks of 16: the last chunk is short
    return make_dataset(tmp_path_factory.mktemp("data") / "train.zarr", n=50, chunk=16)


@pytest.mark.parametrize("n,chunk,n_shards", [(50, 16, 1), (50, 16, 3), (50, 16, 8),
                                              (7, 3, 5), (100, 100, 4), (5, 2, 9)])
def test_shard_plan_covers_every_spectrum_once(n, chunk, n_shards):
    info = tdata.StoreInfo("x", n, chunk, 4096, False)
    order = tdata.chunk_order(info.n_chunks, seed=3, epoch=1)
    seen = []
    sizes = []
    for s in range(n_shards):
        idx = [info.chunk_bounds(c)[0] + i
               for c, lo, hi in tdata.shard_plan(info, order, s, n_shards) for i in range(lo, hi)]
        seen += idx
        sizes.append(len(idx))
    assert sorted(seen) == list(range(n))
    assert max(sizes) - min(sizes) <= 1


def _indices(ds, workers):
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    return [int(i) for b in loader for i in b["index"]]


@pytest.mark.parametrize("workers,world", [(0, 1), (2, 1), (2, 2), (0, 3)])
def test_stream_shards_across_workers_and_ranks(store, workers, world):
    info = tdata.inspect_store(store)
    seen = []
    for rank in range(world):
        ds = tdata.SpectrumStream(info, batch_size=5, seed=1, shuffle_buffer=12, rank=rank,
                                  world_size=world)
        ds.set_epoch(2)
        seen += _indices(ds, workers)
    assert len(seen) == len(set(seen)) == 50
    assert sorted(seen) == list(range(50))


def test_stream_is_deterministic_and_fresh_each_epoch(store):
    info = tdata.inspect_store(store)

    def epoch_batches(epoch, workers):
        ds = tdata.SpectrumStream(info, batch_size=8, seed=7, shuffle_buffer=20)
        ds.set_epoch(epoch)
        batches = list(DataLoader(ds, batch_size=None, num_workers=workers))
        order = torch.cat([b["index"] for b in batches])
        x = torch.cat([b["x"] for b in batches])[order.argsort()]
        return order, x

    o1, x1 = epoch_batches(0, 0)
    o1b, x1b = epoch_batches(0, 0)
    assert torch.equal(o1, o1b) and torch.equal(x1, x1b)
    assert not torch.equal(o1, torch.arange(50))  # shuffled
    # the noise a spectrum gets depends on (seed, epoch, chunk), not on the worker layout
    _, x1w = epoch_batches(0, 2)
    assert torch.equal(x1, x1w)
    o2, x2 = epoch_batches(1, 0)
    assert not torch.equal(o1, o2)
    assert not torch.allclose(x1, x2)  # fresh noise realisation


def _stored_distortion(n: int, seed: int, amplitude: float = 0.02):
    """A simulation-style distortion (n, 4096) and its basis, from the NumPy definition."""
    from specdenoise.simulate import calibration as ref

    basis = ref.distortion_basis(WAVE)
    raw, amp = ref.draw(np.random.default_rng(seed), n, basis.shape[0], amplitude)
    _, d = ref.scale(raw, amp, basis)
    return torch.as_tensor(d, dtype=torch.float32)


def test_augmentation_keeps_the_one_stored_distortion():
    _, clean, sigma, _ = synthetic_spectra(6, seed=3)
    d_sim = _stored_distortion(6, seed=5)
    clean = torch.from_numpy(clean) * 3.0 * d_sim  # as stored: any scale, distortion included
    zero = torch.zeros_like(clean)
    basis = tcal.basis(WAVE)
    gen = torch.Generator().manual_seed(0)
    a = tdata.augment(clean, zero, gen, basis=basis)  # distortion "stored": nothing added
    # no noise: input == target == the stored spectrum over one factor per row
    assert torch.allclose(a["x"], a["y"], rtol=1e-6, atol=0)
    assert torch.allclose(tcal.median(a["x"]), torch.tensor(0.5))
    r = a["y"] / clean
    assert torch.allclose(r, r[:, :1].expand_as(r), rtol=1e-5)

    # target without distortion: the stored one divided out, noise drawn from sigma
    sig = torch.from_numpy(sigma) * 3.0 * d_sim
    gen = torch.Generator().manual_seed(1)
    b = tdata.augment(clean, sig, gen, basis=basis, stored=d_sim, target_distortion=False)
    r = b["y"] * d_sim / clean
    assert torch.allclose(r, r[:, :1].expand_as(r), rtol=1e-5)
    assert torch.allclose(tcal.median(b["x"]), torch.tensor(0.5))
    pull = (b["x"] - b["y"] * d_sim) / b["sigma"]
    assert 0.9 < pull.std().item() < 1.1


def test_fresh_distortion_replaces_the_stored_one():
    """The network never sees two distortions: 'fresh' swaps d_sim for one new draw <= max."""
    _, clean, _, _ = synthetic_spectra(64, seed=4)
    clean = torch.from_numpy(clean)
    d_sim = _stored_distortion(64, seed=6)
    basis = tcal.basis(WAVE)
    gen = torch.Generator().manual_seed(2)
    a = tdata.augment(clean * d_sim, torch.zeros_like(clean), gen, basis=basis,
                      distortion_mode="fresh", distortion_max=0.02, stored=d_sim)
    seen = a["x"] / clean  # = d_new / factor
    d_new = seen / seen.mean(dim=1, keepdim=True)
    worst = (d_new.amax(1) / d_new.amin(1)).max().item()
    assert worst <= 1.02 / 0.98 + 1e-5  # one distortion of at most 2 %, not two of 2 % each
    assert worst > 1.01  # a fresh one was drawn (64 draws: some close to the maximum)
    assert not torch.allclose(d_new, d_sim / d_sim.mean(dim=1, keepdim=True), rtol=1e-3)
    with pytest.raises(SpecdenoiseError, match="does not record its calibration distortion"):
        tdata.augment(clean, torch.zeros_like(clean), gen, basis=basis, distortion_mode="fresh")


def test_torch_calibration_matches_the_numpy_definition():
    """One definition: the loader's torch maths reproduces simulate.calibration on one input."""
    from specdenoise.simulate import calibration as ref

    rng = np.random.default_rng(11)
    basis = ref.distortion_basis(WAVE)
    raw, amp = ref.draw(rng, 9, 3, 0.02)
    coef, d_ref = ref.scale(raw, amp, basis)
    tb = tcal.basis(WAVE)
    d_t = tcal.scale(torch.as_tensor(raw, dtype=torch.float32),
                     torch.as_tensor(amp, dtype=torch.float32), tb)
    np.testing.assert_allclose(d_t.numpy(), d_ref, rtol=0, atol=2e-7)
    d_c = tcal.distortion(torch.as_tensor(coef, dtype=torch.float32), tb)
    np.testing.assert_allclose(d_c.numpy(), ref.distortion(coef, basis), rtol=0, atol=2e-7)
    np.testing.assert_allclose(np.abs(d_ref - 1).max(axis=1), amp, rtol=1e-12)
    # normalisation: numpy's median (even pixel count: mean of the two middle values)
    flux = rng.normal(0.3, 1.0, (7, 4096)).astype(np.float32)
    flux[2] -= 5.0  # median not positive: the clean fallback is used
    clean = np.abs(rng.normal(1.0, 0.1, (7, 4096))).astype(np.float32)
    f_ref = ref.norm_factor(flux.astype(np.float64), clean.astype(np.float64))
    f_t = tcal.norm_factor(torch.from_numpy(flux), torch.from_numpy(clean))[:, 0]
    np.testing.assert_allclose(f_t.numpy(), f_ref, rtol=1e-6)


def test_validation_uses_the_stored_noise(store):
    info = tdata.inspect_store(store, tdata.VAL_VARS)
    g = tdata.open_group(store)
    flux, clean = g["flux"][:], g["flux_clean"][:]
    runs = []
    for epoch in (0, 5):
        ds = tdata.SpectrumStream(info, batch_size=16, mode="val", seed=epoch)
        ds.set_epoch(epoch)
        batches = list(ds)
        runs.append(torch.cat([b["x"] for b in batches]))
        idx = torch.cat([b["index"] for b in batches])
        assert torch.equal(idx, torch.arange(50))
    assert torch.equal(runs[0], runs[1])
    # the normalisation of simulate.calibration: NumPy's median (mean of the two middle values)
    factor = np.median(flux.astype(np.float64), axis=1, keepdims=True) / 0.5
    y = torch.cat([b["y"] for b in batches]).numpy()
    np.testing.assert_allclose(runs[0].numpy(), flux / factor, rtol=1e-6)
    np.testing.assert_allclose(y, clean / factor, rtol=1e-6)


def test_bad_datasets_give_one_line_errors(tmp_path, store):
    with pytest.raises(SpecdenoiseError, match="does not exist"):
        tdata.inspect_store(tmp_path / "nope.zarr")
    short = make_dataset(tmp_path / "short.zarr", n=4, chunk=4, n_wave=2048)
    with pytest.raises(SpecdenoiseError, match="2048 wavelength pixels"):
        tdata.inspect_store(short)
    nosig = make_dataset(tmp_path / "nosig.zarr", n=4, chunk=4, drop=("sigma",))
    with pytest.raises(SpecdenoiseError, match="lacks variable"):
        tdata.inspect_store(nosig)
    nan = make_dataset(tmp_path / "nan.zarr", n=8, chunk=4, nan_at=6)
    info = tdata.inspect_store(nan)
    with pytest.raises(SpecdenoiseError, match="NaN .* spectrum 6") as err:
        list(tdata.SpectrumStream(info, batch_size=4))
    assert "\n" not in str(err.value)
