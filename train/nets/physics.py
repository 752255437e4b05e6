"""Physics inside the network: an amortised template fit followed by a residual U-Net.

:class:`PhysicsUNet` (model name ``physics``) denoises a spectrum in three steps:

1. an **encoder** (strided convolutions, then two dense layers) reads the noisy flux and its
   sigma and estimates the forward model's per-spectrum parameters: by default Teff, log g,
   [M/H], [alpha/M], RV, E(B-V) and the calibration coefficients ``calib_c1..3``, each
   normalised to unit scale by the training store's mean and standard deviation;
2. an **emulator** renders those parameters as the normalised clean spectrum (``flux_clean``
   as the training loader normalises it). Only the star is learned: a dense network maps the
   stellar parameters to a rest-frame spectrum on the detector's pixel grid, widened by a margin.
   The parts of the forward model we know exactly are applied as they are: the relativistic
   Doppler shift (linear interpolation on the pixel grid), interstellar extinction
   ``10^(-0.4 E(B-V) k(lambda))`` with the simulation's law, the calibration distortion
   ``1 + sum_l c_l P_l(x)`` and the median-0.5 normalisation
   (:mod:`specdenoise.simulate.source`, :mod:`specdenoise.simulate.calibration`);
3. a **U-Net** takes (rendering, flux, sigma) and predicts the denoised spectrum, by default as a
   correction to the rendering (``residual``), so it only has to fix what the fit misses.

Training (:mod:`specdenoise.train.loop`) passes the store's true parameters and the target
(the :class:`~specdenoise.train.nets.base.Denoiser` contract: ``param_names``, ``aux_losses``):
the encoder learns them by least squares on the normalised scale (``param_weight``), the
emulator learns the clean spectra from the true parameters (``emulator_weight``, relative
error), and the U-Net learns from the denoising loss on the rendering of the *estimated*
parameters -- what it sees at inference. With ``detach`` (default) that loss does not reach
the encoder and emulator, so each part keeps its own job; ``unet=None`` returns the rendering
itself (the amortised template fit alone).

The model takes the same input as a U-Net with ``in_channels=2`` -- flux and sigma, (b, 2, n)
-- so inference, evaluation and ``specdenoise denoise`` use it unchanged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from specdenoise.errors import SpecdenoiseError
from specdenoise.schema import CALIB_PREFIX, PARAMS, calib_names
from specdenoise.simulate import calibration as calib_ref
from specdenoise.simulate.constants import C_KM_PER_S
from specdenoise.simulate.pfs import RED_MR_DLAMBDA, RED_MR_LMIN, RED_MR_NPIX
from specdenoise.train.calibration import median
from specdenoise.train.nets.base import Denoiser
from specdenoise.train.nets.unet import UNet

log = logging.getLogger("specdenoise.train")

#: what the encoder estimates unless the model configuration says otherwise
DEFAULT_PARAMS = (*PARAMS, "rv", "ebv", *calib_names(calib_ref.ORDER))
#: parameters whose effect the emulator applies exactly instead of learning it
KNOWN_PHYSICS = ("rv", "ebv")
#: pixels rendered beyond each end of the detector, so that a shifted spectrum stays covered:
#: 600 km/s at 885 nm is 1.8 nm, 41 pixels of 0.0427 nm
MARGIN_PIX = 48
#: softplus(SOFTPLUS_ONE) = 1: the emulator starts from a flat spectrum
SOFTPLUS_ONE = math.log(math.e - 1.0)
#: what a physics model started from another takes from it: the parts its weights define
PHYSICS_INHERITED = ("params", "param_loc", "param_scale", "wave_start", "wave_step",
                     "extinction_law", "r_v", "encoder", "emulator")


def param_stats(values: np.ndarray) -> tuple[list[float], list[float]]:
    """Location and scale (each a list of length P) that bring (n, P) parameters to unit scale.

    Mean and standard deviation; a parameter that does not vary (fixed in the simulation)
    gets scale 1, so it is learned as an offset instead of dividing by zero.
    """
    values = np.asarray(values, dtype=np.float64)
    loc = values.mean(axis=0)
    scale = values.std(axis=0)
    tiny = scale <= 1e-6 * np.maximum(1.0, np.abs(loc))
    scale = np.where(tiny, 1.0, scale)
    return [float(v) for v in loc], [float(v) for v in scale]


def _down_block(c_in: int, c_out: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel_size, stride=2, padding=kernel_size // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


class Encoder(nn.Module):
    """(b, 2, n) flux and sigma -> (b, P) normalised parameter estimates (float32).

    Each level halves the pixels; the last level is flattened, not pooled, so the dense layers
    still know where features are (radial velocity is a position).
    """

    def __init__(self, n_params: int, n_wave: int, filters: Sequence[int] = (16, 32, 32, 64, 64,
                                                                               64),
                 kernel_size: int = 5, hidden: int = 128):
        super().__init__()
        filters = [int(f) for f in filters]
        if not filters or n_wave % 2 ** len(filters):
            raise SpecdenoiseError(f"encoder: n_wave {n_wave} is not divisible by 2**levels "
                                   f"= {2 ** len(filters)}")
        layers, c_in = [], 2
        for f in filters:
            layers.append(_down_block(c_in, f, kernel_size))
            c_in = f
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(c_in * (n_wave >> len(filters)), hidden),
                                    nn.ReLU(inplace=True))
        self.out = nn.Linear(hidden, n_params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(self.body(x))
        with torch.autocast(x.device.type, enabled=False):  # estimates in float32
            return self.out(h.float())


class Emulator(nn.Module):
    """The forward model as a network: normalised parameters (b, P) -> clean spectrum (b, n).

    Parameters
    ----------
    names, loc, scale
        The parameters (as the encoder gives them) and their normalisation.
    wave_start, wave_step
        The detector's linear pixel grid, nm (vacuum).
    extinction_law, r_v
        The simulation's extinction law (:func:`specdenoise.simulate.source.extinction_curve`).
    hidden
        Widths of the dense layers from the stellar parameters to the rest-frame spectrum.
    known_physics
        False: every parameter goes through the dense layers (nothing applied exactly).
    """

    def __init__(self, names: Sequence[str], loc: Sequence[float], scale: Sequence[float],
                 n_wave: int, wave_start: float, wave_step: float,
                 extinction_law: str = "F99", r_v: float = 3.1,
                 hidden: Sequence[int] = (256, 512), known_physics: bool = True,
                 margin: int = MARGIN_PIX):
        super().__init__()
        from specdenoise.simulate.source import extinction_curve

        names = list(names)
        self.n_wave, self.margin = int(n_wave), int(margin)
        self.register_buffer("loc", torch.tensor(loc, dtype=torch.float32), persistent=False)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)
        wave = wave_start + wave_step * np.arange(self.n_wave, dtype=np.float64)
        self.register_buffer("wave", torch.tensor(wave, dtype=torch.float64), persistent=False)
        self.wave_start, self.wave_step = float(wave_start), float(wave_step)

        calib = [i for i, n in enumerate(names) if n.startswith(CALIB_PREFIX)]
        exact = known_physics and ("rv" in names or "ebv" in names or calib)
        self.i_rv = names.index("rv") if known_physics and "rv" in names else None
        self.i_ebv = names.index("ebv") if known_physics and "ebv" in names else None
        self.i_calib = calib if known_physics else []
        if self.i_calib:
            orders = [int(names[i][len(CALIB_PREFIX):]) for i in self.i_calib]
            basis = calib_ref.distortion_basis(wave, max(orders))[np.array(orders) - 1]
            self.register_buffer("basis", torch.tensor(basis, dtype=torch.float32),
                                 persistent=False)
        if self.i_ebv is not None:
            k = extinction_curve(wave, extinction_law, r_v)
            self.register_buffer("kcurve", torch.tensor(k, dtype=torch.float32),
                                 persistent=False)
        applied = {self.i_rv, self.i_ebv, *self.i_calib} if exact else set()
        self.i_star = [i for i in range(len(names)) if i not in applied]
        if not self.i_star:
            raise SpecdenoiseError("the emulator needs at least one stellar parameter (teff, "
                                   f"logg, ...) besides {', '.join(names)}")
        n_out = self.n_wave + 2 * self.margin if self.i_rv is not None else self.n_wave
        sizes = [len(self.i_star), *[int(h) for h in hidden]]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.SiLU()]
        last = nn.Linear(sizes[-1], n_out)
        nn.init.zeros_(last.weight)  # a flat spectrum to start from
        nn.init.constant_(last.bias, SOFTPLUS_ONE)
        self.star = nn.Sequential(*layers, last, nn.Softplus())

    def physical(self, p: torch.Tensor) -> torch.Tensor:
        """Normalised parameters (b, P) -> physical units."""
        return p * self.scale + self.loc

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        with torch.autocast(p.device.type, enabled=False):  # a rendering is a float32 spectrum
            p = p.float()
            rest = self.star(p[:, self.i_star]) + 1e-4
            phys = self.physical(p)
            return apply_known_physics(
                rest, self.wave,
                rv=None if self.i_rv is None else phys[:, self.i_rv],
                ebv=None if self.i_ebv is None else phys[:, self.i_ebv],
                kcurve=getattr(self, "kcurve", None),
                calib=phys[:, self.i_calib] if self.i_calib else None,
                basis=getattr(self, "basis", None), wave_start=self.wave_start,
                wave_step=self.wave_step, margin=self.margin if self.i_rv is not None else 0)


def apply_known_physics(rest: torch.Tensor, wave: torch.Tensor, *, rv=None, ebv=None,
                        kcurve=None, calib=None, basis=None, wave_start: float,
                        wave_step: float, margin: int) -> torch.Tensor:
    """Observe a rest-frame spectrum the way the simulation does, in float32 torch.

    ``rest`` (b, n + 2 margin): the spectrum at rest on the detector's grid widened by
    ``margin`` pixels each side (``wave_start + wave_step * (j - margin)``, nm); ``wave`` (n,)
    the detector pixels. ``rv`` (b,) km/s: relativistic Doppler shift, rest-frame flux read
    at ``wave / D`` by linear interpolation; ``ebv`` (b,) with ``kcurve`` (n,) = A/E(B-V):
    extinction; ``calib`` (b, L) with ``basis`` (L, n): the calibration distortion. Returns
    (b, n) divided by its median / 0.5. Any of the three may be None (not applied).
    """
    n = wave.shape[0]
    if rv is not None:
        # positions in float64: in float32 a pixel index near 4000 is off by 2e-4 pixels,
        # which moves a steep line flank by 1e-4 of the continuum
        beta = (rv.double() / C_KM_PER_S).clamp(-0.01, 0.01)
        d = torch.sqrt((1.0 + beta) / (1.0 - beta))
        pos = (wave.double()[None, :] / d[:, None] - wave_start) / wave_step + margin
        pos = pos.clamp(0.0, rest.shape[1] - 1.0)
        i0 = pos.detach().floor().long().clamp(max=rest.shape[1] - 2)
        t = (pos - i0).to(rest.dtype)
        out = rest.gather(1, i0) * (1.0 - t) + rest.gather(1, i0 + 1) * t
    else:
        out = rest[:, margin:margin + n] if margin else rest
    if ebv is not None:
        out = out * torch.pow(10.0, -0.4 * ebv[:, None] * kcurve[None, :])
    if calib is not None:
        out = out * (1.0 + calib @ basis)
    return out * (calib_ref.MEDIAN / median(out).clamp_min(1e-12))


class PhysicsUNet(Denoiser):
    """Encoder -> emulator -> residual U-Net: an amortised template fit (module docstring).

    Parameters
    ----------
    params
        Per-spectrum variables of the dataset the encoder estimates (default
        :data:`DEFAULT_PARAMS`).
    param_loc, param_scale
        Their normalisation (:func:`param_stats` of the training store); the training loop
        fills them, and the wavelength grid and extinction law, from the training store.
    wave_start, wave_step
        The detector's linear pixel grid (nm).
    extinction_law, r_v
        As the simulation that made the training store.
    encoder, emulator
        Keyword options of :class:`Encoder` (filters, kernel_size, hidden) and
        :class:`Emulator` (hidden, known_physics).
    unet
        Keyword options of the U-Net (:class:`~specdenoise.train.nets.unet.UNet`); it always takes
        three channels (rendering, flux, sigma) and by default predicts a correction to the
        rendering. None: no U-Net, the rendering is the output.
    detach
        The denoising loss trains only the U-Net (the encoder and emulator learn from their own
        losses). Ignored without a U-Net.
    param_weight, emulator_weight
        Weights of the encoder's and the emulator's losses beside the denoising loss (0: off).
    """

    #: the auxiliary losses :meth:`forward` returns when training (in this order)
    aux_losses = ("param", "emulator")
    #: a trained physics model is not put in front of another network; a physics run starts
    #: from another one instead (:meth:`start_from`)
    chainable = False

    def __init__(self, n_wave: int = RED_MR_NPIX, params: Sequence[str] = DEFAULT_PARAMS,
                 param_loc: Sequence[float] | None = None,
                 param_scale: Sequence[float] | None = None,
                 wave_start: float = RED_MR_LMIN, wave_step: float = RED_MR_DLAMBDA,
                 extinction_law: str = "F99", r_v: float = 3.1,
                 encoder: dict | None = None, emulator: dict | None = None,
                 unet: dict | None = None, detach: bool = True,
                 param_weight: float = 1.0, emulator_weight: float = 1.0):
        super().__init__()
        self.param_names = tuple(str(p) for p in params)
        n_p = len(self.param_names)
        if not n_p or len(set(self.param_names)) != n_p:
            raise SpecdenoiseError(f"physics model: params must name distinct dataset "
                                   f"variables, got {list(self.param_names)}")
        loc = [0.0] * n_p if param_loc is None else [float(v) for v in param_loc]
        scale = [1.0] * n_p if param_scale is None else [float(v) for v in param_scale]
        if len(loc) != n_p or len(scale) != n_p or not all(s > 0 for s in scale):
            raise SpecdenoiseError(f"physics model: param_loc and param_scale need one value per "
                                   f"parameter ({n_p}), scales positive")
        if param_weight < 0 or emulator_weight < 0:
            raise SpecdenoiseError("physics model: loss weights must not be negative")
        self.n_wave, self.in_channels = int(n_wave), 2
        self.encoder = Encoder(n_p, self.n_wave, **(encoder or {}))
        self.emulator = Emulator(self.param_names, loc, scale, self.n_wave, wave_start,
                                 wave_step, extinction_law, r_v, **(emulator or {}))
        if unet is None:
            self.unet = None
        else:
            opts = {"residual": True, "out_activation": "identity", **unet}
            opts.update(in_channels=3, n_wave=self.n_wave)
            self.unet = UNet(**opts)
        self.detach = bool(detach)
        self.param_weight, self.emulator_weight = float(param_weight), float(emulator_weight)

    @staticmethod
    def complete_config(cfg: dict, store) -> dict:
        """``cfg`` with what the training store decides filled in (a new run's model spec).

        ``store``: a :class:`specdenoise.train.data.StoreInfo`. Adds the parameters'
        normalisation, the pixel grid and the extinction law, unless ``cfg`` gives them.
        """
        from specdenoise.train import data as tdata

        cfg = dict(cfg)
        names = tuple(cfg.get("params", DEFAULT_PARAMS))
        cfg["params"] = list(names)
        if cfg.get("param_loc") is None or cfg.get("param_scale") is None:
            cfg["param_loc"], cfg["param_scale"] = param_stats(tdata.read_params(store, names))
        if "wave_start" not in cfg or "wave_step" not in cfg:
            wave = tdata.read_wave(store)
            if wave is None:
                raise SpecdenoiseError(f"dataset {store.path} stores no wavelengths; the physics "
                                       "model needs its pixel grid")
            step = np.diff(wave)
            if np.ptp(step) > 1e-6 * abs(step.mean()):
                raise SpecdenoiseError(f"dataset {store.path}: the pixel grid is not linear in "
                                       "wavelength; the physics model's Doppler shift needs one")
            cfg.setdefault("wave_start", float(wave[0]))
            cfg.setdefault("wave_step", float((wave[-1] - wave[0]) / (wave.size - 1)))
        if "extinction_law" not in cfg:
            law = tdata.simulation_config(store).get("observe", {}).get("extinction_law")
            if law:
                cfg["extinction_law"] = law
        return cfg

    @classmethod
    def start_from(cls, name: str, spec: dict, first: dict, source: str) -> tuple[dict, dict]:
        """A physics model whose encoder and emulator start as the run ``source`` left them.

        Staged training: first fit the forward model alone (``"unet": null``), which is cheap,
        then train the whole model from that fit. The new spec takes the first run's parameters,
        their normalisation, pixel grid, encoder and emulator (over any given here: the weights
        define them); the U-Net (and the loss weights) are this run's. Encoder and emulator keep
        learning from their own losses.
        """
        if name != "physics" or first["name"] != "physics":
            raise SpecdenoiseError(f"--init-from {source}: a physics model starts only from "
                                   f"another physics run (here {first['name']} -> {name})")
        spec = dict(spec)
        replaced = [k for k in PHYSICS_INHERITED
                    if k in first["cfg"] and k in spec and spec[k] != first["cfg"][k]]
        if replaced:
            log.info("--init-from %s: its %s replace this run's", source, ", ".join(replaced))
        spec.update({k: first["cfg"][k] for k in PHYSICS_INHERITED if k in first["cfg"]})
        state = {k: v for k, v in first["state"].items()
                 if k.startswith(("encoder.", "emulator."))}
        return spec, state

    def normalise_params(self, params: torch.Tensor) -> torch.Tensor:
        return (params.float() - self.emulator.loc) / self.emulator.scale

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None,
                target: torch.Tensor | None = None, good: torch.Tensor | None = None):
        """Denoise ``x`` (b, 2, n): flux and sigma. Returns (b, n).

        Training passes the true ``params`` (b, P) in physical units, the ``target`` (b, n)
        and ``good`` (b, n) pixels; then the result is ``{"flux": (b, n), "losses": {"param":
        scalar, "emulator": scalar}}``, the auxiliary losses already weighted.
        """
        if x.ndim != 3 or x.shape[1] != 2:
            raise SpecdenoiseError(f"the physics model takes flux and sigma, shape (batch, 2, "
                                   f"n_wave); got {tuple(x.shape)}")
        p_hat = self.encoder(x)
        render = self.emulator(p_hat)
        if self.unet is None:
            out = render
        else:
            r_in = render.detach() if self.detach else render
            out = self.unet(torch.cat([r_in[:, None].to(x.dtype), x], dim=1))
        if params is None:
            return out
        if target is None:
            raise SpecdenoiseError("the physics model's training losses need the target too")
        p_true = self.normalise_params(params)
        rel = (self.emulator(p_true) - target).abs() / target.abs().clamp_min(1e-3)
        w = torch.ones_like(rel) if good is None else good.to(rel.dtype)
        return {"flux": out, "losses": {
            "param": self.param_weight * (p_hat - p_true).square().mean(),
            "emulator": self.emulator_weight * (rel * w).sum() / w.sum().clamp_min(1.0)}}

    @torch.no_grad()
    def estimate(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's parameters (b, P) in physical units, for inspection."""
        return self.emulator.physical(self.encoder(x))
