"""Loading prepared datasets for training and evaluation.

:func:`build_loaders` turns a folder written by the ``prepare`` stage and an augmentation recipe (a recipe's
``augment`` section) into train / val / test loaders at the model's resolution. Two paths:

- ``mode: batched`` (tensor storage only): the uint8 images stay in memory and a whole batch is augmented at
  once with tensor operations (:mod:`pipeline.batched`).
- ``mode: timm``: per-sample transforms from timm's factory (``timm.data.create_transform``: random resized
  crop, RandAugment, colour jitter, random erasing, bicubic resize, eval crop ratio), in DataLoader workers;
  for image files (ImageNet) and for the GPU profiles' recipes.

Both are deterministic for a seed, and neither depends on how many worker processes load the data: the
shuffling of an epoch comes from a generator seeded by (seed, epoch), and on the timm path every training
sample is transformed under its own seed, derived from (seed, epoch, rank, position), whichever worker
draws it. With ``world_size > 1`` each rank gets a disjoint shard of every epoch. The loader's throughput is
measured by the bench stage.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.batched import TensorBatches, epoch_generator
from pipeline.config import Augment, ParamsError

__all__ = ["Loaders", "build_loaders", "read_meta"]

SPLITS = ("train", "val", "test")


@dataclass
class Loaders:
    """What a training stage gets: iterables of ``(images float (B, 3, S, S), labels int64 (B,))``."""

    train: object
    val: object
    test: object
    meta: dict  # the prepared dataset's meta.json (classes, mean, std, synthetic, ...)

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]


def read_meta(prepared: str | Path) -> dict:
    path = Path(prepared) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prepared dataset not found (run the prepare stage for it)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


class _EpochSampler(torch.utils.data.Sampler):
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


class _ImageDataset(torch.utils.data.Dataset):
    """Per-sample access for timm transforms: PIL images from memory (tensor storage) or from files. A key is
    ``(index, seed)``: the transform runs under ``seed`` (Python's, NumPy's and torch's global generators, as
    timm's transforms draw from all three), and the caller's generator states are restored afterwards."""

    def __init__(
        self,
        labels: torch.Tensor,
        transform,
        *,
        images: np.ndarray | None = None,
        files: list[str] | None = None,
        root: Path | None = None,
    ):
        self.labels, self.transform, self.images, self.files, self.root = labels, transform, images, files, root

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int | None]):
        from PIL import Image

        i, seed = key
        if self.images is not None:
            image = Image.fromarray(np.ascontiguousarray(self.images[i].transpose(1, 2, 0)))  # (3, S, S) -> (S, S, 3)
        else:
            with Image.open(self.root / self.files[i]) as f:
                image = f.convert("RGB")
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


def _timm_loader(
    dataset: _ImageDataset,
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

    sampler = _EpochSampler(len(dataset), train=train, seed=seed, repeats=repeats, **shard)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        generator=epoch_generator(seed, 0),
        persistent_workers=workers > 0,  # started once, not once per epoch and per evaluation
        pin_memory=pin,
    )


def _timm_transform(augment: Augment, train: bool, img_size: int, mean: list[float], std: list[float]):
    from timm.data import create_transform

    return create_transform(
        img_size,
        is_training=train,
        scale=(augment.scale_min, 1.0),
        hflip=augment.hflip,
        auto_augment=augment.auto_augment,
        color_jitter=augment.color_jitter,
        re_prob=augment.re_prob,
        interpolation=augment.interpolation,
        re_mode=augment.re_mode,
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=augment.crop_pct,
    )


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
) -> Loaders:
    """Loaders for the dataset the ``prepare`` stage wrote to ``prepared``, at ``img_size`` px.

    ``batch_size`` and ``eval_batch_size`` are per process; ``workers`` DataLoader processes per loader (timm
    path), kept alive across epochs; ``pin`` pins batches for asynchronous copies to a GPU. Every split is
    sharded over the ``world_size`` ranks (training drops the last partial round; evaluation keeps every image).
    Tensor data is memory-mapped, file datasets (ImageNet) are read in place from the root of their index.
    """
    prepared = Path(prepared)
    meta = read_meta(prepared)
    if meta["storage"] != "tensor" and augment.mode == "batched":
        raise ParamsError("augment.mode: 'batched' needs images in memory; file datasets need mode 'timm'")
    split_data = _read_tensors(prepared) if meta["storage"] == "tensor" else _read_index(prepared / "index.csv")
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
    loaders = {}
    for split in SPLITS:
        train = split == "train"
        bs = batch_size if train else eval_batch_size
        data, labels = split_data[split]
        shard = {"rank": rank, "world_size": world_size}
        if augment.mode == "batched":
            mean, std = meta["mean"], meta["std"]
            loaders[split] = TensorBatches(
                data, labels, batch_size=bs, train=train, augment=augment, img_size=img_size, mean=mean, std=std,
                seed=seed, **shard,
            )  # fmt: skip
            continue
        transform = _timm_transform(augment, train, img_size, meta["mean"], meta["std"])
        if meta["storage"] == "tensor":
            dataset = _ImageDataset(labels, transform, images=data)
        else:
            dataset = _ImageDataset(labels, transform, files=data, root=Path(meta["root"]).expanduser())
        loaders[split] = _timm_loader(
            dataset, batch_size=bs, train=train, workers=workers, seed=seed, shard=shard,
            repeats=augment.repeated_aug, pin=pin,
        )  # fmt: skip
    return Loaders(loaders["train"], loaders["val"], loaders["test"], meta)


def _read_tensors(prepared: Path) -> dict[str, tuple[np.ndarray, torch.Tensor]]:
    """The images of a prepared ``data.safetensors`` memory-mapped (read on demand and shared by every process
    through the page cache, never copied per rank), and the labels in memory."""
    path = prepared / "data.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prepared data not found (run the prepare stage for it)")
    mapped = _map_safetensors(path)
    return {s: (mapped[f"{s}_images"], torch.from_numpy(np.array(mapped[f"{s}_labels"]))) for s in SPLITS}


def _map_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only ``np.memmap``. The format (github.com/huggingface/
    safetensors): an 8-byte little-endian header length, a JSON header with each tensor's dtype, shape and byte
    offsets, then the data."""
    dtypes = {"U8": np.uint8, "I64": np.int64, "F32": np.float32}
    with path.open("rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(length))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == begin:  # an empty split
            out[name] = np.zeros(shape, dtypes[info["dtype"]])
            continue
        out[name] = np.memmap(path, dtypes[info["dtype"]], "r", offset=8 + length + begin, shape=shape)
    return out


def _read_index(path: Path) -> dict[str, tuple[list[str], torch.Tensor]]:
    import csv

    if not path.is_file():
        raise FileNotFoundError(f"{path}: prepared index not found (run the prepare stage for it)")
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    labels: dict[str, list[int]] = {s: [] for s in SPLITS}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            files[row["split"]].append(row["path"])
            labels[row["split"]].append(int(row["label"]))
    return {s: (files[s], torch.tensor(labels[s], dtype=torch.int64)) for s in SPLITS}
