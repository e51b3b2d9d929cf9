"""Loading prepared datasets for training and evaluation.

:func:`build_loaders` turns a folder written by the ``prepare`` stage and an augmentation recipe (a recipe's
``augment`` section) into train / val / test loaders at the model's resolution. Two paths:

- ``mode: batched`` (tensor storage only): the uint8 images stay in memory and a whole batch is augmented at
  once with tensor operations (:mod:`pipeline.data.batched`).
- ``mode: timm``: per-sample transforms from timm's factory (``timm.data.create_transform``: random resized
  crop, RandAugment, colour jitter, bicubic resize, eval crop ratio), in DataLoader workers, which send uint8
  batches; normalisation and random erasing run on the training device (:mod:`pipeline.data.finish`, as timm's
  ``PrefetchLoader``). For image files (ImageNet) and for the GPU profiles' recipes.

Both are deterministic for a seed, and neither depends on how many worker processes load the data: the
shuffling of an epoch comes from a generator seeded by (seed, epoch), and on the timm path every training
sample is transformed under its own seed, derived from (seed, epoch, rank, position), whichever worker
draws it. With ``world_size > 1`` each rank gets a disjoint shard of every epoch. The loader's throughput is
measured by the bench stage. Every file of the prepared folder is checked as it is read (:mod:`pipeline.data.prepared`):
a missing, truncated or corrupt one is one line naming it and the prepare instance that re-creates it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Augment, ParamsError
from pipeline.data import samples
from pipeline.data.batched import TensorBatches
from pipeline.data.prepared import SPLITS, read_index, read_meta, read_tensors

__all__ = ["SPLITS", "Loaders", "build_loaders", "read_meta"]


@dataclass
class Loaders:
    """What a training stage gets: iterables of ``(images float (B, 3, S, S), labels int64 (B,))``."""

    train: object
    val: object
    test: object  # every split sharded over the ranks
    diagnostic: object  # the test split unsharded and in order, for rank 0's Q/K/V diagnostic
    meta: dict  # the prepared dataset's meta.json (classes, mean, std, synthetic, ...)

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    def start_workers(self) -> None:
        """Fork every loader's worker processes now, once for the run (they persist across passes). A training rank
        calls this before it joins its process group: a process that forks while one of its threads ends can leave
        the new worker waiting forever for a lock that thread held (CPython before 3.11.8, gh-112275), and after
        the join the backend's threads run (a thread with no Python frame ended at such a fork in a CI hang).
        Each loader queues its first batches; its first pass starts from its sampler."""
        for split in (self.train, self.val, self.test):
            if hasattr(split, "start_workers"):  # the timm path's DeviceBatches; batched tensors have no workers
                split.start_workers()


def build_loaders(
    prepared: str | Path,
    augment: Augment,
    *,
    img_size: int,
    batch_size: int,
    eval_batch_size: int,
    workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin: bool = False,
    device=None,
) -> Loaders:
    """Loaders for the dataset the ``prepare`` stage wrote to ``prepared``, at ``img_size`` px.

    ``batch_size`` and ``eval_batch_size`` are per process; ``workers`` DataLoader processes per loader (timm
    path), kept alive across epochs; ``pin`` pins batches for asynchronous copies to a GPU. Every split is
    sharded over the ``world_size`` ranks (training drops the last partial round; evaluation keeps every image).
    Tensor data is memory-mapped, file datasets (ImageNet) are read in place from the root of their index.
    ``device`` (default the CPU): where the timm path's batches are finished and delivered. Every loader keeps its
    workers for the run (:meth:`Loaders.start_workers` forks them all at once).
    """
    prepared = Path(prepared)
    meta = read_meta(prepared)
    if meta["storage"] != "tensor" and augment.mode == "batched":
        raise ParamsError("augment.mode: 'batched' needs images in memory; file datasets need mode 'timm'")
    split_data = read_tensors(prepared, meta) if meta["storage"] == "tensor" else read_index(prepared, meta)
    n_train = len(split_data["train"][1])
    if n_train < batch_size * world_size:
        raise ParamsError(
            f"batch size {batch_size} x {world_size} process(es) is larger than the training split "
            f"of {prepared} ({n_train} images)"
        )
    if augment.repeated_aug > 1 and n_train < world_size:
        raise ParamsError(
            f"augment.repeated_aug: {augment.repeated_aug} needs at least one training image per process; the "
            f"training split of {prepared} has {n_train} for {world_size} processes"
        )
    if augment.repeated_aug > 1:
        selected = samples.EpochSampler(n_train, train=True, seed=seed, rank=rank, world_size=world_size,
                                 repeats=augment.repeated_aug)  # fmt: skip
        if len(selected) < batch_size:
            raise ParamsError(
                f"augment.repeated_aug: timm's RepeatAugSampler keeps {len(selected)} of the {n_train} training "
                f"images per process and epoch, fewer than a batch ({batch_size}); lower the batch or the processes"
            )
    shared = {"prepared": prepared, "img_size": img_size, "seed": seed, "pin": pin, "world_size": world_size,
              "device": device}  # fmt: skip
    make = functools.partial(_loader, split_data, meta, augment, **shared)
    return Loaders(
        make("train", batch_size, rank=rank, workers=workers),
        make("val", eval_batch_size, rank=rank, workers=workers),
        make("test", eval_batch_size, rank=rank, workers=workers),
        make("test", eval_batch_size, rank=0, workers=0, world_size=1),
        meta,
    )


def _loader(split_data, meta, augment, split, batch_size, *, prepared, img_size, seed, pin, rank, world_size, workers,
            device):  # fmt: skip
    """One split's loader: batched tensors, or timm transforms in a DataLoader finished on ``device``."""
    import torch

    from pipeline.data.finish import DeviceBatches

    train = split == "train"
    data, labels = split_data[split]
    shard = {"rank": rank, "world_size": world_size}
    if augment.mode == "batched":
        mean, std = meta["mean"], meta["std"]
        return TensorBatches(
            data, labels, batch_size=batch_size, train=train, augment=augment, img_size=img_size, mean=mean,
            std=std, seed=seed, **shard,
        )  # fmt: skip
    transform = samples.transform(augment, train, img_size, meta["mean"], meta["std"])
    if meta["storage"] == "tensor":
        dataset = samples.ImageDataset(labels, transform, images=data)
    else:
        root = Path(meta["root"]).expanduser()
        dataset = samples.ImageDataset(labels, transform, files=data, root=root, index=prepared / "index.csv")
    loader = samples.loader(
        dataset, batch_size=batch_size, train=train, workers=workers, seed=seed, shard=shard,
        repeats=augment.repeated_aug, pin=pin,
    )  # fmt: skip
    return DeviceBatches(
        loader, torch.device(device or "cpu"), mean=meta["mean"], std=meta["std"], train=train, re_prob=augment.re_prob,
        re_mode=augment.re_mode, seed=seed, rank=rank,
    )  # fmt: skip
