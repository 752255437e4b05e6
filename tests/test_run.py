"""``specdenoise run`` composes the stage functions and prints, for each step, a command line
that the real ``specdenoise`` parser reads as the same step.

A real run on a tiny preset (a built-in grid of 16 nodes, built into a fresh user cache; a
local Dask cluster; a tiny U-Net for one epoch; every baseline but the template fit, which first
builds a library from the grid and is covered by tests/test_evaluate.py): its printed commands
are parsed back with :func:`specdenoise.cli.build_parser` and each must name the stage and the
options the step used; its outputs are complete stores; a second run keeps the finished steps.
"""

from __future__ import annotations

import re
import shlex

import pytest

from specdenoise import cli, schema, stage_grid, stage_run
from specdenoise.evaluate.baselines import BASELINES
from specdenoise.simulate import builtin_grid


def tiny_run(baselines) -> stage_run.RunConfig:
    """A run of 16 + 24 spectra, the tiny U-Net for one epoch of batch 8, ``baselines``."""
    from specdenoise.stage_evaluate import EvaluateConfig
    from specdenoise.stage_train import train_config

    return stage_run.RunConfig(
        preset="tiny",
        simulate=(stage_run.SimulateStep("train", "default", 16, 8, 0),
                  stage_run.SimulateStep("val", "default", 24, 8, 1)),
        calibrate=("val.zarr",),  # the step the best preset runs on its two validation sets
        # fields beyond the train preset, printed as --epochs 1 --batch-size 8 ...
        train=(train_config("train.zarr", "val.zarr", "run-unet", model="unet", preset="tiny",
                            epochs=1, batch_size=8, workers=0),),
        evaluate=(EvaluateConfig(data="val.zarr", out="evaluation", runs=("run-unet",),
                                 train="train.zarr", baselines=tuple(baselines),
                                 template_n=2),))


GRID_AXES = {"teff": [3500.0, 7500.0], "logg": [0.0, 5.0], "m_h": [-2.5, 0.75],
             "a_m": [-0.25, 0.5]}


def _commands(printed: str) -> list[list[str]]:
    return [shlex.split(line[len("$ specdenoise "):]) for line in printed.splitlines()
            if line.startswith("$ specdenoise ")]


@pytest.mark.slow
def test_run_composes_the_stages_and_prints_commands_that_mean_the_same(
        tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    # the built-in grid at two nodes per axis, spanning the simulation's default ranges
    monkeypatch.setenv("SPECDENOISE_CACHE", str(tmp_path / "cache"))
    for axis, values in GRID_AXES.items():
        monkeypatch.setitem(builtin_grid.DEFAULT_SETTINGS, axis, {"values": values})
    baselines = {k: v for k, v in BASELINES.items() if k != "template"}
    tiny = tiny_run(baselines)
    work = tmp_path / "work"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outputs = stage_run.run(tiny, work, seed=5, workers=1, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    commands = _commands(printed)
    assert [c[0] for c in commands] == ["grid", "simulate", "simulate", "train", "calibrate",
                                        "evaluate"]

    parser = cli.build_parser()
    grid, sim_train, sim_val, train, calibrate, evaluate = (parser.parse_args(c)
                                                            for c in commands)
    assert (calibrate.run_dir, calibrate.data) == (str(work / "run-unet"),
                                                   [str(work / "val.zarr")])
    assert (grid.grid_command, grid.source, grid.no_progress) == ("build", "builtin", True)
    assert f"built-in grid: {stage_grid.builtin_grid_path()}" in printed
    assert stage_grid.builtin_grid_path().parent == tmp_path / "cache" / "specdenoise" / "grids"
    for args, split, n, seed in ((sim_train, "train", 16, 5), (sim_val, "val", 24, 6)):
        assert (args.preset, args.n, args.chunk_size, args.seed, args.workers) == \
            ("default", n, 8, seed, 1)
        assert args.out == work / f"{split}.zarr" and not args.resume and not args.overwrite
        ds = schema.open_dataset(args.out)  # complete, made with these settings
        assert ds.sizes["spectrum"] == n and ds.attrs["seed"] == seed
    assert (train.model, train.preset, train.epochs, train.batch_size, train.workers,
            train.device) == ("unet", "tiny", 1, 8, 0, "cpu")
    assert (train.data, train.val, train.out) == (str(work / "train.zarr"),
                                                  str(work / "val.zarr"), str(work / "run-unet"))
    assert (evaluate.runs, evaluate.data, evaluate.train, evaluate.out) == (
        [str(work / "run-unet")], str(work / "val.zarr"), str(work / "train.zarr"),
        str(work / "evaluation"))
    assert evaluate.baselines.split(",") == list(baselines) and evaluate.template_n == 2
    assert "validation mean |R| = " in printed and f"dataset: {work / 'val.zarr'}" in printed

    from specdenoise.evaluate.cube import method_info, open_cube
    from specdenoise.train.checkpoint import read_checkpoint

    cube = open_cube(outputs["evaluation"] / "cube.zarr")
    assert list(cube["denoiser"].values)[0] == "unet"
    assert set(method_info(cube)) == {"unet", *baselines}
    assert read_checkpoint(work / "run-unet")["epoch"] == 1
    assert outputs["report"].is_file()

    # again: the datasets are kept, the training run resumes (nothing left to train)
    capsys.readouterr()
    stage_run.run(tiny, work, seed=5, workers=1, device="cpu", progress=False)
    again = capsys.readouterr().out
    assert re.search(r"simulate train: .* is complete, kept", again)
    assert [c[0] for c in _commands(again)] == ["grid", "train", "calibrate", "evaluate"]
    assert "--resume" in _commands(again)[1]
