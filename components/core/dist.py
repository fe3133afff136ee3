"""Scale-out across processes (``accelerate launch``): who is main, and the few collectives we use.

A single process (plain ``python -m components.<stage>``, or ``accelerate launch --num_processes 1``)
never calls ``torch.distributed``: every helper hands its input back untouched, so one process
computes exactly what it computed before scale-out existed. Under
``accelerate launch --multi_gpu --num_processes N`` the process group is the one accelerate's
``PartialState`` opens: NCCL on GPUs, gloo on CPU (a CPU-only machine runs N CPU processes).
Tensors handed to these helpers may live on any device; objects travel pickled between the
processes of one run (never read from disk).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from components.core.errors import UserError

_STARTED = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Variables a launcher that really started several processes sets (torchrun, mpirun)."""


class LaunchError(UserError):
    """The launch command asked for processes that were never started."""


def check_launch(environ: Mapping[str, str] = os.environ) -> None:
    """Refuse ``accelerate launch --cpu --num_processes N`` (N > 1): accelerate then starts ONE
    process (it spreads CPU processes only through ``--mpirun_hostfile``), so the run would go
    on at 1/N of the scale asked for. Its mark: ``--cpu`` plus the ``MASTER_ADDR`` it sets for
    N > 1, without the world size that a launcher of N processes sets."""
    cpu = environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if cpu and "MASTER_ADDR" in environ and not any(k in environ for k in _STARTED):
        raise LaunchError("`accelerate launch --cpu --num_processes N` starts a single process; for N CPU "
                          "processes run `accelerate launch --multi_gpu --num_processes N -m components.<stage> …` "
                          "(gloo; runtime.device: cpu), or drop --num_processes for one process.")


def state(device):
    """accelerate's process state for a model on ``device`` (opens the process group once)."""
    from accelerate import PartialState

    check_launch()
    return PartialState(cpu=device.type == "cpu")


def world() -> int:
    """Number of processes in this run (1 when torch.distributed is not in use)."""
    import torch.distributed as td

    return td.get_world_size() if td.is_available() and td.is_initialized() else 1


def rank() -> int:
    import torch.distributed as td

    return td.get_rank() if world() > 1 else 0


def shard_bounds(n: int, rank_: int, world_: int) -> tuple[int, int]:
    """[start, stop) of rank ``rank_``'s contiguous share of ``n`` items; the first ``n % world_``
    ranks take one more. Shares are disjoint and, in rank order, cover range(n)."""
    base, extra = divmod(n, world_)
    start = rank_ * base + min(rank_, extra)
    return start, start + base + (rank_ < extra)


def sum_(tensors: list) -> None:
    """In place: each tensor becomes its sum over all processes (one collective on a flat buffer)."""
    if world() == 1 or not tensors:
        return
    import torch
    import torch.distributed as td

    flat = torch.cat([t.reshape(-1) for t in tensors])
    td.all_reduce(flat, op=td.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


def gather(obj: Any) -> list:
    """Every process's ``obj``, in rank order, on every process (``[obj]`` for one process)."""
    if world() == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def cat(tensor):
    """The processes' tensors concatenated along dim 0 in rank order (sizes may differ); one
    process: ``tensor`` itself."""
    if world() == 1:
        return tensor
    import torch

    parts = gather(tensor.detach().cpu())
    return torch.cat(parts).to(tensor.device)
