"""The final evaluation of a training run: its test accuracies (raw and EMA weights), the Q/K/V similarity
diagnostic, the record the training stages write (rounded, without timings) and its few DVC metrics."""

from __future__ import annotations

import torch

from pipeline.config import TrainConfig
from pipeline.data.loaders import Loaders
from pipeline.outputs import round_result
from pipeline.training import model as models
from pipeline.training.recipe import amp_dtype, evaluate

__all__ = ["SCORES", "final_metrics", "scores"]

# The run's DVC metrics (`dvc metrics show/diff`, `dvc exp show`): the numbers a researcher compares across runs.
# Everything else a run records (identity, sizes, lr, the similarity diagnostic) is in its record file, which
# dvc.yaml declares as a plot so that it stays out of DVC's metric tables.
SCORES = ("test_top1", "test_loss", "val_top1_best")


def final_metrics(
    run: TrainConfig, env, loaders: Loaders, model: torch.nn.Module, ema: torch.nn.Module | None, *, curves, params
) -> dict:
    """The metrics record of a finished run: test accuracies of the recipe's ``weights`` (and of both sets when
    an EMA is kept), the validation summary of ``curves``, sizes, the learning rate, and the per-block Q/K/V
    similarity of the chosen weights. Every rank evaluates its shard of the test split (collective)."""
    import qkv

    recipe = run.recipe
    amp = amp_dtype(env.device, recipe.amp)
    raw_test = evaluate(model, loaders.test, env, amp)
    ema_test = evaluate(ema, loaders.test, env, amp) if ema is not None else None
    test = ema_test if recipe.weights == "ema" else raw_test
    chosen = ema if recipe.weights == "ema" else model
    best = max(curves, key=lambda r: r["val_top1"])
    if not env.main:  # the diagnostic and the record are rank 0's (no collective below)
        return {}
    n = recipe.diagnostic_images
    images = torch.cat([x for x, _ in _take(loaders.diagnostic, n)])[:n]  # the first n test images, any world size
    similarity = qkv.qkv_similarity(chosen, images.to(env.device))
    metrics = {
        "profile": run.profile,
        "stage": run.stage,
        "backbone": run.backbone,
        "model": run.net.name,
        "variant": run.net.variant,
        "seed": run.seed,
        "dataset": loaders.meta["dataset"],
        "synthetic": loaders.meta["synthetic"],
        "epochs": recipe.epochs,
        "params": params,
        "gflops": models.forward_flops(run.net, loaders.num_classes) / 1e9,
        "num_classes": loaders.num_classes,
        "global_batch": recipe.batch_size,
        "world_size": env.world_size,
        "lr_base": recipe.lr,
        "lr_effective": recipe.lr_effective,
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "test_loss": test["loss"],
        "val_top1_final": curves[-1]["val_top1"],
        "val_top1_best": best["val_top1"],
        "best_epoch": best["epoch"],
        "qkv_similarity": {r["layer"]: {k: r[k] for k in ("q_k", "q_v", "k_v")} for r in similarity},
    }
    if ema_test is not None:  # both accuracies, and which ones test_top1 is
        metrics.update(
            weights=recipe.weights,
            raw_test_top1=raw_test["top1"],
            raw_test_top5=raw_test["top5"],
            ema_test_top1=ema_test["top1"],
            ema_test_top5=ema_test["top5"],
        )
    return round_result(metrics)


def scores(record: dict) -> dict:
    """The DVC metrics of a run: the :data:`SCORES` of its ``record`` (:func:`final_metrics`)."""
    return {key: record[key] for key in SCORES}


def _take(loader, n: int):
    total = 0
    for images, labels in loader:
        yield images, labels
        total += len(images)
        if total >= n:
            return
