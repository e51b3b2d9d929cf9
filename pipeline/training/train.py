"""The training loop shared by the ``pretrain`` and ``finetune`` stages: :func:`fit` sets a run up, trains it
epoch by epoch (validating, logging and checkpointing after each) and evaluates the final weights, with the
recipe of :mod:`pipeline.training.recipe` and model EMA.

:func:`fit` runs unchanged under ``torchrun`` on one or several nodes (gloo on CPU, NCCL on GPU; BatchNorm
synchronised on GPU). Every rank draws its own random stream (Mixup/CutMix, drop path; its data augmentation
is seeded per sample by the loaders) and evaluates its shard of every split. Deterministic on CPU for a seed
and a world size. Every ``runtime.checkpoint_every`` epochs the full training state is written atomically to a
resume folder (:mod:`pipeline.training.checkpoint`), so a run killed part-way continues from its last checkpoint and
ends with the same weights and metrics as an uninterrupted run. A run asked to stop (:mod:`pipeline.training.signals`:
SIGTERM, SIGINT, a configured signal, the end of its ``dvc repro``) stops before its next step on every rank
at once, saves its state there (part-way through an epoch too: the resumed epoch loads and skips the batches
already trained on, whose order and augmentation are functions of the seed, epoch and position) and raises
:class:`pipeline.training.signals.Stopped`. One line per epoch goes to the log (stderr), whether or not it is a
terminal; the tqdm bar only to a terminal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import ParamsError, TrainConfig
from pipeline.data.loaders import build_loaders
from pipeline.outputs import round_measurement, round_result
from pipeline.training import checkpoint, distributed, resume, signals
from pipeline.training import model as models
from pipeline.training.metrics import final_metrics
from pipeline.training.recipe import (
    TrainingDiverged,
    evaluate,
    loss_recipe,
    make_optimizer,
    make_scheduler,
    set_seed,
    train_step,
)
from pipeline.training.state import RunState

__all__ = ["TrainResult", "fit"]

log = logging.getLogger("pipeline.training.train")


@dataclass
class TrainResult:
    """What :func:`fit` returns. ``metrics`` and ``curves`` are rounded for the result files (rank 0 only:
    None elsewhere); ``timing`` (throughput) goes to provenance, never into the metrics."""

    model: torch.nn.Module  # the trained network, unwrapped
    ema: torch.nn.Module | None  # its EMA, when the recipe keeps one
    env: distributed.Dist
    curves: list[dict]
    timing: dict
    metrics: dict | None = None


def fit(
    run: TrainConfig,
    *,
    data: Path,
    resume_dir: Path,
    init_weights: Path | None = None,
    progress: bool = False,
    on_epoch: Callable[[list[dict]], None] | None = None,
    stop: signals.StopRequests | None = None,
) -> TrainResult:
    """Train ``run`` on the prepared dataset at ``data`` to the end, resuming from ``resume_dir`` if it holds a
    checkpoint of the same run; ``init_weights`` (finetune) are the pretrained weights. ``on_epoch(curves)``
    runs on rank 0 after each epoch (the runner writes the live curves with it). Raises
    :class:`TrainingDiverged` on a non-finite loss, :class:`pipeline.training.signals.Stopped` once ``stop`` asked for
    it and the resume state is saved (also when it asks during the final evaluation: a resumed run redoes it)."""
    state = _setup(run, data, resume_dir, init_weights, stop)
    for epoch in range(state.start_epoch, run.recipe.epochs):
        started = time.perf_counter()
        _train_epoch(state, epoch, progress)
        if on_epoch is not None and state.env.main:  # before the checkpoint: the curves never lag behind it
            on_epoch([round_result(r) for r in state.curves])
        _end_epoch(state, epoch, time.perf_counter() - started)
    resume.stop_point(state, run.recipe.epochs, 0)
    mine = resume.own(state)  # the state the final evaluation starts from
    result = _finish(state)
    resume.stop_point(state, run.recipe.epochs, 0, own_state=mine)  # no outputs once the run was asked to stop
    return result


def _setup(run: TrainConfig, data: Path, resume_dir: Path, init_weights: Path | None, stop=None) -> RunState:
    from timm.utils import ModelEmaV3

    recipe = run.recipe
    distributed.configure_torch(run.device, run.runtime.threads, run.runtime.gpu_kernels)  # before CUDA starts
    env = distributed.place(run.device)
    if recipe.batch_size % env.world_size:
        raise ParamsError(
            f"{run.stage}.recipe.batch_size: {recipe.batch_size} is not divisible by {env.world_size} processes"
        )
    set_seed(run.seed)  # the same on every rank: every rank builds the same initial weights
    loaders = build_loaders(
        data, recipe.augment, img_size=run.net.img_size, batch_size=recipe.batch_size // env.world_size,
        eval_batch_size=run.runtime.eval_batch_size, workers=run.runtime.workers, seed=run.seed, rank=env.rank,
        world_size=env.world_size, pin=env.device.type == "cuda", device=env.device,
    )  # fmt: skip
    loaders.start_workers()  # the only forks of the run, before the process group's threads exist
    env = distributed.join(env)
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
    set_seed(distributed.rank_seed(run.seed, env.rank))  # from here on, every rank draws its own stream
    fingerprint = checkpoint.fingerprint(
        run, data_hash=loaders.meta["content_hash"], init_weights=init_weights, world_size=env.world_size
    )
    state = RunState(run, env, loaders, model, net, optimizer, scheduler, mixup, criterion, ema, fingerprint,
                   Path(resume_dir), n_params, stop)  # fmt: skip
    if state.amp == torch.float16:  # fp16 (GPUs without native bf16) needs its loss scaled
        state.scaler = torch.amp.GradScaler(env.device.type)  # CUDA only
    if env.main:
        checkpoint.check_space(state.resume_dir, checkpoint.size_estimate(model, ema), run.name)
    resume.restore(state)
    return state


def _check_finite(state: RunState, finite: torch.Tensor, *, epoch: int, since: int, step: int, lr: float) -> None:
    """Raise :class:`TrainingDiverged` if a loss of steps ``since`` .. ``step`` (0-based) of ``epoch`` was not finite
    (``finite``: a device flag, read here: a host synchronisation)."""
    if bool(finite):
        return
    run = state.run
    steps = f"step {step + 1}" if since == step else f"one of steps {since + 1}-{step + 1}"
    raise TrainingDiverged(
        f"{run.stage} {run.net.variant}-{run.seed}: non-finite loss at epoch {epoch + 1}, {steps} (update "
        f"{epoch * state.updates_per_epoch + step + 1}), lr {lr:.3g}; last finite loss {state.last_finite}. Lower "
        "the learning rate or enable clip_grad; no metrics were written."
    )


def _train_epoch(state: RunState, epoch: int, progress: bool) -> None:
    """One pass over the training split (its first ``start_step`` batches skipped in a resumed epoch), then
    validation; appends the epoch's row to the curves.

    The host reads the device every ``runtime.sync_every`` steps, and at the end of the epoch: the loss sums (kept
    on the device in float64, the same sums as adding the losses on the host), the check that every loss was
    finite, and the ranks' agreement to stop (an all-reduce), so a tiny model's GPU never waits for the host
    in between."""
    from tqdm import tqdm

    run, env, loader = state.run, state.env, state.loaders.train
    for epoch_aware in (loader, getattr(loader, "sampler", None)):
        if hasattr(epoch_aware, "set_epoch"):  # TensorBatches, the timm path's sampler
            epoch_aware.set_epoch(epoch)
    state.net.train()
    skip, resumed = (state.start_step, state.partial) if epoch == state.start_epoch else (0, (0.0, 0, 0))
    sums = torch.tensor(resumed[:2], dtype=torch.float64, device=env.device)  # loss sum, correct (count: host)
    count = resumed[2]
    finite, last = torch.ones((), dtype=torch.bool, device=env.device), None
    every, since, t0 = run.runtime.sync_every, skip, time.perf_counter()
    desc = f"{run.stage} {run.net.variant}-{run.seed} epoch {epoch + 1}/{run.recipe.epochs}"
    bar = tqdm(loader, desc=desc, disable=not (progress and env.main), leave=False)
    step = skip - 1
    for step, (images, labels) in enumerate(bar):
        if step < skip:  # trained on before the run stopped: loaded only to advance the epoch's augmentation
            continue
        if not (step - skip) % every:  # a host synchronisation: the losses so far, then whether to stop here
            _sync(state, finite, last, epoch=epoch, since=since, step=step - 1)
            since = step
            resume.stop_point(state, epoch, step, _partial(sums, count))
        images, labels = images.to(env.device, non_blocking=True), labels.to(env.device, non_blocking=True)
        update = epoch * state.updates_per_epoch + step + 1
        loss, logits = train_step(
            state.net, images, labels, optimizer=state.optimizer, criterion=state.criterion, mixup=state.mixup,
            amp=state.amp, scaler=state.scaler, clip_grad=run.recipe.clip_grad,
        )  # fmt: skip
        loss = loss.detach()
        ok = torch.isfinite(loss)
        finite &= ok
        last = loss if last is None else torch.where(ok, loss, last)
        state.scheduler.step_update(update)
        if state.ema is not None:
            state.ema.update(state.model, step=update)
        sums += torch.stack([loss.double() * len(labels), (logits.argmax(1) == labels).sum().double()])
        count += len(labels)
        if progress and env.main and not (step + 1 - skip) % every:  # a terminal's bar: read at the sync points
            _show(bar, loss, sums, count, (count - resumed[2]) * env.world_size / (time.perf_counter() - t0))
    _sync(state, finite, last, epoch=epoch, since=since, step=step)
    loss_sum, correct, count = _partial(sums, count)
    state.train_seconds += time.perf_counter() - t0
    state.seen += (count - resumed[2]) * env.world_size
    state.epoch_rate = (count - resumed[2]) * env.world_size / (time.perf_counter() - t0)
    if env.world_size > 1:  # the epoch's training loss and accuracy over every rank's share
        loss_sum, correct, count = distributed.all_sum(env, [loss_sum, correct, count])
    distributed.broadcast_buffers(env, state.model)  # every rank evaluates rank 0's weights
    val = evaluate(state.model, state.loaders.val, env, state.amp)  # every rank its shard
    state.curves.append(
        {"epoch": epoch + 1, "lr": state.optimizer.param_groups[0]["lr"], "train_loss": loss_sum / count,
         "train_top1": 100.0 * correct / count, "val_loss": val["loss"], "val_top1": val["top1"],
         "val_top5": val["top5"]}
    )  # fmt: skip


def _show(bar, loss: torch.Tensor, sums: torch.Tensor, count: int, rate: float) -> None:
    bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{100 * sums[1].item() / count:.1f}", img_s=f"{rate:.0f}")


def _partial(sums: torch.Tensor, count: int) -> tuple[float, int, int]:
    """(loss sum, correct, count): the device's sums on the host (a synchronisation), and the host's count."""
    loss_sum, correct = sums.tolist()
    return loss_sum, int(correct), count


def _sync(state: RunState, finite: torch.Tensor, last, *, epoch: int, since: int, step: int) -> None:
    """Stop on a non-finite loss among steps ``since`` .. ``step``; remember the last finite one."""
    if step < since:
        return
    if last is not None and torch.isfinite(last):  # the newest finite loss, also for the message below
        state.last_finite = last.item()
    _check_finite(state, finite, epoch=epoch, since=since, step=step, lr=state.optimizer.param_groups[0]["lr"])


def _end_epoch(state: RunState, epoch: int, seconds: float) -> None:
    """Log the epoch; write the resume checkpoint when one is due."""
    run, env, row = state.run, state.env, state.curves[-1]
    if env.main:
        left = (run.recipe.epochs - epoch - 1) * seconds
        log.info(
            "%s epoch %d/%d: train loss %.4f, train top-1 %.2f %%, val top-1 %.2f %% (top-5 %.2f %%), lr %.3g, "
            "%.0f img/s, ETA %s", run.name, epoch + 1, run.recipe.epochs, row["train_loss"], row["train_top1"],
            row["val_top1"], row["val_top5"], row["lr"], state.epoch_rate,
            time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 86400:.1f} days",
        )  # fmt: skip
    if not (epoch + 1) % run.runtime.checkpoint_every and epoch + 1 < run.recipe.epochs:
        resume.save(state, epoch + 1, 0, resume.own(state))


def _finish(state: RunState) -> TrainResult:
    """The trained weights; on every rank their test evaluation, on rank 0 the metrics and rounded curves."""
    env, seconds = state.env, state.train_seconds
    rate = state.seen / seconds if seconds else None
    timing = round_measurement({"train_seconds": seconds, "train_images": state.seen, "train_img_per_s": rate})
    timing["resumed_from_epoch"] = state.start_epoch  # 0: trained from the start; else the images above are this run's
    ema = state.ema.module if state.ema is not None else None
    for module in (state.model, ema):
        if module is not None:
            distributed.broadcast_buffers(env, module)  # the weights rank 0 writes, on every rank
    result = TrainResult(state.model, ema, env, state.curves, timing)
    metrics = final_metrics(  # every rank evaluates its shard
        state.run, env, state.loaders, state.model, ema, curves=state.curves, params=state.params
    )
    if env.main:
        result.metrics = metrics
        result.curves = [round_result(r) for r in state.curves]
    return result
