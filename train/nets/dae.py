"""The dense denoising autoencoder (the authors' earlier model, arXiv:2409.11625).

Input (b, n) normalised noisy flux, or (b, 2, n) flux and sigma; output (b, n) in the same
normalisation (median 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from specdenoise.errors import SpecdenoiseError
from specdenoise.train.nets.base import N_WAVE, Denoiser
from specdenoise.train.nets.heads import _check_uncertainty, _Head, _outputs, _split_input


class DAE(Denoiser):
    """Dense denoising autoencoder (the authors' earlier model, arXiv:2409.11625).

    ``n_wave -> widths[0] -> ... -> widths[-1] -> ... -> widths[0] -> n_wave``, ReLU between
    layers, optional batch norm and dropout after each hidden layer. ``uncertainty`` as for
    :class:`UNet` (the last layer then gives ``2 n_wave`` values: means, then log-variances).
    """

    def __init__(
        self,
        widths: Sequence[int] = (2048, 1024, 512, 256),
        batch_norm: bool = False,
        dropout: float = 0.0,
        out_activation: str = "sigmoid",
        n_wave: int = N_WAVE,
        in_channels: int = 1,
        residual: bool = False,
        uncertainty: str = "none",
    ):
        super().__init__()
        self.uncertainty = _check_uncertainty(uncertainty)
        widths = [int(w) for w in widths]
        if not widths:
            raise SpecdenoiseError("DAE needs at least one hidden width")
        if in_channels not in (1, 2):
            raise SpecdenoiseError(f"in_channels must be 1 (flux) or 2 (flux, sigma), "
                                   f"got {in_channels}")
        self.n_wave, self.in_channels = n_wave, int(in_channels)
        sizes = [n_wave * self.in_channels, *widths, *reversed(widths[:-1])]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers.append(nn.Linear(a, b, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.ReLU(inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        n_out = 2 if self.uncertainty == "nll" else 1
        self.head = _Head(sizes[-1], nn.Linear(sizes[-1], n_out * n_wave), out_activation,
                          residual, n_out)

    def forward(self, x: torch.Tensor, return_logvar: bool = False):
        h, flux = _split_input(x, self.in_channels)
        return _outputs(self.head(self.body(h.flatten(1)), flux), return_logvar)


