"""The built-in PFS noise model, ETC tables and the ``specdenoise etc`` command (no shared data
needed, except where marked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from specdenoise.cli import main
from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate import atmosphere, pfs, skylines
from specdenoise.simulate.etc_table import (
    TableNoise,
    import_etc_runs,
    read_legacy,
    runs_to_dataset,
    write_table,
)
from specdenoise.simulate.noise import BuiltinNoise, etc_variance, max3, snr

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pfs_etc"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"reference ETC outputs absent ({DATA})")
DARK = dict(seeing=0.8, zenith=35.0, field_angle=0.0, moon_zenith=90.0, moon_separation=60.0,
            moon_phase=0.0, exp_time=900.0)


@pytest.fixture(scope="module")
def model():
    return BuiltinNoise()


# --- instrument ----------------------------------------------------------------------------------


def test_pixel_grid():
    w = pfs.pixel_wave()
    assert w.shape == (4096,) and w.dtype == np.float64
    assert w[0] == 710.0 and np.allclose(np.diff(w), 0.042724609375)
    assert abs(w[-1] + 175.0 / 4096 - 885.0) < 1e-9


@needs_data
def test_instrument_file_parser_matches_builtin_numbers():
    inst = pfs.read_instrument_file(DATA / "PFS.redMR.20240714.dat")
    ref = pfs.PFS_RED_MR
    for key in ("d_outer", "central_obstruction", "field_radius", "efl", "spot_rms", "vignetting",
                "fiber_radius", "lmin", "lmax", "npix", "width", "camera_rms", "fiber_image",
                "dark", "read_noise", "trace_sep", "nlines", "thr_adjust", "noise_adjust"):
        assert getattr(inst, key) == getattr(ref, key), key
    w = pfs.pixel_wave()
    assert np.allclose(pfs.throughput(inst, w), pfs.throughput(ref, w), rtol=0.015)


def test_instrument_file_errors(tmp_path):
    with pytest.raises(SpecdenoiseError, match="cannot read"):
        pfs.read_instrument_file(tmp_path / "missing.dat")
    bad = tmp_path / "bad.dat"
    bad.write_text("OPTICS 8.3 0.22\n")
    with pytest.raises(SpecdenoiseError, match="malformed OPTICS"):
        pfs.read_instrument_file(bad)
    bad.write_text("# nothing useful\nFIBER 63.5\n")
    with pytest.raises(SpecdenoiseError, match="missing"):
        pfs.read_instrument_file(bad)


def test_point_source_aperture_fraction():
    ee = pfs.encircled_energy(pfs.PFS_RED_MR, [800.0], [0.6, 0.8, 1.2], 0.0)[:, 0]
    assert np.all(np.diff(ee) < 0)  # worse seeing, less light in the fibre
    assert abs(ee[1] - 0.62) < 0.02  # DESIGN: EE ~ 0.62 at 0.8" and 800 nm


# --- atmosphere and sky lines --------------------------------------------------------------------


def kasten_young_airmass(z_deg):
    """Relative optical airmass of Kasten & Young (1989, Appl. Opt. 28, 4735), fitted to a
    model atmosphere: an independent formula to hold ours against."""
    z = np.asarray(z_deg, dtype=np.float64)
    return 1.0 / (np.cos(np.radians(z)) + 0.50572 * (96.07995 - z) ** -1.6364)


def test_airmass_and_moon():
    assert atmosphere.airmass(0.0) == 1.0  # the zenith: one atmosphere
    z = np.linspace(0.0, 45.0, 46)  # the default zenith range
    x = atmosphere.airmass(z)
    # the plane-parallel limit sec z near the zenith, and a real atmosphere's curvature below it
    assert np.all(np.abs(x[:11] * np.cos(np.radians(z[:11])) - 1) < 2e-3)
    assert np.all(x <= 1 / np.cos(np.radians(z)))
    # within 2 % of Kasten & Young over the range simulated (the PFS ETC's homogeneous-shell
    # formula falls 1.8 % short at 45 deg)
    np.testing.assert_allclose(x, kasten_young_airmass(z), rtol=0.02)
    b_new = sum(atmosphere.moon_brightness_v(30.0, 60.0, 0.0, 30.0))
    b_full = sum(atmosphere.moon_brightness_v(30.0, 60.0, 0.5, 30.0))
    b_far = sum(atmosphere.moon_brightness_v(30.0, 120.0, 0.5, 30.0))
    b_down = sum(atmosphere.moon_brightness_v(95.0, 60.0, 0.5, 30.0))
    assert b_full > 100 * b_new and b_full > b_far > 0 and b_down == 0
    # a full Moon 60 deg away brightens a dark V sky (~21.5 mag/arcsec^2, ~500 nL) many times
    assert 1e3 < b_full < 1e5


def test_oh_and_o2_lines():
    wl, rl, band = skylines.oh_lines()
    assert np.all(rl >= 0)
    for ib, bright in enumerate(skylines.OH_BANDS.values()):
        assert rl[band == ib].sum() == pytest.approx(bright)
    # inverted 2Pi: the lowest level is F1 (2Pi_3/2, J = 3/2), F2 (J = 1/2) ~ |A| above it
    f1 = skylines.oh_terms(0, np.array([1.5]), 1)[0]
    f2 = skylines.oh_terms(0, np.array([0.5]), 2)[0]
    assert 120 < f2 - f1 < 135
    # the (6-2) band origin region and its brightest line near 840 nm
    sel = band == list(skylines.OH_BANDS).index((6, 2))
    assert 830 < wl[sel][np.argmax(rl[sel])] < 846
    w2, r2 = skylines.o2_lines()
    bright = w2[r2 > 0.02 * r2.max()]
    assert 859 < bright.min() and bright.max() < 872  # R head ~861 nm, P branch to ~871


# --- the noise model ----------------------------------------------------------------------------


def test_evaluate_shapes_and_broadcasting(model):
    res = model.evaluate(**DARK)
    assert model.wave.shape == (4096,)
    for key in ("conversion", "sky", "variance"):
        assert res[key].shape == (1, 4096) and res[key].dtype == np.float64
        assert np.all(res[key] > 0)
    res = model.evaluate(**(DARK | {"seeing": [0.6, 1.0, 1.4]}), n_exp=4)
    assert res["sky"].shape == (3, 4096)
    assert np.all(np.diff(res["conversion"][:, 2000]) < 0)
    assert np.allclose(res["sky"][0], res["sky"][2])  # seeing does not change the sky
    with pytest.raises(SpecdenoiseError, match="common length"):
        model.evaluate(**(DARK | {"seeing": [0.6, 1.0], "zenith": [0.0, 10.0, 20.0]}))


def test_numba_kernel_matches_numpy_reference(model):
    rng = np.random.default_rng(1)
    n = 20
    args = dict(seeing=rng.uniform(0.5, 1.5, n), zenith=rng.uniform(0, 60, n),
                field_angle=rng.uniform(0, 0.65, n), moon_zenith=rng.uniform(20, 100, n),
                moon_separation=rng.uniform(30, 180, n), moon_phase=rng.uniform(0, 0.5, n),
                exp_time=rng.uniform(300, 1200, n), n_exp=rng.integers(1, 9, n))
    a = model.evaluate(args)
    b = model.evaluate(args, backend="numpy")
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=5e-4)


def test_conditions_move_sky_and_noise_the_right_way(model):
    z = model.evaluate(**(DARK | {"zenith": [0.0, 50.0]}))
    assert np.median(z["sky"][1] / z["sky"][0]) > 1.2  # sky brightens with airmass
    assert np.median(z["conversion"][1] / z["conversion"][0]) < 1.0  # extinction
    moon = model.evaluate(**(DARK | {"moon_zenith": 40.0, "moon_phase": 0.5}))
    dark = model.evaluate(**DARK)
    assert np.median(moon["sky"] / dark["sky"]) > 2
    # the sky-subtraction floor grows with the number of exposures
    v1 = model.evaluate(**DARK, n_exp=1)["variance"]
    v8 = model.evaluate(**DARK, n_exp=8)["variance"]
    assert np.all(v8 > v1)
    # detector terms alone when there is no sky
    var0 = etc_variance(np.zeros((1, 4096)), 900.0, 4)
    assert np.allclose(var0, 1.015 * (1e-4 * 900 + 16) * 5)


def test_max3_and_snr():
    a = np.array([[1.0, 5.0, 2.0, 0.0, 3.0]])
    assert np.array_equal(max3(a), [[5, 5, 5, 3, 3]])
    # measured: N exposures of s Poisson-distributed object counts plus a Gaussian background
    # of variance V each, summed; S/N = mean / standard deviation of the sum
    rng = np.random.default_rng(3)
    for s, v, n in ((100.0, 300.0, 4), (9.0, 0.0, 1), (4.0, 400.0, 8)):
        total = (rng.poisson(s, (200_000, n)) + rng.normal(0, np.sqrt(v), (200_000, n))).sum(1)
        assert snr(s, v, n) == pytest.approx(total.mean() / total.std(), rel=0.01), (s, v, n)
    # the limits: pure photon counting (S/N^2 = counts) and a background that dominates
    assert snr(25.0, 0.0, 4) == pytest.approx(np.sqrt(4 * 25.0))
    assert snr(1e-3, 1e4, 1) == pytest.approx(1e-3 / 100, rel=1e-6)


# --- ETC tables -----------------------------------------------------------------------------------


def _write_ecsv_run(path: Path, model: BuiltinNoise, cond: dict) -> None:
    from astropy.table import Table

    r = model.evaluate(**cond, n_exp=4)
    fnu = 3.631e-20 * 10 ** (-0.4 * 22)
    t = Table({"arm": np.full(4096, 3), "pixel": np.arange(4096), "wavelength": model.wave,
               "signal": r["conversion"][0] * fnu, "noise_variance": r["variance"][0],
               "conversion_factor": r["conversion"][0], "sky": r["sky"][0]})
    t.meta["params"] = {"seeing": cond["seeing"], "zenith_ang": cond["zenith"],
                        "field_ang": cond["field_angle"], "moon_zenith_ang": cond["moon_zenith"],
                        "moon_target_ang": cond["moon_separation"],
                        "moon_phase": cond["moon_phase"], "exp_time": cond["exp_time"],
                        "exp_num": 4}
    t.write(path, format="ascii.ecsv")


@pytest.fixture(scope="module")
def ecsv_grid(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("etc_runs")
    for i, z in enumerate((0.0, 30.0, 60.0)):
        for j, s in enumerate((0.6, 0.9, 1.2)):
            _write_ecsv_run(folder / f"c_{i}{j}.ecsv", model, DARK | {"zenith": z, "seeing": s})
    return folder


def test_table_import_and_interpolation(ecsv_grid, tmp_path, model):
    runs = import_etc_runs([ecsv_grid])
    ds = runs_to_dataset(runs)
    assert ds["sky_rate"].dims == ("seeing", "zenith", "wave")
    out = write_table(ds, tmp_path / "table.zarr")
    table = TableNoise(out)
    assert np.array_equal(table.wave, model.wave)
    at_node = table.evaluate(**(DARK | {"zenith": 30.0, "seeing": 0.6}), n_exp=4)
    ref = model.evaluate(**(DARK | {"zenith": 30.0, "seeing": 0.6}), n_exp=4)
    for key in ("conversion", "sky", "variance"):
        np.testing.assert_allclose(at_node[key], ref[key], rtol=1e-9)
    cond = DARK | {"zenith": [15.0, 45.0], "seeing": [1.0, 0.75], "exp_time": 450.0}
    between = table.evaluate(**cond)
    ref = model.evaluate(**cond)
    for key in ("conversion", "sky", "variance"):
        assert np.all(np.abs(np.median(between[key] / ref[key], axis=1) - 1) < 0.05), key


def test_table_import_errors(ecsv_grid, tmp_path):
    with pytest.raises(SpecdenoiseError, match="does not exist"):
        import_etc_runs([tmp_path / "nope.dat"])
    bad = tmp_path / "bad.dat"
    bad.write_text("1 2 3\n4 5 6\n")
    with pytest.raises(SpecdenoiseError):
        import_etc_runs([bad])
    with pytest.raises(SpecdenoiseError, match="not a PFS ETC noise"):
        read_legacy(bad)
    incomplete = sorted(ecsv_grid.iterdir())[:-1]
    with pytest.raises(SpecdenoiseError, match="do not fill a grid"):
        runs_to_dataset(import_etc_runs(incomplete))
    with pytest.raises(SpecdenoiseError, match="does not exist"):
        TableNoise(tmp_path / "missing.zarr")


@needs_data
def test_legacy_import_with_params_file(tmp_path):
    out = tmp_path / "legacy.zarr"
    assert main(["etc", "import", str(DATA / "gsetc_params_mr11006.txt"), "--out", str(out)]) == 0
    table = TableNoise(out)
    res = table.evaluate(dict(seeing=0.8, zenith=45.0, field_angle=0.675, moon_zenith=30.0,
                              moon_separation=60.0, moon_phase=0.0, exp_time=900.0, n_exp=8))
    snc = read_legacy(DATA / "snc_mr11006.dat")
    np.testing.assert_allclose(res["sky"][0], snc["sky"], rtol=1e-9)
    np.testing.assert_allclose(res["variance"][0], snc["variance"], rtol=3e-3)
    # two runs of different sky models with the same conditions are not a grid
    assert main(["etc", "import", str(DATA), "--out", str(tmp_path / "x.zarr")]) == 2


# --- the command ------------------------------------------------------------------------------


CLI = ["etc", "--seeing", "0.8", "--zenith", "35", "--field-angle", "0.0", "--moon-zenith", "90",
       "--moon-separation", "60", "--moon-phase", "0", "--exp-time", "900", "--n-exp", "4",
       "--mag", "22"]


def test_cli_npz_and_csv(tmp_path, capsys, model):
    assert main(CLI + ["--out", str(tmp_path / "o.npz"), "--plot", str(tmp_path / "o.png")]) == 0
    text = capsys.readouterr().out
    assert "S/N" in text and "median" in text
    with np.load(tmp_path / "o.npz") as d:
        arrays = {k: d[k] for k in d.files}
    assert set(arrays) == {"wavelength", "signal", "sky", "variance", "conversion", "snr"}
    assert np.allclose(arrays["snr"], snr(arrays["signal"], arrays["variance"], 4))
    # a flat f_nu source of AB magnitude 22, the zero point from astropy, not from us: its
    # definition 10**-19.44 erg/s/cm2/Hz = 3630.8 Jy, which the ETC rounds to 3631 Jy (6e-5)
    import astropy.units as u

    fnu = (22.0 * u.ABmag).to_value(u.erg / u.s / u.cm**2 / u.Hz)
    assert np.allclose(arrays["signal"], arrays["conversion"] * fnu, rtol=1e-4, atol=0)
    assert (tmp_path / "o.png").stat().st_size > 0
    assert main(CLI + ["--out", str(tmp_path / "o.csv")]) == 0
    csv = np.genfromtxt(tmp_path / "o.csv", delimiter=",", names=True)
    assert csv.dtype.names == ("wavelength", "signal", "sky", "variance", "conversion", "snr")
    assert np.allclose(csv["snr"], arrays["snr"], rtol=1e-6)


def test_cli_spectrum_scaled_through_filter(tmp_path):
    wave = np.linspace(600, 1000, 801)
    spec = tmp_path / "flat_fnu.csv"
    np.savetxt(spec, np.c_[wave, np.full_like(wave, 7.0)], delimiter=",")
    assert main(CLI + ["--spectrum", str(spec), "--flux-unit", "fnu",
                       "--out", str(tmp_path / "s.npz")]) == 0
    assert main(CLI + ["--out", str(tmp_path / "f.npz")]) == 0
    with np.load(tmp_path / "s.npz") as s, np.load(tmp_path / "f.npz") as f:
        np.testing.assert_allclose(s["signal"], f["signal"], rtol=2e-3)


def test_cli_errors(tmp_path, capsys):
    assert main(CLI + ["--out", str(tmp_path / "o.txt")]) == 2
    assert main(CLI + ["--filter", "nope", "--spectrum", str(tmp_path / "none.csv"),
                       "--out", str(tmp_path / "o.npz")]) == 2
    assert main(["etc", "export", "--out", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
