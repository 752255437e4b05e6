"""The stellar model grid store: an xarray Dataset on Zarr v3.

Layout
------
``flux[teff, logg, m_h, a_m(, c_m), wave]``  float32, unit in ``flux.attrs["units"]``
``cont[...same...]``                         float32, optional continuum
``exists[teff, logg, m_h, a_m(, c_m)]``      bool, False where the source has no model
coordinates ``teff`` (K), ``logg`` (dex, cgs), ``m_h``, ``a_m``, ``c_m`` (dex),
``wave`` (nm, vacuum)

``flux`` is chunked one node per chunk, so one node's spectrum is one read and a worker that
interpolates fetches only the corner spectra it needs.

Writing is two-phase so an interrupted build or import never leaves a store that looks complete:
everything is written under a temporary folder (a unique name from
:func:`specdenoise.stores.temp_dir`); :func:`finalize_grid_store` checks that
every node marked as existing was written, records a content hash, consolidates metadata, sets
``attrs["complete"] = True`` and only then publishes the store (:func:`specdenoise.stores.publish`).
:func:`open_grid` refuses a store that is not complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from specdenoise import codecs, stores
from specdenoise.errors import SpecdenoiseError

#: Parameter axes a grid may have, in storage order.
AXES = ("teff", "logg", "m_h", "a_m", "c_m")
AXIS_UNITS = {"teff": "K", "logg": "dex (cgs)", "m_h": "dex", "a_m": "dex", "c_m": "dex"}
AXIS_LONG_NAMES = {
    "teff": "effective temperature",
    "logg": "surface gravity log10(g / cm s^-2)",
    "m_h": "metallicity [M/H]",
    "a_m": "alpha enhancement [alpha/M]",
    "c_m": "carbon enhancement [C/M]",
}
GRID_KIND = stores.GRID.name
GRID_SCHEMA_VERSION = 1


def _compressors():
    """Node spectra: blosc (zstd, bit shuffle) and a crc32c checksum, both Zarr v3 codecs."""
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),
            codecs.checksum()]


def partial_path(path: str | Path) -> Path:
    """Where a store is assembled before it is renamed to ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _check_axes(axes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = list(axes)
    unknown = [n for n in names if n not in AXES]
    if unknown:
        raise SpecdenoiseError(f"unknown grid axis {unknown[0]!r}; grid axes are {', '.join(AXES)}")
    order = [n for n in AXES if n in axes]
    if names != order:
        raise SpecdenoiseError(f"grid axes must be given in the order {order}, got {names}")
    out = {}
    for n in order:
        v = np.asarray(axes[n], dtype=np.float64)
        if v.ndim != 1 or v.size < 1:
            raise SpecdenoiseError(f"grid axis {n!r} must be a non-empty 1-D array")
        if v.size > 1 and not np.all(np.diff(v) > 0):
            raise SpecdenoiseError(f"grid axis {n!r} must be strictly increasing")
        out[n] = v
    return out


def grid_dataset(
    axes: Mapping[str, np.ndarray],
    wave: np.ndarray,
    flux,
    *,
    cont=None,
    exists: np.ndarray | None = None,
    flux_unit: str = "erg s-1 cm-2 nm-1 (surface flux)",
    attrs: Mapping | None = None,
) -> tuple[xr.Dataset, dict]:
    """A grid store's Dataset, marked incomplete, and the Zarr encoding to write it with.

    Parameters
    ----------
    axes : ordered mapping axis name -> strictly increasing 1-D node values.
    wave : (n_wave,) vacuum wavelengths in nm, strictly increasing.
    flux : (*axes, n_wave) array-like of float32 node spectra (NumPy, or a lazy array when
        the caller only declares the store, see :func:`specdenoise.stage_grid.create_grid_store`).
    cont : like ``flux``, the continuum, or None for a store without ``cont``.
    exists : bool array of the axes' shape; defaults to all True.
    flux_unit : unit string stored in ``flux.attrs["units"]``.
    attrs : global attributes (source, resolution, sampling, settings...).

    The store is written with ``ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False,
    encoding=encoding)`` into a temporary folder and published by :func:`finalize_grid_store`.
    """
    axes = _check_axes(axes)
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1 or wave.size < 2 or not np.all(np.diff(wave) > 0):
        raise SpecdenoiseError("grid wavelengths must be a strictly increasing 1-D array")
    shape = tuple(v.size for v in axes.values())
    if exists is None:
        exists = np.ones(shape, dtype=bool)
    exists = np.asarray(exists, dtype=bool)
    if exists.shape != shape:
        raise SpecdenoiseError(f"'exists' has shape {exists.shape}, expected {shape}")

    dims = (*axes, "wave")
    coords = {
        n: (n, v, {"units": AXIS_UNITS[n], "long_name": AXIS_LONG_NAMES[n]})
        for n, v in axes.items()
    }
    coords["wave"] = ("wave", wave, {"units": "nm", "long_name": "vacuum wavelength"})
    chunks = (*(1,) * len(shape), wave.size)
    data_vars = {
        "flux": (dims, flux, {"units": flux_unit}),
        "exists": (tuple(axes), exists, {"long_name": "model exists at this node"}),
    }
    if cont is not None:
        data_vars["cont"] = (dims, cont, {"units": flux_unit, "long_name": "continuum"})
    all_attrs = dict(attrs or {})
    all_attrs.update(
        specdenoise_kind=GRID_KIND,
        schema_version=GRID_SCHEMA_VERSION,
        wave_medium="vacuum",
        complete=False,
    )
    ds = xr.Dataset(data_vars, coords=coords, attrs=_jsonable_attrs(all_attrs))
    encoding = {
        v: {"chunks": chunks, "compressors": _compressors(), "fill_value": np.float32(np.nan)}
        for v in ("flux", "cont")
        if v in ds
    }
    for v in ("exists", *coords):
        encoding[v] = {"compressors": codecs.default_compressors()}
    return ds, encoding


def write_nodes(
    store: str | Path,
    index: Sequence[tuple[int, ...]] | np.ndarray,
    flux: np.ndarray,
    cont: np.ndarray | None = None,
) -> None:
    """Write node spectra into a partial grid store (one chunk per node).

    ``index`` is (k, n_axes) integer node indices, ``flux`` (and ``cont``) are (k, n_wave).
    Safe to call from many processes at once for different nodes (one chunk per node).
    """
    g = zarr.open_group(str(store), mode="r+")
    index = np.atleast_2d(np.asarray(index, dtype=np.int64))
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float32))
    fa = g["flux"]
    ca = g["cont"] if cont is not None else None
    if cont is not None:
        cont = np.atleast_2d(np.asarray(cont, dtype=np.float32))
    for k, idx in enumerate(index):
        fa[tuple(idx)] = flux[k]
        if ca is not None:
            ca[tuple(idx)] = cont[k]


def write_exists(store: str | Path, exists: np.ndarray) -> None:
    """Overwrite the ``exists`` mask of a partial store (e.g. after skipping bad files)."""
    g = zarr.open_group(str(store), mode="r+")
    g["exists"][...] = np.asarray(exists, dtype=bool)


def _jsonable_attrs(attrs: Mapping) -> dict:
    """Zarr attributes must be JSON: nested settings are stored as JSON text."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, (dict, list, tuple)):
            out[k] = json.dumps(v, sort_keys=True, default=str)
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out


def _content_hash(g: zarr.Group, names: Sequence[str]) -> tuple[str, int]:
    """sha256 over axes, wavelengths, the mask and every node spectrum (node order).

    Returns the hex digest and the number of existing nodes whose flux is missing or not finite.
    """
    h = hashlib.sha256()
    for n in (*names, "wave"):
        h.update(n.encode())
        h.update(np.ascontiguousarray(g[n][...], dtype=np.float64).tobytes())
    exists = np.asarray(g["exists"][...], dtype=bool)
    h.update(exists.tobytes())
    flux = g["flux"]
    bad = 0
    shape = exists.shape
    # one slab of the first axis at a time keeps memory bounded for large grids
    for i in range(shape[0]):
        slab = np.asarray(flux[i], dtype=np.float32)
        ex = exists[i]
        ok = np.isfinite(slab).all(axis=-1)
        bad += int(np.count_nonzero(ex & ~ok))
        slab = np.where(ex[..., None], slab, np.float32(0))
        h.update(slab.tobytes())
    return h.hexdigest(), bad


def finalize_grid_store(store: str | Path, path: str | Path, *, overwrite: bool = False,
                        keep_failed: bool = True) -> Path:
    """Check, hash, consolidate and atomically move a partial store to ``path``.

    ``keep_failed``: a store that fails the check is left where it is for inspection (and the
    message says where); the importers pass False and delete it.
    """
    complete_grid_store(store, keep_failed=keep_failed)
    return stores.publish(store, path, stores.GRID, overwrite=overwrite)


def complete_grid_store(store: str | Path, *, keep_failed: bool = False) -> None:
    """Check every existing node of a partial grid store was written and is finite, record its
    content hash, mark it complete and consolidate it (the ``finish`` of
    :func:`specdenoise.stores.assembled`). ``keep_failed``: the message says the partial store
    is left for inspection."""
    g = zarr.open_group(str(store), mode="r+")
    names = [n for n in AXES if n in g]
    digest, bad = _content_hash(g, names)
    if bad:
        where = f"; the partial store is left at {store}" if keep_failed else ""
        raise SpecdenoiseError(
            f"{bad} grid node(s) marked as existing were never written or are not finite{where}"
        )
    g.attrs.update({"content_hash": f"sha256:{digest}", "complete": True})
    zarr.consolidate_metadata(str(store))


def write_grid(
    path: str | Path,
    flux: np.ndarray,
    axes: Mapping[str, np.ndarray],
    wave: np.ndarray,
    *,
    exists: np.ndarray | None = None,
    cont: np.ndarray | None = None,
    flux_unit: str = "erg s-1 cm-2 nm-1 (surface flux)",
    attrs: Mapping | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an in-memory grid ``flux[*axes, wave]`` as a complete store at ``path``."""
    axes = _check_axes(axes)
    shape = tuple(v.size for v in axes.values())
    flux = np.asarray(flux, dtype=np.float32)
    if flux.shape != (*shape, np.size(wave)):
        raise SpecdenoiseError(f"flux has shape {flux.shape}, expected {(*shape, np.size(wave))}")
    if cont is not None:
        cont = np.asarray(cont, dtype=np.float32)
    stores.check_output(path, stores.GRID, overwrite=overwrite)
    with stores.assembled(path, stores.GRID, overwrite=overwrite,
                          finish=complete_grid_store) as tmp:
        ds, encoding = grid_dataset(axes, wave, flux, cont=cont, exists=exists,
                                    flux_unit=flux_unit, attrs=attrs)
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
    return Path(path)


def open_grid(path: str | Path) -> xr.Dataset:
    """Open a grid store lazily (nothing but metadata and the small mask is read).

    Raises :class:`SpecdenoiseError` with one line when the path is missing, is not a grid
    store, or was never completed (an interrupted build or import).
    """
    path = Path(path)
    if not path.exists():
        if partial_path(path).exists():
            raise SpecdenoiseError(
                f"grid {path} was never completed (found {partial_path(path).name}); "
                "re-run the build or import"
            )
        raise SpecdenoiseError(f"grid store {path} does not exist")
    return stores.open_store(path, stores.GRID,
                             incomplete=f"grid {path} is incomplete; re-run the build or import")


def grid_axes(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """The parameter axes of a grid, in storage order: name -> node values."""
    return {n: np.asarray(ds[n].values, dtype=np.float64) for n in ds["flux"].dims[:-1]}


def grid_settings(ds: xr.Dataset, key: str = "settings") -> dict:
    """A JSON-encoded attribute decoded back to a dict (empty when absent)."""
    raw = ds.attrs.get(key)
    return json.loads(raw) if isinstance(raw, str) and raw.startswith("{") else {}


# --------------------------------------------------------------------------- fast node reads

#: the byte-to-byte codecs a node chunk may carry (their frames describe themselves, so the
#: numcodecs decoder needs none of the codec's configuration), optionally followed by crc32c
_BYTES_CODECS = ("blosc", "zstd", "gzip")


def _bytes_decoder(name: str):
    import numcodecs

    return {"blosc": numcodecs.Blosc, "zstd": numcodecs.Zstd, "gzip": numcodecs.GZip}[name]()


class NodeReader:
    """Read whole node spectra of a local grid array straight from its chunk files.

    Through zarr, every chunk read costs about 0.5-1 ms of Python and asyncio machinery, so a
    worker loading the built-in grid (10,472 one-node chunks) spent 7-9 s in zarr and 1 s
    decompressing. This reader handles exactly the layout the grid writers here produce --
    Zarr v3 on a local directory, a regular chunk grid of one node by the whole wavelength
    axis, little-endian ``bytes`` then at most one of blosc/zstd/gzip, default chunk keys --
    and :meth:`open` returns None for anything else (sharded, transposed, remote, other
    codecs), in which case callers read through zarr. A chunk file that is absent reads as
    the array's fill value, as in zarr.
    """

    def __init__(self, array_dir: Path, shape: tuple[int, ...], dtype: np.dtype, decoder,
                 separator: str, fill_value: float):
        self.array_dir = array_dir
        self.node_shape = shape[:-1]
        self.n_wave = shape[-1]
        self.dtype = dtype
        self.decoder = decoder
        self.separator = separator
        self.fill_value = fill_value
        self.checksum = False  # chunks end with a crc32c of the bytes before it
        self.blosc = False  # the inner codec is blosc: its frame length is checked first

    @classmethod
    def open(cls, array_dir: str | Path) -> NodeReader | None:
        array_dir = Path(array_dir)
        try:
            meta = json.loads((array_dir / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        shape = tuple(meta.get("shape", ()))
        grid = meta.get("chunk_grid", {})
        keys = meta.get("chunk_key_encoding", {})
        chain = meta.get("codecs", [])
        names = [c.get("name") for c in chain]
        checksum = names[-1:] == ["crc32c"] and len(names) > 1
        inner = names[1:-1] if checksum else names[1:]
        if (
            meta.get("zarr_format") != 3
            or meta.get("node_type") != "array"
            or meta.get("storage_transformers")
            or meta.get("data_type") not in ("float32", "float64")
            or len(shape) < 2
            or grid.get("name") != "regular"
            or tuple(grid.get("configuration", {}).get("chunk_shape", ()))
            != (*(1,) * (len(shape) - 1), shape[-1])
            or keys.get("name") != "default"
            or not names
            or names[0] != "bytes"
            or chain[0].get("configuration", {}).get("endian", "little") != "little"
            or len(inner) > 1
            or (inner and inner[0] not in _BYTES_CODECS)
        ):
            return None
        try:  # numbers, "NaN" and "Infinity" here; hex-encoded bit patterns go through zarr
            fill = float(meta.get("fill_value"))
        except (TypeError, ValueError):
            return None
        decoder = _bytes_decoder(inner[0]) if inner else None
        separator = keys.get("configuration", {}).get("separator", "/")
        reader = cls(array_dir, shape, np.dtype("<" + {"float32": "f4", "float64": "f8"}[
            meta["data_type"]]), decoder, separator, fill)
        reader.checksum = checksum
        reader.blosc = inner == ["blosc"]
        return reader

    def _chunk_path(self, index: tuple[int, ...]) -> Path:
        key = self.separator.join(("c", *map(str, index), "0"))
        return self.array_dir / key

    def read(self, flat: np.ndarray) -> np.ndarray:
        """(len(flat), n_wave) float32 spectra of the given flat node indices."""
        flat = np.asarray(flat, dtype=np.int64).reshape(-1)
        out = np.empty((flat.size, self.n_wave), dtype=np.float32)
        multi = np.stack(np.unravel_index(flat, self.node_shape), axis=1) if flat.size else ()
        for j, idx in enumerate(multi):
            path = self._chunk_path(tuple(int(i) for i in idx))
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                out[j] = self.fill_value
                continue
            out[j] = self._decode(raw, int(flat[j]))
        return out

    def _corrupt(self, number: int, why: str) -> SpecdenoiseError:
        return codecs.corrupt(self.array_dir.parent, self.array_dir.name, number, why,
                              "the grid store is damaged: rebuild or re-import it")

    def _decode(self, raw: bytes, number: int) -> np.ndarray:
        """One node's values from its chunk file's bytes; a one-line error if they are bad."""
        if self.checksum:
            import google_crc32c  # zarr's own dependency for the crc32c codec

            body, stored = raw[:-4], raw[-4:]
            if len(raw) < 4 or np.uint32(google_crc32c.value(body)).tobytes() != stored:
                raise self._corrupt(number, "checksum mismatch")
            raw = body
        if self.blosc and not codecs.blosc_frame_ok(raw):
            # a decoder given a truncated blosc frame may read past its end
            raise self._corrupt(number, "blosc frame length does not match")
        try:
            if self.decoder is not None:
                raw = self.decoder.decode(raw)
            values = np.frombuffer(raw, dtype=self.dtype)
        except Exception as exc:  # numcodecs raises RuntimeError/ValueError on bad frames
            raise self._corrupt(number, f"cannot be decoded: {exc}") from None
        if values.size != self.n_wave:
            raise self._corrupt(number, f"holds {values.size} values, expected {self.n_wave}")
        return values
