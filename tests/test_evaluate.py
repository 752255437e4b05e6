"""Evaluation: the error cube, binned summaries, baselines, the template fit, report and CLI.

Two kinds of real Zarr datasets are used: smooth synthetic spectra written through the schema
functions (where every baseline must help), and spectra simulated by the real chain from a small
grid whose spectra depend on every parameter (where the template fit must find them again).
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np
import pytest
from conftest import simulate_in_process

from specdenoise import cli, schema
from specdenoise.evaluate import baselines as bl
from specdenoise.evaluate.baselines import baseline_methods
from specdenoise.evaluate.cube import (
    METHOD_DIM,
    Method,
    build_cube,
    open_cube,
    relative_error,
)
from specdenoise.evaluate.summary import open_summary, summarize, write_summary
from specdenoise.simulate.pfs import pixel_wave

WAVE = pixel_wave()  # nm, the PFS red arm grid


# --------------------------------------------------------------------------- datasets


def smooth_spectra(n: int, seed: int):
    """Smooth continua with broad (20-60 pixel) features of varying depth, median 0.5, S/N 8-40.

    The features sit at fixed places (like stellar lines), so the spectra form a family of
    few dimensions that PCA can learn.
    """
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, WAVE.size)
    pix = np.arange(WAVE.size)
    centres = np.array([300.0, 900.0, 1500.0, 2300.0, 3100.0, 3800.0])
    widths = np.array([20.0, 35.0, 60.0, 25.0, 45.0, 30.0])
    clean = np.empty((n, WAVE.size))
    for i in range(n):
        c = 1 + rng.uniform(-0.3, 0.3) * x + rng.uniform(-0.1, 0.1) * x**2
        for centre, depth, width in zip(centres, rng.uniform(0.05, 0.3, 6), widths,
                                        strict=True):
            c = c * (1 - depth * np.exp(-0.5 * ((pix - centre) / width) ** 2))
        clean[i] = c
    clean *= 0.5 / np.median(clean, axis=1, keepdims=True)
    snr = rng.uniform(8, 40, n)
    sigma = clean / snr[:, None]
    flux = clean + sigma * rng.standard_normal(clean.shape)
    params = {
        "teff": rng.uniform(3500, 7500, n), "logg": rng.uniform(0, 5, n),
        "m_h": rng.uniform(-2.5, 0.75, n), "a_m": rng.uniform(-0.25, 0.5, n),
        "snr": np.median(flux / sigma, axis=1), "norm": np.ones(n),
    }
    return flux, clean, sigma, params


def write_smooth(path, n: int, seed: int, chunk: int = 16):
    schema.create_dataset_store(path, n, chunk, WAVE, attrs={"config_hash": f"smooth-{seed}"})
    flux, clean, sigma, params = smooth_spectra(n, seed)
    for c in range(-(-n // chunk)):
        sl = slice(c * chunk, min((c + 1) * chunk, n))
        arrays = {"flux": flux[sl], "flux_clean": clean[sl], "sigma": sigma[sl],
                  "mask": np.zeros((sl.stop - sl.start, WAVE.size), np.uint8)}
        arrays.update({k: v[sl].astype(np.float32) for k, v in params.items()})
        schema.write_chunk(path, c, chunk, arrays)
    schema.finalize_dataset(path)
    return path


@pytest.fixture(scope="module")
def smooth(tmp_path_factory):
    d = tmp_path_factory.mktemp("smooth")
    return write_smooth(d / "train.zarr", 60, 1), write_smooth(d / "val.zarr", 40, 2)


def identifiable_grid_flux(axes: dict, wave: np.ndarray) -> np.ndarray:
    """Model spectra in which Teff, log g, [M/H] and [alpha/M] each leave their own mark.

    Planck continuum times exp(-sum of line opacities): cool-star lines weaken with Teff,
    hot-star lines strengthen, alpha lines follow [M/H] + [alpha/M], and log g broadens the
    Ca II triplet while deepening two other lines.
    """
    h, c, k = 6.62607015e-27, 2.99792458e10, 1.380649e-16
    lam = wave * 1e-7
    t, g, m, a = (v[..., None] for v in np.meshgrid(*axes.values(), indexing="ij"))
    flux = 1.0 / (lam**5 * (np.exp(h * c / (lam * k * t)) - 1.0))
    tau = np.zeros(t.shape[:-1] + (wave.size,))

    def line(centre, strength, width=0.06):
        return strength * np.exp(-0.5 * ((wave - centre) / width) ** 2)

    for centre in np.linspace(715, 880, 14):  # cool-star metal lines
        tau = tau + line(centre, 0.8 * (4500.0 / t) ** 4 * 10**m)
    for centre in (742.2, 781.3, 812.8, 838.6, 873.4):  # hot-star lines
        tau = tau + line(centre, 0.6 * (t / 6000.0) ** 4 * 10 ** (0.5 * m))
    for centre in (725.5, 767.1, 805.9, 846.2, 878.0):  # alpha lines
        tau = tau + line(centre, 0.8 * 10 ** (m + a))
    for centre in (850.04, 854.44, 866.45):  # Ca II: pressure broadened
        tau = tau + line(centre, 1.2 * 10 ** (0.4 * m), 0.05 + 0.03 * g)
    for centre in (731.9, 826.6):  # gravity-sensitive lines
        tau = tau + line(centre, 0.25 * (1 + g) * 10 ** (0.5 * m))
    return (flux * np.exp(-tau) * 1e-30).astype(np.float32)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """train and val splits simulated by the real chain (Dask, one in-process worker)."""

    from specdenoise.config import load_config
    from specdenoise.simulate.grids import write_grid

    d = tmp_path_factory.mktemp("sim")
    axes = {"teff": np.array([4000.0, 5000.0, 6000.0, 7000.0]),
            "logg": np.array([0.0, 2.5, 5.0]),
            "m_h": np.array([-1.5, -0.5, 0.5]),
            "a_m": np.array([-0.2, 0.2, 0.6])}
    wave = 700.0 * np.exp(np.arange(int(np.log(900 / 700) * 20000) + 1) / 20000.0)
    grid = write_grid(d / "grid.zarr", identifiable_grid_flux(axes, wave), axes, wave,
                      attrs={"source": "test", "resolution": 20000})
    params = {
        "teff": {"dist": "uniform", "low": 4200.0, "high": 6800.0},
        "logg": {"dist": "uniform", "low": 0.5, "high": 4.5},
        "m_h": {"dist": "uniform", "low": -1.2, "high": 0.3},
        "a_m": {"dist": "uniform", "low": -0.1, "high": 0.5},
        "rv": {"dist": "uniform", "low": -300.0, "high": 300.0},
        "mag": {"dist": "uniform", "low": 17.0, "high": 17.5},  # bright: S/N ~ 100
    }
    cfg = load_config(n=24, chunk_size=6, seed=5, grid=str(grid), out=str(d),
                      split="train=0.5,val=0.5", params=params)
    paths = simulate_in_process(cfg)
    return {p.stem: p for p in paths}


@pytest.fixture(scope="module")
def tiny_run(smooth, tmp_path_factory):
    """A real U-Net trained for one epoch through the train package."""
    from specdenoise.train import loop

    out = tmp_path_factory.mktemp("run") / "unet"
    cfg = loop.make_config(smooth[0], None, out, model="unet", preset="tiny",
                           model_cfg={"depth": 2, "filters": 4}, epochs=1, batch_size=20,
                           workers=0, device="cpu", seed=0, shuffle_buffer=0)
    loop.train(cfg, progress=False)
    return out


# --------------------------------------------------------------------------- the cube


def test_error_cube_matches_hand_computation(smooth, tmp_path):
    val = smooth[1]
    ds = schema.open_dataset(val).load()

    def scaled(flux, sigma, mask):  # a deliberately imperfect denoiser
        return 0.97 * flux + 0.01

    methods = [Method("scaled", "baseline", "0.97 F_hat + 0.01", scaled),
               Method("half", "baseline", "noisy, first 10 spectra only",
                      lambda f, s, m: f, limit=10)]
    out = build_cube(val, tmp_path / "cube.zarr", methods, block=16, progress=False)
    cube = open_cube(out)

    f_hat = ds["flux"].values.astype(np.float64)
    f = ds["flux_clean"].values.astype(np.float64)
    hand = np.abs(0.97 * f_hat + 0.01 - f) / f
    got = cube["rel_err"].sel({METHOD_DIM: "scaled"}).values
    np.testing.assert_allclose(got, hand, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(cube["mean_rel_err"].sel({METHOD_DIM: "scaled"}),
                               hand.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(cube["max_rel_err"].sel({METHOD_DIM: "scaled"}),
                               hand.max(axis=1), rtol=1e-6)
    # a limited method: its first 10 spectra only, the rest NaN
    half = cube["mean_rel_err"].sel({METHOD_DIM: "half"}).values
    assert np.isfinite(half[:10]).all() and np.isnan(half[10:]).all()
    np.testing.assert_allclose(half[:10], (np.abs(f_hat - f) / f)[:10].mean(axis=1), rtol=1e-5)
    assert int(cube["n_denoised"].sel({METHOD_DIM: "half"})) == 10
    assert float(cube["spectra_per_s"].sel({METHOD_DIM: "scaled"})) > 0
    # layout: methods side by side, every per-spectrum quantity a coordinate
    assert cube["rel_err"].dims == (METHOD_DIM, "spectrum", "wave")
    assert cube["rel_err"].dtype == np.float32
    for name in ("teff", "logg", "m_h", "a_m", "rv", "ebv", "mag", "snr", "norm"):
        assert name in cube.coords and cube[name].dims == ("spectrum",)
    assert list(cube["denoiser_kind"].values) == ["baseline", "baseline"]
    np.testing.assert_array_equal(cube["flux_clean"].values, ds["flux_clean"].values)
    # masked pixels and non-positive truth are excluded
    r = relative_error(np.ones((1, 3)), np.array([[1.0, 0.0, 2.0]]), np.array([[0, 0, 1]]))
    assert r[0, 0] == 0 and np.isnan(r[0, 1]) and np.isnan(r[0, 2])


def test_summary_matches_numpy(smooth, tmp_path):
    methods = baseline_methods(["none", "gaussian"])
    cube = open_cube(build_cube(smooth[1], tmp_path / "cube.zarr", methods, progress=False))
    edges = [0, 12, 20, 30, 45]
    tree = summarize(cube, {"snr": edges, "*": 3}, quantiles=(0.5, 0.9))
    ds = tree["snr"].to_dataset()
    assert ds["mean"].dims == (METHOD_DIM, "snr_bins")
    np.testing.assert_allclose(ds["snr_lo"], edges[:-1])
    snr = cube["snr"].values
    for name in ("none", "gaussian"):
        rel = cube["rel_err"].sel({METHOD_DIM: name}).values
        for i in range(len(edges) - 1):
            inside = (snr > edges[i]) & (snr <= edges[i + 1])
            d = ds.sel({METHOD_DIM: name}).isel(snr_bins=i)
            assert int(d["n_spectra"]) == inside.sum()
            if not inside.any():
                assert np.isnan(float(d["mean"]))
                continue
            pix = rel[inside].ravel()
            np.testing.assert_allclose(float(d["mean"]), pix.mean(), rtol=1e-5)
            np.testing.assert_allclose(float(d["max"]), pix.max(), rtol=1e-6)
            np.testing.assert_allclose(d["quantiles"].values, np.quantile(pix, [0.5, 0.9]),
                                       rtol=1e-5)
    assert tree["teff"].to_dataset().sizes["teff_bins"] == 3
    # saved as Zarr and CSV
    write_summary(tree, tmp_path / "summary.zarr", tmp_path / "summary.csv")
    back = open_summary(tmp_path / "summary.zarr")
    np.testing.assert_allclose(back["snr"].to_dataset()["mean"], ds["mean"])
    with open(tmp_path / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * (4 + 3 * 4)  # methods x (snr bins + 4 variables x 3 bins)
    row = next(r for r in rows if r["by"] == "snr" and r["denoiser"] == "none"
               and float(r["bin_lo"]) == 12)
    np.testing.assert_allclose(float(row["mean"]),
                               float(ds["mean"].sel({METHOD_DIM: "none"})[1]), rtol=1e-5)
    assert {"q50", "q90", "max", "n_spectra"} <= set(row)


def test_baselines_reduce_error_on_smooth_spectra(smooth, tmp_path):
    methods = baseline_methods(["none", "savgol", "gaussian", "pca"], train=smooth[0],
                               pca_k=8, savgol_window=21, savgol_order=3,
                               gaussian_sigma=4.0)
    cube = open_cube(build_cube(smooth[1], tmp_path / "cube.zarr", methods, progress=False))
    mean = cube["rel_err"].mean(["spectrum", "wave"]).to_series()
    print("mean |R| on smooth spectra:", mean.round(5).to_dict())
    for name in ("savgol", "gaussian", "pca"):
        assert mean[name] < 0.6 * mean["none"], name
    info = cube.attrs["methods"]
    assert "noiseless flux_clean" in info and '"k": 8' in info


def test_pca_basis_and_filters():
    rng = np.random.default_rng(0)
    basis_vecs = rng.standard_normal((3, 200))
    clean = 0.5 + 0.01 * rng.standard_normal((50, 3)) @ basis_vecs
    pca = bl.fit_pca(clean, k=3)
    assert pca.explained_variance_ratio.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(pca.project(clean[:5]), clean[:5], atol=1e-5)
    flat = np.full((2, 101), 0.5)
    np.testing.assert_allclose(bl.savgol(flat), 0.5, atol=1e-6)
    np.testing.assert_allclose(bl.gaussian(flat, 2.0), 0.5, atol=1e-6)
    with pytest.raises(bl.SpecdenoiseError, match="window"):
        bl.savgol(flat, window=10)


# --------------------------------------------------------------------------- template fit


def test_template_fit_recovers_parameters(simulated):
    val = schema.open_dataset(simulated["val"]).load()
    fitter = bl.template_fitter_for(val.attrs)
    n = 3
    res = fitter.fit(val["flux"].values[:n], val["sigma"].values[:n])
    clean, noisy = val["flux_clean"].values[:n], val["flux"].values[:n]
    r_fit = np.mean(np.abs(res.denoised - clean) / clean)
    r_noisy = np.mean(np.abs(noisy - clean) / clean)
    print(f"template fit: |R| {r_fit:.2e} vs noisy {r_noisy:.2e}; "
          f"{res.fits_per_s:.2f} fits/s; set-up {res.setup_seconds:.1f} s")
    for k in ("teff", "logg", "m_h", "a_m", "rv", "ebv"):
        print(k, np.round(res.params[k], 3), np.round(val[k].values[:n], 3))
    assert r_fit < 0.2 * r_noisy
    truth = {k: val[k].values[:n] for k in ("teff", "logg", "m_h", "a_m", "rv")}
    np.testing.assert_allclose(res.params["rv"], truth["rv"], atol=3.0)
    np.testing.assert_allclose(res.params["teff"], truth["teff"], atol=150.0)
    np.testing.assert_allclose(res.params["logg"], truth["logg"], atol=0.3)
    np.testing.assert_allclose(res.params["m_h"], truth["m_h"], atol=0.1)
    np.testing.assert_allclose(res.params["a_m"], truth["a_m"], atol=0.1)
    assert np.all((res.chi2_red > 0.8) & (res.chi2_red < 1.3))


# --------------------------------------------------------------------------- CLI and report


def test_cli_evaluate_end_to_end(simulated, tiny_run, tmp_path, capsys):
    out = tmp_path / "eval"
    status = cli.main(["evaluate", "--run", str(tiny_run), "--data", str(simulated["val"]),
                       "--train", str(simulated["train"]), "--out", str(out),
                       "--baselines", "none,gaussian,pca,template", "--template-n", "2",
                       "--pca-k", "4", "--bins", "3", "--bins", "snr=0,60,120,400"])
    assert status == 0
    printed = capsys.readouterr().out
    for name in ("cube.zarr", "summary.zarr", "summary.csv", "figures", "report.md",
                 "report.html"):
        assert (out / name).exists(), name
        assert str(out / name) in printed
    cube = open_cube(out / "cube.zarr")
    assert list(cube[METHOD_DIM].values) == ["unet", "none", "gaussian", "pca", "template"]
    tmpl = cube["mean_rel_err"].sel({METHOD_DIM: "template"}).values
    assert np.isfinite(tmpl[:2]).all() and np.isnan(tmpl[2:]).all()
    none = cube["mean_rel_err"].sel({METHOD_DIM: "none"}).values
    assert np.all(tmpl[:2] < 0.2 * none[:2])
    assert np.isfinite(cube["template_teff"].values[:2]).all()
    assert open_summary(out / "summary.zarr")["snr"].to_dataset().sizes["snr_bins"] == 3
    md = (out / "report.md").read_text()
    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert len(figures) == 4 and all((out / f).is_file() for f in figures)
    assert "figures/error_vs_snr.png" in figures
    # paths relative to the work folder (the one holding EVAL_DIR), none of this machine's
    assert str(simulated["val"]) not in md
    for text in ("How to read", "template", "unet", "spectra / s",
                 os.path.relpath(simulated["val"], out.parent),
                 "Which denoiser is best", "Best overall: **", "median over its pixels",
                 "x template (2 spectra)", "ran on the first 2 of the 12 spectra"):
        assert text in md, text
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<table>" in page
    # parameters recovered by the template fit from the noisy input and from the denoised
    # spectra, on the template's 2 spectra, against the truth
    with open(out / "parameters.csv") as fh:
        params = list(csv.DictReader(fh))
    assert [(r["source"], int(float(r["spectrum"]))) for r in params] == [
        ("noisy input", 0), ("noisy input", 1), ("unet denoised", 0), ("unet denoised", 1)]
    truth = schema.open_dataset(simulated["val"])["teff"].values[:2]
    np.testing.assert_allclose([float(r["teff_true"]) for r in params[:2]], truth, rtol=1e-6)
    np.testing.assert_allclose([float(r["teff_fit"]) for r in params[:2]],
                               cube["template_teff"].values[:2], rtol=1e-5)
    assert "## Stellar parameters recovered by the template fit" in md
    assert md.index("## Warnings") < md.index("## Which denoiser is best")
    # the terminal ends with the comparison table: every method and the template fit
    tail = printed[printed.index("report:"):]
    assert "S/N 0-60" in tail and "x template (2 spectra)" in tail and "Best overall:" in tail
    for name in ("unet", "none", "gaussian", "pca", "template"):
        assert re.search(rf"^{name} ", tail, re.M), name
    # a second run refuses to overwrite, unless asked
    assert cli.main(["evaluate", "--data", str(simulated["val"]), "--out", str(out),
                     "--baselines", "none"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_evaluate_without_uncertainty_skips_sigma(simulated, tiny_run, tmp_path):
    """--uncertainty none: one network pass, no sigma_denoised (NaN) in the cube; the
    denoised flux (and so |R|) is the same as with the uncertainty."""
    cubes = {}
    for mode in ("auto", "none"):
        out = tmp_path / mode
        assert cli.main(["evaluate", "--run", str(tiny_run), "--data", str(simulated["val"]),
                         "--out", str(out), "--baselines", "", "--uncertainty", mode,
                         "--no-progress"]) == 0
        cubes[mode] = open_cube(out / "cube.zarr")
    assert np.isfinite(cubes["auto"]["sigma_denoised"].values).any()
    assert np.isnan(cubes["none"]["sigma_denoised"].values).all()
    np.testing.assert_array_equal(cubes["auto"]["mean_rel_err"].values,
                                  cubes["none"]["mean_rel_err"].values)


@pytest.mark.parametrize("args,message", [
    (["--run", "{tmp}/no-such-run", "--data", "{val}"], "no checkpoint at"),
    (["--data", "{tmp}/missing.zarr", "--baselines", "none"], "does not exist"),
    (["--data", "{val}", "--baselines", "pca"], "needs a training set"),
    (["--data", "{val}", "--baselines", "none,wiener"], "unknown baseline 'wiener'"),
    (["--data", "{val}", "--baselines", "template"], "no simulation config"),
    (["--data", "{val}", "--baselines", "none", "--bins", "snr=5,x"], "--bins"),
])
def test_cli_errors_are_one_line(smooth, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, val=smooth[1]) for a in args]
    assert cli.main(["evaluate", *args, "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "eval" / "cube.zarr").exists()


def test_comparison_numbers_match_numpy(smooth, tmp_path):
    """The report's answer: best overall and per S/N bin, and each method's distance from the
    reference on exactly the spectra the reference ran on."""
    from specdenoise.evaluate import report
    from specdenoise.evaluate.summary import SNR_EDGES

    methods = baseline_methods(["none", "savgol", "gaussian"], savgol_window=21,
                               savgol_order=3, gaussian_sigma=3.0)
    # a slow "reference" run on the first 15 spectra only, as the template fit is
    methods.append(Method("template", "reference", "stand-in reference",
                          lambda f, s, m: bl.gaussian(f, 6.0), limit=15))
    cube = open_cube(build_cube(smooth[1], tmp_path / "cube.zarr", methods, progress=False))
    tree = summarize(cube)
    np.testing.assert_array_equal(tree["snr"].to_dataset()["snr_hi"].values, SNR_EDGES[1:])
    comp = report.comparison(cube, tree)
    rel = {m: cube["rel_err"].sel({METHOD_DIM: m}).values for m in cube[METHOD_DIM].values}
    means = {m: np.nanmean(rel[m]) for m in ("savgol", "gaussian")}
    best = min(means, key=means.get)
    assert comp["best"][0]["method"] == best
    assert comp["best"][1]["method"] == ({"savgol", "gaussian"} - {best}).pop()
    snr = cube["snr"].values
    edges = np.array(SNR_EDGES)
    for i in range(edges.size - 1):
        inside = (snr > edges[i]) & (snr <= edges[i + 1])
        assert comp["counts"][i] == inside.sum()
        if not inside.any():
            assert comp["best_by_bin"][i] is None
            continue
        per = {m: np.nanmean(rel[m][inside]) for m in ("savgol", "gaussian")}
        assert comp["best_by_bin"][i][0] == min(per, key=per.get)
        np.testing.assert_allclose(comp["by_bin"]["none"][i], np.nanmean(rel["none"][inside]),
                                   rtol=1e-5)
    t = comp["template"]
    assert t["n"] == 15 and list(t["subset"]) == list(range(15))
    for m in ("none", "savgol", "gaussian"):
        np.testing.assert_allclose(t["ratio"][m], np.nanmean(rel[m][:15])
                                   / np.nanmean(rel["template"][:15]), rtol=1e-5)
    assert t["ratio"]["template"] == pytest.approx(1.0)
    header, rows = report.comparison_table(comp)
    assert header[-1] == "x template (15 spectra)" and header[4] == "S/N 0-2"
    assert [r[0] for r in rows] == ["savgol", "gaussian", "none", "template", "spectra in bin"] \
        or [r[0] for r in rows] == ["gaussian", "savgol", "none", "template", "spectra in bin"]
    text = report.terminal_summary(cube, tree)
    assert "median over its pixels" in text and f"Best overall: {best}," in text
    assert "**" not in text


def test_report_shows_a_second_set_beside_the_first(smooth, tmp_path):
    """``run --preset best`` evaluates the wide-S/N set too and rewrites the main report with
    it beside the default set (report.rewrite_with_companions): the same folder, one more
    section, the warnings and answer of the second set in it."""
    from specdenoise.evaluate import report
    from specdenoise.stage_evaluate import EvaluateConfig, evaluate

    main, wide = tmp_path / "evaluation", tmp_path / "evaluation-wide"
    for folder, data in ((main, smooth[1]), (wide, smooth[0])):
        evaluate(EvaluateConfig(data=data, out=folder, baselines=["none", "gaussian"]),
                 progress=False, log=lambda *a: None)
    before = (main / "report.md").read_text()
    md, page = report.rewrite_with_companions(main, {"Wide-S/N validation set": wide})
    text = md.read_text()
    assert "## Wide-S/N validation set" not in before
    sec = text[text.index("## Wide-S/N validation set"):]
    assert str(smooth[0]) in sec and "(60 spectra)" in sec and "Best overall: **gaussian**" in sec
    # the rest of the report is unchanged: its figures still linked, its warnings first
    assert text.index("## Warnings") < text.index("## Which denoiser is best")
    assert len(re.findall(r"\]\((figures/[^)]+\.png)\)", text)) == 4
    assert "Wide-S/N validation set" in page.read_text()


def test_template_fit_finds_the_cached_builtin_grid(simulated, tmp_path, monkeypatch):
    """A dataset simulated from the built-in grid (no ``--grid``) is template-fitted against
    the built-in grid's cache, found without the caller resolving it (that branch imported
    ``builtin_grid_path`` from a module it had left)."""
    import json
    import shutil

    from specdenoise.stage_grid import builtin_grid_path

    monkeypatch.setenv("SPECDENOISE_CACHE", str(tmp_path / "cache"))
    cached = builtin_grid_path()
    assert cached.is_relative_to(tmp_path / "cache")
    val = schema.open_dataset(simulated["val"])
    cfg = json.loads(val.attrs["config"])
    shutil.copytree(cfg["grid"], cached)  # this dataset's grid stands in for the built-in one
    attrs = dict(val.attrs, config=json.dumps({**cfg, "grid": "builtin"}))
    assert bl.simulated_grid(attrs) == "builtin"
    fitter = bl.template_fitter_for(attrs)
    given = bl.template_fitter_for(val.attrs)
    assert fitter.interp._source == str(cached)
    flux, sigma = val["flux"].values[:1], val["sigma"].values[:1]
    np.testing.assert_array_equal(fitter.fit(flux, sigma).denoised,
                                  given.fit(flux, sigma).denoised)
