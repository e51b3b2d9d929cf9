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

import functools
import json
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import samples
from pipeline.batched import TensorBatches
from pipeline.config import Augment, ParamsError

__all__ = ["Loaders", "build_loaders", "read_meta"]

SPLITS = ("train", "val", "test")


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


def read_meta(prepared: str | Path) -> dict:
    path = Path(prepared) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prepared dataset not found (run the prepare stage for it)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


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
    if augment.repeated_aug > 1:
        selected = samples.EpochSampler(n_train, train=True, seed=seed, rank=rank, world_size=world_size,
                                 repeats=augment.repeated_aug)  # fmt: skip
        if len(selected) < batch_size:
            raise ParamsError(
                f"augment.repeated_aug: timm's RepeatAugSampler keeps {len(selected)} of the {n_train} training "
                f"images per process and epoch, fewer than a batch ({batch_size}); lower the batch or the processes"
            )
    make = functools.partial(
        _loader, split_data, meta, augment, img_size=img_size, seed=seed, pin=pin, world_size=world_size
    )
    return Loaders(
        make("train", batch_size, rank=rank, workers=workers),
        make("val", eval_batch_size, rank=rank, workers=workers),
        make("test", eval_batch_size, rank=rank, workers=workers),
        make("test", eval_batch_size, rank=0, workers=0, world_size=1),
        meta,
    )


def _loader(split_data, meta, augment, split, batch_size, *, img_size, seed, pin, rank, world_size, workers):
    """One split's loader: batched tensors, or timm transforms in a DataLoader."""
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
        dataset = samples.ImageDataset(labels, transform, files=data, root=Path(meta["root"]).expanduser())
    return samples.loader(
        dataset, batch_size=batch_size, train=train, workers=workers, seed=seed, shard=shard,
        repeats=augment.repeated_aug, pin=pin,
    )  # fmt: skip


def _read_tensors(prepared: Path) -> dict[str, tuple[np.ndarray, torch.Tensor]]:
    """The images of a prepared ``data.safetensors`` memory-mapped (read on demand and shared by every process
    through the page cache, never copied per rank), and the labels in memory."""
    path = prepared / "data.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prepared data not found (run the prepare stage for it)")
    mapped = _map_safetensors(path)
    return {s: (mapped[f"{s}_images"], torch.from_numpy(np.array(mapped[f"{s}_labels"]))) for s in SPLITS}


class _Mapped(np.memmap):
    """A read-only ``np.memmap`` that pickles as its file region, not its bytes: DataLoader workers started by
    spawn or forkserver (macOS, Python 3.14) reopen the mapping instead of receiving a copy of the dataset."""

    def __reduce__(self):
        if isinstance(self.base, mmap.mmap):  # the whole mapped tensor
            return _open_mapped, (str(self.filename), self.dtype.str, self.offset, self.shape)
        return np.array, (np.asarray(self),)  # a view of one: its data


def _open_mapped(path: str, dtype: str, offset: int, shape: tuple) -> _Mapped:
    return _Mapped(path, np.dtype(dtype), "r", offset=offset, shape=shape)


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
        out[name] = _open_mapped(str(path), np.dtype(dtypes[info["dtype"]]).str, 8 + length + begin, shape)
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
