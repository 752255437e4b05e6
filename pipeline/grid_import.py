"""Import a directory of BOSZ model spectra into a grid store, in parallel with Dask.

``specdenoise grid import bosz DIR --out PATH`` calls :func:`import_bosz`. The steps:

1. scan ``DIR`` (recursively) for BOSZ 2017 or 2024 file names and check they form one grid
   (one release, one resolution, one microturbulence, no model twice);
2. build the axes from the union of the parameters found (``c_m`` only when it varies) and an
   ``exists`` mask that is False where no file was found;
3. fix the output wavelength grid from the first readable file and create the partial store;
4. read the files as Dask tasks, a batch of files per task; each task writes its nodes straight
   into the partial store (one chunk per node, so tasks never touch the same chunk);
5. record skipped files, then finalize (check, hash, rename into place).

The store is assembled in a uniquely named temporary folder beside ``out`` while ``out`` is
locked (:mod:`specdenoise.stores`), so two imports to one ``out`` never share a folder: the
second is refused. Any failure, Ctrl-C included, deletes the temporary folder: there is never a
store at ``out`` that looks complete but is not.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from specdenoise import __version__, stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate import bosz
from specdenoise.simulate.grids import AXES, create_grid_store, finalize_grid_store, write_nodes

log = logging.getLogger(__name__)

#: with no client given, imports of at most this many files run in this process (a cluster
#: would take longer to start than the reading)
SERIAL_MAX_FILES = 16
#: most files one task reads
MAX_BATCH = 64
#: seconds an aborted import waits for running tasks to notice
ABORT_WAIT_S = 120

Job = tuple[bosz.BoszFile, tuple[int, ...]]


def scan_bosz_dir(src_dir: str | Path) -> list[bosz.BoszFile]:
    """Every BOSZ model file under ``src_dir`` (recursively), sorted by path."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise SpecdenoiseError(f"BOSZ directory {src_dir} does not exist")
    found = [bosz.parse_bosz_name(p) for p in sorted(src_dir.rglob("*")) if p.is_file()]
    files = [f for f in found if f is not None]
    if not files:
        raise SpecdenoiseError(
            f"no BOSZ 2017 (am...b{{R}}rs.fits|.asc|.asc.bz2) or BOSZ 2024 "
            f"(bosz2024_*_resam.txt.gz) files found in {src_dir}"
        )
    return files


def _one_value(files: Sequence[bosz.BoszFile], what: str, get) -> object:
    values = sorted({get(f) for f in files})
    if len(values) > 1:
        raise SpecdenoiseError(
            f"the directory mixes {what} {', '.join(map(str, values))}; "
            "import one at a time (move the others out)"
        )
    return values[0]


def plan_grid(
    files: Sequence[bosz.BoszFile],
) -> tuple[dict[str, np.ndarray], np.ndarray, list[tuple[int, ...]], dict]:
    """Axes, ``exists`` mask, node index of each file and the parameters held fixed."""
    axes = {}
    fixed = {}
    for name in AXES:
        values = np.unique([f.params[name] for f in files])
        if name == "c_m" and values.size == 1:
            fixed[name] = float(values[0])  # BOSZ 2017/2024 subsets usually have solar [C/M]
            continue
        axes[name] = values
    lookup = {n: {v: i for i, v in enumerate(vals.tolist())} for n, vals in axes.items()}
    index = [tuple(lookup[n][f.params[n]] for n in axes) for f in files]
    exists = np.zeros(tuple(v.size for v in axes.values()), dtype=bool)
    seen: dict[tuple[int, ...], bosz.BoszFile] = {}
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
            try:
                fl, co = bosz.read_resampled(f, wave, resolution)
            except SpecdenoiseError:
                raise
            except Exception as exc:  # any other failure to read is still this file's fault
                raise SpecdenoiseError(f"{f.path.name}: unreadable ({bosz._short(exc)})") from None
        except SpecdenoiseError as exc:
            if not skip_bad:
                raise
            bad.append((str(f.path), str(exc)))
            continue
        index.append(idx)
        flux.append(fl)
        cont.append(co)
    if index and not stop():
        write_nodes(store, index, np.stack(flux), np.stack(cont))
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


def _run(jobs: list[Job], args: tuple, client, progress: bool) -> list[tuple[str, str]]:
    from specdenoise.simulate.progress import bar as progress_bar

    with progress_bar(len(jobs), "import bosz", "file", enabled=progress) as bar:
        if client is not None:
            n_workers = max(1, sum(client.nthreads().values()))  # threads, across all workers
            return _run_distributed(client, _batches(jobs, n_workers), args, bar)
        n_workers = min(_cpu_count(), len(jobs))
        if len(jobs) <= SERIAL_MAX_FILES or n_workers < 2:
            return _run_serial(_batches(jobs, 1), args, bar)
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as own_client,
        ):
            return _run_distributed(own_client, _batches(jobs, n_workers), args, bar)


def _first_wave(files, jobs, skip_bad) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Native wavelengths of the first readable file, and the files found bad on the way."""
    bad = []
    for f, _ in jobs:
        try:
            return bosz.native_wave(f), bad
        except SpecdenoiseError as exc:
            if not skip_bad:
                raise
            bad.append((str(f.path), str(exc)))
    raise SpecdenoiseError(f"none of the {len(files)} BOSZ files could be read")


def import_bosz(
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
    """Import every BOSZ 2017 or 2024 file under ``src_dir`` into a grid store at ``out``.

    Parameters
    ----------
    src_dir : directory searched recursively; BOSZ 2024 needs its ``bosz2024_wave_r{R}.txt``.
    out : the ``*.zarr`` store to create.
    wave_range : (min, max) vacuum wavelength to keep, nm.
    resolution : broaden to this resolving power (Gaussian LSF, FWHM = lambda / R) before
        resampling; None keeps the models' own.
    skip_bad : skip unreadable or truncated files (listed in ``attrs["skipped_files"]``, their
        nodes marked missing) instead of stopping at the first one.
    overwrite : replace an existing store at ``out``.
    client : a ``distributed.Client`` to run on; None reads small imports in this process and
        larger ones on a ``LocalCluster`` of one process per available core.
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
    stores.check_output(out, stores.GRID, overwrite=overwrite, inputs=(src_dir,))
    with stores.locked(out):
        return _import_locked(src_dir, out, lo, hi, resolution, skip_bad, overwrite, client,
                              progress)


def _import_locked(src_dir, out, lo, hi, resolution, skip_bad, overwrite, client,
                   progress) -> Path:
    files = scan_bosz_dir(src_dir)
    source = _one_value(files, "BOSZ releases", lambda f: f.source)
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

    native, bad = _first_wave(files, jobs, skip_bad)
    wave = bosz.output_wave(native, (lo, hi), resolution)
    dlnl = math.log(wave[-1] / wave[0]) / (wave.size - 1)
    r_out = resolution or r_in
    settings = {
        "importer": "specdenoise.grid_import.import_bosz",
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
        "source_wave_medium": (
            "vacuum"
            if source == "bosz2017"
            else "air above 200 nm, converted to vacuum (Morton 2000 / Ciddor 1996)"
        ),
        "flux_conversion": "4 pi x 10 x file value (Eddington flux per A -> surface flux per nm)",
        "fixed_params": {**fixed, "vturb": vturb},
        "models": sorted({f.model for f in files}),
        "settings": settings,
        "skipped_files": [],
    }
    todo = [(f, idx) for f, idx in jobs if str(f.path) not in dict(bad)]

    tmp = stores.temp_dir(out)
    try:
        create_grid_store(out, axes, wave, exists=exists, with_cont=True,
                          flux_unit=bosz.FLUX_UNIT, attrs=attrs, tmp=tmp)
        bad += _run(todo, (str(tmp), wave, resolution, skip_bad), client, progress)
        if bad:
            _mark_skipped(tmp, files, index, exists, bad, progress)
        return finalize_grid_store(tmp, out, overwrite=overwrite, keep_failed=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _mark_skipped(tmp, files, index, exists, bad, progress) -> None:
    """Mark the nodes of skipped files missing and list the files in the store's attrs."""
    import zarr

    from specdenoise.simulate.grids import write_exists

    bad = sorted(bad)
    paths = dict(bad)
    exists = exists.copy()
    for f, idx in zip(files, index, strict=True):
        if str(f.path) in paths:
            exists[idx] = False
    if not exists.any():
        raise SpecdenoiseError(f"all {len(files)} BOSZ files are unreadable; first: {bad[0][1]}")
    write_exists(tmp, exists)
    listing = [{"file": path, "error": why} for path, why in bad]
    zarr.open_group(str(tmp), mode="r+").attrs["skipped_files"] = json.dumps(listing)
    msg = f"skipped {len(bad)} unreadable file(s):\n  " + "\n  ".join(why for _, why in bad)
    if progress:
        print(msg, file=sys.stderr)
    else:
        log.warning(msg)
