"""Stores on disk: Zarr v3 specification codecs only, checksummed chunks, older stores still read.

Each corruption test first damages a real store the way a disk or a copy does (a chunk file cut
short, one flipped byte) and then checks that every reader -- training, evaluation, denoising,
the grid's direct node reader -- ends with ``corrupt chunk N of VAR in STORE`` instead of a crash,
a traceback or silently different numbers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import simulate_in_process

from specdenoise import SpecdenoiseError, codecs, schema
from specdenoise.train import data as tdata

N, CHUNK = 40, 10
SPEC_CODECS = {"bytes", "blosc", "zstd", "crc32c"}


@pytest.fixture(scope="module")
def new_store(small_grid, tmp_path_factory) -> Path:
    """A dataset simulated by the real chain with the default codecs (zstd-bitround)."""

    from specdenoise.config import load_config

    out = tmp_path_factory.mktemp("codecs") / "new.zarr"
    cfg = load_config(n=N, chunk_size=CHUNK, seed=4, grid=str(small_grid), out=str(out))
    simulate_in_process(cfg)
    return out


def write_old_way(src: Path, dst: Path, cname: str = "zstd") -> Path:
    """The same dataset written as specdenoise did before: numcodecs bit rounding as a filter,
    blosc without a checksum, zarr's default codec elsewhere."""
    from zarr.codecs.numcodecs import BitRound

    ds = xr.open_zarr(src).load()
    for v in ds.variables.values():
        v.encoding = {}
        v.attrs.pop(codecs.KEEPBITS_ATTR, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the numcodecs warning these stores were written with
        blosc = zarr.codecs.BloscCodec(cname=cname, clevel=1, shuffle="bitshuffle")
        enc = {v: {"chunks": (CHUNK, 4096), "compressors": [blosc],
                   "filters": [BitRound(keepbits=13)]} for v in ("flux", "flux_clean", "sigma")}
        enc["mask"] = {"chunks": (CHUNK, 4096), "compressors": [blosc]}
        for k in schema.per_spectrum_names():
            enc[k] = {"chunks": (CHUNK,)}
        ds.to_zarr(dst, mode="w", zarr_format=3, consolidated=True, encoding=enc)
    (dst / ".done").mkdir()  # its chunk markers, kept inside the store then
    for c in range(-(-N // CHUNK)):
        (dst / ".done" / f"{c:08d}").touch()
    return dst


def chunk_file(store: Path, var: str, chunk: int) -> Path:
    path = store / var / "c" / str(chunk) / "0"
    assert path.is_file(), path
    return path


def truncate(path: Path, keep: int | None = None) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2 if keep is None else keep])


def flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x20
    path.write_bytes(bytes(raw))


def damaged_copy(store: Path, tmp_path: Path, var: str, chunk: int, how) -> Path:
    copy = tmp_path / store.name
    shutil.copytree(store, copy)
    how(chunk_file(copy, var, chunk))
    return copy


# --------------------------------------------------------------------------- writing


def test_bitround_matches_numcodecs_and_keeps_non_finite():
    x = np.random.default_rng(0).normal(0.5, 0.3, 50_000).astype(np.float32)
    x[:4] = [np.nan, np.inf, -np.inf, 0.0]
    for keepbits in (0, 7, 13, 22, 23):
        ours = codecs.bitround(x, keepbits)
        ref = numcodecs.BitRound(keepbits).encode(x).view(np.float32)
        fin = np.isfinite(x)
        np.testing.assert_array_equal(ours[fin].view(np.uint32), ref[fin].view(np.uint32))
        np.testing.assert_array_equal(ours[:3], x[:3])
    r = codecs.bitround(x[4:], 13)
    assert np.max(np.abs(r - x[4:]) / np.abs(x[4:])) <= 2.0**-14
    with pytest.raises(SpecdenoiseError, match="keepbits"):
        codecs.bitround(x, 24)


def _array_codecs(store: Path) -> dict[str, list[str]]:
    out = {}
    for meta in store.rglob("zarr.json"):
        m = json.loads(meta.read_text())
        if m.get("node_type") == "array":
            out[meta.parent.relative_to(store).as_posix()] = [c["name"] for c in m["codecs"]]
    return out


def test_new_dataset_uses_spec_codecs_with_checksums(new_store):
    found = _array_codecs(new_store)
    assert {"flux", "flux_clean", "sigma", "mask", "wave", "teff", "snr"} <= set(found)
    for name, chain in found.items():
        assert set(chain) <= SPEC_CODECS, (name, chain)
        assert chain[-1] == "crc32c", (name, chain)
    g = zarr.open_group(str(new_store), mode="r")
    assert g["flux"].attrs[codecs.KEEPBITS_ATTR] == 13
    # rounded before encoding: the 10 dropped mantissa bits are zero
    bits = np.asarray(g["flux"][:]).view(np.uint32)
    assert not np.any(bits & np.uint32(0x3FF))


def test_new_grid_uses_spec_codecs_with_checksums(small_grid):
    for name, chain in _array_codecs(small_grid).items():
        assert set(chain) <= SPEC_CODECS, (name, chain)
        assert chain[-1] == "crc32c", (name, chain)


def test_fresh_store_opens_in_plain_xarray_without_any_warning(new_store, small_grid):
    """No 'Numcodecs codecs are not in the Zarr version 3 specification' (nor any other)
    warning, in an interpreter that never imported specdenoise and turns warnings into errors."""
    script = ("import sys, xarray as xr\n"
              "for p in sys.argv[1:]:\n"
              "    ds = xr.open_zarr(p)\n"
              "    ds.load()\n"
              "print('ok')\n")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", script, str(new_store),
                           str(small_grid)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# --------------------------------------------------------------------------- older stores


def test_older_store_still_reads(new_store, tmp_path):
    old = write_old_way(new_store, tmp_path / "old.zarr")
    chains = _array_codecs(old)
    assert "numcodecs.bitround" in chains["flux"] and "crc32c" not in chains["flux"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numcodecs warning through our readers either
        a, b = schema.open_dataset(new_store), schema.open_dataset(old)
        for v in ("flux", "flux_clean", "sigma", "snr"):
            np.testing.assert_array_equal(a[v].values, b[v].values)
        info = tdata.inspect_store(old, tdata.VAL_VARS)
        got = tdata.read_chunk(tdata.open_group(old), info, 2, tdata.VAL_VARS)
        # the checks evaluate and denoise run first (lost chunks, a store's layout)
        from specdenoise import stores
        from specdenoise.evaluate.cube import check_dataset_chunks

        check_dataset_chunks(old)
        stores.check_replaceable(old, stores.DATASET)
    np.testing.assert_array_equal(got["flux"], a["flux"].values[20:30])


# --------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("how", [truncate, flip_byte], ids=["truncated", "flipped"])
def test_training_reader_names_the_corrupt_chunk(new_store, tmp_path, how):
    bad = damaged_copy(new_store, tmp_path, "flux_clean", 1, how)
    info = tdata.inspect_store(bad, tdata.TRAIN_VARS)
    group = tdata.open_group(bad)
    tdata.read_chunk(group, info, 0, tdata.TRAIN_VARS)  # other chunks still read
    with pytest.raises(SpecdenoiseError, match=rf"^corrupt chunk 1 of flux_clean in {bad}"):
        tdata.read_chunk(group, info, 1, tdata.TRAIN_VARS)


def _cli(argv: list[str]) -> subprocess.CompletedProcess:
    """The real command in its own process: a decoder crash would show as a signal here."""
    return subprocess.run([sys.executable, "-m", "specdenoise.cli", *argv], capture_output=True,
                          text=True, timeout=600)


def _one_line_error(proc, pattern: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and re.search(pattern, lines[0]), proc.stderr


@pytest.mark.parametrize("how", [truncate, flip_byte], ids=["truncated", "flipped"])
def test_denoise_cli_refuses_a_corrupt_chunk_and_leaves_nothing(run, new_store,
                                                                tmp_path, how):
    bad = damaged_copy(new_store, tmp_path, "flux", 2, how)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _cli(["denoise", "--run", str(run[0]), "--data", str(bad), "--out",
                 str(out_dir / "den.zarr"), "--device", "cpu"])
    _one_line_error(proc, r"^specdenoise denoise: error: corrupt chunk 2 of flux in ")
    assert list(out_dir.iterdir()) == [], "a (hidden) temporary store was left behind"


@pytest.mark.parametrize("var,chunk", [("sigma", 3), ("teff", 2)])
def test_evaluate_cli_refuses_a_corrupt_chunk(new_store, tmp_path, var, chunk):
    copy = tmp_path / new_store.name
    shutil.copytree(new_store, copy)
    path = copy / var / "c" / str(chunk)
    flip_byte(path / "0" if path.is_dir() else path)
    proc = _cli(["evaluate", "--data", str(copy), "--baselines", "none", "--out",
                 str(tmp_path / "eval")])
    _one_line_error(proc, rf"^specdenoise evaluate: error: corrupt chunk {chunk} of {var} in ")
    assert not any((tmp_path / "eval").glob(".*"))


@pytest.mark.parametrize("cname,keep", [("zstd", None), ("lz4", -1), ("lz4", 100)])
def test_older_store_truncated_chunk_is_refused_not_decoded(run, new_store,
                                                            tmp_path, cname, keep):
    """Without a checksum a truncated blosc frame went to the decompressor, which may read past
    its end (lz4 cut by one byte decoded 'fine'; SIGSEGV in the issue). Its length is checked
    against the frame header before any decoding."""
    old = write_old_way(new_store, tmp_path / "old.zarr", cname=cname)
    path = chunk_file(old, "flux", 1)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2 if keep is None else (keep if keep > 0
                                                                else len(raw) + keep)])
    with pytest.raises(SpecdenoiseError, match=rf"^corrupt chunk 1 of flux in {old}"):
        schema.open_dataset(old)
    out = tmp_path / "den.zarr"
    proc = _cli(["denoise", "--run", str(run[0]), "--data", str(old), "--out", str(out),
                 "--device", "cpu"])
    _one_line_error(proc, r"corrupt chunk 1 of flux in ")
    assert not any(tmp_path.glob(".den.zarr*"))


# --------------------------------------------------------------------------- grids


def _old_style_grid(small_grid: Path, dst: Path) -> Path:
    """A grid store written before checksums: blosc only."""
    shutil.copytree(small_grid, dst)
    for meta_path in (dst / "flux" / "zarr.json",):
        meta = json.loads(meta_path.read_text())
        meta["codecs"] = [c for c in meta["codecs"] if c["name"] != "crc32c"]
        meta_path.write_text(json.dumps(meta))
    for f in (dst / "flux" / "c").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[:-4])  # the crc32c is the last 4 bytes
    zarr.consolidate_metadata(str(dst))
    return dst


# an older grid (no checksum) with a flipped byte may decode to other numbers without a word:
# that is what the checksum of new stores is for
@pytest.mark.parametrize("old,how", [(False, truncate), (False, flip_byte), (True, truncate)],
                         ids=["checksummed-truncated", "checksummed-flipped", "older-truncated"])
def test_grid_node_reader_names_the_corrupt_chunk(small_grid, tmp_path, how, old):
    from specdenoise.simulate.grids import NodeReader
    from specdenoise.simulate.interp import GridInterpolator

    grid = tmp_path / "grid.zarr"
    if old:
        _old_style_grid(small_grid, grid)
    else:
        shutil.copytree(small_grid, grid)
    reader = NodeReader.open(grid / "flux")
    assert reader is not None and reader.checksum is (not old)
    clean = reader.read(np.arange(24))
    node = 5  # flat node index 5 of (3, 2, 2, 2): chunk (0, 1, 0, 1, 0)
    how(grid / "flux" / "c" / "0" / "1" / "0" / "1" / "0")
    with pytest.raises(SpecdenoiseError, match=rf"^corrupt chunk {node} of flux in {grid}"):
        reader.read(np.array([node]))
    np.testing.assert_array_equal(reader.read(np.array([4]))[0], clean[4])
    interp = GridInterpolator(grid, load=True)
    with pytest.raises(SpecdenoiseError, match=f"corrupt chunk {node} of flux"):
        interp([[5000.0, 2.0, 0.0, 0.0]])
