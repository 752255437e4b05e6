"""Per-pixel uncertainty of a denoised spectrum, its calibration, and a consistency check.

Two ways to get ``sigma_denoised``, the 1-sigma error of each denoised pixel (flux units):

``head``
    A network trained with ``uncertainty: "nll"`` (see :class:`specdenoise.train.nets.unet.UNet`)
    gives the log-variance of its own error at every pixel, learnt with the beta-NLL loss
    (Seitz et al. 2022, ICLR, "On the pitfalls of heteroscedastic uncertainty estimation with
    probabilistic neural networks"). One forward pass.
``sample``
    Works for any network, old checkpoints included: a parametric bootstrap. The denoised
    spectrum D is taken as the truth, K new observations ``D + sigma * eps_k`` are drawn with
    the input's own noise, each is denoised, and the spread (standard deviation over k) of the
    K outputs is the error. It measures how much the noise moves the output, not the
    network's bias (line shrinkage), which the calibration below has to absorb. K + 1 passes.
``both``
    The two added in quadrature (a network with a head only).

A raw sigma is not a calibrated one. :func:`calibrate` scales it, by one factor per S/N bin,
so that on in-domain validation data the fraction of pixels with ``|D - F| <= sigma`` is near
0.683, with ``<= 2 sigma`` near 0.954 and the standard deviation of ``z = (D - F) / sigma``
near 1 (targets 0.63-0.73, 0.92-0.97, 0.85-1.15; the scale minimises the worst relative miss).

The consistency check: for each spectrum, with ``r^2 = (flux - D)^2 / (sigma^2 +
sigma_denoised^2)`` at every unmasked pixel,

    chi2_red  = mean of r^2 over the spectrum
    chi2_peak = largest mean of r^2 over any LOCAL_WINDOW (5) neighbouring pixels

where ``flux`` and ``sigma`` are the noisy input and its noise. If the denoised spectrum is a
faithful model of the input, the residual ``flux - D`` is the noise plus the network's own
error, whose variances add (the network's error is mostly systematic -- shrunk lines -- and
barely correlated with this noise draw). Dividing by ``sigma^2`` alone would flag every
high-S/N spectrum whose lines the network shrinks although it says it is unsure there; adding
``sigma_denoised^2`` keeps those quiet and leaves the statistic sensitive to what the network
cannot explain with confidence: spikes, emission lines, sky residuals, wrong continua, lines
of the wrong width. The two statistics look at different failures: a wrong continuum or
line width raises ``r^2`` a little everywhere (``chi2_red``); a cosmic-ray hit, an emission
line or a sky residual raises it a lot in a few pixels, which a mean over 4096 pixels dilutes
(three pixels at 30 sigma move ``chi2_red`` by 0.7) and a mean over 5 pixels does not
(``chi2_peak`` about 500). Between the two lies a misfit coherent over a few to a few
hundred pixels and smaller than the noise in each (a line shape or a continuum the network
does not know, as for a star beyond its grid): in ``chi2_red`` each pixel adds only its own
square; summed over a block of pixels first, the misfit adds up and the noise does not.

    chi2_binned(m) = mean over blocks of (sum of u over the block)^2 / (pixels in it),
    u = (flux - D) / sqrt(sigma^2 + sigma_D^2), blocks of m = 4, 16, 64 pixels

is 1 for white residuals at every m, and a misfit of a quarter sigma kept over the whole
spectrum adds m / 16 to it (1/16 to ``chi2_red``). On the best preset's network it took the
bad out-of-distribution spectra flagged from 69 % to 83 % (``results/ood/``).

The null distributions of all these drift with S/N, so each is standardised per S/N bin
(median and 1.4826 MAD of the validation spectra in the bin), and then divided by its own
level: the (1 - false alarm) quantile of its standardised values on the validation spectra,
so that in these units each check alone would flag the false-alarm rate of them (the block
statistics have heavier tails than ``chi2_red`` in-domain, since the network's own errors
are coherent; without the levels they set the threshold for all). A spectrum's score is the
largest of its checks, and one threshold on it, the (1 - false alarm) quantile over all
validation spectra, sets ``suspect`` (calibrated on several datasets: the first one's spectra
set it, and a bin only a later one covers gets its own; see :func:`fit_calibration`).
Calibrations written before the block statistics (version 2) score as they were fitted: the
largest standardised ``chi2_red``, ``chi2_peak`` and ``|sky_excess|``, without levels.

One more statistic looks for a failure none of these can see: sky left in (or taken out of) the
input by a wrong sky subtraction. The network treats such flux as the star's and reproduces
it (an unsubtracted sky continuum makes the whole denoised spectrum too bright), so the
residual is quiet; but the sky's emission lines sit at known wavelengths.

    sky_excess = sum(w r T) / sqrt(sum(w T^2)),  w = 1 / (sigma^2 + sigma_D^2)

(sigma_D: ``sigma_denoised``; ``r`` the residual flux - D less its running median over
:data:`SKY_WINDOW` pixels, so that a smooth misfit, which the network's errors often are, does
not count) is the matched-filter significance (in sigma) of the sky-line template ``T`` in
the residual. ``T`` is the sky spectrum of the noise model at the default
observing conditions (:data:`specdenoise.schema.OBSERVING`) in flux units, less its running
median over :data:`SKY_WINDOW` pixels (what is left is the OH and O2 lines), peak 1.
Positive: sky emission left in; negative: too much sky subtracted. Its size, standardised per
S/N bin as the others, is one more check (``results/ood/`` shows what it catches).

The input guard: where the network is less sure of a pixel than the observation itself, the
output leans on the observation. With ``D`` the network's output, ``s`` its calibrated
``sigma_denoised``, ``X`` the input flux and ``sigma`` its noise, the guarded output is a
weighted mean of the two estimates,

    w = a s^2 / (a s^2 + sigma^2),  D' = D + w (X - D),
    sigma_denoised' = sqrt((1 - w)^2 s^2 + w^2 sigma^2)

(the error of that mean if the two errors are independent; the network's error at high S/N is
mostly its systematic line shrinkage, which this noise draw does not move). ``a = 1`` is the
inverse-variance mean; a larger ``a`` leans further on the input (``a`` -> infinity: the input
itself), a smaller one less. Where the network is good ``s << sigma`` and ``D' = D``; where it
extrapolates beyond what it was trained on (S/N far above the training set's, where the input
is already good to 1 % and the network keeps its line-shrinkage floor) ``D'`` follows the
input. The calibration picks ``a`` per S/N bin from :data:`GUARD_STRENGTHS`, the one with the
lowest mean |R| on its own spectra, or 0 (off) where none beats the network's own output
(``guard``); since the largest strength is the input itself, the output of a bin with the
guard is no worse than the input on the calibration's spectra. A bin without enough
calibration spectra gets ``a = 1`` when it lies above every calibrated bin (S/N beyond what
the calibration saw) and its nearest calibrated bin's choice otherwise. The consistency check
below always looks at the network's own output ``D``.

A suspect spectrum is one the
network's output does not explain as well as it explains 99 % of the spectra it was
validated on: look at ``flux - flux_denoised``, and do not use the denoised flux of that
spectrum without checking it (or use the noisy input).

The calibration of a run is a small JSON file (:data:`CALIBRATION_NAME`) in its run folder,
written at the end of training from the validation set and rewritten by
``specdenoise calibrate``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from specdenoise import stores
from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate.pfs import RED_MR_NPIX
from specdenoise.train import data as tdata
from specdenoise.train.nets.base import model_input

#: S/N bin edges (S/N = median over pixels of flux / sigma), the report's default bins
SNR_EDGES = (0.0, 2.0, 5.0, 10.0, 20.0, 50.0, math.inf)
METHODS = ("head", "sample", "both")
DEFAULT_SAMPLES = 8
CALIBRATION_NAME = "uncertainty.json"
FALSE_ALARM = 0.01
#: calibration targets per S/N bin: 1-sigma coverage, 2-sigma coverage, std(z)
TARGETS = {"cover1": (0.63, 0.73), "cover2": (0.92, 0.97), "std_z": (0.85, 1.15)}
#: a bin needs this many spectra to get its own scale and chi2 statistics (else its neighbour's)
MIN_BIN_SPECTRA = 20
#: the input guard's strengths the calibration chooses from (module doc); the last is, to
#: float precision, the noisy input itself
GUARD_STRENGTHS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 1e6)
#: a bin needs this many spectra to get its own suspect threshold (else the overall one)
MIN_THRESHOLD_SPECTRA = 100
#: pixels per bin used to fit the scale (a random subset beyond it)
MAX_FIT_PIXELS = 400_000
#: pixels of the local window of ``chi2_peak`` (a line or a cosmic-ray hit spans 2-5 pixels)
LOCAL_WINDOW = 5
#: block sizes (pixels) of ``chi2_binned``, the check on misfits coherent over several pixels
BLOCK_SIZES = (4, 16, 64)
#: pixels of the running median that takes the continuum off the sky template
SKY_WINDOW = 51
#: template values below this fraction of its peak are stored as 0
SKY_FLOOR = 1e-4
#: values of ``suspect``: 1 suspect, 0 consistent, -1 not checked (no calibration or no sigma)
SUSPECT, CONSISTENT, UNCHECKED = 1, 0, -1


def has_head(model: torch.nn.Module) -> bool:
    """True for a network with a heteroscedastic (``uncertainty: "nll"``) head."""
    return getattr(model, "uncertainty", "none") == "nll"


def default_method(model: torch.nn.Module) -> str:
    return "head" if has_head(model) else "sample"


def check_method(model: torch.nn.Module, method: str, samples: int) -> None:
    if method not in METHODS:
        raise SpecdenoiseError(f"unknown uncertainty method {method!r}; choose one of "
                               f"{', '.join(METHODS)}")
    if method in ("head", "both") and not has_head(model):
        raise SpecdenoiseError(f"uncertainty method {method!r} needs a network trained with "
                               "model option uncertainty 'nll'; use 'sample' for this one")
    if method in ("sample", "both") and samples < 2:
        raise SpecdenoiseError(f"sampling needs at least 2 samples, got {samples}")


def spectrum_snr(flux: np.ndarray, sigma: np.ndarray, good: np.ndarray | None = None
                 ) -> np.ndarray:
    """S/N of each spectrum, median over (unmasked) pixels of flux / sigma; (n,) float64."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.asarray(flux, np.float64) / np.asarray(sigma, np.float64)
    if good is not None:
        r = np.where(good, r, np.nan)
    r = np.where(np.isfinite(r), r, np.nan)
    out = np.full(r.shape[0], np.nan)
    ok = np.isfinite(r).any(axis=1)
    out[ok] = np.nanmedian(r[ok], axis=1)
    return out


def snr_bin(snr: np.ndarray, edges=SNR_EDGES) -> np.ndarray:
    """Index of each S/N's bin (``lo < x <= hi``; S/N <= 0 or NaN go to the first bin)."""
    idx = np.searchsorted(np.asarray(edges[1:-1]), np.nan_to_num(snr, nan=0.0), side="left")
    return idx.astype(np.int64)


# --------------------------------------------------------------------------- raw estimates


def _forward(model, flux: torch.Tensor, sigma: torch.Tensor | None, head: bool):
    """(mean, sigma of the head or None) in the units of ``flux`` (b, n), float32."""
    factor, xn = tdata.normalise(flux)
    sn = sigma / factor if sigma is not None and getattr(model, "in_channels", 1) == 2 else None
    x = model_input(model, xn, sn)
    if head:
        mean, logvar = model(x, return_logvar=True)
        return mean.float() * factor, torch.exp(0.5 * logvar.float()) * factor
    return model(x).float() * factor, None


@torch.no_grad()
def raw_uncertainty(model: torch.nn.Module, flux: np.ndarray, sigma: np.ndarray | None, *,
                    method: str | None = None, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                    batch_size: int = 256, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Denoise ``flux`` (n, n_wave) and estimate each pixel's error before calibration.

    ``sigma`` (n, n_wave): the input's 1-sigma noise in the units of ``flux`` (needed by
    ``sample``/``both`` and by models that take it). ``method``: ``head``, ``sample`` or
    ``both`` (None: ``head`` if the model has one, else ``sample``); ``samples``: K.
    Returns ``(denoised, sigma_raw)``, both (n, n_wave) float32 in the units of ``flux``.
    The denoised flux is the plain forward pass (what :func:`~specdenoise.train.infer.
    denoise_array` gives), not the mean of the samples. Draws are keyed by ``seed``.
    """
    method = method or default_method(model)
    check_method(model, method, samples)
    flux = np.asarray(flux, np.float32)
    if sigma is None and (method != "head" or getattr(model, "in_channels", 1) == 2):
        raise SpecdenoiseError(f"uncertainty method {method!r} with this model needs the "
                               "noise sigma of every input pixel")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model_dev = next(model.parameters()).device
    was_training = model.training
    model.to(dev).eval()
    den = np.empty_like(flux)
    out = np.empty_like(flux)
    head = method in ("head", "both")
    try:
        for i in range(0, len(flux), batch_size):
            f = torch.from_numpy(flux[i:i + batch_size]).to(dev)
            s = None if sigma is None else torch.from_numpy(
                np.asarray(sigma[i:i + batch_size], np.float32)).to(dev)
            mean, s_head = _forward(model, f, s, head)
            var = torch.zeros_like(mean) if s_head is None else s_head.square()
            if method in ("sample", "both"):
                gen = torch.Generator(device="cpu").manual_seed(tdata.key(seed, i))
                draws = []
                for _ in range(samples):
                    eps = torch.randn(mean.shape, generator=gen).to(dev)
                    draws.append(_forward(model, mean + s * eps, s, False)[0])
                var = var + torch.stack(draws).var(dim=0, unbiased=True)
            den[i:i + batch_size] = mean.cpu().numpy()
            out[i:i + batch_size] = var.sqrt().cpu().numpy()
    finally:
        model.train(was_training).to(model_dev)
    return den, out


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """How a run's raw sigma becomes ``sigma_denoised``, and where ``suspect`` starts.

    Per S/N bin (``snr_edges``): ``scale`` multiplies the raw sigma; ``chi2_median`` and
    ``chi2_spread`` standardise ``chi2_red``, ``peak_median`` and ``peak_spread``
    ``chi2_peak``, ``sky_median`` and ``sky_spread`` ``sky_excess`` (its size counts);
    ``threshold`` is the score (the largest standardised value) above which a spectrum is
    suspect (``false_alarm`` of the fitting data lie above it); ``thresholds`` per S/N bin,
    used where present: ``threshold`` except in a bin only a later dataset covered.
    ``sky_template``: the sky-line template on the model's pixels (None: no sky check, as in
    calibrations of version 1).
    ``coverage`` records, per bin, the fit's raw and calibrated 1/2-sigma coverage and std(z)
    and, where the guard was weighed, the mean |R| without it and with the best strength.
    ``guard``: per bin, the strength with which the output leans on the input (the module's
    "input guard"; 0: off); None (calibrations written before it): off everywhere.
    ``block_sizes``, ``block_median`` and ``block_spread`` (per size, per bin) standardise
    :func:`chi2_binned`; ``levels``: each check's (1 - false alarm) quantile on the fitting
    data after standardising (keys ``chi2``, ``peak``, ``sky``, ``block4``, ...), the unit
    its score is counted in. Calibrations of version 2 have neither: the score is the largest
    standardised ``chi2_red``, ``chi2_peak`` and ``|sky_excess|``, as they were fitted with.
    """

    method: str
    samples: int
    snr_edges: list[float]
    scale: list[float]
    chi2_median: list[float]
    chi2_spread: list[float]
    peak_median: list[float]
    peak_spread: list[float]
    threshold: float
    false_alarm: float = FALSE_ALARM
    dataset: str = ""
    n_spectra: int = 0
    seed: int = 0
    coverage: list[dict] = field(default_factory=list)
    sky_template: list[float] | None = None
    sky_median: list[float] | None = None
    sky_spread: list[float] | None = None
    guard: list[float] | None = None
    thresholds: list[float] | None = None
    block_sizes: list[int] | None = None
    block_median: list[list[float]] | None = None
    block_spread: list[list[float]] | None = None
    levels: dict[str, float] | None = None
    version: int = 3

    def _by_bin(self, values, snr: np.ndarray) -> np.ndarray:
        """(n,) the per-bin ``values`` at each spectrum's S/N bin."""
        return np.asarray(values, np.float64)[snr_bin(snr, self.snr_edges)]

    def threshold_for(self, snr: np.ndarray) -> np.ndarray:
        """(n,) the suspect threshold of each spectrum's S/N bin (``thresholds``; calibrations
        written before them: the one ``threshold``)."""
        if self.thresholds is None:
            return np.full(np.shape(snr), self.threshold)
        return self._by_bin(self.thresholds, snr)

    def guard_for(self, snr: np.ndarray) -> np.ndarray:
        """(n,) the input guard's strength for each spectrum's S/N bin (0: off)."""
        if self.guard is None:
            return np.zeros(np.shape(snr))
        return self._by_bin(self.guard, snr)

    def scale_for(self, snr: np.ndarray) -> np.ndarray:
        return self._by_bin(self.scale, snr)

    def template(self, n_wave: int) -> np.ndarray | None:
        """The sky-line template as an (n_wave,) array, or None (no sky check)."""
        if self.sky_template is None or len(self.sky_template) != n_wave \
                or self.sky_median is None or self.sky_spread is None:
            return None
        return np.asarray(self.sky_template, np.float64)

    def checks(self, chi2: np.ndarray, peak: np.ndarray, snr: np.ndarray,
               sky: np.ndarray | None = None, blocks: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
        """Each check's standardised value, (n,) each, keyed as :attr:`levels`: ``chi2``,
        ``peak``, ``sky`` (where the calibration has a sky check and ``sky`` is given) and
        ``block<size>`` (where it has block statistics and ``blocks`` (n, sizes) is given)."""
        b = snr_bin(snr, self.snr_edges)
        out = {"chi2": _standard(chi2, b, self.chi2_median, self.chi2_spread),
               "peak": _standard(peak, b, self.peak_median, self.peak_spread)}
        if sky is not None and self.sky_median is not None and self.sky_spread is not None:
            out["sky"] = _sky_score(sky, b, self.sky_median, self.sky_spread)
        if blocks is not None and self.block_sizes is not None:
            for j, size in enumerate(self.block_sizes):
                out[f"block{size}"] = _standard(np.asarray(blocks)[:, j], b,
                                                self.block_median[j], self.block_spread[j])
        return out

    def scaled_checks(self, chi2: np.ndarray, peak: np.ndarray, snr: np.ndarray,
                      sky: np.ndarray | None = None, blocks: np.ndarray | None = None
                      ) -> dict[str, np.ndarray]:
        """:meth:`checks`, each in units of its level (where the calibration has levels): the
        check whose value is largest is the one that flags a suspect spectrum."""
        levels = self.levels or {}
        return {k: v / float(levels.get(k, 1.0))
                for k, v in self.checks(chi2, peak, snr, sky, blocks).items()}

    def score(self, chi2: np.ndarray, peak: np.ndarray, snr: np.ndarray,
              sky: np.ndarray | None = None, blocks: np.ndarray | None = None) -> np.ndarray:
        """(n,) the largest of :meth:`scaled_checks`; a check that is NaN for a spectrum does
        not count (NaN where none is finite)."""
        return _largest(self.scaled_checks(chi2, peak, snr, sky, blocks))

    def suspect(self, chi2: np.ndarray, peak: np.ndarray, snr: np.ndarray,
                sky: np.ndarray | None = None, blocks: np.ndarray | None = None
                ) -> np.ndarray:
        """(n,) int8: 1 suspect, 0 consistent, -1 where chi2 is NaN (not checked)."""
        u = self.score(chi2, peak, snr, sky, blocks)
        out = np.where(u > self.threshold_for(snr), SUSPECT, CONSISTENT).astype(np.int8)
        out[~(np.isfinite(chi2) & np.isfinite(peak))] = UNCHECKED
        return out

    def to_json(self) -> str:
        d = asdict(self)
        d["snr_edges"] = [None if math.isinf(e) else e for e in self.snr_edges]
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        d = dict(d)
        d["snr_edges"] = [math.inf if e is None else float(e) for e in d["snr_edges"]]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def calibration_path(run) -> Path:
    """The calibration file of a run (given its folder or its checkpoint file)."""
    run = Path(run)
    return (run if run.is_dir() else run.parent) / CALIBRATION_NAME


def read_calibration(run) -> Calibration | None:
    """The run's calibration, or None if it was never calibrated."""
    path = calibration_path(run)
    if not path.is_file():
        return None
    try:
        return Calibration.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecdenoiseError(f"{path} is not a calibration file ({exc}); recalibrate with "
                               "'specdenoise calibrate'") from None


def write_calibration(run, cal: Calibration) -> Path:
    """Write ``cal`` into the run folder atomically."""
    text = cal.to_json()
    return stores.write_file(calibration_path(run), lambda tmp: tmp.write_text(text),
                             overwrite=True)


def consistency(flux, sigma, denoised, sigma_denoised, good=None,
                window: int = LOCAL_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """``(chi2_red, chi2_peak)`` of the input about the denoised spectrum, each (n,) float64.

    All arrays (n, n_wave) in the same units; ``good``: unmasked pixels (None: all). A window
    counts when at least half its pixels are unmasked. NaN for a spectrum without any.
    """
    var = (np.asarray(sigma, np.float64) ** 2 + np.asarray(sigma_denoised, np.float64) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = (np.asarray(flux, np.float64) - denoised) ** 2 / var
    ok = np.isfinite(r2) & (var > 0)
    if good is not None:
        ok &= np.asarray(good, bool)
    r2 = np.where(ok, r2, 0.0)
    n = ok.sum(axis=1)
    chi2 = np.where(n > 0, r2.sum(axis=1) / np.maximum(n, 1), np.nan)
    zero = np.zeros((len(r2), 1))
    csum = np.concatenate([zero, np.cumsum(r2, axis=1)], axis=1)
    ccnt = np.concatenate([zero, np.cumsum(ok, axis=1)], axis=1)
    w = min(window, r2.shape[1])
    wsum, wcnt = csum[:, w:] - csum[:, :-w], ccnt[:, w:] - ccnt[:, :-w]
    local = np.where(2 * wcnt >= w, wsum / np.maximum(wcnt, 1), -np.inf)
    peak = local.max(axis=1)
    return chi2, np.where(np.isfinite(peak), peak, np.nan)


def sky_template(wave, noise: str = "builtin") -> np.ndarray:
    """The sky-line template on the vacuum wavelengths ``wave`` (nm), (n,) float64.

    The sky of the noise model ``noise`` (a config's ``noise`` entry) at the default observing
    conditions, divided by its flux conversion (flux units per exposure), less its running
    median over :data:`SKY_WINDOW` pixels, interpolated onto ``wave`` (0 outside the model's
    range), peak 1; values below :data:`SKY_FLOOR` of the peak are 0.
    """
    from scipy.ndimage import median_filter

    from specdenoise import schema
    from specdenoise.simulate import engine

    model = engine.noise_model(noise)
    out = model.evaluate({c.name: c.value for c in schema.OBSERVING})
    sky = np.asarray(out["sky"], np.float64)[0] / np.asarray(out["conversion"], np.float64)[0]
    lines = sky - median_filter(sky, SKY_WINDOW, mode="nearest")
    t = np.interp(np.asarray(wave, np.float64), np.asarray(model.wave, np.float64), lines,
                  left=0.0, right=0.0)
    peak = float(np.max(np.abs(t)))
    if not peak > 0:
        raise SpecdenoiseError(f"the noise model {noise!r} has no sky lines over "
                               f"{float(np.min(wave)):.1f}-{float(np.max(wave)):.1f} nm")
    t = t / peak
    t[np.abs(t) < SKY_FLOOR] = 0.0
    return t


def sky_excess(flux, sigma, denoised, sigma_denoised, template, good=None) -> np.ndarray:
    """Matched-filter significance (sigma units) of the sky-line ``template`` (n_wave,) in
    ``flux - denoised`` less its running median, weights ``1 / (sigma^2 +
    sigma_denoised^2)``; (n,) float64, NaN for a spectrum without an unmasked pixel the
    template covers (see the module)."""
    from scipy.ndimage import median_filter

    var = np.asarray(sigma, np.float64) ** 2 + np.asarray(sigma_denoised, np.float64) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(var > 0, 1.0 / var, 0.0)
    r = np.asarray(flux, np.float64) - denoised
    ok = np.isfinite(w) & np.isfinite(r)
    if good is not None:
        ok &= np.asarray(good, bool)
    w = np.where(ok, w, 0.0)
    r = np.where(ok, r, 0.0)
    r = r - median_filter(r, size=(1, min(SKY_WINDOW, r.shape[1])), mode="nearest")
    t = np.asarray(template, np.float64)[None, :]
    norm = (w * t * t).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 0, (w * r * t).sum(axis=1) / np.sqrt(norm), np.nan)


def chi2_red(flux, sigma, denoised, sigma_denoised, good=None) -> np.ndarray:
    """Reduced chi2 of the input about the denoised spectrum, (n,) float64 (see the module)."""
    return consistency(flux, sigma, denoised, sigma_denoised, good)[0]


def chi2_binned(flux, sigma, denoised, sigma_denoised, good=None, sizes=BLOCK_SIZES
                ) -> np.ndarray:
    """Reduced chi2 of the whitened residual summed over blocks of each of ``sizes`` pixels,
    (n, len(sizes)) float64 (see the module); a block counts when more than half its pixels
    are unmasked; NaN for a spectrum without one."""
    var = np.asarray(sigma, np.float64) ** 2 + np.asarray(sigma_denoised, np.float64) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (np.asarray(flux, np.float64) - denoised) / np.sqrt(var)
    ok = np.isfinite(u) & (var > 0)
    if good is not None:
        ok &= np.asarray(good, bool)
    u = np.where(ok, u, 0.0)
    n, n_wave = u.shape
    out = np.full((n, len(sizes)), np.nan)
    for j, size in enumerate(sizes):
        m = n_wave // size
        if m < 1:
            continue
        total = u[:, :m * size].reshape(n, m, size).sum(axis=2)
        count = ok[:, :m * size].reshape(n, m, size).sum(axis=2)
        use = 2 * count > size
        k = use.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            chi = np.where(use, total ** 2 / np.maximum(count, 1), 0.0).sum(axis=1) / k
        out[:, j] = np.where(k > 0, chi, np.nan)
    return out


def _standard(values, b, median, spread) -> np.ndarray:
    return (np.asarray(values, np.float64) - np.asarray(median)[b]) / np.asarray(spread)[b]


def _largest(checks: dict[str, np.ndarray]) -> np.ndarray:
    """The largest of the finite ``checks`` per spectrum; NaN where none is finite."""
    stacked = np.stack([np.asarray(u, np.float64) for u in checks.values()])
    with np.errstate(invalid="ignore"):
        best = np.where(np.isfinite(stacked), stacked, -np.inf).max(axis=0)
    return np.where(np.isfinite(best), best, np.nan)


def _sky_score(sky, b, sky_median, sky_spread) -> np.ndarray:
    return np.abs(sky - np.asarray(sky_median)[b]) / np.asarray(sky_spread)[b]


def _robust(values: np.ndarray, b: np.ndarray, n_bins: int) -> tuple[list, list]:
    """Per-bin median and 1.4826 MAD of ``values`` (bins with too few: the nearest bin's)."""
    med: list[float | None] = []
    spread: list[float | None] = []
    for i in range(n_bins):
        c = values[(b == i) & np.isfinite(values)]
        if c.size < MIN_BIN_SPECTRA:
            med.append(None)
            spread.append(None)
            continue
        m = float(np.median(c))
        med.append(m)
        spread.append(max(1.4826 * float(np.median(np.abs(c - m))), 1e-6 * max(abs(m), 1e-6)))
    return _fill_bins(med), _fill_bins(spread)


def coverage(z: np.ndarray) -> dict:
    """1- and 2-sigma coverage and std of the finite values of ``z``."""
    z = z[np.isfinite(z)]
    if not z.size:
        return {"cover1": math.nan, "cover2": math.nan, "std_z": math.nan, "n_pixels": 0}
    a = np.abs(z)
    return {"cover1": float((a <= 1).mean()), "cover2": float((a <= 2).mean()),
            "std_z": float(z.std()), "n_pixels": int(z.size)}


def _miss(stats: dict) -> float:
    """The worst miss of the targets, in units of each target's half-width (0: all met)."""
    worst = 0.0
    for k, (lo, hi) in TARGETS.items():
        v, half = stats[k], (hi - lo) / 2
        worst = max(worst, max(lo - v, v - hi, 0.0) / half)
    return worst


def fit_scale(z_raw: np.ndarray) -> float:
    """The factor s for which z_raw / s best meets :data:`TARGETS`.

    Minimises the worst miss, then the distance of the 1-sigma coverage from 0.683, over a
    fine grid around the 68.3 % quantile of |z_raw|.
    """
    z = z_raw[np.isfinite(z_raw)]
    if not z.size:
        return 1.0
    a = np.sort(np.abs(z))
    s0 = float(np.quantile(a, 0.6827)) or 1.0
    sd = float(z.std())
    best, best_key = s0, (math.inf, math.inf)
    for s in s0 * np.exp(np.linspace(-1.0, 1.0, 201)):
        c1 = np.searchsorted(a, s, side="right") / a.size
        c2 = np.searchsorted(a, 2 * s, side="right") / a.size
        key = (_miss({"cover1": c1, "cover2": c2, "std_z": sd / s}), abs(c1 - 0.6827))
        if key < best_key:
            best, best_key = float(s), key
    return best


def _fill_bins(values: list[float | None]) -> list[float]:
    """Bins without enough data take the nearest bin's value (1.0 if none has one)."""
    have = [i for i, v in enumerate(values) if v is not None]
    if not have:
        return [1.0] * len(values)
    return [values[i] if values[i] is not None
            else values[min(have, key=lambda j: (abs(j - i), j))] for i in range(len(values))]


def guarded(denoised, sigma_denoised, flux, sigma, strength=1.0
            ) -> tuple[np.ndarray, np.ndarray]:
    """The input guard (module doc): ``(D', sigma_denoised')`` from the network's output and
    calibrated sigma and the input and its noise, all (n, n_wave); ``strength`` ``a``, a
    number or (n, 1). A pixel without a finite, positive ``sigma`` or ``sigma_denoised``
    keeps the network's values."""
    d, s = np.asarray(denoised, np.float64), np.asarray(sigma_denoised, np.float64)
    x, e = np.asarray(flux, np.float64), np.asarray(sigma, np.float64)
    a = np.asarray(strength, np.float64)
    v = a * s * s + e * e
    ok = np.isfinite(x) & np.isfinite(v) & (s > 0) & (e > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        w = np.where(ok, a * s * s / v, 0.0)
        s_out = np.where(ok, np.sqrt((1 - w) ** 2 * s * s + w * w * e * e), s)
    return np.where(ok, d + w * (np.where(ok, x, d) - d), d), s_out


def _with_guard(denoised, s_cal, flux, sigma, strength, dtype
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(flux_denoised, sigma_denoised)`` as ``dtype``: the network's own where a spectrum's
    ``strength`` ((n,), from :meth:`Calibration.guard_for`) is 0, :func:`guarded` where not."""
    out_flux, out_sigma = np.array(denoised, dtype), np.array(s_cal, dtype)
    on = np.asarray(strength) > 0
    if on.any():
        out_flux[on], out_sigma[on] = guarded(out_flux[on], out_sigma[on],
                                              np.asarray(flux)[on], np.asarray(sigma)[on],
                                              np.asarray(strength)[on][:, None])
    return out_flux, out_sigma


def _mean_rel(denoised, clean, good) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(good, np.abs(denoised - clean) / clean, np.nan)
    return float(np.nanmean(np.nanmean(r, axis=1))) if np.isfinite(r).any() else math.nan


def fit_guard(denoised, s_cal, flux, sigma, clean, good, b, n_bins: int
              ) -> tuple[list[float], list[tuple[float, float] | None]]:
    """Per S/N bin (``b``: each spectrum's bin, -1 not used): the guard strength of
    :data:`GUARD_STRENGTHS` with the lowest mean |R| on the bin's spectra, 0 where none is
    below the network's own; a bin with fewer than :data:`MIN_BIN_SPECTRA` spectra takes 1
    above the highest bin that has them, else its nearest such bin's choice. Also each weighed
    bin's ``(mean |R|, best guarded mean |R|)``."""
    choice: list[float | None] = []
    weighed: list[tuple[float, float] | None] = []
    for i in range(n_bins):
        rows = b == i
        if rows.sum() < MIN_BIN_SPECTRA:
            choice.append(None)
            weighed.append(None)
            continue
        d, sc, x, e, f, g = (a[rows] for a in (denoised, s_cal, flux, sigma, clean, good))
        plain = _mean_rel(d, f, g)
        tried = [(_mean_rel(guarded(d, sc, x, e, a)[0], f, g), a) for a in GUARD_STRENGTHS]
        best, a = min(tried)
        choice.append(float(a) if best < plain else 0.0)
        weighed.append((plain, best))
    have = [i for i, c in enumerate(choice) if c is not None]
    out = [c if c is not None else 1.0 if not have or i > max(have)
           else choice[min(have, key=lambda j: (abs(j - i), j))] for i, c in enumerate(choice)]
    return out, weighed


def fit_calibration(denoised, sigma_raw, flux, sigma, clean, good, *, method: str,
                    samples: int, false_alarm: float = FALSE_ALARM, edges=SNR_EDGES,
                    dataset: str = "", seed: int = 0,
                    template: np.ndarray | None = None, source=None) -> Calibration:
    """Fit a :class:`Calibration` on in-domain spectra with known truth ``clean``.

    All arrays (n, n_wave) in one flux unit; ``good`` (n, n_wave) bool: unmasked pixels with
    a positive ``clean``. ``sigma_raw`` from :func:`raw_uncertainty`. ``template``: the
    sky-line template on the same pixels (:func:`sky_template`; None: no sky check).
    ``source`` (n,) int: which of several datasets each spectrum comes from (None: one). Each
    S/N bin is fitted on the spectra of the first dataset that has :data:`MIN_BIN_SPECTRA` in
    it: a default validation set keeps the bins it covers, and a wide-S/N set given after it
    only fills the bins it lacks (pooling two S/N populations in one bin would fit neither),
    and the suspect threshold is the first dataset's except in those bins (:func:`_thresholds`).
    """
    if not 0 < false_alarm < 1:
        raise SpecdenoiseError(f"false-alarm rate must be in (0, 1), got {false_alarm}")
    snr = spectrum_snr(flux, sigma, good)
    b = snr_bin(snr, edges)
    n_bins = len(edges) - 1
    src = np.zeros(len(b), int) if source is None else np.asarray(source, int)
    b_fit = np.full(len(b), -1)  # the bin a spectrum is fitted in; -1: not used
    for i in range(n_bins):
        for k in np.unique(src):
            rows = (b == i) & (src == k)
            if rows.sum() >= MIN_BIN_SPECTRA:
                b_fit[rows] = i
                break
    with np.errstate(divide="ignore", invalid="ignore"):
        z_raw = np.where(good, (denoised - clean) / sigma_raw, np.nan)
    rng = np.random.default_rng(seed)
    scales: list[float | None] = []
    for i in range(n_bins):
        rows = b_fit == i
        if not rows.any():
            scales.append(None)
            continue
        z = z_raw[rows].ravel()
        z = z[np.isfinite(z)]
        if z.size > MAX_FIT_PIXELS:
            z = rng.choice(z, MAX_FIT_PIXELS, replace=False)
        scales.append(fit_scale(z))
    scale = _fill_bins(scales)
    s_cal = sigma_raw * np.asarray(scale)[b][:, None]
    chi2, peak = consistency(flux, sigma, denoised, s_cal, good)
    med_f, spread_f = _robust(chi2, b_fit, n_bins)
    pmed_f, pspread_f = _robust(peak, b_fit, n_bins)
    sky = smed_f = sspread_f = stored = None
    if template is not None:
        sky = sky_excess(flux, sigma, denoised, s_cal, template, good)
        smed_f, sspread_f = _robust(sky, b_fit, n_bins)
        stored = [float(f"{v:.4g}") for v in np.asarray(template, np.float64)]
    blocks = chi2_binned(flux, sigma, denoised, s_cal, good)
    bmed, bspread = zip(*(_robust(blocks[:, j], b_fit, n_bins)
                          for j in range(len(BLOCK_SIZES))), strict=True)
    # the checks are scored by the Calibration itself, as apply() scores them; the threshold,
    # guard and table are filled in below
    cal = Calibration(method=method, samples=int(samples), snr_edges=[float(e) for e in edges],
                      scale=scale, chi2_median=med_f, chi2_spread=spread_f,
                      peak_median=pmed_f, peak_spread=pspread_f, threshold=math.nan,
                      false_alarm=float(false_alarm), dataset=dataset,
                      n_spectra=int(len(flux)), seed=int(seed),
                      sky_template=stored, sky_median=smed_f, sky_spread=sspread_f,
                      block_sizes=[int(v) for v in BLOCK_SIZES], block_median=list(bmed),
                      block_spread=list(bspread))
    primary = src == src.min()
    cal.levels = _levels(cal.checks(chi2, peak, snr, sky, blocks), b_fit, primary,
                         false_alarm)
    u = cal.score(chi2, peak, snr, sky, blocks)
    cal.threshold, cal.thresholds = _thresholds(u, b_fit, n_bins, false_alarm, primary)
    cal.guard, weighed = fit_guard(denoised, s_cal, flux, sigma, clean, good, b_fit, n_bins)
    out_flux, out_sigma = _with_guard(denoised, s_cal, flux, sigma,
                                      np.asarray(cal.guard, np.float64)[b], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_out = np.where(good, (out_flux - clean) / out_sigma, np.nan)
    for i in range(n_bins):
        rows = b_fit == i
        row = {"snr_lo": edges[i], "snr_hi": None if math.isinf(edges[i + 1])
               else edges[i + 1], "n_spectra": int(rows.sum()),
               "scale": scale[i], "raw": coverage(z_raw[rows].ravel()),
               "calibrated": coverage(z_raw[rows].ravel() / scale[i]), "guard": cal.guard[i],
               "output": coverage(z_out[rows].ravel()), "threshold": cal.thresholds[i],
               "flagged": float((u[rows] > cal.thresholds[i]).mean()) if rows.any() else None}
        if weighed[i] is not None:
            row["mean_rel_err"], row["mean_rel_err_guarded"] = weighed[i]
        cal.coverage.append(row)
    return cal


def _levels(checks: dict[str, np.ndarray], b_fit, primary, false_alarm: float
            ) -> dict[str, float]:
    """Each check's (1 - false alarm) quantile over the fitting spectra of the first dataset
    (at least 1e-6): in these units every check alone would flag ``false_alarm`` of them, so
    that a check whose standardised values have heavier tails (the block statistics: the
    network's own errors are coherent) does not set the threshold for the others."""
    out = {}
    for name, u in checks.items():
        sel = np.isfinite(u) & (np.asarray(b_fit) >= 0) & np.asarray(primary, bool)
        q = float(np.quantile(u[sel], 1 - false_alarm)) if sel.any() else 1.0
        out[name] = max(q, 1e-6)
    return out


def _thresholds(u, b_fit, n_bins: int, false_alarm: float, primary=None
                ) -> tuple[float, list[float]]:
    """The suspect threshold, overall and per S/N bin: the (1 - false alarm) quantile of the
    scores of the fitting spectra of the first dataset (``primary``, (n,) bool; None: all),
    the population the false-alarm rate is stated for; a bin that only a later dataset covers
    gets the quantile of its own scores when it has :data:`MIN_THRESHOLD_SPECTRA` (else the
    overall one). Pooled into one quantile, the heavy-tailed scores of a wide-S/N set above
    S/N 50 (where the network's own error dominates the residual) raised the threshold of
    every bin from 3.7 to 11.4, and nothing on the default set was flagged any more."""
    ok = np.isfinite(u) & (b_fit >= 0)
    first = ok if primary is None else ok & np.asarray(primary, bool)
    pool = first if first.any() else ok
    overall = float(np.quantile(u[pool], 1 - false_alarm)) if pool.any() else math.inf
    out = []
    for i in range(n_bins):
        mine = ok & (b_fit == i)
        c = u[mine]
        own = (not (first & mine).any()) and c.size >= MIN_THRESHOLD_SPECTRA
        out.append(float(np.quantile(c, 1 - false_alarm)) if own else overall)
    return overall, out


def apply(cal: Calibration | None, denoised, sigma_raw, flux, sigma, good=None) -> dict:
    """``flux_denoised`` and calibrated ``sigma_denoised`` (n, n_wave) float32, ``chi2_red``,
    ``chi2_peak`` and ``sky_excess`` (n,) float32, ``suspect`` (n,) int8 and ``chi2_binned``
    (n, block sizes) float64 (None without a calibration that has block statistics) for
    spectra denoised with :func:`raw_uncertainty`; ``Calibration.scaled_checks`` of these
    says which check flagged a spectrum. ``flux_denoised`` is ``denoised`` where the
    calibration has no input guard for the spectrum's S/N bin and the guarded output (module
    doc) where it has; the checks look at ``denoised`` itself.

    Without a calibration the raw sigma is kept and nothing is flagged (``suspect`` -1);
    without the input's ``sigma`` there is no chi2 (NaN) and no flag; ``sky_excess`` is NaN
    without a calibration that has a sky template. A spectrum's S/N (for its bin) is taken
    from the input, median of flux / sigma; without sigma, the first bin's scale is used.
    """
    n = len(denoised)
    nan = np.full(n, np.nan, np.float32)
    if sigma is None:
        snr = np.full(n, np.nan)
        s_cal = sigma_raw if cal is None else sigma_raw * cal.scale_for(snr)[:, None]
        return {"flux_denoised": np.asarray(denoised, np.float32),
                "sigma_denoised": s_cal.astype(np.float32), "chi2_red": nan,
                "chi2_peak": nan.copy(), "sky_excess": nan.copy(),
                "suspect": np.full(n, UNCHECKED, np.int8), "chi2_binned": None}
    snr = spectrum_snr(flux, sigma, good)
    s_cal = sigma_raw if cal is None else sigma_raw * cal.scale_for(snr)[:, None]
    chi2, peak = consistency(flux, sigma, denoised, s_cal, good)
    template = None if cal is None else cal.template(np.shape(denoised)[-1])
    sky = (np.full(n, np.nan) if template is None
           else sky_excess(flux, sigma, denoised, s_cal, template, good))
    blocks = (None if cal is None or cal.block_sizes is None
              else chi2_binned(flux, sigma, denoised, s_cal, good, cal.block_sizes))
    suspect = (np.full(n, UNCHECKED, np.int8) if cal is None
               else cal.suspect(chi2, peak, snr, sky, blocks))
    out_flux, out_sigma = _with_guard(denoised, s_cal, flux, sigma,
                                      np.zeros(n) if cal is None else cal.guard_for(snr),
                                      np.float32)
    return {"flux_denoised": out_flux,
            "sigma_denoised": out_sigma, "chi2_red": chi2.astype(np.float32),
            "chi2_peak": peak.astype(np.float32), "sky_excess": sky.astype(np.float32),
            "suspect": suspect, "chi2_binned": blocks}


def calibrate(model: torch.nn.Module, data, *, method: str | None = None,
              samples: int = DEFAULT_SAMPLES, max_spectra: int | None = 2000,
              false_alarm: float = FALSE_ALARM, batch_size: int = 256, device=None,
              seed: int = 0) -> Calibration:
    """Fit the calibration of ``model`` on datasets with ``flux``, ``flux_clean``, ``sigma``.

    ``data``: one dataset or a list of them (each S/N bin fitted on the first that has
    spectra in it: a default validation set and then a wide-S/N one give every S/N bin its
    own scale, guard and threshold; see :func:`fit_calibration`); reads the first
    ``max_spectra`` spectra (None: all) of each, chunk by chunk; in-domain data the network
    was not trained on (its validation sets). The sky template comes from the first.
    """
    method = method or default_method(model)
    check_method(model, method, samples)
    paths = list(data) if isinstance(data, list | tuple) else [data]
    if not paths:
        raise SpecdenoiseError("no dataset to calibrate on")
    parts: dict[str, list] = {k: [] for k in ("den", "raw", "flux", "sigma", "clean", "good",
                                               "source")}
    template = None
    for i, path in enumerate(paths):
        info = tdata.inspect_store(path, tdata.VAL_VARS,
                                   n_wave=getattr(model, "n_wave", RED_MR_NPIX))
        group = tdata.open_group(info.path, info.storage_options)
        if i == 0:
            template = _data_template(group, info)
        n = 0
        for chunk in range(info.n_chunks):
            if max_spectra is not None and n >= max_spectra:
                break
            a = tdata.read_chunk(group, info, chunk, tdata.VAL_VARS)
            take = (len(a["flux"]) if max_spectra is None
                    else min(len(a["flux"]), max_spectra - n))
            a = {k: v[:take] for k, v in a.items()}
            den, raw = raw_uncertainty(model, a["flux"], a["sigma"], method=method,
                                       samples=samples, seed=tdata.key(seed + i, chunk),
                                       batch_size=batch_size, device=device)
            for k, v in (("den", den), ("raw", raw), ("flux", a["flux"]),
                         ("sigma", a["sigma"]), ("clean", a["flux_clean"]),
                         ("good", a["good"] & (a["flux_clean"] > 0)),
                         ("source", np.full(take, i))):
                parts[k].append(v)
            n += take
    n = sum(len(v) for v in parts["den"])
    if n < MIN_BIN_SPECTRA:
        raise SpecdenoiseError(f"{', '.join(map(str, paths))}: {n} spectra are too few to "
                               f"calibrate on (at least {MIN_BIN_SPECTRA}; a few hundred give "
                               "a stable threshold)")
    p = {k: np.concatenate(v) for k, v in parts.items()}
    return fit_calibration(p["den"], p["raw"], p["flux"], p["sigma"], p["clean"], p["good"],
                           method=method, samples=samples, false_alarm=false_alarm,
                           dataset=", ".join(map(str, paths)), seed=seed, template=template,
                           source=p["source"])


def _data_template(group, info) -> np.ndarray | None:
    """The sky-line template on a dataset's wavelengths, from the noise model its simulation
    config names (the built-in one when that cannot be built here); None without wavelengths."""
    import logging

    try:
        wave = np.asarray(group["wave"][:], np.float64)
    except KeyError:
        return None
    if wave.shape != (info.n_wave,):
        return None
    noise = "builtin"
    cfg = group.attrs.get("config")
    try:
        cfg = json.loads(cfg) if isinstance(cfg, str) else cfg
        noise = cfg.get("noise") or "builtin" if isinstance(cfg, dict) else "builtin"
    except ValueError:
        pass
    try:
        return sky_template(wave, str(noise))
    except (SpecdenoiseError, OSError, ValueError) as exc:
        if noise == "builtin":
            raise
        logging.getLogger("specdenoise.calibrate").warning(
            "noise model %r unavailable here (%s): the sky check uses the built-in sky", noise,
            exc)
        return sky_template(wave, "builtin")


def calibrate_run(run, data, *, method: str | None = None, samples: int = DEFAULT_SAMPLES,
                  max_spectra: int | None = 2000, false_alarm: float = FALSE_ALARM,
                  batch_size: int = 256, device=None, seed: int = 0) -> Calibration:
    """(Re)calibrate the trained run ``run`` on ``data`` (one dataset or a list) and write its
    calibration file."""
    from specdenoise.train.checkpoint import load_model

    model, _ = load_model(run, device=device)
    cal = calibrate(model, data, method=method, samples=samples, max_spectra=max_spectra,
                    false_alarm=false_alarm, batch_size=batch_size, seed=seed)
    write_calibration(run, cal)
    return cal
