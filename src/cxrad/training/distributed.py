"""This process's place in a torchrun job, and DistributedDataParallel wrapping."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch (contiguous, sizes differ by at most one)."""
        if self.world == 1:
            return x
        return torch.tensor_split(x, self.world)[self.rank]

    def all_sum(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def finish(self) -> None:
        """Wait for every rank, then leave the process group (torchrun expects a clean exit)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank (stopping must be collective)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        torch.distributed.broadcast(t, src=0)
        return bool(t.item())


def distributed() -> Distributed:
    """Join the process group that torchrun describes (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return Distributed()
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("CXRAD_DDP_BACKEND") != "gloo" else "gloo"
        torch.distributed.init_process_group(backend)
    return Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size())


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when running under torchrun, else itself."""
    if distributed().world == 1:
        return module
    import inspect

    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    # each rank keeps its own buffers (BatchNorm statistics of its share) rather than rank 0's at every forward;
    # torch 2.13 renamed the switch and warns, on every rank, about the old name. Syncing at init (which the new
    # one still does) changes nothing: every rank builds or resumes the same weights and buffers.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


