"""A trained denoiser, frozen, followed by a second one trained on its outputs.

Any registered network can be the second: its configuration then names the first under
``first`` and :func:`specdenoise.train.nets.build_model` builds both and this wrapper.
"""

from __future__ import annotations

import torch

from specdenoise.errors import SpecdenoiseError
from specdenoise.train.nets.base import N_WAVE, Denoiser


class Chain(Denoiser):
    """A trained denoiser followed by a second one trained on its outputs (Pál & Dobos 2025's
    proposal: a U-Net, then a dense autoencoder refining what it leaves).

    ``first`` and ``second``: the two networks, built (with ``n_wave`` pixels) by
    :func:`~specdenoise.train.nets.build_model`. The first network is frozen: no gradients,
    always in eval mode (batch-norm statistics and dropout as trained). The second takes the
    first's output and, if its ``in_channels`` is 2, the input's sigma channel.
    """

    def __init__(self, first: Denoiser, second: Denoiser, n_wave: int = N_WAVE):
        super().__init__()
        self.first, self.second = first, second
        if self.second.in_channels > self.first.in_channels:
            raise SpecdenoiseError("the second network of a chain can take sigma only when "
                                   "the first one does (in_channels 2)")
        for p in self.first.parameters():
            p.requires_grad_(False)
        self.n_wave, self.in_channels = n_wave, self.first.in_channels
        self.uncertainty = self.second.uncertainty

    def train(self, mode: bool = True):
        super().train(mode)
        self.first.eval()
        return self

    def forward(self, x: torch.Tensor, return_logvar: bool = False):
        with torch.no_grad():
            y = self.first(x).float()
        if self.second.in_channels == 2:
            y = torch.stack([y, x[:, 1].to(y.dtype)], dim=1)
        if return_logvar:  # the second network's head speaks for the chain
            return self.second(y, return_logvar=True)
        return self.second(y)


