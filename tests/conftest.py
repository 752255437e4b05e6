"""Shared fixtures: the reference-data folder and a small real grid store; the SLURM fixtures
of ``tests/slurm/slurm_support.py`` as a plugin."""

import sys
from pathlib import Path

import numpy as np
import pytest

# the fixtures ``slurm`` and ``reference`` reach every SLURM test module without an import
sys.path.insert(0, str(Path(__file__).resolve().parent / "slurm"))
pytest_plugins = ["slurm_support"]

#: ../shared/data beside the repository (CI has it there); tests needing it skip without it
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} not available")
    return path


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a store (relative path -> bytes)."""
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


def assert_identical(a: Path, b: Path):
    """Two stores are bitwise identical, file by file (metadata included)."""
    fa, fb = store_files(a), store_files(b)
    assert fa.keys() == fb.keys()
    diff = [k for k in fa if fa[k] != fb[k]]
    assert not diff, f"stores differ in {diff[:5]}"


def toy_grid_flux(axes: dict, wave: np.ndarray) -> np.ndarray:
    """Smooth model spectra (Planck continuum x Gaussian absorption lines) for test grids.

    Line depths follow Teff and [M/H] so the grid is not trivially linear.
    """
    h, c, k = 6.62607015e-27, 2.99792458e10, 1.380649e-16
    lam_cm = wave * 1e-7
    mesh = np.meshgrid(*axes.values(), indexing="ij")
    teff, mh = mesh[0][..., None], mesh[2][..., None]
    planck = 1.0 / (lam_cm**5 * (np.exp(h * c / (lam_cm * k * teff)) - 1.0))
    depth = np.zeros(mesh[0].shape + (wave.size,))
    for centre, strength in ((850.04, 0.6), (854.44, 0.7), (866.45, 0.6), (766.7, 0.3),
                             (819.7, 0.25), (777.5, 0.2), (720.0, 0.15), (880.9, 0.2)):
        d = strength * (5000.0 / teff) * 10 ** (0.3 * mh)
        depth = depth + np.minimum(d, 0.9) * np.exp(-0.5 * ((wave - centre) / 0.08) ** 2)
    return (planck * np.clip(1 - depth, 0.05, 1) * 1e-30).astype(np.float32)


def write_small_grid(path: Path) -> Path:
    """A 4-D grid store covering the default parameter ranges at a few nodes, 700-900 nm."""
    from specdenoise.simulate.grids import write_grid

    axes = {
        "teff": np.array([3500.0, 5500.0, 7500.0]),
        "logg": np.array([0.0, 5.0]),
        "m_h": np.array([-2.5, 0.75]),
        "a_m": np.array([-0.25, 0.5]),
    }
    wave = 700.0 * np.exp(np.arange(int(np.log(900 / 700) * 20000) + 1) / 20000.0)
    return write_grid(path, toy_grid_flux(axes, wave), axes, wave,
                      attrs={"source": "test", "resolution": 20000})


@pytest.fixture(scope="session")
def small_grid(tmp_path_factory) -> Path:
    """:func:`write_small_grid`, once per test session."""
    return write_small_grid(tmp_path_factory.mktemp("grid") / "small.zarr")


def sigint_default() -> None:
    """``preexec_fn`` for a child the test will Ctrl-C: SIGINT back to its default, so Python
    raises KeyboardInterrupt in it even when the tests run in the background (a shell starts
    background jobs with SIGINT ignored, the ignore is inherited, and Python keeps it)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (``pytest.mark.usefixtures("one_thread")``): tiny
    tensors gain nothing from threads and suffer from them on a shared machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """:func:`train_tiny_run`, once per test session: (run folder, its training dataset).
    Tests only read it (a test that damages a checkpoint writes its own copy)."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny_run"))


def train_tiny_run(d: Path) -> tuple[Path, Path]:
    """Train a tiny U-Net (depth 2, 4 filters, one epoch, one thread) on 20 small spectra in
    folder ``d``; returns (run folder, its training dataset). Tests that need any trained run
    share this one recipe."""
    import torch
    from test_train_data import make_dataset

    from specdenoise.train import loop

    data = make_dataset(d / "data.zarr", n=20, chunk=8)
    cfg = loop.make_config(data, None, d / "run", model="unet", preset="tiny",
                           model_cfg={"depth": 2, "filters": 4}, epochs=1, batch_size=10,
                           workers=0, device="cpu")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loop.train(cfg)
    finally:
        torch.set_num_threads(n)
    return d / "run", data


#: test modules whose every test is `slow` (seconds to a minute each: real Dask clusters, CLI
#: subprocesses that import the whole package, simulations, training): deselected by the fast
#: subset ``python -m pytest -m "not slow and not slurm"`` (README, "Tests"). A module not
#: listed runs in the fast subset unless its tests are marked one by one.
SLOW_MODULES = frozenset({
    "test_benchmark_scripts",  # trains the ablation and chain benchmarks
    "test_bitwise",  # two simulations
    "test_cli",  # CLI subprocesses, a Dask scheduler
    "test_codecs",  # a simulation, CLI subprocesses
    "test_evaluate",  # a simulation, template fits, a trained U-Net
    "test_export_info",  # trained runs
    "test_hostile_hpc",  # about 40 CLI subprocesses, signals, locks
    "test_mixed_grids",  # simulations on Dask
    "test_nuisance",  # simulations on Dask
    "test_numba_cache",  # fresh interpreters compiling the kernels
    "test_options",  # CLI subprocesses, training
    "test_pfsio",  # a trained U-Net
    "test_progress",  # CLI subprocesses
    "test_readme",  # the README's commands
    "test_safety",  # about 50 CLI runs, training
    "test_simulate_stage",  # Dask clusters, interrupted simulations
    "test_threads",  # subprocesses timing thread use
    "test_train_infer", "test_train_loop", "test_train_options", "test_train_physics",
    "test_uncertainty",  # training
})


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Mark the slow modules' tests ``slow``. The SLURM tests share one set of daemons on
    fixed ports (``tests/slurm/``): under pytest-xdist (``-n``, ``--dist loadgroup``) they all
    run on one worker, one after another."""
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slurm") or item.path.parent.name == "slurm":
            item.add_marker(pytest.mark.xdist_group("slurm"))
