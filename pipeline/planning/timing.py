"""Timing a model's training step, its eval pass, a matrix product and the data loader: the pieces the bench
stage (and ``tools/profile_ops.py``) measure with. The step is the pipeline's own
:func:`pipeline.training.recipe.train_step` on the pretraining recipe, so what is timed is what the training stages
run."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import BenchConfig, Net, ParamsError
from pipeline.training import model as models
from pipeline.training.recipe import amp_dtype, loss_recipe, make_optimizer, train_step

__all__ = ["Matmul", "Subject", "Timer", "dominant_shape", "loader_rate", "subjects"]


class Timer:
    """Wall time of a callable, with the device synchronised around it."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # CUDA only

    def __call__(self, fn: Callable[[], None]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start


@dataclass
class Subject:
    """One timed model: how to run its training step and its eval pass."""

    name: str  # the variant, or the timm reference model's name
    net: torch.nn.Module
    flops: int  # forward flops per image (multiply-adds)
    train: Callable[[], None]
    evaluate: Callable[[], None]


def subjects(settings: BenchConfig, device: torch.device, num_classes: int) -> list[Subject]:
    """Every benchmarked variant and (if ``bench.reference``) timm's own XCiT, each with its own optimizer, on one
    fixed batch of random images."""
    bench, recipe = settings.bench, settings.recipe
    amp = amp_dtype(device, bench.amp)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None  # as the training stages
    size = settings.nets[0].img_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(bench.batch_size, 3, size, size, generator=g).to(device)
    labels = torch.randint(0, num_classes, (bench.batch_size,), generator=g).to(device)
    eval_images = torch.randn(bench.eval_batch_size, 3, size, size, generator=g).to(device)

    def subject(name: str, net: torch.nn.Module, flops: int) -> Subject:
        net.to(device).train()
        optimizer = make_optimizer(net, recipe)
        mixup, criterion = loss_recipe(recipe, num_classes)

        def step():
            train_step(
                net,
                images,
                labels,
                optimizer=optimizer,
                criterion=criterion,
                mixup=mixup,
                amp=amp,
                scaler=scaler,
                clip_grad=recipe.clip_grad,
            )

        @torch.no_grad()
        def evaluate():
            net.eval()
            with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                net(eval_images)
            net.train()

        return Subject(name, net, flops, step, evaluate)

    out = []
    for net in settings.nets:
        torch.manual_seed(0)
        out.append(subject(net.variant, models.build(net, num_classes), models.forward_flops(net, num_classes)))
    if bench.reference:
        baseline = out[bench.variants.index(bench.baseline)]
        reference = _reference(settings.nets[bench.variants.index(bench.baseline)], bench.reference, num_classes)
        _check_reference(bench.reference, bench.baseline, reference.to(device), baseline.net, eval_images[:2])
        out.append(subject(bench.reference, reference, baseline.flops))
    return out


def _reference(baseline: Net, name: str, num_classes: int) -> torch.nn.Module:
    """timm's own model ``name`` with the baseline's size, depth and width."""
    import timm

    torch.manual_seed(0)
    try:
        return timm.create_model(
            name,
            num_classes=num_classes,
            img_size=baseline.img_size,
            drop_path_rate=baseline.drop_path_rate,
            **dict(baseline.overrides),
        )
    except (RuntimeError, ValueError) as exc:  # timm: "Unknown model (...)"
        raise ParamsError(f"bench.reference: {exc}") from None


def _check_reference(name: str, baseline_name: str, reference, baseline, images) -> None:
    """The reference must be the baseline's architecture: the baseline's weights load into it strictly and it
    then computes the same logits (up to float rounding)."""
    problem = None
    try:
        reference.load_state_dict(baseline.state_dict(), strict=True)
    except RuntimeError as exc:
        problem = str(exc).splitlines()[0]
    else:
        with torch.no_grad():
            ref_out, base_out = reference.eval()(images), baseline.eval()(images)
        if not torch.allclose(ref_out, base_out, rtol=1e-4, atol=1e-5):
            problem = f"its logits differ from the baseline's by up to {(ref_out - base_out).abs().max():.3g}"
    reference.train()
    baseline.train()
    if problem:
        raise ParamsError(
            f"bench.reference: {name} is not the architecture of the baseline {baseline_name!r} ({problem})"
        )


class Matmul:
    """Timing of ``(M, K) @ (K, N)`` products in ``dtype``: enough back-to-back products per timing (~20 ms) to
    measure a rate rather than the launch and synchronisation overhead."""

    def __init__(self, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device, timer: Timer):
        M, K, N = shape
        g = torch.Generator().manual_seed(1)
        self.a = torch.randn(M, K, generator=g).to(device, dtype)
        self.b = torch.randn(K, N, generator=g).to(device, dtype)
        self.flops, self.timer, self.reps = 2 * M * K * N, timer, 1
        self.time()  # warm-up
        self.reps = max(1, math.ceil(0.02 / max(self.timer(self._run), 1e-9)))

    def _run(self) -> None:
        for _ in range(self.reps):
            torch.mm(self.a, self.b)

    def time(self) -> float:
        """Seconds per product."""
        return self.timer(self._run) / self.reps


def dominant_shape(net: Net, batch_size: int) -> tuple[int, int, int]:
    """(M, K, N) of the model's largest product: the MLP's first layer over every token of the batch."""
    arch = net.arch
    tokens = (net.img_size // arch.patch_size) ** 2
    return batch_size * tokens, arch.embed_dim, int(arch.embed_dim * arch.mlp_ratio)


def loader_rate(settings: BenchConfig, prepared: Path) -> float:
    """Training images/s the loader delivers (augmentation included), over ``bench.loader_batches`` batches: the
    one measurement of the loader's throughput. The clock starts after the first batch (worker start-up is not
    throughput)."""
    from pipeline.data.loaders import build_loaders

    bench = settings.bench
    loader = build_loaders(
        prepared,
        settings.recipe.augment,
        img_size=settings.nets[0].img_size,
        batch_size=bench.batch_size,
        eval_batch_size=bench.eval_batch_size,
        workers=bench.loader_workers,
        seed=0,
    ).train
    wanted = bench.loader_batches * bench.batch_size
    count, epoch, start = 0, 0, None
    while count < wanted:
        for epoch_aware in (loader, getattr(loader, "sampler", None)):
            if hasattr(epoch_aware, "set_epoch"):
                epoch_aware.set_epoch(epoch)
        for images, _ in loader:
            if start is None:
                start = time.perf_counter()
                continue
            count += len(images)
            if count >= wanted:
                break
        epoch += 1
    return count / (time.perf_counter() - start)
