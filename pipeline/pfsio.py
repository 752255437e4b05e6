"""Read and write Subaru PFS data products (pfsArm, pfsMerged, pfsObject) and plain FITS spectra.

Only ``astropy.io.fits`` is used (the PFS datamodel package pulls in the LSST stack). The layouts
follow the PFS datamodel (``datamodel.txt`` of Subaru-PFS/datamodel):

- **pfsArm / pfsMerged** (a "fiber array set"): HDUs ``FIBERID`` (nFiber,), ``WAVELENGTH``
  (nFiber, nPix) or one shared (nPix,) grid, nm in vacuum; ``FLUX``, ``MASK``, ``SKY``, ``NORM``
  (nFiber, nPix); ``COVAR`` (nFiber, 3, nPix): the variance, then the covariance with the pixel
  one and two away; ``CONFIG`` (visit, arm, spectrograph, pfsDesignId ...), ``NOTES``. The mask
  plane numbers are ``MP_<NAME>`` keys of the primary header. pfsArm FLUX is electrons per
  pixel, pfsMerged electrons per nm. The denoiser sees ``FLUX / NORM`` (variance / NORM**2).
- **pfsObject** (and pfsSingle, the same format): one spectrum; ``FLUX``, ``MASK``, ``SKY``
  (nPix,) and ``COVAR`` (3, nPix) whose headers carry a linear wavelength WCS (``CTYPE1 =
  'WAVE'``, ``CUNIT1 = 'm'``). The datamodel package maps array element i (0-based) to
  ``CRVAL1 + (i + 2 - CRPIX1) * CDELT1`` (its ``WavelengthArray.fromFitsHeader``), one pixel
  above the FITS standard's ``i + 1``; files it writes are read with its convention. Flux in nJy.
  The mask planes are ``MP_<NAME>`` keys of the MASK header. ``OBSERVATIONS`` lists the visits
  (fiberId ...), ``TARGET`` the photometry; the identifiers are in the file name
  (``pfsObject-catId-tract-patch-objId-nVisit-pfsVisitHash.fits``).

Masked pixels are those with any bit of :data:`UNTRUSTED_PLANES` set (plus non-finite flux or
variance, and non-positive variance or NORM): the denoiser is told not to trust them and they
come back with their mask bits. A file is refused with one line for a missing HDU, a missing
variance, an arm other than the medium-resolution red arm ``m``, a fiber that is not there, or
wavelengths in air.

Plain FITS spectra (not a PFS product) are read by
:func:`specdenoise.train.infer.read_spectrum_file`, plus their wavelengths from a 1-D WCS
(FITS convention) or a table column with a unit, and their medium (``CTYPE1 = 'AWAV'``,
``AIRORVAC``, ``VACUUM``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specdenoise.errors import SpecdenoiseError

#: mask planes of the datamodel ("Pixel mask values"), in the order of their bit numbers; a file
#: normally records the numbers in ``MP_<NAME>`` header keys, which take precedence
MASK_PLANES = ("BAD", "SAT", "INTRP", "CR", "EDGE", "DETECTED", "DETECTED_NEGATIVE", "SUSPECT",
               "NO_DATA", "UNMASKEDNAN", "BAD_FLAT", "FIBERTRACE", "BAD_SKY", "BAD_FLUXCAL",
               "OVERLAP")
#: planes whose pixels the denoiser does not trust (DETECTED, FIBERTRACE, OVERLAP describe a
#: pixel without condemning it; INTRP pixels hold interpolated values, not measurements)
UNTRUSTED_PLANES = ("BAD", "SAT", "INTRP", "CR", "EDGE", "SUSPECT", "NO_DATA", "UNMASKEDNAN",
                    "BAD_FLAT", "BAD_SKY", "BAD_FLUXCAL")
#: plane this tool adds to pixels of an output that were not denoised (outside the model's range)
NOT_DENOISED_PLANE = "NOT_DENOISED"
#: the store's mask bits (:data:`specdenoise.schema.MASK_BITS`) and the PFS plane of each
STORE_TO_PFS = {"no_data": "NO_DATA", "bad_pixel": "BAD", "sky_residual": "BAD_SKY"}

#: PFS arms: letter -> what it is
ARMS = {"b": "the blue arm", "r": "the low-resolution red arm", "m": "the medium-resolution "
        "red arm", "n": "the near-infrared arm"}
MR_ARM = "m"

FIBER_HDUS = ("FIBERID", "WAVELENGTH", "FLUX", "MASK", "COVAR")
OBJECT_HDUS = ("FLUX", "MASK", "COVAR")
_PRODUCT_NAME = re.compile(r"^(pfsArm|pfsMerged|pfsObject|pfsSingle|pfsCalibrated|pfsCoadd|"
                           r"pfsConfig|pfsDesign)[-_]")
_ARM_NAME = re.compile(r"^pfsArm-(\d+)-([a-z])(\d)")
_OBJECT_NAME = re.compile(r"^pfs(?:Object|Single)-(\d+)-(\d+)-([^-]+)-([0-9a-fA-F]{16})-(\d+)")


@dataclass
class Spectra:
    """Spectra read from a file, with what is needed to write an output in its layout.

    ``wave`` (n, n_pix) float64, nm in vacuum (None: the file gives none); ``flux`` (n, n_pix)
    float64 in the file's unit, divided by NORM for a fiber array set; ``covar`` (n, 3, n_pix)
    the datamodel's covariance rows in that unit squared, or None; ``bad`` (n, n_pix) pixels not
    to trust; ``mask`` (n, n_pix) int64 the file's bits or None; ``planes`` plane name -> bit;
    ``rows`` the file rows read; ``ids`` identifiers per spectrum (fiberId, objId ...);
    ``per_pixel``: flux per pixel (pfsArm) rather than per nm; ``norm`` (n, n_pix) or None.
    """

    path: Path
    product: str
    wave: np.ndarray | None
    flux: np.ndarray
    covar: np.ndarray | None
    bad: np.ndarray
    mask: np.ndarray | None = None
    planes: dict = field(default_factory=dict)
    rows: np.ndarray | None = None
    ids: dict = field(default_factory=dict)
    per_pixel: bool = False
    norm: np.ndarray | None = None

    @property
    def is_pfs(self) -> bool:
        return self.product in ("pfsArm", "pfsMerged", "pfsObject")

    @property
    def sigma(self) -> np.ndarray | None:
        """1-sigma noise (n, n_pix) from the variance row, NaN where it is not positive."""
        if self.covar is None:
            return None
        v = self.covar[:, 0]
        with np.errstate(invalid="ignore"):
            return np.where(v > 0, np.sqrt(np.where(v > 0, v, 1.0)), np.nan)

    def labels(self) -> list[str]:
        """One short name per spectrum for messages (fiberId, objId, or the row number)."""
        if "fiberId" in self.ids and self.product != "pfsObject":
            return [f"fiberId {int(f)}" for f in self.ids["fiberId"]]
        if "objId" in self.ids:
            return [f"objId {int(o)}" for o in self.ids["objId"]]
        return [f"spectrum {i}" for i in range(len(self.flux))]


def product_of(path: Path, names: set[str]) -> str | None:
    """The PFS product a FITS file is, from its name or (renamed files) its HDU names."""
    m = _PRODUCT_NAME.match(path.name)
    if m:
        return {"pfsSingle": "pfsObject"}.get(m.group(1), m.group(1))
    if {"FIBERID", "FLUX"} <= names and ("COVAR" in names or "WAVELENGTH" in names):
        return "pfsMerged" if "CONFIG" in names and "NORM" not in names else "pfsArm"
    if {"FLUX", "OBSERVATIONS"} <= names:
        return "pfsObject"
    return None


def is_pfs_file(path) -> bool:
    """Is ``path`` a PFS data product (by its name, else its HDU names)? False when unreadable
    (the reader then says why)."""
    from astropy.io import fits

    path = Path(path)
    if _PRODUCT_NAME.match(path.name):
        return True
    try:
        with fits.open(path, memmap=False) as hdul:
            return product_of(path, {h.name for h in hdul}) is not None
    except Exception:
        return False


def mask_planes(header) -> dict[str, int]:
    """Plane name -> bit number from ``MP_<NAME>`` keys, or the datamodel's order without them."""
    planes = {k[3:]: int(v) for k, v in header.items() if k.startswith("MP_")}
    return planes or {name: bit for bit, name in enumerate(MASK_PLANES)}


def untrusted_bits(planes: dict[str, int]) -> int:
    """The OR of the bits of :data:`UNTRUSTED_PLANES` a file defines."""
    bits = 0
    for name in UNTRUSTED_PLANES:
        if name in planes:
            bits |= 1 << planes[name]
    return bits


def _hdu(hdul, name: str, path: Path, product: str, *, what: str = ""):
    if name not in hdul:
        have = ", ".join(h.name for h in hdul)
        raise SpecdenoiseError(f"{path}: a {product} file needs HDU {name}{what} and this one has "
                               f"none (HDUs: {have}); is it a {product} file?")
    return hdul[name]


def _image(hdul, name, path, product, ndim: tuple[int, ...], *, what: str = "") -> np.ndarray:
    from astropy.io import fits

    hdu = _hdu(hdul, name, path, product, what=what)
    if not isinstance(hdu, (fits.ImageHDU, fits.PrimaryHDU, fits.CompImageHDU)) or hdu.data is None:
        raise SpecdenoiseError(f"{path}: HDU {name} is a {type(hdu).__name__} without image data;"
                               f" a {product} file has a {ndim[0]}-D image there")
    data = np.asarray(hdu.data)
    if data.ndim not in ndim:
        raise SpecdenoiseError(f"{path}: HDU {name} is {data.ndim}-D "
                               f"({' x '.join(map(str, data.shape))}); a {product} file has a "
                               f"{' or '.join(map(str, ndim))}-D image there")
    return data


def _arms_of(hdul, path: Path) -> list[str]:
    """The arm letters a fiber array set records (CONFIG ``arm``; else its file name)."""
    arms: list[str] = []
    if "CONFIG" in hdul and "arm" in [c.lower() for c in hdul["CONFIG"].columns.names]:
        col = next(c for c in hdul["CONFIG"].columns.names if c.lower() == "arm")
        for value in np.atleast_1d(hdul["CONFIG"].data[col]):
            text = value if isinstance(value, str) else "".join(
                v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(value))
            arms += [a for a in text.strip().lower() if a.strip()]
    m = _ARM_NAME.match(path.name)
    if not arms and m:
        arms = [m.group(2)]
    return arms


def _check_arms(path: Path, product: str, arms: list[str]) -> None:
    if not arms:
        return  # nothing recorded: the grid check decides
    if product == "pfsArm":
        arm = arms[0]
        if arm != MR_ARM:
            what = ARMS.get(arm)
            raise SpecdenoiseError(
                f"{path}: arm '{arm}' is {what or 'not a PFS arm (b, r, m, n)'}; the denoiser "
                f"works on medium-resolution red-arm spectra: give the '{MR_ARM}' pfsArm file of "
                "this visit and spectrograph" if what else
                f"{path}: arm '{arm}' is not a PFS arm (b, r, m, n); give a pfsArm file of the "
                f"medium-resolution red arm '{MR_ARM}'")
        return
    if MR_ARM not in arms:
        unknown = [a for a in arms if a not in ARMS]
        if unknown:
            raise SpecdenoiseError(f"{path}: arm '{unknown[0]}' is not a PFS arm (b, r, m, n)")
        raise SpecdenoiseError(
            f"{path}: this {product} merges arms {', '.join(sorted(set(arms)))} without the "
            f"medium-resolution red arm '{MR_ARM}'; the denoiser works on medium-resolution "
            "red-arm spectra")


def _read_fiber_set(hdul, path: Path, product: str, fiber_ids) -> Spectra:
    fiber = _image(hdul, "FIBERID", path, product, (1,)).astype(np.int64)
    _check_arms(path, product, _arms_of(hdul, path))
    flux = _image(hdul, "FLUX", path, product, (2,))
    n_fiber, n_pix = flux.shape
    if fiber.shape != (n_fiber,):
        raise SpecdenoiseError(f"{path}: FIBERID has {fiber.size} entries, FLUX {n_fiber} rows")
    if "COVAR" not in hdul:
        raise SpecdenoiseError(f"{path}: no variance (the {product} file has no COVAR HDU); the "
                               "denoiser needs each pixel's variance: give the file as the PFS "
                               "pipeline wrote it")
    covar = _image(hdul, "COVAR", path, product, (2, 3))
    covar = covar[:, None, :] if covar.ndim == 2 else covar
    if covar.shape[0] != n_fiber or covar.shape[-1] != n_pix:
        raise SpecdenoiseError(f"{path}: COVAR has shape {covar.shape}; expected ({n_fiber}, 3, "
                               f"{n_pix}) like FLUX")
    wave = _image(hdul, "WAVELENGTH", path, product, (1, 2))
    if wave.shape[-1] != n_pix or (wave.ndim == 2 and wave.shape[0] != n_fiber):
        raise SpecdenoiseError(f"{path}: WAVELENGTH has shape {wave.shape}, FLUX {flux.shape}")
    mask = _image(hdul, "MASK", path, product, (2,)).astype(np.int64)
    if mask.shape != flux.shape:
        raise SpecdenoiseError(f"{path}: MASK has shape {mask.shape}, FLUX {flux.shape}")
    norm = None
    if "NORM" in hdul and hdul["NORM"].data is not None:
        norm = np.asarray(hdul["NORM"].data, np.float64)
        if norm.shape != flux.shape:
            raise SpecdenoiseError(f"{path}: NORM has shape {norm.shape}, FLUX {flux.shape}")
    if fiber_ids:
        rows = []
        for f in fiber_ids:
            hit = np.flatnonzero(fiber == int(f))
            if not hit.size:
                raise SpecdenoiseError(
                    f"{path}: fiberId {f} is not in this {product} file ({n_fiber} fibers, "
                    f"fiberId {fiber.min()}-{fiber.max()})")
            rows.append(int(hit[0]))
        rows = np.array(rows)
    else:
        rows = np.arange(n_fiber)
    planes = mask_planes(hdul[0].header)
    wave = np.broadcast_to(wave, flux.shape)[rows].astype(np.float64)
    flux = flux[rows].astype(np.float64)
    covar = covar[rows].astype(np.float64)
    mask = mask[rows]
    bad = (mask & untrusted_bits(planes)) != 0
    if norm is not None:
        norm = norm[rows]
        good = np.isfinite(norm) & (norm > 0)
        bad |= ~good
        safe = np.where(good, norm, 1.0)
        flux = flux / safe
        covar = covar / safe[:, None, :] ** 2
    ids = {"fiberId": fiber[rows]}
    if "CONFIG" in hdul:
        for col in hdul["CONFIG"].columns.names:
            if col in ("visit", "spectrograph", "pfsDesignId") and len(hdul["CONFIG"].data):
                ids[col] = np.full(len(rows), hdul["CONFIG"].data[col][0])
    return _finish(Spectra(path, product, wave, flux, covar, bad, mask, planes, rows, ids,
                           per_pixel=product == "pfsArm", norm=norm))


def object_wave(header, path: Path, n_pix: int) -> np.ndarray:
    """Vacuum nm of the pixels of a pfsObject image from its WCS (the datamodel's convention)."""
    for key in ("CRVAL1", "CRPIX1"):
        if key not in header:
            raise SpecdenoiseError(f"{path}: the FLUX HDU has no wavelength WCS ({key} missing)")
    ctype = str(header.get("CTYPE1", "WAVE")).upper()
    _check_medium(path, ctype=ctype)
    if ctype[:4] != "WAVE" or ctype.startswith("WAVE-") and ctype != "WAVE-LIN":
        raise SpecdenoiseError(f"{path}: CTYPE1 = '{ctype}' is not a linear wavelength axis")
    step = header.get("CDELT1", header.get("CD1_1"))
    if step is None:
        raise SpecdenoiseError(f"{path}: the FLUX HDU has no wavelength step (CDELT1 or CD1_1)")
    i = np.arange(n_pix)
    wave = header["CRVAL1"] + (i + 2 - header["CRPIX1"]) * step
    return wave * _to_nm(header.get("CUNIT1", "m"), path)


def _to_nm(unit, path: Path) -> float:
    import astropy.units as u

    try:
        return float(u.Unit(str(unit).strip()).to(u.nm))
    except Exception:
        raise SpecdenoiseError(f"{path}: wavelength unit {unit!r} is not a length "
                               "(give nm, Angstrom or m)") from None


def _check_medium(path: Path, *, ctype: str = "", header=None) -> None:
    """Refuse air wavelengths: the models are trained on vacuum wavelengths."""
    air = ctype.upper().startswith("AWAV")
    if header is not None:
        medium = str(header.get("AIRORVAC", header.get("WAVEMED", header.get("MEDIUM", ""))))
        air |= medium.strip().lower().startswith("air")
        air |= header.get("VACUUM", True) is False
    if air:
        raise SpecdenoiseError(
            f"{path}: wavelengths are in air and the model's are in vacuum; convert them to "
            "vacuum first (e.g. the IAU formula of Morton 2000, "
            "specdenoise.simulate.constants.air_to_vacuum) and write CTYPE1 = 'WAVE'")


def _read_object(hdul, path: Path, fiber_ids) -> Spectra:
    product = "pfsObject"
    flux = _image(hdul, "FLUX", path, product, (1,))
    n_pix = flux.shape[0]
    if "COVAR" not in hdul:
        raise SpecdenoiseError(f"{path}: no variance (the pfsObject file has no COVAR HDU); the "
                               "denoiser needs each pixel's variance")
    covar = _image(hdul, "COVAR", path, product, (1, 2))
    covar = covar[None, :] if covar.ndim == 1 else covar
    if covar.shape[-1] != n_pix:
        raise SpecdenoiseError(f"{path}: COVAR has shape {covar.shape}; expected (3, {n_pix})")
    mask = _image(hdul, "MASK", path, product, (1,)).astype(np.int64)
    if mask.shape != flux.shape:
        raise SpecdenoiseError(f"{path}: MASK has shape {mask.shape}, FLUX {flux.shape}")
    header = hdul["FLUX"].header
    if "WAVELENGTH" in hdul and "CRVAL1" not in header:  # older files: an explicit grid
        wave = np.asarray(hdul["WAVELENGTH"].data, np.float64).ravel()
    else:
        wave = object_wave(header, path, n_pix)
    planes = mask_planes(hdul["MASK"].header)
    ids = {}
    m = _OBJECT_NAME.match(path.name)
    if m:
        ids = {"catId": int(m.group(1)), "tract": int(m.group(2)), "patch": m.group(3),
               "objId": int(m.group(4), 16), "nVisit": int(m.group(5))}
    obs = hdul["OBSERVATIONS"].data if "OBSERVATIONS" in hdul else None
    if obs is not None and "fiberId" in obs.columns.names:
        ids["fiberId"] = np.asarray(obs["fiberId"])
        ids["visit"] = np.asarray(obs["visit"])
    if fiber_ids:
        have = set(np.atleast_1d(ids.get("fiberId", [])).tolist())
        missing = [f for f in fiber_ids if int(f) not in have]
        if missing:
            raise SpecdenoiseError(f"{path}: fiberId {missing[0]} is not among this pfsObject's "
                                   f"observations (fiberId {', '.join(map(str, sorted(have)))})")
    ids = {k: np.atleast_1d(v)[:1] if k in ("fiberId", "visit") else np.array([v])
           for k, v in ids.items()}
    rows3 = np.zeros((3, n_pix))
    rows3[: covar.shape[0]] = covar[:3]
    return _finish(Spectra(path, product, wave[None].astype(np.float64),
                           flux[None].astype(np.float64), rows3[None], (mask[None] &
                           untrusted_bits(planes)) != 0, mask[None], planes, np.array([0]), ids))


def _finish(s: Spectra) -> Spectra:
    """Non-finite flux or variance and non-positive variance also make a pixel untrusted;
    a spectrum without one usable variance is refused."""
    s.bad = s.bad | ~np.isfinite(s.flux)
    if s.covar is not None:
        v = s.covar[:, 0]
        with np.errstate(invalid="ignore"):
            usable = np.isfinite(v) & (v > 0)
        if not usable.any():
            raise SpecdenoiseError(f"{s.path}: no variance (every COVAR variance is zero or NaN); "
                                   "the denoiser needs each pixel's variance")
        s.bad |= ~usable
    if s.bad.all(axis=1).any():
        row = int(np.flatnonzero(s.bad.all(axis=1))[0])
        raise SpecdenoiseError(f"{s.path}: {s.labels()[row]} has no unmasked pixel")
    return s


def _plain_wave(hdu, path: Path, n_pix: int) -> np.ndarray | None:
    """Wavelengths (nm) of a plain FITS spectrum: an image's 1-D WCS (FITS convention: element
    i at ``CRVAL1 + (i + 1 - CRPIX1) * CDELT1``) or a table's wavelength column in its unit."""
    from astropy.io import fits

    h = hdu.header
    _check_medium(path, ctype=str(h.get("CTYPE1", "")), header=h)
    if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
        from specdenoise.train.infer import WAVE_NAMES

        for col in hdu.columns:
            if col.name.lower() in WAVE_NAMES:
                values = np.asarray(hdu.data[col.name], np.float64)
                values = values[0] if values.ndim == 2 else values
                return values * (_to_nm(col.unit, path) if col.unit else 1.0)
        return None
    if "CRVAL1" not in h:
        return None
    ctype = str(h.get("CTYPE1", "WAVE")).upper()
    if ctype[:4] not in ("WAVE", "LAMB", ""):
        raise SpecdenoiseError(f"{path}: CTYPE1 = '{ctype}' is not a wavelength axis")
    step = h.get("CDELT1", h.get("CD1_1"))
    if step is None:
        raise SpecdenoiseError(f"{path}: the image has CRVAL1 but no CDELT1 or CD1_1")
    wave = h["CRVAL1"] + (np.arange(n_pix) + 1 - h.get("CRPIX1", 1.0)) * step
    if h.get("DC-FLAG") == 1 or ctype.endswith("-LOG"):
        wave = 10.0 ** wave if h.get("DC-FLAG") == 1 else h["CRVAL1"] * np.exp(
            (np.arange(n_pix) + 1 - h.get("CRPIX1", 1.0)) * step / h["CRVAL1"])
    return wave * _to_nm(h.get("CUNIT1", "Angstrom" if np.median(wave) > 2000 else "nm"), path)


def read(path, *, fiber_ids=None) -> Spectra:
    """Read a PFS product or a plain spectrum file (FITS or text) into :class:`Spectra`."""
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise SpecdenoiseError(f"spectrum file {path} does not exist")
    suffix = "".join(path.suffixes[-2:]).lower()
    if not suffix.endswith((".fits", ".fit", ".fits.gz", ".fts")):
        if fiber_ids:
            raise SpecdenoiseError(f"--fiber-id selects fibers of a pfsArm or pfsMerged file; "
                                   f"{path} is a text file")
        return _read_plain(path, None)
    try:
        with fits.open(path, memmap=False) as hdul:
            names = {h.name for h in hdul}
            product = product_of(path, names)
            if product in ("pfsArm", "pfsMerged"):
                return _read_fiber_set(hdul, path, product, fiber_ids)
            if product == "pfsObject":
                return _read_object(hdul, path, fiber_ids)
            if product is not None:
                raise SpecdenoiseError(f"{path}: {product} files are not read by specdenoise; "
                                       "give a pfsArm (arm m), pfsMerged or pfsObject file")
            if fiber_ids:
                raise SpecdenoiseError(f"--fiber-id selects fibers of a pfsArm or pfsMerged "
                                       f"file; {path} is a plain FITS spectrum")
            hdu = next((h for h in hdul if h.data is not None), None)
            return _read_plain(path, hdu)
    except SpecdenoiseError:
        raise
    except Exception as exc:
        raise SpecdenoiseError(f"cannot read {path}: {exc}".splitlines()[0]) from None


def _read_plain(path: Path, hdu) -> Spectra:
    from specdenoise.train.infer import read_spectrum_file

    wave, flux, sigma = read_spectrum_file(path)
    flux = flux.astype(np.float64)
    if hdu is not None:
        plain_wave = _plain_wave(hdu, path, flux.shape[1])
        wave = plain_wave if plain_wave is not None else wave
    covar = None
    if sigma is not None:
        covar = np.zeros((flux.shape[0], 3, flux.shape[1]))
        covar[:, 0] = sigma.astype(np.float64) ** 2
    bad = ~np.isfinite(flux)
    product = "text" if hdu is None else ("fits-table" if hasattr(hdu, "columns") else
                                          "fits-image")
    w = None if wave is None else np.broadcast_to(np.asarray(wave, np.float64), flux.shape)
    return Spectra(path, product, w, flux, covar, bad)


# --------------------------------------------------------------------------- writing


def _sd_cards(info: dict) -> list[tuple[str, object, str]]:
    """Header cards recording the model run, its training data and this tool's version."""
    cards = [("SDVERS", info["version"], "specdenoise version that wrote this file"),
             ("SDMODEL", info["model"], "checkpoint of the denoising model"),
             ("SDNET", info["model_name"], "network of the model"),
             ("SDEPOCH", info["epoch"], "training epoch of the checkpoint"),
             ("SDTRAIN", info["train_data"], "training data of the model"),
             ("SDVARSRC", info["variance_source"],
              "variance = sigma_denoised**2" if info["variance_source"] == "denoiser"
              else "variance: the input's, not the denoiser's"),
             ("SDRESAMP", bool(info["resampled"]), "resampled to the model grid"),
             ("SDINPUT", info["input"], "the file that was denoised")]
    return [(k, "" if v is None else v, c) for k, v, c in cards]


def _add_cards(header, info: dict) -> None:
    for key, value, comment in _sd_cards(info):
        long = isinstance(value, str) and len(value) + len(comment) > 45
        header[key] = value if long else (value, comment)
    header.add_history(f"denoised by specdenoise {info['version']}: flux is the denoiser's "
                       "output; masked pixels keep their mask bits")


def _rows_hdu(hdu, rows: np.ndarray, n_rows: int):
    """A copy of ``hdu`` keeping ``rows`` along its first axis when it has ``n_rows`` of them."""
    from astropy.io import fits

    if isinstance(hdu, fits.BinTableHDU):
        keep = hdu.data is not None and len(hdu.data) == n_rows and n_rows > 1
        return _table(hdu, rows if keep else None)
    if isinstance(hdu, fits.CompImageHDU):
        data = np.asarray(hdu.data)
        if data.ndim and data.shape[0] == n_rows:
            data = data[rows]
        return fits.CompImageHDU(data, header=hdu.header.copy(), name=hdu.name,
                                 compression_type=hdu.header.get("ZCMPTYPE", "RICE_1"))
    if isinstance(hdu, fits.PrimaryHDU):
        return fits.PrimaryHDU(hdu.data, header=hdu.header.copy())
    data = hdu.data
    if data is not None and data.ndim > 1 and data.shape[0] == n_rows:
        data = data[rows]
    elif data is not None and data.ndim == 1 and data.shape[0] == n_rows and \
            hdu.name == "FIBERID":
        data = data[rows]
    return fits.ImageHDU(data, header=hdu.header.copy(), name=hdu.name)


def _table(hdu, rows=None):
    """A copy of a binary table (``rows`` of it), variable-length columns included (copying
    the HDU itself loses their heap)."""
    from astropy.io import fits

    if hdu.data is None or not len(hdu.columns):
        return hdu.copy()
    cols = [fits.Column(name=c.name, format=c.format, unit=c.unit, dim=c.dim,
                        array=hdu.data[c.name] if rows is None else hdu.data[c.name][rows])
            for c in hdu.columns]
    return fits.BinTableHDU.from_columns(cols, header=hdu.header.copy(), name=hdu.name)


def _mask_hdu(template, mask: np.ndarray, planes: dict, header_planes: bool):
    from astropy.io import fits

    header = template.header.copy()
    for key in [k for k in header if k.startswith(("ZCMPTYPE",))]:
        del header[key]
    if header_planes:
        for name, bit in planes.items():
            header[f"HIERARCH MP_{name}" if len(name) > 5 else f"MP_{name}"] = bit
    dtype = np.asarray(template.data).dtype
    data = mask.astype(np.uint32 if dtype == np.uint32 else np.int32)
    return fits.CompImageHDU(data, header=header, name=template.name, compression_type="RICE_1")


def with_not_denoised(planes: dict) -> dict:
    """``planes`` plus :data:`NOT_DENOISED_PLANE` on the first free bit (if not there yet)."""
    if NOT_DENOISED_PLANE in planes:
        return dict(planes)
    bit = max(planes.values(), default=-1) + 1
    if bit > 31:
        raise SpecdenoiseError("the file's mask has no free bit for the NOT_DENOISED plane")
    return {**planes, NOT_DENOISED_PLANE: bit}


#: the extension holding each spectrum's consistency check (:func:`check_hdu`)
CHECK_HDU = "DENOISE_CHECK"
#: its per-spectrum columns, in order: (name, FITS format, meaning); the names are
#: ``specdenoise.train.infer.CHECK_VARS`` (not imported: this module reads FITS without torch;
#: tests/test_pfsio.py checks they agree)
CHECK_COLUMNS = (
    ("chi2_red", "E", "mean (flux-D)^2/(var+sigma_D^2), unmasked"),
    ("chi2_peak", "E", "largest mean of that ratio over 5 pixels"),
    ("sky_excess", "E", "sky lines left in the input, sigma"),
    ("suspect", "I", "1 suspect, 0 consistent, -1 not checked"),
)


def check_hdu(s: Spectra, checks: dict):
    """A binary table :data:`CHECK_HDU`, one row per spectrum written: its identifiers
    (``s.ids``, as read: fiberId, visit, objId ...) and the :data:`CHECK_COLUMNS` from
    ``checks`` (name -> (n,) array), with the number of suspect spectra as ``NSUSPECT``."""
    from astropy.io import fits

    n = len(s.flux)
    cols = []
    for key, values in s.ids.items():
        v = np.atleast_1d(np.asarray(values))
        if v.size == n and v.dtype.kind in "iu":
            cols.append(fits.Column(key, "K", array=v.astype(np.int64)))
    first = len(cols) + 1
    for name, fmt, _meaning in CHECK_COLUMNS:
        v = np.asarray(checks.get(name, np.full(n, np.nan)))
        cols.append(fits.Column(name, fmt, array=v.astype(np.int16 if fmt == "I"
                                                          else np.float32)))
    hdu = fits.BinTableHDU.from_columns(cols, name=CHECK_HDU)
    for i, (_name, _fmt, meaning) in enumerate(CHECK_COLUMNS, start=first):
        hdu.header.comments[f"TTYPE{i}"] = meaning
    suspect = np.asarray(checks.get("suspect", np.full(n, -1)))
    hdu.header["NSUSPECT"] = (int((suspect == 1).sum()), "spectra flagged suspect")
    hdu.header["NCHECKED"] = (int((suspect >= 0).sum()), "spectra checked")
    return hdu


def write_pfs(s: Spectra, out: Path, flux, covar, mask, info: dict,
              checks: dict | None = None) -> None:
    """Write ``out`` in the layout of the PFS file ``s`` was read from, for the rows read.

    ``flux`` (n, n_pix) the denoised flux in the file's unit (NORM applied back for a fiber
    array set), ``covar`` (n, 3, n_pix) its covariance rows, ``mask`` (n, n_pix) the bits to
    write, ``info`` the run's header values (:func:`_sd_cards`). Every other HDU (SKY, NORM,
    CONFIG, NOTES, TARGET, OBSERVATIONS, ...) is copied, restricted to the rows read.
    ``checks``: each spectrum's consistency check, appended as :func:`check_hdu`.
    """
    from astropy.io import fits

    planes = info.get("planes", s.planes)
    with fits.open(s.path, memmap=False) as hdul:
        new = fits.HDUList()
        if s.product == "pfsObject":
            for hdu in hdul:
                if hdu.name == "FLUX":
                    new.append(fits.ImageHDU(flux[0].astype(np.float32),
                                             header=hdu.header.copy(), name="FLUX"))
                elif hdu.name == "COVAR":
                    new.append(fits.ImageHDU(covar[0].astype(np.float32),
                                             header=hdu.header.copy(), name="COVAR"))
                elif hdu.name == "MASK":
                    new.append(_mask_hdu(hdu, mask[0], planes, True))
                elif hdu.name in ("FLUX_TABLE", "FLUXTABLE"):
                    new.append(_flux_table(hdu, s, flux[0], covar[0], mask[0], planes))
                else:
                    new.append(_rows_hdu(hdu, np.array([0]), -1))
        else:
            n_rows = len(hdul["FIBERID"].data)
            rows = s.rows
            norm = s.norm if s.norm is not None else 1.0
            for hdu in hdul:
                if hdu.name == "FLUX":
                    data = (flux * norm).astype(np.float32)
                    new.append(fits.ImageHDU(data, header=hdu.header.copy(), name="FLUX"))
                elif hdu.name == "COVAR":
                    n_cov = hdu.data.shape[1] if hdu.data.ndim == 3 else 1
                    c = covar[:, :n_cov] * np.asarray(norm)[:, None] ** 2 if s.norm is not None \
                        else covar[:, :n_cov]
                    new.append(fits.ImageHDU(c.astype(np.float32).reshape(
                        (len(rows), *hdu.data.shape[1:])), header=hdu.header.copy(),
                        name="COVAR"))
                elif hdu.name == "MASK":
                    new.append(_mask_hdu(hdu, mask, planes, False))
                else:
                    new.append(_rows_hdu(hdu, rows, n_rows))
            for name, bit in planes.items():
                key = f"HIERARCH MP_{name}" if len(name) > 5 else f"MP_{name}"
                new[0].header[key] = bit
        if checks is not None:
            new.append(check_hdu(s, checks))
        _add_cards(new[0].header, info)
        new.writeto(out, output_verify="silentfix")


def _flux_table(hdu, s: Spectra, flux, covar, mask, planes):
    """The pfsObject FLUX_TABLE updated with the denoised flux where its wavelengths are the
    FLUX grid's (the package writes it so for a single-arm object); otherwise a copy."""

    t = hdu.data
    names = [c.lower() for c in hdu.columns.names] if t is not None else []
    table = _table(hdu)
    if t is None or "wavelength" not in names or len(t) != flux.size:
        table.header["SDNOTE"] = "input values: not on the FLUX grid, not denoised"
        return table
    col = {c.lower(): c for c in hdu.columns.names}
    step = abs(s.wave[0, 1] - s.wave[0, 0])
    if np.max(np.abs(np.asarray(t[col["wavelength"]]) - s.wave[0])) > 0.1 * step:
        table.header["SDNOTE"] = "input values: not on the FLUX grid, not denoised"
        return table
    data = table.data
    if "flux" in col:
        data[col["flux"]] = flux
    if "error" in col:
        with np.errstate(invalid="ignore"):
            data[col["error"]] = np.sqrt(np.where(covar[0] >= 0, covar[0], np.nan))
    if "mask" in col:
        data[col["mask"]] = mask
    for name, bit in planes.items():
        table.header[f"HIERARCH MP_{name}" if len(name) > 5 else f"MP_{name}"] = bit
    return table


def write_plain(s: Spectra, out: Path, wave, flux, denoised, sigma_out, info: dict,
                checks: dict | None = None) -> None:
    """A plain FITS output: an image input gives an image (its header and WCS kept, the
    denoised flux as data, ``VARIANCE`` and ``FLUX_INPUT`` images beside it); any other input
    a binary table ``SPECTRUM`` with columns wave (nm, vacuum), flux (the denoised flux),
    flux_input and, when known, variance. One row per pixel for one spectrum, one vector per
    row for several. ``checks``: each spectrum's consistency check, as :func:`check_hdu`."""
    from astropy.io import fits

    many = len(flux) > 1
    if s.product == "fits-image":
        with fits.open(s.path, memmap=False) as hdul:
            hdu = next(h for h in hdul if h.data is not None)
            header = hdu.header.copy()
        primary = fits.PrimaryHDU((denoised if many else denoised[0]).astype(np.float32),
                                  header=header)
        hdus = [primary, fits.ImageHDU((flux if many else flux[0]).astype(np.float32),
                                       name="FLUX_INPUT")]
        if sigma_out is not None:
            hdus.append(fits.ImageHDU((sigma_out**2 if many else sigma_out[0] ** 2)
                                      .astype(np.float32), name="VARIANCE"))
        new = fits.HDUList(hdus)
    else:
        def col(name, fmt_one, values, unit=None):
            values = np.asarray(values)
            if many:
                return fits.Column(name, f"{values.shape[1]}{fmt_one}", array=values, unit=unit)
            return fits.Column(name, fmt_one, array=values[0], unit=unit)

        cols = [col("wave", "D", np.broadcast_to(wave, flux.shape), "nm"),
                col("flux", "E", denoised), col("flux_input", "E", flux)]
        if sigma_out is not None:
            cols.append(col("variance", "E", sigma_out**2))
        table = fits.BinTableHDU.from_columns(cols, name="SPECTRUM")
        table.header["AIRORVAC"] = ("vac", "wavelengths in vacuum")
        new = fits.HDUList([fits.PrimaryHDU(), table])
    if checks is not None:
        new.append(check_hdu(s, checks))
    _add_cards(new[0].header, info)
    new.writeto(out, output_verify="silentfix")
