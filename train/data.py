"""Streaming training data: Zarr chunks -> augmentation -> shuffle buffer -> batches.

One epoch, seen from the whole job:

1. The dataset's chunks are put in an order drawn from (seed, epoch); laid end to end they form
   one sequence of spectra, which is cut into ``world_size * num_workers`` contiguous, nearly
   equal pieces, one per (DDP rank, DataLoader worker) shard. Every spectrum belongs to exactly
   one shard; each shard reads only its own chunks (plus at most two it shares at its ends).
2. A shard reads a chunk and augments all of it at once with a generator keyed by
   (seed, epoch, chunk): a fresh noise realisation ``flux_clean + sigma * N(0, 1)``, the one
   calibration distortion (the simulation's, as stored, or a fresh draw replacing it: see
   :mod:`specdenoise.train.calibration`), then division of input and target by one factor per
   spectrum that brings the noisy input's median to 0.5. So what a spectrum looks like in an
   epoch does not depend on how many ranks or workers ran.
3. Augmented spectra go through a bounded shuffle buffer and come out as ready batches (the
   DataLoader runs with ``batch_size=None``: batching here avoids per-spectrum Python work).

Validation streams the stored ``flux`` (one fixed noise realisation and the simulation's
distortion) with ``flux_clean`` as the target, in order, normalised the same way. With
``noise="device"`` the loader yields the clean spectra and the training loop calls
:func:`augment` on the GPU instead.

Batches are dicts of tensors: ``x`` input, ``y`` target, ``sigma`` (all float32, (b, n_wave),
normalised), ``good`` (bool, (b, n_wave), False for masked pixels) and ``index`` (int64, (b,),
row in the store); raw batches carry ``clean`` instead of ``x`` and ``y``, and ``calib``
(b, L), the stored distortion's coefficients, where the dataset records them. A store
inspected with ``params`` (a model that learns the forward model's parameters) adds
``params`` (float32, (b, P)): those per-spectrum variables, in physical units.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import zarr
from torch.utils.data import IterableDataset, get_worker_info

from specdenoise import codecs, stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.schema import CALIB_PREFIX, SPECTRUM_DIM, WAVE_DIM
from specdenoise.simulate.pfs import RED_MR_NPIX
from specdenoise.train import calibration, guards
from specdenoise.train.calibration import augment, norm_factor, normalise  # noqa: F401

TRAIN_VARS = ("flux_clean", "sigma")
VAL_VARS = ("flux", "flux_clean", "sigma")
MEDIAN = calibration.MEDIAN  # the normalisation of every spectrum the networks see


# --------------------------------------------------------------------------- store access


def is_url(path) -> bool:
    return "://" in str(path)


def open_group(path, storage_options: dict | None = None) -> zarr.Group:
    """Open a dataset's Zarr group read-only, from a local path or any fsspec URL."""
    path = str(path)
    if not is_url(path) and not os.path.exists(path):
        raise SpecdenoiseError(f"dataset {path} does not exist")
    try:
        with codecs.quiet_legacy():
            if is_url(path):
                return zarr.open_group(path, mode="r", storage_options=storage_options or {})
            return zarr.open_group(path, mode="r")
    except Exception as exc:
        raise SpecdenoiseError(f"cannot open dataset {path}: {exc}".splitlines()[0]) from None


@dataclass(frozen=True)
class StoreInfo:
    """What the loader needs to know about a dataset store (cheap to pickle to workers)."""

    path: str
    n_spectrum: int
    chunk_size: int
    n_wave: int
    has_mask: bool
    storage_options: dict | None = None
    calib_order: int = 0  # orders of the stored calibration distortion (0: not recorded)
    params: tuple[str, ...] = ()  # per-spectrum variables every batch carries as ``params``

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_spectrum / self.chunk_size)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_spectrum)


def inspect_store(path, require=TRAIN_VARS, *, n_wave: int = RED_MR_NPIX,
                  storage_options: dict | None = None, params=()) -> StoreInfo:
    """Check a dataset can feed a model with ``n_wave`` pixels; raise a one-line error if not.

    ``params``: per-spectrum variables (``teff``, ``rv``, ``calib_c1``, ...) the batches must
    also carry.
    """
    g = open_group(path, storage_options)
    stores.check_attrs(
        dict(g.attrs), path, stores.DATASET,
        not_kind=f"{path} is not a specdenoise dataset (no specdenoise_kind attr)",
        incomplete=f"dataset {path} is incomplete (interrupted simulation?); finish it with "
                   "--resume")
    members = set(g.array_keys())
    missing = [v for v in require if v not in members]
    if missing:
        raise SpecdenoiseError(f"dataset {path} lacks variable(s) {', '.join(missing)}")
    shape = None
    for v in require:
        arr = g[v]
        dims = getattr(arr.metadata, "dimension_names", None) or ()
        if arr.ndim != 2 or (dims and tuple(dims) != (SPECTRUM_DIM, WAVE_DIM)):
            raise SpecdenoiseError(
                f"dataset {path}: {v} has shape {arr.shape}, expected ({SPECTRUM_DIM}, {WAVE_DIM})"
            )
        if arr.shape[1] != n_wave:
            raise SpecdenoiseError(
                f"dataset {path}: {v} has {arr.shape[1]} wavelength pixels, the model expects "
                f"{n_wave}"
            )
        if shape is not None and arr.shape != shape:
            raise SpecdenoiseError(f"dataset {path}: {v} has shape {arr.shape}, not {shape}")
        shape = arr.shape
    if shape[0] == 0:
        raise SpecdenoiseError(f"dataset {path} holds no spectra")
    calib_order = 0
    while f"{CALIB_PREFIX}{calib_order + 1}" in members:
        calib_order += 1
    params = tuple(params)
    lacking = [p for p in params if p not in members]
    if lacking:
        raise SpecdenoiseError(f"dataset {path} lacks the per-spectrum variable(s) "
                               f"{', '.join(lacking)} that the model learns; simulate it with "
                               "specdenoise simulate, or choose the model's params")
    for p in params:
        if g[p].shape != (shape[0],):
            raise SpecdenoiseError(f"dataset {path}: {p} has shape {g[p].shape}, expected "
                                   f"({shape[0]},)")
    codecs.check_frames(path)  # older local stores (no checksum): no decoder past a chunk's end
    return StoreInfo(
        path=str(path),
        n_spectrum=int(shape[0]),
        chunk_size=int(g[require[0]].chunks[0]),
        n_wave=int(shape[1]),
        has_mask="mask" in members,
        storage_options=storage_options,
        calib_order=calib_order,
        params=params,
    )


def read_chunk(group: zarr.Group, info: StoreInfo, chunk: int, names) -> dict[str, np.ndarray]:
    """Read one chunk's arrays, checking values; masked pixels may hold anything.

    Returns float32 arrays for ``names`` and a bool ``good`` (mask == 0). Non-finite values in
    masked pixels are replaced by 0 (sigma by 1) so they cannot poison a batch.
    """
    lo, hi = info.chunk_bounds(chunk)
    # a chunk that fails to decode (checksum, truncation) ends in one line naming it
    with codecs.reading(info.path, [*names, "mask"], rows=(lo, hi)):
        out = {v: np.asarray(group[v][lo:hi], dtype=np.float32) for v in names}
        if info.has_mask:
            good = np.asarray(group["mask"][lo:hi]) == 0
        else:
            good = np.ones((hi - lo, info.n_wave), dtype=bool)
    for v, a in out.items():
        if math.isfinite(float(a.sum())):  # the usual case: one fast pass, no temporaries
            continue
        finite = np.isfinite(a)
        bad = ~finite & good
        if bad.any():
            row = lo + int(np.nonzero(bad.any(axis=1))[0][0])
            raise SpecdenoiseError(
                f"dataset {info.path}: {v} has NaN or infinite values in unmasked pixels "
                f"(first at spectrum {row}); fix or mask them"
            )
        a[~finite] = 1.0 if v == "sigma" else 0.0
    if "sigma" in out and out["sigma"].min() <= 0:
        bad = (out["sigma"] <= 0) & good
        if bad.any():
            row = lo + int(np.nonzero(bad.any(axis=1))[0][0])
            raise SpecdenoiseError(
                f"dataset {info.path}: sigma is not positive in unmasked pixels (spectrum {row})"
            )
        out["sigma"][~good] = 1.0
    guards.check_chunk_values(out, good, info.path, lo)
    out["good"] = good
    if info.params:
        out["params"] = _stack_params(group, info.path, info.params, lo, hi, np.float32)
    if info.calib_order:
        out["calib"] = np.stack([np.asarray(group[f"{CALIB_PREFIX}{k}"][lo:hi], np.float32)
                                 for k in range(1, info.calib_order + 1)], axis=1)
    return out


def read_wave(info: StoreInfo) -> np.ndarray | None:
    """The dataset's pixel wavelengths (nm), or None if it stores none."""
    g = open_group(info.path, info.storage_options)
    if "wave" not in set(g.array_keys()):
        return None
    return np.asarray(g["wave"][:], dtype=np.float64)


def data_identity(info) -> dict:
    """What identifies a dataset's content cheaply: shape, chunking, its config hash and a
    hash of the first and last spectra of ``flux_clean`` and ``sigma``."""
    g = open_group(info.path, info.storage_options)
    h = hashlib.sha256()
    for name in ("flux_clean", "sigma"):
        if name in set(g.array_keys()):
            for row in sorted({0, info.n_spectrum - 1}):
                h.update(np.ascontiguousarray(g[name][row], dtype=np.float32).tobytes())
    return {"n_spectrum": info.n_spectrum, "chunk_size": info.chunk_size,
            "n_wave": info.n_wave, "config_hash": g.attrs.get("config_hash"),
            "sample_sha256": h.hexdigest()}


def read_params(info: StoreInfo, names) -> np.ndarray:
    """Per-spectrum variables ``names`` of the whole store, (n_spectrum, len(names)) float64."""
    g = open_group(info.path, info.storage_options)
    lacking = [v for v in names if v not in set(g.array_keys())]
    if lacking:
        raise SpecdenoiseError(f"dataset {info.path} lacks the per-spectrum variable(s) "
                               f"{', '.join(lacking)}")
    return _stack_params(g, info.path, names, 0, None, np.float64)


def _stack_params(group, path, names, lo: int, hi: int | None, dtype) -> np.ndarray:
    """Per-spectrum variables ``names`` of rows ``lo:hi`` as (rows, len(names)) ``dtype``;
    a NaN or infinite value is refused, naming the variable and the spectrum."""
    rows = None if hi is None else (lo, hi)
    with codecs.reading(path, list(names), rows=rows):
        values = np.stack([np.asarray(group[v][lo:hi], dtype) for v in names], axis=1)
    if not np.isfinite(values).all():
        row, col = (int(i[0]) for i in np.nonzero(~np.isfinite(values)))
        raise SpecdenoiseError(f"dataset {path}: {names[col]} is NaN or infinite at "
                               f"spectrum {lo + row}")
    return values


def simulation_config(info: StoreInfo) -> dict:
    """The simulation configuration a dataset records (``{}`` if it records none)."""
    import json

    raw = open_group(info.path, info.storage_options).attrs.get("config")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


def bases(info: StoreInfo) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(basis of the stored distortion or None, basis for fresh draws), over the store's pixels."""
    wave = read_wave(info)
    pixels = wave if wave is not None else info.n_wave
    stored = calibration.basis(pixels, info.calib_order) if info.calib_order else None
    return stored, calibration.basis(pixels)


# --------------------------------------------------------------------------- epoch plan


def key(*parts: int) -> int:
    """A 63-bit seed derived from integers with ``SeedSequence`` (independent streams)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


# stream labels mixed into keys so that draws for different purposes never coincide
_ORDER, _NOISE, _BUFFER, _POOL = 1, 2, 3, 7


def chunk_order(n_chunks: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    if not shuffle:
        return np.arange(n_chunks)
    return np.random.default_rng(key(seed, epoch, _ORDER)).permutation(n_chunks)


def pool_order(n_chunks: int, per_epoch: int, seed: int, epoch: int) -> np.ndarray:
    """The ``per_epoch`` chunks of ``epoch`` when epochs walk through a large pool.

    Each pass through the pool puts its chunks in a new random order and cuts it into
    ``n_chunks // per_epoch`` epochs of ``per_epoch`` distinct chunks (the few chunks left over
    wait for a later pass). So within a pass no spectrum is seen twice.
    """
    per_pass = n_chunks // per_epoch
    cycle, slot = divmod(epoch, per_pass)
    perm = np.random.default_rng(key(seed, cycle, _POOL)).permutation(n_chunks)
    return perm[slot * per_epoch: (slot + 1) * per_epoch]


def shard_plan(info: StoreInfo, order, shard: int, n_shards: int) -> list[tuple[int, int, int]]:
    """The (chunk, lo, hi) pieces of shard ``shard`` of ``n_shards`` (lo/hi: rows in chunk).

    The chunks in ``order`` laid end to end form one sequence of spectra; shard ``s`` gets the
    positions ``[s * N // n_shards, (s + 1) * N // n_shards)``. Shards are disjoint, cover all
    spectra and differ in size by at most one.
    """
    n = sum(hi - lo for lo, hi in (info.chunk_bounds(int(c)) for c in order))
    first, last = shard * n // n_shards, (shard + 1) * n // n_shards
    pieces = []
    pos = 0
    for chunk in order:
        c0, c1 = info.chunk_bounds(int(chunk))
        size = c1 - c0
        lo, hi = max(first - pos, 0), min(last - pos, size)
        if lo < hi:
            pieces.append((int(chunk), lo, hi))
        pos += size
        if pos >= last:
            break
    return pieces


# --------------------------------------------------------------------------- augmentation


def device_generator(device, seed: int, epoch: int, rank: int) -> torch.Generator:
    """Generator for augmentation on the training device (``noise="device"``)."""
    return torch.Generator(device=device).manual_seed(key(seed, epoch, _NOISE, rank, 1))


# --------------------------------------------------------------------------- the dataset


class SpectrumStream(IterableDataset):
    """Batches streamed from a dataset store; see the module docstring.

    Parameters
    ----------
    info
        From :func:`inspect_store`.
    batch_size
        Spectra per batch yielded (per rank).
    mode
        ``train`` (fresh noise, shuffled) or ``val`` (stored ``flux``, in order).
    seed
        Run seed; with the epoch (:meth:`set_epoch`) it fixes everything drawn.
    shuffle_buffer
        Spectra held in the shuffle buffer (per shard); 0 disables shuffling within shards.
    rank, world_size
        DDP rank and number of ranks.
    noise
        ``loader`` (augment in the workers) or ``device`` (yield clean spectra, augment later).
    drop_last
        Drop each shard's last, incomplete batch.
    """

    def __init__(self, info: StoreInfo, *, batch_size: int, mode: str = "train", seed: int = 0,
                 shuffle_buffer: int = 1024, rank: int = 0, world_size: int = 1,
                 noise: str = "loader", distortion: str = "stored",
                 distortion_max: float = 0.02, target_distortion: bool = True,
                 epoch_size: int = 0, drop_last: bool = False):
        super().__init__()
        if mode not in ("train", "val"):
            raise ValueError(f"mode must be train or val, not {mode!r}")
        if noise not in ("loader", "device"):
            raise SpecdenoiseError(f"noise must be 'loader' or 'device', not {noise!r}")
        self.info = info
        self.batch_size = int(batch_size)
        self.mode = mode
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.rank, self.world_size = int(rank), int(world_size)
        self.noise = noise
        if distortion not in calibration.DISTORTIONS:
            raise SpecdenoiseError(f"distortion must be one of {calibration.DISTORTIONS}, "
                                   f"not {distortion!r}")
        self.distortion = distortion
        self.distortion_max = float(distortion_max)
        self.target_distortion = bool(target_distortion)
        if not info.calib_order and (distortion == "fresh" or not target_distortion):
            raise SpecdenoiseError(
                f"dataset {info.path} does not record its calibration distortion (calib_c* "
                "coordinates; simulated before version 0.2?): re-simulate it, or train with "
                "--distortion stored and the distortion kept in the target")
        self.drop_last = bool(drop_last)
        self.epoch = 0
        # chunks per epoch when streaming from a pool larger than an epoch (0: all chunks)
        per = math.ceil(epoch_size / info.chunk_size) if epoch_size > 0 else 0
        self.chunks_per_epoch = per if 0 < per < info.n_chunks and mode == "train" else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shard(self) -> tuple[int, int]:
        """(shard id, number of shards) of the calling DataLoader worker on this rank."""
        w = get_worker_info()
        wid, nw = (w.id, w.num_workers) if w is not None else (0, 1)
        return self.rank * nw + wid, self.world_size * nw

    def order(self) -> np.ndarray:
        """The chunks of this epoch, in the order they are laid end to end."""
        if self.chunks_per_epoch:
            return pool_order(self.info.n_chunks, self.chunks_per_epoch, self.seed, self.epoch)
        return chunk_order(self.info.n_chunks, self.seed, self.epoch,
                           shuffle=self.mode == "train")

    def epoch_spectra(self) -> int:
        """Spectra in one epoch, over all ranks."""
        if not self.chunks_per_epoch:
            return self.info.n_spectrum
        return sum(hi - lo for lo, hi in map(self.info.chunk_bounds, self.order()))

    def rank_size(self, num_workers: int = 0) -> int:
        """Spectra this rank yields per epoch (for progress bars)."""
        nw = max(num_workers, 1)
        n = self.epoch_spectra()
        shards = range(self.rank * nw, (self.rank + 1) * nw)
        total = self.world_size * nw
        return sum((s + 1) * n // total - s * n // total for s in shards)

    # -- iteration

    def _pieces(self):
        """Yield dicts of arrays for this shard's pieces, augmented (train) or as stored (val)."""
        shard, n_shards = self.shard()
        train = self.mode == "train"
        order = self.order()
        group = open_group(self.info.path, self.info.storage_options)
        names = TRAIN_VARS if train else VAL_VARS
        stored_basis, fresh_basis = bases(self.info)
        for chunk, lo, hi in shard_plan(self.info, order, shard, n_shards):
            arrays = read_chunk(group, self.info, chunk, names)
            c0, _ = self.info.chunk_bounds(chunk)
            t = {k: torch.from_numpy(v) for k, v in arrays.items()}
            d_sim = (calibration.distortion(t["calib"], stored_basis)
                     if stored_basis is not None else None)
            if not train:
                clean = t["flux_clean"] if self.target_distortion else t["flux_clean"] / d_sim
                _, x, y, s = normalise(t["flux"], clean, t["sigma"], fallback=t["flux_clean"])
                out = {"x": x, "y": y, "sigma": s}
            elif self.noise == "device":
                out = {"clean": t["flux_clean"], "sigma": t["sigma"]}
                if "calib" in t:
                    out["calib"] = t["calib"]
            else:
                # noise for the whole chunk, so a spectrum's draw does not depend on the shards
                gen = torch.Generator().manual_seed(key(self.seed, self.epoch, _NOISE, chunk))
                out = augment(t["flux_clean"], t["sigma"], gen, basis=fresh_basis,
                              distortion_mode=self.distortion,
                              distortion_max=self.distortion_max, stored=d_sim,
                              target_distortion=self.target_distortion)
            if "params" in t:
                out["params"] = t["params"]
            out["good"] = t["good"]
            out["index"] = torch.arange(c0, c0 + t["good"].shape[0], dtype=torch.int64)
            yield {k: v[lo:hi] for k, v in out.items()}

    def __iter__(self):
        shard, _ = self.shard()
        bs = self.batch_size
        if self.mode == "val" or self.shuffle_buffer <= 0:
            yield from _rebatch(self._pieces(), bs, self.drop_last)
            return
        gen = torch.Generator().manual_seed(key(self.seed, self.epoch, _BUFFER, shard))
        pool: list[dict] = []
        pool_n = 0
        for piece in self._pieces():
            pool.append(piece)
            pool_n += len(piece["index"])
            if pool_n < self.shuffle_buffer + bs:
                continue
            # emit whole batches drawn at random from the pool, keep about half a buffer
            cat = _cat(pool)
            perm = torch.randperm(pool_n, generator=gen)
            n_emit = (pool_n - self.shuffle_buffer // 2) // bs * bs
            for i in range(0, n_emit, bs):
                yield {k: v[perm[i:i + bs]] for k, v in cat.items()}
            keep = perm[n_emit:]
            pool, pool_n = [{k: v[keep] for k, v in cat.items()}], len(keep)
        if pool_n:
            cat = _cat(pool)
            perm = torch.randperm(pool_n, generator=gen)
            for i in range(0, pool_n, bs):
                if self.drop_last and i + bs > pool_n:
                    break
                yield {k: v[perm[i:i + bs]] for k, v in cat.items()}


def _cat(pieces: list[dict]) -> dict:
    if len(pieces) == 1:
        return pieces[0]
    return {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}


def _rebatch(pieces, bs: int, drop_last: bool):
    """Cut a stream of pieces into batches of ``bs`` without reordering."""
    pending: list[dict] = []
    n = 0
    for piece in pieces:
        pending.append(piece)
        n += len(piece["index"])
        if n >= bs:
            cat = _cat(pending)
            full = n // bs * bs
            for i in range(0, full, bs):
                yield {k: v[i:i + bs] for k, v in cat.items()}
            pending = [{k: v[full:] for k, v in cat.items()}] if full < n else []
            n -= full
    if n and not drop_last:
        yield _cat(pending)
