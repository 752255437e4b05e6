"""Where training runs: devices, numeric precision, and DDP over several processes.

Multi-GPU: start with ``torchrun --nproc_per_node N -m specdenoise.cli train ...``; each rank
streams its own share of the spectra (:mod:`specdenoise.train.data`); :class:`Dist` says which
rank this is and sums the per-rank statistics.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from specdenoise.errors import SpecdenoiseError
from specdenoise.train.checkpoint import default_device
from specdenoise.train.config import PRECISIONS  # noqa: E402,F401 (one copy)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_distributed(device_pref: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    started = False
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and not device_pref.startswith(("cpu", "mps"))
        dist.init_process_group("nccl" if use_nccl else "gloo")
        started = True
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                 started)


def resolve_device(pref: str, ctx: Dist | None = None) -> torch.device:
    ctx = ctx or Dist()
    if pref == "auto":
        dev = default_device()
    else:
        try:
            dev = torch.device(pref)
        except RuntimeError:
            raise SpecdenoiseError(f"unknown device {pref!r}; use auto, cpu, cuda or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecdenoiseError("--device cuda asked for, but torch sees no CUDA GPU")
        if ctx.active and dev.index is None:
            dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise SpecdenoiseError("--device mps asked for, but MPS is not available")
    return dev


def model_of(net: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a compiled and/or DDP wrapper."""
    net = getattr(net, "_orig_mod", net)
    return getattr(net, "module", net)


def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bfloat16 natively (AVX-512 BF16 or AMX): autocast pays."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(pref: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``pref`` on ``device`` (``auto``: bf16 where it is fast)."""
    if pref != "auto":
        return pref
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast(precision: str, device: torch.device):
    """bf16 autocast where the run's precision says so (the models' heads leave it)."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
