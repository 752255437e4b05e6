"""Grid readers: the small protocol every model-grid format follows, and their registry.

``specdenoise grid import FAMILY DIR`` (:func:`specdenoise.stage_grid.import_grid`) knows no
format: it asks the readers of ``FAMILY`` to recognise the files under ``DIR`` by name, builds
the grid's axes from what their names say, and has each file read and resampled onto one
wavelength grid, in parallel. A reader is any object with the attributes and methods of
:class:`GridReader`; :data:`READERS` lists them.

To add a format: write ``simulate/NAME.py`` (as ``phoenix.py``) with a reader object, then add it
to :data:`READERS` -- one line. Its ``family`` is the word on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from specdenoise.simulate import bosz, phoenix


class ModelFile(Protocol):
    """One model spectrum file and what its name says."""

    path: Path
    source: str  # the name of the reader that recognised it
    params: dict  # teff (K), logg, m_h, a_m, c_m (dex) -> value
    resolution: int  # resolving power R of the file
    vturb: float  # microturbulence, km/s
    model: str  # the model-atmosphere flavour (listed in the grid's attrs)


class GridReader(Protocol):
    """What :func:`specdenoise.stage_grid.import_grid` needs of a grid format."""

    name: str  # the release, stored as the grid's ``attrs["source"]``, e.g. "bosz2017"
    family: str  # the word on the command line, e.g. "bosz"
    pattern: str  # what its file names look like, for "no files found" messages
    wave_medium: str  # the files' wavelength medium, as the grid's attrs record it
    flux_unit: str  # of the fluxes ``read_resampled`` returns
    flux_conversion: str  # from a file's numbers to ``flux_unit``, as the attrs record it

    def parse(self, path: Path) -> ModelFile | None:
        """The file a path names, or None when the name is not this reader's."""

    def native_wave(self, f: ModelFile) -> np.ndarray:
        """Vacuum wavelengths (nm) of a file's own grid."""

    def output_wave(self, wave_native: np.ndarray, wave_range: tuple[float, float],
                    resolution: float | None) -> np.ndarray:
        """The vacuum grid (nm) every file is resampled onto, from the first file's own."""

    def read_resampled(self, f: ModelFile, wave_out: np.ndarray,
                       resolution: float | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(flux, continuum) of one file on ``wave_out``, float32; :class:`SpecdenoiseError`
        naming the file on any problem with it.  A reader whose files have no continuum
        (PHOENIX) returns None for it and sets ``has_continuum = False`` (default True)."""


#: every reader, by name
READERS: dict[str, GridReader] = {r.name: r for r in (
    bosz.BOSZ2017,
    bosz.BOSZ2024,
    phoenix.PHOENIX_ACES,
)}


def families() -> list[str]:
    """The formats ``grid import`` takes, in registry order."""
    return list(dict.fromkeys(r.family for r in READERS.values()))


def readers_of(family: str) -> list[GridReader]:
    """The readers of one family (e.g. both BOSZ releases for ``"bosz"``)."""
    return [r for r in READERS.values() if r.family == family]
