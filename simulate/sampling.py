"""Draw per-spectrum parameters and conditions from configured distributions.

Pure NumPy: every draw comes from the ``numpy.random.Generator`` passed in, so a chunk's
parameters depend only on its random key, never on which worker drew them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from specdenoise.errors import SpecdenoiseError


def draw(dist: Mapping, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` float64 samples of one distribution (see ``specdenoise.config``)."""
    kind = dist["dist"]
    if kind == "fixed":
        return np.full(n, float(dist["value"]))
    if kind == "uniform":
        return rng.uniform(dist["low"], dist["high"], n)
    if kind == "normal":
        return np.clip(rng.normal(dist["mean"], dist["std"], n), dist["low"], dist["high"])
    if kind == "beta":
        return dist["low"] + (dist["high"] - dist["low"]) * rng.beta(dist["a"], dist["b"], n)
    raise SpecdenoiseError(f"unknown distribution {kind!r}")


def draw_params(
    dists: Mapping[str, Mapping],
    rng: np.random.Generator,
    n: int,
    *,
    grid_names: tuple[str, ...] = (),
    valid: Callable[[np.ndarray], np.ndarray] | None = None,
    max_rounds: int = 1000,
) -> dict[str, np.ndarray]:
    """Draw every parameter in ``dists`` for ``n`` spectra.

    Grid parameters (``grid_names``) are redrawn jointly wherever ``valid(params (k, D))`` is
    False (a node missing from the grid, for instance), so the accepted set follows the
    configured distributions restricted to where the grid has models.
    """
    out = {name: draw(d, rng, n) for name, d in dists.items()}
    if valid is None or not grid_names:
        return out
    for _ in range(max_rounds):
        stacked = np.stack([out[g] for g in grid_names], axis=1)
        bad = ~np.asarray(valid(stacked), dtype=bool)
        k = int(bad.sum())
        if k == 0:
            return out
        for g in grid_names:
            out[g][bad] = draw(dists[g], rng, k)
    raise SpecdenoiseError(
        "could not draw grid parameters where the grid has models; the parameter ranges "
        f"({', '.join(grid_names)}) fall mostly on missing or off-grid nodes"
    )
