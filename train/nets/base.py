"""The Denoiser contract: what training, checkpoints and inference may ask of a network.

A network maps a batch of normalised noisy spectra to the noiseless spectrum in the same
normalisation (median 0.5): input (b, n) float32, or (b, c, n) with ``in_channels`` c (2: flux
and sigma, :func:`model_input` builds it); output (b, n). Everything that defines its shape is
a keyword argument of its constructor, so ``build_model(name, **cfg)`` with the ``cfg``
stored in a checkpoint rebuilds the same network (``first`` is reserved there: a frozen network
in front, see :mod:`specdenoise.train.nets`).

What a network may declare beyond that is said here, once, as class attributes and
classmethods with defaults that mean "nothing extra"; the training loop reads these and
nothing else (no per-network branches):

``in_channels``
    1: the noisy flux; 2: flux and sigma.
``uncertainty``
    ``"nll"``: ``forward(x, return_logvar=True)`` also gives the log-variance of each pixel's
    error (b, n); the loop adds its beta-NLL as the auxiliary loss ``nll``.
``param_names``
    Extra training inputs: per-spectrum dataset variables the network learns from. Training
    and validation batches then carry them as ``params`` (b, P) in physical units, in this
    order, and ``forward(x, params=, target=, good=)`` returns ``{"flux": (b, n), "losses":
    {name: scalar}}`` with one weighted loss per name in ``aux_losses``.
``aux_losses``
    The names of those auxiliary losses (reported as ``train_<name>_loss``, added to the
    denoising loss).
:meth:`Denoiser.complete_config`
    What a new run takes from the training store into the network's configuration.
:meth:`Denoiser.start_from`
    How a new run starts from a trained one (``--init-from``): by default the trained
    network, frozen, in front of this one.
``chainable``
    Whether a trained network of this kind may be that frozen first network
    (:func:`~specdenoise.train.nets.build_model` checks it).
"""

from __future__ import annotations

import torch
from torch import nn

from specdenoise.errors import SpecdenoiseError
from specdenoise.simulate.pfs import RED_MR_NPIX

N_WAVE = RED_MR_NPIX  # PFS red-arm medium-resolution pixels


class Denoiser(nn.Module):
    """Base class of every registered network (module docstring: the contract)."""

    n_wave: int = N_WAVE
    in_channels: int = 1
    uncertainty: str = "none"
    param_names: tuple[str, ...] = ()
    aux_losses: tuple[str, ...] = ()
    chainable: bool = True

    @classmethod
    def complete_config(cls, cfg: dict, store) -> dict:
        """``cfg`` with what the training store decides filled in (a new run's model spec).

        ``store``: a :class:`specdenoise.train.data.StoreInfo`. Default: nothing to add.
        """
        return cfg

    @classmethod
    def start_from(cls, name: str, spec: dict, first: dict, source: str) -> tuple[dict, dict]:
        """(spec, initial weights) of a new run of network ``name`` starting from a trained one.

        ``spec``: this run's configuration (``n_wave`` and the model options); ``first``: the
        trained run's checkpoint entry (``name``, ``cfg``, ``state``); ``source``: its path,
        for messages. Default: train this network on the outputs of the frozen ``first``,
        described in full under ``first`` so the checkpoint stands on its own; the initial
        weights are a partial state dict (names as in the model).
        """
        first_name = first["name"]
        if "first" in first["cfg"]:
            raise SpecdenoiseError(f"{source} is already a chain; start from a single network")
        first_cfg = {k: v for k, v in first["cfg"].items() if k != "n_wave"}
        spec = {**spec, "first": {"name": first_name, "cfg": first_cfg}}
        return spec, {f"first.{k}": v for k, v in first["state"].items()}

    def training_inputs(self, batch: dict) -> dict:
        """Keyword inputs of ``forward`` on a training or validation batch, beside the input."""
        kw: dict = {}
        if self.uncertainty == "nll":
            kw["return_logvar"] = True
        if self.param_names:
            kw.update(params=batch["params"], target=batch["y"], good=batch["good"])
        return kw

    def training_outputs(self, out) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """(flux (b, n), log-variance (b, n) or None, auxiliary losses) from what ``forward``
        returned with :meth:`training_inputs`."""
        if isinstance(out, dict):
            return out["flux"], None, dict(out["losses"])
        if isinstance(out, tuple):
            return out[0], out[1], {}
        return out, None, {}

    def loss_names(self) -> list[str]:
        """The auxiliary losses training reports, in order (``nll`` for an uncertainty head)."""
        names = list(self.aux_losses) if self.param_names else []
        if self.uncertainty == "nll":
            names.append("nll")
        return names


def model_input(model: nn.Module, x: torch.Tensor,
                sigma: torch.Tensor | None = None) -> torch.Tensor:
    """The input ``model`` takes: ``x`` (b, n) alone, or stacked with ``sigma`` (b, 2, n)."""
    if getattr(model, "in_channels", 1) == 1:
        return x
    if sigma is None:
        raise SpecdenoiseError("this model also takes the noise sigma of every pixel "
                               "(in_channels 2): pass sigma with the flux")
    return torch.stack([x, sigma.to(x.dtype)], dim=1)


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
