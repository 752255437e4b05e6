"""Atomic and molecular data for the built-in synthetic grid (:mod:`.builtin_grid`).

The constants and ``ATOMIC_LINES`` are typed in by hand from standard references and rounded:
wavelengths to 0.01 Å, oscillator strengths (log gf) and van der Waals constants to about
0.1 dex. That is plenty for a grid that is approximate by design (see the module docstring of
``builtin_grid``) and is why nothing here is meant for abundance work. The two files in
``data/`` hold longer line lists (facts only; sources below).

Sources of the numbers, by kind:

- solar abundances ``log eps`` (H = 12): Asplund, Grevesse, Sauval & Scott (2009, ARA&A 47, 481);
- ionisation energies: NIST Atomic Spectra Database;
- partition functions: rough values near 5000 K (Gray, *The Observation and Analysis of Stellar
  Photospheres*, appendix D); their temperature dependence is ignored;
- line positions (air), lower-level excitation energies and log gf: NIST / VALD-like values as
  commonly quoted for these well-known lines (Ca II infrared triplet, Na I, K I, O I, Mg I,
  Si I, Ca I, Ti I, Fe I, Al I, N I, Ni I, Rb I);
- molecular band heads (air, approximate to a few Å): TiO gamma and delta systems, CN red system;
- the weak-line forest's positions (:func:`barklem_lines`): every neutral-atom line of 690-910 nm
  in the van der Waals table of Barklem, Piskunov & O'Mara (2000, A&AS 142, 467; VizieR
  J/A+AS/142/467): air wavelengths, lower-level energies and broadening constants, taken (facts
  only) from ``Barklem_2000.fits`` as distributed in the public repository
  ``github.com/iaescala/moog2turbo`` (commit 813584f) into
  ``data/barklem2000_neutral_690_910nm.csv``.
  That table has no oscillator strengths: the grid gives those lines a statistical log gf
  (see ``builtin_grid``);
- lines with their own log gf where a public list was available offline (:func:`gf_lines`,
  ``data/gf_lines_690_793nm.csv``): 690-740 nm from the VALD line list (February 2015;
  Ryabchikova et al. 2015, Phys. Scr. 90, 054005) as distributed per element in the public
  repository ``github.com/MingjieJian/pymoog`` (commit fd6665f), 758.5-792.7 nm from the GALAH
  DR3 master line list v5.2 (Buder et al. 2021, MNRAS 506, 150) as packaged in
  ``github.com/ajwheeler/Korg.jl`` (commit 740343f). The file's header gives the selection.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

#: The data files of this package (facts only, each with its source in its header).
DATA_DIR = Path(__file__).parent / "data"

#: element -> (atomic mass in u, solar log eps, alpha element?, first and second ionisation
#: energies in eV, partition functions U of the neutral, singly and doubly ionised stage)
ELEMENTS: dict[str, tuple[float, float, bool, float, float, float, float, float]] = {
    "H": (1.008, 12.00, False, 13.598, 99.0, 2.0, 1.0, 1.0),
    "C": (12.011, 8.43, False, 11.260, 24.383, 9.3, 6.0, 1.0),
    "N": (14.007, 7.83, False, 14.534, 29.601, 4.1, 9.0, 6.0),
    "O": (15.999, 8.69, True, 13.618, 35.121, 8.7, 4.0, 9.0),
    "Na": (22.990, 6.24, False, 5.139, 47.286, 2.0, 1.0, 6.0),
    "Mg": (24.305, 7.60, True, 7.646, 15.035, 1.0, 2.0, 1.0),
    "Al": (26.982, 6.45, False, 5.986, 18.829, 5.8, 1.0, 2.0),
    "Si": (28.086, 7.51, True, 8.152, 16.346, 9.5, 5.6, 1.0),
    "K": (39.098, 5.03, False, 4.341, 31.63, 2.0, 1.0, 6.0),
    "Ca": (40.078, 6.34, True, 6.113, 11.872, 1.2, 2.2, 1.0),
    "Ti": (47.867, 4.95, True, 6.828, 13.576, 30.0, 55.0, 25.0),
    "Cr": (51.996, 5.64, False, 6.767, 16.486, 10.0, 7.5, 1.0),
    "Fe": (55.845, 7.50, False, 7.902, 16.199, 25.0, 40.0, 25.0),
    "Ni": (58.693, 6.22, False, 7.640, 18.169, 28.0, 9.0, 1.0),
    "Rb": (85.468, 2.52, False, 4.177, 27.29, 2.0, 1.0, 1.0),
    "S": (32.06, 7.12, True, 10.360, 23.338, 8.8, 4.0, 9.0),
    "V": (50.942, 3.93, False, 6.746, 14.66, 40.0, 30.0, 25.0),
    "Co": (58.933, 4.99, False, 7.881, 17.084, 30.0, 25.0, 20.0),
}

#: Helium by number relative to hydrogen (not scaled with [M/H]).
HELIUM = 0.085

#: Real atomic lines: (element, ionisation stage 0 = neutral / 1 = singly ionised,
#: air wavelength in Å, lower-level excitation energy in eV, log gf,
#: log10 of the van der Waals width per hydrogen atom at 10^4 K in rad s^-1 cm^3, or None for
#: the default). Hydrogen Paschen lines are computed from the Rydberg formula, not listed here.
ATOMIC_LINES: list[tuple[str, int, float, float, float, float | None]] = [
    # Ca II infrared triplet (3d 2D - 4p 2P), the strongest lines in the PFS red arm
    ("Ca", 1, 8498.02, 1.692, -1.31, -7.6),
    ("Ca", 1, 8542.09, 1.700, -0.36, -7.6),
    ("Ca", 1, 8662.14, 1.692, -0.62, -7.6),
    # Na I 3p - 3d doublet
    ("Na", 0, 8183.26, 2.102, 0.24, -7.2),
    ("Na", 0, 8194.82, 2.104, 0.49, -7.2),
    # K I resonance doublet
    ("K", 0, 7664.90, 0.000, 0.13, -7.4),
    ("K", 0, 7698.97, 0.000, -0.17, -7.4),
    # Rb I resonance lines (weak; visible in cool dwarfs)
    ("Rb", 0, 7800.27, 0.000, 0.13, -7.4),
    ("Rb", 0, 7947.60, 0.000, -0.17, -7.4),
    # O I triplet (high excitation: strongest in hot stars and supergiants) and 8446
    ("O", 0, 7771.94, 9.146, 0.37, -7.5),
    ("O", 0, 7774.17, 9.146, 0.22, -7.5),
    ("O", 0, 7775.39, 9.146, 0.00, -7.5),
    ("O", 0, 8446.36, 9.521, 0.17, -7.5),
    # N I and C I high-excitation lines (hot stars)
    ("N", 0, 8680.28, 10.336, 0.35, -7.5),
    ("N", 0, 8683.40, 10.330, 0.09, -7.5),
    ("N", 0, 8686.15, 10.326, -0.29, -7.5),
    ("N", 0, 8703.25, 10.330, -0.32, -7.5),
    ("N", 0, 8711.70, 10.330, -0.23, -7.5),
    ("C", 0, 8335.15, 7.685, -0.44, -7.4),
    # Mg I
    ("Mg", 0, 8806.76, 4.346, -0.14, -7.2),
    ("Mg", 0, 8736.02, 5.946, -0.34, -7.0),
    ("Mg", 0, 8717.83, 5.933, -0.97, -7.0),
    ("Mg", 0, 7691.55, 5.753, -0.78, -7.0),
    ("Mg", 0, 8213.03, 5.753, -0.51, -7.0),
    ("Mg", 0, 8923.57, 5.394, -1.68, -7.1),
    # Al I
    ("Al", 0, 7835.31, 4.022, -0.65, -7.2),
    ("Al", 0, 7836.13, 4.022, -0.49, -7.2),
    ("Al", 0, 8772.87, 4.022, -0.32, -7.2),
    ("Al", 0, 8773.90, 4.022, -0.16, -7.2),
    # Si I
    ("Si", 0, 7405.77, 5.614, -0.82, -7.0),
    ("Si", 0, 7415.95, 5.614, -0.73, -7.0),
    ("Si", 0, 7423.50, 5.619, -0.58, -7.0),
    ("Si", 0, 7932.35, 5.964, -0.37, -7.0),
    ("Si", 0, 7944.00, 5.984, -0.31, -7.0),
    ("Si", 0, 8728.01, 6.181, -0.36, -7.0),
    ("Si", 0, 8742.45, 5.871, -0.51, -7.0),
    ("Si", 0, 8752.01, 5.871, -0.42, -7.0),
    # Ca I
    ("Ca", 0, 7148.15, 2.709, 0.14, -7.3),
    ("Ca", 0, 7202.20, 2.709, -0.26, -7.3),
    ("Ca", 0, 7326.15, 2.933, -0.21, -7.3),
    # Ti I (low excitation: grow quickly in cool stars)
    ("Ti", 0, 7344.70, 1.461, -0.99, None),
    ("Ti", 0, 7357.74, 1.443, -1.07, None),
    ("Ti", 0, 8377.86, 0.818, -1.61, None),
    ("Ti", 0, 8382.54, 0.836, -1.56, None),
    ("Ti", 0, 8412.36, 0.818, -1.45, None),
    ("Ti", 0, 8426.51, 0.826, -1.20, None),
    ("Ti", 0, 8434.96, 0.848, -0.83, None),
    ("Ti", 0, 8435.65, 0.836, -0.97, None),
    ("Ti", 0, 8675.37, 1.067, -1.50, None),
    ("Ti", 0, 8682.98, 1.053, -1.79, None),
    ("Ti", 0, 8734.71, 1.053, -2.24, None),
    # Fe I
    ("Fe", 0, 7401.69, 4.186, -1.60, None),
    ("Fe", 0, 7411.15, 4.283, -0.28, None),
    ("Fe", 0, 7445.75, 4.256, -0.24, None),
    ("Fe", 0, 7495.07, 4.220, -0.10, None),
    ("Fe", 0, 7511.02, 4.178, 0.10, None),
    ("Fe", 0, 7568.90, 4.283, -0.77, None),
    ("Fe", 0, 7583.79, 3.018, -1.89, None),
    ("Fe", 0, 7748.27, 2.949, -1.75, None),
    ("Fe", 0, 7780.56, 4.473, -0.07, None),
    ("Fe", 0, 7832.20, 4.435, 0.11, None),
    ("Fe", 0, 8327.05, 2.198, -1.53, None),
    ("Fe", 0, 8387.77, 2.176, -1.49, None),
    ("Fe", 0, 8468.41, 2.223, -2.07, None),
    ("Fe", 0, 8514.07, 2.198, -2.23, None),
    ("Fe", 0, 8611.80, 2.845, -1.93, None),
    ("Fe", 0, 8621.60, 2.949, -2.32, None),
    # in the core of Ca II 8662 (Barklem et al. position; without it the grid gave it the
    # statistical log gf -1.08 of barklem_lines, which made 8662 too strong in cool dwarfs)
    ("Fe", 0, 8661.90, 2.223, -1.48, None),
    ("Fe", 0, 8674.75, 2.831, -1.80, None),
    ("Fe", 0, 8688.62, 2.176, -1.21, None),
    ("Fe", 0, 8757.19, 2.845, -2.03, None),
    ("Fe", 0, 8763.97, 4.652, -0.15, None),
    ("Fe", 0, 8824.22, 2.198, -1.54, None),
    ("Fe", 0, 8838.43, 2.858, -1.98, None),
    ("Fe", 1, 7711.72, 3.903, -2.54, None),
    # Ni I
    ("Ni", 0, 7788.94, 1.951, -2.42, None),
    ("Ni", 0, 7797.59, 3.898, -0.35, None),
]

#: Molecular bands: molecule -> list of (air band-head wavelength in Å, relative strength,
#: e-folding length of the red-degraded band in Å). Positions are approximate (a few Å).
MOLECULAR_BANDS: dict[str, list[tuple[float, float, float]]] = {
    # TiO gamma (A-X) and delta (b-a) systems, all degraded to the red
    "TiO": [
        (7054.0, 1.00, 90.0),
        (7087.0, 0.70, 60.0),
        (7126.0, 0.60, 60.0),
        (7589.0, 0.45, 80.0),
        (7666.0, 0.35, 60.0),
        (8432.0, 0.35, 60.0),
        (8442.0, 0.30, 50.0),
        (8452.0, 0.25, 50.0),
        (8859.0, 0.30, 120.0),
        # the overlapping gamma/gamma' sequences and their rotational lines blanket the whole red
        # of M dwarfs: one broad envelope from the gamma head. Its weight was set so that the
        # 3900 K / log g 4.5 dwarf's continuum shape over 790-883 nm matches PHOENIX-ACES
        # (benchmarks/grid_vs_real.py); it is not a band of its own.
        (7054.0, 15.0, 1500.0),
    ],
    # CN red system (A-X), Delta v = +2 and +3 sequences
    "CN": [
        (7875.0, 1.00, 100.0),
        (7916.0, 0.60, 80.0),
        (8067.0, 0.80, 120.0),
        (8125.0, 0.60, 100.0),
        (8290.0, 0.60, 120.0),
    ],
}

#: Molecular dissociation energies D0 in eV (Huber & Herzberg 1979, rounded).
DISSOCIATION_EV = {"TiO": 6.87, "CN": 7.76, "CO": 11.09}


@lru_cache(maxsize=1)
def barklem_lines() -> list[tuple[str, float, float, float]]:
    """Neutral-atom lines of 690-910 nm: (element, air wavelength Å, lower-level excitation eV,
    log10 van der Waals FWHM per H atom at 10^4 K in rad s^-1 cm^3), from the package's
    ``data/barklem2000_neutral_690_910nm.csv`` (source in the module docstring)."""
    with open(DATA_DIR / "barklem2000_neutral_690_910nm.csv", newline="") as fh:
        rows = csv.DictReader(line for line in fh if not line.startswith("#"))
        return [(r["element"], float(r["lambda_air_A"]), float(r["chi_eV"]),
                 float(r["log_gamma6"])) for r in rows]


@lru_cache(maxsize=1)
def gf_lines() -> list[tuple[str, int, float, float, float, float | None]]:
    """Lines with their own log gf: (element, stage 0/1, vacuum wavelength nm, lower-level
    excitation eV, log gf, log10 van der Waals width per H atom at 10^4 K or None), from the
    package's ``data/gf_lines_690_793nm.csv`` (sources in the module docstring)."""
    with open(DATA_DIR / "gf_lines_690_793nm.csv", newline="") as fh:
        rows = csv.DictReader(line for line in fh if not line.startswith("#"))
        out = []
        for r in rows:
            lg6 = float(r["log_gamma6"])
            out.append((r["element"], int(r["stage"]), float(r["lambda_vac_nm"]),
                        float(r["chi_eV"]), float(r["loggf"]), None if lg6 < -50 else lg6))
        return out
