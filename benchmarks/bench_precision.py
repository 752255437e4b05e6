"""bf16 autocast against float32 on one short real training run: speed and validation |R|.

Trains the same model twice from the same seed on the same stores, once per precision, and
prints each run's validation mean |R| and training spectra/s, and the ratios bf16 / fp32.
Target: bf16 within 5 % of fp32's |R|. The last line is one JSON object.

    python benchmarks/bench_precision.py --data train.zarr --val val.zarr \\
        [--preset tiny --model unet --epochs 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from specdenoise.train import loop


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--model", default="unet")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    a = p.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for prec in ("fp32", "bf16"):
            cfg = loop.make_config(a.data, a.val, Path(tmp) / prec, model=a.model,
                                   preset=a.preset, epochs=a.epochs, precision=prec,
                                   workers=a.workers, device="cpu")
            loop.train(cfg, progress=False)
            hist = loop.read_checkpoint(Path(tmp) / prec / loop.CHECKPOINT_NAME)["history"]
            rows[prec] = {"val_mean_abs_rel": hist[-1]["val_mean_abs_rel"],
                          "spectra_per_s": sum(h["spectra_per_s"] for h in hist) / len(hist)}
            print(f"{prec}: validation mean |R| {100 * rows[prec]['val_mean_abs_rel']:.3f} %, "
                  f"{rows[prec]['spectra_per_s']:.1f} training spectra/s", file=sys.stderr)
    r_ratio = rows["bf16"]["val_mean_abs_rel"] / rows["fp32"]["val_mean_abs_rel"]
    s_ratio = rows["bf16"]["spectra_per_s"] / rows["fp32"]["spectra_per_s"]
    print(f"bf16 / fp32: |R| {r_ratio:.3f}, speed {s_ratio:.2f}x "
          f"({'within' if abs(r_ratio - 1) <= 0.05 else 'outside'} 5 %)", file=sys.stderr)
    print(json.dumps({"preset": a.preset, "model": a.model, "epochs": a.epochs, **rows,
                      "r_ratio": round(r_ratio, 4), "speed_ratio": round(s_ratio, 3),
                      "within_5_percent": abs(r_ratio - 1) <= 0.05}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
