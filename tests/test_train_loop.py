"""Training loop: tiny real runs, exact resume, metrics, presets, CLI and bad input."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import make_dataset

from specdenoise import SpecdenoiseError, cli
from specdenoise.train import loop
from specdenoise.train.checkpoint import load_model, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_UNET = {"depth": 2, "filters": 4}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    d = tmp_path_factory.mktemp("loop")
    return (make_dataset(d / "train.zarr", n=40, chunk=16, seed=0),
            make_dataset(d / "val.zarr", n=16, chunk=8, seed=1))


def tiny_config(datasets, out, **kw):
    opts = {"epochs": 2, "batch_size": 8, "workers": 0, "device": "cpu", "seed": 3,
            "shuffle_buffer": 16}
    opts.update(kw)
    model = opts.pop("model", "unet")
    model_cfg = opts.pop("model_cfg", TINY_UNET if model == "unet" else {"widths": [64, 16]})
    return loop.make_config(datasets[0], datasets[1], out, model=model, preset="tiny",
                            model_cfg=model_cfg, **opts)


def test_training_writes_checkpoint_and_metrics(datasets, tmp_path):
    cfg = tiny_config(datasets, tmp_path / "run", epochs=2)
    row = loop.train(cfg)
    assert row["epoch"] == 2 and row["n_train"] == 40 and row["n_val"] == 16
    assert 0 < row["val_mean_abs_rel"] < 1
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"lr", "train_loss", "val_loss", "val_mean_abs_rel", "spectra_per_s"} <= set(rows[0])
    state = read_checkpoint(tmp_path / "run")
    assert state["epoch"] == 2 and state["package_version"]
    assert state["normalisation"]["target_distortion"] is True
    assert state["config"]["optimizer"] == "adamw" and len(state["wave"]) == 4096
    assert {"optimizer", "scheduler", "rng", "history"} <= set(state)
    model, config = load_model(tmp_path / "run" / "checkpoint.pt", device="cpu")
    assert not model.training and config["model"]["name"] == "unet"
    assert config["model"]["summary"]["parameters"] > 0


def test_a_resume_may_name_the_same_dataset_by_another_path(datasets, tmp_path, monkeypatch):
    """``run --workdir best`` resuming a run first made with an absolute workdir failed with
    "trained with data = '/abs/best/train.zarr', not 'best/train.zarr'"."""
    loop.train(tiny_config(datasets, tmp_path / "run", epochs=1))
    train, val = datasets
    monkeypatch.chdir(train.parent)
    cfg = loop.resume_config(tmp_path / "run", data=train.name,
                             val=f"../{val.parent.name}/{val.name}", epochs=2)
    assert cfg.epochs == 2
    with pytest.raises(SpecdenoiseError, match="trained with data"):
        loop.resume_config(tmp_path / "run", data=val.name)  # another dataset


def test_resume_is_bitwise_exact(datasets, tmp_path):
    loop.train(tiny_config(datasets, tmp_path / "straight", epochs=2))
    loop.train(tiny_config(datasets, tmp_path / "split", epochs=1))
    cfg = loop.resume_config(tmp_path / "split", epochs=2)
    loop.train(cfg, resume=True)
    a, b = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "split")
    assert a["model"]["state"].keys() == b["model"]["state"].keys()
    for k, v in a["model"]["state"].items():
        assert torch.equal(v, b["model"]["state"][k]), k
    for k, v in a["optimizer"]["state"].items():
        for name, t in v.items():
            other = b["optimizer"]["state"][k][name]
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(other)), (k, name)
    assert a["history"][1]["train_loss"] == b["history"][1]["train_loss"]
    with open(tmp_path / "split" / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]


def test_dae_with_device_noise_and_chi2(datasets, tmp_path):
    cfg = tiny_config(datasets, tmp_path / "dae", model="dae", epochs=1, loss="chi2",
                      noise="device", target_distortion=False, optimizer="sgd", lr=0.01,
                      scheduler="step")
    row = loop.train(cfg)
    assert row["n_train"] == 40 and math.isfinite(row["train_loss"])
    assert read_checkpoint(tmp_path / "dae")["normalisation"]["target_distortion"] is False


def test_presets_and_schedules(tmp_path):
    paper = loop.make_config("a", "b", tmp_path, preset="paper")
    assert loop.make_config("a", "b", tmp_path).preset == "quick"  # what a user starts with
    assert (paper.optimizer, paper.lr, paper.batch_size, paper.epochs, paper.loss) == (
        "sgd", 0.1, 100, 50, "mse")
    assert loop.lr_at(paper, 19) == pytest.approx(0.1)
    assert loop.lr_at(paper, 20) == pytest.approx(0.01)
    assert loop.lr_at(paper, 49) == pytest.approx(0.01)
    quick = loop.make_config("a", "b", tmp_path, preset="tiny", epochs=4)
    assert quick.optimizer == "adamw" and loop.lr_at(quick, 0) == quick.lr
    assert loop.lr_at(quick, 2) == pytest.approx(quick.lr / 2)
    with pytest.raises(SpecdenoiseError, match="unknown loss"):
        loop.make_config("a", "b", tmp_path, loss="huberish")


def test_cli_train_and_errors(datasets, tmp_path, capsys):
    train, val = datasets
    out = tmp_path / "cli"
    args = ["train", "--data", str(train), "--val", str(val), "--arch", "unet", "--preset",
            "tiny", "--out", str(out), "--epochs", "1", "--batch-size", "8",
            "--loader-workers", "0", "--device", "cpu", "--model-cfg", '{"depth": 2, "filters": 4}']
    assert cli.main(args) == 0
    assert "validation mean |R|" in capsys.readouterr().out
    # the same --out again without --resume
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a training run" in err and "\n" not in err
    # resume with a changed option that changes the maths
    assert cli.main(["train", "--data", str(train), "--out", str(out), "--resume", "--lr",
                     "0.5"]) == 2
    assert "was trained with lr" in capsys.readouterr().err
    # a dataset with NaNs fails with one line, even from a DataLoader worker
    bad = make_dataset(tmp_path / "nan.zarr", n=16, chunk=8, nan_at=11)
    assert cli.main(["train", "--data", str(bad), "--out", str(tmp_path / "nan"), "--preset",
                     "tiny", "--loader-workers", "1", "--device", "cpu", "--model-cfg", "[3]"]) == 2
    assert "--model-cfg must be a JSON object" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(bad), "--out", str(tmp_path / "nan"), "--preset",
                     "tiny", "--loader-workers", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "NaN" in err and "spectrum 11" in err
    # missing variable / wrong wavelength length
    nosig = make_dataset(tmp_path / "nosig.zarr", n=4, chunk=4, drop=("sigma",))
    assert cli.main(["train", "--data", str(nosig), "--out", str(tmp_path / "x")]) == 2
    assert "lacks variable(s) sigma" in capsys.readouterr().err
    short = make_dataset(tmp_path / "short.zarr", n=4, chunk=4, n_wave=1024)
    assert cli.main(["train", "--data", str(train), "--val", str(short), "--out",
                     str(tmp_path / "y")]) == 2
    assert "1024 wavelength pixels" in capsys.readouterr().err
