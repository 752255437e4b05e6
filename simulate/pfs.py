"""The PFS instrument: detector pixel grid, telescope, fibre, red-arm (medium resolution) camera.

What lives here
---------------
* :func:`pixel_wave` -- the red-arm detector grid, 4096 pixels from 710 nm, 175/4096 nm each.
* :class:`Instrument` -- the numbers the noise model needs (telescope, field-angle nodes, fibre,
  camera, detector, throughput nodes), with :data:`PFS_RED_MR`, the project's own medium-resolution
  red-arm description (values from ``DESIGN.md``; the coarse throughput nodes and the camera's
  spot and scattering numbers were read off the PFS ETC instrument file ``PFS.redMR.20240714``).
* :func:`read_instrument_file` -- parser for the PFS ETC instrument-file format (``OPTICS``,
  ``SPOT``, ``VIGNET``, ``FIBER``, ``PARAM``, ``CAMERA``, ``NLINES``, ``THRPUT`` ... ``D``).
* Optics formulas: effective area, point-source fibre aperture fraction (encircled energy),
  spectrograph point-spread function through its modulation transfer function.

The optics follow the PFS ETC (C. Hirata, ``gsetc.c``, Subaru-PFS/spt_ExposureTimeCalculator):
Kolmogorov seeing MTF, leading-order diffraction, Gaussian telescope spot, circular fibre
aperture (a Hankel-transform overlap integral); a spectrograph PSF made of the fibre image (disc),
the pixel (box), the camera spot (Gaussian) and grating scattering (Lorentzian).  The silicon
defocus term of the ETC (a few per cent of a pixel in the red arm) is left out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy.special import j1

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate.constants import ARCSEC_PER_URAD

#: red-arm medium-resolution grid: first pixel (nm), last edge (nm), pixel count
RED_MR_LMIN = 710.0
RED_MR_LMAX = 885.0
RED_MR_NPIX = 4096
#: pixel width, nm (= 0.042724609375 exactly)
RED_MR_DLAMBDA = (RED_MR_LMAX - RED_MR_LMIN) / RED_MR_NPIX


def pixel_wave(npix: int = RED_MR_NPIX, lmin: float = RED_MR_LMIN,
               lmax: float = RED_MR_LMAX) -> np.ndarray:
    """Vacuum wavelength of each detector pixel, nm, shape (npix,).

    ``lmin + i * (lmax - lmin) / npix`` for ``i = 0 .. npix-1``: exactly the wavelengths of the
    PFS ETC's S/N (``snc``) tables.  The ETC's noise tables print the pixel *centre*
    ``lmin + (i + 0.5) * dl`` instead; both label the same pixels.
    """
    return lmin + np.arange(npix, dtype=np.float64) * ((lmax - lmin) / npix)


@dataclasses.dataclass(frozen=True)
class Instrument:
    """Telescope + fibre + one spectrograph arm, in the units of the PFS ETC instrument file.

    Field-angle nodes are equally spaced from 0 to ``field_radius`` degrees (5 nodes).
    """

    d_outer: float  #: primary diameter, m
    central_obstruction: float  #: linear obscuration ratio
    field_radius: float  #: field radius, degrees
    efl: tuple  #: effective focal length at the 5 field nodes, m
    spot_rms: tuple  #: telescope rms spot per axis at the field nodes, um
    vignetting: tuple  #: vignetting factor at the field nodes
    fiber_radius: float  #: fibre entrance radius, um
    lmin: float  #: arm start, nm
    lmax: float  #: arm end, nm
    npix: int  #: pixels along the dispersion
    width: int  #: extraction width, pixels
    fratio: float  #: camera f-ratio
    ccd_thickness: float  #: um
    pixel_size: float  #: um
    ccd_temperature: float  #: K
    camera_rms: float  #: camera spot rms, um
    fiber_image: float  #: fibre image diameter on the detector, um
    dark: float  #: dark current, e-/pixel/s
    read_noise: float  #: e-/pixel
    trace_sep: float  #: trace spacing, um
    nlines: float  #: effective number of grating lines (sets grating scattering)
    thr_wave: tuple  #: throughput nodes, nm
    thr_total: tuple  #: total throughput (telescope..detector QE) at the nodes
    thr_adjust: float = 1.20  #: empirical throughput factor for MR red (PFS ETC)
    noise_adjust: float = 1.015  #: empirical noise-variance factor A for MR red (PFS ETC)

    @property
    def dlambda(self) -> float:
        """Pixel width, nm."""
        return (self.lmax - self.lmin) / self.npix

    @property
    def area(self) -> float:
        """Unvignetted collecting area pi/4 D^2 (1 - eps^2), m^2."""
        return np.pi / 4.0 * self.d_outer**2 * (1.0 - self.central_obstruction**2)

    def wave(self) -> np.ndarray:
        """Pixel wavelengths of this arm, nm (see :func:`pixel_wave`)."""
        return pixel_wave(self.npix, self.lmin, self.lmax)


#: The project's own description of the PFS medium-resolution red arm.
PFS_RED_MR = Instrument(
    d_outer=8.3, central_obstruction=0.22, field_radius=0.65,
    efl=(23.39, 23.92, 24.48, 25.07, 25.68),
    spot_rms=(7.1, 8.4, 9.7, 11.2, 13.2),
    vignetting=(0.94, 0.90, 0.84, 0.78, 0.71),
    fiber_radius=63.5,
    lmin=RED_MR_LMIN, lmax=RED_MR_LMAX, npix=RED_MR_NPIX, width=5,
    fratio=1.10, ccd_thickness=250.0, pixel_size=15.0, ccd_temperature=173.0,
    camera_rms=14.1, fiber_image=47.0, dark=1.0e-4, read_noise=4.0, trace_sep=100.0,
    nlines=5.57e4,
    # coarse whole-chain throughput (incl. QE), a node every ~20 nm
    thr_wave=(710.0, 725.0, 745.0, 765.0, 780.0, 800.0, 820.0, 840.0, 860.0, 885.0),
    thr_total=(0.2415, 0.2500, 0.2442, 0.2530, 0.2432, 0.2426, 0.2374, 0.2264, 0.2154, 0.2072),
)


def field_interp(nodes, field_angle, field_radius: float) -> np.ndarray:
    """Linear interpolation over the 5 equally spaced field-angle nodes, clamped at the ends.

    ``field_angle`` in degrees (scalar or array); returns an array of the same shape.
    """
    x = np.asarray(field_angle, dtype=np.float64) * (4.0 / field_radius)
    return np.interp(x, np.arange(5.0), np.asarray(nodes, dtype=np.float64))


def throughput(inst: Instrument, wave) -> np.ndarray:
    """Whole-chain throughput at ``wave`` (nm), including the empirical MR factor.

    Linear between nodes, constant beyond them (as the ETC).
    """
    return inst.thr_adjust * np.interp(np.asarray(wave, dtype=np.float64),
                                       np.asarray(inst.thr_wave), np.asarray(inst.thr_total))


def fiber_radius_arcsec(inst: Instrument, field_angle) -> np.ndarray:
    """Fibre entrance radius on the sky, arcsec: r / EFL (um / m = urad)."""
    return inst.fiber_radius / field_interp(inst.efl, field_angle, inst.field_radius) \
        * ARCSEC_PER_URAD


# --- point source in a fibre -------------------------------------------------------------------

_EE_NU = 50
_EE_DU = 0.024  # cycles per arcsec; 50 points reach 1.2 /arcsec


def encircled_energy(inst: Instrument, wave, seeing, field_angle) -> np.ndarray:
    """Fraction of a point source's light entering the fibre (centred), dimensionless.

    Hankel-transform overlap of the circular aperture (radius R) with the telescope PSF:
    ``EE = sum_u 2 pi R du J1(2 pi u R) G(u)``, ``G(u) = exp(-(2 pi u sigma)^2/2)
    exp(-(u/u_s)^(5/3)) exp(-4 u theta_D / pi)`` -- Gaussian telescope spot, Kolmogorov seeing
    (Fried 1966: long-exposure MTF ``exp(-3.44 (u lambda / r0)^(5/3))``; here the ETC's
    parameterisation ``u_s = 0.465 / FWHM_800 (lambda/800)^0.2`` arcsec^-1) and the leading term of
    the annular-pupil diffraction MTF.  After the PFS ETC, ``gsGeometricThroughput``.

    Parameters
    ----------
    wave : (m,) nm
    seeing, field_angle : scalars or (n,) arrays; FWHM at 800 nm in arcsec, degrees
    Returns
    -------
    (n, m) array (``n = 1`` for scalar conditions)
    """
    wave = np.atleast_1d(np.asarray(wave, dtype=np.float64))
    seeing = np.atleast_1d(np.asarray(seeing, dtype=np.float64))[:, None, None]
    fa = np.atleast_1d(np.asarray(field_angle, dtype=np.float64))
    efl = field_interp(inst.efl, fa, inst.field_radius)[:, None, None]
    sigma = field_interp(inst.spot_rms, fa, inst.field_radius)[:, None, None] \
        * ARCSEC_PER_URAD / efl
    radius = inst.fiber_radius / efl * ARCSEC_PER_URAD
    u = ((np.arange(_EE_NU) + 0.5) * _EE_DU)[None, None, :]
    k = 2.0 * np.pi * u
    theta_d = 1e-3 * wave / inst.d_outer / (1.0 - inst.central_obstruction) * ARCSEC_PER_URAD
    u_s = 0.465 / seeing * (wave[None, :, None] / 800.0) ** 0.2
    g = np.exp(-0.5 * (k * sigma) ** 2 - (u / u_s) ** (5.0 / 3.0)
               - 4.0 / np.pi * u * theta_d[None, :, None])
    return np.sum(2.0 * np.pi * radius * _EE_DU * j1(k * radius) * g, axis=-1)


def effective_area(inst: Instrument, wave, field_angle) -> np.ndarray:
    """Collecting area x vignetting x throughput, m^2; shape (n, m) for (n,) field angles."""
    vig = np.atleast_1d(field_interp(inst.vignetting, field_angle, inst.field_radius))
    return inst.area * vig[:, None] * throughput(inst, wave)[None, :]


# --- spectrograph PSF --------------------------------------------------------------------------

_MTF_NU = 1000
_MTF_DU = 0.005  # cycles per pixel; the grid reaches 5 /pixel


def spectro_mtf(inst: Instrument, wave) -> tuple[np.ndarray, np.ndarray]:
    """Spectrograph MTF in the dispersion direction, per wavelength; returns ``(u, mtf)``.

    Product of the transforms of the fibre image (a disc: ``2 J1(pi d u) / (pi d u)``), the pixel
    (``sinc``), the camera spot (Gaussian) and grating scattering (``exp(-lambda / (dl N) |u|)``,
    a Lorentzian line wing from a grating with N effective lines).  ``u`` in cycles/pixel, shape
    (1000,); ``mtf`` shape (m, 1000).  After the PFS ETC, ``gsSpectroMTF``.
    """
    wave = np.atleast_1d(np.asarray(wave, dtype=np.float64))
    u = (np.arange(_MTF_NU) + 0.5) * _MTF_DU
    d = inst.fiber_image / inst.pixel_size
    x = np.pi * d * u
    disc = 2.0 * j1(x) / x
    sig = inst.camera_rms / inst.pixel_size
    base = disc * np.sinc(u) * np.exp(-2.0 * np.pi**2 * sig**2 * u**2)
    scatter = np.exp(-np.outer(wave / (inst.dlambda * inst.nlines), u))
    return u, base[None, :] * scatter


def psf_window(inst: Instrument, wave, pos, npix: int) -> np.ndarray:
    """Fraction of a feature's light in pixels ``0 .. npix-1`` of a window, shape (m, npix).

    ``pos`` (m,) is the feature centre in window pixels.  Inverse cosine transform of the MTF,
    written as two matrix products so no (m, u, npix) array is formed.
    """
    wave = np.atleast_1d(np.asarray(wave, dtype=np.float64))
    pos = np.broadcast_to(np.asarray(pos, dtype=np.float64), wave.shape)
    u, mtf = spectro_mtf(inst, wave)
    ip = np.arange(npix, dtype=np.float64)
    cu, su = np.cos(2 * np.pi * np.outer(u, ip)), np.sin(2 * np.pi * np.outer(u, ip))
    ang = 2 * np.pi * pos[:, None] * u[None, :]
    return 2.0 * _MTF_DU * ((mtf * np.cos(ang)) @ cu + (mtf * np.sin(ang)) @ su)


def trace_fraction(inst: Instrument, wave, neighbours: int = 0) -> np.ndarray:
    """Fraction of light inside the ``width``-pixel extraction box across the trace, (m,).

    ``neighbours = 1`` also adds what the two adjacent fibres' traces (``trace_sep`` away) spill
    into the box -- the ETC counts that for the sky, which every fibre sees.
    """
    wave = np.atleast_1d(np.asarray(wave, dtype=np.float64))
    total = np.zeros(wave.shape)
    sep = inst.trace_sep / inst.pixel_size
    for j in range(-neighbours, neighbours + 1):
        total += psf_window(inst, wave, 0.5 * (inst.width - 1) + j * sep, inst.width).sum(axis=1)
    return total


# --- instrument-file parser --------------------------------------------------------------------


# empirical per-arm factors (blue, red, near-IR) the PFS ETC applies, from past observations
_THR_ADJUST_LR = (1.08, 1.05, 1.24)
_THR_ADJUST_MR = (1.08, 1.20, 1.24)
_NOISE_ADJUST_LR = (0.752, 0.722, 2.694)
_NOISE_ADJUST_MR = (0.752, 1.015, 2.694)


def _floats(words, n, key, path):
    try:
        vals = [float(w) for w in words[:n]]
    except ValueError:
        vals = []
    if len(vals) != n:
        raise SpecdenoiseError(
            f"{path}: malformed {key} line (expected {n} numbers); "
            "is this a PFS ETC instrument file?")
    return vals


def read_instrument_file(path, arm: int = 1) -> Instrument:
    """Parse a PFS ETC instrument file (e.g. ``PFS.redMR.20240714.dat``) for one arm.

    Format (one keyword a line, ``#`` comments): ``OPTICS D eps field_radius EFL x5``,
    ``SPOT rms x5``, ``VIGNET v x5`` (optional, default 1), ``FIBER r_um``, ``ARMS n``,
    ``PARAM arm lmin lmax npix width``, ``CAMERA arm f/ thick pix T rms fibre_img dark read sep``,
    ``NLINES arm n``, ``MEDIUM_RESOLUTION 0|1``, then ``THRPUT`` followed by rows
    ``lambda t1 .. t5 [total]`` with a line ``D`` closing each arm's block.  The throughput used
    is the product of the five factors, as the ETC does.  ``arm`` is the ETC's internal arm index
    (0 blue, 1 red, 2 near-IR).  A missing or malformed file raises :class:`SpecdenoiseError`.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SpecdenoiseError(f"cannot read instrument file {path}: {exc.strerror}") from None
    fields: dict = {"vignetting": (1.0,) * 5}
    param = camera = None
    nlines = 1e12
    blocks: list[list[tuple[float, float]]] = [[]]
    mr = False
    it = iter(lines)
    for line in it:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        key, rest = words[0], words[1:]
        if key == "OPTICS":
            v = _floats(rest, 8, key, path)
            fields.update(d_outer=v[0], central_obstruction=v[1], field_radius=v[2],
                          efl=tuple(v[3:8]))
        elif key == "SPOT":
            fields["spot_rms"] = tuple(_floats(rest, 5, key, path))
        elif key == "VIGNET":
            fields["vignetting"] = tuple(_floats(rest, 5, key, path))
        elif key == "FIBER":
            fields["fiber_radius"] = _floats(rest, 1, key, path)[0]
        elif key == "MEDIUM_RESOLUTION":
            mr = bool(int(_floats(rest, 1, key, path)[0]))
        elif key == "PARAM" and rest and rest[0] == str(arm):
            param = _floats(rest, 5, key, path)
        elif key == "CAMERA" and rest and rest[0] == str(arm):
            camera = _floats(rest, 10, key, path)
        elif key == "NLINES" and rest and rest[0] == str(arm):
            nlines = _floats(rest, 2, key, path)[1]
        elif key == "THRPUT":
            for row in it:
                cols = row.split()
                if not cols:
                    continue
                if cols[0] == "D":
                    blocks.append([])
                    continue
                v = _floats(cols, 6, "THRPUT", path)
                blocks[-1].append((v[0], float(np.prod(v[1:6]))))
    missing = [k for k in ("d_outer", "spot_rms", "fiber_radius") if k not in fields]
    if param is None:
        missing.append(f"PARAM {arm}")
    if camera is None:
        missing.append(f"CAMERA {arm}")
    if len(blocks) <= arm or not blocks[arm]:
        missing.append(f"THRPUT block {arm}")
    if missing:
        raise SpecdenoiseError(
            f"{path}: not a usable PFS ETC instrument file, missing {', '.join(missing)}")
    thr = np.array(blocks[arm])
    return Instrument(
        **fields, lmin=param[1], lmax=param[2], npix=int(param[3]), width=int(param[4]),
        fratio=camera[1], ccd_thickness=camera[2], pixel_size=camera[3],
        ccd_temperature=camera[4], camera_rms=camera[5], fiber_image=camera[6], dark=camera[7],
        read_noise=camera[8], trace_sep=camera[9], nlines=nlines,
        thr_wave=tuple(thr[:, 0]), thr_total=tuple(thr[:, 1]),
        thr_adjust=(_THR_ADJUST_MR if mr else _THR_ADJUST_LR)[min(arm, 2)],
        noise_adjust=(_NOISE_ADJUST_MR if mr else _NOISE_ADJUST_LR)[min(arm, 2)],
    )
