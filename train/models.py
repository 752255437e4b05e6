"""Denoising networks: the paper's 1-D U-Net and the earlier dense denoising autoencoder.

Both map a batch of normalised noisy spectra, shape (batch, n_wave) float32 with median 0.5, to
an estimate of the noiseless spectrum in the same normalisation, shape (batch, n_wave).

Models are chosen by name through :func:`build_model`; everything that defines a model's shape
is a keyword argument, so ``build_model(name, **cfg)`` with the ``cfg`` stored in a checkpoint
rebuilds the same network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from specdenoise.errors import SpecdenoiseError

N_WAVE = 4096  # PFS red-arm medium-resolution pixels

_ACTIVATIONS = {
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
    "none": nn.Identity,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise SpecdenoiseError(
            f"unknown output activation {name!r}; choose one of {', '.join(_ACTIVATIONS)}"
        ) from None


class _Head(nn.Module):
    """Last projection and output activation, always in float32.

    Under bf16 autocast a sigmoid output would be quantised to ~0.4 %, coarser than the ~1 %
    errors we want to measure, so the head leaves autocast.
    """

    def __init__(self, in_features: int, layer: nn.Module, activation: str):
        super().__init__()
        self.layer = layer
        self.activation = _activation(activation)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(h.device.type, enabled=False):
            return self.activation(self.layer(h.float()))


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


class UNet(nn.Module):
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
    ):
        super().__init__()
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
        bottleneck_filters = int(bottleneck_filters or 2 * filters[-1])
        self.n_wave = n_wave
        self.encoders = nn.ModuleList()
        c_in = 1
        for f in filters:
            self.encoders.append(_conv_block(c_in, f, kernel_size))
            c_in = f
        self.pool = nn.MaxPool1d(2)
        self.bottleneck = nn.Sequential(
            _conv_block(c_in, bottleneck_filters, kernel_size), nn.Dropout(dropout)
        )
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        c_in = bottleneck_filters
        for f in reversed(filters):
            self.upsamples.append(nn.ConvTranspose1d(c_in, f, kernel_size=2, stride=2))
            self.decoders.append(_conv_block(2 * f, f, kernel_size))
            c_in = f
        self.head = _Head(c_in, nn.Conv1d(c_in, 1, kernel_size=1), out_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1)
        skips = []
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
            h = self.pool(h)
        h = self.bottleneck(h)
        for up, dec, skip in zip(self.upsamples, self.decoders, reversed(skips), strict=True):
            h = dec(torch.cat([up(h), skip], dim=1))
        return self.head(h).squeeze(1)


class DAE(nn.Module):
    """Dense denoising autoencoder (the authors' earlier model, arXiv:2409.11625).

    ``n_wave -> widths[0] -> ... -> widths[-1] -> ... -> widths[0] -> n_wave``, ReLU between
    layers, optional batch norm and dropout after each hidden layer.
    """

    def __init__(
        self,
        widths: Sequence[int] = (2048, 1024, 512, 256),
        batch_norm: bool = False,
        dropout: float = 0.0,
        out_activation: str = "sigmoid",
        n_wave: int = N_WAVE,
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths:
            raise SpecdenoiseError("DAE needs at least one hidden width")
        self.n_wave = n_wave
        sizes = [n_wave, *widths, *reversed(widths[:-1])]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers.append(nn.Linear(a, b, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.ReLU(inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.head = _Head(sizes[-1], nn.Linear(sizes[-1], n_wave), out_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


MODELS = {"unet": UNet, "dae": DAE}


def build_model(name: str, **cfg) -> nn.Module:
    """Build a model by name (``unet`` or ``dae``) from its keyword configuration."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise SpecdenoiseError(
            f"unknown model {name!r}; choose one of {', '.join(MODELS)}"
        ) from None
    try:
        return cls(**cfg)
    except TypeError as exc:
        raise SpecdenoiseError(f"bad configuration for model {name!r}: {exc}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_spectrum(model: nn.Module, n_wave: int = N_WAVE) -> int:
    """Floating-point operations of one forward pass on one spectrum.

    Counts convolutions and dense layers (a multiply-add = 2 operations; biases, batch norm and
    activations are negligible and left out), from the shapes seen in one forward pass.
    """
    total = 0

    def count(mod, inputs, output):
        nonlocal total
        if isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * mod.out_features
        elif isinstance(mod, nn.ConvTranspose1d):
            total += 2 * inputs[0].shape[-1] * mod.in_channels * mod.out_channels \
                * mod.kernel_size[0] // mod.groups
        elif isinstance(mod, nn.Conv1d):
            total += 2 * output.shape[-1] * mod.in_channels * mod.out_channels \
                * mod.kernel_size[0] // mod.groups

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d))]
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            model(torch.full((1, n_wave), 0.5, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return int(total)


def model_summary(model: nn.Module, n_wave: int = N_WAVE) -> dict:
    """Parameter count and forward FLOPs per spectrum, for the logs and the checkpoint."""
    return {
        "parameters": count_parameters(model),
        "flops_per_spectrum": flops_per_spectrum(model, n_wave),
    }
