"""The paper's proposal, U-Net then DAE, against either network alone at equal CPU time.

Three arms train on the same store (epochs of ``--epoch-size`` spectra drawn from it) with
the best preset's options and are scored on the same validation store:

    unet    the best preset's U-Net alone, ``--epochs`` epochs: its CPU time is the budget
    dae     the best preset's DAE alone, as many epochs as fit the same CPU time
    chain   the U-Net for half the budget, then a DAE trained on its outputs
            (``specdenoise train --model dae --init-from RUN``) for the other half

The DAE arms size their epoch count from a one-epoch probe of their own cost (CPU seconds:
process time, all threads), so the budget holds on a busy machine too; the table reports the
CPU seconds each arm really used.

    python benchmarks/chain.py --data pool.zarr --val val.zarr --epochs 4 --out results/chain

Writes ``chain.csv`` and ``chain.md`` under ``--out``; run folders go under ``--work`` (a
finished arm is kept, so re-running resumes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation import command_line, cpu_seconds, score, write_table  # noqa: E402

from specdenoise.train import loop  # noqa: E402
from specdenoise.train.checkpoint import CHECKPOINT_NAME  # noqa: E402


def _train(run: Path, cfg) -> float:
    """Train ``cfg`` into ``run`` (resuming a partial run); CPU seconds spent."""
    c0 = cpu_seconds()
    loop.train(cfg, resume=(run / CHECKPOINT_NAME).exists(), progress=False)
    return cpu_seconds() - c0


def _probe(work: Path, name: str, make) -> float:
    """CPU seconds of one epoch of the run ``make(out, epochs=1)`` builds (then deleted)."""
    run = work / f"probe-{name}"
    shutil.rmtree(run, ignore_errors=True)
    cost = _train(run, make(run, 1))
    shutil.rmtree(run, ignore_errors=True)
    return cost


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="training store (a pool: epochs draw from it)")
    p.add_argument("--val", required=True, help="validation store")
    p.add_argument("--epochs", type=int, default=4, help="U-Net epochs (sets the budget)")
    p.add_argument("--epoch-size", type=int, default=3000)
    p.add_argument("--work", default="chain-runs", help="run folders (resumable)")
    p.add_argument("--out", default="results/chain")
    p.add_argument("--unet-cfg", default="{}", help="U-Net options over the best preset's")
    p.add_argument("--dae-cfg", default="{}", help="DAE options over the best preset's")
    a = p.parse_args(argv)
    if a.epochs < 2:
        p.error("--epochs must be at least 2 (the chain's U-Net trains for half)")
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    unet_cfg, dae_cfg = json.loads(a.unet_cfg), json.loads(a.dae_cfg)
    common = {"preset": "best", "epoch_size": a.epoch_size, "workers": 0, "seed": 1}

    def unet(run, epochs):
        return loop.make_config(a.data, a.val, run, model="unet", model_cfg=unet_cfg,
                                epochs=epochs, **common)

    def dae(run, epochs, init_from=None):
        return loop.make_config(a.data, a.val, run, model="dae", model_cfg=dae_cfg,
                                epochs=epochs, init_from=init_from, **common)

    rows, state_path = [], work / "chain.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}

    def arm(name: str, run: Path, cfg, cpu_before: float = 0.0) -> None:
        if name not in state:
            t0 = time.perf_counter()
            cpu = cpu_before + _train(run, cfg)
            state[name] = {"arm": name, "epochs": cfg.epochs, "cpu_s": round(cpu, 1),
                           "wall_s": round(time.perf_counter() - t0, 1), **score(run, a.val)}
            state_path.write_text(json.dumps(state))
        print(json.dumps(state[name]), file=sys.stderr)
        rows.append(state[name])

    # the budget: the U-Net alone
    arm("unet", work / "unet", unet(work / "unet", a.epochs))
    budget = state["unet"]["cpu_s"]

    # the DAE alone, sized by its own one-epoch cost
    if "dae" not in state:
        per_epoch = _probe(work, "dae", dae)
        state["dae_epochs"] = max(1, round(budget / per_epoch))
    arm("dae", work / "dae", dae(work / "dae", state["dae_epochs"]))

    # half the budget in a U-Net, the other half in a DAE on its outputs
    half = max(1, a.epochs // 2)
    first = work / "chain-unet"
    if "chain_unet_cpu" not in state:
        state["chain_unet_cpu"] = round(_train(first, unet(first, half)), 1)
        state_path.write_text(json.dumps(state))
    if "chain" not in state:
        per_epoch = _probe(work, "chain", lambda r, e: dae(r, e, init_from=str(first)))
        left = max(budget - state["chain_unet_cpu"], per_epoch)
        state["chain_epochs"] = max(1, round(left / per_epoch))
    second = work / "chain-dae"
    arm("chain", second, dae(second, state["chain_epochs"], init_from=str(first)),
        cpu_before=state["chain_unet_cpu"])
    state_path.write_text(json.dumps(state))

    write_table(rows, out / "chain", command_line("benchmarks/chain.py", argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
