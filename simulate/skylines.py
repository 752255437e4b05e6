"""Night-sky emission lines between 700 and 900 nm, computed from molecular physics.

Two emitters dominate the PFS red arm:

* **OH Meinel bands** -- vibration-rotation transitions within the ground state X^2Pi of OH,
  excited by H + O3 -> OH(v <= 9) + O2 near 87 km (Meinel 1950).  Term values follow the
  Hill & Van Vleck (1928) formula for a ^2Pi state intermediate between Hund's cases (a) and (b),

      F_{1,2}(J) = B_v [ (J+1/2)^2 - 1 -/+ 1/2 sqrt(4 (J+1/2)^2 + Y (Y - 4)) ] - D_v N^2 (N+1)^2,

  ``Y = A_v / B_v`` (negative: X^2Pi of OH is inverted, so F1 = ^2Pi_3/2, N = J - 1/2, is the lower
  component), plus the vibrational energy G(v).  Lambda doubling (< 0.3 cm^-1 at low J) is
  ignored.  The main branches P, Q, R of both spin components are kept (satellites are weak);
  line strengths are the Hund's case (a) Honl-London factors, the upper rotational levels are
  populated in Boltzmann equilibrium at ``T_rot`` (about 190-200 K in the mesosphere), and each
  band's total photon emission rate is ``N(v') A(v' -> v'')`` -- vibrational population times
  band Einstein coefficient -- given here directly as a band brightness in rayleighs.
* **O2 atmospheric band (0-1)** at 864-870 nm, b^1Sigma_g^+ (v=0) -> X^3Sigma_g^- (v=1) from
  ~94 km.  (The (0-0) band at 762 nm is absorbed by the O2 of the lower atmosphere.)  Upper
  levels have even N' only, lower levels odd N'' only (16O2 nuclear statistics); the lower
  state's spin triplet follows Schlapp (1937); the four branches PP, PQ, RR, RQ are kept.

The spectroscopic constants (per vibrational level: vibrational term, B_v, D_v, A_v) start from
approximate literature values (Huber & Herzberg 1979; Coxon 1980, Can. J. Phys. 58, 933;
Abrams et al. 1994, ApJS 93, 351 for OH; Babcock & Herzberg 1948 and Rouille et al. 1992 for
O2) and were then adjusted by least squares so that the computed lines fall on the peaks of the
PFS ETC sky model (``shared/data/pfs_etc``) -- a fit of term values to observed lines.  The band
brightnesses were fitted to the same sky vectors at T_rot = 195 K.  No line
list was copied: every wavelength below comes from the term-value formulas.

Wavelengths are vacuum nm; intensities are photon surface brightness in rayleighs
(1 R = 10^10 / 4 pi photons s^-1 m^-2 sr^-1) at the zenith, outside the lower atmosphere.
"""

from __future__ import annotations

import numpy as np

from specdenoise.simulate.constants import HC_OVER_K_CM_K

#: photons s^-1 m^-2 arcsec^-2 per rayleigh
RAYLEIGH_TO_PHOTONS_ARCSEC2 = 1e10 / (4.0 * np.pi) / (180.0 / np.pi * 3600.0) ** 2

#: rotational temperature of the OH layer, K
T_ROT_OH = 195.0
#: rotational temperature of the O2 layer, K
T_ROT_O2 = 195.0

# --- OH X^2Pi, per vibrational level v = 0..9 (cm^-1) -------------------------------------------
#: vibrational term G(v) above v = 0
OH_G = np.array([0.0, 3569.64, 6973.69, 10214.49, 13291.77, 16207.79, 18959.46, 21546.12,
                 23959.63, 26196.12])
#: rotational constant B_v
OH_B = np.array([18.5007, 17.8241, 17.1083, 16.5038, 15.6939, 14.9343, 14.2121, 13.4140,
                 12.9997, 12.0858])
#: centrifugal distortion D_v
OH_D = np.array([1.910, 1.870, 1.836, 1.810, 1.787, 1.776, 1.778, 1.793, 1.830, 1.896]) * 1e-3
#: spin-orbit constant A_v
OH_A = np.array([-139.05, -139.32, -139.59, -139.84, -140.06, -140.25, -140.40, -140.49,
                 -140.50, -140.43])

#: OH band brightness N(v') A(v'->v'') in rayleighs at the zenith, for the bands with lines in
#: 700-900 nm: (v', v'') -> R
OH_BANDS: dict[tuple[int, int], float] = {
    (4, 0): 179.1, (5, 1): 633.3, (6, 2): 1541.1, (7, 3): 1339.0,
    (7, 2): 414.3, (8, 3): 448.9, (9, 4): 650.0,
}
# (7-2) lies mostly blueward of the arm; its fitted brightness is high because its high-N
# P-branch lines also stand in for the weak lines the ETC's sky atlas has at 710-724 nm.
#: highest rotational quantum number N' computed
OH_NMAX = 12

# --- O2 b^1Sigma_g^+ (v=0) -> X^3Sigma_g^- (v=1) -------------------------------------------------
O2_NU0 = 13120.908 - 1556.385  #: band origin, cm^-1
O2_B_UP, O2_D_UP = 1.39125, 5.37e-6
O2_B_LO, O2_D_LO = 1.42188, 4.86e-6
O2_LAMBDA_SS, O2_GAMMA_SR = 1.9847, -0.00843  #: spin-spin and spin-rotation constants, X(v=1)
#: O2 (0-1) band brightness, rayleighs
O2_BAND_R = 395.1
O2_NMAX = 25


def oh_terms(v: int, j: np.ndarray, component: int, g=OH_G, b=OH_B, d=OH_D, a=OH_A):
    """Term value (cm^-1) of OH X^2Pi level (v, J, F_component), Hill & Van Vleck + D term."""
    bv, yv = b[v], a[v] / b[v]
    x = j + 0.5
    root = np.sqrt(4.0 * x * x + yv * (yv - 4.0))
    sign = -1.0 if component == 1 else 1.0
    n = j - 0.5 if component == 1 else j + 0.5
    return g[v] + bv * (x * x - 1.0 + sign * 0.5 * root) - d[v] * (n * (n + 1.0)) ** 2


def _honl_london(j_lo: np.ndarray, dj: int, omega: float) -> np.ndarray:
    """Hund's case (a) line strength for Delta Lambda = 0, lower-state J and Delta J = J' - J''."""
    if dj == 1:
        return (j_lo + 1.0 + omega) * (j_lo + 1.0 - omega) / (j_lo + 1.0)
    if dj == 0:
        return (2.0 * j_lo + 1.0) * omega**2 / (j_lo * (j_lo + 1.0))
    return (j_lo + omega) * (j_lo - omega) / j_lo


def oh_lines(t_rot: float = T_ROT_OH, bands=None, constants=None):
    """OH Meinel lines of the given bands: ``(wave_nm_vacuum, rayleighs, band_index)``.

    ``bands`` maps (v', v'') to the band brightness (default :data:`OH_BANDS`); ``constants``
    optionally replaces ``(G, B, D, A)``.  Each band's lines sum to its brightness.
    """
    bands = OH_BANDS if bands is None else bands
    g, b, d, a = constants if constants is not None else (OH_G, OH_B, OH_D, OH_A)
    waves, ints, idx = [], [], []
    for ib, ((vu, vl), bright) in enumerate(bands.items()):
        band_w, band_i = [], []
        qsum = 0.0
        for comp, omega in ((1, 1.5), (2, 0.5)):
            j_up = np.arange(omega, OH_NMAX + 0.6)
            e_up = oh_terms(vu, j_up, comp, g, b, d, a)
            e_ref = oh_terms(vu, np.array([1.5]), 1, g, b, d, a)[0]
            pop = np.exp(-(e_up - e_ref) * HC_OVER_K_CM_K / t_rot)
            qsum += np.sum((2 * j_up + 1) * pop)
            for dj in (-1, 0, 1):  # J' - J''
                j_lo = j_up - dj
                ok = j_lo >= omega
                if dj == 0:
                    ok &= j_lo > 0.5
                jl, ju, pp = j_lo[ok], j_up[ok], pop[ok]
                e_lo = oh_terms(vl, jl, comp, g, b, d, a)
                nu = oh_terms(vu, ju, comp, g, b, d, a) - e_lo
                band_w.append(1e7 / nu)
                band_i.append(pp * _honl_london(jl, dj, omega))
        band_w = np.concatenate(band_w)
        band_i = np.concatenate(band_i) / qsum
        waves.append(band_w)
        ints.append(bright * band_i / band_i.sum())
        idx.append(np.full(band_w.size, ib))
    return np.concatenate(waves), np.concatenate(ints), np.concatenate(idx)


def _o2_lower_terms(n: np.ndarray, level: int) -> np.ndarray:
    """X^3Sigma^- rotational terms (cm^-1) for F1 (J=N+1), F2 (J=N), F3 (J=N-1); Schlapp 1937."""
    b, lam, gam = O2_B_LO, O2_LAMBDA_SS, O2_GAMMA_SR
    base = b * n * (n + 1.0) - O2_D_LO * (n * (n + 1.0)) ** 2
    if level == 2:
        return base
    if level == 1:
        return base + (2 * n + 3) * b - lam - np.sqrt((2 * n + 3) ** 2 * b * b + lam * lam
                                                     - 2 * lam * b) + gam * (n + 1)
    return base - (2 * n - 1) * b - lam + np.sqrt((2 * n - 1) ** 2 * b * b + lam * lam
                                                 - 2 * lam * b) - gam * n


def o2_lines(t_rot: float = T_ROT_O2, brightness: float = O2_BAND_R):
    """O2 atmospheric (0-1) band lines: ``(wave_nm_vacuum, rayleighs)``."""
    n_up = np.arange(0, O2_NMAX + 1, 2, dtype=np.float64)  # even N' (= J')
    e_up = O2_B_UP * n_up * (n_up + 1) - O2_D_UP * (n_up * (n_up + 1)) ** 2
    pop = (2 * n_up + 1) * np.exp(-e_up * HC_OVER_K_CM_K / t_rot)
    waves, ints = [], []
    # (N'' = N' + 1 or N' - 1, lower spin level); each upper level emits to the four branches
    for dn, level in ((+1, 2), (+1, 3), (-1, 2), (-1, 1)):  # PP, PQ, RR, RQ
        n_lo = n_up + dn
        ok = n_lo >= 1
        if level == 3:
            ok &= n_lo >= 1
        nu = O2_NU0 + e_up[ok] - _o2_lower_terms(n_lo[ok], level)
        waves.append(1e7 / nu)
        ints.append(pop[ok] / (2 * n_up[ok] + 1) * (n_up[ok] + 0.5))
    w, i = np.concatenate(waves), np.concatenate(ints)
    return w, brightness * i / i.sum()


def sky_lines(t_rot_oh: float = T_ROT_OH):
    """All sky lines: ``(wave_nm_vacuum, rayleighs)``, OH Meinel bands plus O2 (0-1)."""
    w1, i1, _ = oh_lines(t_rot_oh)
    w2, i2 = o2_lines()
    return np.concatenate([w1, w2]), np.concatenate([i1, i2])
