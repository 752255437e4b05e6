"""One configuration style: each stage's configuration is a frozen object checked where it is
built, written to TOML and read back equal (the objects, and ``--print-config`` piped into
``--config`` on simulate, train, evaluate and run); the command line wins over the file; a bad
key or value in a file is one line and exit status 2."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib

import pytest

from specdenoise import cli
from specdenoise.configfile import dumps
from specdenoise.errors import SpecdenoiseError
from specdenoise.stage_evaluate import EvaluateConfig
from specdenoise.stage_run import PRESETS as RUN_PRESETS
from specdenoise.stage_run import RunConfig
from specdenoise.train.config import TrainConfig, make_config
from specdenoise.train.presets import MODEL_NAMES
from specdenoise.train.presets import PRESETS as TRAIN_PRESETS


def toml_round_trip(obj):
    return type(obj).from_dict(tomllib.loads(dumps(obj.to_dict())))


# --------------------------------------------------------------------------- the writer


def test_writer_reads_back_the_same_values():
    table = {
        "text": 'a "quoted" \\ path\twith ünïcode\nand a line',
        "int": -3, "big": 2**62, "float": 1e-4, "tiny": 5e-324, "huge": 1.7976931348623157e308,
        "inf": math.inf, "minus_inf": -math.inf, "yes": True, "no": False,
        "empty": [], "numbers": [1, 2.5, -0.0], "nested_list": [[1, 2], ["a"]],
        "key with spaces": 1, "dropped": None,
        "table": {"a": 1, "inline": {"b": [1, 2], "c": {"d": "e"}}, "gone": None},
        "tables": [{"x": 1}, {"x": 2, "y": {"z": True}}],
    }
    back = tomllib.loads(dumps(table))
    expected = {k: v for k, v in table.items() if v is not None}
    expected["table"] = {k: v for k, v in table["table"].items() if v is not None}
    assert back == expected
    assert math.isnan(tomllib.loads(dumps({"v": math.nan}))["v"])
    with pytest.raises(ValueError, match="no null"):
        dumps({"v": [1, None]})


# --------------------------------------------------------------------------- the objects


@pytest.mark.parametrize("preset", list(TRAIN_PRESETS))
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_train_config_round_trip(preset, model):
    cfg = make_config("d.zarr", None, "run", model=model, preset=preset, epochs=7, lr=1e-3,
                      init_from="other-run", precision="fp32")
    assert toml_round_trip(cfg) == cfg


def test_train_config_with_a_null_model_option_round_trips():
    """The physics model's template fit alone ('unet': null): TOML has no null, so model_cfg
    goes as its JSON text."""
    cfg = make_config("d.zarr", "v.zarr", "run", model="physics", preset="tiny",
                      model_cfg={"unet": None})
    assert cfg.model_cfg["unet"] is None
    assert json.loads(tomllib.loads(dumps(cfg.to_dict()))["model_cfg"]) == cfg.model_cfg
    assert toml_round_trip(cfg) == cfg


def test_train_config_is_frozen_and_checked_where_built():
    cfg = make_config("d.zarr", None, "run", preset="tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    for bad, match in (({"epochs": 0}, "epochs must be at least 1"),
                       ({"epochs": "ten"}, "'epochs' must be an integer"),
                       ({"lr": "fast"}, "'lr' must be a number"),
                       ({"compile": 1}, "'compile' must be true or false"),
                       ({"seed": -1}, "--seed"),
                       ({"loss": "huber"}, "unknown loss")):
        with pytest.raises(SpecdenoiseError, match=match):
            dataclasses.replace(cfg, **bad)
    with pytest.raises(SpecdenoiseError, match="unknown option 'epoch'"):
        TrainConfig.from_dict({**cfg.to_dict(), "epoch": 3})


@pytest.mark.parametrize("options", [
    {},
    {"runs": ("a", "b"), "train": "t.zarr", "baselines": ("pca", "savgol"), "template_n": None,
     "bins": ("snr=0,5,inf", "teff=4"), "device": "cpu", "batch_size": 8, "pca_k": 4,
     "savgol_window": 7, "gaussian_sigma": 2.5},
    {"runs": ("a",), "baselines": ()},
])
def test_evaluate_config_round_trip(options):
    cfg = EvaluateConfig(data="v.zarr", out="e", **options)
    assert toml_round_trip(cfg) == cfg


def test_evaluate_config_is_checked_where_built():
    for bad, match in (({"baselines": ()}, "nothing to evaluate"),
                       ({"baselines": ("median",)}, "unknown baseline 'median'"),
                       ({"template_n": 0}, "--template-n must be at least 1"),
                       ({"savgol_window": 4}, "--savgol-window"),
                       ({"batch_size": "8"}, "'batch_size' must be an integer")):
        with pytest.raises(SpecdenoiseError, match=match):
            EvaluateConfig(data="v.zarr", out="e", **bad)


@pytest.mark.parametrize("name", list(RUN_PRESETS))
def test_run_presets_are_made_of_stage_configs_and_round_trip(name):
    preset = RUN_PRESETS[name]
    assert all(isinstance(c, TrainConfig) for c in preset.train)
    assert all(isinstance(c, EvaluateConfig) for c in preset.evaluate)
    assert toml_round_trip(preset) == preset
    custom = dataclasses.replace(preset, workdir="w", seed=5, workers=2, device="cpu")
    assert toml_round_trip(custom) == custom


def test_run_config_is_checked_where_built():
    quick = RUN_PRESETS["quick"]
    with pytest.raises(SpecdenoiseError, match="does not simulate"):
        dataclasses.replace(quick, train=(dataclasses.replace(quick.train[0], data="x.zarr"),))
    with pytest.raises(SpecdenoiseError, match="does not train"):
        dataclasses.replace(quick, evaluate=(EvaluateConfig(data="val.zarr", out="e",
                                                            runs=("run-dae",)),))
    with pytest.raises(SpecdenoiseError, match="unknown simulation preset"):
        RunConfig.from_dict({"simulate": [{"split": "train", "preset": "fast", "n": 4,
                                           "chunk_size": 4}]})


def test_a_run_file_changes_what_it_names_and_keeps_the_preset_for_the_rest():
    cfg = RunConfig.from_dict({"preset": "paper", "seed": 3, "train": [
        {"data": "train.zarr", "val": "val.zarr", "out": "run-unet", "preset": "tiny",
         "epochs": 2}], "evaluate": [{"data": "val.zarr", "out": "evaluation",
                                      "runs": ["run-unet"], "baselines": []}]})
    assert cfg.simulate == RUN_PRESETS["paper"].simulate and cfg.seed == 3
    assert cfg.train == (make_config("train.zarr", "val.zarr", "run-unet", preset="tiny",
                                     epochs=2, workers=2),)


def test_simulation_config_round_trip(tmp_path):
    from specdenoise.config import load_config, to_toml

    cfg = load_config(preset="paper", n=64, out="x.zarr", split="train=0.5,val=0.5",
                      grids=[{"grid": "builtin", "weight": 0.5}, {"grid": "g.zarr", "weight": 1}],
                      overrides=["params.rv={dist=\"fixed\",value=0.0}",
                                 "observe.continuum=0.01"])
    path = tmp_path / "sim.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg


# --------------------------------------------------------------------------- the commands


def run_cli(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


COMMANDS = {
    "simulate": ["--preset", "paper", "--n", "64", "--seed", "9", "--out", "s.zarr",
                 "--set", "params.teff.low=4000", "--compressor", "zstd"],
    "train": ["--data", "d.zarr", "--val", "v.zarr", "--out", "run", "--arch", "dae",
              "--preset", "tiny", "--epochs", "4", "--lr", "0.01", "--optimizer", "sgd",
              "--loader-workers", "0", "--model-cfg", '{"widths": [64, 16]}',
              "--no-target-distortion", "--noise-on-device"],
    "evaluate": ["--run", "a", "--run", "b", "--data", "v.zarr", "--out", "e", "--baselines",
                 "savgol,gaussian", "--template-n", "all", "--bins", "snr=0,5,inf",
                 "--pca-k", "8"],
    "run": ["--preset", "best", "--seed", "4", "--workdir", "w", "--workers", "2"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_print_config_then_config_gives_the_same(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, first, err = run_cli(capsys, command, *COMMANDS[command], "--print-config")
    assert status == 0, err
    (tmp_path / "c.toml").write_text(first)
    status, again, err = run_cli(capsys, command, "--config", "c.toml", "--print-config")
    assert status == 0, err
    assert again == first
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize("command,option,key,value", [
    ("simulate", "--n", "n", 12),
    ("train", "--epochs", "epochs", 9),
    ("evaluate", "--pca-k", "pca_k", 5),
    ("run", "--seed", "seed", 11),
])
def test_the_command_line_wins_over_the_file(command, option, key, value, tmp_path, capsys):
    status, text, _ = run_cli(capsys, command, *COMMANDS[command], "--print-config")
    path = tmp_path / "c.toml"
    path.write_text(text)
    status, out, err = run_cli(capsys, command, "--config", path, option, value,
                               "--print-config")
    assert status == 0, err
    mine, theirs = tomllib.loads(out), tomllib.loads(text)
    assert mine[key] == value != theirs[key]
    assert {k: v for k, v in mine.items() if k != key} == \
        {k: v for k, v in theirs.items() if k != key}


def test_train_model_cfg_option_adds_to_the_files(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(run_cli(capsys, "train", *COMMANDS["train"], "--print-config")[1])
    status, out, err = run_cli(capsys, "train", "--config", path, "--model-cfg",
                               '{"dropout": 0.1}', "--print-config")
    assert status == 0, err
    assert tomllib.loads(out)["model_cfg"] == {"widths": [64, 16], "dropout": 0.1}


@pytest.mark.parametrize("command,text,words", [
    ("simulate", "bogus = 1\n", "unknown option 'bogus'"),
    ("simulate", 'n = "many"\n', "'n' must be a positive integer"),
    ("train", 'data = "d.zarr"\nout = "r"\nbogus = 1\n', "unknown option 'bogus'"),
    ("train", 'data = "d.zarr"\nout = "r"\nepochs = "ten"\n', "'epochs' must be an integer"),
    ("train", 'data = "d.zarr"\nout = "r"\nlr = -1.0\n', "lr must be positive"),
    ("train", 'data = "d.zarr"\nout = "r"\nmodel_cfg = 3\n', "must be a table"),
    ("evaluate", 'data = "v.zarr"\nout = "e"\nbogus = 1\n', "unknown option 'bogus'"),
    ("evaluate", 'data = "v.zarr"\nout = "e"\nbaselines = "pca"\n', "'baselines' must be"),
    ("run", "bogus = 1\n", "unknown option 'bogus'"),
    ("run", "seed = -2\n", "--seed must be a non-negative integer"),
    ("run", '[[train]]\ndata = "train.zarr"\nout = "r"\nlr = "fast"\n', "'lr' must be a number"),
    ("run", "train = 3\n", "must be a list of tables"),
    ("run", '[[simulate]]\nsplit = "train"\nn = 4\n', "'preset' is missing"),
    ("train", "data = \n", "is not valid TOML"),
])
def test_a_bad_key_or_value_in_the_file_is_one_line(command, text, words, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    status, out, err = run_cli(capsys, command, "--config", path, "--print-config")
    assert status == 2 and "\n" not in err.strip() and words in err, err
    assert "Traceback" not in err and out == ""


def test_data_and_out_come_from_the_command_line_or_the_file(tmp_path, capsys):
    for argv, words in ((["train", "--out", "r"], "give --data"),
                        (["train", "--data", "d"], "give --out"),
                        (["evaluate", "--run", "r", "--out", "e"], "give --data"),
                        (["evaluate", "--run", "r", "--data", "d"], "give --out")):
        status, _, err = run_cli(capsys, *argv, "--print-config")
        assert status == 2 and words in err and "\n" not in err.strip(), err
    path = tmp_path / "c.toml"
    path.write_text('data = "d.zarr"\nout = "r"\n')
    status, out, err = run_cli(capsys, "train", "--config", path, "--print-config")
    assert status == 0 and tomllib.loads(out)["data"] == "d.zarr", err


def test_a_run_stored_before_these_options_resumes(tmp_path, capsys):
    """A checkpoint whose stored configuration predates fields of today's TrainConfig (and
    says ``amp``, not ``precision``) is read by the frozen, checked config, printed, and
    continued by ``train --resume``."""
    import torch
    from conftest import train_tiny_run

    from specdenoise.train.checkpoint import read_checkpoint

    run, data = train_tiny_run(tmp_path)
    path = run / "checkpoint.pt"
    state = read_checkpoint(path)
    old = {k: v for k, v in state["config"].items()
           if k not in ("precision", "nll_beta", "nll_weight", "nll_detach_mean",
                        "calibrate_spectra")}
    torch.save({**state, "config": {**old, "amp": False}}, path)
    argv = ["train", "--data", data, "--out", run, "--resume", "--epochs", "2"]
    status, out, err = run_cli(capsys, *argv, "--print-config")
    assert status == 0, err
    printed = tomllib.loads(out)
    assert printed["precision"] == "fp32" and printed["epochs"] == 2
    assert printed["calibrate_spectra"] == TrainConfig.calibrate_spectra
    kept = {k: v for k, v in old.items() if k != "epochs" and v is not None}
    assert {k: printed[k] for k in kept} == kept
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    assert read_checkpoint(path)["epoch"] == 2


@pytest.mark.parametrize("change", [
    {}, {"device": "cpu"}, {"epochs": 2, "lr": 0.5, "workers": 0, "seed": 3},
    {"optimizer": "sgd", "scheduler": "cosine"}, {"optimizer": "sgd", "scheduler": "step"},
    {"model_cfg": {"depth": 2, "filters": 4, "dropout": 0.1}},
    {"target_distortion": False, "noise": "device",
                                                "compile": True, "precision": "fp32"},
    {"distortion": "fresh", "distortion_max": 0.05, "epoch_size": 8, "init_from": "first"},
])
def test_run_prints_train_options_that_make_its_training_config(change, capsys):
    """run's train step: the options it prints (and runs) build the run's TrainConfig, or,
    where a field has no option, it names a config file instead."""
    from specdenoise.stage_run import _train_flags

    for tc in (t for p in RUN_PRESETS.values() for t in p.train):
        if "model_cfg" in change:  # options over the preset's, as --model-cfg gives them
            change = {"model_cfg": {**tc.model_cfg, **change["model_cfg"]}}
        tc = dataclasses.replace(tc, **change)
        flags = _train_flags(tc)
        status, out, err = run_cli(capsys, "train", "--data", tc.data, "--val", tc.val, "--arch",
                                   tc.model, "--out", tc.out, *flags, "--print-config")
        assert status == 0, err
        assert TrainConfig.from_dict(tomllib.loads(out)) == tc, flags
        assert _train_flags(dataclasses.replace(tc, momentum=0.5)) is None
