"""Reference denoisers that a network has to beat, on the same spectra and the same noise.

Every baseline maps normalised noisy spectra ``flux`` (n, n_wave) (median 0.5, as stored in a
dataset) to an estimate of the noiseless ``flux_clean`` in the same normalisation:

``none``
    no denoising: the noisy input itself. Its |R| is the noise level the others start from.
``savgol``
    Savitzky-Golay smoothing (:func:`scipy.signal.savgol_filter`): a least-squares polynomial
    of order ``polyorder`` fitted in a sliding window of ``window`` pixels.
``gaussian``
    convolution with a Gaussian of ``sigma_pix`` pixels (:func:`scipy.ndimage.gaussian_filter1d`).
``pca``
    projection on the mean and first ``k`` principal components of a training set. The basis is
    learned from the training set's *noiseless* ``flux_clean`` (the best basis a linear method
    could have), then each noisy validation spectrum is projected on it.
``template``
    the near-best-possible reference: a least-squares fit of the simulation's own model through
    the simulation's own observation kernels (:class:`TemplateFitter`).

The smoothing filters trade noise for line depth: the PFS line-spread function has a FWHM of
about 3.1 pixels, so any kernel that is not much narrower than that fills absorption lines in.

:data:`BASELINES` is the one list of them (the command line, the cube and the report read it).
A new baseline is a function here, a factory that wraps it in a
:class:`~specdenoise.evaluate.cube.Method`, and one entry in :data:`BASELINES`. SciPy is
imported where it is used, so reading the registry (``specdenoise --help``) stays fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specdenoise import codecs, schema
from specdenoise.errors import SpecdenoiseError
from specdenoise.evaluate.cube import Method
from specdenoise.simulate import calibration
from specdenoise.simulate.constants import C_KM_PER_S

# --------------------------------------------------------------------------- simple filters


def no_denoising(flux: np.ndarray) -> np.ndarray:
    """The noisy input, as float32 (n, n_wave)."""
    return np.asarray(flux, dtype=np.float32).copy()


def savgol(flux: np.ndarray, window: int = 11, polyorder: int = 4) -> np.ndarray:
    """Savitzky-Golay smoothing along the wavelength axis; ``window`` pixels (odd)."""
    if window % 2 == 0 or window <= polyorder:
        raise SpecdenoiseError(f"Savitzky-Golay window {window} must be odd and larger than "
                               f"the polynomial order {polyorder}")
    from scipy.signal import savgol_filter

    out = savgol_filter(np.asarray(flux, dtype=np.float64), window, polyorder, axis=-1,
                        mode="interp")
    return out.astype(np.float32)


def gaussian(flux: np.ndarray, sigma_pix: float = 1.0) -> np.ndarray:
    """Gaussian smoothing along the wavelength axis; ``sigma_pix`` in pixels."""
    if sigma_pix <= 0:
        raise SpecdenoiseError(f"Gaussian smoothing width must be positive, got {sigma_pix}")
    from scipy.ndimage import gaussian_filter1d

    out = gaussian_filter1d(np.asarray(flux, dtype=np.float64), sigma_pix, axis=-1,
                            mode="nearest")
    return out.astype(np.float32)


# --------------------------------------------------------------------------- PCA


@dataclass
class PCABasis:
    """Mean spectrum (n_wave,) and orthonormal components (k, n_wave) of a training set."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray

    @property
    def k(self) -> int:
        return self.components.shape[0]

    def project(self, flux: np.ndarray) -> np.ndarray:
        """Noisy spectra (n, n_wave) -> their projection on mean + span(components), float32."""
        x = np.asarray(flux, dtype=np.float64) - self.mean
        coef = x @ self.components.T
        return (self.mean + coef @ self.components).astype(np.float32)


def fit_pca(train_flux: np.ndarray, k: int = 32) -> PCABasis:
    """Principal components of training spectra (n_train, n_wave) via an SVD.

    Pass the training set's noiseless ``flux_clean``: the basis then describes stellar spectra
    and not noise. ``k`` is capped at ``n_train - 1``.
    """
    x = np.asarray(train_flux, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise SpecdenoiseError("PCA needs a training set of at least 2 spectra")
    if not np.isfinite(x).all():
        raise SpecdenoiseError("the PCA training spectra contain NaN or infinite values")
    k = int(min(k, x.shape[0] - 1))
    if k < 1:
        raise SpecdenoiseError(f"PCA needs at least one component, got k={k}")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    return PCABasis(mean=mean, components=vt[:k],
                    explained_variance_ratio=var[:k] / max(var.sum(), 1e-300))


# --------------------------------------------------------------------------- template fit


def _weighted_poly_solve(models: np.ndarray, y: np.ndarray, w2: np.ndarray, basis: np.ndarray,
                         pairs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best multiplicative polynomial for each model row: (fits (k, n_wave), chi2 (k,)).

    Minimises ``sum w2 (y - M * (basis.T @ c))^2`` over ``c`` for each model ``M`` -- linear in
    ``c``, so solved exactly (variable projection: the optimiser never sees the polynomial).
    ``basis`` is (L+1, n_wave); ``pairs`` its products ((L+1)**2, n_wave), if precomputed.
    """
    n_b = basis.shape[0]
    if pairs is None:
        pairs = (basis[:, None, :] * basis[None, :, :]).reshape(n_b * n_b, -1)
    gram = ((models * models * w2) @ pairs.T).reshape(-1, n_b, n_b)
    rhs = (models * (w2 * y)) @ basis.T
    # a tiny ridge keeps an all-zero model (off the detector) from making gram singular
    ridge = 1e-12 * np.trace(gram, axis1=1, axis2=2)[:, None, None] * np.eye(n_b)
    coef = np.linalg.solve(gram + ridge, rhs[..., None])[..., 0]
    fits = models * (coef @ basis)
    chi2 = np.sum(w2 * (y - fits) ** 2, axis=1)
    return fits, chi2


def _chi2_scan(models: np.ndarray, y: np.ndarray, w2: np.ndarray, basis: np.ndarray,
               pairs: np.ndarray) -> np.ndarray:
    """chi^2 (k,) of :func:`_weighted_poly_solve` without forming the fits (for searches).

    At the solution of the normal equations ``chi2 = sum w2 y^2 - c . rhs``; two matrix
    products over the models and one elementwise square are all it costs.
    """
    n_b = basis.shape[0]
    m = np.asarray(models, dtype=np.float32)
    gram = ((m * m) @ (pairs * w2).T.astype(np.float32)).reshape(-1, n_b, n_b).astype(np.float64)
    rhs = (m @ (basis * (w2 * y)).T.astype(np.float32)).astype(np.float64)
    ridge = 1e-9 * np.trace(gram, axis1=1, axis2=2)[:, None, None] * np.eye(n_b)
    coef = np.linalg.solve(gram + ridge, rhs[..., None])[..., 0]
    return np.sum(w2 * y * y) - np.sum(coef * rhs, axis=1)


def _node_table(axes: tuple[np.ndarray, ...], max_nodes: int) -> np.ndarray:
    """Grid nodes for the coarse search, (k, D): every node, or every s-th along each axis."""
    stride = 1
    while np.prod([len(a[::stride]) for a in axes]) > max_nodes and stride < 64:
        stride += 1
    sub = []
    for a in axes:
        s = a[::stride]
        if s[-1] != a[-1] and a.size > 1:  # keep the ends of every axis
            s = np.append(s, a[-1])
        sub.append(s)
    mesh = np.meshgrid(*sub, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


@dataclass
class FitResult:
    """Template fits of n spectra."""

    denoised: np.ndarray  # (n, n_wave) float32, the fitted model in the data's normalisation
    params: dict[str, np.ndarray]  # teff, logg, m_h, a_m, rv, ebv (n,)
    chi2_red: np.ndarray  # (n,) chi^2 per degree of freedom
    nfev: np.ndarray  # (n,) model evaluations of the least-squares refinement
    seconds: float  # wall time of all fits (setup excluded)
    setup_seconds: float = 0.0  # building the node library once
    info: dict = field(default_factory=dict)

    @property
    def fits_per_s(self) -> float:
        return len(self.chi2_red) / self.seconds if self.seconds > 0 else float("nan")


class TemplateFitter:
    """Least-squares fit of the simulation's model to observed spectra.

    The model of a normalised observed spectrum is ``P(lambda) * C[teff, logg, m_h, a_m, rv,
    ebv](lambda)``, where ``C`` is the noiseless output of the simulation's own chain -- grid
    interpolation (:class:`~specdenoise.simulate.interp.GridInterpolator`), Doppler shift,
    extinction, line-spread function and pixel integration
    (:meth:`~specdenoise.simulate.observe.Observer.clean_fnu`, without magnitude scaling) --
    and ``P`` is a Legendre polynomial of order ``poly_order`` over the detector, which stands
    for the flux calibration distortion and the normalisation. ``P`` enters linearly and is
    solved exactly for every trial model; the six other parameters are fitted with
    :func:`scipy.optimize.least_squares` (trust-region reflective, within the grid and the RV
    and E(B-V) bounds), residuals weighted by ``1 / sigma``.

    Starting points come from a coarse search: the RV from a scan of a few templates shifted on
    the detector grid, then the grid node (from a library of at most ``max_nodes`` nodes
    computed once) with the smallest chi^2 at that RV, then the RV again with that node. The
    best ``n_starts`` nodes each start one refinement; the lowest chi^2 wins.

    Parameters
    ----------
    interp : grid interpolator; observer : the dataset's :class:`Observer`.
    poly_order : order of the multiplicative calibration polynomial (3 = the chain's distortion).
    rv_range : (low, high) km/s searched and allowed; rv_step : km/s between scanned RVs.
    ebv_max : largest E(B-V) allowed, mag.
    """

    def __init__(self, interp, observer, *, poly_order: int = 3,
                 rv_range: tuple[float, float] = (-650.0, 650.0), rv_step: float = 15.0,
                 ebv_max: float = 0.3, max_nodes: int = 600, n_starts: int = 2,
                 max_nfev: int = 60):
        self.interp, self.observer = interp, observer
        self.names = tuple(interp.names)
        self.axes = tuple(np.asarray(a, dtype=np.float64) for a in interp.axes)
        self.poly_order, self.n_starts, self.max_nfev = int(poly_order), int(n_starts), max_nfev
        self.wave = np.asarray(observer.wave, dtype=np.float64)
        # the chain's distortion basis plus a constant (the constant absorbs the normalisation)
        self.basis = calibration.legendre_basis(calibration.detector_x(self.wave),
                                                self.poly_order, constant=True)
        self.pairs = (self.basis[:, None, :] * self.basis[None, :, :]).reshape(
            (self.poly_order + 1) ** 2, -1)
        self.rv_range = (float(rv_range[0]), float(rv_range[1]))
        self.rv_grid = np.arange(self.rv_range[0], self.rv_range[1] + 0.5 * rv_step, rv_step)
        self.ebv_max = float(ebv_max)
        t0 = time.perf_counter()
        nodes = _node_table(self.axes, max_nodes)
        ok = np.asarray(interp.valid(nodes), dtype=bool)
        self.nodes = nodes[ok]
        self.library = self._models(self.nodes, np.zeros(len(self.nodes)), 0.0).astype(
            np.float32)
        # a few RV-scan templates along the first axis (Teff), the others at their middle
        mid = [a[a.size // 2] for a in self.axes]
        picks = []
        for q in (0.2, 0.5, 0.8):
            target = np.array(mid)
            target[0] = self.axes[0][int(round(q * (self.axes[0].size - 1)))]
            d = np.sum(((self.nodes - target) / self._spans()) ** 2, axis=1)
            picks.append(int(np.argmin(d)))
        self.rv_templates = np.unique(picks)
        self._rv_table = self._shift_table(self.rv_grid)
        self.setup_seconds = time.perf_counter() - t0

    # -- model ---------------------------------------------------------------------------

    def _spans(self) -> np.ndarray:
        return np.array([max(a[-1] - a[0], 1e-9) for a in self.axes])

    def _models(self, grid_params: np.ndarray, rv, ebv) -> np.ndarray:
        """Noiseless chain output (k, n_wave), each row scaled to median 1 (float64)."""
        model = self.interp(np.atleast_2d(grid_params))
        fnu, _ = self.observer.clean_fnu(model, rv, ebv, np.nan)
        med = np.median(fnu, axis=1, keepdims=True)
        return fnu / np.where(med > 0, med, 1.0)

    def _shift_table(self, rv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Linear-interpolation indices and weights (r, n_wave) that move a rest-frame detector
        spectrum to each RV (wavelengths scale by 1 + v/c)."""
        src = self.wave[None, :] / (1.0 + np.asarray(rv, dtype=np.float64)[:, None] / C_KM_PER_S)
        idx = np.clip(np.searchsorted(self.wave, src) - 1, 0, self.wave.size - 2)
        frac = np.clip((src - self.wave[idx]) / (self.wave[idx + 1] - self.wave[idx]), 0.0, 1.0)
        return idx.astype(np.int32), frac.astype(np.float32)

    @staticmethod
    def _shifted(models: np.ndarray, table: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Models (k, n_wave) approximately moved to each RV of ``table``: (r, k, n_wave).

        Shifting the already line-spread model is an approximation good enough for a search;
        the refinement runs the real chain.
        """
        idx, frac = table
        out = np.empty((idx.shape[0], models.shape[0], idx.shape[1]), dtype=np.float32)
        for j, m in enumerate(np.asarray(models, dtype=np.float32)):
            lo = m[idx]
            out[:, j] = lo + (m[idx + 1] - lo) * frac
        return out

    # -- one spectrum --------------------------------------------------------------------

    def _pack(self, p: np.ndarray) -> np.ndarray:
        lo = np.array([a[0] for a in self.axes])
        return np.concatenate([(p[:-2] - lo) / self._spans(), [p[-2] / 100.0, p[-1] / 0.1]])

    def _unpack(self, x: np.ndarray) -> np.ndarray:
        lo = np.array([a[0] for a in self.axes])
        return np.concatenate([lo + x[:-2] * self._spans(), [x[-2] * 100.0, x[-1] * 0.1]])

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        d = len(self.axes)
        lo = np.concatenate([np.zeros(d), [self.rv_range[0] / 100.0, 0.0]])
        hi = np.concatenate([np.ones(d), [self.rv_range[1] / 100.0, self.ebv_max / 0.1]])
        return lo, hi

    def fit_one(self, flux: np.ndarray, sigma: np.ndarray,
                good: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float, int]:
        """Fit one spectrum: (denoised (n_wave,), params (D + 2,), chi2_red, nfev)."""
        y = np.asarray(flux, dtype=np.float64)
        s = np.asarray(sigma, dtype=np.float64)
        w2 = np.where((s > 0) & np.isfinite(y) & np.isfinite(s), 1.0 / np.where(s > 0, s, 1) ** 2,
                      0.0)
        if good is not None:
            w2 = np.where(good, w2, 0.0)
        y = np.where(w2 > 0, y, 0.0)
        w = np.sqrt(w2)
        d = len(self.axes)

        # 1. RV from a few templates shifted on the detector grid
        sh = self._shifted(self.library[self.rv_templates], self._rv_table)
        chi = _chi2_scan(sh.reshape(-1, y.size), y, w2, self.basis, self.pairs)
        rv0 = self.rv_grid[int(np.argmin(chi)) // len(self.rv_templates)]
        # 2. the best library node at that RV
        lib = self._shifted(self.library, self._shift_table(np.array([rv0])))[0]
        chi = _chi2_scan(lib, y, w2, self.basis, self.pairs)
        order = np.argsort(chi)
        # 3. the RV again, finely, with the best node
        step = self.rv_grid[1] - self.rv_grid[0] if self.rv_grid.size > 1 else 10.0
        fine = rv0 + np.arange(-1.5, 1.51, 0.125) * step
        fine = np.clip(fine, *self.rv_range)
        sh = self._shifted(self.library[order[:1]], self._shift_table(fine))[:, 0]
        chi_rv = _chi2_scan(sh, y, w2, self.basis, self.pairs)
        rv1 = float(fine[int(np.argmin(chi_rv))])

        from scipy.optimize import least_squares

        lo_b, hi_b = self._bounds()

        def models_at(xs: np.ndarray) -> np.ndarray:
            ps = np.array([self._unpack(x) for x in xs])
            return self._models(ps[:, :d], ps[:, d], ps[:, d + 1])

        def residual(x):
            fits, _ = _weighted_poly_solve(models_at(x[None]), y, w2, self.basis, self.pairs)
            return w * (y - fits[0])

        def jacobian(x):
            # forward differences, all parameters in one batched chain call
            h = 1e-3
            xs = np.repeat(x[None], d + 3, axis=0)
            steps = np.where(x + h <= hi_b, h, -h)
            xs[1:d + 3][np.arange(d + 2), np.arange(d + 2)] += steps
            fits, _ = _weighted_poly_solve(models_at(xs), y, w2, self.basis, self.pairs)
            r = w * (y - fits)
            return ((r[1:] - r[0]) / steps[:, None]).T

        best = None
        for k in order[: self.n_starts]:
            p0 = np.concatenate([self.nodes[k], [rv1, 0.5 * self.ebv_max]])
            x0 = np.clip(self._pack(p0), lo_b, hi_b)
            # lsmr: the 4096 x 6 Jacobian is tall and thin, a dense SVD per step costs more
            res = least_squares(residual, x0, jac=jacobian, bounds=(lo_b, hi_b), method="trf",
                                tr_solver="lsmr", x_scale=1.0, max_nfev=self.max_nfev,
                                xtol=1e-6, ftol=1e-8)
            if best is None or res.cost < best.cost:
                best = res
        p = self._unpack(best.x)
        fits, chi2 = _weighted_poly_solve(models_at(best.x[None]), y, w2, self.basis, self.pairs)
        dof = max(int(np.count_nonzero(w2)) - (d + 2) - (self.poly_order + 1), 1)
        return fits[0].astype(np.float32), p, float(chi2[0] / dof), int(best.nfev)

    def fit(self, flux: np.ndarray, sigma: np.ndarray, mask: np.ndarray | None = None,
            progress: bool = False) -> FitResult:
        """Fit every spectrum of ``flux``, ``sigma`` (n, n_wave); ``mask`` nonzero = bad pixel."""
        flux = np.atleast_2d(flux)
        sigma = np.atleast_2d(sigma)
        n = flux.shape[0]
        den = np.empty(flux.shape, dtype=np.float32)
        params = np.empty((n, len(self.axes) + 2))
        chi2 = np.empty(n)
        nfev = np.empty(n, dtype=np.int64)
        from specdenoise.progress import iterate

        t0 = time.perf_counter()
        for i in iterate(range(n), "template fit", "spec", enabled=progress):
            good = None if mask is None else np.asarray(mask[i]) == 0
            den[i], params[i], chi2[i], nfev[i] = self.fit_one(flux[i], sigma[i], good)
        seconds = time.perf_counter() - t0
        names = (*self.names, "rv", "ebv")
        return FitResult(denoised=den, params={k: params[:, j] for j, k in enumerate(names)},
                         chi2_red=chi2, nfev=nfev, seconds=seconds,
                         setup_seconds=self.setup_seconds,
                         info={"library_nodes": int(len(self.nodes))})


def _config_of(attrs: Mapping) -> dict:
    cfg = attrs.get("config")
    if cfg is None:
        raise SpecdenoiseError("the dataset has no 'config' attribute (not written by "
                               "'specdenoise simulate'); the template fit needs it")
    return json.loads(cfg) if isinstance(cfg, str) else dict(cfg)


def _provenance_of(attrs: Mapping) -> dict:
    prov = attrs.get("grid_provenance") or {}
    return json.loads(prov) if isinstance(prov, str) else dict(prov)


def simulated_grid(attrs: Mapping) -> str:
    """The grid a dataset was simulated from, as its config names it (``"builtin"`` or a
    store path), from the dataset's ``config`` and ``grid_provenance`` attributes.

    Raises :class:`SpecdenoiseError` when a grid store named by path no longer exists.
    """
    spec = _config_of(attrs).get("grid", _provenance_of(attrs).get("grid", "builtin"))
    if spec != "builtin" and not Path(spec).exists():
        raise SpecdenoiseError(f"the dataset was simulated from grid {spec}, which no longer "
                               "exists; the template fit needs that grid")
    return spec


def template_fitter_for(attrs: Mapping, *, grid_path: str | Path | None = None,
                        **options) -> TemplateFitter:
    """A :class:`TemplateFitter` with the grid, noise model and observation settings that
    simulated a dataset (from its ``config`` and ``grid_provenance`` attributes).

    ``grid_path``: that grid's store, when the caller has resolved it (the evaluate stage
    builds a missing built-in grid); by default the store the config names, the built-in
    grid's cache for ``"builtin"``. Raises :class:`SpecdenoiseError` when the grid is gone or
    its content changed since.
    """
    from specdenoise.simulate.engine import forward_model
    from specdenoise.simulate.grids import open_grid

    cfg = _config_of(attrs)
    spec = simulated_grid(attrs)
    if grid_path is None:
        if spec == "builtin":
            from specdenoise.simulate.builtin_grid import builtin_grid_path

            grid_path = builtin_grid_path()
        else:
            grid_path = Path(spec)
    want = _provenance_of(attrs).get("content_hash")
    have = open_grid(grid_path).attrs.get("content_hash")
    if want and have and want != have:
        raise SpecdenoiseError(f"grid {grid_path} has changed since the dataset was simulated "
                               "(content hash differs); the template fit would use another model")
    interp, observer = forward_model(cfg, grid_path)
    if not np.all(interp.exists):
        from specdenoise.simulate.interp import GridInterpolator

        interp = GridInterpolator(grid_path, missing="renormalize", load=interp.load)
    rv = cfg.get("params", {}).get("rv", {})
    if "low" in rv and "high" in rv and "rv_range" not in options:
        options["rv_range"] = (float(rv["low"]) - 50.0, float(rv["high"]) + 50.0)
    return TemplateFitter(interp, observer, poly_order=options.pop("poly_order",
                                                                   observer.calib_order),
                          **options)


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Options:
    """Everything a baseline may be built from (the evaluate command's defaults)."""

    train: str | Path | None = None  # training dataset (pca learns its basis from it)
    data_attrs: Mapping | None = None  # attributes of the evaluated dataset (template)
    grid_path: str | Path | None = None  # the dataset's grid, resolved (template)
    template_n: int | None = None  # template-fit only the first that many spectra
    savgol_window: int = 11
    savgol_order: int = 4
    gaussian_sigma: float = 1.0
    pca_k: int = 32
    template_options: Mapping | None = None  # keyword arguments of TemplateFitter
    progress: bool | None = None


@dataclass(frozen=True)
class Baseline:
    """One registered baseline: a one-line description for the report (``{fields}`` are
    filled by ``build``), a factory ``build(options) -> Method``, and what it needs beyond
    the evaluated spectra (a key of :data:`NEEDS`, or None)."""

    description: str
    build: Callable[[Options], Method]
    needs: str | None = None


#: what a baseline may need: (the error when it was asked for, the note when it is skipped)
NEEDS = {
    "train": ("the {name} baseline needs a training set: pass --train TRAIN.zarr (or leave "
              "{name} out of --baselines)",
              "no --train given, so the {name} baseline is skipped"),
    "config": ("{data} has no simulation config; the {name} baseline only works on datasets "
               "written by 'specdenoise simulate'",
               "the dataset carries no simulation config, so the {name} baseline is skipped"),
}


def _describe(name: str, **fields) -> str:
    return BASELINES[name].description.format(**fields)


def _none(o: Options) -> Method:
    return Method("none", "baseline", _describe("none"), lambda f, s, m: no_denoising(f))


def _savgol(o: Options) -> Method:
    window, order = o.savgol_window, o.savgol_order
    savgol(np.ones((1, 64)), window, order)  # validate early
    return Method("savgol", "baseline", _describe("savgol", window=window, polyorder=order),
                  lambda f, s, m: savgol(f, window, order),
                  info={"window": window, "polyorder": order})


def _gaussian(o: Options) -> Method:
    sigma_pix = o.gaussian_sigma
    gaussian(np.ones((1, 8)), sigma_pix)
    return Method("gaussian", "baseline", _describe("gaussian", sigma_pix=sigma_pix),
                  lambda f, s, m: gaussian(f, sigma_pix), info={"sigma_pix": sigma_pix})


def _pca(o: Options) -> Method:
    if o.train is None:
        raise SpecdenoiseError(NEEDS["train"][0].format(name="pca"))
    tds = schema.open_dataset(o.train, require=("flux_clean",))
    t0 = time.perf_counter()
    with codecs.reading(o.train, ["flux_clean"]):
        clean = tds["flux_clean"].values
    basis = fit_pca(clean, o.pca_k)
    fit_s = time.perf_counter() - t0
    return Method("pca", "baseline", _describe("pca", k=basis.k),
                  lambda f, s, m, basis=basis: basis.project(f),
                  info={"k": basis.k, "train": str(o.train), "fit_seconds": fit_s,
                        "n_train": int(tds.sizes[schema.SPECTRUM_DIM]),
                        "explained_variance": float(basis.explained_variance_ratio.sum())})


def _template(o: Options) -> Method:
    if o.data_attrs is None:
        raise SpecdenoiseError("the template baseline needs the dataset's attributes")
    fitter = template_fitter_for(o.data_attrs, grid_path=o.grid_path,
                                 **dict(o.template_options or {}))

    def fit(f, s, m):
        res = fitter.fit(f, s, m, progress=bool(o.progress))
        extras = dict(res.params)
        extras["chi2_red"] = res.chi2_red
        return res.denoised, extras

    return Method("template", "reference", _describe("template", poly_order=fitter.poly_order),
                  fit, limit=o.template_n,
                  info={"setup_seconds": fitter.setup_seconds, "library_nodes": len(fitter.nodes),
                        "poly_order": fitter.poly_order, "n_starts": fitter.n_starts,
                        "rv_range": list(fitter.rv_range)},
                  extras=(*fitter.names, "rv", "ebv", "chi2_red"))


#: every baseline, by the name the command line, the cube and the report use
BASELINES: dict[str, Baseline] = {
    "none": Baseline("no denoising: the noisy input as it is (the noise level to beat)", _none),
    "savgol": Baseline("Savitzky-Golay smoothing (polynomial of order {polyorder} in a "
                       "{window}-pixel window)", _savgol),
    "gaussian": Baseline("Gaussian smoothing with sigma = {sigma_pix} pixels", _gaussian),
    "pca": Baseline("projection on the mean and first {k} principal components learned from "
                    "the training set's noiseless flux_clean", _pca, needs="train"),
    "template": Baseline("least-squares fit of the simulation's own model (grid parameters, "
                         "RV, E(B-V) and an order-{poly_order} multiplicative Legendre "
                         "polynomial) through the same observation kernels, weighted by "
                         "1/sigma", _template, needs="config"),
}


def check_names(names: Sequence[str]) -> None:
    """Refuse a baseline name that is not registered."""
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise SpecdenoiseError(f"unknown baseline {unknown[0]!r}; choose from "
                               f"{', '.join(BASELINES)}")


def baseline_methods(names: Sequence[str], **options) -> list[Method]:
    """:class:`Method` objects for the named baselines; ``options`` are :class:`Options`
    fields (``train`` for ``pca``, ``data_attrs`` for ``template``, ...)."""
    check_names(names)
    opts = Options(**options)
    return [BASELINES[b].build(opts) for b in names]
