"""Shared fixtures and helpers: the reference-data folder, a small real grid store, small real
datasets (:func:`make_dataset`), a tiny trained run; the SLURM fixtures of
``tests/slurm/slurm_support.py`` as a plugin."""

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


def _pixel_wave():
    from specdenoise.simulate.pfs import pixel_wave

    return pixel_wave()


#: nm, the PFS red arm's pixel grid (4096 pixels)
WAVE = _pixel_wave()


def synthetic_spectra(n: int, seed: int = 0, n_wave: int = 4096):
    """(flux, flux_clean, sigma, snr): continuum + absorption lines, median 0.5, S/N 10-60."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, n_wave)
    pix = np.arange(n_wave)
    clean = np.empty((n, n_wave))
    for i in range(n):
        cont = 1 + rng.uniform(-0.3, 0.3) * x + rng.uniform(-0.1, 0.1) * x**2
        lines = np.zeros(n_wave)
        for c, d, w in zip(rng.uniform(0, n_wave, 25), rng.uniform(0.05, 0.6, 25),
                           rng.uniform(1.2, 4.0, 25), strict=True):
            lines += d * np.exp(-0.5 * ((pix - c) / w) ** 2)
        clean[i] = cont * np.exp(-lines)
    clean *= 0.5 / np.median(clean, axis=1, keepdims=True)
    snr = rng.uniform(10, 60, n)
    sigma = clean / snr[:, None] + 0.002
    flux = clean + sigma * rng.standard_normal(clean.shape)
    return flux.astype(np.float32), clean.astype(np.float32), sigma.astype(np.float32), snr


def make_dataset(path, n: int = 48, chunk: int = 16, seed: int = 0, n_wave: int = 4096,
                 drop: tuple[str, ...] = (), nan_at: int | None = None, calib: bool = True,
                 params: bool = False):
    """Write a complete dataset store at ``path`` and return the path.

    Like a simulated store, the spectra carry a calibration distortion of up to 2 % whose
    coefficients are recorded (``calib_c1..3``; ``calib=False``: an older store without them).
    ``params``: also record logg, [M/H], [alpha/M], RV and E(B-V), drawn at random (the
    spectra do not depend on them; without it those variables are NaN, as never written).
    """
    from specdenoise import schema
    from specdenoise.simulate import calibration as ref
    from specdenoise.simulate import pfs

    wave = (WAVE[:n_wave] if n_wave <= WAVE.size
            else pfs.pixel_wave(n_wave, pfs.RED_MR_LMIN,
                                pfs.RED_MR_LMIN + n_wave * pfs.RED_MR_DLAMBDA))
    names = schema.calib_names(ref.ORDER) if calib else ()
    schema.create_dataset_store(path, n, chunk, wave, attrs={"config_hash": "test"},
                                extra_coords=names)
    flux, clean, sigma, snr = synthetic_spectra(n, seed, n_wave)
    basis = ref.distortion_basis(wave)
    coef, d = ref.scale(*ref.draw(np.random.default_rng(seed + 2), n, ref.ORDER, 0.02), basis)
    if calib:
        flux, clean, sigma = (a * d.astype(np.float32) for a in (flux, clean, sigma))
    if nan_at is not None:
        flux[nan_at, 100] = np.nan
        clean[nan_at, 100] = np.nan
    rng = np.random.default_rng(seed + 1)
    for c in range(-(-n // chunk)):
        sl = slice(c * chunk, min((c + 1) * chunk, n))
        m = sl.stop - sl.start
        arrays = {"flux": flux[sl], "flux_clean": clean[sl], "sigma": sigma[sl],
                  "mask": np.zeros((m, n_wave), np.uint8), "snr": snr[sl].astype(np.float32),
                  "teff": rng.uniform(3500, 7500, m).astype(np.float32),
                  "norm": np.ones(m, np.float32)}
        arrays.update({k: coef[sl, i].astype(np.float32) for i, k in enumerate(names)})
        if params:
            for k, lo, hi in (("logg", 0, 5), ("m_h", -2.5, 0.75), ("a_m", -0.25, 0.5),
                              ("rv", -600, 600), ("ebv", 0, 0.1)):
                arrays[k] = rng.uniform(lo, hi, m).astype(np.float32)
        schema.write_chunk(path, c, chunk, arrays)
    schema.finalize_dataset(path)
    if drop:
        import shutil

        import zarr

        for v in drop:
            shutil.rmtree(f"{path}/{v}")
        zarr.consolidate_metadata(str(path))
    return path


@pytest.fixture(scope="session")
def small_grid(tmp_path_factory) -> Path:
    """:func:`write_small_grid`, once per test session."""
    return write_small_grid(tmp_path_factory.mktemp("grid") / "small.zarr")


def simulate_in_process(*cfgs) -> list[Path]:
    """``specdenoise simulate`` of each config on one in-process Dask worker with one thread:
    the store every other cluster must reproduce bit for bit. Returns the written stores."""
    from distributed import Client, LocalCluster

    from specdenoise.stage_simulate import simulate

    paths = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as lc, Client(lc) as client:
        for cfg in cfgs:
            paths += simulate(cfg, client=client, progress=False)
    return paths


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
