"""PFS data products in and out (issue 20): pfsArm, pfsMerged, pfsObject read with astropy,
denoised through the CLI into FITS of the same layout, plain FITS spectra, resampling.

Two sources of files: the sample set in ``../shared/data/pfs_datamodel/`` (written by the PFS
datamodel package itself, truth in ``truth.npz``; skipped without it) and small files these
tests write in the same layouts, so that the readers are checked on a clone as well.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from conftest import WAVE, make_dataset, shared_file

from specdenoise import cli, pfsio, schema
from specdenoise import resample as rs
from specdenoise.train import infer, loop
from specdenoise.train.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLES = ("pfs_datamodel",)
#: the denoiser gives its own uncertainty once issue 18's ``infer.load_denoiser`` is there; the
#: written variance is then sigma_denoised**2, before that the input's
OWN_SIGMA = hasattr(infer, "load_denoiser")
VARSRC = "denoiser" if OWN_SIGMA else "input"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny U-Net that takes sigma as a second channel (so the variance read matters)."""
    d = tmp_path_factory.mktemp("pfs_run")
    data = make_dataset(d / "data.zarr", n=12, chunk=6)
    cfg = loop.make_config(data, None, d / "run", model="unet", preset="quick",
                           model_cfg={"depth": 2, "filters": 4, "in_channels": 2}, epochs=1,
                           batch_size=6, workers=0, device="cpu")
    loop.train(cfg)
    return d / "run", data


# --------------------------------------------------------------------------- files of our own


def _planes_header(header) -> None:
    for bit, name in enumerate(pfsio.MASK_PLANES):
        header[f"HIERARCH MP_{name}" if len(name) > 5 else f"MP_{name}"] = bit


def write_fiber_file(path, wave, flux, var, mask, fiber_ids, *, arm="m", covar=True,
                     flux_hdu=None):
    """A pfsArm/pfsMerged file in the datamodel's layout (as the sample set's README lists)."""
    n, n_pix = flux.shape
    primary = fits.PrimaryHDU()
    _planes_header(primary.header)
    primary.header["DAMD_VER"] = 4
    cov = np.zeros((n, 3, n_pix), np.float32)
    cov[:, 0] = var
    hdus = [primary, fits.ImageHDU(np.asarray(fiber_ids, np.int32), name="FIBERID"),
            fits.ImageHDU(np.asarray(wave, np.float64), name="WAVELENGTH"),
            flux_hdu if flux_hdu is not None else fits.ImageHDU(flux.astype(np.float32),
                                                                name="FLUX"),
            fits.CompImageHDU(mask.astype(np.uint32), name="MASK", compression_type="RICE_1"),
            fits.ImageHDU(np.zeros_like(flux, np.float32), name="SKY"),
            fits.ImageHDU(np.ones_like(flux, np.float32), name="NORM")]
    if covar:
        hdus.append(fits.ImageHDU(cov, name="COVAR"))
    hdus.append(fits.BinTableHDU.from_columns(
        [fits.Column("visit", "J", array=[4242]), fits.Column("arm", "1A", array=[arm]),
         fits.Column("spectrograph", "J", array=[1]),
         fits.Column("pfsDesignId", "K", array=[12345])], name="CONFIG"))
    hdus.append(fits.BinTableHDU.from_columns(
        [fits.Column("blackSpotId", "J", array=np.arange(n))], name="NOTES"))
    fits.HDUList(hdus).writeto(path)
    return path


def write_object_file(path, wave, flux, var, mask, *, ctype="WAVE"):
    """A pfsObject file: linear WCS in metres with the datamodel package's pixel convention."""
    n_pix = flux.size
    step = (wave[-1] - wave[0]) / (n_pix - 1)
    crpix = n_pix / 2 + 1.5
    h = fits.Header()
    h["CTYPE1"], h["CUNIT1"] = ctype, "m"
    h["CRPIX1"], h["CDELT1"] = crpix, step * 1e-9
    h["CRVAL1"] = (wave[0] + (crpix - 2) * step) * 1e-9  # element i at CRVAL1+(i+2-CRPIX1)*CDELT1
    mh = h.copy()
    _planes_header(mh)
    cov = np.zeros((3, n_pix), np.float32)
    cov[0] = var
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(flux.astype(np.float32), header=h, name="FLUX"),
            fits.CompImageHDU(mask.astype(np.int32), header=mh, name="MASK"),
            fits.BinTableHDU.from_columns([fits.Column("filterName", "6A", array=["i2_hsc"]),
                                           fits.Column("fiberFlux", "E", array=[1.0])],
                                          name="TARGET"),
            fits.ImageHDU(np.zeros(n_pix, np.float32), header=h, name="SKY"),
            fits.ImageHDU(cov, header=h, name="COVAR"),
            fits.BinTableHDU.from_columns([fits.Column("visit", "J", array=[4242]),
                                           fits.Column("fiberId", "J", array=[77])],
                                          name="OBSERVATIONS")]
    fits.HDUList(hdus).writeto(path)
    return path


def readme_fiber(path, fiber_id):
    """The sample set README's astropy-only snippet for pfsArm/pfsMerged."""
    with fits.open(path) as f:
        i = int(np.flatnonzero(f["FIBERID"].data == fiber_id)[0])
        wl = f["WAVELENGTH"].data
        wl = wl if wl.ndim == 1 else wl[i]
        flux, var, mask = f["FLUX"].data[i], f["COVAR"].data[i, 0], f["MASK"].data[i]
        planes = {k[3:]: v for k, v in f[0].header.items() if k.startswith("MP_")}
        good = (mask & (1 << planes["NO_DATA"])) == 0
        header = dict(f[0].header)
    return wl, flux, var, mask, planes, good, header


def readme_object(path):
    """The sample set README's astropy-only snippet for pfsObject."""
    with fits.open(path) as f:
        h = f["FLUX"].header
        i = np.arange(h["NAXIS1"])
        wl = 1e9 * (h["CRVAL1"] + (i + 2 - h["CRPIX1"]) * h["CDELT1"])
        flux, var, mask = f["FLUX"].data, f["COVAR"].data[0], f["MASK"].data
        planes = {k[3:]: v for k, v in f["MASK"].header.items() if k.startswith("MP_")}
        header = dict(f[0].header)
    return wl, flux, var, mask, planes, header


def _spectra(run, n=3):
    g = xr.open_zarr(run[1])
    return (g["flux"].values[:n].astype(np.float64), g["sigma"].values[:n].astype(np.float64))


def _denoise(run, args):
    return cli.main(["denoise", "--run", str(run[0]), "--device", "cpu", *map(str, args)])


def test_pfs_arm_of_our_own_round_trips(run, tmp_path, capsys):
    flux, sigma = _spectra(run)
    mask = np.zeros(flux.shape, np.uint32)
    mask[1, 500:510] = 1 << 3  # CR: not trusted
    mask[2, 20] = 1 << 5  # DETECTED: trusted
    flux[1, 505] = np.nan
    src = write_fiber_file(tmp_path / "pfsArm-004242-m1.fits", WAVE, flux, sigma**2, mask,
                           [11, 27, 43])
    out = tmp_path / "den.fits"
    assert _denoise(run, ["--spectrum", src, "--out", out]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    model, _ = load_model(run[0], device="cpu")
    expected = infer.denoise_array(model, flux[[0, 2]].astype(np.float32),
                                   sigma=sigma[[0, 2]].astype(np.float32))
    for k, fid in ((0, 11), (2, 43)):
        wl, f, var, m, planes, good, header = readme_fiber(out, fid)
        np.testing.assert_array_equal(wl, WAVE)
        np.testing.assert_allclose(f, expected[k // 2], rtol=1e-6)
        if not OWN_SIGMA:
            np.testing.assert_allclose(var, (sigma[k] ** 2).astype(np.float32))  # the input's
        assert (var > 0).all() and np.isfinite(var).all()
        np.testing.assert_array_equal(m, mask[k])
    assert header["SDVARSRC"] == VARSRC and header["SDNET"] == "unet"
    assert header["SDTRAIN"] == str(run[1]) and header["SDVERS"]
    assert header["SDMODEL"].endswith("checkpoint.pt") and header["SDRESAMP"] is False
    # the masked fiber: the bad pixels come back masked and finite; the denoiser did not trust
    # them (another value there changes nothing much, unlike a trusted pixel)
    wl, f, var, m, planes, good, header = readme_fiber(out, 27)
    np.testing.assert_array_equal(m, mask[1])
    assert np.isfinite(f).all() and (m[500:510] & (1 << planes["CR"])).all()
    with fits.open(out) as a, fits.open(src) as b:
        # the product's HDUs, then each fiber's consistency check (this run is not
        # calibrated: nothing checked, and it says so)
        assert [h.name for h in a] == [h.name for h in b] + [pfsio.CHECK_HDU]
        check = a[pfsio.CHECK_HDU]
        np.testing.assert_array_equal(check.data["fiberId"], [11, 27, 43])
        assert {"chi2_red", "chi2_peak", "sky_excess", "suspect"} <= set(check.columns.names)
        np.testing.assert_array_equal(check.data["suspect"], -1)
        assert check.header["NSUSPECT"] == 0 and check.header["NCHECKED"] == 0
        np.testing.assert_array_equal(a["FIBERID"].data, [11, 27, 43])
        assert a["CONFIG"].data["visit"][0] == 4242 and a["CONFIG"].data["arm"][0] == "m"
    # one fiber chosen: only its row
    one = tmp_path / "one.fits"
    assert _denoise(run, ["--spectrum", src, "--out", one, "--fiber-id", 43]) == 0
    with fits.open(one) as f:
        np.testing.assert_array_equal(f["FIBERID"].data, [43])
        assert f["FLUX"].data.shape == (1, 4096) and f["COVAR"].data.shape == (1, 3, 4096)
        assert len(f["NOTES"].data) == 1
        np.testing.assert_allclose(f["FLUX"].data[0], expected[1], rtol=1e-6)


def test_pfs_object_of_our_own_round_trips(run, tmp_path):
    flux, sigma = _spectra(run, 1)
    scale = 3.5e4  # nJy per normalised unit
    mask = np.zeros(4096, np.int32)
    src = write_object_file(tmp_path / "pfsObject-00001-00002-1,1-0000000000000abc-001-"
                            "0x0000000000000001.fits", WAVE, flux[0] * scale,
                            (sigma[0] * scale) ** 2, mask)
    s = pfsio.read(src)
    np.testing.assert_allclose(s.wave[0], WAVE, atol=1e-9)
    assert s.ids["objId"][0] == 0xABC and s.ids["fiberId"][0] == 77
    out = tmp_path / "obj.fits"
    assert _denoise(run, ["--spectrum", src, "--out", out]) == 0
    wl, f, var, m, planes, header = readme_object(out)
    np.testing.assert_allclose(wl, WAVE, atol=1e-9)
    model, _ = load_model(run[0], device="cpu")
    expected = infer.denoise_array(model, (flux[0] * scale).astype(np.float32),
                                   sigma=(sigma[0] * scale).astype(np.float32))
    np.testing.assert_allclose(f, expected, rtol=1e-6)
    assert header["SDVARSRC"] == VARSRC
    # the same product into CSV: the columns of a CSV spectrum, sigma_denoised as the FITS
    # variance, the check per spectrum (this run is not calibrated: -1, NaN)
    csv_out = tmp_path / "obj.csv"
    assert _denoise(run, ["--spectrum", src, "--out", csv_out]) == 0
    t = np.genfromtxt(csv_out, delimiter=",", names=True)
    assert t.dtype.names == ("wave", "flux", "flux_denoised", "sigma_denoised", "chi2_red",
                             "chi2_peak", "sky_excess", "suspect")
    np.testing.assert_allclose(t["flux_denoised"], expected, rtol=1e-6)
    np.testing.assert_allclose(t["sigma_denoised"] ** 2, var, rtol=1e-4)
    assert (t["suspect"] == -1).all() and np.isnan(t["sky_excess"]).all()


def test_another_grid_is_resampled_and_mapped_back(run, tmp_path):
    """A pfsMerged on a coarser grid reaching beyond the model's: denoised inside the model's
    range (resampled onto it and back), the rest kept as it was and flagged NOT_DENOISED."""
    flux, sigma = _spectra(run, 2)
    coarse = np.arange(705.0, 890.0, 0.06)
    f_c = np.empty((2, coarse.size))
    v_c = np.empty((2, coarse.size))
    for k in range(2):  # the model-grid spectrum onto the coarse grid, padded outside
        a, c, _ = rs.resample(WAVE, flux[k], coarse, covar=sigma[k][None] ** 2)
        out_side = (coarse < WAVE[0] + 0.05) | (coarse > WAVE[-1] - 0.05)
        f_c[k] = np.where(out_side, 0.5, a)
        v_c[k] = np.where(out_side, 0.01, c[0])
    src = write_fiber_file(tmp_path / "pfsMerged-004242.fits", coarse, f_c, v_c,
                           np.zeros(f_c.shape, np.uint32), [5, 6])
    out = tmp_path / "den.fits"
    assert _denoise(run, ["--spectrum", src, "--out", out]) == 0
    model, cfg = load_model(run[0], device="cpu")
    mw = np.asarray(cfg["wave"])
    wl, f, var, m, planes, good, header = readme_fiber(out, 6)
    assert header["SDRESAMP"] is True
    np.testing.assert_array_equal(wl, coarse)
    inside = ~((m & (1 << planes["NOT_DENOISED"])) != 0)
    edges = rs.edges(coarse)
    assert np.array_equal(inside, (edges[:-1] >= rs.edges(mw)[0]) & (edges[1:] <= rs.edges(mw)[-1]))
    np.testing.assert_array_equal(f[~inside], f_c[1][~inside].astype(np.float32))
    # inside: the denoiser's output on the model grid, mapped back flux-conservingly
    on_model, cov, _ = rs.resample(coarse, f_c[1], mw, covar=v_c[1][None])
    den = infer.denoise_array(model, on_model.astype(np.float32),
                              sigma=np.sqrt(cov[0]).astype(np.float32))
    back, _, _ = rs.resample(mw, den.astype(np.float64), coarse[inside])
    np.testing.assert_allclose(f[inside], back, rtol=1e-5)


def test_the_denoisers_own_sigma_becomes_the_variance(run, tmp_path):
    """With a denoiser that gives sigma_denoised, COVAR holds its square (mapped back onto the
    file's grid when resampled) and the header says so."""
    from specdenoise.stage_spectrum import denoise_spectrum_file

    flux, sigma = _spectra(run, 2)

    def sigma_fn(model, f, s):  # the plain network output and an uncertainty it did not make
        return infer.denoise_array(model, f, sigma=s), 0.25 * s

    src = write_fiber_file(tmp_path / "pfsArm-000020-m1.fits", WAVE, flux, sigma**2,
                           np.zeros(flux.shape, np.uint32), [1, 2])
    out = denoise_spectrum_file(run[0], src, tmp_path / "own.fits", device="cpu",
                                sigma_fn=sigma_fn)
    wl, f, var, m, planes, good, header = readme_fiber(out, 2)
    assert header["SDVARSRC"] == "denoiser"
    np.testing.assert_allclose(var, (0.25 * sigma[1]).astype(np.float32) ** 2, rtol=1e-6)
    with fits.open(out) as h:
        assert not h["COVAR"].data[:, 1:].any()  # no covariance claimed
    # on another grid: the covariance of the resampled sigma_denoised
    coarse = np.arange(708.0, 887.0, 0.07)
    f_c = np.stack([rs.resample(WAVE, flux[k], coarse)[0] for k in range(2)])
    f_c = np.where((coarse < 710.1) | (coarse > 884.9), 0.5, f_c)
    src2 = write_fiber_file(tmp_path / "pfsMerged-000021.fits", coarse, f_c,
                            np.full(f_c.shape, 1e-4), np.zeros(f_c.shape, np.uint32), [1, 2])
    out2 = denoise_spectrum_file(run[0], src2, tmp_path / "own2.fits", device="cpu",
                                 sigma_fn=sigma_fn)
    _, cfg = load_model(run[0], device="cpu")
    mw = np.asarray(cfg["wave"])
    on_model, cov, _ = rs.resample(coarse, f_c[0], mw, covar=np.full((1, coarse.size), 1e-4))
    _, expected, _ = rs.resample(mw, on_model, coarse[
        (rs.edges(coarse)[:-1] >= rs.edges(mw)[0]) & (rs.edges(coarse)[1:] <= rs.edges(mw)[-1])],
        covar=(0.25 * np.sqrt(cov[:1]).astype(np.float32).astype(np.float64)) ** 2)
    wl, f, var, m, planes, good, header = readme_fiber(out2, 1)
    inside = (m & (1 << planes["NOT_DENOISED"])) == 0
    np.testing.assert_allclose(var[inside], expected[0], rtol=1e-4)
    np.testing.assert_allclose(var[~inside], 1e-4, rtol=1e-6)  # outside: the input's


def test_plain_fits_image_with_wcs_and_table_round_trip(run, tmp_path):
    flux, sigma = _spectra(run, 1)
    model, _ = load_model(run[0], device="cpu")
    expected = infer.denoise_array(model, flux[0].astype(np.float32),
                                   sigma=sigma[0].astype(np.float32))
    # a table with wavelengths in Angstrom (TUNIT) and an error column
    table = tmp_path / "star_table.fits"
    fits.BinTableHDU.from_columns([fits.Column("wave", "D", array=WAVE * 10, unit="Angstrom"),
                                   fits.Column("flux", "E", array=flux[0]),
                                   fits.Column("error", "E", array=sigma[0])]).writeto(table)
    out = tmp_path / "star_table_den.fits"
    assert _denoise(run, ["--spectrum", table, "--out", out]) == 0
    back = pfsio.read(out)  # reads as a plain spectrum again: its flux is the denoised one
    np.testing.assert_allclose(back.wave[0], WAVE, atol=1e-9)
    np.testing.assert_allclose(back.flux[0], expected, rtol=1e-6)
    with fits.open(out) as f:
        assert f["SPECTRUM"].columns["wave"].unit == "nm"
        assert len(f[pfsio.CHECK_HDU].data) == 1
        np.testing.assert_allclose(f["SPECTRUM"].data["flux_input"], flux[0], rtol=1e-6)
        if not OWN_SIGMA:  # else sigma_denoised**2
            np.testing.assert_allclose(f["SPECTRUM"].data["variance"], sigma[0] ** 2, rtol=1e-5)
        assert (f["SPECTRUM"].data["variance"] > 0).all()
    # an image with a linear WCS (FITS convention); no noise column -> this model refuses
    img = tmp_path / "star_img.fits"
    h = fits.Header()
    h["CTYPE1"], h["CUNIT1"], h["CRPIX1"] = "WAVE", "nm", 1.0
    h["CRVAL1"], h["CDELT1"] = float(WAVE[0]), float(WAVE[1] - WAVE[0])
    fits.PrimaryHDU(flux[0].astype(np.float32), header=h).writeto(img)
    s = pfsio.read(img)
    np.testing.assert_allclose(s.wave[0], WAVE, atol=1e-9)
    assert _denoise(run, ["--spectrum", img, "--out", tmp_path / "img_den.fits"]) == 2
    assert not (tmp_path / "img_den.fits").exists()


def test_csv_to_fits_writes_fits(run, tmp_path):
    """``--out star.fits`` used to write CSV text under that name."""
    flux, sigma = _spectra(run, 1)
    src = tmp_path / "star.csv"
    np.savetxt(src, np.c_[WAVE, flux[0], sigma[0]], delimiter=",", header="wave,flux,sigma",
               comments="")
    out = tmp_path / "star.fits"
    assert _denoise(run, ["--spectrum", src, "--out", out]) == 0
    with fits.open(out) as f:  # real FITS
        assert f["SPECTRUM"].data["flux"].shape == (4096,)
        assert f[0].header["SDVARSRC"] == VARSRC
    csv_out = tmp_path / "star_den.csv"  # .csv stays CSV
    assert _denoise(run, ["--spectrum", src, "--out", csv_out]) == 0
    assert csv_out.read_text().startswith("wave,flux,flux_denoised")


def _bad_files(tmp_path, flux, sigma):
    mask = np.zeros(flux.shape, np.uint32)
    var = sigma**2
    files = {
        "no COVAR": (write_fiber_file(tmp_path / "pfsArm-000001-m1.fits", WAVE, flux, var,
                                      mask, [1, 2], covar=False), [], "no variance"),
        "zero variance": (write_fiber_file(tmp_path / "pfsArm-000002-m1.fits", WAVE, flux,
                                           0 * var, mask, [1, 2]), [], "no variance"),
        "FLUX is a table": (write_fiber_file(
            tmp_path / "pfsArm-000003-m1.fits", WAVE, flux, var, mask, [1, 2],
            flux_hdu=fits.BinTableHDU.from_columns([fits.Column("x", "E", array=[1.0])],
                                                   name="FLUX")), [], "HDU FLUX is a"),
        "unknown arm": (write_fiber_file(tmp_path / "pfsArm-000004-x1.fits", WAVE, flux, var,
                                         mask, [1, 2], arm="x"), [], "arm 'x' is not a PFS"),
        "LR arm": (write_fiber_file(tmp_path / "pfsArm-000005-r1.fits", WAVE, flux, var,
                                    mask, [1, 2], arm="r"), [], "low-resolution red arm"),
        "missing fiber": (write_fiber_file(tmp_path / "pfsArm-000006-m1.fits", WAVE, flux, var,
                                           mask, [1, 2]), ["--fiber-id", "9"],
                          "fiberId 9 is not in"),
        "short range": (write_fiber_file(tmp_path / "pfsMerged-000007.fits",
                                         np.linspace(720, 880, 4096), flux, var, mask, [1, 2]),
                        [], "does not cover the model's range"),
        "air": (write_object_file(tmp_path / "pfsObject-00001-00002-1,1-0000000000000abd-001-"
                                  "0x0000000000000001.fits", WAVE, flux[0], var[0], mask[0],
                                  ctype="AWAV"), [], "in air"),
    }
    plain = tmp_path / "air_table.fits"
    t = fits.BinTableHDU.from_columns([fits.Column("wave", "D", array=WAVE),
                                       fits.Column("flux", "E", array=flux[0]),
                                       fits.Column("sigma", "E", array=sigma[0])])
    t.header["AIRORVAC"] = "air"
    t.writeto(plain)
    files["air table"] = (plain, [], "in air")
    return files


def test_bad_files_get_one_line_and_nothing_written(run, tmp_path, capsys):
    flux, sigma = _spectra(run, 2)
    for what, (src, extra, message) in _bad_files(tmp_path, flux, sigma).items():
        out = tmp_path / "out" / f"{what}.fits"
        out.parent.mkdir(exist_ok=True)
        assert _denoise(run, ["--spectrum", src, "--out", out, *extra]) == 2, what
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (what, err)
        assert not list(out.parent.iterdir()), what  # nothing, not even a temporary


# --------------------------------------------------------------------------- resampling


def _exact_average(src, f, dst):
    """Independent exact computation: the integral of the piecewise-constant density between
    output edges, from its cumulative integral (exact, linear between input edges)."""
    se, de = rs.edges(src), rs.edges(dst)
    cum = np.concatenate([[0.0], np.cumsum(f * np.diff(se))])
    return np.diff(np.interp(de, se, cum)) / np.diff(de)


def test_resample_is_flux_conserving_and_propagates_covariance():
    rng = np.random.default_rng(3)
    src = np.sort(rng.uniform(700, 900, 700))
    dst = np.linspace(720, 880, 311) + rng.uniform(-0.05, 0.05, 311)
    f = rng.uniform(0.2, 1.0, src.size)
    out, cov, bad = rs.resample(src, f, dst, covar=np.vstack([rng.uniform(0.01, 0.1, src.size),
                                                               rng.uniform(0, 0.004, src.size)]))
    np.testing.assert_allclose(out, _exact_average(src, f, dst), rtol=1e-12)
    assert not bad.any()
    # covariance: A C A^T from a dense operator built by the exact integration above
    a = np.stack([_exact_average(src, np.eye(src.size)[i], dst) for i in range(src.size)], 1)
    c_in = rs.covariance_matrix(np.vstack([np.full(src.size, 0.05),
                                           np.full(src.size, 0.01)])).toarray()
    _, cov2, _ = rs.resample(src, f, dst, covar=np.vstack([np.full(src.size, 0.05),
                                                           np.full(src.size, 0.01)]))
    full = a @ c_in @ a.T
    for d in range(3):
        np.testing.assert_allclose(cov2[d, : dst.size - d], np.diag(full, d), rtol=1e-9,
                                   atol=1e-15)
    # counts per pixel: the total is conserved
    counts = rng.uniform(10, 20, src.size)
    inside = (src > 721) & (src < 879)
    lo, hi = src[inside][[0, -1]]
    grid = np.linspace(lo, hi, 200)
    got, _, _ = rs.resample(src, counts, grid, per_pixel=True)
    se, ge = rs.edges(src), rs.edges(grid)
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    np.testing.assert_allclose(got.sum(), np.interp(ge[-1], se, cum) - np.interp(ge[0], se, cum),
                               rtol=1e-12)
    # bins not entirely covered, and those touching an untrusted pixel, are flagged
    _, _, flag = rs.resample(src, f, np.linspace(690, 910, 50), bad=np.arange(src.size) == 300)
    assert flag[0] and flag[-1] and flag.sum() < 10


def test_resample_agrees_with_spectres():
    spectres = pytest.importorskip("spectres", reason="spectres not installed (optional check)")
    rng = np.random.default_rng(4)
    src = np.sort(rng.uniform(700, 900, 500))
    dst = np.linspace(720, 880, 300)
    f, e = rng.random(500), 0.1 + rng.random(500)
    out, cov, _ = rs.resample(src, f, dst, covar=e[None] ** 2)
    ref, ref_e = spectres.spectres(dst, src, f, spec_errs=e, verbose=False)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(cov[0]), ref_e, rtol=1e-12)


# --------------------------------------------------------------------------- the sample set


def test_sample_files_denoise_and_match_the_store(run, tmp_path, capsys):
    """Every fiber of the sample pfsArm and pfsMerged and every pfsObject, through the CLI into
    FITS read back with the README's snippets; the same spectra from a Zarr store made from the
    same arrays give the same result; |R| against the truth is printed."""
    folder = shared_file(*SAMPLES)
    truth = np.load(shared_file(*SAMPLES, "truth.npz"))
    n = truth["flux"].shape[0]
    # the store: the same arrays, through the dataset writer
    store = tmp_path / "same.zarr"
    schema.create_dataset_store(store, n, n, truth["wave"], attrs={"config_hash": "sample"})
    schema.write_chunk(store, 0, n, {"flux": truth["flux"], "flux_clean": truth["flux_clean"],
                                     "sigma": truth["sigma"], "mask": truth["mask_store"]})
    schema.finalize_dataset(store)
    den_store = tmp_path / "same_den.zarr"
    infer.denoise_dataset(run[0], store, den_store, device="cpu", progress=False)
    from_store = xr.open_zarr(den_store)[infer.DENOISED_VAR].values.astype(np.float64)
    clean = truth["flux_clean"].astype(np.float64)

    def rel(x, rows):
        return float(np.mean(np.abs(x / clean[rows] - 1)))

    for name in ("pfsArm-100077-m1.fits", "pfsMerged-100077.fits"):
        out = tmp_path / f"den-{name}"
        assert _denoise(run, ["--spectrum", folder / name, "--out", out]) == 0
        rows = np.arange(n)
        got = np.empty((n, 4096))
        for k, fid in enumerate(truth["fiberId"]):
            wl, f, var, m, planes, good, header = readme_fiber(out, int(fid))
            np.testing.assert_array_equal(wl, truth["wave"])
            np.testing.assert_array_equal(m, truth["mask_pfs"][k])
            if not OWN_SIGMA:
                np.testing.assert_array_equal(var, truth["sigma"][k] ** 2)
            got[k] = f
        with fits.open(out) as f:
            assert f["CONFIG"].data["visit"][0] == truth["visit"][0]
        np.testing.assert_allclose(got, from_store, rtol=1e-5, atol=1e-7)
        with capsys.disabled():  # the numbers, for -s
            print(f"\n{name}: mean |R| {100 * rel(got, rows):.3f} % (from the store "
                  f"{100 * rel(from_store, rows):.3f} %, noisy "
                  f"{100 * rel(truth['flux'].astype(float), rows):.3f} %)")
    for k, name in enumerate(map(str, truth["object_file"])):
        out = tmp_path / f"den-{name}"
        assert _denoise(run, ["--spectrum", folder / name, "--out", out]) == 0
        wl, f, var, m, planes, header = readme_object(out)
        row = int(truth["object_index"][k])
        np.testing.assert_allclose(wl, truth["wave"], atol=1e-9)
        scale = float(truth["scale_nJy"][row])
        np.testing.assert_allclose(f / scale, from_store[row], rtol=2e-4, atol=1e-6)
        with fits.open(out) as h:
            assert h["OBSERVATIONS"].data["fiberId"][0] == truth["fiberId"][row]
            np.testing.assert_allclose(h["FLUX_TABLE"].data["flux"], f)
    capsys.readouterr()
    # the other sample products: one line each
    for name, message in (("pfsArm-100177-r1.fits", "low-resolution red arm"),
                          ("pfsCalibrated-100077.fits", "not read by specdenoise")):
        assert _denoise(run, ["--spectrum", folder / name, "--out", tmp_path / "x.fits"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x.fits").exists()


def test_untrusted_pixels_do_not_steer_the_denoiser(run, tmp_path):
    """A masked pixel's value is replaced before denoising: two files that differ only in a
    masked pixel give the same output."""
    flux, sigma = _spectra(run, 1)
    mask = np.zeros((1, 4096), np.uint32)
    mask[0, 1000:1004] = 1 << 0  # BAD
    a, b = flux.copy(), flux.copy()
    b[0, 1000:1004] = 50.0
    fa = write_fiber_file(tmp_path / "pfsArm-000010-m1.fits", WAVE, a, sigma**2, mask, [1])
    fb = write_fiber_file(tmp_path / "pfsArm-000011-m1.fits", WAVE, b, sigma**2, mask, [1])
    for src in (fa, fb):
        assert _denoise(run, ["--spectrum", src, "--out", tmp_path / f"o-{src.name}"]) == 0
    oa = readme_fiber(tmp_path / f"o-{fa.name}", 1)[1]
    ob = readme_fiber(tmp_path / f"o-{fb.name}", 1)[1]
    np.testing.assert_array_equal(oa, ob)


def test_the_fits_check_table_has_every_check_denoise_computes():
    """pfsio stays free of torch, so it names the checks itself: the same names, in the
    order :class:`specdenoise.train.infer.DenoisedBlock` gives them."""
    assert tuple(name for name, _fmt, _meaning in pfsio.CHECK_COLUMNS) == infer.CHECK_VARS
