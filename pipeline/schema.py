"""The simulated-dataset schema: one module names every variable, dimension and attribute.

A dataset is an xarray Dataset on Zarr v3 with consolidated metadata, written with codecs of
the Zarr v3 specification only and a crc32c checksum on every chunk (:mod:`specdenoise.codecs`):

dims ``spectrum`` (any length, chunked along it) and ``wave`` (4096 PFS red-arm MR pixels)

================  =====================  =========  ==============================================
variable          dims                   dtype      meaning
================  =====================  =========  ==============================================
``flux``          (spectrum, wave)       float32    noisy observed flux, normalised (median 0.5)
``flux_clean``    (spectrum, wave)       float32    the same observation without noise
``sigma``         (spectrum, wave)       float32    1-sigma noise of ``flux`` (same normalisation)
``mask``          (spectrum, wave)       uint8      0 = good pixel; bit flags in ``MASK_BITS``
``wave``          (wave,)                float64    vacuum wavelength, nm
``spectrum``      (spectrum,)            int64      spectrum id: its index in the dataset
per-spectrum      (spectrum,)            float32    ``PARAMS`` + ``CONDITIONS`` + ``snr``, ``norm``
``calib_c1..L``   (spectrum,)            float32    the calibration distortion's coefficients
================  =====================  =========  ==============================================

Every variable carries ``units`` (a string astropy parses), ``long_name`` and, where a unit
cannot say it, ``medium`` or ``normalisation`` (:func:`attrs_of`); ``mask`` carries the CF flag
attributes ``flag_masks`` / ``flag_meanings`` (:func:`flag_attrs`).

``norm`` is the factor the physical flux (erg s-1 cm-2 Hz-1) was divided by:
``f_nu = flux * norm``. The same factor divides ``flux``, ``flux_clean`` and ``sigma``.
``flux``, ``flux_clean`` and ``sigma`` carry the one calibration distortion
``d = 1 + sum_l calib_c<l> P_l(x)`` (:mod:`specdenoise.simulate.calibration`).

Writing follows one rule so that a resumed or re-run simulation is bitwise identical: each chunk
of ``chunk_size`` spectra is written by one task, and a chunk is recorded as done (an empty marker
file in :func:`done_dir`, beside the store) only after all its arrays are written. A store is
complete when the attribute ``complete`` is True, set by :func:`finalize_dataset`, which also
deletes the markers. (Stores written before kept the markers inside, in ``<store>/.done/``;
:func:`done_chunks` still reads them, so such a store resumes.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from specdenoise import codecs, stores
from specdenoise.errors import SpecdenoiseError

DATASET_KIND = stores.DATASET.name
SCHEMA_VERSION = 1

SPECTRUM_DIM = "spectrum"
WAVE_DIM = "wave"

#: stellar parameters, in grid-axis order
PARAMS = ("teff", "logg", "m_h", "a_m")


@dataclass(frozen=True)
class Condition:
    """One observing condition: what every noise model may be given, per spectrum, by name.

    ``unit`` is an astropy unit string (the dataset variable's ``units``); the values allowed are
    ``low``..``high`` (each end included or not), ``meaning`` says what the range is in words;
    ``default`` is the simulation's distribution (``specdenoise.config``) and ``value`` the one
    value ``specdenoise etc`` assumes when the option is not given.
    """

    name: str
    unit: str
    long_name: str
    low: float
    high: float
    low_included: bool
    high_included: bool
    meaning: str
    default: Mapping
    value: float
    help: str

    @property
    def option(self) -> str:
        """The command-line option (``--moon-phase``)."""
        return "--" + self.name.replace("_", "-")


#: THE observing conditions, in the order they are drawn (that order is part of every seeded
#: simulation: do not reorder). The simulation config's defaults and range checks, the ``etc``
#: options and the dataset's condition variables are all built from this table; a noise model
#: receives them as a mapping by name (``specdenoise.simulate.noise.NoiseModel``).
OBSERVING = (
    Condition("seeing", "arcsec", "seeing FWHM", 0.0, 10.0, False, True, "arcsec FWHM",
              {"dist": "uniform", "low": 0.5, "high": 1.5}, 0.8, "FWHM at 800 nm, arcsec"),
    Condition("zenith", "deg", "zenith angle", 0.0, 90.0, True, False,
              "deg, below the horizon is not observable",
              {"dist": "uniform", "low": 0.0, "high": 45.0}, 35.0, "zenith angle, deg"),
    Condition("field_angle", "deg", "distance from the field centre", 0.0, 0.7, True, True,
              "deg from the PFS field centre (field radius 0.65)",
              {"dist": "uniform", "low": 0.0, "high": 0.65}, 0.0, "field angle, deg"),
    Condition("moon_zenith", "deg", "zenith angle of the Moon", 0.0, 180.0, True, True,
              "deg; >= 90 puts the Moon below the horizon",
              {"dist": "uniform", "low": 30.0, "high": 90.0}, 90.0,
              "Moon zenith angle, deg; >= 90: no Moon"),
    Condition("moon_separation", "deg", "angular distance to the Moon", 0.0, 180.0, True, True,
              "deg", {"dist": "uniform", "low": 60.0, "high": 180.0}, 60.0,
              "Moon-target angle, deg"),
    # the noise model's phase is the fraction of the lunar cycle since new Moon and mirrors
    # about full Moon (alpha = 360 |phase - 0.5|): 0..0.5 covers every brightness, and a 1
    # meant as "full" would silently be a new Moon
    Condition("moon_phase", "1", "lunar phase (0 new, 0.25 quarter, 0.5 full)", 0.0, 0.5,
              True, True, "0 new, 0.25 quarter, 0.5 full",
              {"dist": "uniform", "low": 0.0, "high": 0.25}, 0.0,
              "fraction of the lunar cycle since new Moon, 0..0.5: 0 new, 0.25 quarter, 0.5 full "
              "(waning phases give the same light)"),
    Condition("exp_time", "s", "exposure time of one exposure", 0.0, 1e6, False, True, "s",
              {"dist": "fixed", "value": 900.0}, 900.0, "seconds per exposure"),
    Condition("n_exp", "1", "number of exposures", 1.0, 1e4, True, True, "exposures",
              {"dist": "fixed", "value": 4.0}, 4, "number of exposures"),
)
#: the observing conditions by name
OBSERVING_BY_NAME = {c.name: c for c in OBSERVING}
#: source conditions drawn per spectrum (the observer's inputs, not the noise model's)
SOURCE = ("rv", "ebv", "mag")
#: source and observing conditions drawn per spectrum
CONDITIONS = (*SOURCE, *(c.name for c in OBSERVING))
#: derived per-spectrum quantities
DERIVED = ("snr", "norm")

#: per-spectrum coefficients of the calibration distortion: CALIB_PREFIX + "1" ... + "L"
#: (Legendre orders 1..L, see :mod:`specdenoise.simulate.calibration`)
CALIB_PREFIX = "calib_c"


def calib_names(order: int) -> tuple[str, ...]:
    return tuple(f"{CALIB_PREFIX}{k}" for k in range(1, order + 1))


#: variables with dims (spectrum, wave)
SPECTRAL_VARS = ("flux", "flux_clean", "sigma", "mask")

#: units of every variable, each a string astropy parses (``astropy.units.Unit(u)``); what a
#: unit cannot say (medium, normalisation, photometric system) is in its own attribute
#: (:data:`EXTRA_ATTRS`)
UNITS = {
    "teff": "K",
    "logg": "dex",
    "m_h": "dex",
    "a_m": "dex",
    "rv": "km s-1",
    "ebv": "mag",
    "mag": "mag",
    **{c.name: c.unit for c in OBSERVING},
    "snr": "1",
    "norm": "erg s-1 cm-2 Hz-1",
    "flux": "1",
    "flux_clean": "1",
    "sigma": "1",
    "flux_denoised": "1",
    "mask": "1",
    "wave": "nm",
    SPECTRUM_DIM: "1",
}

#: a human-readable name for every variable (CF ``long_name``)
LONG_NAMES = {
    "teff": "effective temperature",
    "logg": "log10 surface gravity (cgs, g in cm s-2)",
    "m_h": "metallicity [M/H]",
    "a_m": "alpha enhancement [alpha/M]",
    "rv": "radial velocity",
    "ebv": "colour excess E(B-V)",
    "mag": "HSC-i magnitude",
    **{c.name: c.long_name for c in OBSERVING},
    "snr": "signal-to-noise ratio, median over pixels of flux / sigma",
    "norm": "normalisation factor: f_nu = flux * norm",
    "flux": "noisy observed flux, normalised",
    "flux_clean": "noiseless observed flux, normalised",
    "sigma": "1-sigma noise of flux, normalised like flux",
    "flux_denoised": "denoised flux",
    "mask": "pixel quality flags (0 = good)",
    "wave": "wavelength in vacuum",
    SPECTRUM_DIM: "spectrum id (its index in the simulated dataset)",
    # error cubes (evaluate/cube.py)
    "denoiser": "denoising method",
    "denoiser_kind": "kind of denoising method (network, baseline, reference)",
    "seconds": "time spent denoising",
    "n_denoised": "number of spectra denoised",
    "spectra_per_s": "spectra denoised per second",
    "denoised": "denoised flux D[F_hat]",
}

#: attributes beyond units and long_name (what a unit string cannot hold)
EXTRA_ATTRS = {
    "wave": {"medium": "vacuum", "standard_name": "radiation_wavelength"},
    "mag": {"photometric_system": "AB"},
    "logg": {"unit_of_g": "cm s-2"},
    **{v: {"normalisation": "flux / norm; median of a spectrum 0.5"}
       for v in ("flux", "flux_clean", "sigma", "flux_denoised")},
}

MASK_BITS = {"no_data": 1, "bad_pixel": 2, "sky_residual": 4}


def flag_attrs(bits: Mapping[str, int] | None = None) -> dict:
    """CF flag attributes of a bit mask: ``flag_masks`` (the bits), ``flag_meanings`` (names,
    space-separated, in the same order) and ``flag_values`` omitted (bits combine)."""
    bits = dict(MASK_BITS if bits is None else bits)
    return {"flag_masks": [int(b) for b in bits.values()],
            "flag_meanings": " ".join(bits), "valid_min": 0,
            "valid_max": int(sum(bits.values()))}


def attrs_of(name: str) -> dict:
    """``units``, ``long_name`` and any extra attributes (medium, normalisation) of a variable;
    a name the schema does not know gets a unit of "" and its own name as ``long_name``."""
    if name.startswith(CALIB_PREFIX):
        return {"units": "1", "long_name": f"calibration distortion coefficient of Legendre "
                                           f"order {name[len(CALIB_PREFIX):]}"}
    out = {"units": UNITS.get(name, ""), "long_name": LONG_NAMES.get(name, name),
           **EXTRA_ATTRS.get(name, {})}
    if name == "mask":
        out.update(flag_attrs())
    return out


def complete_attrs(ds: xr.Dataset) -> xr.Dataset:
    """Give every variable of ``ds`` (in place; returned) the schema's ``long_name`` and
    ``units`` where it has none (a name the schema does not know: its own name, no unit)."""
    for name, var in ds.variables.items():
        known = attrs_of(str(name))
        var.attrs.setdefault("long_name", known["long_name"])
        if known["units"] or "units" in var.attrs:
            var.attrs.setdefault("units", known["units"])
    return ds


def per_spectrum_names() -> tuple[str, ...]:
    return (*PARAMS, *CONDITIONS, *DERIVED)


def done_dir(path: str | Path) -> Path:
    """The chunk-marker folder of the dataset store ``path`` (beside it,
    :func:`specdenoise.stores.chunk_markers`)."""
    return stores.chunk_markers(path)


def create_dataset_store(
    path: str | Path,
    n_spectrum: int,
    chunk_size: int,
    wave: np.ndarray,
    *,
    attrs: Mapping | None = None,
    extra_coords: tuple[str, ...] = (),
    compressors: list | None = None,
    keepbits: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Create the empty store (metadata only) for ``n_spectrum`` spectra.

    When the store already exists with the same shape, chunking and ``attrs["config_hash"]``,
    it is left as it is (that is how ``--resume`` works); otherwise it is an error unless
    ``overwrite``, which replaces only a dataset store (:func:`specdenoise.stores.remove_store`).
    ``compressors`` are the Zarr v3 bytes-to-bytes codecs of the float
    variables (default: :func:`specdenoise.codecs.spectral_compressors` ``("zstd")``); every
    other array gets :func:`specdenoise.codecs.default_compressors`. ``keepbits``: the float
    variables are bit-rounded to that many mantissa bits by :func:`write_chunk` (recorded in
    their ``keepbits`` attribute).
    """
    import dask.array as da  # only to declare lazy empty arrays

    path = Path(path)
    stores.refuse_unsafe_target(path)
    if path.exists():
        if not overwrite:
            try:
                old = zarr.open_group(str(path), mode="r")
                same = (
                    stores.kind_of(dict(old.attrs)) == DATASET_KIND
                    and old.attrs.get("config_hash") == (attrs or {}).get("config_hash")
                    and old["flux"].shape == (n_spectrum, wave.size)
                    and old["flux"].chunks[0] == chunk_size
                    and all(name in old for name in extra_coords)
                )
            except Exception:
                same = False
            if same:
                return path
            raise SpecdenoiseError(
                f"{path} exists and was made with other settings; choose another --out "
                "or pass --overwrite"
            )
        stores.remove_store(path, stores.DATASET)
    stores.remove_chunk_markers(path)  # of a store deleted by hand: its chunks are not done
    n_wave = int(np.size(wave))
    if compressors is None:
        compressors = codecs.spectral_compressors("zstd")
    rounding = {} if keepbits is None else {codecs.KEEPBITS_ATTR: int(keepbits)}
    chunks2 = (chunk_size, n_wave)
    data_vars = {}
    for v in ("flux", "flux_clean", "sigma"):
        data_vars[v] = (
            (SPECTRUM_DIM, WAVE_DIM),
            da.zeros((n_spectrum, n_wave), dtype=np.float32, chunks=chunks2),
            {**attrs_of(v), **rounding},
        )
    data_vars["mask"] = (
        (SPECTRUM_DIM, WAVE_DIM),
        da.zeros((n_spectrum, n_wave), dtype=np.uint8, chunks=chunks2),
        attrs_of("mask"),
    )
    coords = {WAVE_DIM: (WAVE_DIM, np.asarray(wave, np.float64), attrs_of(WAVE_DIM)),
              # an id per spectrum, so that selecting or sorting keeps each spectrum's identity
              SPECTRUM_DIM: (SPECTRUM_DIM, np.arange(n_spectrum, dtype=np.int64),
                             attrs_of(SPECTRUM_DIM))}
    for name in (*per_spectrum_names(), *extra_coords):
        coords[name] = (
            SPECTRUM_DIM,
            da.zeros(n_spectrum, dtype=np.float32, chunks=chunk_size),
            attrs_of(name),
        )
    a = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
         for k, v in dict(attrs or {}).items()}
    a.update(specdenoise_kind=DATASET_KIND, schema_version=SCHEMA_VERSION, complete=False,
             chunk_size=chunk_size)
    ds = xr.Dataset(data_vars, coords=coords, attrs=a)
    encoding = {v: {"chunks": chunks2, "compressors": compressors}
                for v in ("flux", "flux_clean", "sigma")}
    encoding["mask"] = {"chunks": chunks2, "compressors": codecs.default_compressors()}
    encoding[WAVE_DIM] = {"compressors": codecs.default_compressors()}
    encoding[SPECTRUM_DIM] = {"chunks": (chunk_size,), "compressors": codecs.default_compressors()}
    for name in (*per_spectrum_names(), *extra_coords):
        encoding[name] = {"chunks": (chunk_size,), "compressors": codecs.default_compressors()}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, compute=False,
               encoding=encoding)
    done_dir(path).mkdir(exist_ok=True)
    return path


def write_chunk(path: str | Path, chunk_index: int, chunk_size: int, arrays: Mapping) -> None:
    """Write one chunk's arrays, then mark it done (marker written last, atomically).

    Float variables with a ``keepbits`` attribute are bit-rounded first.
    """
    g = zarr.open_group(str(path), mode="r+")
    start = chunk_index * chunk_size
    for name, value in arrays.items():
        value = np.asarray(value)
        arr = g[name]
        keepbits = arr.attrs.get(codecs.KEEPBITS_ATTR)
        if keepbits is not None:  # lossy rounding happens here, not in a codec
            value = codecs.bitround(value, int(keepbits))
        arr[start : start + value.shape[0]] = value
    marker = done_dir(path) / f"{chunk_index:08d}"
    marker.parent.mkdir(exist_ok=True)  # (a store created before the markers moved out)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text("")
    tmp.replace(marker)


def done_chunks(path: str | Path) -> set[int]:
    """The chunks of the dataset store ``path`` recorded as written (markers beside the store,
    and inside it for a store written before they moved out)."""
    done = set()
    for d in (done_dir(path), Path(path) / stores.LEGACY_MARKERS):
        if d.is_dir():
            done |= {int(p.name) for p in d.iterdir() if p.name.isdigit()}
    return done


def finalize_dataset(path: str | Path) -> None:
    """Mark a store complete and consolidate its metadata (after every chunk is done); its
    chunk markers are no longer needed and go (after the store is marked complete, so an
    interrupt in between never loses what is written)."""
    legacy = Path(path) / stores.LEGACY_MARKERS
    if legacy.is_dir():  # an old store resumed: its markers leave it before zarr lists it
        done_dir(path).mkdir(exist_ok=True)
        for p in legacy.iterdir():
            p.replace(done_dir(path) / p.name)
        legacy.rmdir()
    g = zarr.open_group(str(path), mode="r+")
    g.attrs["complete"] = True
    zarr.consolidate_metadata(str(path))
    stores.remove_chunk_markers(path)


def open_dataset(path: str | Path, *, require=SPECTRAL_VARS) -> xr.Dataset:
    """Open a simulated dataset lazily, checking it is complete and has what is needed."""
    ds = stores.open_store(
        path, stores.DATASET,
        incomplete=f"dataset {path} is incomplete (interrupted run?); re-run with --resume")
    codecs.check_frames(path)  # older stores (no checksum): no decoder may read past a chunk
    missing = [v for v in require if v not in ds]
    if missing:
        raise SpecdenoiseError(f"dataset {path} lacks variable(s) {', '.join(missing)}")
    return ds
