"""The grid stages: build the built-in grid, import a directory of model files, resolve a grid.

``specdenoise grid build builtin`` calls :func:`build_builtin_grid`: the physics of
:mod:`specdenoise.simulate.builtin_grid` rendered node row by node row into a grid store, with
a progress bar, into the user cache (reused while the settings are the same) or ``--out``.

``specdenoise grid import FAMILY DIR --out PATH`` calls :func:`import_grid`, which knows no file
format: the readers of ``FAMILY`` (:mod:`specdenoise.simulate.readers`; BOSZ 2017 and 2024 for
``bosz``) recognise and read the files. The steps:

1. scan ``DIR`` (recursively) for file names a reader recognises and check they form one grid
   (one release, one resolution, one microturbulence, no model twice);
2. build the axes from the union of the parameters found (``c_m`` only when it varies) and an
   ``exists`` mask that is False where no file was found;
3. fix the output wavelength grid from the first readable file and create the partial store;
4. read the files as Dask tasks, a batch of files per task; each task writes its nodes straight
   into the partial store (one chunk per node, so tasks never touch the same chunk);
5. record skipped files, then finalize (check, hash, rename into place).

Either store is assembled in a uniquely named temporary folder beside ``out`` while ``out`` is
locked (:mod:`specdenoise.stores`), so two writers to one ``out`` never share a folder: the
second is refused. Any failure, Ctrl-C included, deletes the temporary folder: there is never a
store at ``out`` that looks complete but is not.

``specdenoise grid info PATH`` prints :func:`grid_summary`.

:func:`resolve_grid` turns the ``grid`` entry of a simulation config (``"builtin"`` or a path)
into the path of a complete grid store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from specdenoise import __version__, stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.progress import bar as progress_bar
from specdenoise.simulate import builtin_grid
from specdenoise.simulate.builtin_grid import builtin_grid_path
from specdenoise.simulate.grids import (
    AXES,
    complete_grid_store,
    grid_axes,
    grid_dataset,
    open_grid,
    partial_path,
    write_exists,
    write_nodes,
)
from specdenoise.simulate.readers import READERS, GridReader, ModelFile, readers_of

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- resolving a grid


def resolve_grid(spec: str) -> Path:
    """``"builtin"`` -> the cached built-in grid (built on first use); else a store path."""
    if spec == "builtin":
        return build_builtin_grid(None)
    open_grid(spec)  # validates: exists, complete, is a grid
    return Path(spec)


# --------------------------------------------------------------------------- the partial store


def create_grid_store(
    path: str | Path,
    axes: Mapping[str, np.ndarray],
    wave: np.ndarray,
    *,
    exists: np.ndarray | None = None,
    with_cont: bool = False,
    flux_unit: str = "erg s-1 cm-2 nm-1 (surface flux)",
    attrs: Mapping | None = None,
    tmp: str | Path | None = None,
) -> Path:
    """Create an empty grid store under ``tmp`` (default ``partial_path(path)``); return it.

    The layout is :func:`specdenoise.simulate.grids.grid_dataset`'s; ``flux`` (and ``cont``
    with ``with_cont``) are only declared, as lazy Dask arrays, so nothing but metadata, axes
    and the ``exists`` mask is written. ``tmp`` is where to assemble the store: an empty folder
    of the caller's (a unique name from :func:`specdenoise.stores.temp_dir`, so two writers
    never share it); by default the fixed ``<path>.partial``, replaced if present.

    Node spectra are then written with :func:`specdenoise.simulate.grids.write_nodes`;
    unwritten chunks read as NaN.
    """
    import dask.array as da

    shape = tuple(np.size(v) for v in axes.values())
    full = (*shape, np.size(wave))
    chunks = (*(1,) * len(shape), np.size(wave))

    def empty():
        return da.full(full, np.nan, dtype=np.float32, chunks=chunks)

    ds, encoding = grid_dataset(axes, wave, empty(), cont=empty() if with_cont else None,
                                exists=exists, flux_unit=flux_unit, attrs=attrs)
    if tmp is None:
        tmp = partial_path(path)
        if tmp.exists():
            shutil.rmtree(tmp)
    tmp = Path(tmp)
    ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, compute=False, encoding=encoding)
    return tmp


# --------------------------------------------------------------------------- the built-in grid


def grid_summary(path) -> str:
    """What ``specdenoise grid info`` prints about the grid store at ``path``: its source, each
    axis's range and node count, the wavelength range (nm), the nodes present, the content hash."""
    ds = open_grid(path)
    lines = [f"{path}: source={ds.attrs.get('source')} medium={ds.attrs.get('wave_medium')}"]
    for name, values in grid_axes(ds).items():
        lines.append(f"  {name:5s} {values.min():9.3f} .. {values.max():9.3f}  "
                     f"({values.size} nodes)")
    w = ds["wave"].values
    lines.append(f"  wave  {w[0]:9.3f} .. {w[-1]:9.3f} nm ({w.size} samples)")
    lines.append(f"  nodes present: {int(ds['exists'].values.sum())} of {ds['exists'].size}")
    lines.append(f"  content hash: {ds.attrs.get('content_hash')}")
    return "\n".join(lines)


def _complete_store(path: Path, key: str) -> bool:
    if not path.exists():
        return False
    try:
        ds = open_grid(path)
    except SpecdenoiseError:
        return False
    return ds.attrs.get("settings_hash") == key


def _is_grid(path: Path) -> bool:
    try:
        stores.check_replaceable(path, stores.GRID)
    except SpecdenoiseError:
        return False
    return True


def build_builtin_grid(out=None, *, settings=None, overwrite=False, progress=True) -> Path:
    """Generate the built-in grid and write it as a grid store; return its path.

    Parameters
    ----------
    out : where to write (``*.zarr``). ``None`` writes to :func:`builtin_grid_path` and returns
        at once if a complete store for the same settings is already there.
    settings : overrides of :data:`specdenoise.simulate.builtin_grid.DEFAULT_SETTINGS` (axes,
        wavelengths, sampling...).
    overwrite : replace an existing store at the destination (for ``out=None``: rebuild the
        cache).
    progress : show a progress bar over nodes (:func:`specdenoise.progress.bar`).

    The store is assembled in a unique temporary folder beside it while the destination is
    locked (:mod:`specdenoise.stores`) and only renamed into place when every node was
    written (:func:`specdenoise.simulate.grids.complete_grid_store`). With ``out`` given and
    a complete cached store for the same settings, the cache is copied.
    """
    key = builtin_grid.settings_key(settings)
    cache = builtin_grid_path(settings)
    target = cache if out is None else Path(out)
    if target.exists() and not overwrite:
        if out is None and _complete_store(target, key):
            return target
        if out is not None:
            raise SpecdenoiseError(f"{target} already exists; pass --overwrite to replace it")
    if os.path.lexists(target):  # replaced below
        if out is None and not _is_grid(target):
            shutil.rmtree(target)  # our own cache folder, damaged: rebuilt
        else:
            stores.check_replaceable(target, stores.GRID)  # a user's path: only a grid
    stores.refuse_unsafe_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with stores.locked(target):
        if out is None and not overwrite and _complete_store(target, key):
            return target  # another process built it while we waited for nothing
        copy = (out is not None and target.resolve() != cache.resolve()
                and _complete_store(cache, key))
        with stores.assembled(target, stores.GRID, overwrite=True,
                              finish=None if copy else complete_grid_store) as tmp:
            if copy:
                shutil.copytree(cache, tmp, dirs_exist_ok=True)
            else:
                _generate(settings, target, tmp, progress)
        return target


def _generate(settings: Mapping | None, target: Path, tmp: Path, progress: bool) -> None:
    """Render every node of the grid into the empty store folder ``tmp``."""
    axes = builtin_grid.builtin_axes(settings)
    create_grid_store(target, axes, builtin_grid.builtin_wave(settings), with_cont=True,
                      flux_unit=builtin_grid.FLUX_UNIT, attrs=builtin_grid.grid_attrs(settings),
                      tmp=tmp)
    n_nodes = int(np.prod([v.size for v in axes.values()]))
    with progress_bar(n_nodes, "built-in grid", "node", enabled=progress) as bar:
        for idx, flux, cont in builtin_grid.generate_nodes(settings):
            write_nodes(tmp, idx, flux, cont)
            bar.update(len(idx))


# --------------------------------------------------------------------------- importing files


#: with no client given, imports of at most this many files run in this process (a cluster
#: would take longer to start than the reading)
SERIAL_MAX_FILES = 16
#: most files one task reads
MAX_BATCH = 64
#: seconds an aborted import waits for running tasks to notice
ABORT_WAIT_S = 120

Job = tuple[ModelFile, tuple[int, ...]]


def _readers(family: str) -> list[GridReader]:
    readers = readers_of(family)
    if not readers:
        raise SpecdenoiseError(f"no grid reader for {family!r}; known: "
                               f"{', '.join(sorted({r.family for r in READERS.values()}))}")
    return readers


def _parse(readers: Sequence[GridReader], path: Path) -> ModelFile | None:
    for reader in readers:
        f = reader.parse(path)
        if f is not None:
            return f
    return None


def scan_dir(src_dir: str | Path, family: str) -> list[ModelFile]:
    """Every model file of ``family`` under ``src_dir`` (recursively), sorted by path."""
    readers = _readers(family)
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise SpecdenoiseError(f"{family.upper()} directory {src_dir} does not exist")
    found = [_parse(readers, p) for p in sorted(src_dir.rglob("*")) if p.is_file()]
    files = [f for f in found if f is not None]
    if not files:
        patterns = " or ".join(r.pattern for r in readers)
        raise SpecdenoiseError(f"no {patterns} files found in {src_dir}")
    return files


def _one_value(files: Sequence[ModelFile], what: str, get) -> object:
    values = sorted({get(f) for f in files})
    if len(values) > 1:
        raise SpecdenoiseError(
            f"the directory mixes {what} {', '.join(map(str, values))}; "
            "import one at a time (move the others out)"
        )
    return values[0]


def plan_grid(
    files: Sequence[ModelFile],
) -> tuple[dict[str, np.ndarray], np.ndarray, list[tuple[int, ...]], dict]:
    """Axes, ``exists`` mask, node index of each file and the parameters held fixed."""
    axes = {}
    fixed = {}
    for name in AXES:
        values = np.unique([f.params[name] for f in files])
        if name == "c_m" and values.size == 1:
            fixed[name] = float(values[0])  # e.g. BOSZ subsets usually have solar [C/M]
            continue
        axes[name] = values
    lookup = {n: {v: i for i, v in enumerate(vals.tolist())} for n, vals in axes.items()}
    index = [tuple(lookup[n][f.params[n]] for n in axes) for f in files]
    exists = np.zeros(tuple(v.size for v in axes.values()), dtype=bool)
    seen: dict[tuple[int, ...], ModelFile] = {}
    for f, idx in zip(files, index, strict=True):
        if idx in seen:
            raise SpecdenoiseError(
                f"{seen[idx].path.name} and {f.path.name} are the same model; keep one of them"
            )
        seen[idx] = f
        exists[idx] = True
    return axes, exists, index, fixed


def _import_batch(
    store: str,
    wave: np.ndarray,
    resolution: float | None,
    skip_bad: bool,
    jobs: list[Job],
    abort: str | None = None,
) -> tuple[int, list[tuple[str, str]]]:
    """Read a batch of files and write their nodes; returns (files done, [(bad file, why)]).

    ``abort`` names a ``distributed.Event``: once it is set the batch stops without writing.
    """
    stop = _abort_flag(abort)  # asked at the start and before writing: one round trip each
    if stop():
        return 0, []
    index, flux, cont, bad = [], [], [], []
    for f, idx in jobs:
        try:
            fl, co = READERS[f.source].read_resampled(f, wave, resolution)
        except SpecdenoiseError as exc:
            if not skip_bad:
                raise
            bad.append((str(f.path), str(exc)))
            continue
        index.append(idx)
        flux.append(fl)
        cont.append(co)
    if index and not stop():
        write_nodes(store, index, np.stack(flux), None if cont[0] is None else np.stack(cont))
    return len(jobs), bad


def _abort_flag(name: str | None):
    if name is None:
        return lambda: False
    from distributed import Event

    return Event(name).is_set


def _batches(jobs: list[Job], n_workers: int) -> list[list[Job]]:
    size = min(MAX_BATCH, max(1, math.ceil(len(jobs) / (8 * n_workers))))
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_serial(batches, args, bar) -> list[tuple[str, str]]:
    bad = []
    for batch in batches:
        n, b = _import_batch(*args, batch)
        bad += b
        bar.update(n)
    return bad


def _run_distributed(client, batches, args, bar) -> list[tuple[str, str]]:
    from distributed import Event, as_completed, wait

    abort = Event(f"specdenoise-import-{uuid.uuid4().hex}", client=client)
    futures = [
        client.submit(_import_batch, *args, batch, abort.name, pure=False) for batch in batches
    ]
    bad = []
    try:
        for fut in as_completed(futures):
            n, b = fut.result()  # re-raises a task's SpecdenoiseError here
            bad += b
            bar.update(n)
    except BaseException:
        # Running tasks cannot be killed: tell them to stop and let them return before the
        # caller removes the partial store, so none of them writes into a deleted store.
        abort.set()
        try:
            wait(futures, timeout=ABORT_WAIT_S)
        except TimeoutError:
            log.warning("import tasks still running %s s after the abort", ABORT_WAIT_S)
        client.cancel(futures)
        raise
    return bad


def _run(jobs: list[Job], args: tuple, client, progress: bool,
         family: str) -> list[tuple[str, str]]:
    with progress_bar(len(jobs), f"import {family}", "file", enabled=progress) as bar:
        if client is not None:
            n_workers = max(1, sum(client.nthreads().values()))  # threads, across all workers
            return _run_distributed(client, _batches(jobs, n_workers), args, bar)
        n_workers = min(_cpu_count(), len(jobs))
        if len(jobs) <= SERIAL_MAX_FILES or n_workers < 2:
            return _run_serial(_batches(jobs, 1), args, bar)
        from specdenoise.cluster import connect

        with connect("local", workers=n_workers, threads_per_worker=1) as own_client:
            return _run_distributed(own_client, _batches(jobs, n_workers), args, bar)


def _first_wave(files, jobs, skip_bad,
                family) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Native wavelengths of the first readable file, and the files found bad on the way."""
    bad = []
    for f, _ in jobs:
        try:
            return READERS[f.source].native_wave(f), bad
        except SpecdenoiseError as exc:
            if not skip_bad:
                raise
            bad.append((str(f.path), str(exc)))
    raise SpecdenoiseError(f"none of the {len(files)} {family.upper()} files could be read")


def import_grid(
    family: str,
    src_dir: str | Path,
    out: str | Path,
    *,
    wave_range: tuple[float, float] = (700.0, 900.0),
    resolution: float | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    client=None,
    progress: bool = True,
) -> Path:
    """Import every model file of ``family`` under ``src_dir`` into a grid store at ``out``.

    Parameters
    ----------
    family : the format (:func:`specdenoise.simulate.readers.families`), e.g. ``"bosz"``: every
        BOSZ 2017 or 2024 file.
    src_dir : directory searched recursively; BOSZ 2024 needs its ``bosz2024_wave_r{R}.txt``.
    out : the ``*.zarr`` store to create.
    wave_range : (min, max) vacuum wavelength to keep, nm.
    resolution : broaden to this resolving power (Gaussian LSF, FWHM = lambda / R) before
        resampling; None keeps the models' own.
    skip_bad : skip unreadable or truncated files (listed in ``attrs["skipped_files"]``, their
        nodes marked missing) instead of stopping at the first one.
    overwrite : replace an existing store at ``out``.
    client : a ``distributed.Client`` to run on; None reads small imports in this process and
        larger ones on a local cluster (:func:`specdenoise.cluster.connect`) of one process per
        available core.
    progress : show a progress bar (and list skipped files on stderr).

    Returns the path of the finished store; raises :class:`SpecdenoiseError` (one line) on any
    problem with the input, leaving nothing at ``out``.
    """
    src_dir, out = Path(src_dir), Path(out).absolute()
    lo, hi = (float(w) for w in wave_range)
    if not 0 < lo < hi:
        raise SpecdenoiseError(
            f"--wave-range must be two increasing wavelengths in nm, got {lo:g} {hi:g}"
        )
    _readers(family)
    stores.check_output(out, stores.GRID, overwrite=overwrite, inputs=(src_dir,))
    with stores.locked(out):
        return _import_locked(family, src_dir, out, lo, hi, resolution, skip_bad, overwrite,
                              client, progress)


def _import_locked(family, src_dir, out, lo, hi, resolution, skip_bad, overwrite, client,
                   progress) -> Path:
    files = scan_dir(src_dir, family)
    source = _one_value(files, f"{family.upper()} releases", lambda f: f.source)
    reader = READERS[source]
    r_in = _one_value(files, "resolutions R =", lambda f: f.resolution)
    vturb = _one_value(files, "microturbulences v =", lambda f: f.vturb)
    if resolution is not None:
        resolution = float(resolution)
        if not 0 < resolution <= r_in:
            raise SpecdenoiseError(
                f"--resolution {resolution:g} must be positive and at most the models' R={r_in}"
            )
        if resolution == r_in:
            resolution = None
    axes, exists, index, fixed = plan_grid(files)
    jobs = list(zip(files, index, strict=True))

    native, bad = _first_wave(files, jobs, skip_bad, family)
    wave = reader.output_wave(native, (lo, hi), resolution)
    dlnl = math.log(wave[-1] / wave[0]) / (wave.size - 1)
    r_out = resolution or r_in
    settings = {
        "importer": "specdenoise.stage_grid.import_grid",
        "version": __version__,
        "src_dir": str(src_dir.absolute()),
        "wave_range_nm": [lo, hi],
        "resolution": resolution,
        "skip_bad": skip_bad,
        "n_files": len(files),
    }
    attrs = {
        "source": source,
        "resolution": r_out,
        "source_resolution": r_in,
        "lsf": "Gaussian, FWHM = lambda / resolution",
        "sampling": f"log-uniform, d ln(lambda) = {dlnl:.6g} ({1 / (dlnl * r_out):.2f} px/FWHM)",
        "dlnlambda": dlnl,
        "source_wave_medium": reader.wave_medium,
        "flux_conversion": reader.flux_conversion,
        "fixed_params": {**fixed, "vturb": vturb},
        "models": sorted({f.model for f in files}),
        "settings": settings,
        "skipped_files": [],
    }
    todo = [(f, idx) for f, idx in jobs if str(f.path) not in dict(bad)]

    with stores.assembled(out, stores.GRID, overwrite=overwrite,
                          finish=complete_grid_store) as tmp:
        create_grid_store(out, axes, wave, exists=exists,
                          with_cont=getattr(reader, "has_continuum", True),
                          flux_unit=reader.flux_unit, attrs=attrs, tmp=tmp)
        bad += _run(todo, (str(tmp), wave, resolution, skip_bad), client, progress, family)
        if bad:
            _mark_skipped(tmp, files, index, exists, bad, progress, family)
    return Path(out)


def _mark_skipped(tmp, files, index, exists, bad, progress, family) -> None:
    """Mark the nodes of skipped files missing and list the files in the store's attrs."""
    import zarr

    bad = sorted(bad)
    paths = dict(bad)
    exists = exists.copy()
    for f, idx in zip(files, index, strict=True):
        if str(f.path) in paths:
            exists[idx] = False
    if not exists.any():
        raise SpecdenoiseError(f"all {len(files)} {family.upper()} files are unreadable; "
                               f"first: {bad[0][1]}")
    write_exists(tmp, exists)
    listing = [{"file": path, "error": why} for path, why in bad]
    zarr.open_group(str(tmp), mode="r+").attrs["skipped_files"] = json.dumps(listing)
    msg = f"skipped {len(bad)} unreadable file(s):\n  " + "\n  ".join(why for _, why in bad)
    if progress:
        print(msg, file=sys.stderr)
    else:
        log.warning(msg)
