"""A training run's resume state (:mod:`pipeline.training.train`): restoring it from the resume folder, saving it after
an epoch or at a step, and the stop points where the ranks agree whether to stop (:mod:`pipeline.training.signals`)."""

from __future__ import annotations

import json
import logging
import time

from pipeline import stop_signals
from pipeline.training import checkpoint, distributed
from pipeline.training.state import RunState as State

__all__ = ["own", "restore", "save", "stop_point"]

log = logging.getLogger("pipeline.training.train")


def restore(state: State) -> None:
    """Restore ``state`` from its resume folder when it holds a checkpoint of this run (every rank the same one)."""
    saved = checkpoint.load(state.resume_dir, state.fingerprint, state.env.rank)
    epoch, step = (saved[0]["epoch"], saved[0].get("step", 0)) if saved else (0, 0)
    if not distributed.same_everywhere(state.env, epoch * (state.updates_per_epoch + 1) + step):
        raise ValueError(
            f"{state.resume_dir}: the ranks found different checkpoints in it (some none): the resume folder must be "
            "on storage every node shares (the workspace on a shared filesystem); delete it to start over"
        )
    if saved is None:
        return
    stateful = {"model": state.model, "optimizer": state.optimizer, "scheduler": state.scheduler, "ema": state.ema}
    if state.scaler is not None and saved[0].get("scaler") is not None:
        stateful["scaler"] = state.scaler  # CUDA only
    elif (state.scaler is not None) != (saved[0].get("scaler") is not None) and state.env.main:
        log.warning(  # a requeue onto another GPU model: fp16 <-> bf16; the loss scale starts afresh
            "%s: the checkpoint was trained in %s, this GPU trains in %s (a GPU of another compute capability)",
            state.run.name, "fp16" if saved[0].get("scaler") is not None else "bf16/fp32",
            "fp16" if state.scaler is not None else "bf16/fp32",
        )  # fmt: skip
    checkpoint.restore(state.resume_dir, saved, stateful, state.env.device)
    mine = saved[1]
    state.start_epoch, state.start_step, state.saved = epoch, step, (epoch, step)
    state.curves, state.last_finite = json.loads(saved[0]["curves"]), mine["last_finite"]
    state.partial = tuple(mine.get("partial", (0.0, 0, 0)))
    if state.env.main:
        at = f", step {step} of epoch {epoch + 1}" if step else ""
        log.info("%s: resumed from epoch %d of %d%s (%s)", state.run.name, epoch, state.run.recipe.epochs, at,
                 state.resume_dir)  # fmt: skip


def own(state: State, partial: tuple = (0.0, 0, 0)) -> dict:
    """This rank's part of a checkpoint: its generators, last loss and its sums of the epoch so far."""
    return {"rng": checkpoint.rng_state(state.env.device), "last_finite": state.last_finite, "partial": list(partial)}


def save(state: State, epoch: int, step: int, own_state: dict) -> None:
    """The resume checkpoint after ``epoch`` epochs and ``step`` steps: every rank its own state, then rank 0 the
    shared one."""
    env, started = state.env, time.monotonic()
    checkpoint.save_rank(state.resume_dir, env.rank, epoch, step, own_state)
    distributed.barrier(env)  # every rank's state is on disk before the shared state says where the run is
    if env.main:
        ema, curves = (state.ema.state_dict() if state.ema is not None else None), json.dumps(state.curves)
        shared = {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                  "scheduler": state.scheduler.state_dict(), "ema": ema, "curves": curves}  # fmt: skip
        if state.scaler is not None:
            shared["scaler"] = state.scaler.state_dict()  # CUDA only
        checkpoint.save_shared(state.resume_dir, epoch, step, state.fingerprint, shared)
    distributed.barrier(env)
    state.saved = (epoch, step)
    seconds, window = time.monotonic() - started, stop_signals.window_s()
    if env.main and window and seconds > window / 2 and not state.window_warned:
        state.window_warned = True
        log.warning("%s: writing the resume checkpoint took %.1f s, more than half the %g s a stopped run has to "
                    "save (cluster.stop_window_s, below SLURM's KillWait): raise both, or write the workspace to "
                    "a faster filesystem", state.run.name, seconds, window)  # fmt: skip


def stop_point(state: State, epoch: int, step: int, partial: tuple = (0.0, 0, 0), own_state: dict | None = None):
    """Where the ranks agree whether to stop (every rank calls it at the same point): if any was asked to, every
    rank saves its state here (unless the checkpoint already holds it) and raises Stopped."""
    code = distributed.largest(state.env, state.stop.code()) if state.stop is not None else 0
    if not code:
        return
    if state.saved != (epoch, step):
        save(state, epoch, step, own_state or own(state, partial))
    last = epoch == state.run.recipe.epochs
    where = f"the end of epoch {epoch} (before the final evaluation)" if last else f"epoch {epoch + 1} step {step}"
    raise state.stop.stopped(code, where=where, folder=state.resume_dir)
