"""Denoising networks: the paper's 1-D U-Net and the earlier dense denoising autoencoder.

Both map a batch of normalised noisy spectra, shape (batch, n_wave) float32 with median 0.5, to
an estimate of the noiseless spectrum in the same normalisation, shape (batch, n_wave). With
``in_channels=2`` the input is (batch, 2, n_wave): the flux and its sigma in the same
normalisation (:func:`model_input` builds it), so the network knows which pixels sit on sky
lines. With ``residual=True`` the network predicts a correction added to the noisy input.

The physics model (an amortised template fit in front of a residual U-Net) lives in
:mod:`specdenoise.train.physics`. Models are chosen by name through :func:`build_model`;
everything that defines a model's shape is a keyword argument, so ``build_model(name, **cfg)``
with the ``cfg`` stored in a checkpoint rebuilds the same network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from specdenoise.errors import SpecdenoiseError
from specdenoise.train.physics import PhysicsUNet  # builds its U-Net from here, lazily

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


#: what a network may say about its own error: nothing, or a per-pixel Gaussian log-variance
UNCERTAINTIES = ("none", "nll")
#: the log-variance head's output is kept in this range (normalised flux units squared: a
#: sigma from 1e-5 to 4.5 times the median-0.5 flux), so exp() can neither vanish nor overflow
LOGVAR_RANGE = (-23.0, 3.0)
LOGVAR_INIT = -10.6


def _check_uncertainty(uncertainty: str) -> str:
    if uncertainty not in UNCERTAINTIES:
        raise SpecdenoiseError(f"unknown uncertainty {uncertainty!r}; choose one of "
                               f"{', '.join(UNCERTAINTIES)}")
    return uncertainty


class _Head(nn.Module):
    """Last projection and output activation, always in float32.

    Under bf16 autocast a sigmoid output would be quantised to ~0.4 %, coarser than the ~1 %
    errors we want to measure, so the head leaves autocast. A residual head adds its output to
    the noisy flux (also in float32). With ``n_out=2`` (a heteroscedastic head) ``layer`` gives
    two values per pixel: the mean (activation and residual apply to it) and the log-variance
    of its error, clamped to :data:`LOGVAR_RANGE`.
    """

    def __init__(self, in_features: int, layer: nn.Module, activation: str,
                 residual: bool = False, n_out: int = 1):
        super().__init__()
        if residual and activation not in ("identity", "none"):
            raise SpecdenoiseError("a residual output needs out_activation 'identity' (the "
                                   f"correction can have either sign), not {activation!r}")
        self.layer = layer
        self.activation = _activation(activation)
        self.residual = bool(residual)
        self.n_out = int(n_out)
        if self.n_out == 2 and getattr(layer, "bias", None) is not None:
            # start the log-variance near a 1 % error of the median flux, (0.005)^2: what a
            # denoiser reaches, so the first epochs need not climb there from exp(0) = 1
            with torch.no_grad():
                layer.bias.view(2, -1)[1].fill_(LOGVAR_INIT)

    def forward(self, h: torch.Tensor, flux: torch.Tensor):
        """(b, 1, n) or (b, n) mean; with ``n_out=2`` a pair (mean, log-variance)."""
        with torch.autocast(h.device.type, enabled=False):
            raw = self.layer(h.float())
            if self.n_out == 2:  # conv: (b, 2, n); dense: (b, 2 n)
                raw = raw.reshape(raw.shape[0], 2, -1)
                mean, logvar = raw[:, :1], raw[:, 1:]
            else:
                mean, logvar = raw, None
            out = self.activation(mean)
            if self.residual:
                out = out + flux.float().reshape(out.shape)
            if logvar is None:
                return out
            return out, logvar.clamp(*LOGVAR_RANGE)


def _split_input(x: torch.Tensor, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(network input (b, c, n), noisy flux (b, n)) from (b, n) or (b, c, n)."""
    if x.ndim == 2:
        x = x.unsqueeze(1)
    if x.ndim != 3 or x.shape[1] != in_channels:
        raise SpecdenoiseError(f"the model takes {in_channels} input channel(s) of shape "
                               f"(batch, {in_channels}, n_wave); got {tuple(x.shape)}")
    return x, x[:, 0]


def model_input(model: nn.Module, x: torch.Tensor,
                sigma: torch.Tensor | None = None) -> torch.Tensor:
    """The input ``model`` takes: ``x`` (b, n) alone, or stacked with ``sigma`` (b, 2, n)."""
    if getattr(model, "in_channels", 1) == 1:
        return x
    if sigma is None:
        raise SpecdenoiseError("this model also takes the noise sigma of every pixel "
                               "(in_channels 2): pass sigma with the flux")
    return torch.stack([x, sigma.to(x.dtype)], dim=1)


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
    in_channels
        1: the noisy flux (paper); 2: flux and sigma. More: a wrapper stacks its own channels
        (the physics model: rendering, flux, sigma); channel 0 is what ``residual`` corrects.
    residual
        Predict a correction to the noisy flux, channel 0 (needs ``out_activation="identity"``).
    uncertainty
        ``"none"`` (default): the network gives the denoised flux only. ``"nll"``: a
        heteroscedastic head also gives the log-variance of each pixel's error (normalised
        flux units squared), trained with a beta-NLL loss (see
        :func:`specdenoise.train.loop.beta_nll`); ``forward(x, return_logvar=True)`` returns
        ``(mean, logvar)``, both (b, n).
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


def _outputs(out, return_logvar: bool):
    """A head's output as the model returns it: the mean (b, n), or (mean, log-variance)."""
    if isinstance(out, tuple):
        mean, logvar = (o.reshape(o.shape[0], -1) for o in out)
        return (mean, logvar) if return_logvar else mean
    mean = out.reshape(out.shape[0], -1)
    if return_logvar:
        raise SpecdenoiseError("this network has no uncertainty head (uncertainty 'none'); "
                               "estimate its uncertainty by sampling instead")
    return mean


class DAE(nn.Module):
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


class Chain(nn.Module):
    """A trained denoiser followed by a second one trained on its outputs (Pál & Dobos 2025's
    proposal: a U-Net, then a dense autoencoder refining what it leaves).

    ``first`` and ``second`` are ``{"name": ..., "cfg": {...}}`` as :func:`build_model` takes
    them. The first network is frozen: no gradients, always in eval mode (batch-norm
    statistics and dropout as trained). The second takes the first's output and, if its
    ``in_channels`` is 2, the input's sigma channel.
    """

    def __init__(self, first: dict, second: dict, n_wave: int = N_WAVE):
        super().__init__()
        self.first = build_model(first["name"], **{"n_wave": n_wave, **first.get("cfg", {})})
        self.second = build_model(second["name"],
                                  **{"n_wave": n_wave, **second.get("cfg", {})})
        if self.second.in_channels > self.first.in_channels:
            raise SpecdenoiseError("the second network of a chain can take sigma only when "
                                   "the first one does (in_channels 2)")
        for p in self.first.parameters():
            p.requires_grad_(False)
        self.n_wave, self.in_channels = n_wave, self.first.in_channels
        self.uncertainty = getattr(self.second, "uncertainty", "none")

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


MODELS = {"unet": UNet, "dae": DAE, "chain": Chain, "physics": PhysicsUNet}


def build_model(name: str, **cfg) -> nn.Module:
    """Build a model by name (a key of :data:`MODELS`) from its keyword configuration."""
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
            model(torch.full((1, getattr(model, "in_channels", 1), n_wave), 0.5,
                             device=device))
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
