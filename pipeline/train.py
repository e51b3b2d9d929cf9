"""The training loop shared by the ``pretrain`` and ``finetune`` stages: :func:`fit` sets a run up, trains it
epoch by epoch (validating and checkpointing after each) and evaluates the final model, with the recipe of
:mod:`pipeline.recipe` and model EMA.

:func:`fit` runs unchanged under ``torchrun`` (gloo on CPU, NCCL on GPU; BatchNorm synchronised on GPU);
rank 0 evaluates. Deterministic on CPU for a seed. Every ``runtime.checkpoint_every`` epochs the full
training state (weights, optimizer, scheduler, EMA, random generators, curves) is written atomically to a
resume folder, so a run killed part-way continues from its last checkpoint and ends with the same weights
and metrics as an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline import checkpoint, distributed
from pipeline import model as models
from pipeline.config import ParamsError, TrainConfig
from pipeline.data import Loaders, build_loaders
from pipeline.outputs import round_measurement, round_result
from pipeline.recipe import (
    TrainingDiverged,
    evaluate,
    loss_recipe,
    make_optimizer,
    make_scheduler,
    set_seed,
    train_step,
)

__all__ = ["TrainResult", "fit"]


@dataclass
class TrainResult:
    """What :func:`fit` returns. ``metrics`` and ``curves`` are rounded for the result files (rank 0 only:
    None elsewhere); ``timing`` (throughput) goes to provenance, never into the metrics."""

    model: torch.nn.Module  # the trained network, unwrapped
    env: distributed.Dist
    curves: list[dict]
    timing: dict
    metrics: dict | None = None


@dataclass
class _State:
    """A run in progress."""

    run: TrainConfig
    env: distributed.Dist
    loaders: Loaders
    model: torch.nn.Module
    net: torch.nn.Module  # the model, wrapped in DistributedDataParallel when there are several processes
    optimizer: torch.optim.Optimizer
    scheduler: object
    mixup: object
    criterion: object
    ema: object
    fingerprint: dict
    checkpoint: Path
    params: int
    curves: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    last_finite: float | None = None
    seen: int = 0
    train_seconds: float = 0.0

    @property
    def amp(self) -> bool:
        return self.run.recipe.amp and self.env.device.type == "cuda"

    @property
    def updates_per_epoch(self) -> int:
        return len(self.loaders.train)


def fit(
    run: TrainConfig, *, data: Path, resume_dir: Path, init_weights: Path | None = None, progress: bool = False
) -> TrainResult:
    """Train ``run`` on the prepared dataset at ``data`` to the end, resuming from ``resume_dir`` if it holds a
    checkpoint of the same run; ``init_weights`` (finetune) are the pretrained weights. Raises
    :class:`TrainingDiverged` on a non-finite loss."""
    state = _setup(run, data, resume_dir, init_weights)
    for epoch in range(state.start_epoch, run.recipe.epochs):
        _train_epoch(state, epoch, progress)
        _end_epoch(state, epoch)
    return _finish(state)


def _setup(run: TrainConfig, data: Path, resume_dir: Path, init_weights: Path | None) -> _State:
    from timm.utils import ModelEmaV3

    recipe = run.recipe
    env = distributed.init()
    distributed.configure_torch(env.device, run.runtime.threads)
    if recipe.batch_size % env.world_size:
        raise ParamsError(
            f"{run.stage}.recipe.batch_size: {recipe.batch_size} is not divisible by {env.world_size} processes"
        )
    set_seed(run.seed)
    loaders = build_loaders(
        data,
        recipe.augment,
        img_size=run.net.img_size,
        batch_size=recipe.batch_size // env.world_size,
        eval_batch_size=run.runtime.eval_batch_size,
        workers=run.runtime.workers,
        seed=run.seed,
        rank=env.rank,
        world_size=env.world_size,
    )
    num_classes = loaders.num_classes
    if init_weights is None:
        model = models.build(run.net, num_classes)
    else:
        model = models.load_pretrained(run.net, init_weights, num_classes)
    n_params = models.count_params(model)
    model.to(env.device)
    if env.world_size > 1 and env.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # CUDA only
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, len(loaders.train))
    mixup, criterion = loss_recipe(recipe, num_classes)
    ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.ema_decay else None
    net = torch.nn.parallel.DistributedDataParallel(model) if env.world_size > 1 else model
    fingerprint = checkpoint.fingerprint(
        run, data_hash=loaders.meta["content_hash"], init_weights=init_weights, world_size=env.world_size
    )
    ckpt = Path(resume_dir) / "checkpoint.pt"
    state = _State(
        run, env, loaders, model, net, optimizer, scheduler, mixup, criterion, ema, fingerprint, ckpt, n_params
    )
    _resume(state)
    return state


def _resume(state: _State) -> None:
    saved = checkpoint.load(state.checkpoint, state.fingerprint)
    if saved is None:
        return
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    if state.ema is not None:
        state.ema.load_state_dict(saved["ema"])
    checkpoint.set_rng_state(saved["rng"])
    state.start_epoch, state.last_finite = saved["epoch"], saved["last_finite"]
    state.curves = json.loads(saved["curves"])


def _stop_if_diverged(loss: torch.Tensor, *, run: TrainConfig, epoch: int, step: int, update: int, lr: float, last):
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"{run.stage} {run.net.variant}-{run.seed}: non-finite loss ({loss.item()}) at epoch {epoch + 1}, step "
            f"{step + 1} (update {update}), lr {lr:.3g}; last finite loss {last}. Lower the learning rate or "
            "enable clip_grad; no metrics were written."
        )


def _train_epoch(state: _State, epoch: int, progress: bool) -> None:
    """One pass over the training split; appends the epoch's row (with validation) to the curves on rank 0."""
    from tqdm import tqdm

    run, env, loader = state.run, state.env, state.loaders.train
    for epoch_aware in (loader, getattr(loader, "sampler", None)):
        if hasattr(epoch_aware, "set_epoch"):  # TensorBatches, the timm path's sampler
            epoch_aware.set_epoch(epoch)
    state.net.train()
    loss_sum, correct, count, t0 = 0.0, 0, 0, time.perf_counter()
    desc = f"{run.stage} {run.net.variant}-{run.seed} epoch {epoch + 1}/{run.recipe.epochs}"
    bar = tqdm(loader, desc=desc, disable=not (progress and env.main), leave=False)
    for step, (images, labels) in enumerate(bar):
        images, labels = images.to(env.device), labels.to(env.device)
        update = epoch * state.updates_per_epoch + step + 1
        check_loss = functools.partial(
            _stop_if_diverged,
            run=run,
            epoch=epoch,
            step=step,
            update=update,
            lr=state.optimizer.param_groups[0]["lr"],
            last=state.last_finite,
        )
        loss, logits = train_step(
            state.net,
            images,
            labels,
            optimizer=state.optimizer,
            criterion=state.criterion,
            mixup=state.mixup,
            amp=state.amp,
            clip_grad=run.recipe.clip_grad,
            check_loss=check_loss,
        )
        state.last_finite = loss.item()
        state.scheduler.step_update(update)
        if state.ema is not None:
            state.ema.update(state.model, step=update)
        loss_sum += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
        rate = count * env.world_size / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{100 * correct / count:.1f}", img_s=f"{rate:.0f}")
    state.train_seconds += time.perf_counter() - t0
    state.seen += count * env.world_size
    if env.main:
        val = evaluate(state.model, state.loaders.val, env.device, state.amp)
        state.curves.append(
            {
                "epoch": epoch + 1,
                "lr": state.optimizer.param_groups[0]["lr"],
                "train_loss": loss_sum / count,
                "train_top1": 100.0 * correct / count,
                "val_loss": val["loss"],
                "val_top1": val["top1"],
                "val_top5": val["top5"],
            }
        )


def _end_epoch(state: _State, epoch: int) -> None:
    """Wait for every rank, then (rank 0) write the resume checkpoint when one is due."""
    distributed.barrier(state.env)
    every, epochs = state.run.runtime.checkpoint_every, state.run.recipe.epochs
    if state.env.main and (epoch + 1) % every == 0 and epoch + 1 < epochs:
        checkpoint.save(
            state.checkpoint,
            {
                "fingerprint": json.dumps(state.fingerprint, sort_keys=True),
                "epoch": epoch + 1,
                "model": state.model.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "ema": state.ema.state_dict() if state.ema is not None else None,
                "rng": checkpoint.rng_state(),
                "curves": json.dumps(state.curves),
                "last_finite": state.last_finite,
            },
        )


def _finish(state: _State) -> TrainResult:
    """The trained model, and on rank 0 its test metrics, the Q/K/V diagnostic and the rounded curves."""
    env, seconds = state.env, state.train_seconds
    timing = round_measurement(
        {
            "train_seconds": seconds,
            "train_images": state.seen,
            "train_img_per_s": state.seen / seconds if seconds else None,
        }
    )
    result = TrainResult(state.model, env, state.curves, timing)
    if env.main:
        result.metrics = _metrics(state)
        result.curves = [round_result(r) for r in state.curves]
    return result


def _metrics(state: _State) -> dict:
    import qkv

    run, recipe, env, loaders = state.run, state.run.recipe, state.env, state.loaders
    test = evaluate(state.model, loaders.test, env.device, state.amp)
    best = max(state.curves, key=lambda r: r["val_top1"])
    n = recipe.diagnostic_images
    images = torch.cat([x for x, _ in _take(loaders.test, n)])[:n]
    similarity = qkv.qkv_similarity(state.model, images.to(env.device))
    metrics = round_result(
        {
            "profile": run.profile,
            "stage": run.stage,
            "variant": run.net.variant,
            "seed": run.seed,
            "dataset": loaders.meta["dataset"],
            "synthetic": loaders.meta["synthetic"],
            "epochs": recipe.epochs,
            "params": state.params,
            "gflops": models.forward_flops(run.net, loaders.num_classes) / 1e9,
            "num_classes": loaders.num_classes,
            "global_batch": recipe.batch_size,
            "world_size": env.world_size,
            "lr_base": recipe.lr,
            "lr_effective": recipe.lr_effective,
            "test_top1": test["top1"],
            "test_top5": test["top5"],
            "test_loss": test["loss"],
            "val_top1_final": state.curves[-1]["val_top1"],
            "val_top1_best": best["val_top1"],
            "best_epoch": best["epoch"],
            "qkv_similarity": {r["layer"]: {k: r[k] for k in ("q_k", "q_v", "k_v")} for r in similarity},
        }
    )
    if state.ema is not None:
        ema_test = evaluate(state.ema.module, loaders.test, env.device, state.amp)
        metrics.update(round_result({"ema_test_top1": ema_test["top1"], "ema_test_top5": ema_test["top5"]}))
    return metrics


def _take(loader, n: int):
    total = 0
    for images, labels in loader:
        yield images, labels
        total += len(images)
        if total >= n:
            return
