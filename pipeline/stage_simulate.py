"""The simulation stage: Numba kernels run as Dask tasks that write one chunked Zarr dataset.

One task per output chunk. A chunk's random stream is keyed by ``(seed, split, chunk index)``
(``numpy.random.SeedSequence(seed, spawn_key=(split, chunk))``), so the store is bitwise
identical for any number of workers, any completion order, and after any number of
interruptions and ``--resume``. Tasks write their own region and then drop a marker file
(:func:`specdenoise.schema.write_chunk`); a chunk without its marker is recomputed on resume.

Workers open the grid lazily and keep node spectra in a per-process cache; the grid itself is
never broadcast. Within a chunk, spectra are interpolated in grid-node order (good cache
locality for large grids) and written back in drawn order.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from specdenoise import __version__, schema, stores
from specdenoise.config import config_hash, parse_split
from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate import calibration, engine
from specdenoise.stage_grid import resolve_grid

# --------------------------------------------------------------------------- resolution


def grid_provenance(ds, spec: str) -> dict:
    """What identifies the grid store ``ds`` (an opened grid) that the spec ``spec`` names."""
    return {
        "grid": spec,
        "source": ds.attrs.get("source"),
        "content_hash": ds.attrs.get("content_hash"),
    }


def check_same_grid(cfg: Mapping, provenance: Mapping, stores_plan: list) -> None:
    """Refuse to resume a store begun on a grid whose content differs from the grid now at
    the configured path (the config hash holds the grid's path, not its content): the store
    would mix chunks of both grids. With mixed grids, ``cfg["grid"]`` names one of them and
    it is compared with that grid's entry of the store's ``grids`` attribute. ``provenance``:
    :func:`grid_provenance` of the grid now there; ``stores_plan``: :func:`plan`'s."""
    now = provenance.get("content_hash")
    for _split, path, _n in stores_plan:
        attrs = (stores.read_attrs(path) if path.exists() else None) or {}
        prov = attrs.get("grid_provenance") or {}
        mixed = attrs.get("grids")
        if isinstance(mixed, str):
            mixed = _json_or(mixed, None)
        if isinstance(mixed, list):
            prov = next((g for g in mixed if isinstance(g, dict) and g.get("grid") == cfg["grid"]),
                        {})
        if isinstance(prov, str):  # stored as JSON text
            prov = _json_or(prov, {})
        then = prov.get("content_hash") if isinstance(prov, dict) else None
        if then and then != now:
            raise SpecdenoiseError(
                f"{path} was begun on another grid than the one now at {cfg['grid']} (content "
                f"hash {then} then, {now} now); --resume would mix both: put the old grid "
                "back, or start again with --overwrite")


def _json_or(text: str, default):
    try:
        return json.loads(text)
    except ValueError:
        return default


def check_params_on_grid(cfg: Mapping, grid) -> None:
    """Refuse parameter distributions that reach beyond the axes of ``grid`` (an opened grid;
    before any store is created): they would fail inside the workers, or be silently cut to
    the grid."""
    from specdenoise.simulate.grids import grid_axes

    problems = []
    for name, nodes in grid_axes(grid).items():
        dist = cfg["params"].get(name)
        if dist is None:
            continue
        lo, hi = ((dist["value"], dist["value"]) if dist["dist"] == "fixed"
                  else (dist["low"], dist["high"]))
        if lo < nodes[0] or hi > nodes[-1]:
            problems.append(f"params.{name} spans {lo:g}..{hi:g} but the grid covers "
                            f"{nodes[0]:g}..{nodes[-1]:g}")
    if problems:
        raise SpecdenoiseError(f"{'; '.join(problems)} (grid {cfg['grid']}); narrow the "
                               "distribution(s) with --set or use a grid that covers them")


def check_lsf_on_grid(cfg: Mapping, grid) -> None:
    """Refuse a grid whose spectra are not sharper than the configured line-spread function
    (before any store is created): the workers would fail on their first chunk and leave a
    store that asks for --resume instead of saying why."""
    from specdenoise.simulate.lsf import LSF
    from specdenoise.simulate.pfs import pixel_wave

    resolution = grid.attrs.get("resolution")
    lsf = LSF(fwhm_pix=tuple(cfg["observe"]["lsf_fwhm_pix"]),
              model_resolution=float(resolution) if resolution else None)
    lsf.sigma_pix(pixel_wave())  # raises with the reason


def check_rv_on_grid(cfg: Mapping, grid, noise) -> None:
    """Refuse radial velocities whose Doppler shift needs model wavelengths beyond ``grid``
    (an opened grid; before any store is created): the first chunk would fail in a worker,
    after the store exists, and the re-run would ask for --resume, which fails the same way.
    ``noise``: the config's noise model (its wavelengths are the detector's)."""
    from specdenoise.simulate.observe import doppler_shift_pixels

    dist = cfg["params"].get("rv")
    if not dist:
        return
    extremes = ([dist["value"]] if dist["dist"] == "fixed" else
                [dist[k] for k in ("low", "high") if dist.get(k) is not None])
    if not extremes:
        return
    resolution = grid.attrs.get("resolution")
    # the workers' observer (engine.forward_model), built on the grid already open
    observer = engine.observer(np.asarray(grid["wave"].values, dtype=np.float64), noise,
                               cfg["observe"],
                               model_resolution=float(resolution) if resolution else None)
    m, _t = observer.table.split_shift(doppler_shift_pixels(np.asarray(extremes, float),
                                                            observer.h))
    try:
        observer.table.check_shift(m)
    except SpecdenoiseError:
        raise SpecdenoiseError(
            f"params.rv reaches {max(extremes, key=abs):g} km/s, whose Doppler shift needs "
            f"model wavelengths beyond the grid {cfg['grid']}; narrow it with --set or use a "
            "grid covering more wavelength") from None


def make_noise(spec: str):
    """The noise model a config names (see :mod:`specdenoise.simulate.engine`)."""
    return engine.noise_model(spec)


# --------------------------------------------------------------------------- worker side


def split_key(name: str) -> int:
    """A stable integer for a split name ("" when there is no split)."""
    return zlib.crc32(name.encode()) if name else 0


def nuisance_names(cfg: Mapping) -> list[str]:
    """Coordinates recording the nuisance effects a config switches on (see
    :mod:`specdenoise.simulate.nuisance`)."""
    from specdenoise.simulate import nuisance

    s = nuisance.settings(cfg["observe"])
    return [nuisance.RECORDED[k] for k in nuisance.enabled(s)]


def grid_specs(cfg: Mapping) -> list[str]:
    """The grids a config simulates from: those of ``grids`` (mixed), else the one ``grid``."""
    return [g["grid"] for g in cfg.get("grids") or []] or [cfg["grid"]]


def simulate_chunk(cfg: Mapping, grid_path: str | list[str], split: str, chunk_index: int,
                   count: int) -> dict[str, np.ndarray]:
    """Simulate ``count`` spectra of one chunk; a pure function of its arguments.

    One grid: the chunk's stream ``SeedSequence(seed, spawn_key=(split, chunk))`` draws
    everything, as it always has.  Mixed grids (``grid_path`` a list, ``cfg["grids"]``): that
    sequence spawns one stream that draws each spectrum's grid with the configured weights, and
    one stream per grid that simulates that grid's spectra; the chunk then carries ``grid``
    (float32 index into ``cfg["grids"]``).  Both are functions of (seed, split, chunk) only, so
    any worker count gives the same store.
    """
    ss = np.random.SeedSequence(cfg["seed"], spawn_key=(split_key(split), chunk_index))
    if isinstance(grid_path, str):
        return _simulate_one(cfg, grid_path, np.random.default_rng(ss), count)
    weights = np.array([g["weight"] for g in cfg["grids"]], dtype=np.float64)
    streams = ss.spawn(len(grid_path) + 1)
    which = np.random.default_rng(streams[0]).choice(len(grid_path), size=count,
                                                     p=weights / weights.sum())
    parts = {}
    for g, path in enumerate(grid_path):
        idx = np.nonzero(which == g)[0]
        if idx.size:
            cfg_g = {**cfg, "grid": cfg["grids"][g]["grid"]}
            parts[g] = (idx, _simulate_one(cfg_g, path, np.random.default_rng(streams[g + 1]),
                                           idx.size))
    first = next(iter(parts.values()))[1]
    out = {k: np.empty((count, *v.shape[1:]), dtype=v.dtype) for k, v in first.items()}
    for idx, arrays in parts.values():
        for k, v in arrays.items():
            out[k][idx] = v
    out["grid"] = which.astype(np.float32)
    return out


def _simulate_one(cfg: Mapping, grid_path: str, rng: np.random.Generator,
                  count: int) -> dict[str, np.ndarray]:
    """``count`` spectra from one grid, every random number from ``rng``."""
    from specdenoise.simulate.sampling import draw_params

    interp, observer = engine.forward_model(cfg, grid_path)
    names = tuple(interp.names)
    unknown = [g for g in names if g not in cfg["params"]]
    if unknown:
        raise SpecdenoiseError(f"the grid has axis {unknown[0]!r} but the config no "
                               "distribution for it")
    values = draw_params(
        cfg["params"], rng, count, grid_names=names,
        valid=interp.valid,
    )
    grid_params = np.stack([values[g] for g in names], axis=1)
    # interpolate in grid-node order (cache locality), write in drawn order
    order = np.lexsort(grid_params.T[::-1])
    model = interp(grid_params[order])
    conditions = {k: values[k][order] for k in schema.CONDITIONS}
    out = observer.observe(model, rng=rng, **conditions)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    arrays = {
        "flux": out["flux"][inverse],
        "flux_clean": out["flux_clean"][inverse],
        "sigma": out["sigma"][inverse],
        "mask": np.zeros(out["flux"].shape, dtype=np.uint8),
        "snr": out["snr"][inverse],
        "norm": out["norm"][inverse],
    }
    if "mask" in out:
        arrays["mask"] = np.asarray(out["mask"], dtype=np.uint8)[inverse]
    for k in (*schema.PARAMS, *schema.CONDITIONS):
        arrays[k] = values[k]
    for k in nuisance_names(cfg):  # per-spectrum values of the nuisance effects that are on
        arrays[k] = out[k][inverse]
    for name, col in zip(schema.calib_names(observer.calib_order), out["calib_coef"][inverse].T,
                         strict=True):
        arrays[name] = col
    return {k: (v.astype(np.float32) if k not in ("mask",) else v) for k, v in arrays.items()}


#: glibc mallopt parameters (malloc.h) and the values :func:`keep_freed_memory` sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024**2  # glibc's upper limit for this setting on 64-bit
TRIM_THRESHOLD = 256 * 1024**2


@functools.cache
def keep_freed_memory() -> bool:
    """Let this process reuse the memory of freed large arrays instead of returning it.

    A chunk allocates and frees many 4-40 MB arrays. Dask's nanny starts workers with
    ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes glibc's mmap threshold at 128 KiB:
    every such array is then a fresh ``mmap``, page-faulted and zeroed by the kernel, then
    unmapped. On a 2-core VM that was 40 % of a worker's CPU time in the kernel
    (6.5-6.9 s system vs 10.7 s user for 10,000 spectra). Raising both thresholds keeps the
    arrays in the heap (system time 1.1-1.4 s). A worker then keeps about one chunk's working
    set between tasks: at 1000 spectra per chunk, resident 1.25 GB instead of 0.55 GB, peak
    0.99 GB instead of 0.73 GB. Returns whether the settings took (glibc only; elsewhere
    this does nothing).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def run_chunk(store: str, cfg: Mapping, grid_path: str | list[str], split: str, chunk_index: int,
              chunk_size: int, count: int) -> tuple[int, float]:
    """Worker task: simulate one chunk and write it (marker last). Returns (index, seconds)."""
    import numcodecs.blosc

    numcodecs.blosc.set_nthreads(1)  # one task per worker thread: no hidden oversubscription
    keep_freed_memory()
    t0 = time.perf_counter()
    arrays = simulate_chunk(cfg, grid_path, split, chunk_index, count)
    schema.write_chunk(store, chunk_index, chunk_size, arrays)
    return chunk_index, time.perf_counter() - t0


# --------------------------------------------------------------------------- orchestration


def compressors_for(cfg: Mapping) -> tuple[list, int | None]:
    """(compressors, keepbits) of the spectral float variables.

    ``zstd-bitround`` keeps ``keepbits`` mantissa bits of the noisy float32 numbers (whose low
    bits are noise and do not compress; relative rounding error <= 2**-(keepbits+1), 6e-5 at
    the default 13), rounded by the writer before encoding.
    """
    from specdenoise import codecs

    kind = cfg["compressor"]
    keepbits = cfg["keepbits"] if kind == "zstd-bitround" else None
    return codecs.spectral_compressors(kind), keepbits


def plan(cfg: Mapping) -> list[tuple[str, Path, int]]:
    """(split name, output store, number of spectra) for each store this config writes."""
    out = Path(cfg["out"])
    if not cfg.get("split"):
        return [("", out, cfg["n"])]
    fractions = parse_split(cfg["split"])
    names = list(fractions)
    counts = [int(round(cfg["n"] * fractions[s])) for s in names]
    counts[-1] = cfg["n"] - sum(counts[:-1])
    if min(counts) < 1:
        raise SpecdenoiseError(f"--split {cfg['split']} with n={cfg['n']} leaves a split empty")
    return [(s, out / f"{s}.zarr", c) for s, c in zip(names, counts, strict=True)]


def simulate(
    cfg: Mapping,
    *,
    cluster: str = "local",
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    client=None,
) -> list[Path]:
    """Run the simulation stage; returns the written store paths."""
    from specdenoise.cluster import check_local_options
    from specdenoise.simulate.grids import open_grid

    # every check before any store is created or a worker started; the stores are planned
    # once and each grid opened once here (the workers open their own)
    if client is None:
        check_local_options(cluster, workers, threads_per_worker, memory_limit)
    stores_plan = plan(cfg)
    for _split, path, _n in stores_plan:
        if path.exists() and not (resume or overwrite):
            raise SpecdenoiseError(f"{path} exists; pass --resume to finish it or --overwrite "
                                   "to start again")
        stores.check_output(path, stores.DATASET, overwrite=overwrite, allow_existing=resume)
    noise = make_noise(cfg["noise"])  # fail early on a bad noise table, before any worker
    grid_paths = [resolve_grid(spec) for spec in grid_specs(cfg)]
    provenance = []
    for spec, path in zip(grid_specs(cfg), grid_paths, strict=True):
        one = {**cfg, "grid": spec}
        grid = open_grid(path)
        provenance.append(grid_provenance(grid, spec))
        if resume and not overwrite:
            check_same_grid(one, provenance[-1], stores_plan)
        check_params_on_grid(one, grid)
        check_lsf_on_grid(cfg, grid)
        check_rv_on_grid(one, grid, noise)
    grid_path = [str(p) for p in grid_paths] if cfg.get("grids") else grid_paths[0]
    with contextlib.ExitStack() as held:
        for _split, path, _n in stores_plan:
            held.enter_context(stores.locked(path))  # one writer per store
        return _simulate(cfg, grid_path, client, cluster, workers, threads_per_worker,
                         memory_limit, overwrite, progress, stores_plan, provenance)


def _simulate(cfg, grid_path, client, cluster, workers, threads_per_worker, memory_limit,
              overwrite, progress, stores_plan, provenance) -> list[Path]:
    stored_cfg = {k: v for k, v in cfg.items() if k != "out"}
    chash = config_hash(cfg)
    attrs = {
        "config": stored_cfg,
        "config_hash": chash,
        "seed": cfg["seed"],
        "package_version": __version__,
        "grid_provenance": provenance[0],
        "noise_provenance": {"noise": cfg["noise"]},
        "title": "specdenoise simulated PFS MR red-arm spectra",
    }
    extra = (*schema.calib_names(calibration.ORDER), *nuisance_names(cfg))
    if cfg.get("grids"):  # which grid each spectrum came from: coordinate + the list in attrs
        attrs["grids"] = [{**g, **prov} for g, prov in zip(cfg["grids"], provenance, strict=True)]
        extra = (*extra, "grid")
    compressors, keepbits = compressors_for(cfg)
    from specdenoise.simulate.pfs import pixel_wave

    wave = pixel_wave()
    pending = False
    for _split, path, n in stores_plan:
        n_chunks = -(-n // cfg["chunk_size"])
        pending |= overwrite or not path.exists() or len(schema.done_chunks(path)) < n_chunks
    paths = [p for _, p, _ in stores_plan]
    # --overwrite writes the new store under a temporary name and renames it into place when
    # complete: until then the old store stays whole (an interrupt or a failed task keeps it)
    where = {p: (_new_name(p) if overwrite and p.exists() else p) for p in paths}
    try:
        _write_stores(cfg, grid_path, client, cluster, workers, threads_per_worker,
                      memory_limit, overwrite, progress, attrs, compressors, keepbits, wave,
                      pending, chash, where, extra, stores_plan)
        for path, tmp in where.items():
            if tmp != path:
                stores.publish(tmp, path, stores.DATASET, overwrite=True)
    finally:
        left = [tmp for path, tmp in where.items() if tmp != path and tmp.exists()]
        if left:
            _discard(left)
    return paths


#: seconds an unfinished temporary store is kept removed before an interrupted --overwrite
#: returns (:func:`_discard`)
DISCARD_GRACE = 1.5


def _discard(tmps: list[Path], grace: float = DISCARD_GRACE) -> None:
    """Remove unfinished temporary stores, and again while ``grace`` seconds pass: a chunk
    write that a worker had in flight when the cluster closed can land after the first
    removal (zarr recreates the folders it writes into; CI saw the folder of an interrupted
    ``--overwrite`` left behind beside the kept old store)."""
    deadline = time.monotonic() + grace
    while True:
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
            stores.remove_chunk_markers(tmp)
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def _new_name(path: Path) -> Path:
    """A unique unused name beside ``path`` for its replacement to be written under."""
    tmp = stores.temp_dir(path)
    tmp.rmdir()  # the store is created there (the name stays ours: we hold the lock)
    return tmp


def _write_stores(cfg, grid_path, client, cluster, workers, threads_per_worker, memory_limit,
                  overwrite, progress, attrs, compressors, keepbits, wave, pending, chash,
                  where, extra, stores_plan) -> None:
    """Create the stores (at ``where[path]``), run the missing chunks, finalize them."""
    from specdenoise.cluster import connect

    with contextlib.ExitStack() as stack:
        if pending and client is None:
            # connect before any store is created: a scheduler that cannot be reached (or a
            # cluster that does not start) leaves no partial store that would demand --resume
            client = stack.enter_context(connect(
                cluster, workers=workers, threads_per_worker=threads_per_worker,
                memory_limit=memory_limit))
        jobs = []
        for split, final, n in stores_plan:
            path = where[final]
            schema.create_dataset_store(
                path, n, cfg["chunk_size"], wave,
                attrs={**attrs, "split": split or "all"},
                extra_coords=extra,
                compressors=compressors, keepbits=keepbits, overwrite=overwrite,
            )
            done = schema.done_chunks(path)
            n_chunks = -(-n // cfg["chunk_size"])
            for c in range(n_chunks):
                if c not in done:
                    count = min(cfg["chunk_size"], n - c * cfg["chunk_size"])
                    jobs.append((split, path, c, count))
        if jobs:
            _execute(client, jobs, cfg, grid_path, chash, progress)
    for _split, final, n in stores_plan:
        path = where[final]
        n_chunks = -(-n // cfg["chunk_size"])
        missing = set(range(n_chunks)) - schema.done_chunks(path)
        if missing:
            raise SpecdenoiseError(f"{final}: {len(missing)} chunk(s) not written; re-run with "
                                   "--resume")
        schema.finalize_dataset(path)


def _execute(client, jobs, cfg, grid_path, chash, progress: bool) -> None:
    from distributed import as_completed

    from specdenoise.progress import bar as progress_bar

    if progress:
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
    n_spectra = sum(j[3] for j in jobs)
    # the tasks get the config's plain layout: a worker needs no config class to read it
    plain = {k: v for k, v in cfg.items()}
    futures = [
        client.submit(
            run_chunk, str(path), plain, grid_path if isinstance(grid_path, list)
            else str(grid_path), split, c, cfg["chunk_size"], count,
            key=f"simulate-{chash}-{split or 'all'}-{c:08d}", retries=2, pure=False,
        )
        for split, path, c, count in jobs
    ]
    sizes = {f.key: j[3] for f, j in zip(futures, jobs, strict=True)}
    with progress_bar(n_spectra, "simulate", "spec", enabled=progress) as bar:
        for fut in as_completed(futures):
            try:
                fut.result()
            except SpecdenoiseError:
                raise
            except Exception as exc:
                raise SpecdenoiseError(
                    f"a simulation task failed: {type(exc).__name__}: {exc}".splitlines()[0]
                    + " (finished chunks are kept: fix the cause and re-run with --resume, or "
                    "with --overwrite if the configuration changes)") from exc
            bar.update(sizes[fut.key])  # the bar shows the rate itself
