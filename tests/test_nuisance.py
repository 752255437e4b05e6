"""The wider nuisance model (issue 19, point 6): each effect off by default, each measured back
from what it does to a spectrum, recorded per spectrum by the simulate stage."""

import numpy as np
import pytest
from conftest import simulate_in_process

from specdenoise.config import load_config
from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate import nuisance
from specdenoise.simulate.noise import BuiltinNoise
from specdenoise.simulate.observe import Observer

R_SAMP = 20000.0
WAVE = 700.0 * np.exp(np.arange(int(np.log(900 / 700) * R_SAMP) + 1) / R_SAMP)
LINES = (750.0, 800.0, 850.0)
COND = dict(seeing=0.8, zenith=30.0, field_angle=0.3, moon_zenith=90.0, moon_separation=60.0,
            moon_phase=0.0, exp_time=900.0, n_exp=4)


@pytest.fixture(scope="module")
def noise():
    return BuiltinNoise()


def model(n):
    """Flat f_lambda with three narrow lines (sigma 0.01 nm, depth 0.5)."""
    f = np.ones(WAVE.size)
    for c in LINES:
        f *= 1 - 0.5 * np.exp(-0.5 * ((WAVE - c) / 0.01) ** 2)
    return np.repeat(f[None].astype(np.float32), n, axis=0)


def run(noise, n=12, mag=21.0, n_exp=4, **nuis):
    obs = Observer(WAVE, noise, distortion=0.0, nuisance=nuis)
    return obs, obs.observe(model(n), 0.0, 0.0, mag, rng=np.random.default_rng(4),
                            return_physical=True, **{**COND, "n_exp": n_exp})


def test_off_by_default_is_the_old_chain(noise):
    a = Observer(WAVE, noise).observe(model(3), 0.0, 0.0, 20.0, rng=np.random.default_rng(1),
                                      **COND)
    b = Observer(WAVE, noise, nuisance=dict(nuisance.DEFAULTS)).observe(
        model(3), 0.0, 0.0, 20.0, rng=np.random.default_rng(1), **COND)
    for k in ("flux", "flux_clean", "sigma"):
        assert np.array_equal(a[k], b[k])
    assert not set(nuisance.RECORDED.values()) & set(b)


def test_continuum_shape_is_smooth_in_the_truth_up_to_its_amplitude(noise):
    _, off = run(noise)
    _, on = run(noise, continuum=0.1)
    factor = on["flux_clean_nu"] / off["flux_clean_nu"]
    amp = on["continuum_amp"]
    assert amp.max() <= 0.1 and amp.max() > 0.03
    np.testing.assert_allclose(np.abs(factor - 1).max(axis=1), amp, rtol=1e-4)
    assert np.abs(np.diff(factor, 2, axis=1)).max() < 1e-4  # smooth: no line structure


def _line_sigma(wave, y, centre):
    near = np.abs(wave - centre) < 0.5
    w = 1 - y[near] / np.median(y[np.abs(wave - centre) < 2])
    w = np.clip(w, 0, None)
    x = wave[near]
    m = np.sum(w * x) / np.sum(w)
    return np.sqrt(np.sum(w * (x - m) ** 2) / np.sum(w))


def test_lsf_width_varies_by_fibre_as_recorded(noise):
    obs, on = run(noise, lsf_scatter=0.1)
    _, off = run(noise)
    scale = on["lsf_scale"]
    assert np.all(np.abs(scale - 1) <= 0.1) and np.ptp(scale) > 0.05
    ref = _line_sigma(obs.wave, off["flux_clean_nu"][0], 800.0)
    got = np.array([_line_sigma(obs.wave, y, 800.0) for y in on["flux_clean_nu"]])
    np.testing.assert_allclose(got / ref, scale, rtol=0.03)


def test_sky_and_telluric_residuals_in_the_observed_flux_only(noise):
    # bright and 10^4 exposures: the noise (sky photons included) far below the residuals
    obs, off = run(noise, mag=12.0, n_exp=10000)
    _, on = run(noise, mag=12.0, n_exp=10000, sky_residual=0.05, telluric_residual=0.05)
    np.testing.assert_array_equal(on["flux_clean_nu"], off["flux_clean_nu"])
    t = nuisance.telluric_template(obs.wave)
    for i in range(len(on["flux"])):
        resid = on["flux_nu"][i] - on["flux_clean_nu"][i]
        sky = on["sky"][i] / on["conversion"][i]
        tel = -t * on["flux_clean_nu"][i]
        coef, *_ = np.linalg.lstsq(np.stack([sky, tel], axis=1), resid, rcond=None)
        np.testing.assert_allclose(coef, [on["sky_residual"][i], on["telluric_residual"][i]],
                                   rtol=0.05, atol=2e-3)
    # the template sits in the O2 A and H2O bands, nowhere else
    assert t[(obs.wave > 759) & (obs.wave < 768)].max() > 0.5
    assert t[(obs.wave > 813) & (obs.wave < 835)].max() > 0.2
    assert t[(obs.wave > 780) & (obs.wave < 805)].max() < 1e-6


def test_config_keys_validated_and_hash_unchanged_when_off():
    from specdenoise.config import config_hash

    base = load_config()
    assert config_hash(base) == config_hash(load_config(overrides=["observe.lsf_scatter=0"]))
    assert config_hash(base) != config_hash(load_config(overrides=["observe.lsf_scatter=0.1"]))
    with pytest.raises(SpecdenoiseError, match="'observe.sky_residual' must be a number"):
        load_config(overrides=["observe.sky_residual=-1"])


def test_simulate_records_the_draws(small_grid, tmp_path):

    from specdenoise import schema

    out = tmp_path / "n.zarr"
    cfg = load_config(n=16, chunk_size=8, seed=2, grid=str(small_grid), out=str(out),
                      overrides=["observe.continuum=0.1", "observe.lsf_scatter=0.1",
                                 "observe.sky_residual=0.01", "observe.telluric_residual=0.02"])
    simulate_in_process(cfg)
    ds = schema.open_dataset(out)
    for name in ("continuum_amp", "lsf_scale", "sky_residual", "telluric_residual"):
        assert ds[name].dims == ("spectrum",) and np.ptp(ds[name].values) > 0, name
    assert np.all(np.abs(ds["lsf_scale"].values - 1) <= 0.1)
