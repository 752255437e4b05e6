"""specdenoise: simulate Subaru PFS stellar spectra, train denoisers, measure what they recover.

Import map (one namespace, several root folders, see ``pyproject.toml``); the layers and what
each may import are README's "Where things live" (checked by ``tests/test_layers.py``):

- ``specdenoise`` (``pipeline/``): the contracts (``errors``, ``stores``, ``schema``,
  ``codecs``, ``metrics``, ``progress``, ``usercache``), the stages (``stage_*`` with
  ``config``, ``pfsio``, ``resample``, ``submit``) and the CLI (``cli``, ``cli_*``,
  ``options``).
- ``specdenoise.simulate`` (``simulate/``): physics kernels.
- ``specdenoise.train`` (``train/``): PyTorch models and training.
- ``specdenoise.evaluate`` (``evaluate/``): error cubes, baselines, figures, report.
- ``specdenoise.cluster`` (``cluster/``): Dask cluster profiles.
"""

import os
import warnings
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("specdenoise")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from specdenoise.errors import SpecdenoiseError  # noqa: E402

# PyTorch's CPU kernels end every parallel region in an OpenMP barrier. libgomp lets a thread
# that reaches the barrier first spin on its core, so when another process is busy on the other
# core, the spinning thread keeps that core from the thread it waits for, at every barrier:
# training collapsed about tenfold beside one busy process. Threads that sleep at once free the
# core instead (benchmarks/bench_shared_cores.py measures both). libgomp reads the variable when
# it loads, i.e. on ``import torch``: import specdenoise first. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Zarr warns on every consolidated v3 store; consolidation is what makes opening a store one read.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")

__all__ = ["SpecdenoiseError", "__version__"]
