"""The observation chain: LSF + pixels, Doppler, extinction, magnitudes, noise, normalisation."""

import astropy.units as u
import numpy as np
import pytest
import speclite.filters
from conftest import toy_grid_flux
from dust_extinction.parameter_averages import F99, G23

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate import lsf, source
from specdenoise.simulate.constants import C_KM_PER_S
from specdenoise.simulate.noise import CONDITIONS as CONDITION_NAMES
from specdenoise.simulate.noise import BuiltinNoise
from specdenoise.simulate.observe import (
    Observer,
    clean_spectra_numba,
    clean_spectra_numpy,
    fast_median,
    observe,
)

R_SAMP = 20000.0
MODEL_WAVE = 700.0 * np.exp(np.arange(int(np.log(900 / 700) * R_SAMP) + 1) / R_SAMP)
H = 1.0 / R_SAMP
CONDITIONS = dict(seeing=0.8, zenith=30.0, field_angle=0.3, moon_zenith=90.0,
                  moon_separation=60.0, moon_phase=0.0, exp_time=900.0, n_exp=4)


@pytest.fixture(scope="module")
def noise():
    return BuiltinNoise()


@pytest.fixture(scope="module")
def observer(noise):
    return Observer(MODEL_WAVE, noise)


@pytest.fixture(scope="module")
def table(noise):
    return lsf.build_resampling_table(MODEL_WAVE, noise.wave)


@pytest.fixture(scope="module")
def stars():
    axes = {"teff": np.array([3800.0, 5200.0, 7000.0]), "logg": np.array([2.0, 4.5]),
            "m_h": np.array([-1.5, 0.0]), "a_m": np.array([0.0])}
    return toy_grid_flux(axes, MODEL_WAVE).reshape(-1, MODEL_WAVE.size)


def _draw(stars, n, seed=0):
    rng = np.random.default_rng(seed)
    return stars[rng.integers(0, len(stars), n)], dict(
        rv=np.clip(rng.normal(0, 300, n), -600, 600), ebv=rng.uniform(0, 0.1, n),
        mag=rng.uniform(19, 22.5, n), **CONDITIONS)


# --- LSF and pixels -----------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.0, 0.37, -19.6, 40.25])
def test_flat_spectrum_stays_flat(table, shift):
    flat = np.ones((1, MODEL_WAVE.size), dtype=np.float32)
    out = lsf.resample_numba(table, flat, shift)[0]
    # a flat f_lambda shifted by D (flux conserving) is 1/D everywhere
    np.testing.assert_allclose(out, np.exp(-shift * H), rtol=2e-6)


def test_line_flux_is_conserved(table, noise):
    for k in (600, 2500, 4400):
        delta = np.zeros((1, MODEL_WAVE.size), dtype=np.float32)
        delta[0, k] = 1.0
        for shift in (0.0, 0.43):
            out = lsf.resample_numba(table, delta, shift)[0]
            total = np.sum(out * table.det_width)
            dlam = MODEL_WAVE[k] * 2 * np.sinh(H / 2)
            assert total == pytest.approx(dlam, rel=1e-5)


@pytest.mark.parametrize("wave_nm", [715.0, 800.0, 880.0])
def test_delta_line_fwhm_is_configured(table, noise, wave_nm):
    conf = lsf.LSF()
    widths = []
    for frac in np.linspace(0, 1, 8, endpoint=False):  # line positions across a pixel
        k = int(np.searchsorted(MODEL_WAVE, wave_nm))
        delta = np.zeros((1, MODEL_WAVE.size), dtype=np.float32)
        delta[0, k] = 1.0
        prof = lsf.resample_numba(table, delta, frac)[0]
        x = np.arange(prof.size)
        mean = np.sum(x * prof) / np.sum(prof)
        var = np.sum((x - mean) ** 2 * prof) / np.sum(prof)
        widths.append(lsf.FWHM_PER_SIGMA * np.sqrt(var))
        # the recorded profile's half-maximum width, from the sampled values
        peak = int(np.argmax(prof))
        half = prof[peak] / 2
        lo = peak - np.interp(half, prof[peak - 4:peak + 1], np.arange(4, -1, -1))
        hi = peak + np.interp(-half, -prof[peak:peak + 5], np.arange(5))
        assert hi - lo == pytest.approx(float(conf.fwhm(wave_nm)), rel=0.12)
    assert np.mean(widths) == pytest.approx(float(conf.fwhm(wave_nm)), rel=0.005)


def test_resolving_power_matches_pfs(noise):
    conf = lsf.LSF()
    dl = noise.wave[1] - noise.wave[0]
    assert 720 / (conf.fwhm(720.0) * dl) == pytest.approx(5400, rel=0.03)
    assert 880 / (conf.fwhm(880.0) * dl) == pytest.approx(6500, rel=0.03)


@pytest.mark.parametrize("shift", [0.37, -5.61])
def test_table_matches_direct_matrix(table, noise, shift):
    f = np.random.default_rng(1).uniform(0.5, 1.5, MODEL_WAVE.size)
    dense = lsf.resampling_matrix_dense(MODEL_WAVE, noise.wave, shift=shift)
    ref = dense @ f / table.det_width
    np.testing.assert_allclose(lsf.resample_numba(table, f[None], shift)[0], ref, rtol=2e-5)
    np.testing.assert_allclose(lsf.resample_numpy(table, f[None], shift)[0], ref, rtol=2e-5)


def test_resample_numba_matches_numpy(table):
    f = np.random.default_rng(2).uniform(0.1, 2.0, (5, MODEL_WAVE.size)).astype(np.float32)
    shifts = np.array([-30.2, -0.5, 0.0, 0.999, 25.3])
    np.testing.assert_allclose(lsf.resample_numba(table, f, shifts),
                               lsf.resample_numpy(table, f, shifts), rtol=1e-6)


def test_log_uniform_grid_required(noise):
    with pytest.raises(SpecdenoiseError, match="log-uniform"):
        lsf.build_resampling_table(np.linspace(700, 900, 5000), noise.wave)


# --- Doppler ------------------------------------------------------------------------------------


def test_doppler_factor_is_relativistic():
    beta = 3000.0 / C_KM_PER_S
    assert source.doppler_factor(3000.0) == pytest.approx(np.sqrt((1 + beta) / (1 - beta)),
                                                          rel=1e-15)
    assert source.doppler_factor(-300.0) * source.doppler_factor(300.0) == pytest.approx(1.0)


@pytest.mark.parametrize("rv", [300.0, -300.0])
def test_line_moves_by_the_right_number_of_pixels(table, noise, rv):
    # an emission line on zero continuum; centroids in detector pixels
    line = np.exp(-0.5 * ((MODEL_WAVE - 850.0) / 0.03) ** 2)[None].astype(np.float32)
    dlam = MODEL_WAVE * 2 * np.sinh(H / 2)
    rest_centre = np.sum(MODEL_WAVE * line[0] * dlam) / np.sum(line[0] * dlam)
    dl = noise.wave[1] - noise.wave[0]
    x = np.arange(noise.wave.size)

    def centroid(rv_):
        prof = lsf.resample_numba(table, line, source.doppler_shift_pixels(rv_, H))[0]
        return np.sum(x * prof) / np.sum(prof)

    moved = centroid(rv) - centroid(0.0)
    expected = rest_centre * (source.doppler_factor(rv) - 1) / dl
    classical = rest_centre * rv / C_KM_PER_S / dl
    assert abs(expected) == pytest.approx(850 * 300 / C_KM_PER_S / dl, rel=1e-3)  # ~19.9 px
    assert moved == pytest.approx(expected, abs=1e-3)
    assert abs(moved - classical) > 5e-3  # the relativistic term (0.01 px) is resolved


def test_folded_shift_matches_shifting_the_model_first(table, stars):
    # reference: shift on the model grid (cumulative-integral resampling), then the LSF unshifted
    f = stars[2].astype(np.float64)
    for rv in (-420.0, 180.0):
        shifted = source.doppler_shift_numpy(MODEL_WAVE, f, rv)
        assert np.isfinite(shifted[100:-100]).all()
        ref = lsf.resample_numpy(table, np.nan_to_num(shifted)[None], 0.0)[0]
        got = lsf.resample_numba(table, f[None], source.doppler_shift_pixels(rv, H))[0]
        # the reference's linear interpolation smooths lines by up to a model pixel
        np.testing.assert_allclose(got, ref, rtol=5e-3)
        assert np.median(np.abs(got / ref - 1)) < 5e-4
    flat = source.doppler_shift_numpy(MODEL_WAVE, np.ones(MODEL_WAVE.size), 300.0)
    np.testing.assert_allclose(flat[50:-50], 1 / source.doppler_factor(300.0), rtol=1e-9)


# --- extinction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("law,cls", [("F99", F99), ("G23", G23)])
def test_extinction_follows_dust_extinction(noise, stars, law, cls):
    obs = observer_for(noise, law)
    f0, _ = obs.clean_fnu(stars[:1], 0.0, 0.0, np.nan)
    f1, _ = obs.clean_fnu(stars[:1], 0.0, 0.1, np.nan)
    a_v = cls(Rv=3.1)(noise.wave * u.nm)
    expected = 10 ** (-0.4 * 0.1 * 3.1 * a_v)
    np.testing.assert_allclose(f1[0] / f0[0], expected, rtol=2e-5)
    assert np.all(f1 < f0)


_OBSERVERS = {}


def observer_for(noise, law):
    if law not in _OBSERVERS:
        _OBSERVERS[law] = Observer(MODEL_WAVE, noise, extinction_law=law)
    return _OBSERVERS[law]


def test_unknown_extinction_law(noise):
    with pytest.raises(SpecdenoiseError, match="extinction law"):
        Observer(MODEL_WAVE, noise, extinction_law="CCM89")


# --- magnitudes ---------------------------------------------------------------------------------


def _speclite_mag(wave_nm, f_lambda_nm, name="hsc2017-i"):
    filt = speclite.filters.load_filter(name)
    return float(filt.get_ab_magnitude(f_lambda_nm / 10.0 * speclite.filters.default_flux_unit,
                                       wave_nm * 10.0 * u.AA))


def test_magnitude_exact_when_the_model_covers_the_filter(noise):
    wide = 600.0 * np.exp(np.arange(int(np.log(1000 / 600) * R_SAMP) + 1) / R_SAMP)
    axes = {"teff": np.array([4500.0]), "logg": np.array([4.0]), "m_h": np.array([0.0]),
            "a_m": np.array([0.0])}
    f = toy_grid_flux(axes, wide).reshape(1, -1)
    obs = Observer(wide, noise)
    for rv, ebv, mag in [(0.0, 0.0, 20.0), (450.0, 0.08, 21.3), (-500.0, 0.03, 19.1)]:
        _, scale = obs.clean_fnu(f, rv, ebv, mag)
        d = source.doppler_factor(rv)
        f_obs = f[0] / d * source.extinction_factor(wide * d, ebv) * scale[0]
        assert _speclite_mag(wide * d, f_obs) == pytest.approx(mag, abs=2e-4)


@pytest.mark.parametrize("beta", [-2.0, 0.5])
def test_magnitude_of_a_power_law_with_the_filter_beyond_the_model(observer, beta):
    f = (MODEL_WAVE / 800.0) ** beta
    _, scale = observer.clean_fnu(f[None], 0.0, 0.0, 20.5)
    full = np.linspace(630.0, 910.0, 30000)
    assert _speclite_mag(full, scale[0] * (full / 800.0) ** beta) == pytest.approx(20.5, abs=2e-4)


def test_magnitude_of_a_star_matches_the_documented_continuation(observer, stars):
    for i, (rv, ebv) in enumerate([(0.0, 0.0), (-350.0, 0.05), (520.0, 0.1)]):
        _, scale = observer.clean_fnu(stars[i:i + 1], rv, ebv, 21.0)
        d = source.doppler_factor(rv)
        w, f = source.extend_power_law(MODEL_WAVE, stars[i], 600.0, 950.0)
        f_obs = f / d * source.extinction_factor(w * d, ebv) * scale[0]
        assert _speclite_mag(w * d, f_obs) == pytest.approx(21.0, abs=1e-3)


def test_any_speclite_filter_and_a_bad_name(noise, stars):
    obs = Observer(MODEL_WAVE, noise, filter_name="sdss2010-i")
    _, scale = obs.clean_fnu(stars[:1], 0.0, 0.0, 20.0)
    assert np.isfinite(scale).all()
    assert 0.05 < obs.filter_outside_fraction < 0.15  # sdss i reaches further blue than hsc i
    with pytest.raises(SpecdenoiseError, match="unknown filter"):
        source.Bandpass("no-such-filter")
    with pytest.raises(SpecdenoiseError, match="outside the model"):
        Observer(MODEL_WAVE, noise, filter_name="sdss2010-g")


def test_f_nu_conversion():
    # AB magnitude 0 flat in f_nu: f_lambda = 3631 Jy c / lambda^2
    w = np.array([700.0, 800.0])
    f_lam = 3.631e-20 * 2.99792458e17 / w**2
    np.testing.assert_allclose(source.f_lambda_to_f_nu(w, f_lam), 3.631e-20, rtol=1e-6)


# --- the chain ----------------------------------------------------------------------------------


def test_pulls_have_unit_width(observer, stars):
    model, kw = _draw(stars, 40)
    out = observer.observe(model, rng=np.random.default_rng(7), **kw)
    pull = (out["flux"] - out["flux_clean"]) / out["sigma"]
    assert pull.std() == pytest.approx(1.0, abs=0.01)
    assert abs(pull.mean()) < 0.01


def test_poisson_noise_has_unit_pulls(observer, stars):
    model, kw = _draw(stars, 40)
    kw["mag"] = np.full(40, 19.0)
    out = observer.observe(model, rng=np.random.default_rng(8), noise_kind="poisson", **kw)
    pull = (out["flux"] - out["flux_clean"]) / out["sigma"]
    assert pull.std() == pytest.approx(1.0, abs=0.02)
    assert abs(pull.mean()) < 0.02


def test_sigma_is_the_noise_model_plus_object(observer, stars):
    model, kw = _draw(stars, 6)
    out = observer.observe(model, rng=np.random.default_rng(1), return_physical=True, **kw)
    nm = observer.noise.evaluate({k: np.broadcast_to(kw[k], 6) for k in CONDITION_NAMES})
    dist = observer.distortion(out["calib_coef"])
    sigma_counts = out["sigma_nu"] / dist * nm["conversion"]
    np.testing.assert_allclose(sigma_counts**2 * 4, nm["variance"] + out["counts"], rtol=1e-9)
    np.testing.assert_allclose(out["counts"], out["flux_clean_nu"] / dist * nm["conversion"],
                               rtol=1e-9)
    # physical and normalised outputs agree through norm
    n = out["norm"][:, None]
    np.testing.assert_allclose(out["flux_clean"] * n, out["flux_clean_nu"], rtol=1e-6)
    np.testing.assert_allclose(out["sigma"] * n, out["sigma_nu"], rtol=1e-6)
    np.testing.assert_allclose(out["flux"] * n, out["flux_nu"], rtol=1e-6)


def test_normalisation_snr_and_distortion(observer, stars):
    model, kw = _draw(stars, 30)
    out = observer.observe(model, rng=np.random.default_rng(3), **kw)
    np.testing.assert_allclose(np.median(out["flux"], axis=1), 0.5, rtol=1e-6)
    np.testing.assert_allclose(out["snr"], np.median(out["flux"] / out["sigma"], axis=1),
                               rtol=1e-5)
    d = observer.distortion(out["calib_coef"])
    amp = np.max(np.abs(d - 1), axis=1)
    assert amp.max() <= 0.02 + 1e-12 and amp.max() > 0.01
    assert out["calib_coef"].shape == (30, 3)
    # the distortion is part of the clean flux: clean = d * undistorted / norm
    fnu, _ = observer.clean_fnu(model, kw["rv"], kw["ebv"], kw["mag"])
    np.testing.assert_allclose(out["flux_clean"], d * fnu / out["norm"][:, None], rtol=1e-5)
    for k in ("flux", "flux_clean", "sigma"):
        assert out[k].dtype == np.float32 and out[k].shape == (30, 4096)


def test_brighter_stars_have_higher_snr(observer, stars):
    model = np.repeat(stars[:1], 2, axis=0)
    out = observer.observe(model, rv=0.0, ebv=0.0, mag=np.array([19.0, 22.0]),
                           rng=np.random.default_rng(0), **CONDITIONS)
    assert out["snr"][0] > 5 * out["snr"][1]
    no_dist = Observer(MODEL_WAVE, observer.noise, distortion=0.0)
    o2 = no_dist.observe(model, rv=0.0, ebv=0.0, mag=np.array([19.0, 22.0]),
                         rng=np.random.default_rng(0), **CONDITIONS)
    assert np.all(o2["calib_coef"] == 0)


def test_same_rng_same_output(observer, stars):
    model, kw = _draw(stars, 5)
    a = observer.observe(model, rng=np.random.default_rng(11), **kw)
    b = observer.observe(model, rng=np.random.default_rng(11), **kw)
    c = observer.observe(model, rng=np.random.default_rng(12), **kw)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["flux"], c["flux"])


@pytest.mark.parametrize("noise_kind", ["gaussian", "poisson"])
def test_numba_matches_numpy_reference(observer, stars, noise_kind):
    model, kw = _draw(stars, 8)
    a = observer.observe(model, rng=np.random.default_rng(5), noise_kind=noise_kind,
                         return_physical=True, **kw)
    b = observer.observe(model, rng=np.random.default_rng(5), noise_kind=noise_kind,
                         return_physical=True, backend="numpy", noise_backend="numba", **kw)
    for k in a:
        scale = np.abs(b[k]).max()
        np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6 * scale, err_msg=k)


def test_clean_kernel_matches_reference_without_extinction_stride(observer, stars):
    # the Numba kernel exponentiates the extinction every few pixels; the reference at each
    model = stars[:3].astype(np.float32)
    m, t = observer.table.split_shift(source.doppler_shift_pixels(
        np.array([-600.0, 10.0, 600.0]), H))
    outs = []
    for kernel in (clean_spectra_numba, clean_spectra_numpy):
        fnu, scale = np.empty((3, 4096)), np.empty(3)
        kernel(model, m, t, np.array([1.0, 0.5, 0.0]), np.full(3, 1e-8),
               observer.table.weights, observer.table.start, observer.kcurve, observer.filt_u,
               observer.e0, observer.f_lo, observer.f_hi, observer.lnlam0, observer.h,
               observer.edge_windows, observer.det_factor, fnu, scale)
        outs.append((fnu, scale))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=2e-7)


def test_fast_median_is_numpy_median():
    rng = np.random.default_rng(0)
    work, hist = np.empty(5000), np.zeros(256, dtype=np.int64)
    for n in (1, 2, 3, 64, 65, 4096, 4097):
        for x in (rng.standard_normal(n), np.round(rng.standard_normal(n)), np.full(n, 0.3),
                  np.exp(5 * rng.standard_normal(n))):
            assert fast_median(x, work, hist) == np.median(x)


def test_errors_a_user_can_cause(observer, stars):
    model, kw = _draw(stars, 2)
    with pytest.raises(SpecdenoiseError, match="radial velocity"):
        observer.observe(model, **{**kw, "rv": np.array([0.0, 9000.0])},
                         rng=np.random.default_rng(0))
    with pytest.raises(SpecdenoiseError, match="pixels"):
        observer.observe(model[:, :-1], rng=np.random.default_rng(0), **kw)
    with pytest.raises(SpecdenoiseError, match="noise kind"):
        observer.observe(model, rng=np.random.default_rng(0), noise_kind="laplace", **kw)


def test_one_off_observe_function(noise, stars):
    model, kw = _draw(stars, 2)
    a = observe(model, MODEL_WAVE, noise, rng=np.random.default_rng(2), distortion=0.01, **kw)
    assert np.max(np.abs(Observer(MODEL_WAVE, noise, distortion=0.01).distortion(
        a["calib_coef"]) - 1)) <= 0.01 + 1e-12
