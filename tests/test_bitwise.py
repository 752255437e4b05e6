"""A dataset simulated with the same command and seed is the one the code before the issue-12
reshaping (commit 01fbbaa) simulated.

Two references, one simulation (``tests/simulate_digests.py`` says how each was written):

* ``data/simulate_values.npz``: the numbers themselves, checked on every machine. What only
  integer arithmetic and IEEE-754 basic operations decide (the pixel grid, spectrum numbers,
  exposure settings, the mask) must be equal; what passes through library maths whose last
  bits may change between NumPy/Numba/SciPy/astropy versions or CPUs (``exp``, ``erf``, SIMD
  reductions, the interpolation and LSF sums) must agree to a stated relative tolerance:
  :data:`RTOL_DRAWN` for drawn parameters (one float64 transform, then float32: one float32
  ulp is 6e-8) and :data:`RTOL_SPECTRA` for spectra and what is measured on them (a few hundred
  float32 operations per pixel). A changed formula, seed use or order of draws moves these
  numbers by far more (a different draw changes a parameter by its whole range).
* ``data/simulate_digests.json``: SHA-256 of every decoded variable. Bit for bit, so only where
  the floating-point libraries are the versions that wrote it (skipped elsewhere, saying why).

The values were taken in the digests' environment from code whose digests equal those of
01fbbaa (the ``calib_c*`` coefficients, newer than 01fbbaa, from the code of this test's commit).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from simulate_digests import (
    LIBRARIES,
    SETTINGS,
    SPECTRAL,
    digests_of,
    environment,
    reference_values,
    simulate_small,
)

DIGESTS = Path(__file__).parent / "data" / "simulate_digests.json"
VALUES = Path(__file__).parent / "data" / "simulate_values.npz"

#: relative tolerance of the drawn per-spectrum parameters
RTOL_DRAWN = 1e-6
#: relative tolerance of the spectra, their sums, and what is measured on them (snr, norm, ...)
RTOL_SPECTRA = 1e-5
#: decided by integer and exact IEEE arithmetic alone: equal on every machine
EXACT = ("wave", "spectrum", "n_exp", "exp_time", "mask:count")
#: measured on the simulated spectra (the rest of the per-spectrum variables are drawn)
MEASURED = ("snr", "norm", "calib_c1", "calib_c2", "calib_c3")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The small dataset of :data:`SETTINGS`, simulated once for both checks."""
    return simulate_small(tmp_path_factory.mktemp("bitwise"))


def test_simulation_matches_reference_values(simulated):
    ref = dict(np.load(VALUES))
    got = reference_values(*simulated)
    assert got.keys() == ref.keys(), f"variables changed: {sorted(got.keys() ^ ref.keys())}"
    for name in EXACT:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    spectral = {k for k in ref if k.split(":")[0] in SPECTRAL or k in MEASURED}
    for name in sorted(spectral):
        np.testing.assert_allclose(got[name], ref[name], rtol=RTOL_SPECTRA, atol=0,
                                   err_msg=name)
    for name in sorted(ref.keys() - spectral - set(EXACT)):  # drawn, and the test grid
        np.testing.assert_allclose(got[name], ref[name], rtol=RTOL_DRAWN, atol=0, err_msg=name)


def test_reference_values_tell_seeds_apart(simulated, tmp_path, monkeypatch):
    """The tolerances are far tighter than what a change of the simulation moves: the same
    command with another seed fails the value check everywhere it can."""
    import simulate_digests

    ref = dict(np.load(VALUES))
    monkeypatch.setattr(simulate_digests, "SETTINGS", {**SETTINGS, "seed": SETTINGS["seed"] + 1})
    other = reference_values(*simulate_digests.simulate_small(tmp_path))
    for name in ("teff", "rv", "mag", "flux:sum", "flux_clean:isum", "sigma:full", "snr"):
        rel = np.abs(other[name] - ref[name]) / np.abs(ref[name])
        assert np.median(rel) > 100 * RTOL_SPECTRA, name


def test_simulation_matches_pre_reshaping_digests(simulated):
    ref = json.loads(DIGESTS.read_text())
    assert ref["settings"] == SETTINGS, "the digest script's settings changed: regenerate " \
        "the reference from commit 01fbbaa (see tests/simulate_digests.py)"
    env = environment()
    changed = [f"{lib} {ref['environment'][lib]} -> {env[lib]}" for lib in LIBRARIES
               if env[lib] != ref["environment"][lib]]
    if changed:
        pytest.skip(f"floating-point libraries differ from the reference's ({', '.join(changed)})"
                    ": bit-for-bit digests cannot hold; test_simulation_matches_reference_values"
                    " checked the values to a stated tolerance")
    expected = ref["digests"]
    assert {"grid:flux", "flux", "flux_clean", "sigma", "mask", "teff", "snr"} <= expected.keys()
    got = digests_of(*simulated)
    assert got["grid:flux"] == expected["grid:flux"], "the test grid itself changed"
    missing = sorted(expected.keys() - got.keys())
    assert not missing, f"variables no longer written: {missing}"
    differ = sorted(k for k in expected if got[k] != expected[k])
    assert not differ, f"simulated values differ from commit 01fbbaa in {differ}"
