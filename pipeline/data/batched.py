"""The ``batched`` loader path: uint8 images (memory-mapped from the prepared file, so ranks share one copy in the
page cache) augmented a whole batch at a time with tensor operations
(random crop from a padded image, horizontal flip, resize to the model's input size, normalisation). On a
2-core CPU this keeps loading far from the bottleneck; per-sample PIL transforms would not."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import Augment

__all__ = ["TensorBatches", "epoch_generator"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator an epoch's shuffling (and batched augmentation) draws from: a function of (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class TensorBatches:
    """Batches of uint8 images (N, 3, S, S), augmented a whole batch at a time; only a batch's rows are read.

    Iterating gives one epoch; call :meth:`set_epoch` before each so that shuffling and augmentation differ
    per epoch and reproduce exactly for a seed. With ``world_size > 1`` each rank takes every
    ``world_size``-th sample of the shuffled order (the last partial round is dropped, as DistributedSampler
    with ``drop_last=True``), so ranks see disjoint data and the same number of batches; in evaluation each rank
    takes every ``world_size``-th image, all of them once.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        train: bool,
        augment: Augment,
        img_size: int,
        mean: list[float],
        std: list[float],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.images = images.numpy() if isinstance(images, torch.Tensor) else images  # np.memmap: rows on demand
        self.labels = labels
        self.batch_size, self.train, self.augment, self.seed = batch_size, train, augment, seed
        self.img_size = img_size
        self.rank, self.world_size = rank, world_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if not self.train:  # evaluation: every image once, rank r taking images r, r + world_size, ...
            return torch.arange(n)[self.rank :: self.world_size]
        order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch))
        if self.world_size > 1:
            per_rank = n // self.world_size
            order = order[: per_rank * self.world_size][self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        if not self.train:
            return math.ceil(len(self._indices()) / self.batch_size)
        return len(self.labels) // self.world_size // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        g = epoch_generator(self.seed + 1, self.epoch * self.world_size + self.rank)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = torch.from_numpy(self.images[idx.numpy()]).float().div_(255.0)  # (B, 3, S, S), memory-mapped rows
            if self.train:
                x = self._augment(x, g)
            if x.shape[-1] != self.img_size:
                x = F.interpolate(
                    x,
                    size=self.img_size,
                    mode=self.augment.interpolation,
                    align_corners=False if self.augment.interpolation != "nearest" else None,
                )
            yield (x - self.mean) / self.std, self.labels[idx]

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        B, _, S, _ = x.shape
        p = self.augment.pad_crop
        if p > 0:
            padded = F.pad(x, (p, p, p, p), mode="reflect")  # (B, 3, S+2p, S+2p)
            offset = torch.randint(0, 2 * p + 1, (B, 2), generator=g)
            rows = (offset[:, :1] + torch.arange(S)).view(B, 1, S, 1)  # (B, 1, S, 1)
            cols = (offset[:, 1:] + torch.arange(S)).view(B, 1, 1, S)  # (B, 1, 1, S)
            x = padded[torch.arange(B).view(B, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1), rows, cols]
        if self.augment.hflip > 0:
            flip = (torch.rand(B, generator=g) < self.augment.hflip).view(B, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        return x
