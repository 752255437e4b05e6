"""Model shapes and configuration: the paper's U-Net and the dense autoencoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from specdenoise import SpecdenoiseError
from specdenoise.train.nets import build_model
from specdenoise.train.nets.base import count_parameters, flops_per_spectrum, model_summary
from specdenoise.train.nets.dae import DAE
from specdenoise.train.nets.unet import UNet


def test_paper_unet_layout():
    m = UNet()
    assert [enc[0].out_channels for enc in m.encoders] == [32, 64, 128, 256]
    # four max-pools: 4096 -> 256 bins at the bottleneck
    seen = {}

    def hook(mod, inputs, output):
        seen["shape"] = output.shape

    m.bottleneck.register_forward_hook(hook)
    m.eval()
    with torch.no_grad():
        y = m(torch.rand(2, 4096))
    assert seen["shape"][-1] == 256
    assert y.shape == (2, 4096) and y.dtype == torch.float32
    assert ((y > 0) & (y < 1)).all()  # sigmoid output
    dropouts = [mod for mod in m.modules() if isinstance(mod, nn.Dropout)]
    assert len(dropouts) == 1 and dropouts[0].p == 0.3
    assert dropouts[0] in list(m.bottleneck.modules())
    assert sum(isinstance(mod, nn.BatchNorm1d) for mod in m.modules()) == 2 * (4 + 1 + 4)


def test_configurable_unet_and_dae():
    m = build_model("unet", depth=2, filters=[4, 8], kernel_size=5, dropout=0.0,
                    out_activation="identity")
    assert m(torch.rand(3, 4096)).shape == (3, 4096)
    assert m.encoders[0][0].kernel_size == (5,)
    d = build_model("dae")
    linears = [mod for mod in d.modules() if isinstance(mod, nn.Linear)]
    widths = [lin.out_features for lin in linears]
    assert widths == [2048, 1024, 512, 256, 512, 1024, 2048, 4096]
    # dense FLOPs: 2 per weight (multiply + add)
    assert flops_per_spectrum(d) == 2 * sum(lin.in_features * lin.out_features for lin in linears)
    s = model_summary(build_model("dae", widths=[64, 16]))
    assert s["parameters"] == count_parameters(DAE(widths=[64, 16]))
    assert s["flops_per_spectrum"] > 0


def test_head_stays_float32_under_bf16_autocast():
    m = build_model("unet", depth=2, filters=4).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.rand(2, 4096))
    assert y.dtype == torch.float32


@pytest.mark.parametrize("name,cfg,match", [
    ("vae", {}, "unknown model"),
    ("unet", {"depth": 2, "filters": [4]}, "one filter count per level"),
    ("unet", {"kernel_size": 4}, "odd"),
    ("unet", {"depth": 13, "filters": 4}, "divisible"),
    ("unet", {"colour": 3}, "bad configuration"),
    ("dae", {"out_activation": "tanhh"}, "output activation"),
])
def test_bad_model_configs(name, cfg, match):
    with pytest.raises(SpecdenoiseError, match=match):
        build_model(name, **cfg)
