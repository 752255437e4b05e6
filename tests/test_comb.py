"""No sampling comb (issue 19, point 1): a coarse model grid renders as the same grid resampled
finely, within 0.1 % mean and 0.5 % max; fine grids keep the point-sample table bit for bit."""

from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file

from specdenoise.simulate import lsf
from specdenoise.simulate.noise import BuiltinNoise
from specdenoise.simulate.observe import Observer

#: BOSZ 2024 R = 5000 files: d ln(lambda) = 8.615e-5 (2.32 samples per FWHM)
COARSE_H = 8.615247519055178e-05
WIDE_LSF = (3.6, 4.4)  # the narrowest LSF an R = 5000 grid accepts (results/physics)


@pytest.fixture(scope="module")
def noise():
    return BuiltinNoise()


def coarse_stars(h=COARSE_H, resolution=5000.0, seed=3):
    """Two spectra on a log grid of step ``h`` from 700 to 900 nm: a continuum with 400 Gaussian
    absorption lines of FWHM lambda/R at random positions, depths up to 0.8, sampled as is."""
    wave = 700.0 * np.exp(np.arange(int(np.log(900 / 700) / h) + 1) * h)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        centres = rng.uniform(702, 898, 400)
        depth = rng.uniform(0.02, 0.8, 400)
        sig = centres / resolution / lsf.FWHM_PER_SIGMA
        f = 1.0 - 0.3 * (wave - 800) / 200
        prof = np.exp(-0.5 * ((wave[:, None] - centres) / sig) ** 2)
        out.append(f * np.prod(1.0 - depth * prof, axis=1))
    return wave, np.array(out, dtype=np.float32)


def fine_copy(wave, flux, factor):
    """Linear interpolation in ln lambda onto a grid ``factor`` times finer."""
    lw = np.log(wave)
    lw_fine = np.linspace(lw[0], lw[-1], (wave.size - 1) * factor + 1)
    return np.exp(lw_fine), np.stack([np.interp(lw_fine, lw, f) for f in flux]).astype(np.float32)


def render(wave, flux, noise, resolution, rv=0.0):
    obs = Observer(wave, noise, lsf_fwhm_pix=WIDE_LSF, model_resolution=resolution)
    return obs.clean_fnu(flux, rv, 0.0, np.nan)[0]


def rel_diff(a, b):
    d = np.abs(a / b - 1.0)
    return d.mean(), d.max()


@pytest.mark.parametrize("rv", [0.0, 37.3])
def test_coarse_grid_renders_as_resampled_finely(noise, rv):
    wave, flux = coarse_stars()
    u, _ = lsf.sample_offsets(wave, noise.wave, lsf.LSF(fwhm_pix=WIDE_LSF, model_resolution=5e3))
    assert u.size > 1  # this grid is coarse: the piecewise-linear table is in use
    mean, peak = rel_diff(render(wave, flux, noise, 5000.0, rv),
                          render(*fine_copy(wave, flux, 16), noise, 5000.0, rv))
    assert mean < 1e-3 and peak < 5e-3, (mean, peak)


def test_point_samples_on_coarse_grid_show_the_comb(noise, monkeypatch):
    """The check can fail: reading the coarse samples as points (the table before the fix)
    gives the comb of several per cent."""
    wave, flux = coarse_stars()
    fine = render(*fine_copy(wave, flux, 8), noise, 5000.0)
    monkeypatch.setattr(lsf, "MAX_STEP_PER_SIGMA", np.inf)
    mean, peak = rel_diff(render(wave, flux, noise, 5000.0), fine)
    assert mean > 0.02 and peak > 0.05, (mean, peak)


def test_coarse_table_conserves_flux_and_matches_dense(noise):
    wave, _ = coarse_stars()
    conf = lsf.LSF(fwhm_pix=WIDE_LSF, model_resolution=5000.0)
    table = lsf.build_resampling_table(wave, noise.wave, conf)
    flat = np.ones((1, wave.size), dtype=np.float32)
    out = lsf.resample_numba(table, flat, 0.42)[0]
    # a flat f_lambda stays flat, divided by the Doppler factor (flux is conserved)
    np.testing.assert_allclose(out[20:-20], np.exp(-0.42 * table.h), rtol=2e-6)
    f = np.random.default_rng(1).uniform(0.5, 1.5, wave.size)
    # on a tabulated shift (t = 24/64) exact; between two, the linear interpolation in t
    # errs by ~(step / sigma)^2 / 8: a 64th of a model pixel is 0.055 sigma here
    for shift, rtol in ((-3.625, 2e-5), (-3.61, 3e-4)):
        dense = lsf.resampling_matrix_dense(wave, noise.wave, conf, shift=shift)
        np.testing.assert_allclose(lsf.resample_numpy(table, f[None], shift)[0],
                                   dense @ f / table.det_width, rtol=rtol)


def test_fine_grids_keep_the_point_table(noise):
    """The built-in grid's sampling (R_samp 20,000, R 10,000, PFS LSF) reads samples as points,
    and the table is the pre-fix formula bit for bit."""
    from specdenoise.simulate.builtin_grid import DEFAULT_SETTINGS, builtin_wave

    wave = builtin_wave()
    conf = lsf.LSF(model_resolution=DEFAULT_SETTINGS["resolution"])
    u, w = lsf.sample_offsets(wave, noise.wave, conf)
    assert u.tolist() == [0.0] and w.tolist() == [1.0]
    table = lsf.build_resampling_table(wave, noise.wave, conf, n_shift=2)
    lo, hi = lsf.pixel_edges(noise.wave)
    sig = conf.sigma_pix(noise.wave) * (hi - lo)
    lam_p = wave[0] * np.exp((table.start[:, None] + np.arange(table.band)) * table.h)
    for i in range(3):
        mu = lam_p * np.exp(table.h * i / 2)
        old = lam_p * 2.0 * np.sinh(0.5 * table.h) * lsf._pixel_response(
            lo[:, None], hi[:, None], sig[:, None], mu)
        assert np.array_equal(table.weights[i], old.astype(np.float32))


def test_real_bosz2024_r5000_has_no_comb(noise, tmp_path):
    """The two real BOSZ 2024 R = 5000 spectra, imported, against their 8x finer copy."""
    from specdenoise.simulate.grids import open_grid
    from specdenoise.stage_grid import import_grid

    src = shared_file("bosz2024", "bosz2024_wave_r5000.txt").parent
    g = open_grid(import_grid("bosz", Path(src), tmp_path / "g.zarr", progress=False))
    wave = g["wave"].values
    ex = g["exists"].values
    flux = np.stack([g["flux"].values[tuple(n)] for n in np.argwhere(ex)])
    res = float(g.attrs["resolution"])
    coarse = render(wave, flux, noise, res)
    fine = render(*fine_copy(wave, flux, 8), noise, res)
    mean, peak = rel_diff(coarse, fine)
    assert mean < 1e-3 and peak < 5e-3, (mean, peak)
    comb = np.std(np.diff(coarse, 2, axis=1), axis=1) / np.median(coarse, axis=1)
    assert np.all(comb < 0.02), comb  # 0.28 with point samples (issue 19)
