"""What training minimises and how: the losses, the optimizer and the learning-rate schedule.

Losses are per pixel, (b, n_wave) float32, in normalised flux units (median 0.5); the loop
averages them over the good pixels (:func:`masked_mean`). The learning rate is a pure function
of the position in the run (:func:`lr_at`), so a resumed run repeats the same steps. ``cfg``
is the run's :class:`~specdenoise.train.loop.TrainConfig` (not imported here: the loop imports
this module).
"""

from __future__ import annotations

import math

import torch

from specdenoise.errors import SpecdenoiseError

# the names a run may choose are the configuration's (one copy, torch-free)
from specdenoise.train.config import LOSSES, OPTIMIZERS, SCHEDULERS  # noqa: E402,F401

#: one-cycle schedule: fraction of the run spent warming up, start and end as fractions of lr
ONECYCLE_WARMUP, ONECYCLE_START, ONECYCLE_END = 0.25, 0.04, 1e-3


def lr_at(cfg, epoch: int, frac: float = 0.0) -> float:
    """Learning rate ``frac`` of the way through (0-based) ``epoch``.

    A pure function of the position in the run, so resuming is exact. Only ``onecycle``
    changes within an epoch: a cosine warm-up from ``ONECYCLE_START * lr`` to ``lr`` over the
    first quarter of the run, then a cosine decay to ``ONECYCLE_END * lr``.
    """
    if cfg.scheduler == "onecycle":
        t = min(max((epoch + frac) / cfg.epochs, 0.0), 1.0)
        if t < ONECYCLE_WARMUP:
            lo, hi, u = ONECYCLE_START, 1.0, t / ONECYCLE_WARMUP
        else:
            lo, hi, u = 1.0, ONECYCLE_END, (t - ONECYCLE_WARMUP) / (1 - ONECYCLE_WARMUP)
        return cfg.lr * (hi + (lo - hi) * 0.5 * (1.0 + math.cos(math.pi * u)))
    if cfg.scheduler == "step":  # the paper's: one drop, by lr_gamma, after lr_step_epoch epochs
        return cfg.lr * (cfg.lr_gamma if epoch >= cfg.lr_step_epoch else 1.0)
    if cfg.scheduler == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr


# --------------------------------------------------------------------------- losses


def masked_mean(values: torch.Tensor, good: torch.Tensor) -> torch.Tensor:
    w = good.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def loss_terms(name: str, pred, target, sigma) -> torch.Tensor:
    """Per-pixel loss (b, n_wave) in float32."""
    diff = pred.float() - target
    if name == "mse":
        return diff.square()
    if name == "l1":
        return diff.abs()
    if name == "chi2":  # sigma-weighted: residuals in units of the noise
        return (diff / sigma).square()
    if name == "rel_l1":  # the evaluation metric |R| itself
        return diff.abs() / target.abs().clamp_min(1e-3)
    if name == "rel_l1_lines":  # |R| with line pixels weighted up (line_weights)
        return diff.abs() / target.abs().clamp_min(1e-3) * line_weights(target)
    raise SpecdenoiseError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


#: the weight of a line pixel in the ``rel_l1_lines`` loss (continuum pixels weigh 1)
LINE_LOSS_WEIGHT = 3.0
#: width in pixels of the running maximum and running mean that give the loss's continuum
LINE_LOSS_WINDOW = 129


def line_weights(target: torch.Tensor, weight: float = LINE_LOSS_WEIGHT) -> torch.Tensor:
    """Per-pixel loss weights (b, n): ``weight`` on line pixels of the clean ``target``, else 1.

    A line pixel is deeper than 3 % (:data:`specdenoise.metrics.LINE_DEPTH`, the line-aware
    metrics' threshold) below a continuum taken as the morphological closing of the target
    over :data:`LINE_LOSS_WINDOW` pixels (5.5 nm: a running maximum, then a running minimum,
    which fills every dip narrower than the window and keeps a sloped continuum), smoothed by
    a running mean of the same width. That continuum is cruder than the metrics' (which fits
    segments) and biased within half a window of the ends, but it is cheap on a batch and only
    decides where the loss leans; the metric is unchanged.
    """
    from specdenoise.metrics import LINE_DEPTH

    t = target.float().unsqueeze(1)
    half = LINE_LOSS_WINDOW // 2
    pool = torch.nn.functional.max_pool1d
    env = -pool(-pool(t, LINE_LOSS_WINDOW, stride=1, padding=half), LINE_LOSS_WINDOW, stride=1,
                padding=half)
    cont = torch.nn.functional.avg_pool1d(env, LINE_LOSS_WINDOW, stride=1, padding=half,
                                          count_include_pad=False)
    line = (1 - t / cont.clamp_min(1e-3)) > LINE_DEPTH
    return (1 + (weight - 1) * line.float()).squeeze(1)


def beta_nll(mean, logvar, target, beta: float = 0.5) -> torch.Tensor:
    """Per-pixel beta-NLL (b, n_wave) in float32 (Seitz et al. 2022, ICLR, arXiv:2203.09168).

    The Gaussian negative log-likelihood ``(log var + (target - mean)^2 / var) / 2``, each
    pixel weighted by ``var^beta`` treated as a constant. Plain NLL (beta 0) lets the network
    buy a low loss by declaring hard pixels noisy and then stop fitting them; beta 0.5 keeps
    the mean's gradient close to that of a squared error, so the denoised flux does not pay
    for the uncertainty it learns. Units: normalised flux (median 0.5).
    """
    logvar = logvar.float()
    nll = 0.5 * (logvar + (target - mean.float()).square() * torch.exp(-logvar))
    if beta:
        nll = nll * torch.exp(beta * logvar).detach()
    return nll


def nll_loss(pred, logvar, batch: dict, cfg=None) -> torch.Tensor:
    """An uncertainty head's auxiliary loss: the beta-NLL over the good pixels, weighted by
    ``cfg.nll_weight`` (scalar; ``cfg`` None: beta 0.5, weight 1, mean not detached)."""
    beta, weight, detach = ((0.5, 1.0, False) if cfg is None
                            else (cfg.nll_beta, cfg.nll_weight, cfg.nll_detach_mean))
    # the NLL's gradient on the mean is (mean - y) / sigma^(2 - 2 beta): with sigma ~0.5 %
    # of the flux it outweighs an MSE's 2 (mean - y) a hundredfold. Detaching the mean
    # does not stop that on the shared layers, and measured worse after one epoch of the
    # quick U-Net (6.41 % against 4.60 %; results/uncertainty/README.md)
    mean = pred.detach() if detach else pred
    return weight * masked_mean(beta_nll(mean, logvar, batch["y"], beta), batch["good"])


# --------------------------------------------------------------------------- optimizer


def make_optimizer(cfg, model) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]  # a chain's first is frozen
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
