"""The paper's 1-D U-Net (Pál & Dobos 2025, arXiv:2504.02523).

Maps a batch of normalised noisy spectra, shape (batch, n_wave) float32 with median 0.5, to
an estimate of the noiseless spectrum in the same normalisation, shape (batch, n_wave). With
``in_channels=2`` the input is (batch, 2, n_wave): the flux and its sigma in the same
normalisation (:func:`~specdenoise.train.nets.base.model_input` builds it), so the network
knows which pixels sit on sky lines. With ``residual=True`` the network predicts a correction
added to the noisy input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from specdenoise.errors import SpecdenoiseError
from specdenoise.train.nets.base import N_WAVE, Denoiser
from specdenoise.train.nets.heads import _check_uncertainty, _Head, _outputs, _split_input


def _conv_block(c_in: int, c_out: int, kernel_size: int) -> nn.Sequential:
    """Two (convolution, batch norm, ReLU) layers at one resolution."""
    pad = kernel_size // 2
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel_size, padding=pad, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv1d(c_out, c_out, kernel_size, padding=pad, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


#: what a U-Net's bottleneck may add to see the whole spectrum (:class:`GlobalContext`)
GLOBAL_CONTEXTS = ("none", "pool", "attention")


class GlobalContext(nn.Module):
    """A block that lets every bottleneck position see the whole spectrum; (b, c, L) -> same.

    A U-Net of depth 4 and kernel 5 sees about +-190 pixels around each output pixel, while a
    template fit uses all 4096 at once; at high S/N that difference shows as lines shrunk by
    the network (issue 18). Two ways to add global context, both starting as the identity
    (their last layers are zero at initialisation), so a trained U-Net's behaviour is the
    starting point:

    ``"pool"``
        squeeze-and-excitation-like feature modulation (Hu et al. 2018, arXiv:1709.01507,
        with a shift as in FiLM, Perez et al. 2018, arXiv:1709.07871): the mean of every
        channel over the spectrum passes an MLP that returns a scale and a shift per channel.
    ``"attention"``
        one pre-norm transformer encoder layer (Vaswani et al. 2017; pre-norm as in Xiong et
        al. 2020, arXiv:2002.04745) over the ``L`` bottleneck positions (256 for 4096 pixels
        and depth 4), with a learned position embedding so a position knows its wavelength:
        about 0.3 GFLOP per spectrum at 256 channels.
    """

    def __init__(self, channels: int, positions: int, kind: str, heads: int = 4):
        super().__init__()
        self.kind = kind
        c = int(channels)
        if kind == "pool":
            self.mlp = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, 2 * c))
            last = self.mlp[-1]
        elif kind == "attention":
            if c % heads:
                raise SpecdenoiseError(f"global_context 'attention' needs channels divisible "
                                       f"by {heads} heads, got {c}")
            self.position = nn.Parameter(torch.zeros(1, int(positions), c))
            nn.init.normal_(self.position, std=0.02)
            self.norm1 = nn.LayerNorm(c)
            self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
            self.norm2 = nn.LayerNorm(c)
            self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
            nn.init.zeros_(self.attn.out_proj.weight)
            nn.init.zeros_(self.attn.out_proj.bias)
            last = self.mlp[-1]
        else:
            raise SpecdenoiseError(f"unknown global_context {kind!r}")
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "pool":
            scale, shift = self.mlp(h.mean(dim=-1)).chunk(2, dim=-1)
            return h * (1 + scale.unsqueeze(-1)) + shift.unsqueeze(-1)
        t = h.transpose(1, 2)
        a = self.norm1(t + self.position)  # positions steer the attention, not the features
        t = t + self.attn(a, a, a, need_weights=False)[0]
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2)


class UNet(Denoiser):
    """1-D U-Net (Pál & Dobos 2025, arXiv:2504.02523).

    Parameters
    ----------
    depth
        Number of encoder (and decoder) levels; each ends in a max-pool by 2, so the bottleneck
        has ``n_wave / 2**depth`` bins (4096 -> 256 for the paper's depth 4).
    filters
        Channels per level: an int (first level; doubled at each level) or one value per level.
        Paper: 32, 64, 128, 256.
    bottleneck_filters
        Channels at the bottleneck; default twice the last level's.
    kernel_size
        Odd convolution width in pixels.
    dropout
        Dropout probability, applied only at the bottleneck (paper: 0.3).
    out_activation
        ``sigmoid`` (paper), ``identity``, ``relu`` or ``softplus``.
    in_channels
        1: the noisy flux (paper); 2: flux and sigma. More: a wrapper stacks its own channels
        (the physics model: rendering, flux, sigma); channel 0 is what ``residual`` corrects.
    residual
        Predict a correction to the noisy flux, channel 0 (needs ``out_activation="identity"``).
    uncertainty
        ``"none"`` (default): the network gives the denoised flux only. ``"nll"``: a
        heteroscedastic head also gives the log-variance of each pixel's error (normalised
        flux units squared), trained with a beta-NLL loss (see
        :func:`specdenoise.train.schedule.beta_nll`); ``forward(x, return_logvar=True)`` returns
        ``(mean, logvar)``, both (b, n).
    global_context
        What the bottleneck sees beyond its convolutions' reach (about +-190 pixels for the
        best preset): ``"none"`` (default, the paper's U-Net), ``"pool"`` (every position is
        scaled and shifted by a function of the whole spectrum's mean features) or
        ``"attention"`` (one transformer layer over all ``n_wave / 2**depth`` bottleneck
        positions, with learned position embeddings): see :class:`GlobalContext`.
    """

    def __init__(
        self,
        depth: int = 4,
        filters: int | Sequence[int] = (32, 64, 128, 256),
        bottleneck_filters: int | None = None,
        kernel_size: int = 3,
        dropout: float = 0.3,
        out_activation: str = "sigmoid",
        n_wave: int = N_WAVE,
        in_channels: int = 1,
        residual: bool = False,
        uncertainty: str = "none",
        global_context: str = "none",
    ):
        super().__init__()
        self.uncertainty = _check_uncertainty(uncertainty)
        if isinstance(filters, int):
            filters = [filters * 2**i for i in range(depth)]
        filters = [int(f) for f in filters]
        if depth < 1 or len(filters) != depth:
            raise SpecdenoiseError(f"U-Net needs one filter count per level: depth {depth}, "
                                   f"filters {filters}")
        if kernel_size % 2 != 1:
            raise SpecdenoiseError(f"U-Net kernel_size must be odd, got {kernel_size}")
        if n_wave % 2**depth:
            raise SpecdenoiseError(f"n_wave {n_wave} is not divisible by 2**depth = {2**depth}")
        if in_channels < 1:
            raise SpecdenoiseError(f"in_channels must be 1 (flux), 2 (flux, sigma) or more, "
                                   f"got {in_channels}")
        bottleneck_filters = int(bottleneck_filters or 2 * filters[-1])
        self.n_wave, self.in_channels = n_wave, int(in_channels)
        self.encoders = nn.ModuleList()
        c_in = self.in_channels
        for f in filters:
            self.encoders.append(_conv_block(c_in, f, kernel_size))
            c_in = f
        self.pool = nn.MaxPool1d(2)
        self.bottleneck = nn.Sequential(
            _conv_block(c_in, bottleneck_filters, kernel_size), nn.Dropout(dropout)
        )
        if global_context not in GLOBAL_CONTEXTS:
            raise SpecdenoiseError(f"unknown global_context {global_context!r}; choose one of "
                                   f"{', '.join(GLOBAL_CONTEXTS)}")
        if global_context != "none":  # appended: the paper U-Net's parameter names stay
            self.bottleneck.append(GlobalContext(bottleneck_filters, n_wave // 2**depth,
                                                 global_context))
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        c_in = bottleneck_filters
        for f in reversed(filters):
            self.upsamples.append(nn.ConvTranspose1d(c_in, f, kernel_size=2, stride=2))
            self.decoders.append(_conv_block(2 * f, f, kernel_size))
            c_in = f
        n_out = 2 if self.uncertainty == "nll" else 1
        self.head = _Head(c_in, nn.Conv1d(c_in, n_out, kernel_size=1), out_activation, residual,
                          n_out)

    def forward(self, x: torch.Tensor, return_logvar: bool = False):
        h, flux = _split_input(x, self.in_channels)
        skips = []
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
            h = self.pool(h)
        h = self.bottleneck(h)
        for up, dec, skip in zip(self.upsamples, self.decoders, reversed(skips), strict=True):
            h = dec(torch.cat([up(h), skip], dim=1))
        return _outputs(self.head(h, flux), return_logvar)
