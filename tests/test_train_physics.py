"""The physics model (amortised template fit + residual U-Net): its exact physics against the
simulation's references, its switches, real tiny training runs with exact resume, inference,
and the guard run on spectra of a second grid (real BOSZ 2024 files, skipped without them)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, WAVE, make_dataset

from specdenoise import SpecdenoiseError, cli
from specdenoise.schema import calib_names
from specdenoise.simulate import calibration as ref
from specdenoise.simulate import source
from specdenoise.train import data as tdata
from specdenoise.train import loop
from specdenoise.train.checkpoint import load_model, read_checkpoint
from specdenoise.train.infer import denoise_array
from specdenoise.train.nets import build_model
from specdenoise.train.nets.base import model_summary
from specdenoise.train.nets.physics import DEFAULT_PARAMS, PhysicsUNet, apply_known_physics
from specdenoise.train.presets import MODEL_NAMES, PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"unet": {"depth": 2, "filters": 4}, "encoder": {"filters": [4] * 6, "hidden": 16},
        "emulator": {"hidden": [16, 32]}}
STEP = float(WAVE[1] - WAVE[0])


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    d = tmp_path_factory.mktemp("phys")
    return (make_dataset(d / "train.zarr", n=40, chunk=16, seed=0, params=True),
            make_dataset(d / "val.zarr", n=16, chunk=8, seed=1, params=True))


def tiny_config(datasets, out, **kw):
    opts = {"epochs": 2, "batch_size": 8, "workers": 0, "device": "cpu", "seed": 3,
            "shuffle_buffer": 16, "model_cfg": TINY}
    opts.update(kw)
    return loop.make_config(datasets[0], datasets[1], out, model="physics", preset="tiny",
                            **opts)


def tiny_model(**kw) -> PhysicsUNet:
    return build_model("physics", **{**TINY, "wave_start": float(WAVE[0]), "wave_step": STEP,
                                     **kw})


# --------------------------------------------------------------------------- exact physics


def test_known_physics_matches_the_simulations_definitions():
    """Doppler shift, extinction and calibration distortion as the simulation defines them."""
    margin, n = 48, WAVE.size
    wide = WAVE[0] + STEP * (np.arange(n + 2 * margin) - margin)
    # a rest-frame spectrum with lines a few pixels wide, as the detector records them
    rest = 1.0 - sum(d * np.exp(-0.5 * ((wide - c) / 0.15) ** 2)
                     for c, d in ((750.0, 0.5), (820.3, 0.7), (866.45, 0.6)))
    rv, ebv = np.array([-480.0, 0.0, 250.0]), np.array([0.08, 0.0, 0.03])
    coef = np.array([[0.01, -0.004, 0.002], [0.0, 0.0, 0.0], [-0.006, 0.003, 0.001]])
    basis = ref.distortion_basis(WAVE)
    got = apply_known_physics(
        torch.tensor(np.tile(rest, (3, 1)), dtype=torch.float32),
        torch.tensor(WAVE, dtype=torch.float64), rv=torch.tensor(rv, dtype=torch.float32),
        ebv=torch.tensor(ebv, dtype=torch.float32),
        kcurve=torch.tensor(source.extinction_curve(WAVE), dtype=torch.float32),
        calib=torch.tensor(coef, dtype=torch.float32),
        basis=torch.tensor(basis, dtype=torch.float32), wave_start=float(WAVE[0]),
        wave_step=STEP, margin=margin).numpy()
    d = source.doppler_factor(rv)
    shifted = np.stack([np.interp(WAVE / di, wide, rest) for di in d])
    want = (shifted * source.extinction_factor(WAVE, ebv) * ref.distortion(coef, basis))
    want *= ref.MEDIAN / np.median(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    # a receding star's lines move to the red by rv / c of their wavelength
    line = np.abs(WAVE - 820.3 * d[2]) < 0.5
    assert WAVE[line][np.argmin(got[2][line])] == pytest.approx(820.3 * d[2], abs=STEP)
    assert np.median(got, axis=1) == pytest.approx([0.5] * 3, rel=1e-6)


def test_model_parts_and_switches():
    torch.manual_seed(0)
    model = tiny_model()
    assert model.in_channels == 2 and model.param_names == DEFAULT_PARAMS
    assert model.aux_losses == ("param", "emulator")
    x = torch.stack([torch.rand(3, 4096) + 0.2, torch.full((3, 4096), 0.05)], dim=1)
    params = torch.tensor([[5000.0, 4.0, 0.0, 0.1, 30.0, 0.05, 0.01, 0.0, -0.01]] * 3)
    target = torch.rand(3, 4096) + 0.2
    assert model.eval()(x).shape == (3, 4096)
    model.train()
    out = model(x, params=params, target=target)
    assert out["flux"].shape == (3, 4096) and set(out["losses"]) == {"param", "emulator"}
    # detach: the denoising loss trains the U-Net only
    out["flux"].square().mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.unet.head.layer.weight.grad.abs().sum() > 0
    joint = tiny_model(detach=False)
    joint(x, params=params, target=target)["flux"].square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in joint.encoder.parameters())
    # without a U-Net the output is the rendering of the estimated parameters
    fit = tiny_model(unet=None).eval()
    with torch.no_grad():
        assert torch.equal(fit(x), fit.emulator(fit.encoder(x)))
    assert fit.unet is None and model_summary(fit)["parameters"] < model_summary(model)[
        "parameters"]
    # without the exact physics every parameter goes through the dense layers
    learned = tiny_model(emulator={"hidden": [8], "known_physics": False})
    assert learned.emulator.i_star == list(range(9)) and learned.emulator.i_rv is None
    # weights 0: the auxiliary losses are off
    off = tiny_model(param_weight=0.0, emulator_weight=0.0)
    assert all(v == 0 for v in off(x, params=params, target=target)["losses"].values())
    with pytest.raises(SpecdenoiseError, match="flux and sigma"):
        model(x[:, 0])
    with pytest.raises(SpecdenoiseError, match="one value per"):
        build_model("physics", params=["teff", "rv"], param_loc=[1.0], param_scale=[1.0])
    with pytest.raises(SpecdenoiseError, match="stellar parameter"):
        build_model("physics", params=["rv", "ebv"])
    assert "physics" in MODEL_NAMES and all("physics" in p["model_cfg"] for p in PRESETS.values())


def test_loader_carries_the_parameters(datasets):
    names = ("teff", "rv", *calib_names(3))
    for mode, require in (("train", tdata.TRAIN_VARS), ("val", tdata.VAL_VARS)):
        info = tdata.inspect_store(datasets[1], require, params=names)
        ds = tdata.SpectrumStream(info, batch_size=5, mode=mode, shuffle_buffer=8)
        want = tdata.read_params(info, names)
        seen = 0
        for batch in ds:
            assert batch["params"].dtype == torch.float32 and batch["params"].shape[1] == 5
            np.testing.assert_allclose(batch["params"].numpy(), want[batch["index"].numpy()],
                                       rtol=1e-6)
            seen += len(batch["index"])
        assert seen == 16
    with pytest.raises(SpecdenoiseError, match="lacks the per-spectrum variable.*nope"):
        tdata.inspect_store(datasets[1], params=("teff", "nope"))


# --------------------------------------------------------------------------- training


def test_training_resume_and_inference(datasets, tmp_path):
    loop.train(tiny_config(datasets, tmp_path / "straight"))
    loop.train(tiny_config(datasets, tmp_path / "split", epochs=1))
    loop.train(loop.resume_config(tmp_path / "split", epochs=2), resume=True)
    a, b = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "split")
    for k, v in a["model"]["state"].items():
        assert torch.equal(v, b["model"]["state"][k]), k
    for ra, rb in zip(a["history"], b["history"], strict=True):
        for k in ("train_loss", "train_param_loss", "train_emulator_loss", "val_mean_abs_rel"):
            assert ra[k] == rb[k], k
    with open(tmp_path / "straight" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"train_param_loss", "train_emulator_loss", "val_param_loss",
            "val_emulator_loss"} <= set(rows[0])
    assert all(math.isfinite(float(r[k])) for r in rows for k in r)
    # the encoder and emulator learn: their losses fall over the two epochs
    assert float(rows[1]["train_emulator_loss"]) < float(rows[0]["train_emulator_loss"])
    # the spec in the checkpoint carries what the store decided: it rebuilds on its own
    spec = a["model"]["cfg"]
    assert spec["wave_start"] == pytest.approx(WAVE[0]) and spec["wave_step"] == pytest.approx(STEP)
    want = tdata.read_params(tdata.inspect_store(datasets[0]), DEFAULT_PARAMS)
    assert spec["param_loc"] == pytest.approx(want.mean(axis=0).tolist(), rel=1e-6)
    # specdenoise denoise: the whole validation store through the command line
    assert cli.main(["denoise", "--run", str(tmp_path / "straight"), "--data",
                     str(datasets[1]), "--out", str(tmp_path / "den.zarr")]) == 0
    import xarray as xr

    den = xr.open_zarr(tmp_path / "den.zarr")["flux_denoised"].values
    assert den.shape == (16, 4096) and np.isfinite(den).all()
    model, _ = load_model(tmp_path / "straight", device="cpu")
    stored = tdata.read_chunk(tdata.open_group(datasets[1]), tdata.inspect_store(
        datasets[1], tdata.VAL_VARS), 0, ("flux", "sigma"))
    np.testing.assert_allclose(den[:8], denoise_array(model, stored["flux"],
                                                      sigma=stored["sigma"]), rtol=1e-5)
    flux = np.full((2, 4096), 3.0, np.float32)
    out = denoise_array(model, flux, sigma=np.full_like(flux, 0.3))
    assert out.shape == flux.shape and np.isfinite(out).all()
    with pytest.raises(SpecdenoiseError, match="sigma"):
        denoise_array(model, flux)


def test_staged_training_starts_from_a_fit(datasets, tmp_path):
    """The template fit alone first, then the whole model starting from its encoder and
    emulator; with their losses off (and no weight decay) they stay exactly as fitted."""
    fit_cfg = {**TINY, "unet": None}
    loop.train(tiny_config(datasets, tmp_path / "fit", epochs=1, model_cfg=fit_cfg))
    fit = read_checkpoint(tmp_path / "fit")["model"]
    assert not any(k.startswith("unet.") for k in fit["state"])
    # the tiny preset's encoder and emulator give way to the fit's (its weights define them)
    loop.train(tiny_config(datasets, tmp_path / "full", epochs=1, weight_decay=0.0,
                           model_cfg={"unet": TINY["unet"], "param_weight": 0.0,
                                      "emulator_weight": 0.0},
                           init_from=str(tmp_path / "fit")))
    full = read_checkpoint(tmp_path / "full")["model"]
    assert full["name"] == "physics" and full["cfg"]["unet"] == TINY["unet"]
    for k in ("params", "param_loc", "param_scale", "encoder", "emulator"):
        assert full["cfg"][k] == fit["cfg"][k], k
    stats = ("running_mean", "running_var", "num_batches_tracked")  # batch norm keeps counting
    weights = [k for k in fit["state"] if not k.endswith(stats)]
    assert len(weights) > 10
    for k in weights:
        assert torch.equal(full["state"][k], fit["state"][k]), k
    assert any(k.startswith("unet.") for k in full["state"])
    with pytest.raises(SpecdenoiseError, match="only from another physics run"):
        loop.train(loop.make_config(datasets[0], None, tmp_path / "y", model="dae",
                                    preset="tiny", device="cpu", workers=0,
                                    init_from=str(tmp_path / "fit")))


def test_bad_settings_end_in_one_line(datasets, tmp_path, capsys):
    with pytest.raises(SpecdenoiseError, match="--distortion stored"):
        loop.train(tiny_config(datasets, tmp_path / "fresh", distortion="fresh"))
    old = make_dataset(tmp_path / "old.zarr", n=16, chunk=8)  # logg ... never written: NaN
    with pytest.raises(SpecdenoiseError, match="logg is NaN or infinite at spectrum 0"):
        loop.train(loop.make_config(old, None, tmp_path / "nan", model="physics",
                                    preset="tiny", device="cpu", workers=0, model_cfg=TINY))
    status = cli.main(["train", "--data", str(datasets[0]), "--out", str(tmp_path / "cli"),
                       "--arch", "physics", "--preset", "tiny", "--model-cfg",
                       '{"params": ["teff", "vsini"]}', "--loader-workers", "0", "--device", "cpu"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vsini" in err[0]


# --------------------------------------------------------------------------- a second grid


def test_second_grid_guard_run(datasets, tmp_path):
    """The guard's recipe end to end on the real BOSZ 2024 files: import them as a grid,
    observe one node through the simulation chain (an LSF wide enough for their R = 5000),
    and evaluate a physics model trained on another grid there."""
    bosz = SHARED_DATA / "bosz2024"
    if not bosz.is_dir():
        pytest.skip(f"reference data {bosz} not available")
    assert cli.main(["grid", "import", "bosz", str(bosz), "--out", str(tmp_path / "g.zarr"),
                     "--no-progress"]) == 0
    fixed = [f'params.{k}={{dist="fixed",value={v}}}'
             for k, v in (("teff", 6000.0), ("logg", 4.0), ("m_h", 0.0), ("a_m", 0.0))]
    argv = ["simulate", "--grid", str(tmp_path / "g.zarr"), "--n", "8", "--chunk-size", "8",
            "--workers", "1", "--no-progress", "--out", str(tmp_path / "bosz.zarr")]
    for s in fixed:
        argv += ["--set", s]
    # R = 5000 is coarser than the PFS line-spread function (3.1-3.2 pixels, which the
    # simulation refuses to sharpen): observe with the narrowest LSF it accepts
    assert cli.main([*argv, "--set", "observe.lsf_fwhm_pix=[3.6,4.4]"]) == 0
    loop.train(tiny_config(datasets, tmp_path / "run", epochs=1))
    assert cli.main(["evaluate", "--run", str(tmp_path / "run"), "--data",
                     str(tmp_path / "bosz.zarr"), "--out", str(tmp_path / "eval"),
                     "--baselines", "none"]) == 0
