"""Inference: arrays, whole datasets (coordinates kept) and FITS/CSV spectrum files."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import WAVE, make_dataset

from specdenoise import SpecdenoiseError, cli
from specdenoise.train import infer, loop
from specdenoise.train.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_denoise_array_is_scale_free(run):
    model, config = load_model(run[0], device="cpu")
    assert config["normalisation"]["median"] == 0.5
    g = xr.open_zarr(run[1])
    flux = g["flux"].values[:5]
    a = infer.denoise_array(model, flux, batch_size=2)
    b = infer.denoise_array(model, 1e-17 * flux, batch_size=3)  # physical units
    assert a.shape == (5, 4096) and a.dtype == np.float32
    np.testing.assert_allclose(b, 1e-17 * a, rtol=1e-5)
    # batch size changes the summation order of convolutions: equal to float precision
    np.testing.assert_allclose(infer.denoise_array(model, flux[0]), a[0], rtol=1e-6)
    bad = flux.copy()
    bad[3, 7] = np.nan
    with pytest.raises(SpecdenoiseError, match="spectrum 3 has NaN"):
        infer.denoise_array(model, bad)
    with pytest.raises(SpecdenoiseError, match="expects"):
        infer.denoise_array(model, flux[:, :100])


def test_denoise_dataset_keeps_coordinates(run, tmp_path, capsys):
    out = tmp_path / "den.zarr"
    assert cli.main(["denoise", "--run", str(run[0]), "--data", str(run[1]), "--out",
                     str(out), "--batch-size", "6", "--device", "cpu"]) == 0
    src, den = xr.open_zarr(run[1]), xr.open_zarr(out)
    assert den.attrs["complete"] and den.attrs["specdenoise_kind"] == infer.DENOISED_KIND
    assert den[infer.DENOISED_VAR].shape == (20, 4096)
    np.testing.assert_array_equal(den["wave"].values, src["wave"].values)
    np.testing.assert_array_equal(den["teff"].values, src["teff"].values)
    np.testing.assert_array_equal(den["snr"].values, src["snr"].values)
    model, _ = load_model(run[0], device="cpu")
    np.testing.assert_allclose(den[infer.DENOISED_VAR].values[9:12],
                               infer.denoise_array(model, src["flux"].values[9:12]), rtol=1e-6)
    assert not list(tmp_path.glob(".den.zarr.tmp*"))
    assert cli.main(["denoise", "--run", str(run[0]), "--data", str(run[1]), "--out",
                     str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_denoise_spectrum_files(run, tmp_path, capsys):
    from astropy.io import fits

    flux = xr.open_zarr(run[1])["flux"].values[0]
    model, _ = load_model(run[0], device="cpu")
    expected = infer.denoise_array(model, flux)

    csv_in = tmp_path / "star.csv"
    np.savetxt(csv_in, np.c_[WAVE, flux], delimiter=",", header="wave,flux", comments="")
    fits_in = tmp_path / "star.fits"
    fits.BinTableHDU.from_columns([fits.Column("WAVELENGTH", "D", array=WAVE),
                                   fits.Column("FLUX", "E", array=flux)]).writeto(fits_in)
    img_in = tmp_path / "img.fits"
    fits.PrimaryHDU(flux).writeto(img_in)
    for src in (csv_in, fits_in, img_in):
        out = tmp_path / f"{src.stem}{src.suffix[1:]}_out.csv"
        assert cli.main(["denoise", "--run", str(run[0]), "--spectrum", str(src), "--out",
                         str(out)]) == 0
        table = np.genfromtxt(out, delimiter=",", names=True)
        np.testing.assert_allclose(table["wave"], WAVE, atol=1e-6)
        np.testing.assert_allclose(table["flux_denoised"], expected, rtol=1e-6)

    short = tmp_path / "short.csv"
    np.savetxt(short, flux[:1000])
    assert cli.main(["denoise", "--run", str(run[0]), "--spectrum", str(short), "--out",
                     str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has 1000 pixels; the model expects 4096" in err and "\n" not in err
    shifted = tmp_path / "air.csv"
    np.savetxt(shifted, np.c_[WAVE - 0.2, flux], delimiter=",")
    assert cli.main(["denoise", "--run", str(run[0]), "--spectrum", str(shifted), "--out",
                     str(tmp_path / "o.csv")]) == 2
    assert "wavelengths differ" in capsys.readouterr().err
    assert cli.main(["denoise", "--run", str(tmp_path), "--spectrum", str(csv_in), "--out",
                     str(tmp_path / "o.csv")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_unknown_dataset_for_denoise(run, tmp_path):
    nodata = make_dataset(tmp_path / "noflux.zarr", n=4, chunk=4, drop=("flux",))
    with pytest.raises(SpecdenoiseError, match="lacks variable"):
        infer.denoise_dataset(run[0], nodata, tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


@pytest.fixture(scope="module")
def sigma_run(tmp_path_factory):
    """A tiny U-Net that takes sigma as a second input channel."""
    d = tmp_path_factory.mktemp("infer_sigma")
    data = make_dataset(d / "data.zarr", n=12, chunk=6)
    cfg = loop.make_config(data, None, d / "run", model="unet", preset="tiny",
                           model_cfg={"depth": 2, "filters": 4, "in_channels": 2}, epochs=1,
                           batch_size=6, workers=0, device="cpu")
    loop.train(cfg)
    return d / "run", data


def test_spectrum_files_carry_their_noise_to_a_sigma_model(sigma_run, tmp_path, capsys):
    from astropy.io import fits

    g = xr.open_zarr(sigma_run[1])
    flux, sigma = g["flux"].values[0], g["sigma"].values[0]
    model, _ = load_model(sigma_run[0], device="cpu")
    expected = infer.denoise_array(model, flux, sigma=sigma)
    # the model really uses sigma: another sigma gives another answer
    assert not np.allclose(infer.denoise_array(model, flux, sigma=3 * sigma), expected)

    ivar = 1.0 / sigma.astype(np.float64) ** 2
    files = {"sigma.csv": ("wave,flux,error", np.c_[WAVE, flux, sigma]),
             "ivar.csv": ("wave,flux,ivar", np.c_[WAVE, flux, ivar]),
             "var.csv": ("flux,variance", np.c_[flux, sigma.astype(np.float64) ** 2]),
             "bare.txt": ("", np.c_[WAVE, flux, sigma])}
    for name, (header, table) in files.items():
        np.savetxt(tmp_path / name, table, delimiter="," if header else " ", header=header,
                   comments="")
    fits_in = tmp_path / "star.fits"
    fits.BinTableHDU.from_columns([fits.Column("WAVE", "D", array=WAVE),
                                   fits.Column("FLUX", "E", array=flux),
                                   fits.Column("IVAR", "D", array=ivar)]).writeto(fits_in)
    for src in [*(tmp_path / n for n in files), fits_in]:
        out = tmp_path / f"{src.stem}_{src.suffix[1:]}_out.csv"
        assert cli.main(["denoise", "--run", str(sigma_run[0]), "--spectrum", str(src),
                         "--out", str(out)]) == 0, src
        table = np.genfromtxt(out, delimiter=",", names=True)
        np.testing.assert_allclose(table["flux_denoised"], expected, rtol=1e-4, atol=1e-6,
                                   err_msg=str(src))

    # a pixel without information (ivar 0) is read, not refused; all-zero ivar is refused
    ivar0 = ivar.copy()
    ivar0[100:110] = 0
    dead = tmp_path / "dead.csv"
    np.savetxt(dead, np.c_[flux, ivar0], delimiter=",", header="flux,ivar", comments="")
    assert cli.main(["denoise", "--run", str(sigma_run[0]), "--spectrum", str(dead),
                     "--out", str(tmp_path / "dead_out.csv")]) == 0
    np.savetxt(dead, np.c_[flux, 0 * ivar], delimiter=",", header="flux,ivar", comments="")
    assert cli.main(["denoise", "--run", str(sigma_run[0]), "--spectrum", str(dead),
                     "--out", str(tmp_path / "dead_out2.csv")]) == 2
    assert "no pixel with a usable ivar" in capsys.readouterr().err
    assert not (tmp_path / "dead_out2.csv").exists()

    # no noise in the file: one clear message, no output
    nonoise = tmp_path / "nonoise.csv"
    np.savetxt(nonoise, np.c_[WAVE, flux], delimiter=",", header="wave,flux", comments="")
    assert cli.main(["denoise", "--run", str(sigma_run[0]), "--spectrum", str(nonoise),
                     "--out", str(tmp_path / "n_out.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has none: add a 'sigma'" in err and "\n" not in err
    assert not (tmp_path / "n_out.csv").exists()
