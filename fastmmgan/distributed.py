"""torch.distributed set-up for ``torchrun``: one process per device, NCCL on CUDA, gloo on CPU.

``--batch-size`` is the global batch: every process draws the same global batch from the seed and
trains on its own contiguous slice, so N processes follow the same trajectory as one.
"""

from __future__ import annotations

import os
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


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``x`` [b, ...] in rank order [world * b, ...], differentiable (the backward sends
    each process the gradient of its own rows, summed over processes); ``x`` itself outside torchrun.

    For batch-level terms that are not a mean over rows (the MMD): computed on the gathered global batch,
    every process gets the one-process loss, and DDP's gradient averaging then gives the one-process gradient.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x))
