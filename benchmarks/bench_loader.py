"""Throughput of the streaming loader (with augmentation) against the training step, on CPU.

Writes a temporary dataset of synthetic spectra, then measures

- spectra/s delivered by the training loader (fresh noise, distortion, renormalisation, shuffle
  buffer, batching) with 0 and ``--workers`` DataLoader workers, for one epoch after a warm-up;
- training samples/s (forward + backward + SGD step) for the paper U-Net, the tiny-preset
  U-Net, the best-preset U-Net and the paper DAE on the CPU, in float32 and under bf16
  autocast side by side (and with ``--compile`` also bf16 + ``torch.compile``);

and prints the ratios. Targets: loader >= 5,000 spectra/s on 2 cores and >= 10x the CPU
training-step rate of the paper U-Net. The last line is one JSON object.

    python benchmarks/bench_loader.py [--n 2048 --chunk 256 --workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from specdenoise import schema
from specdenoise.simulate.pfs import pixel_wave
from specdenoise.train import data as tdata
from specdenoise.train.loop import PRESETS
from specdenoise.train.nets import build_model
from specdenoise.train.nets.base import model_input, model_summary


def write_dataset(path: Path, n: int, chunk: int, seed: int = 0) -> Path:
    """Smooth continua with Gaussian absorption lines, median 0.5, S/N 10-60."""
    wave = pixel_wave()
    schema.create_dataset_store(path, n, chunk, wave, attrs={"config_hash": "bench"})
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, 4096)
    pix = np.arange(4096)
    for c in range(-(-n // chunk)):
        m = min(chunk, n - c * chunk)
        clean = np.empty((m, 4096))
        for i in range(m):
            lines = np.zeros(4096)
            for cen, d, w in zip(rng.uniform(0, 4096, 30), rng.uniform(0.05, 0.6, 30),
                                 rng.uniform(1.2, 4, 30), strict=True):
                lo, hi = int(max(cen - 6 * w, 0)), int(min(cen + 6 * w, 4096))
                lines[lo:hi] += d * np.exp(-0.5 * ((pix[lo:hi] - cen) / w) ** 2)
            clean[i] = (1 + rng.uniform(-0.3, 0.3) * x) * np.exp(-lines)
        clean *= 0.5 / np.median(clean, axis=1, keepdims=True)
        snr = rng.uniform(10, 60, m)
        sigma = clean / snr[:, None]
        flux = clean + sigma * rng.standard_normal(clean.shape)
        schema.write_chunk(path, c, chunk, {
            "flux": flux.astype(np.float32), "flux_clean": clean.astype(np.float32),
            "sigma": sigma.astype(np.float32), "snr": snr.astype(np.float32)})
    schema.finalize_dataset(path)
    return path


def loader_rate(info, workers: int, batch_size: int, shuffle_buffer: int) -> float:
    """Spectra/s over one full epoch (epoch 1), after epoch 0 warmed caches and workers up."""
    rate = 0.0
    for epoch in (0, 1):
        ds = tdata.SpectrumStream(info, batch_size=batch_size, seed=0,
                                  shuffle_buffer=shuffle_buffer)
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=None, num_workers=workers,
                            prefetch_factor=4 if workers else None)
        t0 = time.perf_counter()
        n = sum(len(b["index"]) for b in loader)
        rate = n / (time.perf_counter() - t0)
    return rate


def train_rate(name: str, cfg: dict, batch_size: int, steps: int, precision: str = "fp32",
               compile: bool = False) -> dict:
    """Training samples/s on the CPU: forward, MSE, backward, SGD step (after warm-up).

    ``precision``: fp32, or bf16 autocast as training runs it (the head and loss in fp32).
    """
    torch.manual_seed(0)
    model = build_model(name, **cfg)
    summary = model_summary(model)
    net = torch.compile(model) if compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(batch_size, 4096) * 0.2 + 0.4
    y = x.clone()
    inp = model_input(model, x, x * 0.05)
    cast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
            else contextlib.nullcontext())
    times = []
    for _ in range(steps + (3 if compile else 1)):
        t0 = time.perf_counter()
        with cast:
            pred = net(inp)
        loss = torch.nn.functional.mse_loss(pred.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    warm = 3 if compile else 1
    return {"samples_per_s": batch_size / float(np.median(times[warm:])), **summary}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048, help="spectra in the temporary dataset")
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--shuffle-buffer", type=int, default=1024)
    p.add_argument("--train-batch", type=int, default=16, help="batch for the training steps")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per model")
    p.add_argument("--compile", action="store_true",
                   help="also time bf16 + torch.compile (compiling takes a minute or more)")
    a = p.parse_args(argv)

    print(f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = write_dataset(Path(tmp) / "bench.zarr", a.n, a.chunk)
        print(f"wrote {a.n} spectra in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        info = tdata.inspect_store(path)
        loader0 = loader_rate(info, 0, a.batch_size, a.shuffle_buffer)
        print(f"loader, in-process:  {loader0:8.0f} spectra/s", file=sys.stderr)
        loader_w = loader_rate(info, a.workers, a.batch_size, a.shuffle_buffer)
        print(f"loader, {a.workers} workers:    {loader_w:8.0f} spectra/s", file=sys.stderr)

    models = {
        "unet_paper": ("unet", PRESETS["paper"]["model_cfg"]["unet"]),
        "unet_tiny": ("unet", PRESETS["tiny"]["model_cfg"]["unet"]),
        "unet_best": ("unet", PRESETS["best"]["model_cfg"]["unet"]),
        "dae_paper": ("dae", PRESETS["paper"]["model_cfg"]["dae"]),
    }
    variants = {"fp32": ("fp32", False), "bf16": ("bf16", False)}
    if a.compile:
        variants["bf16_compile"] = ("bf16", True)
    rates: dict[str, dict[str, dict]] = {}
    print(f"{'training samples/s':19s}" + "".join(f"{v:>14s}" for v in variants)
          + "   bf16/fp32", file=sys.stderr)
    for key, (name, cfg) in models.items():
        rates[key] = {v: train_rate(name, cfg, a.train_batch, a.steps, prec, comp)
                      for v, (prec, comp) in variants.items()}
        r = rates[key]
        print(f"{key:19s}" + "".join(f"{r[v]['samples_per_s']:14.1f}" for v in variants)
              + f"   {r['bf16']['samples_per_s'] / r['fp32']['samples_per_s']:8.2f}x  "
              f"({r['fp32']['parameters']:,} parameters, "
              f"{r['fp32']['flops_per_spectrum'] / 1e9:.3f} GFLOP/spectrum)", file=sys.stderr)
    # the loader must outrun the fastest way each model trains
    training = {k: max(r.values(), key=lambda x: x["samples_per_s"]) for k, r in rates.items()}
    best_loader = max(loader0, loader_w)
    ratios = {f"loader_over_{k}": best_loader / v["samples_per_s"] for k, v in training.items()}
    for k, v in ratios.items():
        print(f"{k}: {v:.1f}x", file=sys.stderr)
    result = {
        "n_spectra": a.n, "chunk": a.chunk, "workers": a.workers, "cpus": os.cpu_count(),
        "loader_spectra_per_s_in_process": round(loader0, 1),
        "loader_spectra_per_s_workers": round(loader_w, 1),
        "loader_target_5000_met": best_loader >= 5000,
        "train_samples_per_s": {k: {v: round(x["samples_per_s"], 2) for v, x in r.items()}
                                for k, r in rates.items()},
        "bf16_over_fp32": {k: round(r["bf16"]["samples_per_s"] / r["fp32"]["samples_per_s"], 2)
                           for k, r in rates.items()},
        **{k: round(v, 1) for k, v in ratios.items()},
        "loader_10x_unet_paper_met": ratios["loader_over_unet_paper"] >= 10,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
