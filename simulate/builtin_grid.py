"""The built-in synthetic stellar grid: an approximate model made here, no downloads.

It exists so the whole pipeline runs on a fresh machine. It is **not** a model atmosphere
calculation; science runs use BOSZ (``specdenoise grid import bosz``). The store records this
in ``attrs["approximation"]``.

Physics, in the order it is computed for every grid node (Teff, log g, [M/H], [alpha/M]):

1. **One line-forming layer** of a grey atmosphere at Rosseland optical depth ``tau_line``:
   ``T = Teff * (3/4 (tau + 2/3))**0.25`` (Eddington). Its gas pressure follows hydrostatic
   equilibrium, ``P_g = g tau / kappa``, iterated with the continuous opacity ``kappa``, and its
   electron pressure ``P_e`` follows charge conservation with Saha ionisation (three stages) of
   H and the metals (Gray, *The Observation and Analysis of Stellar Photospheres*, ch. 1, 8, 9).
2. **Continuous opacity** per hydrogen nucleus: H- bound-free and free-free (Gray's fits),
   neutral-hydrogen bound-free from n >= 3 (the Paschen jump at 820.6 nm), Rayleigh scattering
   by H and Thomson scattering.
3. **Continuum** ``pi B_lambda(T(tau_eff))`` in erg s-1 cm-2 nm-1 (surface flux), the
   Eddington-Barbier estimate with ``tau_eff = 2/3 kappa(850 nm) / kappa(lambda)``: a blackbody at
   Teff redward of the Paschen edge, a little fainter blueward of it in hot stars.
4. **Lines**: about 80 hand-typed real atomic lines with their gf (:mod:`.linelist`; Ca II
   triplet, Na I, K I, Rb I, O I, N I, C I, Mg I, Al I, Si I, Ca I, Ti I, Fe I, Fe II, Ni I);
   about 850 more with their own gf from public lists where they cover the range (690-740 nm
   VALD, 758-793 nm GALAH DR3; :func:`.linelist.gf_lines`); about 200 more real neutral-atom
   lines at their real positions with their real excitation and van der Waals constants (Barklem
   et al. 2000, :func:`.linelist.barklem_lines`) but a statistical log gf (``listed_loggf`` at 4
   eV, ``listed_gf_slope`` per eV); the hydrogen Paschen series (n = 3 -> 10...40, Rydberg
   wavelengths, Kramers oscillator strengths); and a deterministic pseudo-random forest of weak
   high-excitation neutral-metal lines (fixed seed) for the many weak lines no list here has.
   Line-centre opacity relative to the continuum, ``eta0``, comes from Boltzmann excitation and
   Saha ionisation at the layer, the abundances scaled by [M/H] (and [alpha/M] for O, Mg, Si,
   Ca, Ti) and one global scale factor. Profiles are Voigt functions (Humlicek 1982 W4) with
   thermal + microturbulent Doppler width, radiative, van der Waals (per neutral hydrogen, so
   the wings grow with pressure, hence log g) and, for hydrogen, linear Stark damping from the
   electron density (Holtsmark field).
5. **Molecules**: CO, TiO and CN in chemical equilibrium (Guldberg-Waage with approximate
   dissociation constants); TiO gamma/delta and CN red-system bands are red-degraded band-head
   envelopes, not rotational lines. Giants (log g < 3.5) get first-dredge-up [C/M] = -0.2,
   [N/M] = +0.4.
6. **Transfer**: a Milne-Eddington-like residual ``F/C = 1 - d_max eta / (1 + eta)`` with
   ``eta`` the summed line and band opacity ratio, evaluated on a fine log-uniform grid
   (``oversampling`` times the output sampling), convolved with a Gaussian to ``resolution`` and
   point-sampled on the output grid (log-uniform at ``sampling``, vacuum wavelengths).

Not included: NLTE, depth-dependent line formation, rotation/macroturbulence, isotopes,
hyperfine structure, molecular rotational lines, temperature-dependent partition functions.
Calibration, stated plainly: ``LINE_SCALE`` (one factor on every line opacity),
``VDW_ENHANCEMENT`` and the weak-line forest's log gf range were chosen so the Ca II triplet
equivalent widths and the mean line depth over 710-885 nm of the 6000 K / log g 4.0 and
4750 K / log g 4.5 solar dwarfs come close to BOSZ 2024 at R = 5000 (tests check +-40 % and a
factor 2); ``HYDROGEN_SCALE`` keeps the Paschen lines of a 6000 K dwarf as weak as BOSZ's;
``BAND_SIGMA`` and the giant factor on TiO were set by eye so TiO appears below about 4200 K and
CN in cool giants, as in M and K stars. Generator version 2 (issue 19.5) was set against the
three real model spectra that ``benchmarks/grid_vs_real.py`` compares through the PFS red-arm
chain (BOSZ 2024 6000/4.0 and 4750/4.5, PHOENIX-ACES 3900/4.5; ``results/builtin_grid/``): the
listed lines' ``listed_loggf``/``listed_gf_slope`` and the forest's size, log gf and excitation
ranges (fine-structure RMS and mean line depth), ``CA2_COOL_TEFF``/``CA2_COOL_POWER`` (the Ca II
triplet of the 3900 K dwarf) and the weight of the broad TiO envelope in :mod:`.linelist` (its
790-883 nm continuum shape). Generator version 3 (issue 19.5, the Ca II triplet) gives Fe I
8661.9 (in the core of Ca II 8662) its real log gf, keeps the pseudo-random forest out of the
triplet's line bands (``forest_gaps_air_A``: only listed lines blend the triplet there) and
scales each triplet line's opacity by ``CA2_TRIPLET_FACTOR`` (+0.09, +0.08, -0.04 dex) so that
all nine equivalent widths of the three real models are within 11 %. No other star constrains
them; the dependence on log g and [M/H] is the model's own, untested against real models (see
``results/builtin_grid/README.md`` for what it does).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from copy import deepcopy
from functools import lru_cache
from pathlib import Path

import numpy as np
from numba import njit, prange

from specdenoise.codecs import bitround
from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate.constants import air_to_vacuum
from specdenoise.simulate.linelist import (
    ATOMIC_LINES,
    DISSOCIATION_EV,
    ELEMENTS,
    HELIUM,
    MOLECULAR_BANDS,
    barklem_lines,
    gf_lines,
)
from specdenoise.usercache import cache_dir

#: Bumped whenever the generated spectra change; part of the cache key. ("4": the stored
#: values are rounded half to even, by ``codecs.bitround``, the datasets' rounding, where "3"
#: rounded them half up: 19 of the 18,720 values of test_builtin_grid's TINY grid move by one
#: kept bit; results/builtin_grid/metrics_v3.json, measured on "3", was not measured again.)
GENERATOR_VERSION = "4"

FLUX_UNIT = "erg s-1 cm-2 nm-1 (surface flux)"

#: Default generator settings. Axes are {"start", "stop", "step"} or {"values": [...]}.
DEFAULT_SETTINGS: dict = {
    "teff": {"start": 3500.0, "stop": 7500.0, "step": 250.0},
    "logg": {"start": 0.0, "stop": 5.0, "step": 0.5},
    "m_h": {"start": -2.5, "stop": 0.75, "step": 0.25},
    "a_m": {"start": -0.25, "stop": 0.5, "step": 0.25},
    "wave_min_nm": 700.0,  # vacuum
    "wave_max_nm": 900.0,  # vacuum
    "sampling": 20000.0,  # R_samp = lambda / d_lambda of the log-uniform output grid
    "resolution": 10000.0,  # Gaussian FWHM resolving power of the stored spectra
    "oversampling": 8,  # fine-grid pixels per output pixel for the line opacity
    "keepbits": 14,  # float32 mantissa bits kept in the store (relative precision 3e-5)
    "vmic_kms": 2.0,  # microturbulence
    "tau_line": 0.5,  # grey optical depth of the line-forming layer
    "forest_lines": 2500,
    "forest_seed": 20250402,
    "forest_loggf": [-4.3, -2.0],  # log gf range at 4 eV excitation
    "forest_gf_slope": 0.4,  # d(log gf)/d(chi / eV): high-excitation lines have larger gf
    "forest_chi_ev": [3.5, 5.5],
    # lines of known position and excitation but no gf (linelist.barklem_lines): log gf at
    # 4 eV
    "listed_loggf": -0.1,
    "listed_gf_slope": 0.55,  # their d(log gf)/d(chi / eV)
    "listed_lines": True,  # False: no gf_lines/barklem_lines (ATOMIC_LINES, Paschen, forest)
    # air-wavelength ranges (Å) the pseudo-random forest leaves empty: the Ca II triplet's line
    # bands (Cenarro et al. 2001), whose blends are then real listed lines only
    "forest_gaps_air_A": [[8484.0, 8513.0], [8522.0, 8562.0], [8642.0, 8682.0]],
}

APPROXIMATION = (
    "Approximate synthetic spectra from specdenoise's built-in generator (one grey LTE "
    "line-forming layer, Milne-Eddington-like line depths, blackbody-based continuum); "
    "good enough to exercise the pipeline, not for science: use BOSZ for science runs."
)
PHYSICS = [
    "continuum: pi*B_lambda at the Eddington-Barbier temperature (grey T(tau), H- + H bf + "
    "scattering opacity; Paschen jump)",
    "real atomic lines (Ca II triplet, Na I, K I, Rb I, O I, N I, C I, Mg I, Al I, Si I, Ca I, "
    "Ti I, Fe I/II, Ni I) with Boltzmann excitation and Saha ionisation",
    "about 850 lines with gf from VALD (690-740 nm) and GALAH DR3 (758-793 nm); about 200 real "
    "line positions of Barklem et al. (2000) with a statistical log gf",
    "Ca II weakened below 4750 K and a broad TiO envelope, both set against PHOENIX-ACES 3900 K",
    "Ca II triplet line ratios set against BOSZ 2024 and PHOENIX-ACES; no pseudo-random lines "
    "in the triplet's line bands",
    "hydrogen Paschen series with linear Stark broadening",
    "Voigt profiles: thermal + microturbulent Doppler, radiative and van der Waals damping",
    "abundances scaled by [M/H]; O, Mg, Si, Ca, Ti also by [alpha/M]",
    "CO/TiO/CN chemical equilibrium; TiO gamma/delta and CN red band envelopes",
    "deterministic pseudo-random forest of weak high-excitation neutral-metal lines",
    "Gaussian broadening to the stated resolution, vacuum wavelengths",
]

# ---- physical constants (cgs) --------------------------------------------------------------
_K_B = 1.380649e-16  # erg/K
_H = 6.62607015e-27  # erg s
_C = 2.99792458e10  # cm/s
_AMU = 1.66053907e-24  # g
_M_H = 1.6735575e-24  # g
_EV_K = 11604.518  # K per eV
_THETA = 5039.78  # theta = 5039.78 / T gives 10**(-theta * chi[eV]) = exp(-chi / kT)
_PI_E2_MC2 = 8.85282e-13  # pi e^2 / (m_e c^2), cm: integrated line cross-section / lambda^2
_RYDBERG_H = 109677.583  # cm^-1
_SQRT_PI = math.sqrt(math.pi)

#: Global line-strength factor: the one-layer estimate of eta0 overestimates real line depths
#: (lines form over a range of depths where the source function falls slowly); fixed once
#: against BOSZ 2024 solar-metallicity dwarfs, see the module docstring.
LINE_SCALE = 0.06
#: Extra factor for the Paschen lines: with LINE_SCALE alone the one-layer model makes them
#: several times stronger than in real A/F stars (their n = 3 population is very
#: temperature-sensitive and they form deeper, over a wide range of layers).
HYDROGEN_SCALE = 0.1
#: Below CA2_COOL_TEFF the Ca II opacity is multiplied by (Teff / CA2_COOL_TEFF)**CA2_COOL_POWER:
#: the one-layer model keeps the triplet as strong in M dwarfs as in K dwarfs, where real
#: models weaken it (PHOENIX-ACES 3900 K has 0.55-0.75x the equivalent widths of version 1,
#: which had no such factor). Set against that one spectrum; see the module docstring.
CA2_COOL_TEFF = 4750.0
CA2_COOL_POWER = 4.5
#: Per-line factor on the opacity of each triplet line (key: air wavelength in Å), on top of its
#: real log gf (NIST: -1.31, -0.36, -0.62): +0.09, +0.08 and -0.04 dex of effective log gf. The
#: one-layer model gives the three lines equivalent-width ratios 8498 : 8542 : 8662 that differ
#: from those of the real models by 10-15 % in the same direction at every Teff (8498 too weak,
#: 8662 too strong against 8542); these factors centre the ratios of the three real models of
#: ``../shared/data`` (generator version 3, ``results/builtin_grid/``). Fitted, not physics.
CA2_TRIPLET_FACTOR = {8498.02: 1.24, 8542.09: 1.19, 8662.14: 0.92}
#: Maximum central depth of a saturated line (the surface source function is not zero).
DEPTH_MAX = 0.80
#: Van der Waals widths are multiplied by this (Unsoeld underestimates them; factors 2-3 are
#: usual). It also makes the Ca II wings grow with log g as in real dwarfs vs giants.
VDW_ENHANCEMENT = 3.0
#: Default log10 of the van der Waals width per H atom at 10^4 K (rad s^-1 cm^3).
DEFAULT_LOG_GAMMA6 = -7.5
#: Internal-partition-function constants of the dissociation equilibria (see _molecules).
MOLECULE_LOG_K0 = {"CO": 13.1, "TiO": 12.4, "CN": 13.1}
#: Band-integrated molecular cross sections (cm^2 per molecule) setting the band depths.
BAND_SIGMA = {"TiO": 5.4e-16, "CN": 1.2e-17}
#: Contributions below this opacity ratio are dropped (line windows end there).
ETA_CUTOFF = 3e-4
#: Largest line window half-width, in Å.
MAX_WING_A = 300.0


def _air_nm_to_vac(air_nm: float) -> float:
    return float(air_to_vacuum(np.array([air_nm * 10.0]), "AA")[0]) / 10.0


# ---- settings, axes, wavelengths, cache key ----------------------------------------------


def _resolve_settings(settings: Mapping | None) -> dict:
    s = deepcopy(DEFAULT_SETTINGS)
    if settings:
        unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
        if unknown:
            known = ", ".join(DEFAULT_SETTINGS)
            raise SpecdenoiseError(f"unknown built-in grid setting {unknown[0]!r}; known: {known}")
        s.update(deepcopy(dict(settings)))
    if s["wave_max_nm"] <= s["wave_min_nm"]:
        raise SpecdenoiseError("built-in grid: wave_max_nm must be larger than wave_min_nm")
    if s["resolution"] >= s["sampling"]:
        raise SpecdenoiseError("built-in grid: resolution must be below sampling (R_samp)")
    gaps = s["forest_gaps_air_A"]
    if not isinstance(gaps, list | tuple) or not all(
            isinstance(g, list | tuple) and len(g) == 2 and float(g[0]) < float(g[1])
            for g in gaps):
        raise SpecdenoiseError("built-in grid: forest_gaps_air_A must be a list of [low, high] "
                               "air wavelengths in Å with low < high")
    return s


def grid_axis_values(spec: Mapping) -> np.ndarray:
    """Node values of one axis from ``{"values": [...]}`` or ``{"start", "stop", "step"}``."""
    if "values" in spec:
        return np.asarray(spec["values"], dtype=np.float64)
    start, stop, step = float(spec["start"]), float(spec["stop"]), float(spec["step"])
    n = int(round((stop - start) / step)) + 1
    return np.round(start + step * np.arange(n), 6)


def builtin_axes(settings: Mapping | None = None) -> dict[str, np.ndarray]:
    """The parameter axes (teff K, logg dex, m_h dex, a_m dex) of the built-in grid."""
    s = _resolve_settings(settings)
    return {n: grid_axis_values(s[n]) for n in ("teff", "logg", "m_h", "a_m")}


def builtin_wave(settings: Mapping | None = None) -> np.ndarray:
    """Output wavelengths (nm, vacuum): log-uniform at R_samp from wave_min_nm past wave_max_nm."""
    s = _resolve_settings(settings)
    r = float(s["sampling"])
    n = int(math.ceil(math.log(s["wave_max_nm"] / s["wave_min_nm"]) * r)) + 1
    return s["wave_min_nm"] * np.exp(np.arange(n) / r)


def settings_key(settings: Mapping | None = None) -> str:
    """A short hash of the generator settings and version: the same key, the same grid."""
    blob = json.dumps({"settings": _resolve_settings(settings), "generator": GENERATOR_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def builtin_grid_path(settings: Mapping | None = None) -> Path:
    """Cache location ``<cache>/specdenoise/grids/builtin-<hash>.zarr`` for these settings
    (written by ``specdenoise.stage_grid.build_builtin_grid``; read by whoever needs the grid
    a built-in dataset was simulated from)."""
    return cache_dir() / "specdenoise" / "grids" / f"builtin-{settings_key(settings)}.zarr"


# ---- line list ------------------------------------------------------------------------------

_EL_NAMES = list(ELEMENTS)
_EL = {name: i for i, name in enumerate(_EL_NAMES)}
_EL_MASS = np.array([ELEMENTS[e][0] for e in _EL_NAMES])
_EL_LOGEPS = np.array([ELEMENTS[e][1] for e in _EL_NAMES])
_EL_ALPHA = np.array([ELEMENTS[e][2] for e in _EL_NAMES])
_EL_CHI = np.array([[ELEMENTS[e][3], ELEMENTS[e][4]] for e in _EL_NAMES])  # eV
_EL_U = np.array([ELEMENTS[e][5:8] for e in _EL_NAMES])


@lru_cache(maxsize=8)
def _line_table(wmin_nm: float, wmax_nm: float, n_forest: int, seed: int,
                loggf_range: tuple, gf_slope: float, chi_range: tuple,
                listed_loggf: float, listed: bool,
                listed_slope: float, gaps_air_a: tuple = ()) -> dict[str, np.ndarray]:
    """All lines as arrays: vacuum wavelength (nm), element, stage, chi (eV), log gf, log gamma6,
    hydrogen upper level (0 for metals)."""
    rows = []
    for el, stage, wair, chi, loggf, lg6 in ATOMIC_LINES:
        lam = float(air_to_vacuum(np.array([wair]), "AA")[0]) / 10.0
        rows.append((lam, _EL[el], stage, chi, loggf, DEFAULT_LOG_GAMMA6 if lg6 is None else lg6,
                     0))
    have = [(r[1], r[0]) for r in rows]  # (element index, vacuum nm) of lines with gf

    def listed_already(el: int, lam: float) -> bool:
        return any(e == el and abs(w - lam) < 0.005 for e, w in have)

    # lines with their own gf from public lists (VALD 690-740 nm, GALAH 758-793 nm)
    for el, stage, lam, chi, loggf, lg6 in (gf_lines() if listed else []):
        if listed_already(_EL[el], lam):
            continue
        rows.append((lam, _EL[el], stage, chi, loggf, DEFAULT_LOG_GAMMA6 if lg6 is None else lg6,
                     0))
    have = [(r[1], r[0]) for r in rows]
    # real positions, excitations and damping without gf (Barklem et al. 2000): a statistical
    # log gf rising with excitation; lines already listed with gf are skipped
    for el, wair, chi, lg6 in (barklem_lines() if listed else []):
        lam = float(air_to_vacuum(np.array([wair]), "AA")[0]) / 10.0
        if listed_already(_EL[el], lam):
            continue
        # the slope is a trend of iron-group lines of 1-5.5 eV: not extrapolated to the
        # high-excitation C, N, O, S lines
        loggf = listed_loggf + listed_slope * (min(chi, chi_range[1]) - 4.0)
        rows.append((lam, _EL[el], 0, chi, loggf, lg6, 0))
    # Paschen series: vacuum wavelengths from the Rydberg formula, Kramers f with a mean Gaunt
    # factor 0.85 (f(3->4) comes out 0.93 against the exact 0.84: good to ~10 %).
    for nu in range(10, 41):
        lam_nm = 1e7 / (_RYDBERG_H * (1 / 9 - 1 / nu**2))
        f = 0.85 * 32 / (3 * math.sqrt(3) * math.pi) / (27 * nu**3) / (1 / 9 - 1 / nu**2) ** 3
        chi = 13.598 * (1 - 1 / 9)
        rows.append((lam_nm, _EL["H"], 0, chi, math.log10(18 * f), -99.0, nu))
    tab = {
        k: np.array([r[i] for r in rows])
        for i, k in enumerate(("lam", "el", "stage", "chi", "loggf", "lg6", "nu"))
    }
    # weak-line forest: neutral metals, deterministic
    rng = np.random.default_rng(seed)
    margin = 2.0
    lam = rng.uniform(wmin_nm - margin, wmax_nm + margin, n_forest)
    pool = ["Fe", "Fe", "Fe", "Fe", "Fe", "Ni", "Cr", "Ti", "Ti", "Si", "Ca", "Mg"]
    el = np.array([_EL[pool[i]] for i in rng.integers(0, len(pool), n_forest)])
    chi = rng.uniform(chi_range[0], chi_range[1], n_forest)
    chi = np.where(el == _EL["Ti"], chi * 0.5, chi)  # Ti I lines are mostly low-excitation
    loggf = rng.uniform(loggf_range[0], loggf_range[1], n_forest) + gf_slope * (chi - 4.0)
    forest = {"lam": lam, "el": el, "stage": np.zeros(n_forest), "chi": chi, "loggf": loggf,
              "lg6": np.full(n_forest, DEFAULT_LOG_GAMMA6), "nu": np.zeros(n_forest)}
    if gaps_air_a:  # drawn as without gaps (the same random stream), then dropped there
        inside = np.zeros(n_forest, bool)
        for lo, hi in air_to_vacuum(np.asarray(gaps_air_a, dtype=np.float64), "AA") / 10.0:
            inside |= (lam >= lo) & (lam <= hi)
        forest = {k: v[~inside] for k, v in forest.items()}
    out = {k: np.concatenate([tab[k], forest[k]]) for k in tab}
    for k in ("el", "stage", "nu"):
        out[k] = out[k].astype(np.int64)
    keep = (out["lam"] > wmin_nm - 40.0) & (out["lam"] < wmax_nm + 40.0)
    return {k: v[keep] for k, v in out.items()}


def _lines_for(s: Mapping) -> dict[str, np.ndarray]:
    return _line_table(float(s["wave_min_nm"]), float(s["wave_max_nm"]), int(s["forest_lines"]),
                       int(s["forest_seed"]), tuple(s["forest_loggf"]), float(s["forest_gf_slope"]),
                       tuple(s["forest_chi_ev"]), float(s["listed_loggf"]),
                       bool(s["listed_lines"]), float(s["listed_gf_slope"]),
                       tuple(tuple(float(x) for x in g) for g in s["forest_gaps_air_A"]))


# ---- the line-forming layer ------------------------------------------------------------------


def _abundances(m_h: np.ndarray, a_m: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """(n_nodes, n_el) number abundances relative to hydrogen."""
    log_a = _EL_LOGEPS[None, :] - 12.0 + m_h[:, None] + a_m[:, None] * _EL_ALPHA[None, :]
    log_a[:, _EL["H"]] = 0.0
    giant = (logg < 3.5).astype(float)  # first dredge-up: CN-cycled material at the surface
    log_a[:, _EL["C"]] -= 0.2 * giant
    log_a[:, _EL["N"]] += 0.4 * giant
    return 10.0**log_a


def _saha_log_phi(theta: np.ndarray) -> np.ndarray:
    """(n_nodes, n_el, 2) log10 of the Saha factors Phi_j(T) in dyn cm^-2 (Gray):
    ``N_{j+1} P_e / N_j = Phi_j = 1.2024e9 (U_{j+1}/U_j) theta^-2.5 10^(-theta chi_j)``."""
    th = theta[:, None, None]
    return (np.log10(1.2024e9) + np.log10(_EL_U[None, :, 1:] / _EL_U[None, :, :2])
            - 2.5 * np.log10(th) - th * _EL_CHI[None, :, :])


def _saha_fractions(log_phi: np.ndarray, log_pe: np.ndarray) -> np.ndarray:
    """(n_nodes, n_el, 3) fractions in the neutral, singly and doubly ionised stage."""
    r1 = 10.0 ** np.clip(log_phi[..., 0] - log_pe[:, None], -300, 300)
    r2 = 10.0 ** np.clip(log_phi[..., 1] - log_pe[:, None], -300, 300)
    x0 = 1.0 / (1.0 + r1 + r1 * r2)
    return np.stack([x0, x0 * r1, x0 * r1 * r2], axis=-1)


def _h_minus_bf(lam_a: np.ndarray) -> np.ndarray:
    """H- bound-free cross-section (1e-18 cm^2) at wavelength(s) in Å (Gray, eq. 8.11)."""
    c = (1.99654, -1.18267e-5, 2.64243e-6, -4.40524e-10, 3.23992e-14, -1.39568e-18, 2.78701e-23)
    return np.maximum(sum(ci * lam_a**i for i, ci in enumerate(c)), 0.0)


def _continuous_opacity(lam_nm, theta, pe, pg, x_h0, n_e_per_h):
    """Continuous opacity per hydrogen nucleus (cm^2), broadcasting node arrays against lam_nm.

    H- bound-free and free-free (Gray eqs. 8.11-8.13), H bound-free from n = 3...10 (Kramers,
    Gaunt factor 1), Rayleigh scattering by H I (Dalgarno) and Thomson scattering.
    """
    lam_a = lam_nm * 10.0
    log_l = np.log10(lam_a)
    bf = 4.158e-10 * _h_minus_bf(lam_a) * 1e-18 * pe * theta**2.5 * 10.0 ** (0.754 * theta)
    f0 = -2.2763 - 1.6850 * log_l + 0.76661 * log_l**2 - 0.053346 * log_l**3
    f1 = 15.2827 - 9.2846 * log_l + 1.99381 * log_l**2 - 0.142631 * log_l**3
    f2 = (-197.789 + 190.266 * log_l - 67.9775 * log_l**2 + 10.6913 * log_l**3
          - 0.625151 * log_l**4)
    lt = np.log10(theta)
    ff = 1e-26 * pe * 10.0 ** (f0 + f1 * lt + f2 * lt**2)
    hbf = 0.0
    for n in range(3, 11):
        edge_nm = 1e7 * n**2 / _RYDBERG_H
        chi_n = 13.598 * (1.0 - 1.0 / n**2)
        hbf = hbf + np.where(lam_nm < edge_nm, 1.0, 0.0) * n**-3.0 * 10.0 ** (-theta * chi_n)
    hbf = 1.0449e-26 * lam_a**3 * hbf * (1.0 - 10.0 ** (-theta * 1.2398e4 / lam_a))
    rayleigh = 5.799e-13 / lam_a**4 + 1.422e-6 / lam_a**6 + 2.784 / lam_a**8
    return x_h0 * (bf + ff + hbf + rayleigh) + 6.652e-25 * n_e_per_h


def _layer(teff, logg, m_h, a_m, s: Mapping) -> dict[str, np.ndarray]:
    """State of the line-forming layer for node arrays (all shape (n,))."""
    teff, logg, m_h, a_m = (np.atleast_1d(np.asarray(v, dtype=np.float64))
                            for v in (teff, logg, m_h, a_m))
    teff, logg, m_h, a_m = np.broadcast_arrays(teff, logg, m_h, a_m)
    tau = float(s["tau_line"])
    t = teff * (0.75 * (tau + 2.0 / 3.0)) ** 0.25
    theta = _THETA / t
    g = 10.0**logg
    ab = _abundances(m_h, a_m, logg)
    n_nuc = 1.0 + HELIUM + ab[:, 1:].sum(axis=1)  # heavy particles per H nucleus
    log_phi = _saha_log_phi(theta)
    log_pg = np.log10(g) + 1.0  # first guess, dyn cm^-2
    log_pe = log_pg - 4.0
    for it in range(16):
        pg = 10.0**log_pg
        # charge conservation, P_e = (P_g - P_e) * electrons per heavy particle: bisection in
        # log P_e (wide bracket first, then around the previous solution)
        width = 12.0 if it == 0 else 1.5
        lo = np.maximum(log_pe - width, -15.0)
        hi = np.minimum(log_pe + width, np.log10(pg))
        for _ in range(34 if it == 0 else 22):
            mid = 0.5 * (lo + hi)
            x = _saha_fractions(log_phi, mid)
            electrons = (ab * (x[..., 1] + 2.0 * x[..., 2])).sum(axis=1) / n_nuc
            pe_mid = 10.0**mid
            too_high = pe_mid > (pg - pe_mid) * electrons
            hi = np.where(too_high, mid, hi)
            lo = np.where(too_high, lo, mid)
        log_pe = 0.5 * (lo + hi)
        pe = 10.0**log_pe
        x = _saha_fractions(log_phi, log_pe)
        x_h0 = x[:, _EL["H"], 0]
        n_e_per_h = pe / (pg - pe) * n_nuc
        kappa = _continuous_opacity(850.0, theta, pe, pg, x_h0, n_e_per_h)
        kappa_mass = kappa / (_M_H * (1.0 + 4.0 * HELIUM))
        new = np.minimum(np.log10(g * tau / kappa_mass), 9.0)
        # kappa ~ P^(1/2) (H- with metal electrons): weighting 2/3 on the new value converges
        # in one step for that slope and stays a contraction for slopes between 0 and -1
        log_pg = log_pg / 3.0 + 2.0 * new / 3.0
    pg = 10.0**log_pg
    return {"teff": teff, "logg": logg, "t": t, "theta": theta, "pg": pg, "pe": pe,
            "x": x, "x_h0": x_h0, "ab": ab, "n_nuc": n_nuc, "n_e_per_h": n_e_per_h}


def _molecules(lay: Mapping) -> dict[str, np.ndarray]:
    """Molecular number densities per H nucleus: TiO and CN (CO only locks up C or O).

    Guldberg-Waage, ``P_A P_B / P_AB = K_p``, with ``log10 K_p = c + 2.5 log10(T / 3000) - D0
    theta`` (dyn cm^-2): the translational part of the partition functions exactly, the
    internal part as one constant ``c`` per molecule (:data:`MOLECULE_LOG_K0`). The minority
    partner's atoms are conserved: ``P_AB <= min(P_A, P_B)``.
    """
    theta, t = lay["theta"], lay["t"]
    p_h = (lay["pg"] - lay["pe"]) / lay["n_nuc"]  # partial pressure of H nuclei
    ab, x = lay["ab"], lay["x"]

    def kp(mol):
        return 10.0 ** (MOLECULE_LOG_K0[mol] + 2.5 * np.log10(t / 3000.0)
                        - DISSOCIATION_EV[mol] * theta)

    def pair(pa, pb, k):
        # (pa - y)(pb - y) = k y, the smaller root: molecules limited by the rarer atom
        ssum = pa + pb + k
        return 2.0 * pa * pb / (ssum + np.sqrt(np.maximum(ssum**2 - 4.0 * pa * pb, 0.0)))

    p = {e: ab[:, _EL[e]] * x[:, _EL[e], 0] * p_h for e in ("C", "N", "O", "Ti")}
    p_co = pair(p["C"], p["O"], kp("CO"))
    p_c, p_o = p["C"] - p_co, p["O"] - p_co
    # Real giants have cooler, more extended outer layers than one grey layer describes, and
    # show TiO as strongly as dwarfs of the same Teff: an explicit empirical gravity factor.
    giant_boost = 10.0 ** (0.25 * np.clip(4.5 - lay["logg"], 0.0, None))
    return {
        "TiO": pair(p["Ti"], p_o, kp("TiO")) / p_h * giant_boost,
        "CN": pair(p_c, p["N"], kp("CN")) / p_h,
    }


# ---- per-node line and band parameters -----------------------------------------------------


def _line_params(lay: Mapping, lines: Mapping, s: Mapping, r_fine: float):
    """eta0, Doppler width (fine pixels), damping a, window half-width (fine pixels);
    each (n_nodes, n_lines)."""
    lam = lines["lam"]
    lam_cm = lam * 1e-7
    t = lay["t"][:, None]
    theta = lay["theta"][:, None]
    el, stage = lines["el"], lines["stage"]
    mass = _EL_MASS[el] * _AMU
    b = np.sqrt(2.0 * _K_B * t / mass + (s["vmic_kms"] * 1e5) ** 2)  # cm/s
    dop_cm = lam_cm * b / _C
    frac = lay["x"][:, el, stage]  # fraction in the line's ionisation stage
    u = _EL_U[el, stage]
    n_low = lay["ab"][:, el] * frac * 10.0 ** (-theta * lines["chi"]) / u
    stim = 1.0 - np.exp(-_H * _C / (lam_cm * _K_B * t))
    kappa_c = _continuous_opacity(lam[None, :], theta, lay["pe"][:, None], lay["pg"][:, None],
                                  lay["x_h0"][:, None], lay["n_e_per_h"][:, None])
    kappa_l = (_PI_E2_MC2 * lam_cm**2 * 10.0 ** lines["loggf"] * n_low * stim
               / (_SQRT_PI * dop_cm))
    eta0 = LINE_SCALE * kappa_l / kappa_c
    eta0[:, lines["nu"] > 0] *= HYDROGEN_SCALE
    ca2 = (el == _EL["Ca"]) & (stage == 1)
    eta0[:, ca2] *= np.minimum(1.0, lay["teff"][:, None] / CA2_COOL_TEFF) ** CA2_COOL_POWER
    for air_a, factor in CA2_TRIPLET_FACTOR.items():
        eta0[:, ca2 & (np.abs(lam - _air_nm_to_vac(air_a / 10.0)) < 0.01)] *= factor
    # damping: radiative (classical x 3) + van der Waals per neutral H
    n_tot = (lay["pg"] - lay["pe"]) / (_K_B * lay["t"])
    n_h0 = (n_tot / lay["n_nuc"] * lay["x_h0"])[:, None]
    gamma = 3.0 * 0.2223 / lam_cm**2 + (VDW_ENHANCEMENT * 10.0 ** lines["lg6"] * n_h0
                                       * (t / 1e4) ** 0.3)
    a = gamma * lam_cm**2 / (4.0 * math.pi * _C * dop_cm)
    # hydrogen: linear Stark, HWHM ~ half the Stark shift of a typical component at the
    # Holtsmark field F0 = 2.61 e N_e^(2/3): d sigma = 1.5 (e a0 / h c) F0 k, k = (nu^2 - 9)/2
    hyd = lines["nu"] > 0
    if hyd.any():
        n_e = (lay["pe"] / (_K_B * lay["t"]))[:, None]
        f0 = 2.61 * 4.803e-10 * n_e ** (2.0 / 3.0)
        k = 0.5 * (lines["nu"][hyd] ** 2 - 9.0)
        hwhm_cm = 0.5 * lam_cm[hyd] ** 2 * 1.5 * 1.2795e-2 * f0 * k
        a[:, hyd] = a[:, hyd] + hwhm_cm / dop_cm[:, hyd]
    dop_px = dop_cm / lam_cm * r_fine
    # window: where eta0 * H(a, v) falls below ETA_CUTOFF (Gaussian core or Lorentz wing)
    ratio = np.maximum(eta0 / ETA_CUTOFF, 1.0)
    v_max = np.maximum(np.sqrt(np.log(ratio)), np.sqrt(ratio * a / _SQRT_PI))
    max_px = MAX_WING_A * 1e-8 / lam_cm * r_fine
    half_px = np.where(eta0 > ETA_CUTOFF, np.minimum(v_max * dop_px, max_px), 0.0)
    return eta0, dop_px, a, half_px


def _band_shapes(lam_fine_nm: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(n_mol, n_fine) red-degraded band-head envelopes, peak 1 at each head before weighting."""
    names = list(MOLECULAR_BANDS)
    out = np.zeros((len(names), lam_fine_nm.size))
    for m, mol in enumerate(names):
        for head_air, weight, length in MOLECULAR_BANDS[mol]:
            head = float(air_to_vacuum(np.array([head_air]), "AA")[0]) / 10.0
            d = (lam_fine_nm - head) * 10.0  # Å
            red = np.exp(-np.clip(d, 0, None) / length)
            edge = np.exp(-0.5 * (np.clip(d, None, 0) / 1.5) ** 2)  # ~1.5 Å sharp head
            out[m] += weight * red * edge
    return names, out


# ---- the Numba kernel and its NumPy reference ----------------------------------------------


@njit(cache=True, inline="always")
def _voigt_h(a, v):
    """Voigt function H(a, v) = Re w(v + i a), Humlicek (1982, JQSRT 27, 437) W4."""
    t = complex(a, -v)
    s = abs(v) + a
    if s >= 15.0:
        w = t * 0.5641896 / (0.5 + t * t)
    elif s >= 5.5:
        u = t * t
        w = t * (1.410474 + u * 0.5641896) / (0.75 + u * (3.0 + u))
    elif a >= 0.195 * abs(v) - 0.176:
        w = (16.4955 + t * (20.20933 + t * (11.96482 + t * (3.778987 + t * 0.5642236)))) / (
            16.4955 + t * (38.82363 + t * (39.27121 + t * (21.69274 + t * (6.699398 + t))))
        )
    else:
        u = t * t
        num = t * (36183.31 - u * (3321.9905 - u * (1540.787 - u * (219.0313 - u * (
            35.76683 - u * (1.320522 - u * 0.56419))))))
        den = 32066.6 - u * (24322.84 - u * (9022.228 - u * (2186.181 - u * (364.2191 - u * (
            61.57037 - u * (1.841439 - u))))))
        w = np.exp(u) - num / den
    return w.real


@njit(cache=True, parallel=True)
def _render_kernel(center_px, eta0, dop_px, damp, half_px, band_shape, band_strength,
                   depth_max, kernel, step, out):
    """Residual flux F/C for many nodes.

    center_px (n_lines,) line centres in fine-pixel units; eta0, dop_px, damp, half_px
    (n_nodes, n_lines); band_shape (n_mol, n_fine); band_strength (n_nodes, n_mol);
    kernel (n_taps,) Gaussian weights; out (n_nodes, n_out) is filled with
    ``sum_t kernel[t] * (1 - depth_max eta/(1+eta))[j*step + t]``.
    """
    n_nodes, n_lines = eta0.shape
    n_fine = band_shape.shape[1]
    n_out = out.shape[1]
    n_taps = kernel.size
    for i in prange(n_nodes):
        eta = np.zeros(n_fine)
        for m in range(band_shape.shape[0]):
            sm = band_strength[i, m]
            if sm > 0.0:
                for k in range(n_fine):
                    eta[k] += sm * band_shape[m, k]
        for ln in range(n_lines):
            e0 = eta0[i, ln]
            w = half_px[i, ln]
            if w <= 0.0:
                continue
            c = center_px[ln]
            k0 = max(0, int(math.floor(c - w)))
            k1 = min(n_fine - 1, int(math.ceil(c + w)))
            inv = 1.0 / dop_px[i, ln]
            a = damp[i, ln]
            for k in range(k0, k1 + 1):
                eta[k] += e0 * _voigt_h(a, (k - c) * inv)
        for k in range(n_fine):
            eta[k] = 1.0 - depth_max * eta[k] / (1.0 + eta[k])
        for j in range(n_out):
            acc = 0.0
            base = j * step
            for tp in range(n_taps):
                acc += kernel[tp] * eta[base + tp]
            out[i, j] = acc


def _render_reference(center_px, eta0, dop_px, damp, band_shape, band_strength, depth_max,
                      kernel, step, n_out):
    """NumPy reference of :func:`_render_kernel` for one node (1-D inputs): every line over the
    whole fine grid with SciPy's Faddeeva function, no windows."""
    from scipy.special import wofz

    k = np.arange(band_shape.shape[1], dtype=np.float64)
    eta = band_strength @ band_shape
    for ln in range(center_px.size):
        if eta0[ln] <= 0:
            continue
        v = (k - center_px[ln]) / dop_px[ln]
        eta = eta + eta0[ln] * wofz(v + 1j * damp[ln]).real
    rel = 1.0 - depth_max * eta / (1.0 + eta)
    conv = np.convolve(rel, kernel[::-1], mode="valid")
    return conv[::step][:n_out]


# ---- the generator ------------------------------------------------------------------------


class _Generator:
    """Precomputed, node-independent pieces for one settings dict."""

    def __init__(self, s: Mapping):
        self.s = s
        self.wave = builtin_wave(s)
        self.step = int(s["oversampling"])
        self.r_fine = float(s["sampling"]) * self.step
        sigma_px = self.r_fine / (float(s["resolution"]) * 2.0 * math.sqrt(2.0 * math.log(2.0)))
        half = int(math.ceil(4.5 * sigma_px))
        taps = np.arange(-half, half + 1, dtype=np.float64)
        kern = np.exp(-0.5 * (taps / sigma_px) ** 2)
        self.kernel = kern / kern.sum()
        self.half = half
        n_fine = (self.wave.size - 1) * self.step + 2 * half + 1
        self.lam_fine = self.wave[0] * np.exp((np.arange(n_fine) - half) / self.r_fine)
        self.lines = _lines_for(s)
        self.center_px = np.log(self.lines["lam"] / self.wave[0]) * self.r_fine + half
        self.band_names, self.band_shape = _band_shapes(self.lam_fine)

    def node_inputs(self, teff, logg, m_h, a_m):
        lay = _layer(teff, logg, m_h, a_m, self.s)
        eta0, dop_px, damp, half_px = _line_params(lay, self.lines, self.s, self.r_fine)
        mol = _molecules(lay)
        kappa_c = _continuous_opacity(800.0, lay["theta"], lay["pe"], lay["pg"], lay["x_h0"],
                                      lay["n_e_per_h"])
        strength = np.stack(
            [LINE_SCALE * BAND_SIGMA[m] * mol[m] / kappa_c for m in self.band_names], axis=1
        )
        return lay, eta0, dop_px, damp, half_px, strength

    def continuum(self, lay) -> np.ndarray:
        """(n_nodes, n_wave) pi B_lambda(T_eff(lambda)) in erg s-1 cm-2 nm-1."""
        lam = self.wave[None, :]
        args = (lay["theta"][:, None], lay["pe"][:, None], lay["pg"][:, None],
                lay["x_h0"][:, None], lay["n_e_per_h"][:, None])
        k_lam = _continuous_opacity(lam, *args)
        k_ref = _continuous_opacity(850.0, *args)
        tau_eff = (2.0 / 3.0) * k_ref / k_lam
        t = lay["teff"][:, None] * (0.75 * (tau_eff + 2.0 / 3.0)) ** 0.25
        lam_cm = lam * 1e-7
        x = _H * _C / (lam_cm * _K_B * t)
        b_cm = 2.0 * _H * _C**2 / lam_cm**5 / np.expm1(x)  # erg s-1 cm-2 cm-1 sr-1
        return math.pi * b_cm * 1e-7

    def render(self, teff, logg, m_h, a_m) -> tuple[np.ndarray, np.ndarray]:
        """(flux, cont), each (n_nodes, n_wave) float64, for node arrays."""
        lay, eta0, dop_px, damp, half_px, strength = self.node_inputs(teff, logg, m_h, a_m)
        rel = np.empty((eta0.shape[0], self.wave.size))
        _render_kernel(self.center_px, eta0, dop_px, damp, half_px, self.band_shape, strength,
                       DEPTH_MAX, self.kernel, self.step, rel)
        cont = self.continuum(lay)
        return rel * cont, cont


@lru_cache(maxsize=4)
def _generator_cached(key: str) -> _Generator:
    return _Generator(json.loads(key))


def _generator(s: Mapping) -> _Generator:
    return _generator_cached(json.dumps(s, sort_keys=True))


def synthesize(teff, logg, m_h, a_m, wave=None, settings=None) -> tuple[np.ndarray, np.ndarray]:
    """Spectrum of one model: (flux, cont) in erg s-1 cm-2 nm-1 (surface flux).

    Parameters
    ----------
    teff : effective temperature, K. ``logg``: log10(g / cm s^-2). ``m_h``, ``a_m``: dex.
    wave : vacuum wavelengths in nm inside the settings' range; default the grid's own
        wavelengths (then the result equals the grid node exactly). Other wavelengths are
        linearly interpolated from the grid sampling.
    settings : generator settings (see :data:`DEFAULT_SETTINGS`).

    Returns
    -------
    flux, cont : float64 arrays shaped like ``wave``; ``flux`` at the settings' resolution.
        The store holds the same values rounded to ``keepbits`` mantissa bits
        (:func:`specdenoise.codecs.bitround`).
    """
    s = _resolve_settings(settings)
    gen = _generator(s)
    flux, cont = gen.render(teff, logg, m_h, a_m)
    flux, cont = flux[0], cont[0]
    if wave is None:
        return flux, cont
    wave = np.asarray(wave, dtype=np.float64)
    if wave.min() < gen.wave[0] or wave.max() > gen.wave[-1]:
        raise SpecdenoiseError(
            f"wavelengths {wave.min():.1f}-{wave.max():.1f} nm are outside the built-in range "
            f"{gen.wave[0]:.1f}-{gen.wave[-1]:.1f} nm; change wave_min_nm/wave_max_nm"
        )
    return np.interp(wave, gen.wave, flux), np.interp(wave, gen.wave, cont)


# ---- the nodes of the store (written by specdenoise.stage_grid) ----------------------------


def grid_attrs(settings: Mapping | None = None) -> dict:
    """The global attributes of a built-in grid store: its settings, key and what it is."""
    s = _resolve_settings(settings)
    return {
        "source": "builtin",
        "resolution": float(s["resolution"]),
        "sampling": float(s["sampling"]),
        "sampling_kind": "log-uniform in wavelength (R_samp = lambda / d_lambda)",
        "generator": "specdenoise.simulate.builtin_grid",
        "generator_version": GENERATOR_VERSION,
        "settings": dict(s),
        "settings_hash": settings_key(s),
        "approximation": APPROXIMATION,
        "physics": PHYSICS,
        "line_scale": LINE_SCALE,
        "depth_max": DEPTH_MAX,
    }


def generate_nodes(
    settings: Mapping | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every node of the grid, a (teff, logg) row of nodes at a time.

    Yields ``(index, flux, cont)``: ``index`` (k, 4) integer node indices into
    :func:`builtin_axes`, ``flux`` and ``cont`` (k, n_wave) float32 in erg s-1 cm-2 nm-1 on
    :func:`builtin_wave`, rounded to ``keepbits`` mantissa bits
    (:func:`specdenoise.codecs.bitround`).
    """
    s = _resolve_settings(settings)
    teff, logg, m_h, a_m = builtin_axes(s).values()
    gen = _generator(s)
    shape = (teff.size, logg.size, m_h.size, a_m.size)
    for i in range(shape[0]):
        for j in range(shape[1]):
            mm, aa = np.meshgrid(m_h, a_m, indexing="ij")
            flux, cont = gen.render(np.full(mm.size, teff[i]), np.full(mm.size, logg[j]),
                                    mm.ravel(), aa.ravel())
            idx = np.array([(i, j, k, m) for k in range(shape[2]) for m in range(shape[3])])
            yield idx, bitround(flux, s["keepbits"]), bitround(cont, s["keepbits"])
