"""The built-in synthetic grid: kernels, store, cache, line physics, and BOSZ 2024 targets."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from specdenoise import stage_grid
from specdenoise.simulate import builtin_grid as bg
from specdenoise.simulate.errors import SpecdenoiseError
from specdenoise.simulate.grids import grid_axes, grid_settings, open_grid

BOSZ_DIR = Path(__file__).parents[2] / "shared" / "data" / "bosz2024"

#: A tiny grid: 2 x 2 x 2 x 2 nodes over the Ca II triplet, a short forest.
TINY = {
    "teff": {"values": [4500.0, 6000.0]},
    "logg": {"values": [2.0, 4.5]},
    "m_h": {"values": [-1.0, 0.0]},
    "a_m": {"values": [0.0, 0.4]},
    "wave_min_nm": 845.0,
    "wave_max_nm": 870.0,
    "forest_lines": 150,
}
#: Lines only (no weak-line forest: neither the pseudo-random lines nor the listed lines without
#: gf) over the whole range, to look at single features.
NO_FOREST = {"forest_lines": 0, "listed_lines": False}

CAT_AIR_A = (8498.02, 8542.09, 8662.14)


def vac_nm(air_a: float) -> float:
    return float(bg.air_to_vacuum(np.array([air_a]))[0]) / 10.0


def degrade(wave_nm, flux, r_from, r_to):
    """Gaussian-degrade a log-uniform spectrum from resolving power r_from to r_to."""
    dlnw = np.log(wave_nm[1] / wave_nm[0])
    sigma = np.sqrt((1 / (2.3548 * r_to)) ** 2 - (1 / (2.3548 * r_from)) ** 2) / dlnw
    half = int(5 * sigma)
    x = np.arange(-half, half + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return np.convolve(np.pad(flux, half, mode="edge"), k / k.sum(), mode="valid")


def equivalent_width_a(wave_nm, resid, centre_nm, half_nm=2.0):
    """EW in Å of 1 - F/C over centre +- half_nm (trapezoid on the spectrum's own pixels)."""
    m = (wave_nm > centre_nm - half_nm) & (wave_nm < centre_nm + half_nm)
    return float(np.trapezoid(1.0 - resid[m], wave_nm[m]) * 10.0)


def mean_depth(wave_nm, resid, lo=710.0, hi=885.0):
    m = (wave_nm > lo) & (wave_nm < hi)
    return float(np.mean(1.0 - resid[m]))


def resid(teff, logg, m_h=0.0, a_m=0.0, settings=None, r_to=None):
    s = bg._resolve_settings(settings)
    flux, cont = bg.synthesize(teff, logg, m_h, a_m, settings=settings)
    wave = bg.builtin_wave(settings)
    r = flux / cont
    if r_to is not None:
        r = degrade(wave, r, s["resolution"], r_to)
    return wave, r


# ---- kernels ----------------------------------------------------------------------------------


def test_voigt_matches_faddeeva():
    from scipy.special import wofz

    a = np.array([1e-4, 1e-3, 0.01, 0.05, 0.3, 1.0, 3.0, 10.0])
    v = np.linspace(-60.0, 60.0, 2401)
    for ai in a:
        ours = np.array([bg._voigt_h(ai, vi) for vi in v])
        ref = wofz(v + 1j * ai).real
        assert np.allclose(ours, ref, rtol=2e-3, atol=2e-5 * ref.max()), ai


def test_kernel_matches_numpy_reference():
    gen = bg._Generator(bg._resolve_settings(TINY))
    for node in [(4500.0, 2.0, 0.0, 0.4), (6000.0, 4.5, -1.0, 0.0)]:
        _, eta0, dop, damp, half, strength = gen.node_inputs(*node)
        out = np.empty((1, gen.wave.size))
        bg._render_kernel(gen.center_px, eta0, dop, damp, half, gen.band_shape, strength,
                          bg.DEPTH_MAX, gen.kernel, gen.step, out)
        ref = bg._render_reference(gen.center_px, eta0[0], dop[0], damp[0], gen.band_shape,
                                   strength[0], bg.DEPTH_MAX, gen.kernel, gen.step, gen.wave.size)
        # the kernel drops line contributions below ETA_CUTOFF; W4 is good to ~1e-4
        assert np.max(np.abs(out[0] - ref)) < 5 * bg.ETA_CUTOFF


def test_air_to_vacuum_known_lines():
    # Ca II 8542.09 Å (air) is 8544.44 Å in vacuum; H-alpha 6562.80 -> 6564.61
    assert bg.air_to_vacuum(np.array([8542.09]))[0] == pytest.approx(8544.44, abs=0.02)
    assert bg.air_to_vacuum(np.array([656.280]))[0] == pytest.approx(656.461, abs=0.002)


def test_wave_grid_is_log_uniform_at_r_samp():
    wave = bg.builtin_wave()
    r = 1.0 / np.diff(np.log(wave))
    assert np.allclose(r, bg.DEFAULT_SETTINGS["sampling"])
    assert wave[0] == pytest.approx(700.0) and wave[-1] >= 900.0
    assert 5000 < wave.size < 5100


def test_unknown_setting_and_wave_outside_are_one_line_errors():
    with pytest.raises(SpecdenoiseError, match="unknown built-in grid setting"):
        stage_grid.builtin_grid_path({"teff_step": 100})
    with pytest.raises(SpecdenoiseError, match="outside the built-in range"):
        bg.synthesize(5000, 4.0, 0.0, 0.0, wave=np.array([600.0, 700.0]), settings=TINY)


# ---- store, cache ----------------------------------------------------------------------------


def test_cache_path_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SPECDENOISE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    p = stage_grid.builtin_grid_path(TINY)
    assert p.parent == tmp_path / "xdg" / "specdenoise" / "grids"
    assert p.name.startswith("builtin-") and p.suffix == ".zarr"
    monkeypatch.setenv("SPECDENOISE_CACHE", str(tmp_path / "own"))
    assert stage_grid.builtin_grid_path(TINY).parent == tmp_path / "own" / "specdenoise" / "grids"
    # the key depends on the settings
    other = dict(TINY, forest_lines=151)
    assert stage_grid.builtin_grid_path(other).name != stage_grid.builtin_grid_path(TINY).name


def test_tiny_build_store_cache_and_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDENOISE_CACHE", str(tmp_path / "cache"))
    path = stage_grid.build_builtin_grid(settings=TINY, progress=False)
    assert path == stage_grid.builtin_grid_path(TINY)
    ds = open_grid(path)
    axes = grid_axes(ds)
    assert list(axes) == ["teff", "logg", "m_h", "a_m"]
    assert ds["flux"].shape == (2, 2, 2, 2, bg.builtin_wave(TINY).size)
    assert ds.attrs["source"] == "builtin"
    assert ds.attrs["resolution"] == TINY.get("resolution", bg.DEFAULT_SETTINGS["resolution"])
    assert "BOSZ" in ds.attrs["approximation"]
    assert grid_settings(ds)["forest_lines"] == 150
    assert json.loads(ds.attrs["physics"])
    assert ds["flux"].attrs["units"] == bg.FLUX_UNIT
    assert bool(ds["exists"].all())
    flux = ds["flux"].values
    assert np.isfinite(flux).all() and (flux > 0).all()
    assert (ds["flux"].values <= ds["cont"].values * 1.0001).all()
    # a node equals synthesize() at the same parameters
    f, c = bg.synthesize(6000.0, 2.0, -1.0, 0.4, settings=TINY)
    np.testing.assert_allclose(ds["flux"].values[1, 0, 0, 1], f, rtol=1e-4)
    np.testing.assert_allclose(ds["cont"].values[1, 0, 0, 1], c, rtol=1e-4)

    # cached: a second call returns at once without generating anything
    def boom(*args, **kwargs):
        raise AssertionError("regenerated a cached grid")

    monkeypatch.setattr(bg._Generator, "render", boom)
    assert stage_grid.build_builtin_grid(settings=TINY, progress=False) == path
    # an explicit --out copies the complete cache
    out = stage_grid.build_builtin_grid(tmp_path / "mine.zarr", settings=TINY, progress=False)
    assert open_grid(out).attrs["content_hash"] == ds.attrs["content_hash"]
    with pytest.raises(SpecdenoiseError, match="already exists"):
        stage_grid.build_builtin_grid(out, settings=TINY, progress=False)


def test_explicit_out_without_cache_generates(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDENOISE_CACHE", str(tmp_path / "empty-cache"))
    small = dict(TINY, teff={"values": [5000.0]}, logg={"values": [4.0]})
    out = stage_grid.build_builtin_grid(tmp_path / "g.zarr", settings=small, progress=False)
    assert open_grid(out)["flux"].shape[:4] == (1, 1, 2, 2)
    assert not stage_grid.builtin_grid_path(small).exists()


# ---- line physics: directions ------------------------------------------------------------------


def test_ca_triplet_wings_grow_with_gravity():
    c = vac_nm(8542.09)
    wave, lo_g = resid(5500.0, 1.5, settings=NO_FOREST)
    _, hi_g = resid(5500.0, 4.5, settings=NO_FOREST)
    wing = (np.abs(wave - c) > 0.3) & (np.abs(wave - c) < 1.2)
    assert np.mean(1 - hi_g[wing]) > 1.3 * np.mean(1 - lo_g[wing])


def test_paschen_only_in_hot_stars():
    pa12 = 1e7 / (bg._RYDBERG_H * (1 / 9 - 1 / 12**2))  # ~875.05 nm vacuum
    wave, hot = resid(7500.0, 4.0, settings=NO_FOREST)
    _, cool = resid(5000.0, 4.5, settings=NO_FOREST)
    i = np.argmin(np.abs(wave - pa12))
    assert 1 - hot[i] > 0.15
    assert 1 - cool[i] < 0.02


def test_tio_bands_below_4200k():
    head = vac_nm(7054.0) / 1.0
    band = lambda w: (w > head + 0.1) & (w < head + 1.5)  # noqa: E731
    depth = {}
    for teff in (3500.0, 3750.0, 4500.0):
        wave, r = resid(teff, 4.5, settings=NO_FOREST)
        depth[teff] = np.mean(1 - r[band(wave)])
    assert depth[3500.0] > 0.3
    assert depth[3750.0] > 0.05
    assert depth[4500.0] < 0.01


def test_metal_lines_weaken_at_low_metallicity():
    wave, solar = resid(5000.0, 4.5, 0.0)
    _, poor = resid(5000.0, 4.5, -2.0)
    assert mean_depth(wave, poor) < 0.3 * mean_depth(wave, solar)
    fe = vac_nm(8688.62)
    assert equivalent_width_a(wave, poor, fe, 0.05) < 0.5 * equivalent_width_a(wave, solar, fe,
                                                                                0.05)


def test_alpha_lines_grow_with_alpha_enhancement():
    mg = vac_nm(8806.76)
    wave, base = resid(5500.0, 4.0, 0.0, 0.0, settings=NO_FOREST)
    _, alpha = resid(5500.0, 4.0, 0.0, 0.4, settings=NO_FOREST)
    assert equivalent_width_a(wave, alpha, mg, 0.1) > 1.2 * equivalent_width_a(wave, base, mg, 0.1)
    ca = vac_nm(7148.15)
    assert equivalent_width_a(wave, alpha, ca, 0.1) > 1.1 * equivalent_width_a(wave, base, ca, 0.1)


def test_cn_bands_in_cool_giants():
    head = vac_nm(7875.0)
    band = lambda w: (w > head + 0.1) & (w < head + 2.0)  # noqa: E731
    wave, giant = resid(4000.0, 1.0, settings=NO_FOREST)
    _, hot_giant = resid(5500.0, 2.0, settings=NO_FOREST)
    assert np.mean(1 - giant[band(wave)]) > 0.03
    assert np.mean(1 - hot_giant[band(wave)]) < 0.005


# ---- targets against real BOSZ 2024 R=5000 spectra ---------------------------------------------


def _bosz(teff, logg):
    if not BOSZ_DIR.is_dir():
        pytest.skip(f"reference data {BOSZ_DIR} is absent")
    wave_air = np.loadtxt(BOSZ_DIR / "bosz2024_wave_r5000.txt")
    name = f"bosz2024_mp_t{teff}_g+{logg:.1f}_m+0.00_a+0.00_c+0.00_v2_r5000_resam.txt.gz"
    with gzip.open(BOSZ_DIR / name, "rt") as fh:
        data = np.loadtxt(fh)
    wave = bg.air_to_vacuum(wave_air) / 10.0
    m = (wave > 700.0) & (wave < 900.0)
    return wave[m], data[m, 0] / data[m, 1]


@pytest.mark.parametrize("teff, logg", [(6000, 4.0), (4750, 4.5)])
def test_matches_bosz2024_ca_triplet_and_line_depth(teff, logg):
    wb, rb = _bosz(teff, logg)
    wave, r = resid(float(teff), logg, r_to=5000.0)
    for air in CAT_AIR_A:
        c = vac_nm(air)
        ours, ref = equivalent_width_a(wave, r, c), equivalent_width_a(wb, rb, c)
        assert 0.6 < ours / ref < 1.4, (air, ours, ref)
    ratio = mean_depth(wave, r) / mean_depth(wb, rb)
    assert 0.5 < ratio < 2.0, ratio


def test_bitround_bounds_relative_error():
    x = np.random.default_rng(1).lognormal(10.0, 3.0, 10000).astype(np.float32)
    r = bg.bitround(x, 14)
    assert np.max(np.abs(r / x - 1.0)) <= 2.0**-15
    assert np.all(r.view(np.uint32) & np.uint32((1 << 9) - 1) == 0)


def test_listed_lines_sit_at_their_real_positions():
    lines = bg._lines_for(bg._resolve_settings({"forest_lines": 0}))
    ti = vac_nm(8692.326)  # Ti I, Barklem et al. (2000) position; no gf in ATOMIC_LINES
    assert np.min(np.abs(lines["lam"] - ti)) < 1e-4
    # a GALAH DR3 line with its own gf (Fe I 761.718 nm vacuum, 2.69 eV, log gf -4.32)
    fe = (np.abs(lines["lam"] - 761.7177) < 1e-4) & (lines["el"] == bg._EL["Fe"])
    assert fe.any() and abs(lines["loggf"][fe][0] + 4.321) < 1e-3
    off = bg._lines_for(bg._resolve_settings(NO_FOREST))
    assert off["lam"].size + 1000 < lines["lam"].size


def test_forest_leaves_the_ca_triplet_bands_to_listed_lines():
    """Version 3: no pseudo-random forest line in the triplet's line bands, the same forest
    elsewhere; Fe I 8661.9 (in the core of Ca II 8662) has its real log gf, not the statistical
    one."""
    with_gaps = bg._lines_for(bg._resolve_settings(None))
    no_gaps = bg._lines_for(bg._resolve_settings({"forest_gaps_air_A": []}))
    listed = bg._lines_for(bg._resolve_settings({"forest_lines": 0}))
    bands = [(vac_nm(lo), vac_nm(hi)) for lo, hi in bg.DEFAULT_SETTINGS["forest_gaps_air_A"]]

    def inside(lines):
        m = np.zeros(lines["lam"].size, bool)
        for lo, hi in bands:
            m |= (lines["lam"] >= lo) & (lines["lam"] <= hi)
        return m

    np.testing.assert_array_equal(np.sort(with_gaps["lam"][inside(with_gaps)]),
                                  np.sort(listed["lam"][inside(listed)]))
    assert inside(no_gaps).sum() > inside(with_gaps).sum() + 50  # the forest was there
    np.testing.assert_array_equal(np.sort(with_gaps["lam"][~inside(with_gaps)]),
                                  np.sort(no_gaps["lam"][~inside(no_gaps)]))
    fe = (np.abs(with_gaps["lam"] - vac_nm(8661.90)) < 1e-3) & (with_gaps["el"] == bg._EL["Fe"])
    assert fe.sum() == 1 and with_gaps["loggf"][fe][0] == pytest.approx(-1.48)
    with pytest.raises(SpecdenoiseError, match="forest_gaps_air_A"):
        bg._resolve_settings({"forest_gaps_air_A": [[8500.0, 8490.0]]})


def test_ca_triplet_weakens_in_m_dwarfs(monkeypatch):
    c = vac_nm(8542.09)
    settings = dict(NO_FOREST, wave_min_nm=840.0, wave_max_nm=870.0)
    wave, with_factor = resid(3900.0, 4.5, settings=settings)
    _, k_dwarf = resid(4750.0, 4.5, settings=settings)
    monkeypatch.setattr(bg, "CA2_COOL_POWER", 0.0)
    bg._generator_cached.cache_clear()
    _, without = resid(3900.0, 4.5, settings=settings)
    _, k_without = resid(4750.0, 4.5, settings=settings)
    bg._generator_cached.cache_clear()
    # TiO is the same in both: the line measured against the TiO-depressed level at +-2 nm
    near = np.abs(wave - c) < 2.0
    line = {k: equivalent_width_a(wave, r / r[near].max(), c)
            for k, r in (("with", with_factor), ("without", without))}
    assert line["with"] < 0.85 * line["without"], line
    np.testing.assert_allclose(k_dwarf, k_without)  # no change at and above 4750 K


def test_phoenix_m_dwarf_targets_through_the_pfs_chain(monkeypatch):
    """Issue 19.5 against PHOENIX-ACES 3900 K / log g 4.5 (benchmarks/grid_vs_real.py): the
    continuum shape over 790-883 nm within 5 %, fine structure within 25 %, the three Ca II
    triplet lines within 15 % (8498 and 8542 since version 2, 8662 since version 3)."""
    import sys

    from conftest import shared_file

    shared_file("reference_spectra", "eniric_Z_band_test_sample_lte03900-PHOENIX-ACES.dat")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import grid_vs_real as gvr

    try:
        chain = gvr.Chain()
        w, f = gvr.load_phoenix(BOSZ_DIR.parent)
        valid = np.zeros(chain.det.size, bool)
        valid[60:-60] = True
        valid &= chain.det > 782.0
        row = gvr.compare(chain, "phoenix", (3900.0, 4.5, 0.0, 0.0), chain(w, f, None), valid,
                          (790.0, 883.0))
    finally:
        sys.modules.pop("grid_vs_real", None)
    assert row["shape_max"] < 0.05, row["shape_max"]
    assert 0.75 < row["fine_ratio"] < 1.25, row["fine_ratio"]
    for ratio in row["cat_ratio"][:2]:
        assert 0.85 < ratio < 1.15, row["cat_ratio"]
    assert 0.85 < row["cat_ratio"][2] < 1.15, row["cat_ratio"]
    assert row["line_match"] > 3 * row["line_match_chance"]
