"""How chunks are encoded on disk, checked, and read back with one-line errors.

New stores use codecs of the Zarr v3 specification only, so they open without warnings in
zarr-python and in other v3 implementations:

- float spectra: ``bytes`` -> ``blosc`` (zstd, bit shuffle) -> ``crc32c``; lossy bit rounding
  (:func:`bitround`) is applied to the numbers *before* they are encoded, by the writer, and the
  kept mantissa bits are recorded in the array attribute ``keepbits``;
- everything else: ``bytes`` -> ``zstd`` -> ``crc32c``.

``crc32c`` (a checksum of the encoded chunk, checked before anything is decompressed) makes a
truncated or flipped chunk an error instead of silently different numbers or a decompressor
reading past the end of its buffer. Stores written before (numcodecs ``bitround`` filter, no
checksum) stay readable: :func:`check_frames` validates their blosc frame lengths before any
decompressor sees them (a truncated lz4/zstd blosc frame could be decoded past its end), and
:func:`reading` turns a decoder failure into ``corrupt chunk N of VAR in STORE``.

A chunk's number N is its index in C order over the array's chunk grid: for a dataset
variable ``(spectrum, wave)`` it is the spectrum chunk, as the simulation stage counts them.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import zarr

from specdenoise.errors import SpecdenoiseError

#: the attribute of a float array whose values were bit-rounded before encoding
KEEPBITS_ATTR = "keepbits"
#: float32 mantissa bits
FLOAT32_MANTISSA = 23


def checksum() -> zarr.codecs.Crc32cCodec:
    return zarr.codecs.Crc32cCodec()


def default_compressors() -> list:
    """Bytes-to-bytes codecs of every array that has no reason to differ: zstd + checksum."""
    return [zarr.codecs.ZstdCodec(level=3), checksum()]


def spectral_compressors(kind: str) -> list:
    """Bytes-to-bytes codecs of the float spectra for a ``--compressor`` choice.

    Bit shuffle inside blosc puts the zeroed low mantissa bits of rounded floats side by side,
    which is what makes ``zstd-bitround`` small (18.4 KiB a spectrum against 33.5 lossless).
    """
    if kind == "none":
        return [checksum()]
    if kind == "lz4":
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), checksum()]
    if kind == "zstd-bitround":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"), checksum()]
    if kind == "zstd":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), checksum()]
    raise SpecdenoiseError(f"unknown compressor {kind!r}; choose zstd-bitround, zstd, lz4 or none")


def bitround(values: np.ndarray, keepbits: int) -> np.ndarray:
    """float32 ``values`` rounded to ``keepbits`` mantissa bits (round half to even).

    The same numbers as numcodecs' ``BitRound`` (relative error <= 2**-(keepbits+1)), computed
    before encoding so the store needs no codec outside the Zarr specification. Non-finite
    values are kept as they are. Returns a new array.
    """
    if not 0 <= keepbits <= FLOAT32_MANTISSA:
        raise SpecdenoiseError(f"keepbits must be 0..{FLOAT32_MANTISSA}, got {keepbits}")
    a = np.array(values, dtype=np.float32, copy=True, order="C")
    if keepbits == FLOAT32_MANTISSA:
        return a
    b = a.view(np.uint32)
    drop = FLOAT32_MANTISSA - keepbits
    half_minus_one = np.uint32((1 << (drop - 1)) - 1)
    finite = np.isfinite(a)
    rounded = (b + (((b >> np.uint32(drop)) & np.uint32(1)) + half_minus_one))
    rounded &= np.uint32((0xFFFFFFFF >> drop) << drop)
    b[finite] = rounded[finite]
    return a


# --------------------------------------------------------------------------- reading


def corrupt(store, var: str, chunk: int, why: str = "",
            advice: str = "the store is damaged: write it again or restore it") -> SpecdenoiseError:
    """The one-line error for a chunk that cannot be read back as written."""
    tail = f" ({why})" if why else ""
    return SpecdenoiseError(f"corrupt chunk {chunk} of {var} in {store}{tail}; {advice}")


def _array_dirs(store: Path, names: Sequence[str] | None) -> Iterator[tuple[str, Path, dict]]:
    """(name, folder, metadata) of each array of a local v3 store (optionally only ``names``)."""
    for meta_path in sorted(store.rglob("zarr.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("node_type") != "array":
            continue
        name = meta_path.parent.relative_to(store).as_posix()
        if names is None or name in names:
            yield name, meta_path.parent, meta


def _chunk_files(folder: Path, meta: dict,
                 rows: tuple[int, int] | None = None) -> Iterator[tuple[int, Path]]:
    """(chunk number, file) of every chunk file an array has on disk.

    ``rows`` (lo, hi): only the chunks holding those indices of the first axis.
    """
    shape = meta.get("shape", [])
    chunk_shape = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])
    keys = meta.get("chunk_key_encoding", {})
    sep = keys.get("configuration", {}).get("separator", "/" if keys.get("name") == "default"
                                            else ".")
    if len(chunk_shape) != len(shape):
        return
    grid = tuple(max(1, math.ceil(s / c)) for s, c in zip(shape, chunk_shape, strict=True))
    for idx in np.ndindex(*grid):
        if rows is not None and idx and not (idx[0] * chunk_shape[0] < rows[1]
                                             and (idx[0] + 1) * chunk_shape[0] > rows[0]):
            continue
        parts = [str(i) for i in idx] or ["0"]
        key = sep.join(("c", *parts)) if keys.get("name", "default") == "default" \
            else sep.join(parts)
        path = folder / key
        if path.is_file():
            yield int(np.ravel_multi_index(idx, grid)) if idx else 0, path


def blosc_frame_ok(raw: bytes) -> bool:
    """Whether a blosc frame is as long as its header says (16-byte header, little endian)."""
    if len(raw) < 16:
        return False
    cbytes = int.from_bytes(raw[12:16], "little")
    return cbytes == len(raw)


def check_frames(store, names: Sequence[str] | None = None) -> None:
    """Before reading an older local store: refuse any truncated or padded blosc frame.

    Arrays with a ``crc32c`` codec are skipped (the checksum is verified before decoding);
    remote stores are not checked. One small read per chunk file.
    """
    store = Path(store)
    if "://" in str(store) or not store.is_dir():
        return
    for name, folder, meta in _array_dirs(store, names):
        codecs = [c.get("name") for c in meta.get("codecs", [])]
        if "crc32c" in codecs or "blosc" not in codecs:
            continue
        for number, path in _chunk_files(folder, meta):
            with open(path, "rb") as f:
                head = f.read(16)
            size = path.stat().st_size
            if len(head) < 16 or int.from_bytes(head[12:16], "little") != size:
                raise corrupt(store, name, number, "blosc frame length does not match its file")


def locate_corrupt(store, names: Sequence[str] | None = None,
                   rows: tuple[int, int] | None = None) -> tuple[str, int, str] | None:
    """Decode every chunk of a local store (or of ``names``) one by one; the first bad one.

    Returns (variable, chunk number, reason) or None. Used after a read failed, to name the
    chunk; costs a full read of those arrays (of their chunks holding ``rows`` of the first
    axis, when given).
    """
    store = Path(store)
    if "://" in str(store) or not store.is_dir():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old stores: numcodecs codecs, the .done folder
        try:
            group = zarr.open_group(str(store), mode="r")
        except Exception:
            return None
        for name, folder, meta in _array_dirs(store, names):
            codecs = [c.get("name") for c in meta.get("codecs", [])]
            try:
                arr = group[name]
            except Exception:
                continue
            if not isinstance(arr, zarr.Array):
                continue
            for number, path in _chunk_files(folder, meta, rows):
                if "blosc" in codecs and "crc32c" not in codecs:
                    if not blosc_frame_ok(path.read_bytes()):
                        return name, number, "blosc frame length does not match its file"
                idx = np.unravel_index(number, arr.cdata_shape) if arr.ndim else ()
                try:
                    arr.get_block_selection(tuple(int(i) for i in idx))
                except Exception as exc:
                    return name, number, f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
    return None


@contextlib.contextmanager
def reading(store, names: Sequence[str] | None = None, rows: tuple[int, int] | None = None):
    """Turn a failure while reading ``store`` into ``corrupt chunk N of VAR in STORE``.

    On any exception other than :class:`SpecdenoiseError` the store's chunks (those of
    ``names`` holding ``rows`` of the first axis, when given) are decoded one by one; if one is
    bad the read ends with its one-line error, otherwise the original exception propagates.
    """
    try:
        yield
    except SpecdenoiseError:
        raise
    except Exception as exc:
        found = locate_corrupt(store, names, rows)
        if found is None:
            raise
        raise corrupt(store, *found) from exc


@contextlib.contextmanager
def quiet_legacy():
    """Open stores written before the v3-only codecs (numcodecs ``bitround``) without a warning
    per array; new stores need no such filter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")
        yield
