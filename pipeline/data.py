"""Loading prepared datasets for training and evaluation.

:func:`build_loaders` turns a folder written by the ``prepare`` stage and an augmentation recipe (the
``augment`` section of params.yaml) into train / val / test loaders. Two paths:

- ``mode: batched`` (tensor storage only): the uint8 images stay in memory and a whole batch is augmented at
  once with tensor operations (random crop from a padded image, horizontal flip, resize to the model's input
  size, normalisation). On a 2-core CPU this keeps loading far from the bottleneck; per-sample PIL
  transforms would not.
- ``mode: timm``: per-sample transforms from timm's factory (``timm.data.create_transform``: random resized
  crop, RandAugment, colour jitter, random erasing, bicubic resize, eval crop ratio), in DataLoader workers;
  for image files (ImageNet) and for the GPU profiles' recipes.

Both are deterministic for a seed: the shuffling and every random augmentation draw from generators seeded
by (seed, epoch). With ``world_size > 1`` each rank gets a disjoint shard of every epoch.

``python -m pipeline.data`` measures loader throughput (images/s) for a prepared dataset.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.params import ParamsError

__all__ = ["AugmentParams", "Loaders", "TensorBatches", "build_loaders", "read_meta"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class AugmentParams:
    """The ``augment`` section of params.yaml: how training images are augmented and fed to the model."""

    mode: str  # "batched" or "timm"
    input_size: int  # the model's input resolution (images are resized to it)
    hflip: float  # probability of a horizontal flip
    pad_crop: int  # batched: pad by this many pixels (reflect), crop back at a random offset
    scale_min: float  # timm: random-resized-crop minimum area fraction (1.0 = no crop)
    auto_augment: str | None  # timm: e.g. "rand-m9-mstd0.5-inc1", or null
    color_jitter: float | None  # timm
    re_prob: float  # timm: random erasing probability
    interpolation: str  # "bicubic", "bilinear", ...
    crop_pct: float  # evaluation centre-crop ratio (1.0: whole image)
    workers: int  # timm: DataLoader worker processes

    def check(self, where: str = "augment") -> None:
        if self.mode not in ("batched", "timm"):
            raise ParamsError(f"{where}.mode: {self.mode!r} is not one of: batched, timm")
        if self.input_size <= 0:
            raise ParamsError(f"{where}.input_size: expected a positive integer, got {self.input_size}")
        for key in ("hflip", "re_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ParamsError(f"{where}.{key}: expected a probability in [0, 1], got {getattr(self, key)}")
        if not 0 < self.scale_min <= 1 or not 0 < self.crop_pct <= 1:
            raise ParamsError(f"{where}: scale_min and crop_pct must lie in (0, 1]")
        if self.pad_crop < 0 or self.workers < 0:
            raise ParamsError(f"{where}: pad_crop and workers must not be negative")
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ParamsError(
                f"{where}.interpolation: {self.interpolation!r} is not one of: bicubic, bilinear, nearest"
            )


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


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class TensorBatches:
    """Batches of in-memory uint8 images (N, 3, S, S), augmented a whole batch at a time.

    Iterating gives one epoch; call :meth:`set_epoch` before each so that shuffling and augmentation differ
    per epoch and reproduce exactly for a seed. With ``world_size > 1`` each rank takes every
    ``world_size``-th sample of the shuffled order (the last partial round is dropped, as DistributedSampler
    with ``drop_last=True``), so ranks see disjoint data and the same number of batches.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        train: bool,
        recipe: AugmentParams,
        mean: list[float],
        std: list[float],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool | None = None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.recipe, self.seed = batch_size, train, recipe, seed
        self.rank, self.world_size = rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        order = torch.randperm(n, generator=_generator(self.seed, self.epoch)) if self.train else torch.arange(n)
        if self.world_size > 1:
            per_rank = n // self.world_size
            order = order[: per_rank * self.world_size][self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self.labels) // self.world_size if self.world_size > 1 else len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        g = _generator(self.seed + 1, self.epoch * self.world_size + self.rank)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[idx].float().div_(255.0)  # (B, 3, S, S)
            if self.train:
                x = self._augment(x, g)
            if x.shape[-1] != self.recipe.input_size:
                x = F.interpolate(
                    x,
                    size=self.recipe.input_size,
                    mode=self.recipe.interpolation,
                    align_corners=False if self.recipe.interpolation != "nearest" else None,
                )
            yield (x - self.mean) / self.std, self.labels[idx]

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        B, _, S, _ = x.shape
        p = self.recipe.pad_crop
        if p > 0:
            padded = F.pad(x, (p, p, p, p), mode="reflect")  # (B, 3, S+2p, S+2p)
            offset = torch.randint(0, 2 * p + 1, (B, 2), generator=g)
            rows = (offset[:, :1] + torch.arange(S)).view(B, 1, S, 1)  # (B, 1, S, 1)
            cols = (offset[:, 1:] + torch.arange(S)).view(B, 1, 1, S)  # (B, 1, 1, S)
            x = padded[torch.arange(B).view(B, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1), rows, cols]
        if self.recipe.hflip > 0:
            flip = (torch.rand(B, generator=g) < self.recipe.hflip).view(B, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        return x


class _ImageDataset(torch.utils.data.Dataset):
    """Per-sample access for timm transforms: PIL images from memory (tensor storage) or from files."""

    def __init__(
        self,
        labels: torch.Tensor,
        transform,
        *,
        images: torch.Tensor | None = None,
        files: list[str] | None = None,
        root: Path | None = None,
    ):
        self.labels, self.transform, self.images, self.files, self.root = labels, transform, images, files, root

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        if self.images is not None:
            image = Image.fromarray(self.images[i].permute(1, 2, 0).numpy())
        else:
            with Image.open(self.root / self.files[i]) as f:
                image = f.convert("RGB")
        return self.transform(image), self.labels[i]


def _timm_loader(
    dataset: _ImageDataset,
    *,
    batch_size: int,
    train: bool,
    recipe: AugmentParams,
    seed: int,
    rank: int,
    world_size: int,
) -> torch.utils.data.DataLoader:
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = None
    if world_size > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=train
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train,
        num_workers=recipe.workers,
        generator=_generator(seed, 0),
        persistent_workers=False,
    )


def _timm_transform(recipe: AugmentParams, train: bool, mean: list[float], std: list[float]):
    from timm.data import create_transform

    return create_transform(
        recipe.input_size,
        is_training=train,
        scale=(recipe.scale_min, 1.0),
        hflip=recipe.hflip,
        auto_augment=recipe.auto_augment,
        color_jitter=recipe.color_jitter,
        re_prob=recipe.re_prob,
        interpolation=recipe.interpolation,
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=recipe.crop_pct,
    )


def build_loaders(
    prepared: str | Path,
    recipe: AugmentParams,
    *,
    batch_size: int,
    seed: int,
    root: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    eval_batch_size: int | None = None,
) -> Loaders:
    """Loaders for the dataset the ``prepare`` stage wrote to ``prepared``.

    ``root`` is the dataset's folder for file storage (ImageNet: the index holds paths relative to it).
    """
    recipe.check()
    prepared = Path(prepared)
    meta = read_meta(prepared)
    eval_batch_size = eval_batch_size or batch_size
    if meta["storage"] == "tensor":
        from safetensors.torch import load_file

        path = prepared / "data.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: prepared data not found (run the prepare stage for it)")
        tensors = load_file(str(path))
        split_data = {s: (tensors[f"{s}_images"], tensors[f"{s}_labels"]) for s in SPLITS}
    else:
        if recipe.mode == "batched":
            raise ParamsError("augment.mode: 'batched' needs images in memory; file datasets need mode 'timm'")
        if root is None:
            raise ParamsError(f"{prepared}: a file dataset needs its root folder")
        split_data = _read_index(prepared / "index.csv")
    if len(split_data["train"][1]) < batch_size * world_size:
        raise ParamsError(
            f"batch size {batch_size} x {world_size} process(es) is larger than the training split "
            f"of {prepared} ({len(split_data['train'][1])} images)"
        )
    loaders = {}
    for split in SPLITS:
        train = split == "train"
        bs = batch_size if train else eval_batch_size
        data, labels = split_data[split]
        if recipe.mode == "batched":
            loaders[split] = TensorBatches(
                data,
                labels,
                batch_size=bs,
                train=train,
                recipe=recipe,
                mean=meta["mean"],
                std=meta["std"],
                seed=seed,
                rank=rank,
                world_size=world_size if train else 1,
            )
        else:
            transform = _timm_transform(recipe, train, meta["mean"], meta["std"])
            dataset = (
                _ImageDataset(labels, transform, images=data)
                if meta["storage"] == "tensor"
                else _ImageDataset(labels, transform, files=data, root=Path(root).expanduser())
            )
            loaders[split] = _timm_loader(
                dataset,
                batch_size=bs,
                train=train,
                recipe=recipe,
                seed=seed,
                rank=rank,
                world_size=world_size if train else 1,
            )
    return Loaders(loaders["train"], loaders["val"], loaders["test"], meta)


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


def _bench(args: argparse.Namespace) -> None:
    """Images/s of a full pass over the training split (augmented) and the test split."""
    from pipeline.params import load_sections, parse

    section = load_sections(args.params, (args.section,))[args.section]
    recipe = parse(AugmentParams, section["augment"], f"{args.section}.augment")
    torch.set_num_threads(args.threads)
    loaders = build_loaders(args.prepared, recipe, batch_size=args.batch_size, seed=0)
    for split in ("train", "test"):
        loader = getattr(loaders, split)
        count, start = 0, time.perf_counter()
        for epoch in range(args.epochs):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            for x, _ in loader:
                count += len(x)
        elapsed = time.perf_counter() - start
        print(
            f"{args.prepared} {split}: {count} images in {elapsed:.2f} s = {count / elapsed:,.0f} img/s "
            f"(mode {recipe.mode}, batch {args.batch_size}, {args.threads} threads, input {recipe.input_size} px)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.data", description="loader throughput benchmark")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--section", default="pretrain", help="training section whose augment recipe to use")
    parser.add_argument("--prepared", required=True, help="a folder written by the prepare stage")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    _bench(parser.parse_args(argv))


if __name__ == "__main__":
    main()
