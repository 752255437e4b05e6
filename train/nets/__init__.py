"""The denoising networks, one module each, and the registry that names them.

==========  ===========================  ==============================================
name        module                       what
==========  ===========================  ==============================================
``unet``    :mod:`.unet`                 the paper's 1-D U-Net (Pál & Dobos 2025)
``dae``     :mod:`.dae`                  the dense denoising autoencoder (arXiv:2409.11625)
``physics`` :mod:`.physics`              an amortised template fit before a residual U-Net
==========  ===========================  ==============================================

Every network is a :class:`~specdenoise.train.nets.base.Denoiser`: the base class states what
the training loop, the checkpoints and inference may ask of it (input channels, an uncertainty
head, extra training inputs, auxiliary losses, what it needs from the training store, how a
run starts from another). Any network can also be trained on the outputs of a frozen trained
one (``--init-from``): its configuration then holds that network under ``first`` and
:func:`build_model` wraps the pair in a :class:`~specdenoise.train.nets.chain.Chain`.

This module imports no torch (the CLI's ``--help`` reads :data:`NETWORKS`); a network's module
is imported when it is first built. Adding a network: its module here and one line in
:data:`NETWORKS` (or :func:`register`, as ``tests/test_nets.py`` does).
"""

from __future__ import annotations

import importlib

from specdenoise.errors import SpecdenoiseError

#: network name (as the CLI's ``--arch`` and the checkpoint's ``model.name`` say it) ->
#: ``module:class`` of its :class:`~specdenoise.train.nets.base.Denoiser`
NETWORKS: dict[str, str] = {
    "unet": "specdenoise.train.nets.unet:UNet",
    "dae": "specdenoise.train.nets.dae:DAE",
    "physics": "specdenoise.train.nets.physics:PhysicsUNet",
}


def register(name: str, cls) -> None:
    """Add (or replace) the network ``name``: a Denoiser subclass or its ``module:class``."""
    NETWORKS[name] = cls


def network_class(name: str):
    """The :class:`~specdenoise.train.nets.base.Denoiser` subclass registered as ``name``."""
    try:
        where = NETWORKS[name]
    except KeyError:
        raise SpecdenoiseError(
            f"unknown model {name!r}; choose one of {', '.join(NETWORKS)}"
        ) from None
    if isinstance(where, str):
        module, _, attr = where.partition(":")
        where = getattr(importlib.import_module(module), attr)
    from specdenoise.train.nets.base import Denoiser

    if not (isinstance(where, type) and issubclass(where, Denoiser)):
        raise SpecdenoiseError(f"model {name!r} is registered as {where!r}, which is not a "
                               "Denoiser subclass (specdenoise.train.nets.base)")
    return where


def upgrade_spec(name: str, cfg: dict) -> tuple[str, dict]:
    """A stored model spec in today's terms.

    Before the networks had a module each, a network trained on a frozen one's outputs was
    stored as ``chain`` with ``{"first", "second", "n_wave"}``; it is the second network's
    now, with the first under ``first``. The weights' names (``first.*``, ``second.*``) and the
    network built are the same.
    """
    if name == "chain" and "second" in cfg:
        second = cfg["second"]
        cfg = {k: v for k, v in cfg.items() if k != "second"}
        cfg.update(second.get("cfg", {}))
        return second["name"], cfg
    return name, cfg


def build_model(name: str, **cfg):
    """Build a model by name (a key of :data:`NETWORKS`) from its keyword configuration.

    ``first`` in ``cfg`` (``{"name", "cfg"}``): a frozen network in front of this one (a
    :class:`~specdenoise.train.nets.chain.Chain`).
    """
    name, cfg = upgrade_spec(name, cfg)
    cls = network_class(name)
    first = cfg.pop("first", None)
    if first is None:
        try:
            return cls(**cfg)
        except TypeError as exc:
            raise SpecdenoiseError(f"bad configuration for model {name!r}: {exc}") from None
    from specdenoise.train.nets.base import N_WAVE
    from specdenoise.train.nets.chain import Chain

    if not network_class(first["name"]).chainable:
        raise SpecdenoiseError(f"a {first['name']} network cannot run before another; a "
                               f"{first['name']} model starts only from another "
                               f"{first['name']} run (here {first['name']} -> {name})")
    n_wave = cfg.get("n_wave", N_WAVE)
    # the first network built first: the order its weights are drawn in (same seed, same run)
    net1 = build_model(first["name"], **{"n_wave": n_wave, **first.get("cfg", {})})
    net2 = build_model(name, **{**cfg, "n_wave": n_wave})
    return Chain(net1, net2, n_wave)
