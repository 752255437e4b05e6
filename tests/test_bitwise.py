"""A dataset simulated with the same command and seed is bitwise identical to the one the code
before the issue-12 reshaping (commit 01fbbaa) simulated: decoded values of every variable and
coordinate both versions write (the calibration coefficients ``calib_c*`` are newer)."""

import json
from pathlib import Path

import pytest
from simulate_digests import LIBRARIES, SETTINGS, environment, simulate_digests

REFERENCE = Path(__file__).parent / "data" / "simulate_digests.json"


def test_simulation_matches_pre_reshaping_digests(tmp_path):
    ref = json.loads(REFERENCE.read_text())
    assert ref["settings"] == SETTINGS, "the digest script's settings changed: regenerate " \
        "the reference from commit 01fbbaa (see tests/simulate_digests.py)"
    env = environment()
    changed = [f"{lib} {ref['environment'][lib]} -> {env[lib]}" for lib in LIBRARIES
               if env[lib] != ref["environment"][lib]]
    if changed:
        pytest.skip(f"floating-point libraries differ from the reference's ({', '.join(changed)}):"
                    " regenerate it from commit 01fbbaa (see tests/simulate_digests.py)")
    expected = ref["digests"]
    assert {"grid:flux", "flux", "flux_clean", "sigma", "mask", "teff", "snr"} <= expected.keys()
    got = simulate_digests(tmp_path)
    assert got["grid:flux"] == expected["grid:flux"], "the test grid itself changed"
    missing = sorted(expected.keys() - got.keys())
    assert not missing, f"variables no longer written: {missing}"
    differ = sorted(k for k in expected if got[k] != expected[k])
    assert not differ, f"simulated values differ from commit 01fbbaa in {differ}"
