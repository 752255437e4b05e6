"""Store kinds and the one guarded way to create, open and publish them (contracts layer).

specdenoise writes five kinds of xarray-on-Zarr store. Each carries its kind in the attribute
``specdenoise_kind`` and ``complete = True`` once finished:

==============  ============================  ================================================
kind            written by                    arrays that a store of the kind always holds
==============  ============================  ================================================
grid            ``grid build`` / ``import``   ``flux``, ``exists``
dataset         ``simulate``                  ``flux``, ``flux_clean``, ``sigma``
ETC table       ``etc import``                ``sky_rate``, ``variance``
error cube      ``evaluate``                  ``rel_err``
denoised        ``denoise --data``            ``flux_denoised``
==============  ============================  ================================================

(ETC tables written before this module carry their kind in ``kind`` and no ``complete``
attribute; they are still read.)

Every write of an output goes through this module:

- :func:`check_output` decides whether ``out`` may be written: a path that does not exist, or,
  with ``--overwrite``, a store *of the expected kind* (kind attribute and layout checked). It
  never lets a stage replace a folder holding anything else, its own input or a folder
  containing that input, the working directory or one of its parents.
- :func:`locked` holds ``.<name>.lock`` beside the output while it is written: a second writer
  is refused while the first lives; a lock left by a process that died is reclaimed.
- :func:`assembled` (a context manager) assembles a store in a unique temporary folder beside
  ``out`` and :func:`publish` es it when the block ends; :func:`write_file` does the same for a
  plain file. Temporaries are created with ``O_EXCL`` or ``mkdir`` (never followed through a
  symbolic link) and removed whatever happens; the previous store, if any, is removed only
  after the rename.
- :func:`chunk_markers` is where a dataset being simulated records its finished chunks: a
  folder *beside* the store (``.<name>.done``), not inside it, so the store holds Zarr nodes
  only (stores written before kept them in ``<store>/.done``; they are still read).
- :func:`open_store` opens a store after checking its kind and completeness;
  :func:`check_chunks` refuses a store whose arrays lost chunk files.

Imports only numpy, zarr and xarray (and the standard library).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import xarray as xr
import zarr

from specdenoise.codecs import quiet_legacy
from specdenoise.errors import SpecdenoiseError

KIND_ATTR = "specdenoise_kind"
#: attribute under which ETC tables written before this module recorded their kind
LEGACY_KIND_ATTR = "kind"


@dataclass(frozen=True)
class Kind:
    """One store kind: its attribute value, words for messages and the arrays it holds."""

    name: str
    label: str
    arrays: tuple[str, ...]
    redo: str  # what to do about an incomplete store of this kind
    #: extra top-level entries a store of this kind may hold besides Zarr nodes
    extra_entries: tuple[str, ...] = ()


GRID = Kind("specdenoise-grid", "grid store", ("flux", "exists"),
            "re-run the build or import")
DATASET = Kind("specdenoise-dataset", "dataset", ("flux", "flux_clean", "sigma"),
               "re-run with --resume", extra_entries=(".done",))  # stores written before
               # chunk_markers() moved the markers out of the store
ETC_TABLE = Kind("specdenoise-etc-table", "ETC table", ("sky_rate", "variance"),
                 "import it again")
CUBE = Kind("specdenoise-error-cube", "error cube", ("rel_err",), "run the evaluation again")
DENOISED = Kind("specdenoise-denoised", "denoised store", ("flux_denoised",),
                "run denoise again")
#: the evaluation summary (a DataTree); older ones carry no kind attribute
SUMMARY = Kind("specdenoise-summary", "evaluation summary", (), "run the evaluation again")
KINDS = {k.name: k for k in (GRID, DATASET, ETC_TABLE, CUBE, DENOISED, SUMMARY)}

#: the file in a training run directory that holds its checkpoint (written by ``train`` after
#: every epoch; its presence is what makes ``run`` and a batch job script pass ``--resume``)
CHECKPOINT_NAME = "checkpoint.pt"


# --------------------------------------------------------------------------- reading


def read_attrs(path: str | Path) -> dict | None:
    """The root attributes of a Zarr store, or None when ``path`` is not a readable Zarr group."""
    try:
        with quiet_legacy():
            return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # zarr raises many types for a folder that is not a store
        return None


def kind_of(attrs: dict | None) -> str | None:
    """The store kind recorded in ``attrs`` (the legacy ETC-table attribute included)."""
    if not attrs:
        return None
    kind = attrs.get(KIND_ATTR)
    if kind is None and attrs.get(LEGACY_KIND_ATTR) == ETC_TABLE.name:
        return ETC_TABLE.name
    return kind


def is_complete(attrs: dict) -> bool:
    """Finished stores say ``complete = True``; legacy ETC tables were only ever renamed in
    when finished and carry no such attribute."""
    if KIND_ATTR not in attrs and attrs.get(LEGACY_KIND_ATTR) == ETC_TABLE.name:
        return True
    return bool(attrs.get("complete", False))


def check_attrs(attrs: dict, path, kind: Kind, *, not_kind: str | None = None,
                incomplete: str | None = None) -> None:
    """Refuse attributes that are not those of a complete store of ``kind``."""
    if kind_of(attrs) != kind.name:
        raise SpecdenoiseError(not_kind or f"{path} is not a specdenoise {kind.label}")
    if not is_complete(attrs):
        raise SpecdenoiseError(incomplete or f"{kind.label} {path} is incomplete; {kind.redo}")


def open_store(path: str | Path, kind: Kind, *, not_kind: str | None = None,
               incomplete: str | None = None, missing: str | None = None,
               consolidated: bool | None = True) -> xr.Dataset:
    """Open a store of ``kind`` lazily after checking its kind and completeness attributes.

    The attributes are read first with zarr, so an interrupted (never consolidated) store is
    reported as incomplete rather than opened. ``not_kind``, ``incomplete`` and ``missing`` are
    the messages for a foreign store, an unfinished one and an absent path (defaults name the
    kind). Raises :class:`SpecdenoiseError` with one line.
    """
    path = Path(path)
    if not path.exists():
        raise SpecdenoiseError(missing or f"{kind.label} {path} does not exist")
    try:
        with quiet_legacy():
            attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as exc:
        raise SpecdenoiseError(f"cannot open {kind.label} {path}: {exc}".splitlines()[0]) from None
    check_attrs(attrs, path, kind, not_kind=not_kind, incomplete=incomplete)
    try:
        with quiet_legacy():
            return xr.open_zarr(path, consolidated=consolidated)
    except Exception as exc:
        raise SpecdenoiseError(f"cannot open {kind.label} {path}: {exc}".splitlines()[0]) from None


def missing_chunks(group: zarr.Group, name: str) -> int:
    """How many chunks of array ``name`` have no chunk object in the store."""
    arr = group[name]
    return int(arr.nchunks) - int(arr.nchunks_initialized)


def check_chunks(path: str | Path, names: Iterable[str], *, optional: Iterable[str] = (),
                 label: str = "dataset") -> None:
    """Refuse a store in which any of ``names`` lost chunk files.

    A missing chunk reads as the fill value, so a store with a lost file would quietly give
    NaN or zero spectra. ``optional`` arrays are checked only when at least one of their
    chunks was written (a coordinate a writer never filled is absent, not damaged). Arrays
    whose chunks may legitimately be absent because they hold only the fill value (``mask``)
    must not be named.
    """
    with quiet_legacy():  # older stores' numcodecs codecs: read without a warning per array
        _check_chunks(path, names, optional, label)


def _check_chunks(path, names, optional, label) -> None:
    try:
        g = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise SpecdenoiseError(f"cannot open {label} {path}: {exc}".splitlines()[0]) from None
    members = set(g.array_keys())
    for name in names:
        if name in members and missing_chunks(g, name):
            n = missing_chunks(g, name)
            raise SpecdenoiseError(
                f"{label} {path}: {n} of {g[name].nchunks} chunk(s) of {name} are missing "
                "from the store (deleted or never copied); re-create or re-copy it")
    for name in optional:
        if name in members and 0 < g[name].nchunks_initialized < g[name].nchunks:
            n = missing_chunks(g, name)
            raise SpecdenoiseError(
                f"{label} {path}: {n} of {g[name].nchunks} chunk(s) of {name} are missing "
                "from the store (deleted or never copied); re-create or re-copy it")


def regular_file(path: str | Path, what: str, *, max_bytes: int) -> Path:
    """Refuse anything but a regular file of at most ``max_bytes`` as the input ``what`` (a
    folder, a device such as /dev/zero, a FIFO or socket would hang a reader or feed it
    without end); returns the path."""
    import stat

    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SpecdenoiseError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise SpecdenoiseError(f"cannot read {what} {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SpecdenoiseError(f"{what} {path} is a folder; give a file")
    if not stat.S_ISREG(st.st_mode):
        raise SpecdenoiseError(f"{what} {path} is not a regular file (a device, FIFO or "
                               "socket); give a file")
    if st.st_size > max_bytes:
        raise SpecdenoiseError(f"{what} {path} is {st.st_size:,} bytes, more than any "
                               f"{what} should be ({max_bytes:,}); is it the right file?")
    return path


def read_text(path: str | Path, what: str, *, max_bytes: int = 1 << 20) -> str:
    """The text of a small input file (a config, a profile), refused when it is not a regular
    file of at most ``max_bytes`` (:func:`regular_file`) or not UTF-8 text."""
    path = regular_file(path, what, max_bytes=max_bytes)
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise SpecdenoiseError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise SpecdenoiseError(f"{what} {path} is larger than {max_bytes:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecdenoiseError(f"{what} {path} is not text (UTF-8)") from None


# --------------------------------------------------------------------------- checking outputs


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path


def refuse_unsafe_target(out: str | Path, inputs: Iterable[str | Path] = (), *,
                         outputs_folder: bool = False) -> None:
    """Refuse an output that is the working directory, a parent of it, the home or root
    folder, an input, a folder holding an input, or a path inside an input.

    ``outputs_folder``: ``out`` is a folder that receives named outputs and is never deleted
    as a whole (``evaluate --out``); it may be the working directory or hold an input.
    """
    out_abs = _real(_resolved(out))
    cwd = _real(Path.cwd())
    if not outputs_folder and (out_abs == cwd or out_abs in cwd.parents):
        raise SpecdenoiseError(f"refusing to write to {out}: it is the working directory or a "
                               "folder above it; name a new path such as OUT.zarr")
    if not outputs_folder and out_abs in (_real(Path.home()), Path(out_abs.anchor)):
        raise SpecdenoiseError(f"refusing to write to {out}: it is the home or root folder")
    for inp in inputs:
        if inp is None or "://" in str(inp):
            continue
        in_abs = _real(_resolved(inp))
        if out_abs == in_abs:
            raise SpecdenoiseError(f"--out {out} is the input {inp}; write to another path")
        if out_abs in in_abs.parents and not outputs_folder:
            raise SpecdenoiseError(f"--out {out} holds the input {inp}; write to another path")
        if in_abs in out_abs.parents and (in_abs / "zarr.json").exists():
            raise SpecdenoiseError(f"--out {out} lies inside the input {inp}; write to another "
                                   "path")


def _zarr_layout_problem(path: Path, kind: Kind) -> str | None:
    """Why the folder ``path`` is not laid out as a Zarr store of ``kind`` (None if it is)."""
    allowed = {"zarr.json", *kind.extra_entries}
    for entry in sorted(os.listdir(path)):
        p = path / entry
        if entry in allowed:
            continue
        if p.is_dir() and not p.is_symlink() and (p / "zarr.json").is_file():
            continue
        return f"it holds {entry!r}, which is not part of a {kind.label}"
    try:
        with quiet_legacy():
            members = set(zarr.open_group(str(path), mode="r").array_keys())
    except Exception:
        return f"it is not a readable {kind.label}"
    lacking = [a for a in kind.arrays if a not in members]
    if lacking:
        return f"it lacks {', '.join(lacking)}, which every {kind.label} holds"
    return None


def check_replaceable(path: str | Path, kind: Kind) -> None:
    """Refuse unless ``path`` is a store of ``kind`` that may be deleted to be replaced."""
    path = Path(path)
    if path.is_symlink():
        raise SpecdenoiseError(f"{path} is a symbolic link; not replaced (remove it yourself)")
    if not path.is_dir():
        raise SpecdenoiseError(f"{path} is not a {kind.label} (it is a file); not replaced "
                               "(choose another --out)")
    attrs = read_attrs(path)
    found = kind_of(attrs)
    unmarked_summary = kind is SUMMARY and attrs is not None and found is None
    if found != kind.name and not unmarked_summary:
        what = (f"a {KINDS[found].label}" if found in KINDS else
                "not a specdenoise store" if attrs is None or found is None else f"a {found}")
        raise SpecdenoiseError(f"--overwrite replaces only a {kind.label}, and {path} is "
                               f"{what}; nothing was deleted (choose another --out)")
    problem = _zarr_layout_problem(path, kind)
    if problem:
        raise SpecdenoiseError(f"--overwrite refused: {path} is marked as a {kind.label} but "
                               f"{problem}; nothing was deleted")


def check_output(out: str | Path, kind: Kind | None, *, overwrite: bool,
                 inputs: Iterable[str | Path] = (), allow_existing: bool = False) -> None:
    """May ``out`` be written as a store of ``kind`` (``None``: a plain file)?

    Refuses unsafe targets (:func:`refuse_unsafe_target`); an existing path without
    ``overwrite`` (unless ``allow_existing``, e.g. for ``--resume``); with ``overwrite``
    anything but a store of ``kind`` (or, for a file, anything but a regular file).
    """
    out = Path(out)
    refuse_unsafe_target(out, inputs)
    if not os.path.lexists(out):
        return
    if kind is None:
        if out.is_dir() and not out.is_symlink():
            raise SpecdenoiseError(f"{out} is a folder; give a file name for --out")
        if not overwrite:
            raise SpecdenoiseError(f"{out} already exists; choose another --out or pass "
                                   "--overwrite to replace it")
        return
    if allow_existing and not overwrite:
        return
    if not overwrite:
        raise SpecdenoiseError(f"{out} already exists; choose another --out or pass "
                               "--overwrite to replace it")
    check_replaceable(out, kind)


def remove_store(path: str | Path, kind: Kind) -> None:
    """Delete an existing store of ``kind`` (checked first); nothing else is ever deleted."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    check_replaceable(path, kind)
    trash = _trash_name(path)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
    remove_chunk_markers(path)


#: what a training run folder holds (``train`` and ``train --submit`` write these; names
#: ".<name>." are their temporaries); ``slurm-*.out`` are batch job logs
RUN_ENTRIES = frozenset({CHECKPOINT_NAME, "config.json", "metrics.csv", "learning_curve.png",
                         "tensorboard", "train.sbatch", "train.pbs", "pbs.out",
                         "uncertainty.json"})  # the last: train/uncertainty.py's calibration


#: what ``train --submit`` leaves in a run folder before the run begins
SUBMIT_ENTRIES = frozenset({"train.sbatch", "train.pbs", "pbs.out"})


def _run_entry(name: str) -> bool:
    """Whether ``name`` is something train or --submit writes (or a temporary of one)."""
    if name.startswith("."):  # a temporary: ".checkpoint.pt.<tag>.tmp" and the like
        return any(name.startswith(f".{e}.") for e in RUN_ENTRIES)
    return name in RUN_ENTRIES or (name.startswith("slurm-") and name.endswith(".out"))


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a training run (its checkpoint, or the config.json train wrote)."""
    path = Path(path)
    if (path / CHECKPOINT_NAME).is_file():
        return True
    try:
        return "train" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_run_folder(out: str | Path, *, inputs: Iterable[str | Path] = (),
                     overwrite: bool = False, resume: bool = False) -> bool:
    """May ``out`` be a training run folder? Refuses the working directory and its parents,
    an input or a folder holding one, a file, a Zarr store, a folder holding anything but a
    training run's files, and an existing run without ``resume`` or ``overwrite`` (which
    replaces only a folder holding nothing but a run's files). Returns whether ``out`` holds
    a run that ``overwrite`` is to replace.
    """
    out = Path(out)
    refuse_unsafe_target(out, inputs)
    if not os.path.lexists(out):
        return False
    if out.is_symlink() or not out.is_dir():
        raise SpecdenoiseError(f"--out {out} is a file or a link, not a run folder; choose "
                               "another --out")
    if (out / "zarr.json").exists():
        raise SpecdenoiseError(f"--out {out} is a Zarr store, not a run folder; choose another "
                               "--out")
    entries = sorted(os.listdir(out))
    if not entries:
        return False
    foreign = [e for e in entries if not _run_entry(e)]
    if foreign:
        raise SpecdenoiseError(f"--out {out} holds {foreign[0]!r}, which is not part of a "
                               "training run; nothing was written (choose a new or empty "
                               "folder)")
    if not is_run_folder(out):
        # a job script and its logs (a submitted run not begun) are fine; a config.json or
        # metrics.csv that no run wrote is the user's
        outputs = [e for e in entries if e in RUN_ENTRIES and e not in SUBMIT_ENTRIES]
        if outputs:
            raise SpecdenoiseError(f"--out {out} holds {outputs[0]!r}, which no training run "
                                   "wrote; nothing was written (choose a new or empty folder)")
        return False
    if resume or not (out / CHECKPOINT_NAME).is_file():
        return False  # (a run stopped before its first epoch: begun again from scratch)
    if not overwrite:
        raise SpecdenoiseError(f"{out} already holds a training run; pass --resume to continue "
                               "it, --overwrite to replace it, or choose another --out")
    return True


def move_aside(path: str | Path) -> Path:
    """Rename ``path`` to a hidden unique name beside it (to be deleted once its replacement
    exists, or put back); returns the new name."""
    path = Path(path)
    trash = _trash_name(path)
    os.rename(path, trash)
    return trash


# --------------------------------------------------------------------------- temporaries


def _trash_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")


def temp_dir(out: str | Path) -> Path:
    """A new, empty, uniquely named folder beside ``out`` to assemble it in (``mkdir`` never
    follows a symbolic link, and the name is new)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # mode 0777 less the umask, as for any folder the user makes (mkdtemp would make it 0700)
    return _create_unique(out.parent / f".{out.name}.tmp-{{}}", lambda p: p.mkdir(0o777))


@contextlib.contextmanager
def assembled(out: str | Path, kind: Kind, *, overwrite: bool,
              finish: Callable[[Path], object] | None = None) -> Iterator[Path]:
    """Assemble the store ``out`` of ``kind`` in a new temporary folder beside it, then
    publish it.

    Yields the empty temporary folder (:func:`temp_dir`). When the block ends normally,
    ``finish(tmp)`` completes the store (marks it complete, consolidates, checks) and
    :func:`publish` renames it to ``out`` (replacing a store of ``kind`` only with
    ``overwrite``). The temporary is removed whatever happens, so an error or an interrupt
    leaves ``out`` as it was and nothing half-written beside it.
    """
    tmp = temp_dir(out)
    try:
        yield tmp
        if finish is not None:
            finish(tmp)
        publish(tmp, out, kind, overwrite=overwrite)
    except BaseException:
        # an interrupt (SIGINT/SIGTERM) can stop the main thread while zarr's IO thread still
        # writes chunks of the block's last assignment; they would recreate folders inside the
        # temporary after it is removed, so wait for them first
        settle_zarr_io()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def settle_zarr_io(timeout: float = 30.0) -> None:
    """Wait (at most ``timeout`` seconds) until zarr's IO thread has no write in flight.

    zarr 3 runs its store operations as tasks on an event loop in a thread of its own; when
    the main thread is interrupted while it waits for one, the task runs on. Nothing to do
    when zarr has not started that loop (or keeps it elsewhere in another version).
    """
    import asyncio

    try:
        from zarr.core import sync as zsync
        loop = zsync.loop[0]
    except (ImportError, AttributeError, IndexError, TypeError):
        return
    if loop is None or not loop.is_running() or loop.is_closed():
        return

    async def _others() -> None:
        me = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not me]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    try:
        asyncio.run_coroutine_threadsafe(_others(), loop).result(timeout + 1)
    except Exception:  # noqa: BLE001 - clean-up on an error path: never mask the first error
        pass


def chunk_markers(store: str | Path) -> Path:
    """The folder beside a dataset ``store`` in which its finished chunks are recorded while
    it is written (``.<name>.done``; an empty file per chunk)."""
    store = Path(store)
    return store.with_name(f".{store.name}.done")


#: where stores written before :func:`chunk_markers` kept their chunk markers (inside)
LEGACY_MARKERS = ".done"


def remove_chunk_markers(store: str | Path) -> None:
    """Delete the chunk markers of ``store`` (beside it, and inside it for an old store)."""
    shutil.rmtree(chunk_markers(store), ignore_errors=True)
    shutil.rmtree(Path(store) / LEGACY_MARKERS, ignore_errors=True)


def publish(tmp: str | Path, out: str | Path, kind: Kind, *, overwrite: bool) -> Path:
    """Rename the finished store ``tmp`` to ``out``.

    An existing ``out`` is replaced only with ``overwrite`` and only when it is a store of
    ``kind``; it is moved aside first and deleted after the rename, so ``out`` holds the old
    store or the new one at every moment.
    """
    tmp, out = Path(tmp), Path(out)
    if os.path.lexists(out):
        if not overwrite:
            raise SpecdenoiseError(f"{out} already exists; choose another --out or pass "
                                   "--overwrite to replace it")
        check_replaceable(out, kind)
        trash = _trash_name(out)
        os.rename(out, trash)
        os.rename(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, out)
    return out


def _create_unique(pattern: Path, create: Callable[[Path], None]) -> Path:
    """``create(path)`` for ``pattern`` with a new unique tag in its ``{}``, until a name is
    free; ``create`` raises FileExistsError on a taken name (it never follows a symlink)."""
    while True:
        path = pattern.with_name(pattern.name.format(uuid.uuid4().hex[:12]))
        try:
            create(path)
            return path
        except FileExistsError:
            continue


def _new_file(pattern: Path) -> Path:
    """An empty new file named after ``pattern`` (see :func:`_create_unique`): ``O_EXCL`` and
    mode 0666 less the umask, so outputs are as readable as the user's other files
    (``tempfile.mkstemp`` would make them private to the owner)."""
    return _create_unique(pattern, lambda p: os.close(
        os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))


def write_file(out: str | Path, write: Callable[[Path], None], *, overwrite: bool,
               inputs: Iterable[str | Path] = ()) -> Path:
    """Write a plain file through a unique temporary beside it, then rename it into place.

    ``write(tmp_path)`` fills the temporary (created with ``O_EXCL``, so never a symlink).
    An existing ``out`` is replaced only with ``overwrite`` (a symlink there is replaced, its
    target is not written).
    """
    out = Path(out)
    check_output(out, None, overwrite=overwrite, inputs=inputs)
    if not out.parent.is_dir():
        raise SpecdenoiseError(f"cannot write {out}: folder {out.parent} does not exist")
    tmp = _new_file(out.parent / f".{out.name}.{{}}.tmp")
    try:
        write(tmp)
        if not overwrite and os.path.lexists(out):
            raise SpecdenoiseError(f"{out} appeared while it was written; not replaced")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------- locks


def lock_path(out: str | Path) -> Path:
    out = _resolved(out)
    return out.with_name(f".{out.name}.lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _read_lock(path: Path) -> dict | None:
    """The lock's content; None when it is gone or not a lock this module wrote. Raises
    PermissionError when the lock exists but this user may not read it."""
    try:
        data = json.loads(path.read_text())
    except PermissionError:
        raise
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), None when
    unknown: with the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


#: a live writer touches its lock this often (seconds) ...
HEARTBEAT_S = 30.0
#: ... so a lock untouched for this long belongs to a writer that is gone (killed by the batch
#: system on another node, say), whatever its host
STALE_AFTER_S = 600.0


def _untouched(path: Path | None) -> bool:
    """Whether nobody touched the lock at ``path`` for :data:`STALE_AFTER_S` seconds."""
    if path is None:
        return False
    try:
        return time.time() - path.stat().st_mtime > STALE_AFTER_S
    except OSError:
        return True


def _stale(holder: dict | None, path: Path | None = None) -> bool:
    """Whether a lock's writer is gone.

    On this host the writer's pid decides (and its start time, where recorded, so that a
    reused pid is not taken for the writer): a live writer keeps its lock however long it was
    stopped (``SIGSTOP``, a suspended job), a dead one loses it at once. On another host only
    the heartbeat tells: a lock untouched for :data:`STALE_AFTER_S` seconds is stale. A lock
    that does not hold this module's content is judged by its age alone.
    """
    if holder is None:
        return _untouched(path)
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname():
        return _untouched(path)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not _alive(pid):
        return True
    started = holder.get("pid_start")
    return started is not None and _process_start(pid) not in (None, started)


class _Heartbeat(threading.Thread):
    """Touch the lock file every :data:`HEARTBEAT_S` seconds while the writer runs."""

    def __init__(self, path: Path):
        super().__init__(name="specdenoise-lock-heartbeat", daemon=True)
        self.path = path
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)


@contextlib.contextmanager
def locked(out: str | Path) -> Iterator[Path]:
    """Hold the lock of ``out`` while the block runs (refused while another writer lives).

    The lock file (``.<name>.lock`` beside ``out``) holds the writer's pid, host and start
    time; it appears atomically with its content (written to a unique temporary, then hard
    linked to its name, which fails if the name exists), and the writer touches it every
    :data:`HEARTBEAT_S` seconds. A lock whose process no longer runs on this host, or that
    nobody touched for :data:`STALE_AFTER_S` seconds (a writer killed on another node), is
    reclaimed.
    """
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "pid_start": _process_start(os.getpid()),
          "host": socket.gethostname(), "started": time.time(), "token": uuid.uuid4().hex}
    fd, name = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".new", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        for _ in range(5):
            try:
                os.link(name, path)
                break
            except FileExistsError:
                try:
                    holder = _read_lock(path)
                except PermissionError:
                    raise SpecdenoiseError(
                        f"{out} is locked by another user (lock {path}, which you may not "
                        "read); wait for their run to finish, or ask them to remove the lock "
                        "if it is gone") from None
                if not _stale(holder, path):
                    who = (f"process {holder.get('pid')} on {holder.get('host')}"
                           if holder else "another writer")
                    raise SpecdenoiseError(
                        f"{out} is being written by {who} (lock {path}); wait for it to "
                        "finish, or delete the lock file if that process is gone") from None
                _reclaim(path, holder)
        else:
            raise SpecdenoiseError(f"cannot take the lock {path}; try again")
    finally:
        os.unlink(name)
    beat = _Heartbeat(path)
    beat.start()
    try:
        yield path
    finally:
        beat.done.set()
        with contextlib.suppress(PermissionError):
            if (_read_lock(path) or {}).get("token") == me["token"]:
                path.unlink(missing_ok=True)


def _reclaim(path: Path, holder: dict | None) -> None:
    """Move a stale lock aside; if it was replaced by a live one meanwhile, put that back."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:12]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        now = _read_lock(aside)
    except PermissionError:
        now = None
    if now != holder and not _stale(now, aside):
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)
