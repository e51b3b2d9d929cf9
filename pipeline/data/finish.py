"""The last steps of the timm loader path, on the training device: the loader workers send uint8 batches (a quarter
of float32's bytes over PCIe, no float work on the CPU) and :class:`DeviceBatches` turns them into the model's
input where the model runs — float, normalised by the dataset's mean and std, and in training random erasing —
as timm's ``PrefetchLoader`` does (``create_transform(..., use_prefetcher=True)`` is the CPU part, timm's own).

The same operations as timm's per-sample transform, in the same order (``ToTensor``, ``Normalize``,
``RandomErasing`` on the normalised image), moved: the pixels equal the CPU path's to float rounding (a test checks
it), and random erasing is timm's ``RandomErasing`` on each image of the batch. Its draws come from a generator
seeded by (seed, epoch, rank, step), so a run is reproducible for a seed, whatever the number of loader workers and
wherever a resumed run restarts, as the per-sample transforms are (:mod:`pipeline.data.samples`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["DeviceBatches"]


class DeviceBatches:
    """Batches of ``loader`` (uint8 ``(B, 3, S, S)`` images, labels) on ``device``, finished there: float,
    normalised, random erasing in training (``re_prob`` > 0). ``set_epoch`` reaches the loader's sampler."""

    def __init__(self, loader, device: torch.device, *, mean, std, train: bool, re_prob: float, re_mode: str,
                 seed: int, rank: int):  # fmt: skip
        self.loader, self.device, self.train, self.seed, self.rank = loader, device, train, seed, rank
        self.mean = torch.tensor([255 * m for m in mean], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([255 * s for s in std], device=device).view(1, 3, 1, 1)
        self.erasing = None
        if train and re_prob > 0:
            from timm.data.random_erasing import RandomErasing

            self.erasing = RandomErasing(probability=re_prob, mode=re_mode, device=device)
        self.epoch = 0

    @property
    def sampler(self):
        return self.loader.sampler

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def start_workers(self) -> None:
        """Fork the loader's worker processes (persistent: the first pass reuses them), if it has any."""
        if self.loader.num_workers > 0:
            iter(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step, (images, labels) in enumerate(self.loader):
            images = images.to(self.device, non_blocking=True)
            images = images.float().sub_(self.mean).div_(self.std)
            if self.erasing is not None:
                self._erase(images, step)
            yield images, labels.to(self.device, non_blocking=True)

    def _erase(self, images: torch.Tensor, step: int) -> None:
        """timm's RandomErasing on every image, drawing from Python's and the device's generators seeded by (seed,
        epoch, rank, step); the callers' generator states are restored afterwards."""
        seed = int(np.random.SeedSequence([self.seed, self.epoch, self.rank, step, 1]).generate_state(1)[0])
        state = random.getstate()
        cuda = self.device.type == "cuda"
        try:
            with torch.random.fork_rng(devices=[self.device] if cuda else [], device_type=self.device.type):
                random.seed(seed)
                torch.default_generator.manual_seed(seed)
                if cuda:  # this device's generator (fork_rng restores it)
                    torch.cuda.manual_seed(seed)  # CUDA only
                self.erasing(images)
        finally:
            random.setstate(state)
