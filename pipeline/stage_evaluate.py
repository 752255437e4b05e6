"""The evaluate stage: error cube, summaries, figures and report for denoisers on a dataset.

:func:`evaluate` runs the stage (``specdenoise evaluate`` is a thin command line over it):
trained networks and the registered baselines (:data:`specdenoise.evaluate.baselines.BASELINES`)
denoise the same stored noisy spectra; the cube, its summaries, figures and report are written
into one output folder, locked while written.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from specdenoise import stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.evaluate import baselines as bl
from specdenoise.simulate.progress import stamp
from specdenoise.stage_grid import resolve_grid

DEFAULT_TEMPLATE_N = 100


def evaluate(models: Sequence, data, out, *, train=None, baselines: Sequence[str] | None = None,
             template_n: int | None = DEFAULT_TEMPLATE_N, bins: Sequence[str] = (),
             device=None, batch_size: int = 256, pca_k: int = 32, savgol_window: int = 11,
             gaussian_sigma: float = 1.0, overwrite: bool = False,
             progress: bool | None = None, log=print) -> dict[str, Path]:
    """Evaluate trained models (run directories) and baselines on the dataset ``data``.

    Writes into ``out``: ``cube.zarr``, ``summary.zarr``, ``summary.csv``, ``figures/*.png``,
    ``report.md`` and ``report.html``, then logs the comparison table (every method and the
    template fit by S/N, :func:`specdenoise.evaluate.report.terminal_summary`); returns name ->
    path. ``baselines=None`` means all that
    can run (``pca`` needs ``train``; ``template`` needs a dataset written by ``specdenoise
    simulate``); naming one that cannot run is an error. ``template_n``: fit only the first
    that many spectra (None: all).
    """
    from specdenoise import schema
    from specdenoise.evaluate import cube as cube_mod
    from specdenoise.evaluate import plots, report, summary

    out = Path(out)
    # EVAL_DIR is a folder of named outputs, never deleted as a whole: the working directory
    # may hold them, but not an input
    stores.refuse_unsafe_target(out, inputs=(data, train), outputs_folder=True)
    ds = schema.open_dataset(data)  # one-line error if missing or incomplete
    cube_mod.check_dataset_chunks(data)  # a lost chunk would silently drop spectra
    bin_spec = summary.parse_bins(bins)
    targets = {
        "cube": out / "cube.zarr",
        "summary": out / "summary.zarr",
        "summary_csv": out / "summary.csv",
        "figures": out / "figures",
        "report_md": out / "report.md",
        "report_html": out / "report.html",
    }
    existing = [p for p in targets.values() if os.path.lexists(p)]
    if existing and not overwrite:
        raise SpecdenoiseError(f"{existing[0]} exists; choose another --out or pass --overwrite")
    _check_replaceable_outputs(targets)
    if template_n is not None and template_n < 1:
        raise SpecdenoiseError(f"--template-n must be at least 1 (or 'all'), got {template_n}")

    names = _baselines_to_run(baselines, data, train=train, has_config="config" in ds.attrs,
                              log=log)

    methods = []
    for run_dir in models:
        m = cube_mod.network_method(run_dir, device=device, batch_size=batch_size)
        cube_mod.check_wave(m, ds["wave"].values)
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
        names, data_attrs=ds.attrs, grid_path=grid_path, train=train, template_n=template_n,
        pca_k=pca_k, savgol_window=savgol_window, gaussian_sigma=gaussian_sigma,
        progress=progress)

    out.mkdir(parents=True, exist_ok=True)
    with stores.locked(out):
        return _write_outputs(cube_mod, summary, plots, report, data, out, methods, targets,
                              bin_spec, overwrite, progress, log,
                              given=[data, train, *models, out])


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


def _check_replaceable_outputs(targets: dict[str, Path]) -> None:
    """With --overwrite: each existing output must be what evaluate writes there."""
    for name, kind in (("cube", stores.CUBE), ("summary", stores.SUMMARY)):
        if os.path.lexists(targets[name]):
            stores.check_replaceable(targets[name], kind)
    for name in ("summary_csv", "report_md", "report_html"):
        p = targets[name]
        if os.path.lexists(p) and (p.is_dir() or p.is_symlink()):
            raise SpecdenoiseError(f"{p} is a folder or a link, not the {p.name} evaluate "
                                   "writes; nothing was replaced")
    figures = targets["figures"]
    if os.path.lexists(figures):
        others = ([figures.name] if figures.is_symlink() or not figures.is_dir() else
                  [p.name for p in figures.iterdir() if p.suffix != ".png" or not p.is_file()])
        if others:
            raise SpecdenoiseError(f"{figures} holds {others[0]!r}, which evaluate did not "
                                   "write; nothing was replaced")


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
                   overwrite, progress, log, given=()) -> dict[str, Path]:
    if overwrite and targets["figures"].exists():
        shutil.rmtree(targets["figures"])
    cube_mod.build_cube(data, targets["cube"], methods, overwrite=overwrite, progress=progress)
    log(f"error cube:  {targets['cube']}")
    cube = cube_mod.open_cube(targets["cube"])
    tree = summary.summarize(cube, bin_spec)
    summary.write_summary(tree, targets["summary"], targets["summary_csv"], overwrite=overwrite)
    log(f"summary:     {targets['summary']} and {targets['summary_csv']}")
    figures = plots.make_figures(cube, tree, targets["figures"])
    log(f"figures:     {targets['figures']}/ ({', '.join(p.name for p in figures.values())})")
    report.write_report(cube, tree, figures, out, outputs={
        "cube": targets["cube"], "summary": targets["summary"],
        "summary CSV": targets["summary_csv"]})
    for name in ("report_md", "report_html"):
        path = targets[name]
        path.write_text(relative_paths(path.read_text(encoding="utf-8"), out.parent,
                                       [g for g in given if g is not None]),
                        encoding="utf-8")
    log(f"report:      {targets['report_md']} and {targets['report_html']}")
    log("\n" + report.terminal_summary(cube, tree))
    return targets
