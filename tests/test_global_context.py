"""The U-Net's global-context options and the line-weighted loss (issue 18, part 4)."""

from __future__ import annotations

import pytest
import torch

from specdenoise import SpecdenoiseError
from specdenoise.train.nets import build_model
from specdenoise.train.schedule import LINE_LOSS_WEIGHT, line_weights, loss_terms

CFG = {"depth": 3, "filters": 4, "kernel_size": 3, "dropout": 0.0, "in_channels": 2,
       "n_wave": 512}


def _x(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flux = 0.5 + 0.05 * torch.randn(2, 512, generator=g)
    return torch.stack([flux, torch.full_like(flux, 0.02)], dim=1)


@pytest.mark.parametrize("kind", ["pool", "attention"])
def test_global_context_starts_as_the_plain_unet(kind):
    """Zero-initialised last layers: a fresh block is the identity, so adding it to a U-Net
    with the same other weights gives the same output."""
    torch.manual_seed(0)
    plain = build_model("unet", **CFG).eval()
    ctx = build_model("unet", **CFG, global_context=kind).eval()
    missing, unexpected = ctx.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("bottleneck.2.") for k in missing)
    x = _x()
    torch.testing.assert_close(ctx(x), plain(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind,reaches", [("none", False), ("pool", True),
                                          ("attention", True)])
def test_global_context_sees_the_whole_spectrum(kind, reaches):
    """After some training-like perturbation of its weights, the output at the first pixel
    depends on the input at the last one only with a global block."""
    torch.manual_seed(1)
    m = build_model("unet", **CFG, global_context=kind).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = _x().requires_grad_(True)
    m(x)[:, :8].sum().backward()
    far = x.grad[:, 0, -64:].abs().max().item()
    assert (far > 0) == reaches


def test_unknown_global_context_is_one_clear_error():
    with pytest.raises(SpecdenoiseError, match="unknown global_context 'transformer'"):
        build_model("unet", **CFG, global_context="transformer")


def test_line_weights_mark_lines_deeper_than_three_percent():
    t = torch.full((1, 1024), 0.5)
    t[0, 300:305] = 0.40  # 20 % deep
    t[0, 700:705] = 0.495  # 1 % deep: continuum
    w = line_weights(t)
    assert torch.all(w[0, 300:305] == LINE_LOSS_WEIGHT)
    assert torch.all(w[0, 700:705] == 1) and torch.all(w[0, :250] == 1)
    # a sloped continuum is not a line (away from the ends, where the window is cut)
    slope = torch.linspace(0.3, 0.7, 1024).unsqueeze(0)
    assert torch.all(line_weights(slope)[:, 64:-64] == 1)


def test_line_weighted_loss_is_rel_l1_times_the_weights():
    t = torch.full((2, 256), 0.5)
    t[:, 100:103] = 0.3
    pred = t + 0.01
    plain = loss_terms("rel_l1", pred, t, None)
    weighted = loss_terms("rel_l1_lines", pred, t, None)
    torch.testing.assert_close(weighted, plain * line_weights(t))
    assert weighted[0, 101] == pytest.approx(LINE_LOSS_WEIGHT * plain[0, 101].item())
