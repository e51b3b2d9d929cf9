"""The timm path's last steps moved to the device (pipeline/data/finish.py) are timm's per-sample transform, moved:
the same pixels (to float rounding) and random erasing drawn from the same distribution."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pipeline.config import Augment
from pipeline.data import samples, standins
from pipeline.data.finish import DeviceBatches

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
PAPER = Augment("timm", 0.5, 0, 0.08, "rand-m9-mstd0.5-inc1", 0.4, 0.25, "pixel", 1, "bicubic", 1.0)


def _timm_full(augment: Augment, train: bool, size: int):
    """timm's stock transform, as XCiT's main.py builds it: ToTensor, Normalize and RandomErasing on the CPU."""
    from timm.data import create_transform

    return create_transform(
        size, is_training=train, scale=(augment.scale_min, 1.0), hflip=augment.hflip,
        auto_augment=augment.auto_augment, color_jitter=augment.color_jitter, re_prob=augment.re_prob,
        re_mode=augment.re_mode, interpolation=augment.interpolation, crop_pct=augment.crop_pct, mean=MEAN, std=STD,
    )  # fmt: skip


def _seeded(fn, image, seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return fn(image)


class _Batches:
    """A loader stand-in: fixed uint8 batches and a sampler that takes set_epoch."""

    def __init__(self, batches):
        self.batches, self.sampler = batches, type("S", (), {"set_epoch": lambda self, e: None})()

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


@pytest.mark.parametrize("train", [True, False])
def test_device_finish_gives_timm_pixels(tmp_path, train):
    """Random erasing off: the uint8 CPU part then the device's normalisation equals timm's full transform under the
    same seed (crop, flip, RandAugment drawn identically), to float rounding."""
    import dataclasses

    from PIL import Image

    augment = dataclasses.replace(PAPER, re_prob=0.0)
    files = standins.write_jpegs(tmp_path, 6, seed=3)
    ours, stock = samples.transform(augment, train, 64, MEAN, STD), _timm_full(augment, train, 64)
    for k, path in enumerate(files):
        with Image.open(path) as f:
            image = f.convert("RGB")
        uint8 = _seeded(ours, image, k)
        assert uint8.dtype == torch.uint8
        finish = DeviceBatches(_Batches([(uint8[None], torch.zeros(1))]), torch.device("cpu"), mean=MEAN, std=STD,
                               train=train, re_prob=0.0, re_mode="pixel", seed=0, rank=0)  # fmt: skip
        ((finished, _),) = list(finish)
        expected = _seeded(stock, image, k)
        assert torch.allclose(finished[0], expected, atol=1e-5), (path, (finished[0] - expected).abs().max())


def _erased(images: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    """Per image, the fraction of pixels no longer at the (per-channel) constant the batch was filled with."""
    return (~torch.isclose(images, constant.view(1, 3, 1, 1))).any(dim=1).float().mean(dim=(1, 2))


def test_device_random_erasing_draws_timms_distribution():
    """timm's RandomErasing per sample on the CPU (the stock path) vs. the device finish on batches: the share of
    images erased and the distribution of the erased area agree within sampling error (2,048 images each)."""
    from timm.data.random_erasing import RandomErasing

    n, size = 2048, 32
    constant = torch.full((n, 3, size, size), 0.5)
    random.seed(0)
    torch.manual_seed(0)
    stock = RandomErasing(probability=0.25, mode="pixel", device="cpu")
    cpu = _erased(torch.stack([stock(image.clone()) for image in constant]), torch.full((3,), 0.5))
    uint8 = torch.full((64, 3, size, size), 128, dtype=torch.uint8)
    batches = _Batches([(uint8.clone(), torch.zeros(64)) for _ in range(n // 64)])
    finish = DeviceBatches(batches, torch.device("cpu"), mean=MEAN, std=STD, train=True, re_prob=0.25,
                           re_mode="pixel", seed=1, rank=0)  # fmt: skip
    normalised = (128 - 255 * torch.tensor(MEAN)) / (255 * torch.tensor(STD))
    device = _erased(torch.cat([b for b, _ in finish]), normalised)
    p_cpu, p_dev = (cpu > 0).float().mean(), (device > 0).float().mean()
    assert abs(p_cpu - 0.25) < 0.04 and abs(p_dev - 0.25) < 0.04, (p_cpu, p_dev)
    a, b = cpu[cpu > 0].sort().values, device[device > 0].sort().values
    quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    qa, qb = a[(quantiles * (len(a) - 1)).long()], b[(quantiles * (len(b) - 1)).long()]
    assert torch.allclose(qa, qb, atol=0.05), (qa, qb)  # erased area between 2 % and 1/3 of the image either way


def test_device_random_erasing_is_a_function_of_seed_epoch_rank_and_step():
    uint8 = torch.full((16, 3, 32, 32), 128, dtype=torch.uint8)

    def run(seed, epoch=0, rank=0):
        batches = _Batches([(uint8.clone(), torch.zeros(16)) for _ in range(3)])
        finish = DeviceBatches(batches, torch.device("cpu"), mean=MEAN, std=STD, train=True, re_prob=0.5,
                               re_mode="pixel", seed=seed, rank=rank)  # fmt: skip
        finish.set_epoch(epoch)
        random.seed(123)  # the caller's generators are neither used nor moved
        out = torch.cat([b for b, _ in finish])
        assert random.random() == random.Random(123).random()
        return out

    assert torch.equal(run(0), run(0))
    for other in (run(1), run(0, epoch=1), run(0, rank=1)):
        assert not torch.equal(run(0), other)
