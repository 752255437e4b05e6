"""README must hold as written: every ```python block of it runs against real outputs.

A tiny real ``specdenoise run``-shaped work folder is made once (two small simulated sets from a
small grid, a U-Net trained for one epoch, an evaluation with baselines and the template fit),
laid out where ``specdenoise run --preset quick`` writes (``specdenoise-run/evaluation/...``);
each block then runs in that folder, in a fresh namespace. The Python block of the evaluation
report (``report.md``) runs there too.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import simulate_in_process

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


@pytest.fixture(scope="module")
def workdir(small_grid, tmp_path_factory) -> Path:
    """A work folder laid out like the one ``specdenoise run`` fills, with real outputs."""
    import torch

    from specdenoise.config import load_config
    from specdenoise.stage_evaluate import EvaluateConfig, evaluate
    from specdenoise.train import loop

    root = tmp_path_factory.mktemp("readme")
    work = root / "specdenoise-run"
    params = {"mag": {"dist": "uniform", "low": 17.0, "high": 22.5}}  # S/N over several bins
    simulate_in_process(*(load_config(n=n, chunk_size=8, seed=seed, grid=str(small_grid),
                                      out=str(work / f"{split}.zarr"), params=params)
                          for split, n, seed in (("train", 40, 1), ("val", 24, 2))))
    cfg = loop.make_config(work / "train.zarr", None, work / "run-unet", model="unet",
                           preset="tiny", model_cfg={"depth": 2, "filters": 4}, epochs=1,
                           batch_size=8, workers=0, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loop.train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    evaluate(EvaluateConfig(runs=[work / "run-unet"], data=work / "val.zarr",
                            out=work / "evaluation", train=work / "train.zarr",
                            baselines=["none", "gaussian", "pca", "template"], template_n=3,
                            pca_k=4), progress=False, log=lambda *a: None)
    return root


def test_readme_has_python_blocks():
    blocks = python_blocks(README.read_text())
    assert blocks and any("specdenoise-run/evaluation/cube.zarr" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text()))))
def test_readme_python_block_runs(workdir, monkeypatch, capsys, index):
    block = python_blocks(README.read_text())[index]
    monkeypatch.chdir(workdir)
    exec(compile(block, f"README.md python block {index + 1}", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    if "groupby_bins" in block:  # the table really has numbers in it
        assert re.search(r"\d\.\d", printed), printed


def test_report_python_block_runs(workdir, monkeypatch):
    md = (workdir / "specdenoise-run" / "evaluation" / "report.md").read_text()
    blocks = python_blocks(md)
    assert len(blocks) == 1
    # paths are relative to the work folder: no trace of the machine it ran on
    assert str(workdir) not in md and "evaluation/cube.zarr" in md
    monkeypatch.chdir(workdir / "specdenoise-run")
    namespace = {"__name__": "report"}
    exec(compile(blocks[0], "report.md python block", "exec"), namespace)
    assert np.isfinite(namespace["cube"]["mean_rel_err"].values).any()
