"""The processes of a training run: torchrun sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; plain ``python``
runs one process. gloo on CPU, NCCL on GPU; the device is asked for (``device`` in params.yaml), never guessed.

Lines that only a CUDA machine executes are marked ``# CUDA only``; the rehearsal and docs/cluster.md list them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pipeline.config import ParamsError
from pipeline.config.determinism import CUBLAS_WORKSPACE

__all__ = [
    "Dist",
    "all_sum",
    "barrier",
    "broadcast_buffers",
    "configure_torch",
    "init",
    "join",
    "largest",
    "launched_rank",
    "place",
    "rank_seed",
    "same_everywhere",
]


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """The process that writes outputs."""
        return self.rank == 0


def init(device: str) -> Dist:
    """This process's place in the run on ``device`` ("cpu" or "cuda"), joining the process group when there
    are several. Asking for CUDA on a machine where torch sees none is an error, not a CPU run."""
    return join(place(device))


def place(device: str) -> Dist:
    """This process's place in the run on ``device``, before it joins the process group (:func:`join`): its rank
    and the world size as the launcher set them, its device (set as CUDA's current one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = launched_rank()
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ParamsError(
                f"device: 'cuda' asked for, but torch {torch.__version__} sees no CUDA device here (no GPU, or a "
                "driver too old for this build); set device: cpu to run on the CPU"
            )
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():  # CUDA only
            raise ParamsError(
                f"launcher: process {local} of this node has no GPU: torch sees {torch.cuda.device_count()} "
                "(lower --nproc-per-node to the node's GPU count)"
            )
        where = torch.device("cuda", local)  # CUDA only
        torch.cuda.set_device(where)  # CUDA only
    else:
        where = torch.device("cpu")
    return Dist(rank, world_size, where)


def join(env: Dist) -> Dist:
    """``env``, its process joined to the run's process group (gloo on the CPU, NCCL on CUDA) if there are several;
    from here on the process runs the backend's threads."""
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if env.device.type == "cuda" else "gloo")  # NCCL on CUDA
    return env


def launched_rank() -> int:
    """This process's rank as its launcher set it (0 without one), before the process group is joined."""
    return int(os.environ.get("RANK", "0"))


def barrier(env: Dist) -> None:
    if env.world_size > 1:
        dist.barrier()


def all_sum(env: Dist, values: list[float]) -> list[float]:
    """``values`` summed over every rank (float64), in the same order on every rank."""
    if env.world_size == 1:
        return values
    total = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(total)
    return total.tolist()


def same_everywhere(env: Dist, value: int) -> bool:
    """Whether every rank holds the same integer ``value`` (called on every rank)."""
    if env.world_size == 1:
        return True
    low = torch.tensor([value], dtype=torch.int64, device=env.device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return low.item() == high.item()


def largest(env: Dist, value: int) -> int:
    """The largest of the ranks' integers ``value`` (called on every rank): how the ranks agree to stop."""
    if env.world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.int64, device=env.device)
    dist.all_reduce(total, op=dist.ReduceOp.MAX)
    return int(total.item())


def broadcast_buffers(env: Dist, module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, so every rank evaluates the weights rank 0
    saves: each rank's own batches move them apart in training (they are synchronised only on CUDA)."""
    if env.world_size > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's random stream (Mixup/CutMix draws, drop path, dropout): different on every rank,
    fixed for a (seed, rank), and never the stream of another seed's rank (unlike ``seed + rank``)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def configure_torch(device: torch.device | str, threads: int, gpu_kernels: str) -> None:
    """Thread count (0: torch's default) and the kernels every training step runs with, in the stages and in the
    benchmark (what each choice promises: :mod:`pipeline.config.determinism`): on CPU deterministic algorithms; on
    CUDA ``runtime.gpu_kernels``: ``fast`` turns on cuDNN's autotuner and TF32 for float32 products,
    ``deterministic`` deterministic algorithms, cuDNN's deterministic kernels and no TF32. Call it before CUDA
    initialises (before :func:`init`): cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when it starts."""
    if threads:
        torch.set_num_threads(threads)
    kind = torch.device(device).type
    if kind == "cuda" and gpu_kernels == "deterministic":
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE  # CUDA only
        torch.use_deterministic_algorithms(True)  # CUDA only
        torch.backends.cudnn.benchmark = False  # CUDA only
        torch.backends.cudnn.deterministic = True  # CUDA only
        torch.backends.cuda.matmul.allow_tf32 = False  # CUDA only
        torch.backends.cudnn.allow_tf32 = False  # CUDA only
    elif kind == "cuda":
        # timm's and XCiT's settings, explicit: cuDNN picks the fastest convolution for the stem's fixed shapes;
        # float32 products (outside autocast) and convolutions in TF32
        torch.use_deterministic_algorithms(False)  # CUDA only
        torch.backends.cudnn.deterministic = False  # CUDA only
        torch.backends.cudnn.benchmark = True  # CUDA only
        torch.backends.cuda.matmul.allow_tf32 = True  # CUDA only
        torch.backends.cudnn.allow_tf32 = True  # CUDA only
    if kind == "cpu":
        torch.use_deterministic_algorithms(True)
    # Deterministic mode also fills every new tensor with NaN, to expose reads of uninitialised memory; the
    # results do not depend on it, and it cost 6 % of a training step (docs/performance.md).
    torch.utils.deterministic.fill_uninitialized_memory = False
