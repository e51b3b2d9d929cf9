"""The per-sample loader path (``augment.mode: timm``): timm's transforms on one image at a time, in DataLoader
workers that persist across epochs (every loader forks its workers once per run, evaluation's too). Every training
sample is transformed under its own seed, a pure function of (seed, epoch, rank, position) that travels with its
index, so results depend neither on the number of workers nor on where a resumed run restarts."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pipeline import stop_signals
from pipeline.config import Augment
from pipeline.data.batched import epoch_generator

__all__ = ["EpochSampler", "ImageDataset", "ImageFileError", "loader", "transform"]


class ImageFileError(ValueError):
    """An image an index lists that is missing or unreadable: one line naming the file, the index and what to do.

    Raised in a DataLoader worker, it reaches the main process re-created by torch from the worker's formatted
    traceback (``"Caught ImageFileError in DataLoader worker process 0.\\nOriginal Traceback ..."``); the
    message is then cut back to its own line, so the stage still prints one."""

    def __init__(self, message: str):
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().rsplit("\n", 1)[-1].split(": ", 1)[-1]
        super().__init__(message)


class EpochSampler(torch.utils.data.Sampler):
    """The indices of one rank's share of an epoch, paired with the seed each sample is transformed under.

    Training: shuffled by (seed, epoch) (with ``repeats > 1`` by timm's RepeatAugSampler, which spreads each
    image's copies over the ranks); each sample's seed is a pure function of (seed, epoch, rank, position), so
    the result depends neither on the number of loader workers nor on where a resumed run restarts, and persistent
    workers see every epoch's seeds (they travel with the indices). Evaluation: every image once, rank r taking
    images r, r + world_size, ...
    """

    def __init__(self, n: int, *, train: bool, seed: int, rank: int, world_size: int, repeats: int = 1):
        self.n, self.train, self.seed, self.rank, self.world_size = n, train, seed, rank, world_size
        self.epoch = 0
        self.repeat = None
        if train and repeats > 1:
            from timm.data.distributed_sampler import RepeatAugSampler

            self.repeat = RepeatAugSampler(range(n), num_replicas=world_size, rank=rank, num_repeats=repeats)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if not self.train:
            return list(range(self.rank, self.n, self.world_size))
        if self.repeat is not None:
            self.repeat.set_epoch(self.seed * 1_000_003 + self.epoch)  # timm seeds its shuffle with the epoch alone
            return list(self.repeat)
        order = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch))
        per_rank = self.n // self.world_size  # the last partial round is dropped, as DistributedSampler's
        return order[: per_rank * self.world_size][self.rank :: self.world_size].tolist()

    def __len__(self) -> int:
        if not self.train:
            return len(range(self.rank, self.n, self.world_size))
        return len(self.repeat) if self.repeat is not None else self.n // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int | None]]:
        for position, index in enumerate(self._indices()):
            if not self.train:
                yield index, None  # evaluation transforms draw nothing
                continue
            entropy = [self.seed, self.epoch, self.rank, position]
            yield index, int(np.random.SeedSequence(entropy).generate_state(1)[0])


class ImageDataset(torch.utils.data.Dataset):
    """Per-sample access for timm transforms: PIL images from memory (tensor storage) or from files listed in the
    prepared ``index`` (a missing or unreadable one is an :class:`ImageFileError`). A key is ``(index, seed)``:
    the transform runs under ``seed`` (Python's, NumPy's and torch's global generators, as timm's transforms
    draw from all three), and the caller's generator states are restored afterwards."""

    def __init__(
        self,
        labels: torch.Tensor,
        transform,
        *,
        images: np.ndarray | None = None,
        files: list[str] | None = None,
        root: Path | None = None,
        index: Path | None = None,
    ):
        self.labels, self.transform, self.images, self.files, self.root = labels, transform, images, files, root
        self.index = index

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int | None]):
        from PIL import Image

        i, seed = key
        if self.images is not None:
            image = Image.fromarray(np.ascontiguousarray(self.images[i].transpose(1, 2, 0)))  # (3, S, S) -> (S, S, 3)
        else:
            image = self._read(i)
        if seed is None:
            return self.transform(image), self.labels[i]
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(seed)
                np.random.seed(seed)
                torch.default_generator.manual_seed(seed)  # the CPU generator only: the transforms run on the CPU,
                # and torch.manual_seed would also reseed (and leave reseeded) every CUDA generator
                return self.transform(image), self.labels[i]
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    def _read(self, i: int):
        from PIL import Image

        path = self.root / self.files[i]
        try:
            with Image.open(path) as f:
                return f.convert("RGB")
        except FileNotFoundError:
            what = "not found"
        except OSError as exc:  # PIL's UnidentifiedImageError included: truncated or not an image
            what = f"unreadable ({exc.strerror or exc})"
        index = Path(self.index) if self.index else None
        where = f"listed in {index}" if index else "listed in the prepared index"
        name = index.parent.name if index else "<name>"
        raise ImageFileError(
            f"{path}: image {what} ({where}); restore it, or re-create the index with: dvc repro --force prepare@{name}"
        )


def loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    train: bool,
    workers: int,
    seed: int,
    shard: dict,
    repeats: int,
    pin: bool,
) -> torch.utils.data.DataLoader:
    from torch.utils.data import DataLoader

    sampler = EpochSampler(len(dataset), train=train, seed=seed, repeats=repeats, **shard)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        generator=epoch_generator(seed, 0),
        worker_init_fn=stop_signals.shield_worker,  # a stop signal to the whole job: the rank's to act on
        persistent_workers=workers > 0,  # forked once per run (Loaders.start_workers), never while the threads of
        # a previous pass end: a fork then can hang the new worker for good (CPython < 3.11.8, gh-112275)
        pin_memory=pin,
    )


def transform(augment: Augment, train: bool, img_size: int, mean: list[float], std: list[float]):
    """timm's per-sample transform of ``augment`` at ``img_size`` px, up to uint8 ``(3, S, S)`` tensors: the
    CPU part of ``create_transform(..., use_prefetcher=True)`` (random resized crop, flip, RandAugment or colour
    jitter; for evaluation resize and centre crop). Normalisation and random erasing follow on the device
    (:class:`pipeline.data.finish.DeviceBatches`). ``mean`` still matters here: RandAugment fills with it."""
    from timm.data import create_transform

    return create_transform(
        img_size,
        is_training=train,
        use_prefetcher=True,
        scale=(augment.scale_min, 1.0),
        hflip=augment.hflip,
        auto_augment=augment.auto_augment,
        color_jitter=augment.color_jitter,
        interpolation=augment.interpolation,
        crop_pct=augment.crop_pct,
        mean=tuple(mean),
        std=tuple(std),
    )
