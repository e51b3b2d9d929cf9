"""Loading prepared datasets: batched tensor augmentation, timm transforms, files, determinism, sharding."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from pipeline.config import Augment, Dataset, ParamsError
from pipeline.config.schema import parse
from pipeline.data import loaders
from pipeline.data.batched import TensorBatches
from pipeline.outputs import write_outputs
from pipeline.stages import prepare

from . import fakes

RECIPE = Augment(
    mode="batched",
    hflip=0.5,
    pad_crop=2,
    scale_min=1.0,
    auto_augment=None,
    color_jitter=None,
    re_prob=0.0,
    re_mode="const",
    repeated_aug=1,
    interpolation="bicubic",
    crop_pct=1.0,
)
TIMM = dataclasses.replace(RECIPE, mode="timm", auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, scale_min=0.5)


def build_loaders(folder: Path, augment: Augment, *, img_size: int = 16, workers: int = 0, **kwargs):
    """pipeline.data.loaders.build_loaders at 16 px, with the evaluation batch of the training batch."""
    kwargs.setdefault("eval_batch_size", kwargs["batch_size"])
    return loaders.build_loaders(folder, augment, img_size=img_size, workers=workers, **kwargs)


def write_prepared(folder: Path, params: Dataset, name: str = "d") -> Path:
    files, _ = prepare.run(name, params)
    write_outputs({folder / k: v for k, v in files.items()})
    return folder


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    params = Dataset(
        source="synthetic", img_size=12, val_fraction=0.2, test_fraction=0.2, seed=0, num_classes=3, per_class=20
    )
    return write_prepared(tmp_path_factory.mktemp("prepared") / "synthetic", params)


def epoch(loader, e: int):
    loader.set_epoch(e)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_batched_shapes_and_normalisation(synthetic):
    loaders = build_loaders(synthetic, RECIPE, batch_size=8, seed=0)
    assert loaders.num_classes == 3 and len(loaders.train) == 36 // 8
    x, y = next(iter(loaders.train))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    batches = list(loaders.test)
    assert sum(len(b[1]) for b in batches) == 12  # eval keeps every image
    raw = torch.cat([b[0] for b in build_loaders(synthetic, RECIPE, img_size=12, batch_size=8, seed=0).train])
    assert raw.mean().abs() < 0.2 and (raw.std() - 1).abs() < 0.2  # normalised with the train stats


def test_batched_is_deterministic_per_seed_and_epoch(synthetic):
    a = build_loaders(synthetic, RECIPE, batch_size=8, seed=1).train
    b = build_loaders(synthetic, RECIPE, batch_size=8, seed=1).train
    for (xa, ya), (xb, yb) in zip(epoch(a, 0), epoch(b, 0), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(epoch(a, 0)[0][0], epoch(a, 1)[0][0])
    c = build_loaders(synthetic, RECIPE, batch_size=8, seed=2).train
    assert not torch.equal(epoch(a, 0)[0][0], epoch(c, 0)[0][0])


def test_pad_crop_is_a_shift_and_flip_mirrors():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6).to(torch.uint8)
    loader = TensorBatches(
        images,
        torch.tensor([0, 1]),
        batch_size=2,
        train=True,
        augment=dataclasses.replace(RECIPE, hflip=0.0, pad_crop=1),
        img_size=6,
        mean=[0.0] * 3,
        std=[1.0] * 3,
        seed=0,
    )
    x, y = next(iter(loader))
    for i, label in enumerate(y.tolist()):
        source = images[label].float() / 255
        padded = torch.nn.functional.pad(source[None], (1, 1, 1, 1), mode="reflect")[0]
        windows = [padded[:, r : r + 6, c : c + 6] for r in range(3) for c in range(3)]
        assert any(torch.equal(x[i], w) for w in windows)
    flipped = TensorBatches(
        images,
        torch.tensor([0, 1]),
        batch_size=2,
        train=True,
        augment=dataclasses.replace(RECIPE, hflip=1.0, pad_crop=0),
        img_size=6,
        mean=[0.0] * 3,
        std=[1.0] * 3,
        seed=0,
    )
    x, y = next(iter(flipped))
    assert torch.equal(x[0], images[y[0]].float().flip(-1) / 255)


def test_ranks_get_disjoint_shards(synthetic):
    seen = []
    for rank in range(2):
        loader = build_loaders(
            synthetic, dataclasses.replace(RECIPE, hflip=0.0, pad_crop=0), batch_size=4, seed=0, rank=rank, world_size=2
        ).train
        loader.set_epoch(0)
        assert len(loader) == 18 // 4
        seen.append(loader._indices().tolist())
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(seen[1]) == 18


def test_timm_transforms_on_tensor_storage(synthetic):
    loaders = build_loaders(synthetic, TIMM, batch_size=8, seed=0)
    x, y = next(iter(loaders.train))
    assert x.shape == (8, 3, 16, 16) and y.shape == (8,)
    x, _ = next(iter(loaders.test))
    assert x.shape[1:] == (3, 16, 16)


def _timm_epoch(folder: Path, epoch_: int, **kwargs):
    loader = build_loaders(folder, TIMM, batch_size=8, seed=0, **kwargs).train
    loader.sampler.set_epoch(epoch_)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_timm_path_does_not_depend_on_the_number_of_workers(synthetic):
    """runtime.workers is a runtime knob: every training sample is transformed under its own seed (seed, epoch,
    rank, position), so 0 and 2 worker processes give the same batches, bit for bit; a fresh loader set to epoch
    1 (a resumed run) gives the batches of epoch 1, not epoch 0's."""
    in_process = _timm_epoch(synthetic, 1, workers=0)
    for workers in (1, 2):
        for (xa, ya), (xb, yb) in zip(in_process, _timm_epoch(synthetic, 1, workers=workers), strict=True):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert not torch.equal(in_process[0][0], _timm_epoch(synthetic, 0)[0][0])


def test_timm_transform_leaves_the_callers_generators_alone(synthetic):
    """In-process loading (workers 0) seeds the global generators per sample and restores them: dropout, drop
    path and Mixup in the training process see the same random streams whatever the loader did."""
    import random

    import numpy as np

    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    _timm_epoch(synthetic, 0)
    after = (torch.rand(1).item(), random.random(), np.random.rand())
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    assert after == (torch.rand(1).item(), random.random(), np.random.rand())


def test_files_storage_reads_images_in_place(tmp_path):
    root = fakes.write_imagenet(tmp_path / "imagenet")
    params = Dataset(source="imagenet", img_size=16, val_fraction=0.25, seed=0, root=str(root), stats_max_images=4)
    folder = write_prepared(tmp_path / "prepared", params, "imagenet")
    loaders = build_loaders(folder, dataclasses.replace(RECIPE, mode="timm"), batch_size=3, seed=0)
    x, y = next(iter(loaders.train))
    assert x.shape == (3, 3, 16, 16)
    assert sum(len(b[1]) for b in loaders.test) == 6
    with pytest.raises(ParamsError, match="'batched' needs images in memory"):
        build_loaders(folder, RECIPE, batch_size=3, seed=0)


def test_loader_bad_input(synthetic, tmp_path):
    with pytest.raises(ParamsError, match="batch size 64 x 1 process\\(es\\) is larger than the training split"):
        build_loaders(synthetic, RECIPE, batch_size=64, seed=0)
    with pytest.raises(FileNotFoundError, match="prepared dataset not found"):
        build_loaders(tmp_path / "nothing", RECIPE, batch_size=4, seed=0)
    for bad, message in (
        ({"mode": "fast"}, "augment.mode: 'fast' is not one of: batched, timm"),
        ({"hflip": 2.0}, "augment.hflip: expected a probability in [0, 1], got 2.0"),
        ({"interpolation": "lanczos"}, "augment.interpolation: 'lanczos' is not one of"),
    ):
        with pytest.raises(ParamsError, match=re.escape(message)):
            parse(Augment, {**dataclasses.asdict(RECIPE), **bad}, "augment")
