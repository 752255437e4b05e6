"""The user cache folder, and Numba's on-disk kernel cache inside it.

Everything specdenoise can rebuild (the built-in grid, compiled Numba kernels) lives under
``<cache>/specdenoise/`` with ``<cache>`` = ``$SPECDENOISE_CACHE``, else ``$XDG_CACHE_HOME``,
else ``~/.cache``. Nothing is ever written inside the installed package: pip does not know such
files, so ``pip uninstall`` (and ``pip install -e .`` over ``pip install .``) would leave them
behind as a stray ``site-packages/specdenoise/`` folder that shadows the next installation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    """``$SPECDENOISE_CACHE``, else ``$XDG_CACHE_HOME``, else ``~/.cache``."""
    for var in ("SPECDENOISE_CACHE", "XDG_CACHE_HOME"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    return Path.home() / ".cache"


def numba_cache_dir() -> Path:
    """Where specdenoise points Numba's cache unless the user chose a place."""
    return cache_dir() / "specdenoise" / "numba"


def point_numba_cache() -> Path:
    """Send the cache of our ``@njit(cache=True)`` kernels to the user cache; returns the folder.

    By default Numba writes ``*.nbi``/``*.nbc`` files into ``__pycache__`` next to the module,
    i.e. inside ``site-packages``. Numba picks a function's cache folder when the function is
    decorated (at import of the kernel module), from ``numba.config.CACHE_DIR``, which it reads
    from ``NUMBA_CACHE_DIR`` when numba is first imported. So this runs when
    :mod:`specdenoise.simulate` is imported, before any kernel module, and

    - respects a ``NUMBA_CACHE_DIR`` the user set, or a ``numba.config.CACHE_DIR`` set in code;
    - otherwise sets ``NUMBA_CACHE_DIR`` (inherited by Dask workers and subprocesses) and, when
      numba was already imported (its configuration already read), ``numba.config.CACHE_DIR``.

    Numba files each cache under a subfolder named after the source folder plus a hash of its
    full path, so several installations share the folder without clashing.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    numba = sys.modules.get("numba")
    config = getattr(numba, "config", None)
    if config is not None and getattr(config, "CACHE_DIR", ""):
        return Path(config.CACHE_DIR)
    path = numba_cache_dir()
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    if config is not None:
        config.CACHE_DIR = str(path)
    return path
