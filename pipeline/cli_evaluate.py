"""``specdenoise evaluate``: error cube, summaries, figures and report for denoisers on a dataset.

:func:`evaluate` is the stage as a function (``specdenoise run`` calls it); :func:`register` adds
the command line.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from specdenoise import stores
from specdenoise.errors import SpecdenoiseError

ALL_BASELINES = ("none", "savgol", "gaussian", "pca", "template")
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

    explicit = baselines is not None
    names = list(baselines) if explicit else list(ALL_BASELINES)
    unknown = [b for b in names if b not in ALL_BASELINES]
    if unknown:
        raise SpecdenoiseError(f"unknown baseline {unknown[0]!r}; choose from "
                               f"{', '.join(ALL_BASELINES)}")
    if "pca" in names and train is None:
        if explicit:
            raise SpecdenoiseError("the pca baseline needs a training set: pass --train "
                                   "TRAIN.zarr (or leave pca out of --baselines)")
        names.remove("pca")
        log("note: no --train given, so the pca baseline is skipped")
    if "template" in names and "config" not in ds.attrs:
        if explicit:
            raise SpecdenoiseError(f"{data} has no simulation config; the template baseline "
                                   "only works on datasets written by 'specdenoise simulate'")
        names.remove("template")
        log("note: the dataset carries no simulation config, so the template fit is skipped")

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
    methods += cube_mod.baseline_methods(
        names, data_attrs=ds.attrs, train=train, template_n=template_n, pca_k=pca_k,
        savgol_window=savgol_window, gaussian_sigma=gaussian_sigma, progress=progress)

    out.mkdir(parents=True, exist_ok=True)
    with stores.locked(out):
        return _write_outputs(cube_mod, summary, plots, report, data, out, methods, targets,
                              bin_spec, overwrite, progress, log)


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


def _write_outputs(cube_mod, summary, plots, report, data, out, methods, targets, bin_spec,
                   overwrite, progress, log) -> dict[str, Path]:
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
    log(f"report:      {targets['report_md']} and {targets['report_html']}")
    log("\n" + report.terminal_summary(cube, tree))
    return targets


def _template_n(text: str) -> int | None:
    if text.lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="error cube, summaries, figures and report for denoisers on a validation set",
        description=(
            "Denoise a validation dataset (its stored noisy flux) with trained models and "
            "baselines; write the relative-error cube |D - F| / F (Zarr), summaries binned in "
            "S/N, Teff, log g, [M/H] and [alpha/M] (Zarr and CSV), figures and a Markdown and "
            "HTML report into EVAL_DIR."
        ),
    )
    p.add_argument("--model", action="append", default=[], metavar="RUN_DIR",
                   help="run directory of 'specdenoise train' (or its checkpoint.pt); repeat "
                        "for several models side by side")
    p.add_argument("--data", required=True, metavar="VAL.zarr", help="dataset to evaluate on")
    p.add_argument("--out", required=True, metavar="EVAL_DIR", help="output folder")
    p.add_argument("--train", metavar="TRAIN.zarr",
                   help="training dataset; the pca baseline learns its basis from its flux_clean")
    p.add_argument("--baselines", default=None,
                   help="comma-separated subset of " + ",".join(ALL_BASELINES)
                        + " ('' for none; default: all that can run)")
    p.add_argument("--template-n", type=_template_n, default=DEFAULT_TEMPLATE_N, metavar="N",
                   help=f"template-fit only the first N spectra, or 'all' (default "
                        f"{DEFAULT_TEMPLATE_N}; about 0.1-0.5 s per spectrum)")
    p.add_argument("--bins", action="append", default=[], metavar="SPEC",
                   help="summary bins: N (for every variable), NAME=N or NAME=e0,e1,... "
                        "(e.g. --bins snr=0,5,10,20,50,inf); repeatable. Default: S/N "
                        "0,2,5,10,20,50,inf (it is log-distributed), 8 equal-width bins over "
                        "the range of Teff, log g, [M/H] and [alpha/M]")
    p.add_argument("--pca-k", type=int, default=32, help="PCA components (default 32)")
    p.add_argument("--savgol-window", type=int, default=11,
                   help="Savitzky-Golay window in pixels, odd (default 11, order 4)")
    p.add_argument("--gaussian-sigma", type=float, default=1.0,
                   help="Gaussian smoothing sigma in pixels (default 1.0)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps for the networks "
                                                  "(default: best available)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true", help="replace outputs in EVAL_DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    baselines = None
    if args.baselines is not None:
        baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    if not args.model and baselines == []:
        raise SpecdenoiseError("nothing to evaluate: give --model RUN_DIR or some --baselines")
    if args.batch_size < 1:
        raise SpecdenoiseError(f"--batch-size must be at least 1, got {args.batch_size}")
    evaluate(args.model, args.data, args.out, train=args.train, baselines=baselines,
             template_n=args.template_n, bins=args.bins, device=args.device,
             batch_size=args.batch_size, pca_k=args.pca_k, savgol_window=args.savgol_window,
             gaussian_sigma=args.gaussian_sigma, overwrite=args.overwrite)
    return 0
