"""The training benchmarks (ablation, U-Net-then-DAE chain) run end to end on tiny models."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from conftest import make_dataset

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY_UNET = json.dumps({"depth": 2, "filters": 4})

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return (make_dataset(d / "small.zarr", n=16, chunk=8, seed=1),
            make_dataset(d / "pool.zarr", n=48, chunk=8, seed=2),
            make_dataset(d / "val.zarr", n=8, chunk=8, seed=3))


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    yield
    for name in ("ablation", "chain", "nuisance", "ood", "ood_statistics", "uncertainty"):
        sys.modules.pop(name, None)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_ablation_writes_one_row_per_variant_and_resumes(stores, bench, tmp_path, capsys):
    import ablation

    small, pool, val = stores
    argv = ["--small", str(small), "--pool", str(pool), "--val", str(val), "--spectra", "32",
            "--epoch-size", "16", "--model-cfg", TINY_UNET, "--only", "base", "pool",
            "--work", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert ablation.main(argv) == 0
    rows = _rows(tmp_path / "out" / "ablation.csv")
    assert [r["variant"] for r in rows] == ["base", "pool"]
    # 32 spectra: two passes over the 16-spectrum set, or two epochs of 16 from the pool
    assert [(r["epochs"], r["train_spectra"]) for r in rows] == [("2", "32"), ("2", "32")]
    assert all(0 < float(r["mean_abs_rel"]) < 1 for r in rows)
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert md.startswith("| variant |") and md.count("\n| ") == 2  # header, then two rows
    assert "Command: `python benchmarks/ablation.py" in md
    # a finished variant is kept, not trained again
    capsys.readouterr()
    assert ablation.main(argv) == 0
    assert "base: kept" in capsys.readouterr().err
    assert _rows(tmp_path / "out" / "ablation.csv") == rows


def test_chain_gives_each_arm_the_unets_cpu_time(stores, bench, tmp_path):
    import chain

    _, pool, val = stores
    argv = ["--data", str(pool), "--val", str(val), "--epochs", "2", "--epoch-size", "16",
            "--unet-cfg", TINY_UNET, "--dae-cfg", json.dumps({"widths": [16]}),
            "--work", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert chain.main(argv) == 0
    rows = {r["arm"]: r for r in _rows(tmp_path / "out" / "chain.csv")}
    assert set(rows) == {"unet", "dae", "chain"}
    state = json.loads((tmp_path / "runs" / "chain.json").read_text())
    # the chain's first network had half the U-Net's epochs, and its CPU counts in the arm
    first = json.loads((tmp_path / "runs" / "chain-unet" / "config.json").read_text())
    assert first["train"]["epochs"] == 1
    assert float(rows["chain"]["cpu_s"]) >= state["chain_unet_cpu"] > 0
    second = json.loads((tmp_path / "runs" / "chain-dae" / "config.json").read_text())
    assert second["train"]["init_from"] == str(tmp_path / "runs" / "chain-unet")
    assert int(rows["dae"]["epochs"]) == state["dae_epochs"] >= 1
    with pytest.raises(SystemExit):
        chain.main([*argv[:4], "--epochs", "1", *argv[6:]])


def test_nuisance_benchmark_measures_every_effect(bench, tmp_path, monkeypatch):
    """benchmarks/nuisance.py end to end on a calibrated tiny U-Net and a 16-node built-in grid
    spanning the default parameter ranges: a row for every effect, and a sky residual 20 times
    the documented example shows in sky_excess and the flag."""
    import nuisance
    from conftest import train_tiny_run

    from specdenoise import stage_grid
    from specdenoise.train import uncertainty as unc

    monkeypatch.setenv("SPECDENOISE_CACHE", str(tmp_path / "cache"))
    run, _ = train_tiny_run(tmp_path)
    unc.calibrate_run(run, make_dataset(tmp_path / "val.zarr", n=40, chunk=20, seed=5),
                      samples=2, device="cpu")
    grid = stage_grid.build_builtin_grid(
        tmp_path / "grid.zarr", progress=False,
        settings={"teff": {"values": [3500.0, 7500.0]}, "logg": {"values": [0.0, 5.0]},
                  "m_h": {"values": [-2.5, 0.75]}, "a_m": {"values": [-0.25, 0.5]}})
    argv = ["--model", str(run), "--grid", str(grid), "--n", "12", "--value",
            "sky_residual=0.2", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out")]
    summary = nuisance.main(argv)
    assert [r["effect"] for r in summary] == list(nuisance.EFFECTS)
    by = {r["effect"]: r for r in summary}
    assert by["none"]["ratio_to_none"] == 1.0 and by["sky_residual"]["value"] == 0.2
    assert by["sky_residual"]["mean_abs_sky_excess"] > 5 * by["none"]["mean_abs_sky_excess"]
    assert by["sky_residual"]["flag_rate"] > by["none"]["flag_rate"]
    assert all(0 < r["mean_rel_err"] < 10 for r in summary)
    rows = _rows(tmp_path / "out" / "nuisance.csv")
    assert {r["effect"] for r in rows} == set(nuisance.EFFECTS)
    # the simulated sets are kept and reused, named after the grid's content: a set from
    # another grid (an older built-in version) is never taken for this one's
    kept = list((tmp_path / "w").glob("*.npz"))
    assert len(kept) == len(nuisance.EFFECTS)
    assert all(f.stem.endswith("_" + nuisance.grid_key(grid)) for f in kept)
    assert len(nuisance.grid_key(grid)) == 12 and nuisance.grid_key(grid) != nuisance.grid_key(
        stage_grid.build_builtin_grid(tmp_path / "grid2.zarr", progress=False, settings={
            "teff": {"values": [3500.0, 7500.0]}, "logg": {"values": [0.0, 5.0]},
            "m_h": {"values": [-2.5, 0.75]}, "a_m": {"values": [-0.5, 0.5]}}))
    assert nuisance.main(argv) == summary


def test_ood_benchmark_scores_every_kind_and_says_which_check_flags(bench, tmp_path,
                                                                     monkeypatch):
    """benchmarks/ood.py end to end on a calibrated tiny U-Net and a 16-node built-in grid: a
    row per kind, unsubtracted sky flagged, and ood_checks.csv with every check of the
    calibration and the misfit count for each out-of-distribution kind."""
    import ood
    from conftest import train_tiny_run

    from specdenoise import stage_grid
    from specdenoise.train import uncertainty as unc

    monkeypatch.setenv("SPECDENOISE_CACHE", str(tmp_path / "cache"))
    run, _ = train_tiny_run(tmp_path)
    val = make_dataset(tmp_path / "val.zarr", n=40, chunk=20, seed=5)
    unc.calibrate_run(run, val, samples=2, device="cpu")
    grid = stage_grid.build_builtin_grid(
        tmp_path / "grid.zarr", progress=False,
        settings={"teff": {"values": [3500.0, 7500.0]}, "logg": {"values": [0.0, 5.0]},
                  "m_h": {"values": [-2.5, 0.75]}, "a_m": {"values": [-0.25, 0.5]}})
    out = tmp_path / "out"
    assert ood.main(["--model", str(run), "--grid", str(grid), "--n", "10", "--work",
                     str(tmp_path / "w"), "--out", str(out)]) == 0
    summary = {r["kind"]: r for r in _rows(out / "ood_summary.csv")}
    assert set(summary) == {*ood.KINDS, "all_ood"}
    assert float(summary["sky"]["flag_rate"]) >= 0.8  # the tiny network misses spikes
    checks = _rows(out / "ood_checks.csv")
    assert [r["kind"] for r in checks] == [k for k in ood.KINDS if k != "in_domain"]
    names = {f"alone_{k}" for k in ("chi2", "peak", "sky", "block4", "block16", "block64")}
    assert names <= set(checks[0])
    for r in checks:
        n_bad = int(r["n_bad_snr10"])
        assert int(r["flagged"]) <= n_bad and int(r["misfit_within_in_domain"]) <= n_bad
        assert all(int(r[k]) <= n_bad for k in names)
    assert (out / "ood.md").read_text().count("|") > 50

    # the comparison of candidate statistics, on the same kinds (kept in the work folder)
    import ood_statistics

    assert ood_statistics.main(["--model", str(run), "--val", str(val), "--n-val", "40",
                                "--n", "10", "--grid", str(grid), "--work", str(tmp_path / "w"),
                                "--out", str(out)]) == 0
    rows = {r["statistics"]: r for r in _rows(out / "ood_statistics.csv")}
    assert {"chi2", "block16", "line", "legendre7",
            "chi2+peak+sky+block4+block16+block64 (levels)"} <= set(rows)
    for r in rows.values():
        assert 0 <= float(r["in_domain_flagged"]) <= 1
        assert int(r["bad_caught"]) <= int(r["bad_total"])
