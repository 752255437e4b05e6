"""The calibration distortion and the median normalisation in torch, for the training loader.

The same maths as :mod:`specdenoise.simulate.calibration` (the NumPy definition; tests tie the
two together on the same inputs), on batches of float32 tensors, on any device, with draws
from a ``torch.Generator``.

What a training spectrum looks like (see :func:`augment`): the dataset's ``flux_clean`` and
``sigma`` already carry the simulation's distortion ``d_sim``; a fresh noise draw gives the
input. With ``distortion="stored"`` that distortion is kept as it is; with ``"fresh"`` it is
replaced by a new draw ``d_new`` (multiply by ``d_new / d_sim``). Either way the input carries
exactly one distortion, of at most its amplitude. The target keeps the input's distortion
(pure denoising) or, with ``target_distortion=False``, has none (denoising plus calibration).
"""

from __future__ import annotations

import numpy as np
import torch

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate import calibration as ref
from specdenoise.train.config import DISTORTIONS

MEDIAN = ref.MEDIAN


def basis(wave: np.ndarray | int, order: int = ref.ORDER) -> torch.Tensor:
    """P_1..P_order over the detector, (order, n_wave) float32.

    ``wave``: the pixel wavelengths (nm), or a pixel count for an evenly spaced grid.
    """
    if np.ndim(wave) == 0:
        wave = np.arange(int(wave), dtype=np.float64)
    return torch.as_tensor(ref.distortion_basis(wave, order), dtype=torch.float32)


def median(x: torch.Tensor) -> torch.Tensor:
    """Row medians (b, 1) as NumPy defines them (mean of the two middle values for even n)."""
    n = x.shape[1]
    s = x.sort(dim=1).values
    return 0.5 * (s[:, (n - 1) // 2: (n - 1) // 2 + 1] + s[:, n // 2: n // 2 + 1])


def norm_factor(x: torch.Tensor, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row factor (b, 1) that brings the median of ``x`` to 0.5 (see the NumPy one)."""
    med = median(x)
    bad = ~(med > 0)
    if fallback is not None and bool(bad.any()):
        rows = bad[:, 0]
        med[rows] = median(fallback[rows])
        bad = ~(med > 0)
    return torch.where(bad, torch.ones_like(med), med / MEDIAN)


def normalise(x: torch.Tensor, *others: torch.Tensor, fallback: torch.Tensor | None = None):
    """Divide ``x`` and ``others`` by the factor that brings each row of ``x`` to median 0.5.

    Returns ``(factor (b, 1), x / factor, *others / factor)``.
    """
    factor = norm_factor(x, fallback)
    return (factor, x / factor, *(o / factor for o in others))


def scale(raw_coef: torch.Tensor, amp: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Distortion d (b, n_wave) from raw coefficients (b, L) scaled to max |d - 1| = amp (b,)."""
    poly = raw_coef @ basis
    peak = poly.abs().amax(dim=1, keepdim=True)
    c = torch.where(peak > 0, amp[:, None] / peak.clamp_min(1e-30), torch.zeros_like(peak))
    return 1.0 + c * poly


def draw(b: int, basis: torch.Tensor, generator: torch.Generator,
         amplitude: float) -> torch.Tensor:
    """A fresh distortion (b, n_wave): amplitudes first, then raw coefficients."""
    dev = basis.device
    amp = torch.rand(b, generator=generator, device=dev) * amplitude
    raw = torch.randn((b, basis.shape[0]), generator=generator, device=dev)
    return scale(raw, amp, basis)


def distortion(coef: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Calibration factor (b, n_wave) from the scaled coefficients a dataset stores (b, L)."""
    return 1.0 + coef @ basis


def augment(clean: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator, *,
            basis: torch.Tensor, distortion_mode: str = "stored", distortion_max: float = 0.02,
            stored: torch.Tensor | None = None,
            target_distortion: bool = True) -> dict[str, torch.Tensor]:
    """One training view of stored clean spectra: fresh noise, one distortion, normalisation.

    ``clean``, ``sigma`` (b, n_wave) float32 as stored (they carry the simulation's distortion);
    ``stored`` (b, n_wave): that distortion, needed for ``"fresh"`` and for
    ``target_distortion=False`` (None: the store does not record it). Draws from ``generator``
    in a fixed order: noise, then (``"fresh"``) the new distortion. Returns normalised ``x``
    (input), ``y`` (target) and ``sigma`` (of ``x``).
    """
    if distortion_mode not in DISTORTIONS:
        raise SpecdenoiseError(f"unknown distortion mode {distortion_mode!r}; choose one of "
                               f"{', '.join(DISTORTIONS)}")
    if stored is None and (distortion_mode == "fresh" or not target_distortion):
        raise SpecdenoiseError("this dataset does not record its calibration distortion "
                               "(calib_c* coordinates); re-simulate it, or train with "
                               "distortion 'stored' and the distortion kept in the target")
    dev = clean.device
    noise = torch.randn(clean.shape, generator=generator, device=dev)
    observed = torch.addcmul(clean, sigma, noise, out=noise)
    ratio = None  # what multiplies the stored spectra
    if distortion_mode == "fresh":
        ratio = draw(clean.shape[0], basis.to(dev), generator, distortion_max) / stored
        observed.mul_(ratio)
    clean_in = clean * ratio if ratio is not None else clean
    factor = norm_factor(observed, fallback=clean_in)
    inv = factor.reciprocal()
    if target_distortion:
        y = clean_in * inv
    else:
        y = clean / stored * inv
    s = sigma * (ratio * inv if ratio is not None else inv)
    return {"x": observed.mul_(inv), "y": y, "sigma": s}
