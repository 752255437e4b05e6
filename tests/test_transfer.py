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
