"""Building blocks the networks share: the output head, the input check, activations.

Shapes: a batch of normalised spectra is (b, n) or (b, c, n) with n pixels (``n_wave``); a
head gives the denoised flux (b, n) in the same normalisation (median 0.5), and with an
uncertainty head also the log-variance of each pixel's error (b, n), normalised flux units
squared.
"""

from __future__ import annotations

import torch
from torch import nn

from specdenoise.errors import SpecdenoiseError

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
