"""Streaming training data: Zarr chunks -> augmentation -> shuffle buffer -> batches.

One epoch, seen from the whole job:

1. The dataset's chunks are put in an order drawn from (seed, epoch); laid end to end they form
   one sequence of spectra, which is cut into ``world_size * num_workers`` contiguous, nearly
   equal pieces, one per (DDP rank, DataLoader worker) shard. Every spectrum belongs to exactly
   one shard; each shard reads only its own chunks (plus at most two it shares at its ends).
2. A shard reads a chunk and augments all of it at once with a generator keyed by
   (seed, epoch, chunk): a fresh noise realisation ``flux_clean + sigma * N(0, 1)``, a smooth
   multiplicative calibration distortion of at most ``distortion_max``, then division of input
   and target by one factor per spectrum that brings the noisy input's median to 0.5. So what
   a spectrum looks like in an epoch does not depend on how many ranks or workers ran.
3. Augmented spectra go through a bounded shuffle buffer and come out as ready batches (the
   DataLoader runs with ``batch_size=None``: batching here avoids per-spectrum Python work).

Validation streams the stored ``flux`` (one fixed noise realisation) with ``flux_clean`` as the
target, in order, normalised the same way. With ``noise="device"`` the loader yields the clean
spectra and the training loop calls :func:`augment` on the GPU instead.

Batches are dicts of tensors: ``x`` input, ``y`` target, ``sigma`` (all float32, (b, n_wave),
normalised), ``good`` (bool, (b, n_wave), False for masked pixels) and ``index`` (int64, (b,),
row in the store); raw batches carry ``clean`` instead of ``x`` and ``y``.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import zarr
from torch.utils.data import IterableDataset, get_worker_info

from specdenoise import codecs
from specdenoise.schema import DATASET_KIND, SPECTRUM_DIM, WAVE_DIM
from specdenoise.simulate.errors import SpecdenoiseError

TRAIN_VARS = ("flux_clean", "sigma")
VAL_VARS = ("flux", "flux_clean", "sigma")
MEDIAN = 0.5  # the normalisation of every spectrum the networks see


# --------------------------------------------------------------------------- store access


def is_url(path) -> bool:
    return "://" in str(path)


def open_group(path, storage_options: dict | None = None) -> zarr.Group:
    """Open a dataset's Zarr group read-only, from a local path or any fsspec URL."""
    path = str(path)
    if not is_url(path) and not os.path.exists(path):
        raise SpecdenoiseError(f"dataset {path} does not exist")
    try:
        with warnings.catch_warnings(), codecs.quiet_legacy():
            # the schema's ".done" marker folder is not a Zarr node
            warnings.filterwarnings("ignore", message="Object at .done is not recognized")
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

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_spectrum / self.chunk_size)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_spectrum)


def inspect_store(path, require=TRAIN_VARS, *, n_wave: int = 4096,
                  storage_options: dict | None = None) -> StoreInfo:
    """Check a dataset can feed a model with ``n_wave`` pixels; raise a one-line error if not."""
    g = open_group(path, storage_options)
    attrs = dict(g.attrs)
    if attrs.get("specdenoise_kind") != DATASET_KIND:
        raise SpecdenoiseError(f"{path} is not a specdenoise dataset (no specdenoise_kind attr)")
    if not attrs.get("complete", False):
        raise SpecdenoiseError(
            f"dataset {path} is incomplete (interrupted simulation?); finish it with --resume"
        )
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
    codecs.check_frames(path)  # older local stores (no checksum): no decoder past a chunk's end
    return StoreInfo(
        path=str(path),
        n_spectrum=int(shape[0]),
        chunk_size=int(g[require[0]].chunks[0]),
        n_wave=int(shape[1]),
        has_mask="mask" in members,
        storage_options=storage_options,
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
    out["good"] = good
    return out


# --------------------------------------------------------------------------- epoch plan


def key(*parts: int) -> int:
    """A 63-bit seed derived from integers with ``SeedSequence`` (independent streams)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


# stream labels mixed into keys so that draws for different purposes never coincide
_ORDER, _NOISE, _BUFFER = 1, 2, 3


def chunk_order(n_chunks: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    if not shuffle:
        return np.arange(n_chunks)
    return np.random.default_rng(key(seed, epoch, _ORDER)).permutation(n_chunks)


def shard_plan(info: StoreInfo, order, shard: int, n_shards: int) -> list[tuple[int, int, int]]:
    """The (chunk, lo, hi) pieces of shard ``shard`` of ``n_shards`` (lo/hi: rows in chunk).

    The chunks in ``order`` laid end to end form one sequence of spectra; shard ``s`` gets the
    positions ``[s * N // n_shards, (s + 1) * N // n_shards)``. Shards are disjoint, cover all
    spectra and differ in size by at most one.
    """
    n = info.n_spectrum
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


def distortion_basis(n_wave: int, order: int = 3) -> torch.Tensor:
    """Legendre polynomials P_1..P_order over the arm, shape (order, n_wave)."""
    x = np.linspace(-1.0, 1.0, n_wave)
    basis = [np.polynomial.legendre.Legendre.basis(k)(x) for k in range(1, order + 1)]
    return torch.as_tensor(np.array(basis), dtype=torch.float32)


def norm_factor(x: torch.Tensor, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row factor (b, 1) that brings the median of ``x`` to 0.5.

    Rows whose median is not positive (pure noise around zero) use the median of ``fallback``
    (computed only for those rows) when given, else 1.
    """
    med = x.median(dim=1, keepdim=True).values
    bad = med <= 0
    if fallback is not None and bool(bad.any()):
        rows = bad[:, 0]
        med[rows] = fallback[rows].median(dim=1, keepdim=True).values
        bad = med <= 0
    return torch.where(bad, torch.ones_like(med), med / MEDIAN)


def normalise(x: torch.Tensor, *others: torch.Tensor, fallback: torch.Tensor | None = None):
    """Divide ``x`` and ``others`` by the factor that brings each row of ``x`` to median 0.5.

    Returns ``(factor (b, 1), x / factor, *others / factor)``; see :func:`norm_factor`.
    """
    factor = norm_factor(x, fallback)
    return (factor, x / factor, *(o / factor for o in others))


def augment(clean: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator, *,
            distortion_max: float = 0.02, target_distortion: bool = True,
            basis: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One training view of clean spectra: fresh noise, calibration distortion, renormalisation.

    ``clean`` and ``sigma`` are (b, n_wave) float32 on the generator's device. The distortion
    is ``1 + a * s(lambda)`` with ``a ~ U(0, distortion_max)`` and ``s`` a random combination of
    low-order Legendre polynomials scaled to max |s| = 1. The observation is
    ``(clean + sigma * noise) * distortion``; the target is ``clean * distortion`` (pure
    denoising, ``target_distortion=True``) or ``clean`` (denoising plus calibration correction).
    Input, target and sigma are divided by the same per-spectrum factor (input median -> 0.5).
    """
    b, n_wave = clean.shape
    dev = clean.device
    if basis is None:
        basis = distortion_basis(n_wave)
    basis = basis.to(dev)
    noise = torch.randn(clean.shape, generator=generator, device=dev)
    amp = torch.rand((b, 1), generator=generator, device=dev) * distortion_max
    coef = torch.randn((b, basis.shape[0]), generator=generator, device=dev)
    shape = coef @ basis
    shape.mul_(amp / shape.abs().amax(dim=1, keepdim=True).clamp_min(1e-12))
    distortion = shape.add_(1.0)
    observed = torch.addcmul(clean, sigma, noise, out=noise).mul_(distortion)
    factor = norm_factor(observed, fallback=clean * distortion)
    inv = factor.reciprocal()
    scale = distortion.mul_(inv)  # distortion / factor, one multiply per pixel below
    y = clean * (scale if target_distortion else inv)
    return {"x": observed.mul_(inv), "y": y, "sigma": sigma * scale}


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
                 noise: str = "loader", distortion_max: float = 0.02,
                 target_distortion: bool = True, drop_last: bool = False):
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
        self.distortion_max = float(distortion_max)
        self.target_distortion = bool(target_distortion)
        self.drop_last = bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shard(self) -> tuple[int, int]:
        """(shard id, number of shards) of the calling DataLoader worker on this rank."""
        w = get_worker_info()
        wid, nw = (w.id, w.num_workers) if w is not None else (0, 1)
        return self.rank * nw + wid, self.world_size * nw

    def rank_size(self, num_workers: int = 0) -> int:
        """Spectra this rank yields per epoch (for progress bars)."""
        nw = max(num_workers, 1)
        n = self.info.n_spectrum
        shards = range(self.rank * nw, (self.rank + 1) * nw)
        total = self.world_size * nw
        return sum((s + 1) * n // total - s * n // total for s in shards)

    # -- iteration

    def _pieces(self):
        """Yield dicts of arrays for this shard's pieces, augmented (train) or as stored (val)."""
        shard, n_shards = self.shard()
        train = self.mode == "train"
        order = chunk_order(self.info.n_chunks, self.seed, self.epoch, shuffle=train)
        group = open_group(self.info.path, self.info.storage_options)
        names = TRAIN_VARS if train else VAL_VARS
        basis = distortion_basis(self.info.n_wave)
        for chunk, lo, hi in shard_plan(self.info, order, shard, n_shards):
            arrays = read_chunk(group, self.info, chunk, names)
            c0, _ = self.info.chunk_bounds(chunk)
            t = {k: torch.from_numpy(v) for k, v in arrays.items()}
            if not train:
                _, x, y, s = normalise(t["flux"], t["flux_clean"], t["sigma"],
                                       fallback=t["flux_clean"])
                out = {"x": x, "y": y, "sigma": s}
            elif self.noise == "device":
                out = {"clean": t["flux_clean"], "sigma": t["sigma"]}
            else:
                # noise for the whole chunk, so a spectrum's draw does not depend on the shards
                gen = torch.Generator().manual_seed(key(self.seed, self.epoch, _NOISE, chunk))
                out = augment(t["flux_clean"], t["sigma"], gen,
                              distortion_max=self.distortion_max,
                              target_distortion=self.target_distortion, basis=basis)
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
