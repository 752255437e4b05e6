"""The METRICS registry (specdenoise.metrics): each metric against a hand-made case with a known
answer, the bootstrap intervals and ties, the calibration table, the report's warnings, and
that a new metric reaches the summary and the report by one registry entry.

Cubes here are built in memory with the error cube's variable names (``rel_err``, ``denoised``,
``flux_clean``, ``sigma_denoised``, ``z``, ``suspect``, ...), as :mod:`specdenoise.evaluate.cube`
writes them, so that the summary and the report read exactly what they read from a real cube.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from specdenoise import metrics as M
from specdenoise.evaluate import report, summary
from specdenoise.evaluate.cube import METHOD_DIM
from specdenoise.simulate.pfs import pixel_wave

WAVE = pixel_wave()  # nm, the PFS red arm grid
LAM = 10 * WAVE  # Angstrom
CA2_VAC = (8500.36, 8544.44, 8664.52)  # Angstrom, vacuum


def lined_spectrum(rng, n_lines: int = 150, depth_max: float = 0.5) -> np.ndarray:
    """A tilted continuum with Gaussian absorption lines (2.4 pixels sigma), median ~0.5."""
    f = 0.5 * (1 + 0.1 * np.linspace(-1, 1, WAVE.size))
    for c in rng.uniform(LAM[0], LAM[-1], n_lines):
        f = f * (1 - rng.uniform(0.02, depth_max) * np.exp(-0.5 * ((LAM - c) / 1.0) ** 2))
    return f


def block(d, f, good=None, **kw) -> M.Block:
    d, f = np.atleast_2d(d), np.atleast_2d(f)
    return M.Block(d, f, np.ones(f.shape, bool) if good is None else good, WAVE, **kw)


def value(name: str, b: M.Block) -> float:
    m = M.METRICS[name]
    return float(m.finish(m.parts(b).sum(axis=0)))


# --------------------------------------------------------------------------- definitions


def test_abs_rel_is_one_definition_for_numpy_and_torch():
    """The cube's rel_err and the training loop's validation |R| are the same numbers."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    f = rng.uniform(0.1, 1.0, (4, 50))
    f[0, :3] = [0.0, -0.2, 0.0]  # no |R| where F <= 0, in both
    d = f + 0.01 * rng.standard_normal(f.shape)
    good = rng.uniform(size=f.shape) > 0.1
    cube_value = np.nanmean(M.pixel_values("abs_rel", d, f, ~good))
    s, n = M.pixel_sum_count("abs_rel", torch.tensor(d), torch.tensor(f), torch.tensor(good))
    assert float(s / n) == pytest.approx(cube_value, rel=1e-6)
    assert int(n) == int(np.sum(good & (f > 0)))
    from specdenoise.evaluate.cube import relative_error
    np.testing.assert_array_equal(relative_error(d, f, ~good),
                                  M.pixel_values("abs_rel", d, f, ~good))


def test_bias_and_abs_rel_of_a_known_offset():
    f = lined_spectrum(np.random.default_rng(1))
    b = block(1.02 * f, f)
    assert value("bias", b) == pytest.approx(0.02, rel=1e-9)
    assert value("abs_rel", b) == pytest.approx(0.02, rel=1e-6)  # stored as float32
    assert value("bias", block(0.97 * f, f)) == pytest.approx(-0.03, rel=1e-9)


def test_continuum_and_line_pixels():
    """On a continuum with lines far apart the continuum is found to 0.5 %, and line pixels are
    exactly those deeper than 3 % below it."""
    rng = np.random.default_rng(2)
    c = 0.5 * (1 + 0.1 * np.linspace(-1, 1, WAVE.size))
    f = c.copy()
    for centre in np.linspace(LAM[20], LAM[-20], 40):
        f *= 1 - 0.4 * np.exp(-0.5 * ((LAM - centre) / 1.0) ** 2)
    cont = M.continuum(f[None])[0]
    assert np.max(np.abs(cont / c - 1)) < 0.005
    b = block(f, f)
    depth = 1 - f / c
    sure = (depth > 0.04) | (depth < 0.02)  # away from the threshold
    np.testing.assert_array_equal(b.line_pixels[0][sure], (depth > 0.03)[sure])
    # an error only on line pixels: line |R| is it, continuum |R| is 0
    err = np.where(b.line_pixels[0], 0.05, 0.0)
    b = block(f * (1 + err), f)
    assert value("line_abs_rel", b) == pytest.approx(0.05, rel=1e-6)
    assert value("cont_abs_rel", b) == pytest.approx(0.0, abs=1e-12)
    rng.standard_normal()


@pytest.mark.parametrize("a", [1.0, 0.8, 0.5])
def test_structure_kept_is_the_shrink_factor(a):
    """D = C + a (F - C): every line at the fraction a of its depth -> structure kept = a, also
    with a slow continuum error added to D (it is not line structure)."""
    f = lined_spectrum(np.random.default_rng(3))[None]
    c = M.continuum(f)
    d = c + a * (f - c)
    assert value("structure_kept", block(d, f)) == pytest.approx(a, rel=1e-9)
    slow = 0.01 * np.sin(np.linspace(0, 3, WAVE.size))  # 2 % of the flux, over the arm
    assert value("structure_kept", block(d + slow, f)) == pytest.approx(a, abs=0.002)


def test_structure_kept_is_not_biased_by_noise():
    rng = np.random.default_rng(4)
    f = np.stack([lined_spectrum(rng) for _ in range(20)])
    d = f + 0.01 * rng.standard_normal(f.shape)
    assert value("structure_kept", block(d, f)) == pytest.approx(1.0, abs=0.01)


def test_ca2_equivalent_width_of_gaussian_lines():
    """Gaussian lines of depth A and width s have EW = A s sqrt(2 pi); the tilted continuum
    is removed by the straight line through the continuum bands."""
    depth, s = np.array([0.3, 0.5, 0.4]), np.array([1.0, 1.5, 1.2])  # Angstrom
    f = 0.5 * (1 + 0.1 * np.linspace(-1, 1, WAVE.size))
    for c, a, w in zip(CA2_VAC, depth, s, strict=True):
        f = f * (1 - a * np.exp(-0.5 * ((LAM - c) / w) ** 2))
    ew = M.ca2_equivalent_widths(f[None], WAVE)[0]
    np.testing.assert_allclose(ew, depth * s * np.sqrt(2 * np.pi), rtol=2e-3)
    # the bands (Cenarro et al. 2001, converted to vacuum) hold the vacuum line centres
    for (lo, hi), c in zip(M.CA2_LINES, CA2_VAC, strict=True):
        assert lo < c < hi
    assert M.air_to_vacuum(8542.09) == pytest.approx(8544.44, abs=0.02)
    # lines shrunk to 80 %: EW error 20 % of the total, signed negative
    c0 = M.continuum(f[None])
    d = c0 + 0.8 * (f[None] - c0)
    b = block(d, f[None])
    total = ew.sum()
    assert value("ca2_ew_bias", b) == pytest.approx(-0.2 * total, rel=0.02)
    assert value("ca2_ew_err", b) == pytest.approx(0.2 * total, rel=0.02)
    # a masked pixel in a band: no value for that spectrum
    good = np.ones((1, WAVE.size), bool)
    good[0, np.argmin(np.abs(LAM - CA2_VAC[1]))] = False
    assert np.isnan(M.ca2_equivalent_widths(d, WAVE, good)).all()
    assert np.isnan(value("ca2_ew_err", block(d, f[None], good)))


def test_calibration_metrics_of_gaussian_z():
    rng = np.random.default_rng(5)
    f = np.full((200, WAVE.size), 0.5)
    sig = np.full(f.shape, 0.01)
    d = f + sig * rng.standard_normal(f.shape)
    b = block(d, f, sigma_denoised=sig)
    assert value("cover_1sigma", b) == pytest.approx(M.GAUSS_COVER[1], abs=0.003)
    assert value("cover_2sigma", b) == pytest.approx(M.GAUSS_COVER[2], abs=0.002)
    assert value("z_std", b) == pytest.approx(1.0, abs=0.005)
    # a sigma twice too small: std(z) 2, coverage of 1 "sigma" = P(|x| < 0.5) = 0.383
    b = block(d, f, sigma_denoised=sig / 2)
    assert value("z_std", b) == pytest.approx(2.0, abs=0.01)
    assert value("cover_1sigma", b) == pytest.approx(0.3829, abs=0.003)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_reproducible_and_covers_the_mean():
    rng = np.random.default_rng(6)
    parts = np.stack([rng.normal(1.0, 0.2, 300), np.ones(300)], axis=1)
    w1 = M.bootstrap_weights(300, 400, [18, 1, 2])
    w2 = M.bootstrap_weights(300, 400, [18, 1, 2])
    np.testing.assert_array_equal(w1, w2)
    assert np.all(w1.sum(axis=1) == 300)
    v, lo, hi = M.bootstrap(parts, M.METRICS["abs_rel"].finish, w1)
    assert lo < v < hi
    # the 68 % interval of a mean is about +- the standard error (0.2 / sqrt(300))
    assert (hi - lo) / 2 == pytest.approx(0.2 / np.sqrt(300), rel=0.2)
    other = M.bootstrap(parts, M.METRICS["abs_rel"].finish, M.bootstrap_weights(300, 400, 7))
    assert other[0] == v and other[1:] != (lo, hi)


# --------------------------------------------------------------------------- cubes


def hand_cube(clean, denoised: dict, snr, kinds=None, **extra) -> xr.Dataset:
    """An in-memory error cube with the names cube.py writes."""
    names = list(denoised)
    kinds = kinds or {}
    d = np.stack([denoised[m] for m in names]).astype(np.float32)
    rel = np.stack([M.pixel_values("abs_rel", denoised[m], clean) for m in names])
    n = clean.shape[0]
    ds = xr.Dataset(
        {"rel_err": ((METHOD_DIM, "spectrum", "wave"), rel),
         "denoised": ((METHOD_DIM, "spectrum", "wave"), d),
         "mean_rel_err": ((METHOD_DIM, "spectrum"), np.nanmean(rel, axis=2)),
         "max_rel_err": ((METHOD_DIM, "spectrum"), np.nanmax(rel, axis=2)),
         "flux_clean": (("spectrum", "wave"), clean.astype(np.float32)),
         "flux": (("spectrum", "wave"), denoised.get("none", clean).astype(np.float32)),
         "spectra_per_s": ((METHOD_DIM,), np.full(len(names), 100.0)),
         **extra},
        coords={METHOD_DIM: np.array(names, dtype=object),
                "denoiser_kind": (METHOD_DIM, np.array(
                    [kinds.get(m, "reference" if m == "none" else "baseline") for m in names],
                    dtype=object)),
                "wave": WAVE, "snr": ("spectrum", np.asarray(snr, float)),
                "teff": ("spectrum", np.linspace(4000, 6000, n))},
        attrs={"dataset": "/nowhere/val.zarr", "methods": json.dumps(
            {m: {"kind": kinds.get(m, "baseline"), "description": m} for m in names})})
    return ds


def noisy_set(n=120, seed=7, scale=0.05):
    rng = np.random.default_rng(seed)
    clean = np.tile(lined_spectrum(rng, 60), (n, 1)) * rng.uniform(0.9, 1.1, (n, 1))
    noisy = clean * (1 + scale * rng.standard_normal(clean.shape))
    return rng, clean, noisy


def test_ties_and_wins(tmp_path):
    """Two methods whose difference is inside the bootstrap spread are a tie; a clear lead is
    a win, in the summary and in the report's words."""
    rng, clean, noisy = noisy_set()
    n = clean.shape[0]
    a = clean * (1 + 0.010 * rng.standard_normal(clean.shape))
    b = clean * (1 + 0.010 * rng.standard_normal(clean.shape))  # same error level as a
    c = clean * (1 + 0.030 * rng.standard_normal(clean.shape))  # clearly worse
    snr = np.where(np.arange(n) < n // 2, 3.0, 30.0)
    cube = hand_cube(clean, {"a": a, "b": b, "c": c, "none": noisy}, snr)
    tree = summary.summarize(cube, {"snr": [0, 10, 100]}, by=("snr",))
    ds = tree["snr"].to_dataset()
    for key in ("abs_rel", "abs_rel_p16", "abs_rel_p84", "abs_rel_vs_best_p16"):
        assert ds[key].dims == (METHOD_DIM, "snr_bins")
    np.testing.assert_allclose(ds["abs_rel"], ds["mean"], rtol=1e-5)  # one definition
    assert np.all(ds["abs_rel_p16"] < ds["abs_rel"]) and np.all(ds["abs_rel"] < ds["abs_rel_p84"])
    # summarising again gives the same intervals (seeded)
    again = summary.summarize(cube, {"snr": [0, 10, 100]}, by=("snr",))["snr"].to_dataset()
    np.testing.assert_array_equal(again["abs_rel_p16"], ds["abs_rel_p16"])
    comp = report.comparison(cube, tree)
    assert comp["tie_by_bin"] == [True, True]  # a against b
    assert comp["tie"] is True
    text = " ".join(report.answer(comp))
    assert "a tie between" in text and "a tie," in text
    # drop b: a beats c clearly, a win
    cube2 = hand_cube(clean, {"a": a, "c": c, "none": noisy}, snr)
    comp2 = report.comparison(cube2, summary.summarize(cube2, {"snr": [0, 10, 100]},
                                                       by=("snr",)))
    assert comp2["tie_by_bin"] == [False, False] and comp2["tie"] is False
    assert "tie" not in " ".join(report.answer(comp2))
    # a lead that every resample agrees on but that lies inside the leader's interval (two
    # almost identical methods) is still a tie
    a2 = clean + (a - clean) * 1.0003  # 0.03 % worse, everywhere
    cube3 = hand_cube(clean, {"a": a, "a2": a2, "none": noisy}, snr)
    tree3 = summary.summarize(cube3, {"snr": [0, 10, 100]}, by=("snr",))
    ds3 = tree3["snr"].to_dataset()
    assert np.all(ds3["abs_rel_vs_best_p16"].sel({METHOD_DIM: "a2"}) > 0)  # a always ahead
    assert report.comparison(cube3, tree3)["tie_by_bin"] == [True, True]


def test_report_warns_when_worse_than_input_and_on_the_training_set(tmp_path):
    rng, clean, noisy = noisy_set(n=80, scale=0.01)
    n = clean.shape[0]
    snr = np.where(np.arange(n) < 40, 5.0, 80.0)
    good = clean * (1 + 0.002 * rng.standard_normal(clean.shape))
    # worse than the input at high S/N only (as the paper U-Net above S/N 50)
    bad = np.where((snr > 50)[:, None], clean * (1 + 0.03 * rng.standard_normal(clean.shape)),
                   good)
    cube = hand_cube(clean, {"unet": bad, "pca": good, "none": noisy}, snr,
                     kinds={"unet": "network"})
    cube.attrs["dataset_config_hash"] = "abc123"
    cube.attrs["dataset_seed"] = 2
    info = json.loads(cube.attrs["methods"])
    info["unet"].update(train_data="/elsewhere/train.zarr",
                        train_identity={"config_hash": "abc123"}, kind="network")
    info["pca"].update(train="/nowhere/val.zarr")
    cube.attrs["methods"] = json.dumps(info)
    tree = summary.summarize(cube, {"snr": [0, 10, 100]}, by=("snr",))
    md, _ = report.write_report(cube, tree, {}, tmp_path)
    text = md.read_text()
    warn = text[text.index("## Warnings"):text.index("## Which denoiser")]
    assert "**unet** is worse than the noisy input at S/N 10-100 (40 spectra)" in warn
    assert "S/N 0-10" not in warn
    assert "**unet** was trained on the evaluation set itself: the same simulation" in warn
    assert "**pca** was fitted on the evaluation set itself: the same store" in warn
    # the terminal says it too, in plain text
    term = report.terminal_summary(cube, tree)
    assert "Warning: unet is worse than the noisy input at S/N 10-100" in term
    assert "**" not in term
    # fewer than 30 spectra in the bin: no warning
    small = cube.isel(spectrum=slice(0, 60))
    comp = report.comparison(small, summary.summarize(small, {"snr": [0, 10, 100]},
                                                      by=("snr",)))
    assert comp["worse_than_input"] == []
    # the line-aware and bias sections come from the registry
    for title in ("## Signed bias by S/N", "## Spectral lines by S/N", "**structure kept**",
                  "**Ca II EW |error|**", "**|R| lines**"):
        assert title in text, title
    assert "## Calibration of the uncertainties" not in text  # no sigma_denoised in this cube


def test_calibration_table_from_a_cube_with_sigma_denoised(tmp_path):
    """A cube with the uncertainty variables (sigma_denoised, z; suspect) gets the calibration
    table: Gaussian z gives 0.683 / 0.954 / std 1 in every bin; NaN sigma (a method without
    one) leaves that method out."""
    rng, clean, noisy = noisy_set(n=60, scale=0.02)
    n = clean.shape[0]
    sig = 0.005 * clean
    den = clean + sig * rng.standard_normal(clean.shape)
    sd = np.stack([sig, np.full(clean.shape, np.nan)]).astype(np.float32)
    z = (np.stack([den, noisy]) - clean) / sd
    suspect = np.zeros((2, n), bool)
    suspect[0, :3] = True
    cube = hand_cube(clean, {"net": den, "none": noisy}, np.linspace(2, 80, n),
                     kinds={"net": "network"},
                     sigma_denoised=((METHOD_DIM, "spectrum", "wave"), sd),
                     z=((METHOD_DIM, "spectrum", "wave"), z.astype(np.float32)),
                     suspect=((METHOD_DIM, "spectrum"), suspect))
    assert {"cover_1sigma", "cover_2sigma", "z_std", "suspect_rate"} <= set(
        summary.available_metrics(cube))
    tree = summary.summarize(cube, {"snr": [0, 20, 100]}, by=("snr",))
    ds = tree["snr"].to_dataset().sel({METHOD_DIM: "net"})
    np.testing.assert_allclose(ds["cover_1sigma"], M.GAUSS_COVER[1], atol=0.01)
    np.testing.assert_allclose(ds["cover_2sigma"], M.GAUSS_COVER[2], atol=0.005)
    np.testing.assert_allclose(ds["z_std"], 1.0, atol=0.01)
    all_ = tree["all"].to_dataset()
    assert float(all_["suspect_rate"].sel({METHOD_DIM: "net"})[0]) == pytest.approx(3 / n)
    assert np.isnan(tree["snr"].to_dataset()["z_std"].sel({METHOD_DIM: "none"})).all()
    md, _ = report.write_report(cube, tree, {}, tmp_path)
    text = md.read_text()
    sec = text[text.index("## Calibration of the uncertainties"):]
    assert "**within 1 sigma**" in sec and "**std(z)**" in sec and "| net |" in sec
    # the summary's CSV carries the new columns
    summary.write_summary(tree, tmp_path / "s.zarr", tmp_path / "s.csv")
    head = (tmp_path / "s.csv").read_text().splitlines()[0].split(",")
    for col in ("abs_rel", "abs_rel_p16", "abs_rel_p84", "bias", "line_abs_rel",
                "cont_abs_rel", "structure_kept", "ca2_ew_err", "ca2_ew_bias", "cover_1sigma",
                "cover_2sigma", "z_std", "z_std_p84", "suspect_rate"):
        assert col in head, col


def test_a_new_metric_is_one_registry_entry(monkeypatch, tmp_path):
    """Adding a metric: one entry in METRICS (and its function); the summary, its CSV and the
    report pick it up with no other change."""
    def parts(b):  # fraction of pixels more than 1 % off
        v = np.where(b.good, (b.abs_rel > 0.01).astype(float), np.nan)
        return M._mean_parts(v, b.clean.shape[0])

    new = M.Metric("frac_off", "off by > 1 %", "fraction of pixels with |R| > 1 %", parts,
                   group="lines")
    monkeypatch.setitem(M.METRICS, "frac_off", new)
    rng, clean, noisy = noisy_set(n=40, scale=0.02)
    cube = hand_cube(clean, {"none": noisy}, np.full(40, 5.0))
    tree = summary.summarize(cube, {"snr": [0, 10]}, by=("snr",))
    expect = np.mean(np.abs(noisy - clean) / clean > 0.01)
    assert float(tree["snr"].to_dataset()["frac_off"][0, 0]) == pytest.approx(expect)
    summary.write_summary(tree, tmp_path / "s.zarr", tmp_path / "s.csv")
    assert "frac_off_p16" in (tmp_path / "s.csv").read_text().splitlines()[0]
    md, _ = report.write_report(cube, tree, {}, tmp_path)
    assert "**off by > 1 %**: fraction of pixels with |R| > 1 %" in md.read_text()


def test_training_prints_the_evaluations_number(tmp_path):
    """The validation mean |R| a training run prints is the error cube's mean |R| of the same
    model on the same validation set (one definition, METRICS['abs_rel'])."""
    pytest.importorskip("torch")
    from conftest import make_dataset

    from specdenoise.evaluate.cube import build_cube, open_cube
    from specdenoise.stage_evaluate import network_method
    from specdenoise.train import loop

    train = make_dataset(tmp_path / "train.zarr", n=24, chunk=8, seed=0)
    val = make_dataset(tmp_path / "val.zarr", n=16, chunk=8, seed=1)
    cfg = loop.make_config(train, val, tmp_path / "run", model="unet", preset="tiny",
                           model_cfg={"depth": 2, "filters": 4}, epochs=1, batch_size=8,
                           workers=0, device="cpu", seed=3, shuffle_buffer=8)
    row = loop.train(cfg)
    cube = open_cube(build_cube(val, tmp_path / "cube.zarr",
                                [network_method(tmp_path / "run", device="cpu")],
                                progress=False))
    rel = cube["rel_err"].values[0].astype(np.float64)
    assert row["val_mean_abs_rel"] == pytest.approx(np.nanmean(rel), rel=1e-5)
