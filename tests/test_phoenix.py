"""PHOENIX-ACES HiRes reader (issue 19, point 2): names, the distributed folder layout, units,
header checks, bad files named, and the real PHOENIX slices of ../shared/data."""

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import shared_file

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate import phoenix
from specdenoise.simulate.grids import open_grid
from specdenoise.simulate.readers import READERS, families
from specdenoise.stage_grid import import_grid

SUFFIX = ".PHOENIX-ACES-AGSS-COND-2011-HiRes.fits"


def flux_name(teff, logg, m_h, a_m=0.0):
    """The distributed file name (solar [Fe/H] written -0.0, no .Alpha= part for 0)."""
    z = "-0.0" if m_h == 0 else f"{m_h:+.1f}"
    alpha = "" if a_m == 0 else f".Alpha={a_m:+.2f}"
    return f"lte{teff:05d}-{logg:.2f}{z}{alpha}{SUFFIX}", f"Z{z}{alpha}"


def write_layout(root: Path, nodes, wave_a, flux_of, header=True):
    """HiResFITS/WAVE_...fits and HiResFITS/PHOENIX-ACES-AGSS-COND-2011/Z.../lte...fits."""
    hires = root / "HiResFITS"
    hires.mkdir(parents=True)
    fits.PrimaryHDU(wave_a).writeto(hires / phoenix.WAVE_FILE)
    paths = []
    for teff, logg, m_h, a_m in nodes:
        name, folder = flux_name(teff, logg, m_h, a_m)
        d = hires / "PHOENIX-ACES-AGSS-COND-2011" / folder
        d.mkdir(parents=True, exist_ok=True)
        hdu = fits.PrimaryHDU(flux_of(teff, logg, wave_a).astype(np.float32))
        if header:
            hdu.header.update(PHXTEFF=float(teff), PHXLOGG=float(logg), PHXM_H=float(m_h),
                              PHXALPHA=float(a_m))
        hdu.writeto(d / name)
        paths.append(d / name)
    return hires, paths


def toy_flux(teff, logg, wave_a):
    """erg/s/cm2/cm: a smooth slope by Teff and one line at 8000 Å whose depth follows log g."""
    w = wave_a / 1e4
    return 1e13 * (teff / 4000) * (1 + 0.2 * (w - 0.8)) * (
        1 - 0.1 * logg * np.exp(-0.5 * ((wave_a - 8000.0) / 0.4) ** 2))


WAVE_A = np.arange(6900.0, 9100.0, 0.05)  # linear in Å, as the HiRes optical grid
NODES = [(3900, 4.5, 0.0, 0.0), (3900, 5.0, 0.0, 0.0), (4000, 4.5, 0.0, 0.0),
         (4000, 5.0, 0.0, 0.0)]


def test_registered_and_names_parsed():
    assert "phoenix" in families() and READERS["phoenix-aces"] is phoenix.PHOENIX_ACES
    f = phoenix.parse_phoenix_name("lte03900-4.50-0.0" + SUFFIX)
    assert f.params == {"teff": 3900.0, "logg": 4.5, "m_h": 0.0, "a_m": 0.0, "c_m": 0.0}
    assert str(f.params["m_h"]) == "0.0"  # "-0.0" is solar, not negative zero
    f = phoenix.parse_phoenix_name("lte05800-0.00-1.5.Alpha=+0.40" + SUFFIX)
    assert (f.params["teff"], f.params["logg"], f.params["m_h"], f.params["a_m"]) == (
        5800.0, 0.0, -1.5, 0.4)
    f = phoenix.parse_phoenix_name("lte12000-6.00+1.0.Alpha=-0.20" + SUFFIX)
    assert (f.params["m_h"], f.params["a_m"]) == (1.0, -0.2)
    for other in (phoenix.WAVE_FILE, "lte03900-4.50-0.0.BT-Settl.spec.fits",
                  "bosz2024_mp_t4750_g+4.5_m+0.00_a+0.00_c+0.00_v2_r5000_resam.txt.gz",
                  "lte3900-4.50-0.0" + SUFFIX):
        assert phoenix.parse_phoenix_name(other) is None
    assert flux_name(3900, 4.5, 0.0)[0] == "lte03900-4.50-0.0" + SUFFIX


def test_import_layout_units_and_values(tmp_path):
    hires, _ = write_layout(tmp_path / "src", NODES, WAVE_A, toy_flux)
    g = open_grid(import_grid("phoenix", hires, tmp_path / "g.zarr", wave_range=(700, 900),
                              progress=False))
    assert g.attrs["source"] == "phoenix-aces" and g.attrs["wave_medium"] == "vacuum"
    assert "cont" not in g and bool(g["exists"].all())
    assert g.teff.values.tolist() == [3900.0, 4000.0] and g.logg.values.tolist() == [4.5, 5.0]
    wave = g.wave.values
    lw = np.diff(np.log(wave))
    inside = WAVE_A[(WAVE_A >= 7000) & (WAVE_A <= 9000)]
    assert np.ptp(lw) < 1e-9 * lw.mean()
    assert lw.mean() == pytest.approx(np.min(np.diff(np.log(inside))), rel=1e-6)  # finest step
    for teff in (3900, 4000):
        for logg in (4.5, 5.0):
            got = g["flux"].sel(teff=teff, logg=logg).squeeze().values
            # per nm, at vacuum nm * 10 Å: the written samples, linearly interpolated
            written = toy_flux(teff, logg, WAVE_A).astype(np.float32).astype(np.float64)
            np.testing.assert_allclose(got, 1e-7 * np.interp(wave * 10.0, WAVE_A, written),
                                       rtol=2e-6)
    # the line sits where it was written, 800.0 nm vacuum, as deep as written
    node = g["flux"].sel(teff=3900, logg=5.0).squeeze().values
    i = int(np.argmin(node / (1 + 0.2 * (wave / 1e3 - 0.8))))
    assert abs(wave[i] - 800.0) < 0.003


def test_import_degrades_to_resolution(tmp_path):
    hires, _ = write_layout(tmp_path / "src", NODES[:1], WAVE_A, toy_flux)
    g = open_grid(import_grid("phoenix", hires, tmp_path / "g.zarr", wave_range=(700, 900),
                              resolution=20000, progress=False))
    assert g.attrs["resolution"] == 20000 and g.attrs["source_resolution"] == 500000
    y = g["flux"].squeeze().values
    y = y / (1e-7 * 1e13 * 3900 / 4000 * (1 + 0.2 * (g.wave.values / 1e3 - 0.8)))
    depth = 1 - y.min()
    # a Gaussian line of sigma 0.4 Å broadened to R = 20000 (sigma 0.17 Å at 800 nm): its
    # depth falls by sigma / hypot(sigma, sigma_R)
    sig_r = 8000.0 / 20000 / 2.3548
    assert depth == pytest.approx(0.45 * 0.4 / np.hypot(0.4, sig_r), rel=0.03)


def test_header_disagreeing_with_name_is_named(tmp_path):
    hires, paths = write_layout(tmp_path / "src", NODES[:1], WAVE_A, toy_flux)
    with fits.open(paths[0], mode="update") as h:
        h[0].header["PHXTEFF"] = 4100.0
    with pytest.raises(SpecdenoiseError, match=r"lte03900-4\.50-0\.0.*PHXTEFF"):
        import_grid("phoenix", hires, tmp_path / "g.zarr", progress=False)
    assert not (tmp_path / "g.zarr").exists()


def test_truncated_flux_and_missing_wave_file_are_named(tmp_path):
    hires, paths = write_layout(tmp_path / "src", NODES[:1], WAVE_A, toy_flux)
    fits.PrimaryHDU(np.ones(WAVE_A.size - 10, dtype=np.float32)).writeto(paths[0],
                                                                        overwrite=True)
    with pytest.raises(SpecdenoiseError, match=r"lte03900.*fluxes but WAVE_PHOENIX"):
        import_grid("phoenix", hires, tmp_path / "g.zarr", progress=False)
    (hires / phoenix.WAVE_FILE).unlink()
    with pytest.raises(SpecdenoiseError, match=r"WAVE_PHOENIX-ACES-AGSS-COND-2011\.fits not fou"):
        import_grid("phoenix", hires, tmp_path / "g.zarr", progress=False)
    assert not (tmp_path / "g.zarr").exists()


def read_reference_slices():
    """The two PHOENIX-ACES 3900 K, log g 4.5 slices (µm vacuum, arbitrary flux units)."""
    parts = [np.loadtxt(shared_file("reference_spectra",
                                    f"eniric_{b}_band_test_sample_lte03900-PHOENIX-ACES.dat"))
             for b in ("GAP", "Z")]
    data = np.concatenate(parts)
    return data[:, 0] * 1e4, data[:, 1]  # Å, flux


def test_real_phoenix_slices(tmp_path):
    """The real PHOENIX-ACES 3900 K slices written in the HiRes layout read back: the flux at
    the native wavelengths, and the Ca II triplet lines at their vacuum wavelengths."""
    wave_a, flux = read_reference_slices()
    hires, _ = write_layout(tmp_path / "src", [(3900, 4.5, 0.0, 0.0)], wave_a,
                            lambda *_: flux, header=False)
    g = open_grid(import_grid("phoenix", hires, tmp_path / "g.zarr", wave_range=(781, 929),
                              progress=False))
    wave = g.wave.values
    got = g["flux"].squeeze().values
    want = 1e-7 * np.interp(wave * 10.0, wave_a, flux.astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-3)
    for vac in (8500.36, 8544.44, 8664.52):
        near = np.abs(wave * 10.0 - vac) < 3.0
        found = wave[near][np.argmin(got[near])] * 10.0
        assert abs(found - vac) < 0.3, (vac, found)
