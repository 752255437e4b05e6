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


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which SLURM and cgroups set), >= 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def idle_cores(seconds: float = 0.3) -> float | None:
    """How many of this process's cores were idle over the next ``seconds``: the idle time of
    each CPU in its affinity, from ``/proc/stat``, summed (None where that cannot be read)."""
    import time

    def sample() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    ticks = [int(x) for x in fields[:8]]
                    out[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))  # idle + iowait
        return out

    try:
        cpus = os.sched_getaffinity(0)
        a = sample()
        time.sleep(seconds)
        b = sample()
    except (AttributeError, OSError, ValueError):
        return None
    free = 0.0
    for c in cpus:
        if c in a and c in b and b[c][1] > a[c][1]:
            free += (b[c][0] - a[c][0]) / (b[c][1] - a[c][1])
    return free


def choose_threads(requested: int | None, device: torch.device) -> tuple[int, str]:
    """The CPU threads a training run computes with, and why (for the log).

    ``requested``: a count (kept as given); 0: PyTorch's own (one per usable core; what runs
    before ``--threads`` used); None (``--threads auto``): PyTorch's own count, less the cores
    other processes keep busy right now. On two cores beside one busy process, two threads
    trained at 0.41x the idle rate (every OpenMP barrier waits for the thread that shares its
    core) and one thread at 0.78x (``benchmarks/bench_shared_cores.py``). The count is chosen
    once per run and recorded, so a resumed run computes as it began (the thread count changes
    the floating-point sums). No measurement on a GPU, or when ``OMP_NUM_THREADS`` is set (a
    batch job's or the user's choice).
    """
    current = torch.get_num_threads()
    if requested:
        return requested, f"{requested} as asked (--threads)"
    if requested == 0 or device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return current, "PyTorch's default"
    free = idle_cores()
    if free is None:
        return current, "PyTorch's default (the machine's load cannot be read here)"
    n = max(1, min(current, round(free)))
    if n < current:
        return n, (f"{current - n} of the {current} cores are busy with other work ({free:.1f} "
                   f"idle); --threads {current} uses them anyway")
    return n, f"all {n} usable cores are idle"


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
