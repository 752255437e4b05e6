"""The transfer benchmark's metrics (benchmarks/transfer.py) on spectra whose answers are
known: a perfect denoiser, one that smooths every line away, one that halves them."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import transfer  # noqa: E402

WAVE = np.linspace(710.0, 885.0, 4096)


def spectra(n=3):
    """Continuum 1 with the Ca II triplet and a few weaker lines (depths 0.2-0.6)."""
    f = np.ones((n, WAVE.size))
    for c, d in zip((*transfer.CA_II, 760.0, 800.0, 820.0), (0.6, 0.5, 0.55, 0.3, 0.2, 0.25),
                    strict=True):
        f *= 1 - d * np.exp(-0.5 * ((WAVE - c) / 0.08) ** 2)
    return f


def test_perfect_smoothed_and_halved_denoisers():
    clean = spectra()
    m = transfer.metrics(WAVE, clean, clean.copy())
    assert np.allclose(m["R"], 0) and np.allclose(m["kept"], 1) and np.allclose(m["ew_err"], 0)
    m = transfer.metrics(WAVE, clean, np.ones_like(clean))  # every line smoothed away
    assert np.allclose(m["kept"], 0, atol=1e-6) and np.allclose(m["ew_err"], 100, rtol=1e-6)
    assert m["R_line"].min() > 5 * m["R"].max()  # the error sits in the lines
    half = 1 - 0.5 * (1 - clean)  # every line half as deep
    m = transfer.metrics(WAVE, clean, half)
    assert m["kept"] == pytest.approx(0.5, abs=0.01)
    assert m["ew_err"] == pytest.approx(50, abs=1)


def test_ca_windows_follow_the_radial_velocity():
    rv = np.array([0.0, 400.0])
    shifted = np.stack([np.interp(WAVE, WAVE * (1 + v / transfer.C_KM_S), spectra(1)[0])
                        for v in rv])
    cont = transfer.continuum(shifted)
    ew = transfer.equivalent_widths(WAVE, shifted, cont, rv)
    np.testing.assert_allclose(ew[1], ew[0], rtol=0.02)
    assert transfer.equivalent_widths(WAVE, shifted, cont)[1].max() < 0.2 * ew[0].min()


# ---- every real model spectrum of ../shared/data, end to end on a tiny trained network ---------

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _need_data():
    if not (DATA / "bosz2024").is_dir() or not (DATA / "reference_spectra").is_dir():
        pytest.skip(f"reference data {DATA} is absent")


def test_survey_names_every_real_model_and_why():
    _need_data()
    models = {m.name: m for m in transfer.survey(DATA)}
    files = sorted(p.name for p in (DATA / "bosz2024").glob("bosz2024_mp_*"))
    files += sorted(p.name for p in (DATA / "reference_spectra").iterdir())
    for f in files:  # every model spectrum file is accounted for
        assert any(f in m.source for m in models.values()), f
    bosz = [m for m in models.values() if m.kind == "bosz"]
    assert len(bosz) == 2 and all(m.usable for m in bosz)
    # R = 5000 is refused with the PFS LSF and accepted with the wider one: measured by the LSF
    assert all(m.lsf_fwhm_pix == transfer.WIDE_FWHM_PIX for m in bosz)
    assert transfer.lsf_for(5000.0) == transfer.WIDE_FWHM_PIX
    assert transfer.lsf_for(None) == transfer.PFS_FWHM_PIX
    phx = models["phoenix_t3900_g4.5"]
    assert phx.usable and phx.compare_nm[0] == transfer.PHOENIX_FROM_NM
    calspec = [m for m in models.values() if m.name.startswith("calspec_")]
    assert {m.params["teff"] for m in calspec} == {5772.0, 9600.0} and len(calspec) == 3
    for m in calspec:  # about 2 nm (Sun) and 0.5-1.7 nm (Vega) against the PFS's 0.14 nm
        assert not m.usable and "resolution too low" in m.why
    assert all("outside the twin grid" in m.why for m in calspec if m.params["teff"] == 9600)


def _shape_dev(q):
    """Mean |q / its median - 1| per spectrum (the level is each one's magnitude normalisation)."""
    return float(np.mean(np.abs(q / np.median(q, axis=1, keepdims=True) - 1)))


@pytest.mark.slow
def test_every_usable_real_model_on_a_tiny_network(tmp_path, monkeypatch):
    """The benchmark on its own pairs (--data) with a tiny trained U-Net and a small built-in
    twin grid: a table for every usable star, twins with the same draws, the PHOENIX stand-in
    below 781 nm equal to its twin and only the PHOENIX part compared; a second run reuses
    every store and gives the same table."""
    _need_data()
    import csv

    import xarray as xr
    from conftest import train_tiny_run

    from specdenoise import stage_grid

    monkeypatch.setenv("SPECDENOISE_CACHE", str(tmp_path / "cache"))
    run, _ = train_tiny_run(tmp_path)
    twin = stage_grid.build_builtin_grid(
        tmp_path / "twin.zarr", progress=False,
        settings={"teff": {"values": [3900.0, 4750.0, 6000.0]}, "logg": {"values": [4.0, 4.5]},
                  "m_h": {"values": [0.0]}, "a_m": {"values": [0.0]}})
    argv = ["--model", str(run), "--data", str(DATA), "--twin-grid", str(twin), "--n", "4",
            "--work", str(tmp_path / "w"), "--out", str(tmp_path / "t.csv")]
    rows = transfer.main(argv)
    usable = [m for m in transfer.survey(DATA) if m.usable]
    assert {r["star"] for r in rows} == {m.name for m in usable}
    assert sum(r["n"] for r in rows) == 4 * len(usable)
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float):
                assert np.isfinite(v), (k, r)
    models = list(csv.DictReader(open(tmp_path / "t_models.csv")))
    assert len(models) == len(transfer.survey(DATA))
    w = tmp_path / "w"
    for m in usable:
        real, tw = (xr.open_zarr(w / f"{k}_{m.name}.zarr") for k in ("real", "twin"))
        np.testing.assert_array_equal(real["rv"].values, tw["rv"].values)
        np.testing.assert_array_equal(real["mag"].values, tw["mag"].values)
        # the same noise draws: the noise over sigma is the same normal deviate
        z_real = ((real["flux"] - real["flux_clean"]) / real["sigma"]).values
        z_twin = ((tw["flux"] - tw["flux_clean"]) / tw["sigma"]).values
        good = (real["mask"].values == 0) & (tw["mask"].values == 0)
        assert np.corrcoef(z_real[good], z_twin[good])[0, 1] > 0.99
        if m.kind == "phoenix":  # the stand-in is the twin's spectrum; above it, PHOENIX
            wave = real["wave"].values
            ratio = real["flux_clean"].values / tw["flux_clean"].values

            below = _shape_dev(ratio[:, wave < transfer.JOIN_NM - 3.0])
            assert below < 0.01
            assert _shape_dev(ratio[:, wave > transfer.PHOENIX_FROM_NM]) > 3 * below
    first = (tmp_path / "t.csv").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in w.iterdir() if not p.name.startswith(".")}
    transfer.main(argv)
    assert (tmp_path / "t.csv").read_text() == first
    assert {p: p.stat().st_mtime_ns for p in w.iterdir() if not p.name.startswith(".")} == stamps
