"""``specdenoise run``: the whole pipeline in one work folder, composed of the stage functions.

built-in grid -> simulate (local Dask cluster) -> train -> evaluate -> report

Each step calls its stage (:func:`~specdenoise.stage_grid.build_builtin_grid`,
:func:`~specdenoise.stage_simulate.simulate`, :func:`~specdenoise.stage_train.train`,
:func:`~specdenoise.stage_evaluate.evaluate`) and first prints the command a user would type for
the same step, so a run can be picked apart and repeated stage by stage. A step whose output is
already complete is skipped, so re-running after an interruption continues where it stopped.
"""

from __future__ import annotations

import functools
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from specdenoise import stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.evaluate.baselines import BASELINES
from specdenoise.progress import log_to_stdout, stamp

#: per preset: spectra per split, simulation seed, models to train (name, train preset, extra);
#: every registered baseline runs
PRESETS = {
    # minutes on two CPU cores, built-in grid build included (README, 'What it measures')
    "quick": {
        "sim_preset": "default",
        "n_train": 12000,
        "n_val": 300,
        "chunk_size": 500,
        # train's quick preset: the best preset's U-Net and ingredients (sigma input,
        # relative-error loss, AdamW one-cycle) for ten epochs of 3000 spectra drawn in turn
        # from a pool of 12,000 (fresh spectra; simulating them costs seconds): the training
        # fills most of the budget
        "models": [("unet", "quick", [])],
        "template_n": 20,
    },
    # the paper's set-up: 1000 training and 1000 validation spectra, 50 epochs, U-Net and DAE,
    # targets over 6.5 magnitudes (the simulation's paper preset)
    "paper": {
        "sim_preset": "paper",
        "n_train": 1000,
        "n_val": 1000,
        "chunk_size": 250,
        "models": [("unet", "paper", []), ("dae", "paper", [])],
        "template_n": 200,
    },
    # the best denoiser we know how to train on a CPU: a pool of 100,000 spectra (1.9 GB),
    # the default validation set (1000 spectra, seed 2), the 'best' training preset (20 epochs of
    # 20,000 spectra, sized to fit two hours on two CPU cores), the template fit on 200 validation
    # spectra
    "best": {
        "sim_preset": "default",
        "n_train": 100000,
        "n_val": 1000,
        "chunk_size": 1000,
        "models": [("unet", "best", [])],
        "template_n": 200,
        # and beside it a validation set spanning S/N ~1 to > 100 (the simulation's 'paper'
        # magnitudes, 16.0-22.5), so that "never worse than the noisy input" is checked where
        # the default set has no spectra (issue 18); the quick preset leaves it out (time)
        "wide": {"sim_preset": "paper", "n": 1000},
    },
}
#: the wide-S/N validation set's seed is the run's seed plus this (train: +0, val: +1)
WIDE_SEED_OFFSET = 2
WIDE_TITLE = "Wide-S/N validation set (S/N about 1 to above 100)"


def _step(title: str, argv: list[str], call: Callable[[], object]) -> None:
    """Print the command line a user would type for this step (``specdenoise ARGV``), then run
    the stage function ``call`` that does the same."""
    print(f"\n== {title} {stamp()}\n$ specdenoise {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    try:
        call()
    except SpecdenoiseError as exc:
        raise SpecdenoiseError(f"step '{title}' failed: {exc}; fix the cause and re-run: "
                               "finished steps are kept") from None
    print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


def _flags(options: dict) -> list[str]:
    """``train`` options as the command line writes them (``epochs=3`` -> ``--epochs 3``)."""
    return [a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def _simulate(cfg: dict, **kwargs) -> None:
    """The simulate step: the stage, and the lines ``specdenoise simulate`` prints."""
    from specdenoise.stage_simulate import simulate

    for path in simulate(cfg, **kwargs):
        print(f"dataset: {path}")


def _train(data, val, out, **kwargs) -> None:
    """The train step: the stage, logging to standard output as ``specdenoise train`` does,
    and its closing line."""
    from specdenoise.stage_train import train

    log_to_stdout()
    cfg, row = train(data, val, out, **kwargs)
    if "val_mean_abs_rel" in row:
        print(f"validation mean |R| = {row['val_mean_abs_rel']:.4%} after epoch {row['epoch']}; "
              f"checkpoint in {cfg.out}")


def _complete(path: Path) -> bool:
    try:
        import zarr

        return bool(zarr.open_group(str(path), mode="r").attrs.get("complete"))
    except Exception:
        return False


def _split_config(out: Path, sim_preset: str, n: int, chunk_size: int, seed: int) -> dict:
    """The simulation config of one split (what ``simulate --preset ... --out OUT`` builds)."""
    from specdenoise.config import load_config

    return load_config(preset=sim_preset, n=n, chunk_size=chunk_size, seed=seed, out=str(out))


def _check_reusable(out: Path, cfg: dict, preset: str, run_seed: int) -> None:
    """Refuse a store in the workdir that this run would not have written (another preset,
    seed or size): it would be kept, or resumed, as if it were this run's."""
    if not out.exists():
        return
    from specdenoise.config import config_hash

    want = config_hash(cfg)
    attrs = stores.read_attrs(out) or {}
    if attrs.get("config_hash") != want:
        raise SpecdenoiseError(
            f"{out} holds a dataset made with other settings than run --preset {preset} "
            f"--seed {run_seed} asks for ({attrs.get('config', {}).get('n', '?')} spectra, "
            f"seed {attrs.get('seed', '?')}); use another --workdir or remove it")


def run(preset: str = "quick", workdir: str | Path = "specdenoise-run", *, seed: int = 1,
        workers: int | None = None, device: str | None = None, progress: bool = True,
        overwrite: bool = False) -> dict:
    """Run every stage; returns the paths of the main outputs.

    A step whose output is complete is kept (an unfinished one continues), unless
    ``overwrite``: then every output in ``workdir`` is made again.
    """
    from specdenoise.stage_evaluate import evaluate
    from specdenoise.stage_grid import build_builtin_grid

    if preset not in PRESETS:
        raise SpecdenoiseError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    quiet = [] if progress else ["--no-progress"]
    t0 = time.perf_counter()

    splits = [("train", p["n_train"], seed, p["sim_preset"]),
              ("val", p["n_val"], seed + 1, p["sim_preset"])]
    if p.get("wide"):
        splits.append(("val-wide", p["wide"]["n"], seed + WIDE_SEED_OFFSET,
                       p["wide"]["sim_preset"]))
    configs = {split: _split_config(work / f"{split}.zarr", sim_preset, n, p["chunk_size"],
                                    split_seed)
               for split, n, split_seed, sim_preset in splits}
    for split, *_ in splits:  # before any step: one line, nothing started
        _check_reusable(work / f"{split}.zarr", configs[split], preset, seed)

    _step("built-in grid", ["grid", "build", "builtin", *quiet],
          lambda: print(f"built-in grid: {build_builtin_grid(progress=progress)}"))

    data = {}
    for split, n, split_seed, sim_preset in splits:
        out = work / f"{split}.zarr"
        data[split] = out
        if _complete(out) and not overwrite:
            print(f"\n== simulate {split}: {out} is complete, kept")
            continue
        argv = ["simulate", "--preset", sim_preset, "--n", str(n), "--chunk-size",
                str(p["chunk_size"]), "--seed", str(split_seed), "--out", str(out), *quiet]
        resume = out.exists() and not overwrite
        if out.exists():
            argv.append("--overwrite" if overwrite else "--resume")
        if workers:
            argv += ["--workers", str(workers)]
        _step(f"simulate {split} ({n} spectra, seed {split_seed})", argv,
              functools.partial(_simulate, configs[split], workers=workers, resume=resume,
                                overwrite=overwrite and out.exists(), progress=progress))

    runs = []
    for model, train_preset, extra in p["models"]:
        run_dir = work / f"run-{model}"
        runs.append(run_dir)
        argv = ["train", "--data", str(data["train"]), "--val", str(data["val"]), "--arch",
                model, "--out", str(run_dir), *quiet]
        kwargs = {"model": model, "progress": None if progress else False}
        options = dict(extra)  # (TrainConfig field, value) pairs beyond the preset
        exists = (run_dir / stores.CHECKPOINT_NAME).exists()
        if exists and overwrite:
            argv += ["--overwrite", "--preset", train_preset, *_flags(options)]
            kwargs.update(overwrite=True, preset=train_preset, **options)
        elif exists:
            argv.append("--resume")  # the checkpoint holds the preset it started with
            kwargs.update(resume=True)
        else:
            argv += ["--preset", train_preset, *_flags(options)]
            kwargs.update(preset=train_preset, **options)
        if device:
            argv += ["--device", device]
            kwargs["device"] = device
        _step(f"train {model} ({train_preset} preset)", argv,
              functools.partial(_train, data["train"], data["val"], run_dir, **kwargs))

    eval_dir = work / "evaluation"
    evals = [("val", eval_dir)] + ([("val-wide", work / "evaluation-wide")]
                                   if p.get("wide") else [])
    for split, folder in evals:
        argv = ["evaluate"]
        for r in runs:
            argv += ["--run", str(r)]
        argv += ["--data", str(data[split]), "--train", str(data["train"]), "--out",
                 str(folder), "--baselines", ",".join(BASELINES), "--template-n",
                 str(p["template_n"]), "--overwrite", *quiet]
        if device:
            argv += ["--device", device]
        _step(f"evaluate ({split}.zarr)", argv,
              functools.partial(evaluate, runs, data[split], folder, train=data["train"],
                                baselines=list(BASELINES), template_n=p["template_n"],
                                device=device, overwrite=True, progress=progress))
    if p.get("wide"):
        from specdenoise.evaluate.report import rewrite_with_companions
        from specdenoise.stage_evaluate import record_outputs

        # the main report shows the wide-S/N set beside the default one; the rewritten report
        # stays evaluate's own (its manifest), so a later --overwrite may replace it
        rewrite_with_companions(eval_dir, {WIDE_TITLE: work / "evaluation-wide"})
        record_outputs(eval_dir, ["report.md", "report.html"])

    outputs = {
        "train": data["train"],
        "val": data["val"],
        **{f"model_{r.name.removeprefix('run-')}": r for r in runs},
        "evaluation": eval_dir,
        "report": eval_dir / "report.html",
        **({"val_wide": data["val-wide"], "evaluation_wide": work / "evaluation-wide"}
           if p.get("wide") else {}),
    }
    print(f"\n== done in {time.perf_counter() - t0:.0f} s {stamp()}")
    for name, path in outputs.items():
        print(f"   {name:12s} {path}")
    # the answer last, where a user looks: every method against the template fit, by S/N
    from specdenoise.evaluate.cube import open_cube
    from specdenoise.evaluate.report import terminal_summary
    from specdenoise.evaluate.summary import open_summary

    for split, folder in reversed(evals):
        print(f"\n== {split}.zarr\n" + terminal_summary(open_cube(folder / "cube.zarr"),
                                                      open_summary(folder / "summary.zarr")),
              flush=True)
    return outputs
