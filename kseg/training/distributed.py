"""DistributedDataParallel helpers, kept out of the training loop: under ``torchrun`` every process
trains, rank 0 validates and writes, and these move the few values ranks must share. With one process
(``WORLD_SIZE`` unset) each is a no-op."""

from __future__ import annotations

import os
from typing import Any

import torch


def init() -> tuple[int, int]:
    """``(rank, world size)``, joining the process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def broadcast(value: Any, rank: int, world: int) -> Any:
    """Rank 0's ``value`` on every rank."""
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def mean_over_ranks(total: float, count: int, world: int) -> float:
    """``sum(total) / sum(count)`` over every rank."""
    if world == 1:
        return total / max(count, 1)
    import torch.distributed as dist

    both = torch.tensor([total, count], dtype=torch.float64)
    dist.all_reduce(both)
    return float(both[0] / max(float(both[1]), 1))


def wrap(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """The model wrapped in DistributedDataParallel under torchrun; itself otherwise."""
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class Ranks:
    """This process's place among the training processes, and the few exchanges the loop needs; with one
    process (the default) every exchange is a no-op.

    Args:
        rank: This process's rank (0 validates and writes).
        world: The number of processes.
    """

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @classmethod
    def joined(cls) -> Ranks:
        """The ranks of this launch (joining torchrun's process group when there is one)."""
        return cls(*init())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        return broadcast(value, self.rank, self.world)

    def barrier(self) -> None:
        barrier(self.world)

    def mean(self, total: float, count: int) -> float:
        return mean_over_ranks(total, count, self.world)
