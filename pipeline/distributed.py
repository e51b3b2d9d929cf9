"""The processes of a training run: torchrun sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; plain ``python``
runs one process. gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Dist", "barrier", "configure_torch", "init"]


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """The process that evaluates and writes outputs."""
        return self.rank == 0


def init() -> Dist:
    """This process's place in the run, joining the process group when there are several."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)  # CUDA only
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world_size, device)


def barrier(env: Dist) -> None:
    if env.world_size > 1:
        dist.barrier()


def configure_torch(device: torch.device, threads: int) -> None:
    """Thread count (0: torch's default) and, on CPU, deterministic algorithms: how every training step runs,
    in the stages and in the benchmark."""
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        # Deterministic mode also fills every new tensor with NaN, to expose reads of uninitialised memory; the
        # results do not depend on it, and it cost 6 % of a training step (docs/performance.md).
        torch.utils.deterministic.fill_uninitialized_memory = False
