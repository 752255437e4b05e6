"""The best U-Net's training step (bf16 autocast, AdamW, batch 32) with whichever specdenoise is
installed: spectra per second for ``SECONDS`` on ``THREADS`` threads.

It also runs on code from before the networks moved to ``train/nets/`` (2026-12-02 and earlier,
``train/models.py``), so two versions can be compared on one machine: install each in its own
virtual environment (``python -m venv --system-site-packages V && V/bin/pip install --no-deps -e
CHECKOUT``) and run this script with each, one after the other, with nothing else running.

    python benchmarks/bench_step.py SECONDS THREADS [global_context]
"""

from __future__ import annotations

import sys
import time

import torch


def main(argv: list[str]) -> None:
    seconds, threads = float(argv[0]), int(argv[1])
    context = argv[2] if len(argv) > 2 else ""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = {"depth": 4, "filters": 16, "kernel_size": 5, "dropout": 0.0, "in_channels": 2}
    if context:
        cfg["global_context"] = context
    try:
        from specdenoise.train.nets import build_model
    except ImportError:  # the code of 2026-12-02 and earlier
        from specdenoise.train.models import build_model
    model = build_model("unet", **cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = 32
    x = torch.rand(batch, 4096) * 0.2 + 0.4
    inp = torch.stack([x, x * 0.05], dim=1)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = model(inp)
        loss = ((pred.float() - x).abs() / x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (oneDNN primitive creation)
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += batch
    print(f"unet {context or 'base'}, {threads} thread(s): "
          f"{n / (time.perf_counter() - t0):.1f} spectra/s")


if __name__ == "__main__":
    main(sys.argv[1:])
