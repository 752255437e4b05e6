"""Per-pixel uncertainty (heteroscedastic head, sampling), its calibration, the suspect flag.

Tiny real models trained on real stores (:func:`test_train_data.make_dataset`); every check
runs in seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from astropy.io import fits
from conftest import WAVE, make_dataset

from specdenoise import SpecdenoiseError, cli, pfsio
from specdenoise.evaluate import cube as cube_mod
from specdenoise.train import infer, loop, schedule
from specdenoise.train import uncertainty as unc
from specdenoise.train.checkpoint import load_model, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


N_WAVE = 1024  # a quarter of the detector: the statistics need hundreds of spectra


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("unc")
    return {"train": make_dataset(d / "train.zarr", n=48, chunk=16, seed=0, n_wave=N_WAVE),
            "val": make_dataset(d / "val.zarr", n=300, chunk=100, seed=11, n_wave=N_WAVE),
            "test": make_dataset(d / "test.zarr", n=300, chunk=100, seed=23, n_wave=N_WAVE),
            "dir": d}


def _train(stores, name, val, **model_cfg):
    cfg = loop.make_config(stores["train"], val, stores["dir"] / name, model="unet",
                           preset="tiny", epochs=2, batch_size=12, device="cpu", lr=1e-2,
                           n_wave=N_WAVE,
                           model_cfg={"depth": 2, "filters": 4, "in_channels": 2, **model_cfg})
    loop.train(cfg)
    return stores["dir"] / name


@pytest.fixture(scope="module")
def head_run(stores):
    """A network with an uncertainty head; training calibrates it on the validation set."""
    return _train(stores, "head", stores["val"], uncertainty="nll")


@pytest.fixture(scope="module")
def plain_run(stores):
    """A network as every older run is (no head), calibrated afterwards for 4 samples."""
    run = _train(stores, "plain", None)
    assert unc.read_calibration(run) is None
    unc.calibrate_run(run, stores["val"], samples=4, device="cpu")
    return run


def _arrays(path, n=None):
    g = xr.open_zarr(path)
    sl = slice(None, n)
    return (g["flux"].values[sl], g["sigma"].values[sl], g["flux_clean"].values[sl],
            g["mask"].values[sl] == 0)


def test_head_trains_and_gives_finite_positive_sigma(head_run, stores):
    state = read_checkpoint(head_run)
    assert state["model"]["cfg"]["uncertainty"] == "nll"
    rows = state["history"]
    assert all(np.isfinite(r["train_nll_loss"]) and np.isfinite(r["val_nll_loss"])
               for r in rows)
    model, _ = load_model(head_run, device="cpu")
    flux, sigma, clean, good = _arrays(stores["test"], 20)
    mean, logvar = model(torch.stack([torch.from_numpy(flux), torch.from_numpy(sigma)], 1),
                         return_logvar=True)
    assert logvar.shape == mean.shape == (20, N_WAVE)
    den, s = infer.denoise_array_with_sigma(model, flux, sigma)
    assert np.isfinite(s).all() and (s > 0).all()
    # the flux is the plain pass, bit for bit
    np.testing.assert_array_equal(den, infer.denoise_array(model, flux, sigma=sigma))
    # training wrote a calibration fitted on the validation set
    cal = unc.read_calibration(head_run)
    assert cal.method == "head" and cal.n_spectra == 300 and cal.dataset == str(stores["val"])
    assert all(s > 0 for s in cal.scale)


def test_old_checkpoints_load_and_denoise_unchanged(plain_run, stores, tmp_path):
    state = read_checkpoint(plain_run)
    assert "uncertainty" not in state["model"]["cfg"]  # what every older checkpoint holds
    assert state["model"]["state"]["head.layer.weight"].shape[0] == 1
    model, _ = load_model(plain_run, device="cpu")
    flux, sigma, clean, good = _arrays(stores["test"], 12)
    plain = infer.denoise_array(model, flux, sigma=sigma)
    block = infer.denoise_with_uncertainty(model, flux, sigma, method="sample", samples=4)
    np.testing.assert_array_equal(block.flux_denoised, plain)
    assert np.isfinite(block.sigma_denoised).all() and (block.sigma_denoised > 0).all()
    with pytest.raises(SpecdenoiseError, match="no uncertainty head"):
        model(torch.zeros(1, 2, N_WAVE), return_logvar=True)
    with pytest.raises(SpecdenoiseError, match="needs a network trained with"):
        infer.denoise_with_uncertainty(model, flux, sigma, method="head")
    # sampling is seeded: the same seed gives the same sigma, another seed another one
    again = infer.denoise_with_uncertainty(model, flux, sigma, method="sample", samples=4)
    np.testing.assert_array_equal(again.sigma_denoised, block.sigma_denoised)
    other = infer.denoise_with_uncertainty(model, flux, sigma, method="sample", samples=4,
                                           seed=1)
    assert not np.array_equal(other.sigma_denoised, block.sigma_denoised)


def test_fit_scale_meets_the_targets_for_gaussian_errors():
    rng = np.random.default_rng(0)
    z = 3.0 * rng.standard_normal(200_000)
    s = unc.fit_scale(z)
    assert 2.85 < s < 3.15
    assert unc.coverage(z / s) == unc.coverage(-z / s)
    c = unc.coverage(z / s)
    assert 0.63 <= c["cover1"] <= 0.73 and 0.92 <= c["cover2"] <= 0.97
    assert 0.85 <= c["std_z"] <= 1.15


def test_calibration_holds_on_independent_in_domain_data(head_run, plain_run, stores):
    """Coverage targets and about 1 % false alarms on spectra the calibration never saw."""
    flux, sigma, clean, good = _arrays(stores["test"])
    good &= clean > 0
    for run in (head_run, plain_run):
        d = infer.load_denoiser(run, device="cpu")
        assert d.calibration is not None
        block = d(flux, sigma, good=good)
        z = np.where(good, (block.flux_denoised - clean) / block.sigma_denoised, np.nan)
        c = unc.coverage(z.ravel())
        # fitted on another draw of the same population: the coverage carries over
        fit = [row.get("output", row["calibrated"]) for row in d.calibration.coverage
               if row["n_spectra"]]
        w = np.array([f["n_pixels"] for f in fit])
        for k in ("cover1", "cover2"):
            assert abs(c[k] - np.average([f[k] for f in fit], weights=w)) < 0.03, (run.name, c)
        if run == head_run:  # the head's errors are near Gaussian: the targets, 2 % margin
            assert 0.61 <= c["cover1"] <= 0.75 and 0.90 <= c["cover2"] <= 0.98, c
        # 300 spectra at 1 %: 3 expected; more than 12 has a probability below 1e-4
        flagged = int((block.suspect == 1).sum())
        assert (block.suspect >= 0).all()
        assert flagged <= 12, (run.name, flagged)


def _unguarded(denoiser):
    """``denoiser`` with the input guard off: its sigma_denoised is then the one the checks
    weigh the residual with (the guard changes what is returned, not the checks: see
    test_the_guard_is_chosen_per_snr_bin_where_it_lowers_the_error), so the artefacts below
    can be scaled to it."""
    denoiser.calibration.guard = None
    return denoiser


def test_spikes_and_emission_lines_are_suspect(head_run, stores):
    """A cosmic-ray hit or an emission line well above what the network says it may miss.

    The tiny test network is poor (its calibrated sigma is several times the noise), so the
    artefacts are scaled to its total error sqrt(sigma^2 + sigma_denoised^2); what the real
    networks catch at which S/N is measured in results/ood/.
    """
    flux, sigma, clean, good = _arrays(stores["test"], 40)
    snr = unc.spectrum_snr(flux, sigma)
    rows = np.nonzero(snr >= 10)[0][:10]
    d = _unguarded(infer.load_denoiser(head_run, device="cpu"))
    clean_block = d(flux[rows], sigma[rows])
    total = np.sqrt(sigma[rows] ** 2 + clean_block.sigma_denoised ** 2)
    bad = flux[rows].copy()
    pix = np.arange(N_WAVE)
    for k in range(len(rows)):
        if k % 2:  # a cosmic-ray hit: 2 pixels at 25 times the total error
            bad[k, 600:602] += 25 * total[k, 600:602]
        else:  # an emission line, FWHM 3 pixels, peak 15 times the total error
            bad[k] += 15 * total[k, 400] * np.exp(-0.5 * ((pix - 400) / 1.3) ** 2)
    bad_block = d(bad, sigma[rows])
    assert (clean_block.suspect == 0).sum() >= 8
    assert (bad_block.suspect == 1).all(), bad_block.chi2_peak
    assert (bad_block.chi2_peak > 5 * clean_block.chi2_peak).all()
    assert (bad_block.chi2_red > clean_block.chi2_red).all()


def test_sky_left_in_or_taken_out_is_suspect(head_run, stores):
    """Sky emission lines in the input (a sky left unsubtracted, or subtracted twice): the
    network may take them for the star's, so the residual need not show them, but their
    pattern is known and sky_excess finds it."""
    d = _unguarded(infer.load_denoiser(head_run, device="cpu"))
    template = d.calibration.template(N_WAVE)
    assert template is not None and (template != 0).sum() > 20
    assert np.abs(template).max() == 1.0
    # the calibration stores the template of the noise model on the data's wavelengths
    np.testing.assert_allclose(template, unc.sky_template(WAVE[:N_WAVE]), atol=1e-3)
    flux, sigma, clean, good = _arrays(stores["test"], 60)
    rows = np.nonzero(unc.spectrum_snr(flux, sigma) >= 5)[0][:12]
    base = d(flux[rows], sigma[rows])
    weight = 1.0 / (sigma[rows].astype(np.float64) ** 2 + base.sigma_denoised ** 2)
    amp = 30.0 / np.sqrt((weight * template**2).sum(axis=1))  # a 30-sigma pattern
    sign = np.where(np.arange(len(rows)) % 2, -1.0, 1.0)
    bad = (flux[rows] + (sign * amp)[:, None] * template[None, :]).astype(np.float32)
    out = d(bad, sigma[rows])
    assert (np.abs(base.sky_excess) < 5).sum() >= len(rows) - 2, base.sky_excess
    assert (np.sign(out.sky_excess) == sign).all(), out.sky_excess
    assert (np.abs(out.sky_excess) > 10).all(), out.sky_excess
    assert (out.suspect == 1).all()


def test_a_calibration_from_before_the_sky_check_still_flags(head_run, stores):
    """Calibrations of version 1 have no sky template: no sky_excess (NaN), the flag from the
    other two statistics as before."""
    cal = unc.read_calibration(head_run)
    old = json.loads(cal.to_json())
    for key in ("sky_template", "sky_median", "sky_spread", "block_sizes", "block_median",
                "block_spread", "levels", "guard", "thresholds"):
        del old[key]
    old["version"] = 1
    v1 = unc.Calibration.from_dict(old)
    assert v1.template(N_WAVE) is None
    model, _ = load_model(head_run, device="cpu")
    flux, sigma, clean, good = _arrays(stores["test"], 30)
    a = infer.denoise_with_uncertainty(model, flux, sigma, calibration=v1)
    b = infer.denoise_with_uncertainty(model, flux, sigma, calibration=cal)
    assert np.isnan(a.sky_excess).all() and np.isfinite(b.sky_excess).all()
    np.testing.assert_array_equal(a.chi2_red, b.chi2_red)
    # as version 1 flagged: the larger of the two standardised statistics, one threshold
    k = unc.snr_bin(unc.spectrum_snr(flux, sigma), v1.snr_edges)
    u = np.maximum((b.chi2_red - np.asarray(v1.chi2_median)[k]) / np.asarray(v1.chi2_spread)[k],
                   (b.chi2_peak - np.asarray(v1.peak_median)[k]) / np.asarray(v1.peak_spread)[k])
    np.testing.assert_array_equal(a.suspect, np.where(u > v1.threshold, 1, 0))


def test_denoise_store_and_csv_carry_sigma_and_flag(head_run, plain_run, stores, tmp_path):
    src = stores["test"]
    out = tmp_path / "den.zarr"
    assert cli.main(["denoise", "--run", str(head_run), "--data", str(src), "--out",
                     str(out), "--device", "cpu", "--batch-size", "64"]) == 0
    den = xr.open_zarr(out)
    assert den["sigma_denoised"].shape == (300, N_WAVE)
    assert den["sigma_denoised"].attrs["units"] == den["flux_denoised"].attrs["units"]
    assert den["suspect"].dtype == np.int8 and den["chi2_red"].dims == ("spectrum",)
    assert den["chi2_peak"].dims == ("spectrum",) and den["suspect"].attrs["flag_values"]
    assert den["sky_excess"].dims == ("spectrum",) and np.isfinite(den["sky_excess"]).all()
    assert set(np.unique(den["suspect"].values)) <= {0, 1}
    assert den.attrs["uncertainty_method"] == "head" and den.attrs["uncertainty_calibrated"]
    d = infer.load_denoiser(head_run, device="cpu", batch_size=64)
    flux, sigma, clean, good = _arrays(src, 100)
    block = d(flux, sigma, good=good)
    np.testing.assert_allclose(den["sigma_denoised"].values[:100], block.sigma_denoised,
                               rtol=1e-6)
    np.testing.assert_array_equal(den["suspect"].values[:100], block.suspect)
    np.testing.assert_allclose(den["sky_excess"].values[:100], block.sky_excess, rtol=1e-5,
                               atol=1e-5)

    # old-style output on request
    bare = tmp_path / "bare.zarr"
    assert cli.main(["denoise", "--run", str(head_run), "--data", str(src), "--out",
                     str(bare), "--uncertainty", "none"]) == 0
    assert "sigma_denoised" not in xr.open_zarr(bare)

    # a CSV spectrum with noise: per-pixel sigma, per-spectrum chi2 and flag columns
    csv_in = tmp_path / "star.csv"
    np.savetxt(csv_in, np.c_[WAVE[:N_WAVE], flux[0], sigma[0]], delimiter=",",
               header="wave,flux,sigma", comments="")
    for run in (head_run, plain_run):
        out_csv = tmp_path / f"{run.name}.csv"
        assert cli.main(["denoise", "--run", str(run), "--spectrum", str(csv_in), "--out",
                         str(out_csv)]) == 0
        t = np.genfromtxt(out_csv, delimiter=",", names=True)
        assert {"sigma_denoised", "chi2_red", "chi2_peak", "sky_excess",
                "suspect"} <= set(t.dtype.names)
        assert (t["sigma_denoised"] > 0).all() and np.isfinite(t["chi2_red"]).all()
        assert np.isfinite(t["sky_excess"]).all() and len(np.unique(t["sky_excess"])) == 1
        assert len(np.unique(t["chi2_red"])) == 1 and set(np.unique(t["suspect"])) <= {0, 1}
        np.testing.assert_allclose(t["flux_denoised"], block.flux_denoised[0] if run == head_run
                                   else t["flux_denoised"], rtol=1e-6)
    # FITS: the variance is sigma_denoised**2, the check a table of its own
    fits_out = tmp_path / "star.fits"
    assert cli.main(["denoise", "--run", str(head_run), "--spectrum", str(csv_in), "--out",
                     str(fits_out), "--device", "cpu"]) == 0
    one = d(flux[:1], sigma[:1])
    with fits.open(fits_out) as f:
        check = f[pfsio.CHECK_HDU]
        assert len(check.data) == 1 and check.header["NCHECKED"] == 1
        for name in ("chi2_red", "chi2_peak", "sky_excess"):
            np.testing.assert_allclose(check.data[name], one.__dict__[name], rtol=1e-4)
        assert check.data["suspect"][0] == one.suspect[0]
        assert check.header["NSUSPECT"] == int(one.suspect[0] == 1)
        np.testing.assert_allclose(f["SPECTRUM"].data["variance"], one.sigma_denoised[0] ** 2,
                                   rtol=1e-4)
    # the plain network was calibrated for K=4: with 3 samples it is neither calibrated nor
    # checked (-1), and says so
    out_csv = tmp_path / "k3.csv"
    assert cli.main(["denoise", "--run", str(plain_run), "--spectrum", str(csv_in), "--out",
                     str(out_csv), "--samples", "3"]) == 0
    assert set(np.unique(np.genfromtxt(out_csv, delimiter=",", names=True)["suspect"])) == {-1}


def test_cube_carries_sigma_z_and_suspect(head_run, stores, tmp_path):
    from specdenoise.evaluate.baselines import baseline_methods
    from specdenoise.stage_evaluate import network_method

    methods = [network_method(head_run, device="cpu", name="head"),
               *baseline_methods(["none"])]
    c = cube_mod.open_cube(cube_mod.build_cube(stores["test"], tmp_path / "c.zarr", methods,
                                               block=100, progress=False))
    assert c["sigma_denoised"].dims == c["z"].dims == ("denoiser", "spectrum", "wave")
    assert c["suspect"].dims == c["chi2_red"].dims == c["chi2_peak"].dims == ("denoiser",
                                                                              "spectrum")
    head = c.sel(denoiser="head")
    z = ((head["denoised"] - c["flux_clean"]) / head["sigma_denoised"]).values
    np.testing.assert_allclose(head["z"].values, z, rtol=1e-5, atol=1e-6)
    assert np.isnan(c["sigma_denoised"].sel(denoiser="none").values).all()
    assert np.isnan(c["suspect"].sel(denoiser="none").values).all()
    assert c["sky_excess"].dims == ("denoiser", "spectrum")
    assert np.isfinite(head["sky_excess"]).all()
    assert np.isnan(c["sky_excess"].sel(denoiser="none").values).all()
    assert float(head["suspect"].mean()) <= 0.04
    info = json.loads(c.attrs["methods"])["head"]["uncertainty"]
    assert info["method"] == "head" and info["suspect_threshold"] > 0


def test_calibrate_cli(plain_run, stores, tmp_path, capsys):
    before = unc.read_calibration(plain_run)
    assert cli.main(["calibrate", "--run", str(plain_run), "--data", str(stores["test"]),
                     "--samples", "4", "--max-spectra", "100", "--device", "cpu"]) == 0
    after = unc.read_calibration(plain_run)
    assert after.samples == 4 and after.n_spectra == 100 and after.dataset == str(stores["test"])
    assert "S/N" in capsys.readouterr().out
    unc.write_calibration(plain_run, before)  # leave the fixture as it was
    assert cli.main(["calibrate", "--run", str(plain_run), "--data", str(stores["test"]),
                     "--uncertainty", "head"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a network trained with" in err and "\n" not in err


def test_beta_nll_and_the_detached_mean():
    """beta 0 is the Gaussian NLL; nll_detach_mean keeps its gradient off the mean."""
    from specdenoise.train.nets import build_model

    mean, logvar = torch.tensor([[0.5, 0.4]]), torch.tensor([[-4.0, -2.0]])
    y = torch.tensor([[0.52, 0.4]])
    nll = 0.5 * (logvar + (y - mean) ** 2 / logvar.exp())
    torch.testing.assert_close(schedule.beta_nll(mean, logvar, y, 0.0), nll)
    torch.testing.assert_close(schedule.beta_nll(mean, logvar, y, 0.5), nll * (0.5 * logvar).exp())
    model = build_model("unet", depth=2, filters=4, n_wave=64, uncertainty="nll",
                        in_channels=2)
    batch = {"x": torch.rand(3, 64) + 0.5, "sigma": torch.full((3, 64), 0.02),
             "y": torch.rand(3, 64) + 0.5, "good": torch.ones(3, 64, dtype=torch.bool)}
    for detach in (True, False):
        cfg = loop.make_config("d", None, "o", model="unet", preset="tiny",
                               nll_detach_mean=detach)
        pred, aux = loop._forward(model, model, batch, cfg)
        grad = torch.autograd.grad(aux["nll"], pred, allow_unused=True)[0]
        assert (grad is None) == detach


def test_a_calibrated_run_is_a_run_train_overwrite_may_replace(head_run):
    """Training writes uncertainty.json into the run folder; the output-folder check of
    ``train --overwrite`` must count it as the run's own file, not a stranger's."""
    from specdenoise import stores as st
    from specdenoise.train.uncertainty import CALIBRATION_NAME

    assert (head_run / CALIBRATION_NAME).is_file()
    assert st.check_run_folder(head_run, overwrite=True) is True


def test_the_input_guard_is_the_inverse_variance_mean():
    d, x = np.full((1, 3), 1.0), np.array([[1.1, 1.1, 1.1]])
    s = np.array([[0.001, 0.1, 10.0]])
    e = np.array([[0.1, 0.1, 0.1]])
    g, sg = unc.guarded(d, s, x, e)
    assert g[0, 0] == pytest.approx(1.0, abs=1e-5)  # a sure network: its own output
    assert g[0, 1] == pytest.approx(1.05) and sg[0, 1] == pytest.approx(0.1 / np.sqrt(2))
    assert g[0, 2] == pytest.approx(1.1, abs=1e-4)  # an unsure one: the input
    assert np.all(sg <= np.minimum(s, e) + 1e-12)
    # strength 3: w = 3/4 where the two sigmas are equal; the largest strength: the input
    g, sg = unc.guarded(d, s, x, e, 3.0)
    assert g[0, 1] == pytest.approx(1.075)
    assert sg[0, 1] == pytest.approx(np.sqrt(0.25**2 * 0.01 + 0.75**2 * 0.01))
    g, sg = unc.guarded(d, s, x, e, unc.GUARD_STRENGTHS[-1])
    assert g[0, 1:] == pytest.approx(1.1, abs=1e-6) and sg[0, 1:] == pytest.approx(0.1)
    # without a usable input sigma a pixel keeps the network's values
    g, sg = unc.guarded(d, s, x, np.array([[np.nan, 0.0, 0.1]]))
    assert g[0, :2].tolist() == [1.0, 1.0] and sg[0, :2].tolist() == s[0, :2].tolist()


def _guard_case(rng, n, snr, kind):
    """n spectra at ``snr`` of a 'network' that either takes a fixed fraction of the noise
    along (a posterior-mean-like estimate: leaning on the input only adds noise) or keeps a
    systematic 1.5 % line-like bias while the input is good to 1/snr."""
    clean = 1.0 + 0.3 * np.sin(np.linspace(0, 40, 512))[None, :] * rng.uniform(0.5, 1, (n, 1))
    sigma = clean / snr
    flux = clean + sigma * rng.standard_normal(clean.shape)
    if kind == "smooth":
        den = clean + 0.3 * (flux - clean)
        raw = 0.3 * sigma
    else:
        den = clean * (1 + 0.015 * np.sign(np.sin(np.linspace(0, 200, 512))))[None, :]
        raw = 0.2 * sigma  # sampling's spread: far below the bias
    return den, raw, flux, sigma, clean


def test_the_guard_is_chosen_per_snr_bin_where_it_lowers_the_error():
    rng = np.random.default_rng(5)
    low = _guard_case(rng, 60, 8.0, "smooth")  # bin 5-10: the network wins alone
    high = _guard_case(rng, 60, 30.0, "biased")  # bin 20-50: the input helps
    den, raw, flux, sigma, clean = (np.concatenate([a, b]) for a, b in zip(low, high, strict=True))
    good = np.ones_like(den, bool)
    cal = unc.fit_calibration(den, raw, flux, sigma, clean, good, method="sample", samples=8)
    # bins without spectra below the highest calibrated one take the nearest choice (the
    # lower at a tie), the bin above it (> 50) the guard
    assert [a > 0 for a in cal.guard] == [False] * 4 + [True] * 2
    assert cal.guard[5] == 1.0 and cal.guard[4] in unc.GUARD_STRENGTHS
    for i in (2, 4):
        row = cal.coverage[i]
        assert (row["mean_rel_err_guarded"] < row["mean_rel_err"]) == bool(cal.guard[i])
    # the chosen strength is the best of those tried on these spectra, none worse than input
    hi = slice(60, None)
    rel = {a: np.mean(np.abs(unc.guarded(den[hi], raw[hi] * cal.scale[4], flux[hi],
                                         sigma[hi], a)[0] - clean[hi]) / clean[hi])
           for a in unc.GUARD_STRENGTHS}
    assert min(rel, key=rel.get) == cal.guard[4]
    assert rel[cal.guard[4]] <= np.mean(np.abs(flux[hi] - clean[hi]) / clean[hi])
    out = unc.apply(cal, den, raw, flux, sigma, good)
    assert np.array_equal(out["flux_denoised"][:60], den[:60].astype(np.float32))
    rel = np.abs(out["flux_denoised"][60:] - clean[60:]) / clean[60:]
    assert rel.mean() < 0.9 * (np.abs(den[60:] - clean[60:]) / clean[60:]).mean()
    # the checks look at the network's own output: the same with the guard off
    off = unc.Calibration.from_dict({**json.loads(cal.to_json()), "guard": None})
    assert np.array_equal(unc.apply(off, den, raw, flux, sigma, good)["chi2_red"],
                          out["chi2_red"])
    assert np.array_equal(unc.apply(off, den, raw, flux, sigma, good)["flux_denoised"],
                          den.astype(np.float32))
    # a calibration file from before the guard reads as guard off
    assert unc.Calibration.from_dict({k: v for k, v in json.loads(cal.to_json()).items()
                                      if k != "guard"}).guard is None


def test_calibrate_cli_fits_several_datasets_together(plain_run, stores, capsys):
    before = unc.read_calibration(plain_run)
    try:
        assert cli.main(["calibrate", "--run", str(plain_run), "--data", str(stores["val"]),
                         str(stores["test"]), "--samples", "4", "--max-spectra", "100",
                         "--device", "cpu"]) == 0
        after = unc.read_calibration(plain_run)
        assert after.n_spectra == 200
        assert after.dataset == f"{stores['val']}, {stores['test']}"
        assert len(after.guard) == len(after.scale)
        assert "input guard" in capsys.readouterr().out
    finally:
        unc.write_calibration(plain_run, before)


def test_each_bin_is_fitted_on_the_first_dataset_that_covers_it_with_its_own_threshold():
    """A default validation set first, a wide-S/N set after it: the wide set only fills the
    bins the first lacks (pooled, its other population moved the default set's 1-sigma
    coverage at S/N 20-50 from 0.74 to 0.79), and a bin whose scores are heavy-tailed does not
    raise the other bins' suspect threshold (it did: 11.4 for all against 3.7)."""
    rng = np.random.default_rng(9)
    first = [_guard_case(rng, 120, 8.0, "smooth"), _guard_case(rng, 60, 30.0, "biased")]
    wide = [_guard_case(rng, 60, 30.0, "smooth"), _guard_case(rng, 150, 80.0, "biased")]
    den, raw, flux, sigma, clean = (np.concatenate(a) for a in zip(*first, *wide, strict=True))
    den[-15:, 100:110] *= 1.5  # 10 % of the high-S/N spectra: a wrong feature the network adds
    source = np.repeat([0, 0, 1, 1], [120, 60, 60, 150])
    good = np.ones_like(den, bool)
    cal = unc.fit_calibration(den, raw, flux, sigma, clean, good, method="sample", samples=8,
                              source=source)
    rows = {i: row for i, row in enumerate(cal.coverage)}
    assert (rows[2]["n_spectra"], rows[4]["n_spectra"], rows[5]["n_spectra"]) == (120, 60, 150)
    alone = unc.fit_calibration(den[:180], raw[:180], flux[:180], sigma[:180], clean[:180],
                                good[:180], method="sample", samples=8)
    assert cal.scale[4] == alone.scale[4] and cal.scale[2] == alone.scale[2]
    # the first dataset's threshold in its bins, the wide set's own above S/N 50
    assert cal.thresholds[:5] == [cal.threshold] * 5 and cal.threshold == alone.threshold
    assert cal.thresholds[5] > 3 * cal.threshold
    assert rows[5]["flagged"] <= 0.02
    snr = unc.spectrum_snr(flux, sigma, good)
    assert np.array_equal(cal.threshold_for(snr[:1]), [cal.thresholds[2]])
    # a calibration from before per-bin thresholds uses its one threshold everywhere
    old = unc.Calibration.from_dict({k: v for k, v in json.loads(cal.to_json()).items()
                                     if k != "thresholds"})
    assert (old.threshold_for(snr) == cal.threshold).all()


def test_chi2_binned_adds_up_a_misfit_that_is_coherent_over_pixels():
    """White residuals at their sigma: every block size gives about 1. A misfit of a quarter
    sigma over the whole spectrum moves chi2_red by 1/16 and the 64-pixel blocks by 64/16."""
    rng = np.random.default_rng(3)
    n, n_wave = 200, 4096
    sigma = np.full((n, n_wave), 0.1)
    den = np.ones((n, n_wave))
    flux = den + sigma * rng.standard_normal((n, n_wave))
    sd = np.zeros_like(sigma)
    white = unc.chi2_binned(flux, sigma, den, sd)
    assert white.shape == (n, len(unc.BLOCK_SIZES))
    np.testing.assert_allclose(white.mean(axis=0), 1.0, atol=0.05)
    shifted = unc.chi2_binned(flux + 0.25 * sigma, sigma, den, sd)
    chi2 = unc.chi2_red(flux + 0.25 * sigma, sigma, den, sd)
    assert abs(chi2.mean() - 1.0625) < 0.02
    np.testing.assert_allclose(shifted.mean(axis=0) - white.mean(axis=0),
                               np.array(unc.BLOCK_SIZES) / 16, rtol=0.1)
    # masked pixels do not count; a spectrum without a usable block is NaN
    good = np.ones((n, n_wave), bool)
    good[0] = False
    good[1, :2048] = False
    masked = unc.chi2_binned(flux, sigma, den, sd, good)
    assert np.isnan(masked[0]).all() and np.isfinite(masked[1]).all()


def test_a_coherent_misfit_within_the_noise_is_suspect():
    """A spectrum whose denoised version is off by 0.4 of the noise, coherently over tens
    of pixels (a wrong continuum or line shape, as for stars beyond the grid), moves chi2_red
    by under one spread but its block statistics by many: it is suspect, while each check
    alone flags about the false-alarm rate of the calibration's own spectra."""
    rng = np.random.default_rng(11)
    n, n_wave = 400, 1024

    def case(m, offset):
        clean = 1.0 + 0.2 * np.sin(np.linspace(0, 30, n_wave))[None, :] * rng.uniform(
            0.5, 1, (m, 1))
        sigma = clean / rng.uniform(12, 18, (m, 1))
        flux = clean + sigma * rng.standard_normal(clean.shape)
        den = clean + 0.1 * sigma * rng.standard_normal(clean.shape) + offset * sigma
        return den, 0.1 * sigma, flux, sigma, clean

    den, raw, flux, sigma, clean = case(n, 0.0)
    good = np.ones_like(den, bool)
    cal = unc.fit_calibration(den, raw, flux, sigma, clean, good, method="sample", samples=8)
    assert cal.block_sizes == list(unc.BLOCK_SIZES) and set(cal.levels) == {
        "chi2", "peak", *(f"block{s}" for s in unc.BLOCK_SIZES)}
    snr = unc.spectrum_snr(flux, sigma, good)
    s_cal = raw * cal.scale_for(snr)[:, None]
    chi2, peak = unc.consistency(flux, sigma, den, s_cal, good)
    checks = cal.checks(chi2, peak, snr, None, unc.chi2_binned(flux, sigma, den, s_cal, good))
    for name, u in checks.items():
        assert (u / cal.levels[name] > 1).mean() <= 0.015, name
    assert (cal.suspect(chi2, peak, snr, None,
                        unc.chi2_binned(flux, sigma, den, s_cal, good)) == 1).mean() <= 0.015

    wave = np.sin(np.arange(n_wave) * 2 * np.pi / 200)[None, :]  # period 200 pixels
    d2, r2, f2, s2, c2 = case(100, 0.4 * wave)
    out = unc.apply(cal, d2, r2, f2, s2, np.ones_like(d2, bool))
    assert (out["suspect"] == 1).mean() >= 0.9
    snr2 = unc.spectrum_snr(f2, s2)
    alone = cal.checks(out["chi2_red"], out["chi2_peak"], snr2)
    assert (alone["chi2"] / cal.levels["chi2"] > cal.threshold).mean() <= 0.2
