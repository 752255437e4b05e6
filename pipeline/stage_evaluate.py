"""The evaluate stage: error cube, summaries, figures and report for denoisers on a dataset.

:func:`evaluate` runs the stage (``specdenoise evaluate`` is a thin command line over it):
trained networks and the registered baselines (:data:`specdenoise.evaluate.baselines.BASELINES`)
denoise the same stored noisy spectra. A network reaches the evaluation as a plain callable
(:class:`~specdenoise.evaluate.cube.Method`, made here by :func:`network_method` from its
checkpoint), so ``evaluate/`` never imports ``train/``. The cube, its summaries, figures and
report are written into one output folder, locked while written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from specdenoise import configfile, stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.evaluate import baselines as bl
from specdenoise.progress import stamp
from specdenoise.simulate.pfs import RED_MR_NPIX
from specdenoise.stage_grid import resolve_grid

DEFAULT_TEMPLATE_N = 100
#: the list of plain files evaluate wrote into EVAL_DIR (path relative to it -> sha256): with
#: --overwrite only these, unchanged, are replaced, never a user's own report.md or PNG
MANIFEST = ".specdenoise-evaluate.json"


#: ``evaluate --uncertainty`` choices (see :func:`network_method`)
UNCERTAINTY_CHOICES = ("auto", "none", "head", "sample", "both")


@dataclass(frozen=True)
class EvaluateConfig:
    """What ``specdenoise evaluate`` does, checked when built (``--config`` / ``--print-config``;
    in TOML the keys are these names, ``template_n = "all"`` for every spectrum).

    ``runs``: trained run folders; ``data``: the dataset evaluated; ``out``: EVAL_DIR;
    ``train``: the training set (the pca baseline's basis); ``baselines``: names from
    :data:`specdenoise.evaluate.baselines.BASELINES` (None: all that can run; empty: none);
    ``template_n``: spectra the template fit sees (None: all); ``bins``: summary bin specs
    (``--bins``); ``batch_size``: spectra per forward pass; ``pca_k``: PCA components;
    ``savgol_window``: Savitzky-Golay window (pixels, odd); ``gaussian_sigma``: Gaussian
    smoothing (pixels); ``uncertainty``: how each network's ``sigma_denoised`` is estimated
    (``auto``: the run's calibrated way; ``head``, ``sample``, ``both``; ``none``: no
    uncertainty, no calibration table or flags, and no 9 passes per spectrum for a network
    without a head).
    """

    data: str
    out: str
    runs: tuple[str, ...] = ()
    train: str | None = None
    baselines: tuple[str, ...] | None = None
    template_n: int | None = DEFAULT_TEMPLATE_N
    bins: tuple[str, ...] = ()
    device: str | None = None
    batch_size: int = 256
    pca_k: int = 32
    savgol_window: int = 11
    gaussian_sigma: float = 1.0
    uncertainty: str = "auto"

    def __post_init__(self):
        # from Python: paths as Path objects and lists are welcome; the config holds them as
        # strings and tuples, as TOML reads them
        for name in ("data", "out", "train"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        for name in ("runs", "baselines", "bins"):
            value = getattr(self, name)
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, tuple(
                    os.fspath(v) if isinstance(v, os.PathLike) else v for v in value))
        configfile.check_types(self, "evaluate option")
        if not self.runs and self.baselines == ():
            raise SpecdenoiseError("nothing to evaluate: give --run RUN_DIR or some --baselines")
        if self.baselines:
            bl.check_names(self.baselines)
        if self.batch_size < 1:
            raise SpecdenoiseError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.uncertainty not in UNCERTAINTY_CHOICES:
            raise SpecdenoiseError(f"--uncertainty must be one of {', '.join(UNCERTAINTY_CHOICES)}"
                                   f", got {self.uncertainty!r}")
        if self.template_n is not None and self.template_n < 1:
            raise SpecdenoiseError(f"--template-n must be at least 1 (or 'all'), got "
                                   f"{self.template_n}")
        _check_baseline_options(self.savgol_window, self.gaussian_sigma, self.pca_k, None)

    def to_dict(self) -> dict:
        """The fields as TOML values (None left out, ``template_n`` None as "all")."""
        d = asdict(self)
        if d["template_n"] is None:
            d["template_n"] = "all"
        return d

    @classmethod
    def from_dict(cls, table: Mapping, where: str = "evaluate config") -> EvaluateConfig:
        """The config a TOML table describes (``template_n = "all"`` as None)."""
        configfile.check_keys(table, configfile.field_names(cls), where)
        values = dict(table)
        if isinstance(values.get("template_n"), str) and values["template_n"].lower() == "all":
            values["template_n"] = None
        for name, option in (("data", "--data VAL.zarr"), ("out", "--out EVAL_DIR")):
            if values.get(name) is None:
                raise SpecdenoiseError(f"give {option} (or '{name}' in the --config file)")
        return cls(**configfile.coerce(cls, values))


def evaluate(cfg: EvaluateConfig, *, overwrite: bool = False, progress: bool | None = None,
             log=print) -> dict[str, Path]:
    """Evaluate the trained networks (run directories) and baselines of ``cfg`` on its dataset.

    ``cfg`` is what ``specdenoise evaluate`` builds from its options or ``--config`` file (its
    options were checked when it was made; what needs the data is checked here, before any
    work). Writes into ``cfg.out``: ``cube.zarr``, ``summary.zarr``, ``summary.csv``,
    ``figures/*.png``, ``report.md`` and ``report.html``, then logs the comparison table (every
    method and the template fit by S/N, :func:`specdenoise.evaluate.report.terminal_summary`);
    returns name -> path. ``cfg.baselines=None`` means all that can run (``pca`` needs
    ``train``; ``template`` needs a dataset written by ``specdenoise simulate``); naming one
    that cannot run is an error.
    """
    from specdenoise import schema
    from specdenoise.evaluate import cube as cube_mod
    from specdenoise.evaluate import plots, report, summary

    models, data, train, out = cfg.runs, cfg.data, cfg.train, Path(cfg.out)
    # EVAL_DIR is a folder of named outputs, never deleted as a whole: the working directory
    # may hold them, but not an input
    stores.refuse_unsafe_target(out, inputs=(data, train), outputs_folder=True)
    ds = schema.open_dataset(data)  # one-line error if missing or incomplete
    cube_mod.check_dataset_chunks(data)  # a lost chunk would silently drop spectra
    bin_spec = summary.parse_bins(cfg.bins)
    targets = {
        "cube": out / "cube.zarr",
        "summary": out / "summary.zarr",
        "summary_csv": out / "summary.csv",
        "figures": out / "figures",
        "report_md": out / "report.md",
        "report_html": out / "report.html",
        "parameters_csv": out / "parameters.csv",
    }
    existing = [p for p in targets.values() if os.path.lexists(p)]
    if existing and not overwrite:
        raise SpecdenoiseError(f"{existing[0]} exists; choose another --out or pass --overwrite")
    _check_replaceable_outputs(targets, out)
    n_wave = int(ds.sizes.get("wave", 0)) or None
    _check_baseline_options(cfg.savgol_window, cfg.gaussian_sigma, cfg.pca_k, n_wave)

    names = _baselines_to_run(cfg.baselines, data, train=train, has_config="config" in ds.attrs,
                              log=log)

    methods = []
    for run_dir in models:
        m = network_method(run_dir, device=cfg.device, batch_size=cfg.batch_size,
                           uncertainty=cfg.uncertainty)
        check_wave(m, ds["wave"].values)
        methods.append(m)
    # two runs of the same architecture: tell them apart by their run directory
    labels = [m.name for m in methods]
    for m, run_dir in zip(methods, models, strict=True):
        if labels.count(m.name) > 1:
            m.name = f"{m.name}:{Path(run_dir).name}"
    # the grid a simulated dataset came from (the built-in one is built again if its cache was
    # cleared); resolving it is the stage's work, not the baseline's
    grid_path = (resolve_grid(bl.simulated_grid(ds.attrs))
                 if any(bl.BASELINES[b].needs == "config" for b in names) else None)
    if names:  # PCA learns its basis and the template fit builds its library: minutes
        log(f"preparing the baselines ({', '.join(names)}) {stamp()}")
    methods += bl.baseline_methods(
        names, data_attrs=ds.attrs, grid_path=grid_path, train=train,
        template_n=cfg.template_n, pca_k=cfg.pca_k, savgol_window=cfg.savgol_window,
        gaussian_sigma=cfg.gaussian_sigma, progress=progress)

    # parameter recovery: the template fit again, on each network's denoised spectra
    fitter = ((lambda: bl.template_fitter_for(ds.attrs, grid_path=grid_path))
              if "template" in names and models else None)
    out.mkdir(parents=True, exist_ok=True)
    with stores.locked(out):
        return _write_outputs(cube_mod, summary, plots, report, data, out, methods, targets,
                              bin_spec, overwrite, progress, log, fitter,
                              given=[data, train, *models, out])


def network_method(run_dir, *, device=None, batch_size: int = 256,
                   name: str | None = None, uncertainty: str | None = "auto",
                   samples: int | None = None):
    """A trained denoiser (run directory or ``checkpoint.pt``) as a
    :class:`~specdenoise.evaluate.cube.Method`: the checkpoint is loaded here, and the cube
    only calls the method's ``denoise`` (evaluation never imports training).

    ``uncertainty``: how its ``sigma_denoised`` is estimated (``auto``: the run's calibrated
    method, see :func:`specdenoise.train.infer.load_denoiser`; ``head``, ``sample``, ``both``;
    None or ``none``: no uncertainty). The method's time then includes the uncertainty's
    (``sample``: K + 1 passes of the network).
    """
    from specdenoise.evaluate.cube import Method
    from specdenoise.train.checkpoint import load_model
    from specdenoise.train.infer import denoise_array, load_denoiser

    with_unc = uncertainty not in (None, "none")
    if with_unc:
        denoiser = load_denoiser(run_dir, device=device, batch_size=batch_size,
                                 method=None if uncertainty == "auto" else uncertainty,
                                 samples=samples)
        model, config = denoiser.model, denoiser.config
    else:
        model, config = load_model(run_dir, device=device)
    m = config.get("model", {})
    summary = m.get("summary", {})
    train = config.get("train", {})
    label = name or m.get("name", "network")
    n_par = summary.get("parameters")
    desc = (f"{m.get('name', 'network')} network"
            + (f", {n_par:,} parameters" if n_par else "")
            + f", {config.get('epoch')} epochs"
            + (f", trained on {train.get('data')}" if train.get("data") else ""))

    calls = [0]  # blocks come in order: the sampling seed of a block is its number

    def denoise(flux, sigma, mask):
        if not with_unc:
            return denoise_array(model, flux, batch_size=batch_size, sigma=sigma)
        calls[0] += 1
        b = denoiser(flux, sigma, good=np.asarray(mask) == 0, seed=calls[0])
        return b.flux_denoised, {"sigma_denoised": b.sigma_denoised, "chi2_red": b.chi2_red,
                                 "chi2_peak": b.chi2_peak, "sky_excess": b.sky_excess,
                                 "suspect": b.suspect}

    # one warm-up call, so that the speed measured later is not the first call's set-up
    n_wave = getattr(model, "n_wave", RED_MR_NPIX)
    denoise_array(model, np.full((1, n_wave), 0.5, dtype=np.float32),
                  sigma=np.full((1, n_wave), 0.05, dtype=np.float32))

    info = {"checkpoint": config.get("path"), "model": m.get("name"), "model_cfg": m.get("cfg"),
            "epochs": config.get("epoch"), "parameters": n_par,
            "device": str(next(model.parameters()).device),
            "train_data": train.get("data"), "preset": train.get("preset"),
            "train_identity": (config.get("data_identity") or {}).get("train")}
    if with_unc:
        cal = denoiser.calibration
        info["uncertainty"] = {"method": denoiser.uncertainty_method,
                               "samples": denoiser.samples or (cal.samples if cal else None),
                               "calibrated_on": None if cal is None else cal.dataset,
                               "suspect_threshold": None if cal is None else cal.threshold,
                               "suspect_thresholds": None if cal is None else cal.thresholds,
                               "input_guard": None if cal is None or cal.guard is None else
                               {f"{lo:g}-{hi:g}": a for lo, hi, a in
                                zip(cal.snr_edges[:-1], cal.snr_edges[1:], cal.guard,
                                    strict=True) if a}}
    wave = config.get("wave")
    return Method(label, "network", desc, denoise, info=info,
                  wave=None if wave is None else np.asarray(wave, dtype=np.float64),
                  uncertainty=with_unc)


def check_wave(method, wave: np.ndarray) -> None:
    """Refuse a network trained on another pixel grid than the dataset's."""
    from specdenoise.train.guards import describe_grid, grid_mismatch

    mw = method.wave
    if mw is None:
        return
    off = grid_mismatch(mw, wave)
    if off is not None:
        raise SpecdenoiseError(
            f"model {method.name!r} was trained on another wavelength grid "
            f"({describe_grid(mw)}) than the dataset ({describe_grid(wave)}; they differ by "
            f"up to {off:.3g} pixels); evaluate it on data simulated on its grid")


def _check_baseline_options(savgol_window, gaussian_sigma, pca_k, n_wave) -> None:
    """One line for baseline options no spectrum could use (before anything is computed)."""
    import math

    limit = n_wave or math.inf
    if not (isinstance(savgol_window, int) and 5 <= savgol_window <= limit
            and savgol_window % 2 == 1):
        raise SpecdenoiseError(f"--savgol-window must be an odd number of pixels from 5 to the "
                               f"spectrum's {n_wave}, got {savgol_window}")
    if not (math.isfinite(gaussian_sigma) and 0 < gaussian_sigma <= limit / 4):
        raise SpecdenoiseError(f"--gaussian-sigma must be a positive number of pixels up to a "
                               f"quarter of the spectrum, got {gaussian_sigma}")
    if not (isinstance(pca_k, int) and pca_k >= 1):
        raise SpecdenoiseError(f"--pca-k must be at least 1, got {pca_k}")


def _baselines_to_run(requested: Sequence[str] | None, data, *, train, has_config: bool,
                      log) -> list[str]:
    """The baselines to run: those asked for (each must be able to run), or by default every
    registered one that can run on what was given (a note says which are skipped)."""
    explicit = requested is not None
    names = list(requested) if explicit else list(bl.BASELINES)
    bl.check_names(names)
    have = {"train": train is not None, "config": has_config}
    for name in list(names):
        need = bl.BASELINES[name].needs
        if need is None or have[need]:
            continue
        error, note = bl.NEEDS[need]
        if explicit:
            raise SpecdenoiseError(error.format(name=name, data=data))
        names.remove(name)
        log("note: " + note.format(name=name, data=data))
    return names


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(out: Path) -> dict[str, str]:
    """The files an earlier evaluate wrote into ``out`` (relative path -> sha256)."""
    try:
        files = json.loads((out / MANIFEST).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def _check_replaceable_outputs(targets: dict[str, Path], out: Path) -> None:
    """With --overwrite: each existing output must be what evaluate wrote there (the stores by
    their kind, the plain files by the manifest: listed, and unchanged since)."""
    for name, kind in (("cube", stores.CUBE), ("summary", stores.SUMMARY)):
        if os.path.lexists(targets[name]):
            stores.check_replaceable(targets[name], kind)
    written = _manifest(out)

    def ours(p: Path) -> bool:
        rel = p.relative_to(out).as_posix()
        return (not p.is_symlink() and p.is_file() and rel in written
                and _sha256(p) == written[rel])

    for name in ("summary_csv", "report_md", "report_html", "parameters_csv"):
        p = targets[name]
        if os.path.lexists(p) and not ours(p):
            raise SpecdenoiseError(f"{p} was not written by evaluate (or was changed since); "
                                   "nothing was replaced (choose another --out)")
    figures = targets["figures"]
    if os.path.lexists(figures):
        others = ([figures.name] if figures.is_symlink() or not figures.is_dir() else
                  [p.name for p in sorted(figures.iterdir()) if not ours(p)])
        if others:
            raise SpecdenoiseError(f"{figures} holds {others[0]!r}, which evaluate did not "
                                   "write (or which was changed since); nothing was replaced")


#: an absolute POSIX path of two or more parts in running text (not a URL, not an HTML tag)
_ABSOLUTE = re.compile(r"(?<![\w.~:/<-])/[\w.+@-]+(?:/[\w.+@-]+)+/?")


def relative_paths(text: str, base: Path, given: Sequence = ()) -> str:
    """``text`` with every path in it relative to the work folder ``base``.

    A report names the dataset, the runs and its own outputs; written as absolute paths they
    tie it to the machine it ran on, and as typed they are relative to wherever the command
    ran. Paths in ``given`` (as typed, relative to the current folder) and every absolute path
    become relative to ``base`` (the folder holding EVAL_DIR: for ``specdenoise run``, its
    work folder), so the report and its Python block read the same from there on any machine.
    """
    base = Path(os.path.abspath(base))

    def rel(path: str) -> str:
        return os.path.relpath(os.path.abspath(path), base)

    for p in sorted({str(g) for g in given if not Path(g).is_absolute()}, key=len, reverse=True):
        text = re.sub(r"(?<=[`\"'( ])" + re.escape(p) + r"(?=[/`\"') ,]|$)",
                      lambda _m, p=p: rel(p), text, flags=re.M)
    return _ABSOLUTE.sub(lambda m: rel(m.group(0)), text)


def _write_outputs(cube_mod, summary, plots, report, data, out, methods, targets, bin_spec,
                   overwrite, progress, log, fitter=None, given=()) -> dict[str, Path]:
    from specdenoise.evaluate import recovery

    if overwrite:  # a table of an earlier evaluation must not be read as this one's
        targets["parameters_csv"].unlink(missing_ok=True)
    cube_mod.build_cube(data, targets["cube"], methods, overwrite=overwrite, progress=progress)
    log(f"error cube:  {targets['cube']}")
    cube = cube_mod.open_cube(targets["cube"])
    rows = recovery.recover(cube, fitter(), progress=progress, log=log) if fitter else []
    if rows:
        recovery.write_csv(rows, targets["parameters_csv"])
        log(f"parameters:  {targets['parameters_csv']}")
    tree = summary.summarize(cube, bin_spec)
    summary.write_summary(tree, targets["summary"], targets["summary_csv"], overwrite=overwrite)
    log(f"summary:     {targets['summary']} and {targets['summary_csv']}")
    # the figures are drawn in a new folder and swapped in whole: an interrupt leaves the old
    # ones (and the old report that links them) as they were
    tmp = stores.temp_dir(targets["figures"])
    try:
        drawn = plots.make_figures(cube, tree, tmp)
        figures = {k: targets["figures"] / p.name for k, p in drawn.items()}
        _swap_in(tmp, targets["figures"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"figures:     {targets['figures']}/ ({', '.join(p.name for p in figures.values())})")
    report.write_report(cube, tree, figures, out, outputs={
        "cube": targets["cube"], "summary": targets["summary"],
        "summary CSV": targets["summary_csv"],
        **({"parameters CSV": targets["parameters_csv"]} if rows else {})}, recovery=rows)
    for name in ("report_md", "report_html"):
        path = targets[name]
        path.write_text(relative_paths(path.read_text(encoding="utf-8"), out.parent,
                                       [g for g in given if g is not None]),
                        encoding="utf-8")
    log(f"report:      {targets['report_md']} and {targets['report_html']}")
    files = [targets["summary_csv"], targets["report_md"], targets["report_html"],
             *figures.values(), *([targets["parameters_csv"]] if rows else [])]
    _write_manifest(out, {p.relative_to(out).as_posix(): _sha256(p) for p in files})
    log("\n" + report.terminal_summary(cube, tree))
    return targets


def record_outputs(out: Path, names: Sequence[str]) -> None:
    """Record the files ``names`` (relative to ``out``) in evaluate's manifest as they are now,
    after a caller (``run``) rewrote them: a later ``evaluate --overwrite`` may replace them."""
    out = Path(out)
    _write_manifest(out, {**_manifest(out), **{n: _sha256(out / n) for n in names}})


def _write_manifest(out: Path, files: dict[str, str]) -> None:
    """Evaluate's manifest: each file it wrote (relative to ``out``) and its sha256."""
    text = json.dumps({"files": files}, indent=1)
    stores.write_file(out / MANIFEST, lambda t: t.write_text(text), overwrite=True)


def _swap_in(new: Path, folder: Path) -> None:
    """Put the finished folder ``new`` at ``folder``; an old one (already checked to hold only
    evaluate's figures) is moved aside first and deleted after."""
    if os.path.lexists(folder):
        old = stores.temp_dir(folder.with_name(folder.name + ".old"))
        os.rename(folder, old / folder.name)
        os.rename(new, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, folder)
