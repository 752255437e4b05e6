"""BOSZ readers (simulate/bosz.py) and the parallel importer (pipeline/stage_grid.py).

BOSZ 2017 files are written here, small (690-910 nm) but in the real formats: FITS with HDU 1
columns Wavelength/SpecificIntensity/Continuum and bzip2 ASCII, wavelengths in Å on SYNTHE's log
grid printed to 3 decimals. BOSZ 2024 tests read the two real spectra in ../shared/data.
"""

from __future__ import annotations

import bz2
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate import bosz
from specdenoise.simulate.grids import open_grid, partial_path
from specdenoise.stage_grid import import_grid, plan_grid, scan_dir

BOSZ2024 = Path(__file__).resolve().parents[2] / "shared" / "data" / "bosz2024"
needs_bosz2024 = pytest.mark.skipif(
    not (BOSZ2024 / "bosz2024_wave_r5000.txt").is_file(),
    reason=f"real BOSZ 2024 spectra not found in {BOSZ2024}",
)


def import_bosz(src_dir, out, **kwargs):
    return import_grid("bosz", src_dir, out, **kwargs)


def scan_bosz_dir(src_dir):
    return scan_dir(src_dir, "bosz")


# --------------------------------------------------------------------------- 2017 test files


def _code(value: float) -> str:
    """Value in dex -> BOSZ 2017 name code (×10, rounded half up: 0.25 -> p03)."""
    return ("m" if value < 0 else "p") + f"{int(abs(value) * 10 + 0.5):02d}"


def name2017(teff, logg, m_h=0.0, a_m=0.0, c_m=0.0, res=5000, ext="fits") -> str:
    return (
        f"am{_code(m_h)}c{_code(c_m)}o{_code(a_m)}t{teff:d}g{round(logg * 10):02d}"
        f"v20modrt0b{res}rs.{ext}"
    )


def synthe_wave_angstrom(res: int, lo_nm=690.0, hi_nm=910.0) -> np.ndarray:
    """SYNTHE's R=300000 grid (nm = ratio**j), every 300000/(2R)-th point, in Å."""
    ln_ratio = math.log1p(1 / 300000)
    k = 300000 // (2 * res)
    j = np.arange(math.ceil(math.log(lo_nm) / ln_ratio), math.log(hi_nm) / ln_ratio, k)
    return 10.0 * np.exp(j * ln_ratio)


def level(teff, logg, m_h=0.0, a_m=0.0, c_m=0.0) -> float:
    """A flux level unique to each node, so tests can see which spectrum landed where."""
    return teff + 100 * logg + 10 * m_h + 3 * a_m + c_m


def spectrum2017(wave_a, teff, logg, m_h=0.0, a_m=0.0, c_m=0.0):
    cont = np.full(wave_a.size, level(teff, logg, m_h, a_m, c_m))
    flux = cont * (1 - 0.5 * np.exp(-0.5 * ((wave_a - 8500.0) / 1.0) ** 2))
    return flux, cont


def write2017(folder: Path, teff, logg, m_h=0.0, a_m=0.0, c_m=0.0, res=5000, ext="fits"):
    """Write one BOSZ 2017 file (``fits``, ``asc`` or ``asc.bz2``); returns its path."""
    from astropy.io import fits

    wave = np.round(synthe_wave_angstrom(res), 3)  # as printed in the archive files
    flux, cont = spectrum2017(wave, teff, logg, m_h, a_m, c_m)
    path = folder / name2017(teff, logg, m_h, a_m, c_m, res, ext)
    if ext == "fits":
        cols = [
            fits.Column(name=n, format="D", array=a)
            for n, a in (("Wavelength", wave), ("SpecificIntensity", flux), ("Continuum", cont))
        ]
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    else:
        text = "".join(
            f"{w:.3f} {f:.8e} {c:.8e}\n" for w, f, c in zip(wave, flux, cont, strict=True)
        )
        opener = bz2.open if ext.endswith("bz2") else open
        with opener(path, "wt") as fh:
            fh.write(text)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture
def grid2017(tmp_path):
    """A 2x2x2 (teff, logg, c_m) BOSZ 2017 grid with one node missing, mixed formats."""
    src = tmp_path / "bosz2017"
    (src / "sub").mkdir(parents=True)
    nodes = [(t, g, c) for t in (5000, 5250) for g in (4.0, 4.5) for c in (0.0, 0.25)]
    missing = (5250, 4.5, 0.25)
    for i, (t, g, c) in enumerate(nodes):
        if (t, g, c) != missing:
            folder = src / "sub" if i % 2 else src
            write2017(folder, t, g, c_m=c, ext="fits" if i % 3 else "asc.bz2")
    return src, nodes, missing


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


# --------------------------------------------------------------------------- names


def test_parse_2017_names():
    f = bosz.parse_bosz_name("amp03cp00op00t5750g45v20modrt0b5000rs.fits")
    assert f.source == "bosz2017" and f.fmt == "fits" and f.resolution == 5000
    assert f.params == {"teff": 5750.0, "logg": 4.5, "m_h": 0.25, "a_m": 0.0, "c_m": 0.0}
    f = bosz.parse_bosz_name("/x/amm08cm05op05t12500g10v20modrt0b20000rs.asc.bz2")
    assert f.params == {"teff": 12500.0, "logg": 1.0, "m_h": -0.75, "a_m": 0.5, "c_m": -0.5}
    assert f.fmt == "asc.bz2" and f.vturb == 2.0
    codes = {"m25": -2.5, "m23": -2.25, "m18": -1.75, "m13": -1.25, "p00": 0.0, "p08": 0.75}
    for code, value in codes.items():
        assert (
            bosz.parse_bosz_name(f"am{code}cp00op00t3500g00v20modrt0b500rs.asc").params["m_h"]
            == value
        )
    assert bosz.parse_bosz_name("amp03cp00op00t5750g45v20modrt0b5000rs.txt") is None
    assert bosz.parse_bosz_name("bosz2024_wave_r5000.txt") is None


def test_parse_2024_names():
    f = bosz.parse_bosz_name("bosz2024_ms_t3750_g-0.5_m-1.25_a+0.25_c-0.50_v4_r50000_resam.txt.gz")
    assert f.source == "bosz2024" and f.model == "ms" and f.resolution == 50000
    assert f.params == {"teff": 3750.0, "logg": -0.5, "m_h": -1.25, "a_m": 0.25, "c_m": -0.5}
    assert f.vturb == 4.0


# --------------------------------------------------------------------------- wavelengths


@pytest.mark.parametrize("res", [500, 5000, 50000])
def test_rebuild_2017_wave_from_3_decimals(res):
    exact = synthe_wave_angstrom(res)
    printed = np.round(exact, 3)
    rebuilt = bosz.rebuild_bosz2017_wave(printed, res)
    np.testing.assert_allclose(rebuilt, exact / 10, rtol=1e-12)
    assert np.abs(printed / 10 - exact / 10).max() > 1e-5  # the column itself is coarser
    # a column in nm is recognised too
    np.testing.assert_allclose(
        bosz.rebuild_bosz2017_wave(np.round(exact / 10, 3), res), exact / 10, rtol=1e-12
    )


def test_rebuild_2017_wave_rejects_wrong_grid():
    printed = np.round(synthe_wave_angstrom(5000), 3)
    with pytest.raises(SpecdenoiseError, match="x.fits: .*SYNTHE log grid for R=2000"):
        bosz.rebuild_bosz2017_wave(printed, 2000, "x.fits")
    with pytest.raises(SpecdenoiseError, match="does not match"):
        bosz.rebuild_bosz2017_wave(np.linspace(6900, 9100, 500).round(3), 5000, "x.fits")


def test_air_to_vacuum():
    air = np.array([6562.80, 8542.09, 1500.0])
    vac = bosz.air_to_vacuum(air)
    np.testing.assert_allclose(vac[:2], [6564.61, 8544.44], atol=0.01)
    assert vac[2] == 1500.0  # below 200 nm wavelengths are vacuum already


def test_degrade_gives_requested_fwhm():
    ln_ratio = math.log1p(1 / 300000)
    wave = np.exp(np.arange(math.log(840) / ln_ratio, math.log(860) / ln_ratio) * ln_ratio)
    line = np.exp(-0.5 * (np.log(wave / 850.0) / 1e-7) ** 2)  # much narrower than a pixel
    line /= line.sum()
    out = bosz.output_wave(wave, (845.0, 855.0), 5000)
    broad = bosz.degrade_and_resample(wave, 1 - line, out, 300000, 5000)[0]
    depth = 1 - broad
    half = depth > depth.max() / 2
    fwhm = np.log(out[half][-1] / out[half][0])  # of the pixels above half maximum
    assert abs(fwhm * 5000 - 1) < 1 / 3 + 0.05  # within a pixel (3 per FWHM)
    assert abs(1 / (np.log(out[1] / out[0]) * 5000) - 3) < 1e-6
    sigma = np.sqrt(np.sum(depth * np.log(out / 850.0) ** 2) / depth.sum())
    assert sigma * 2.3548 * 5000 == pytest.approx(1.0, rel=0.03)


# --------------------------------------------------------------------------- 2017 import


def test_import_2017_mixed_formats_and_missing_node(grid2017, tmp_path):
    src, nodes, missing = grid2017
    out = import_bosz(src, tmp_path / "g.zarr", progress=False)
    ds = open_grid(out)
    assert list(ds.flux.dims) == ["teff", "logg", "m_h", "a_m", "c_m", "wave"]
    assert ds.attrs["source"] == "bosz2017" and ds.attrs["resolution"] == 5000
    assert json.loads(ds.attrs["skipped_files"]) == []
    assert json.loads(ds.attrs["settings"])["wave_range_nm"] == [700.0, 900.0]
    wave = ds.wave.values
    assert 700 <= wave[0] < 700.1 and 899.9 < wave[-1] <= 900
    np.testing.assert_allclose(np.diff(np.log(wave)), 30 * math.log1p(1 / 300000), rtol=1e-9)
    for t, g, c in nodes:
        node = ds.sel(teff=t, logg=g, c_m=c).isel(m_h=0, a_m=0)
        assert bool(node.exists) == ((t, g, c) != missing)
        if (t, g, c) != missing:
            # the file's values belong to its own pixels, computed here at the printed wavelengths
            expect_flux, expect_cont = spectrum2017(np.round(wave * 10, 3), t, g, c_m=c)
            np.testing.assert_allclose(node.cont.values, expect_cont * bosz.FLUX_SCALE, rtol=1e-6)
            # the grid pixels are the file's own: no interpolation smoothing of the line
            np.testing.assert_allclose(node.flux.values, expect_flux * bosz.FLUX_SCALE, rtol=1e-6)


def test_import_drops_constant_c_m_and_degrades(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for t in (5000, 5250):
        write2017(src, t, 4.5, m_h=-0.25, ext="asc")
    out = import_bosz(
        src, tmp_path / "g.zarr", wave_range=(800, 880), resolution=2000, progress=False
    )
    ds = open_grid(out)
    assert "c_m" not in ds.dims and ds.sizes["m_h"] == 1 and float(ds.m_h[0]) == -0.25
    assert json.loads(ds.attrs["fixed_params"]) == {"c_m": 0.0, "vturb": 2.0}
    assert ds.attrs["resolution"] == 2000 and ds.attrs["source_resolution"] == 5000
    assert np.log(ds.wave[1] / ds.wave[0]) == pytest.approx(1 / 6000)
    y = (ds.flux / ds.cont).isel(teff=0).squeeze().values
    assert 0.6 < y.min() < 0.9  # the 50 % deep, 1 Å wide line is smeared out at R=2000


def test_bad_file_aborts_naming_it_and_leaves_no_store(grid2017, tmp_path):
    src, _, _ = grid2017
    bad = truncate(next(src.glob("*.asc.bz2")))
    out = tmp_path / "g.zarr"
    with pytest.raises(SpecdenoiseError, match=re.escape(bad.name)) as err:
        import_bosz(src, out, progress=False)
    assert "\n" not in str(err.value)
    assert not out.exists() and not partial_path(out).exists()
    with pytest.raises(SpecdenoiseError, match="does not exist"):
        open_grid(out)


def test_interrupted_import_leaves_no_store(grid2017, tmp_path, monkeypatch):
    src, _, _ = grid2017
    calls = []

    def interrupted(f, wave, resolution=None):
        calls.append(f)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(f, wave, resolution)

    real = bosz.read_resampled
    monkeypatch.setattr(bosz, "read_resampled", interrupted)
    out = tmp_path / "g.zarr"
    with pytest.raises(KeyboardInterrupt):
        import_bosz(src, out, progress=False)
    assert len(calls) == 3 and not out.exists() and not partial_path(out).exists()


def test_skip_bad_lists_file_and_marks_node_missing(grid2017, tmp_path, capsys):
    src, _, _ = grid2017
    bad = truncate(sorted((src / "sub").glob("*.fits"))[0])
    out = import_bosz(src, tmp_path / "g.zarr", skip_bad=True, progress=True)
    ds = open_grid(out)
    skipped = json.loads(ds.attrs["skipped_files"])
    assert [s["file"] for s in skipped] == [str(bad)] and bad.name in skipped[0]["error"]
    p = bosz.parse_bosz_name(bad).params
    assert not bool(ds.exists.sel(teff=p["teff"], logg=p["logg"], c_m=p["c_m"]).squeeze())
    assert ds.exists.sum() == 6
    assert bad.name in capsys.readouterr().err


def test_plan_refuses_mixed_or_duplicate_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write2017(src, 5000, 4.5, ext="fits")
    write2017(src, 5000, 4.5, ext="asc")
    with pytest.raises(SpecdenoiseError, match="same model"):
        plan_grid(scan_bosz_dir(src))
    write2017(src, 5250, 4.5, res=2000, ext="asc")
    with pytest.raises(SpecdenoiseError, match="mixes resolutions"):
        import_bosz(src, tmp_path / "g.zarr", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecdenoiseError, match="no BOSZ"):
        import_bosz(tmp_path / "empty", tmp_path / "h.zarr", progress=False)


def test_existing_store_needs_overwrite(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write2017(src, 5000, 4.5, ext="asc")
    out = import_bosz(src, tmp_path / "g.zarr", progress=False)
    with pytest.raises(SpecdenoiseError, match="--overwrite"):
        import_bosz(src, out, progress=False)
    assert import_bosz(src, out, overwrite=True, progress=False) == out


@pytest.mark.slow
def test_parallel_import_with_client(tmp_path, client):
    src = tmp_path / "src"
    src.mkdir()
    for t in range(5000, 5000 + 250 * 20, 250):
        write2017(src, t, 4.5, ext="fits")
    out = tmp_path / "g.zarr"
    bad = truncate(src / name2017(6000, 4.5), keep=0.9)
    with pytest.raises(SpecdenoiseError, match=re.escape(bad.name)):
        import_bosz(src, out, client=client, progress=False)
    assert not out.exists() and not partial_path(out).exists()
    ds = open_grid(import_bosz(src, out, client=client, skip_bad=True, progress=False))
    assert ds.sizes["teff"] == 20 and int(ds.exists.sum()) == 19
    cont = ds.cont.sel(teff=5250.0).squeeze().values
    np.testing.assert_allclose(cont, level(5250, 4.5) * bosz.FLUX_SCALE, rtol=1e-6)


@pytest.mark.slow
def test_parallel_import_on_own_local_cluster(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for t in range(5000, 5000 + 250 * 18, 250):
        write2017(src, t, 4.5, ext="asc.bz2")
    ds = open_grid(import_bosz(src, tmp_path / "g.zarr", progress=False))
    assert int(ds.exists.sum()) == 18
    np.testing.assert_allclose(
        ds.cont.sel(teff=9000.0).squeeze().values, level(9000, 4.5) * bosz.FLUX_SCALE, rtol=1e-6
    )


# --------------------------------------------------------------------------- real BOSZ 2024


def _line_minimum(wave_a, y, near, half_width=6.0):
    """Wavelength of a line's minimum, refined by a parabola through the lowest 3 pixels."""
    inside = np.abs(wave_a - near) < half_width
    i = int(np.argmin(np.where(inside, y, np.inf)))
    a, b, c = y[i - 1 : i + 2]
    return wave_a[i] + 0.5 * (a - c) / (a - 2 * b + c) * (wave_a[i + 1] - wave_a[i])


@needs_bosz2024
def test_import_real_bosz2024_in_vacuum(tmp_path):
    ds = open_grid(import_bosz(BOSZ2024, tmp_path / "g.zarr", progress=False))
    assert ds.attrs["source"] == "bosz2024" and ds.attrs["wave_medium"] == "vacuum"
    assert ds.teff.values.tolist() == [4750.0, 6000.0] and ds.logg.values.tolist() == [4.0, 4.5]
    assert ds.exists.squeeze().values.tolist() == [[False, True], [True, False]]
    wave_a = ds.wave.values * 10
    assert 7000 <= wave_a[0] and wave_a[-1] <= 9000
    for teff, logg in ((6000.0, 4.0), (4750.0, 4.5)):
        node = ds.sel(teff=teff, logg=logg).squeeze()
        y = (node.flux / node.cont).values
        for vacuum, air in ((8500.36, 8497.90), (8544.44, 8541.94), (8664.52, 8661.99)):
            found = _line_minimum(wave_a, y, vacuum)
            assert abs(found - vacuum) < 0.3, (teff, vacuum, found)
            assert abs(found - air) > 2.0


@needs_bosz2024
def test_truncated_bosz2024_file_is_named(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(BOSZ2024 / "bosz2024_wave_r5000.txt", src)
    for f in sorted(BOSZ2024.glob("bosz2024_mp_*.txt.gz")):
        shutil.copy(f, src)
    bad = truncate(sorted(src.glob("*.txt.gz"))[1], keep=0.6)
    with pytest.raises(SpecdenoiseError, match=re.escape(bad.name)):
        import_bosz(src, tmp_path / "g.zarr", progress=False)
    assert not (tmp_path / "g.zarr").exists()
    (src / "bosz2024_wave_r5000.txt").unlink()
    with pytest.raises(SpecdenoiseError, match="bosz2024_wave_r5000.txt is missing"):
        import_bosz(src, tmp_path / "g.zarr", progress=False)
