"""torch.distributed set-up for ``torchrun``: one process per device, NCCL on CUDA, gloo on CPU.

``--batch-size`` is the global batch: every process draws the same global batch from the seed and
trains on its own contiguous slice, so N processes follow the same trajectory as one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import FastMMGANError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank of world, and the device it owns."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device, timeout_s: float = 300.0) -> DistInfo:
    """Join the process group torchrun describes (env:// rendezvous); a no-op for a single process.

    CUDA processes take ``cuda:LOCAL_RANK``; a peer that dies makes the collectives fail after
    ``timeout_s`` instead of hanging forever.
    """
    if not launched_by_torchrun():
        return DistInfo(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise FastMMGANError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world, device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_true(info: DistInfo, flag: bool) -> bool:
    """Whether ``flag`` holds on every process (one small all-reduce)."""
    if not info.enabled:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=info.device)
    dist.all_reduce(t)
    return t.item() == 0.0


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def in_process_group() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_autograd():
    from torch.distributed import _functional_collectives as funcol

    # The name changed in torch 2.13 (the old one warns there); both trace under dynamo.
    return getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``x`` [b, ...] in rank order [world * b, ...], differentiable (the backward sends
    each process the gradient of its own rows, summed over processes); ``x`` itself outside torchrun.

    For batch-level terms that are not a mean over rows (the MMD): computed on the gathered global batch,
    every process gets the one-process loss, and averaging the gradients then gives the one-process gradient.
    A functional collective, so the compiled step traces it into its graph; eager DDP runs it as is.
    """
    if not in_process_group():
        return x
    return _gather_autograd()(x, 0, dist.group.WORLD)


def average_grads(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients averaged over every process (one all-reduce of them flattened into one buffer, as DDP's
    buckets do); the gradients themselves outside torchrun. A functional collective: inside the compiled
    step it becomes part of the graph, where DDP's gradient hooks would never fire."""
    grads = list(grads)
    if not in_process_group():
        return grads
    from torch.distributed import _functional_collectives as funcol

    flat = torch.cat([g.reshape(-1) for g in grads])
    total = funcol.all_reduce(flat, "sum", dist.group.WORLD) / dist.get_world_size()
    out, start = [], 0
    for g in grads:
        out.append(total[start : start + g.numel()].view_as(g))
        start += g.numel()
    return out


def broadcast_from_rank0(tensors: Sequence[torch.Tensor]) -> None:
    """Overwrite ``tensors`` (parameters, buffers, optimizer state) on every process with rank 0's, as DDP does at
    construction, so processes that update identically stay identical."""
    if not in_process_group():
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t, src=0)
