"""The state of a training run in progress (:class:`RunState`), shared by the loop (:mod:`pipeline.training.train`)
and its resume state (:mod:`pipeline.training.resume`), which both import it (the loop imports its resume state,
never the other way round)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.config import TrainConfig
from pipeline.data.loaders import Loaders
from pipeline.training import distributed, signals

__all__ = ["RunState"]


@dataclass
class RunState:
    """A run in progress."""

    run: TrainConfig
    env: distributed.Dist
    loaders: Loaders
    model: torch.nn.Module
    net: torch.nn.Module  # the model, wrapped in DistributedDataParallel when there are several processes
    optimizer: torch.optim.Optimizer
    scheduler: object
    mixup: object
    criterion: object
    ema: object
    fingerprint: dict
    resume_dir: Path
    params: int
    stop: signals.StopRequests | None
    curves: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    start_step: int = 0  # steps of epoch start_epoch already trained on (a run stopped part-way through it)
    partial: tuple = (0.0, 0, 0)  # this rank's loss sum, correct and count over those steps
    saved: tuple[int, int] | None = None  # (epoch, step) of the checkpoint in the resume folder
    window_warned: bool = False  # said that a checkpoint takes too long for the cluster's stop window
    last_finite: float | None = None
    seen: int = 0
    train_seconds: float = 0.0
    epoch_rate: float = 0.0  # training images/s of the last epoch, over all ranks
    scaler: object = None  # torch.amp.GradScaler when the run trains in fp16

    @property
    def amp(self) -> torch.dtype | None:
        from pipeline.training.recipe import amp_dtype

        return amp_dtype(self.env.device, self.run.recipe.amp)

    @property
    def updates_per_epoch(self) -> int:
        return len(self.loaders.train)
