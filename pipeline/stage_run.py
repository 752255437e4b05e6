"""``specdenoise run``: the whole pipeline in one work folder, composed of the stage functions.

built-in grid -> simulate (local Dask cluster) -> train -> evaluate -> report

Each step calls its stage (:func:`~specdenoise.stage_grid.build_builtin_grid`,
:func:`~specdenoise.stage_simulate.simulate`, :func:`~specdenoise.stage_train.train`,
:func:`~specdenoise.stage_evaluate.evaluate`) and first prints the command a user would type for
the same step, so a run can be picked apart and repeated stage by stage. A step whose output is
already complete is skipped, so re-running after an interruption continues where it stopped.

What a run does is a :class:`RunConfig` made of the stages' own configurations (a
:class:`SimulateStep` per dataset, a :class:`~specdenoise.train.config.TrainConfig` per network,
an :class:`~specdenoise.stage_evaluate.EvaluateConfig` per evaluated dataset); each preset in
:data:`PRESETS` is one, and ``run --config FILE`` reads one from TOML.
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from specdenoise import configfile, stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.evaluate.baselines import BASELINES
from specdenoise.progress import log_to_stdout, stamp
from specdenoise.stage_evaluate import EvaluateConfig
from specdenoise.train.config import TrainConfig


@dataclass(frozen=True)
class SimulateStep:
    """A dataset the run simulates: ``WORKDIR/<split>.zarr``, written by ``specdenoise simulate
    --preset PRESET --n N --chunk-size CHUNK_SIZE --seed S`` with S the run's seed plus
    ``seed_offset`` (train +0, val +1, val-wide +2)."""

    split: str
    preset: str
    n: int
    chunk_size: int
    seed_offset: int = 0

    def __post_init__(self):
        configfile.check_types(self, f"run simulate '{self.split}' option")
        from specdenoise.config import PRESETS as SIM_PRESETS

        if self.preset not in SIM_PRESETS:
            raise SpecdenoiseError(f"run simulate '{self.split}': unknown simulation preset "
                                   f"{self.preset!r}; choose one of {', '.join(SIM_PRESETS)}")
        if self.n < 1 or self.chunk_size < 1 or self.seed_offset < 0:
            raise SpecdenoiseError(f"run simulate '{self.split}': n and chunk_size must be "
                                   "positive and seed_offset not negative")

    @property
    def store(self) -> str:
        return f"{self.split}.zarr"


@dataclass(frozen=True)
class RunConfig:
    """What ``specdenoise run`` does (``--config`` / ``--print-config``; a preset is one).

    ``simulate``: the datasets, in order; ``train``: one
    :class:`~specdenoise.train.config.TrainConfig` per network; ``evaluate``: one
    :class:`~specdenoise.stage_evaluate.EvaluateConfig` per evaluated dataset, the first one the
    main report (the others are shown beside it). Their paths are relative to ``workdir``.
    ``seed``: the simulation seed of the run (each dataset adds its ``seed_offset``);
    ``workers``: Dask worker processes of the simulations (None: one per CPU core);
    ``device``: where the networks run (None: each config's own). ``calibrate``: datasets
    every trained network is calibrated on after training, each S/N bin on the first that
    covers it (``specdenoise calibrate --data ...``; empty: the calibration training writes
    from its validation set is kept).
    """

    simulate: tuple[SimulateStep, ...]
    train: tuple[TrainConfig, ...]
    evaluate: tuple[EvaluateConfig, ...]
    preset: str = "quick"
    workdir: str = "specdenoise-run"
    seed: int = 1
    workers: int | None = None
    device: str | None = None
    calibrate: tuple[str, ...] = ()

    def __post_init__(self):
        configfile.check_types(self, "run option")
        if not 0 <= self.seed < 2**63:
            raise SpecdenoiseError(f"--seed must be a non-negative integer, got {self.seed}")
        if self.workers is not None and self.workers < 1:
            raise SpecdenoiseError(f"--workers must be at least 1, got {self.workers}")
        stores_made = [s.store for s in self.simulate]
        if len(set(stores_made)) < len(stores_made):
            raise SpecdenoiseError("run: two simulate steps write the same split")
        runs = [c.out for c in self.train]

        def simulated(path, reader: str) -> None:
            if path is not None and path not in stores_made:
                raise SpecdenoiseError(f"run: {reader} reads '{path}', which the run does not "
                                       f"simulate ({', '.join(stores_made)})")

        for c in self.train:
            simulated(c.data, f"training run '{c.out}'")
            simulated(c.val, f"training run '{c.out}'")
        for path in self.calibrate:
            simulated(path, "calibrate")
        if not self.evaluate:
            raise SpecdenoiseError("run: no evaluation (give at least one [[evaluate]])")
        for c in self.evaluate:
            simulated(c.data, f"evaluation '{c.out}'")
            simulated(c.train, f"evaluation '{c.out}'")
            for r in c.runs:
                if r not in runs:
                    raise SpecdenoiseError(f"run: evaluation '{c.out}' names run '{r}', which "
                                           f"the run does not train ({', '.join(runs)})")

    def to_dict(self) -> dict:
        """TOML values: ``[[simulate]]``, ``[[train]]`` and ``[[evaluate]]`` tables."""
        return {"preset": self.preset, "workdir": self.workdir, "seed": self.seed,
                "workers": self.workers, "device": self.device,
                "calibrate": list(self.calibrate),
                "simulate": [asdict(s) for s in self.simulate],
                "train": [c.to_dict() for c in self.train],
                "evaluate": [c.to_dict() for c in self.evaluate]}

    @classmethod
    def from_dict(cls, table: Mapping, where: str = "run config") -> RunConfig:
        """The run a TOML table describes: the preset it names (default quick) for the stage
        tables it leaves out. A ``[[train]]`` table is read as ``train --config`` reads one
        (over the train preset it names)."""
        from specdenoise.stage_train import train_config
        from specdenoise.train.config import table_values

        configfile.check_keys(table, configfile.field_names(cls), where)
        name = table.get("preset", "quick")
        if name not in PRESETS:
            raise SpecdenoiseError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        base = PRESETS[name]
        values = {k: v for k, v in table.items() if k not in ("simulate", "train", "evaluate")}

        def tables(key):
            items = table.get(key)
            if items is None:
                return None
            if not isinstance(items, list) or not all(isinstance(x, Mapping) for x in items):
                raise SpecdenoiseError(f"{where}: '{key}' must be a list of tables ([[{key}]])")
            return items

        sims, trains, evals = tables("simulate"), tables("train"), tables("evaluate")
        if sims is not None:
            values["simulate"] = tuple(configfile.build(SimulateStep, s, f"{where}: [[simulate]]")
                                       for s in sims)
        if trains is not None:
            made = []
            for t in trains:
                v = table_values(t, f"{where}: [[train]]")
                for key in ("data", "out"):
                    if key not in v:
                        raise SpecdenoiseError(f"{where}: a [[train]] table lacks '{key}'")
                made.append(train_config(v.pop("data"), v.pop("val", None), v.pop("out"), **v))
            values["train"] = tuple(made)
        if evals is not None:
            values["evaluate"] = tuple(EvaluateConfig.from_dict(e, f"{where}: [[evaluate]]")
                                       for e in evals)
        return replace(base, **configfile.coerce(cls, values))


def _train(model: str, preset: str) -> TrainConfig:
    """A run's training of ``model`` with the train preset ``preset`` and nothing else."""
    from specdenoise.stage_train import train_config

    return train_config("train.zarr", "val.zarr", f"run-{model}", model=model, preset=preset)


def _evaluate(runs, data: str, out: str, template_n: int) -> EvaluateConfig:
    """A run's evaluation: every trained network and every registered baseline."""
    return EvaluateConfig(data=data, out=out, runs=tuple(runs), train="train.zarr",
                          baselines=tuple(BASELINES), template_n=template_n)


#: ``run --preset`` choices (minutes on two CPU cores, built-in grid build included; README,
#: 'What it measures')
PRESETS = {
    "quick": RunConfig(
        preset="quick",
        simulate=(SimulateStep("train", "default", 12000, 500, 0),
                  SimulateStep("val", "default", 300, 500, 1)),
        # train's quick preset: the best preset's U-Net and ingredients (sigma input,
        # relative-error loss, AdamW one-cycle) for ten epochs of 3000 spectra drawn in turn
        # from a pool of 12,000 (fresh spectra; simulating them costs seconds): the training
        # fills most of the budget
        train=(_train("unet", "quick"),),
        evaluate=(_evaluate(["run-unet"], "val.zarr", "evaluation", 20),),
    ),
    # the paper's set-up: 1000 training and 1000 validation spectra, 50 epochs, U-Net and DAE,
    # targets over 6.5 magnitudes (the simulation's paper preset)
    "paper": RunConfig(
        preset="paper",
        simulate=(SimulateStep("train", "paper", 1000, 250, 0),
                  SimulateStep("val", "paper", 1000, 250, 1)),
        train=(_train("unet", "paper"), _train("dae", "paper")),
        evaluate=(_evaluate(["run-unet", "run-dae"], "val.zarr", "evaluation", 200),),
    ),
    # the best denoiser we know how to train on a CPU: a pool of 100,000 spectra (1.9 GB),
    # the default validation set (1000 spectra, seed 2), the 'best' training preset (35 epochs of
    # 20,000 spectra, sized to fit four hours on two CPU cores), the template fit on 200 validation
    # spectra; and beside it a validation set spanning S/N ~1 to > 100 (the simulation's 'paper'
    # magnitudes, 16.0-22.5), so that "never worse than the noisy input" is checked where the
    # default set has no spectra (issue 18); the quick preset leaves it out (time)
    "best": RunConfig(
        preset="best",
        simulate=(SimulateStep("train", "default", 100000, 1000, 0),
                  SimulateStep("val", "default", 1000, 1000, 1),
                  SimulateStep("val-wide", "paper", 1000, 1000, 2)),
        train=(_train("unet", "best"),),
        # sigma_denoised and the input guard fitted on both validation sets: the default one
        # has no spectrum above S/N 50, where the network's error is its line-shrinkage floor
        # and sigma extrapolated from S/N 20-50 was 6x too small (results/best/)
        calibrate=("val.zarr", "val-wide.zarr"),
        evaluate=(_evaluate(["run-unet"], "val.zarr", "evaluation", 200),
                  _evaluate(["run-unet"], "val-wide.zarr", "evaluation-wide", 200)),
    ),
}
#: the title of an evaluation shown beside the main report, by the dataset it evaluates
COMPANION_TITLES = {"val-wide.zarr": "Wide-S/N validation set (S/N about 1 to above 100)"}


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


def _simulate(cfg, **kwargs) -> None:
    """The simulate step: the stage, and the lines ``specdenoise simulate`` prints."""
    from specdenoise.stage_simulate import simulate

    for path in simulate(cfg, **kwargs):
        print(f"dataset: {path}")


def _run_train(data, val, out, **kwargs) -> None:
    """The train step: the stage, logging to standard output as ``specdenoise train`` does,
    and its closing line."""
    from specdenoise.stage_train import train

    log_to_stdout()
    cfg, row = train(data, val, out, **kwargs)
    if "val_mean_abs_rel" in row:
        print(f"validation mean |R| = {row['val_mean_abs_rel']:.4%} after epoch {row['epoch']}; "
              f"checkpoint in {cfg.out}")


#: TrainConfig fields that ``specdenoise train`` sets with an option: field -> its words
_TRAIN_OPTIONS = {
    "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
    "optimizer": "--optimizer", "scheduler": "--scheduler", "epoch_size": "--epoch-size",
    "loss": "--loss", "device": "--device", "precision": "--precision",
    "distortion": "--distortion", "distortion_max": "--distortion-max", "seed": "--seed",
    "workers": "--loader-workers", "init_from": "--init-from",
}


def _train_flags(tc: TrainConfig) -> list[str] | None:
    """The ``train`` options that make ``tc`` from its preset (``--preset P`` and what differs
    from the preset), or None when a field that differs has no option (a run file's
    momentum, say): then the configuration goes to train as a file."""
    import json

    from specdenoise.stage_train import train_config

    base = train_config(tc.data, tc.val, tc.out, model=tc.model, preset=tc.preset)
    words = ["--preset", tc.preset]
    for f in dataclasses.fields(tc):
        mine, theirs = getattr(tc, f.name), getattr(base, f.name)
        if mine == theirs:
            continue
        if f.name in _TRAIN_OPTIONS:
            words += [_TRAIN_OPTIONS[f.name], str(mine)]
        elif f.name == "model_cfg":
            words += ["--model-cfg", json.dumps(mine)]
        elif (f.name, mine) == ("target_distortion", False):
            words.append("--no-target-distortion")
        elif (f.name, mine) == ("noise", "device"):
            words.append("--noise-on-device")
        elif (f.name, mine) == ("compile", True):
            words.append("--compile")
        else:
            return None
    if "--optimizer" in words and "--scheduler" not in words:  # else it brings its own
        words += ["--scheduler", tc.scheduler]
    return words


def _complete(path: Path) -> bool:
    try:
        import zarr

        return bool(zarr.open_group(str(path), mode="r").attrs.get("complete"))
    except Exception:
        return False


def _split_config(out: Path, sim_preset: str, n: int, chunk_size: int, seed: int):
    """The simulation config of one split (what ``simulate --preset ... --out OUT`` builds)."""
    from specdenoise.config import load_config

    return load_config(preset=sim_preset, n=n, chunk_size=chunk_size, seed=seed, out=str(out))


def _check_reusable(out: Path, cfg, preset: str, run_seed: int) -> None:
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


def run(preset: str | RunConfig = "quick", workdir: str | Path | None = None, *,
        seed: int | None = None, workers: int | None = None, device: str | None = None,
        progress: bool = True, overwrite: bool = False) -> dict:
    """Run every stage of ``preset`` (a :data:`PRESETS` name or a :class:`RunConfig`); returns
    the paths of the main outputs. ``workdir``, ``seed``, ``workers`` and ``device`` given (not
    None) replace the config's.

    A step whose output is complete is kept (an unfinished one continues), unless
    ``overwrite``: then every output in ``workdir`` is made again.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise SpecdenoiseError(f"unknown preset {preset!r}; choose one of "
                                   f"{', '.join(PRESETS)}")
        preset = PRESETS[preset]
    cfg = replace(preset, **configfile.overlay({"workdir": None if workdir is None
                                                else str(workdir), "seed": seed,
                                                "workers": workers, "device": device}))
    seed, workers, device = cfg.seed, cfg.workers, cfg.device
    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    quiet = [] if progress else ["--no-progress"]
    t0 = time.perf_counter()

    from specdenoise.stage_evaluate import evaluate
    from specdenoise.stage_grid import build_builtin_grid

    configs = {s.split: _split_config(work / s.store, s.preset, s.n, s.chunk_size,
                                      seed + s.seed_offset) for s in cfg.simulate}
    for s in cfg.simulate:  # before any step: one line, nothing started
        _check_reusable(work / s.store, configs[s.split], cfg.preset, seed)

    _step("built-in grid", ["grid", "build", "builtin", *quiet],
          lambda: print(f"built-in grid: {build_builtin_grid(progress=progress)}"))

    data = {}
    for s in cfg.simulate:
        out = work / s.store
        split, n, split_seed = s.split, s.n, seed + s.seed_offset
        data[split] = out
        if _complete(out) and not overwrite:
            print(f"\n== simulate {split}: {out} is complete, kept")
            continue
        argv = ["simulate", "--preset", s.preset, "--n", str(n), "--chunk-size",
                str(s.chunk_size), "--seed", str(split_seed), "--out", str(out), *quiet]
        resume = out.exists() and not overwrite
        if out.exists():
            argv.append("--overwrite" if overwrite else "--resume")
        if workers:
            argv += ["--workers", str(workers)]
        _step(f"simulate {split} ({n} spectra, seed {split_seed})", argv,
              functools.partial(_simulate, configs[split], workers=workers, resume=resume,
                                overwrite=overwrite and out.exists(), progress=progress))

    runs = []
    for tc in cfg.train:
        tc = replace(tc, device=device or tc.device)
        run_dir = work / tc.out
        runs.append(run_dir)
        argv = ["train", "--data", str(work / tc.data)]
        if tc.val is not None:
            argv += ["--val", str(work / tc.val)]
        argv += ["--arch", tc.model, "--out", str(run_dir), *quiet]
        exists = (run_dir / stores.CHECKPOINT_NAME).exists()
        data_path = work / tc.data
        val_path = None if tc.val is None else work / tc.val
        kwargs = {"progress": None if progress else False}
        if exists and not overwrite:
            argv.append("--resume")  # the checkpoint holds the configuration it started with
            kwargs["resume"] = True
            if tc.device != TrainConfig.device:
                argv += ["--device", tc.device]
                kwargs["device"] = tc.device
        else:
            # every field of the config: the stage rebuilds exactly this TrainConfig
            kwargs.update({k: v for k, v in dataclasses.asdict(tc).items()
                           if k not in ("data", "val", "out")}, overwrite=exists)
            argv += ["--overwrite"] if exists else []
            flags = _train_flags(tc)
            if flags is None:
                # train has no option for a field: the whole configuration goes as a file
                # beside the run
                concrete = replace(tc, data=argv[2], val=None if tc.val is None else argv[4],
                                   out=str(run_dir))
                toml = work / f"{run_dir.name}.toml"
                stores.write_file(toml, lambda f, c=concrete: f.write_text(
                    configfile.dumps(c.to_dict())), overwrite=True)
                flags = ["--config", str(toml)]
            argv += flags
        _step(f"train {tc.model} ({tc.preset} preset)", argv,
              functools.partial(_run_train, data_path, val_path, run_dir, **kwargs))

    if cfg.calibrate:
        from specdenoise.stage_calibrate import calibrate

        cal_data = [work / d for d in cfg.calibrate]
        for run_dir in runs:
            argv = ["calibrate", "--run", str(run_dir), "--data", *map(str, cal_data)]
            if device:
                argv += ["--device", device]
            # always, also on a resume: it costs minutes against the evaluations' tens of
            # minutes, and a training that finishes writes its own from --val alone
            _step(f"calibrate {run_dir.name} on {', '.join(cfg.calibrate)}", argv,
                  functools.partial(calibrate, run_dir, cal_data, device=device))

    evals = []
    for ec in cfg.evaluate:
        folder = work / ec.out
        evals.append((Path(ec.data).stem, folder))
        argv = ["evaluate"]
        for r in ec.runs:
            argv += ["--run", str(work / r)]
        argv += ["--data", str(work / ec.data)]
        if ec.train is not None:
            argv += ["--train", str(work / ec.train)]
        argv += ["--out", str(folder)]
        if ec.baselines is not None:
            argv += ["--baselines", ",".join(ec.baselines)]
        argv += ["--template-n", "all" if ec.template_n is None else str(ec.template_n)]
        for b in ec.bins:
            argv += ["--bins", b]
        for name in ("batch_size", "pca_k", "savgol_window", "gaussian_sigma", "uncertainty"):
            if getattr(ec, name) != getattr(EvaluateConfig, name):
                argv += [f"--{name.replace('_', '-')}", str(getattr(ec, name))]
        argv += ["--overwrite", *quiet]
        if device or ec.device:
            argv += ["--device", device or ec.device]
        here = dataclasses.replace(ec, runs=tuple(work / r for r in ec.runs),
                                   data=work / ec.data, out=folder,
                                   train=None if ec.train is None else work / ec.train,
                                   device=device or ec.device)
        _step(f"evaluate ({Path(ec.data).name})", argv,
              functools.partial(evaluate, here, overwrite=True, progress=progress))
    eval_dir = evals[0][1]
    if len(evals) > 1:
        from specdenoise.evaluate.report import rewrite_with_companions
        from specdenoise.stage_evaluate import record_outputs

        # the main report shows the other evaluations beside its own; the rewritten report
        # stays evaluate's own (its manifest), so a later --overwrite may replace it
        rewrite_with_companions(eval_dir, {
            COMPANION_TITLES.get(ec.data, f"Dataset {ec.data}"): work / ec.out
            for ec in cfg.evaluate[1:]})
        record_outputs(eval_dir, ["report.md", "report.html"])

    first, more = cfg.simulate[:2], cfg.simulate[2:]  # train and val, then any other
    outputs = {
        **{s.split.replace("-", "_"): data[s.split] for s in first},
        **{f"model_{r.name.removeprefix('run-')}": r for r in runs},
        "evaluation": eval_dir,
        "report": eval_dir / "report.html",
        **{s.split.replace("-", "_"): data[s.split] for s in more},
        **{folder.name.replace("-", "_"): folder for _, folder in evals[1:]},
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
