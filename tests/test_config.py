"""The simulation config: defaults, TOML, --set overrides, one error listing every mistake."""

import tomllib
from pathlib import Path

import numpy as np
import pytest

from specdenoise.config import DEFAULTS, load_config, parse_split, to_toml
from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate.builtin_grid import builtin_axes
from specdenoise.simulate.sampling import draw, draw_params

README = Path(__file__).resolve().parents[1] / "README.md"


def test_defaults_follow_design():
    """Checked against what they must agree with, not restated: the default grid's extent, a
    normal table, the README."""
    cfg = load_config()
    p = cfg["params"]
    # the default draws span the grid the default config simulates from, edge to edge
    assert cfg["grid"] == "builtin"
    for name, axis in builtin_axes().items():
        assert (p[name]["low"], p[name]["high"]) == (axis.min(), axis.max()), name
    # RV ~ N(0, 300 km/s) clipped at +-600 = 2 sigma: a normal table leaves 4.55 % beyond, and
    # a normal clipped at 2 sigma keeps sqrt(0.9545 - 4 phi(2) + 8 Phi(-2)) = 0.959 of its sigma
    rv = draw(p["rv"], np.random.default_rng(0), 200_000)
    assert abs(rv.mean()) < 3 and rv.std() == pytest.approx(300 * 0.959, rel=0.01)
    assert np.mean(np.abs(rv) == 600) == pytest.approx(0.0455, abs=0.002)
    # the magnitude range the README tells users
    assert f"the default {p['mag']['low']:g}–{p['mag']['high']:g}" in README.read_text()
    # DESIGN.md: N x 900 s exposures, N = 4 (the authors' data sets)
    assert p["n_exp"]["value"] == 4 and p["exp_time"]["value"] == 900


def test_toml_file_and_overrides(tmp_path):
    f = tmp_path / "sim.toml"
    f.write_text('n = 50\nseed = 7\n[params]\nteff = {low = 4000.0}\n'
                 '[observe]\nnoise_kind = "poisson"\n')
    cfg = load_config(f, ["params.mag.high=21", "chunk_size=10"], n=60)
    assert cfg["n"] == 60 and cfg["seed"] == 7 and cfg["chunk_size"] == 10
    assert cfg["params"]["teff"] == {"dist": "uniform", "low": 4000.0, "high": 7500.0}
    assert cfg["params"]["mag"]["high"] == 21
    assert cfg["observe"]["noise_kind"] == "poisson"


def test_print_config_round_trips():
    cfg = load_config(overrides=["params.ebv.dist=beta", "params.ebv.a=2", "params.ebv.b=5"])
    again = tomllib.loads(to_toml(cfg))
    assert again["params"]["ebv"] == {"dist": "beta", "low": 0.0, "high": 0.1, "a": 2, "b": 5}
    assert again["observe"] == cfg["observe"]


def test_every_mistake_is_reported_at_once(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('n = -1\nfoo = 3\n[params]\nrv = {dist = "normal", std = -2.0}\n'
                 'bogus = {dist = "fixed", value = 1}\n')
    with pytest.raises(SpecdenoiseError) as err:
        load_config(f)
    msg = str(err.value)
    assert "\n" not in msg
    for piece in ("'n' must be a positive integer", "unknown option 'foo'",
                  "params.rv.std' must be >= 0", "unknown parameter 'params.bogus'"):
        assert piece in msg


def test_bad_toml_and_missing_file(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text("n = = 3")
    with pytest.raises(SpecdenoiseError, match="not valid TOML"):
        load_config(f)
    with pytest.raises(SpecdenoiseError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_split_parsing():
    assert parse_split("train=0.8,val=0.1,test=0.1") == {"train": 0.8, "val": 0.1, "test": 0.1}
    with pytest.raises(SpecdenoiseError, match="sum"):
        parse_split("train=0.8,val=0.1")


def test_distributions_respect_their_bounds():
    rng = np.random.default_rng(0)
    x = draw({"dist": "normal", "mean": 0, "std": 300, "low": -600, "high": 600}, rng, 20000)
    assert x.min() == -600 and x.max() == 600 and abs(x.std() - 300) < 30
    b = draw({"dist": "beta", "a": 2, "b": 5, "low": 0.0, "high": 0.1}, rng, 20000)
    assert 0 <= b.min() and b.max() <= 0.1 and abs(b.mean() - 0.1 * 2 / 7) < 1e-3
    assert np.all(draw({"dist": "fixed", "value": 900}, rng, 5) == 900)


def test_draw_params_redraws_invalid_grid_points():
    rng = np.random.default_rng(1)
    dists = {k: DEFAULTS["params"][k] for k in ("teff", "logg", "mag")}
    out = draw_params(dists, rng, 5000, grid_names=("teff", "logg"),
                      valid=lambda p: ~((p[:, 0] < 4000) & (p[:, 1] < 1.0)))
    assert not np.any((out["teff"] < 4000) & (out["logg"] < 1.0))
    assert out["mag"].size == 5000
    with pytest.raises(SpecdenoiseError, match="could not draw"):
        draw_params(dists, rng, 10, grid_names=("teff",), valid=lambda p: p[:, 0] < 0,
                    max_rounds=5)
