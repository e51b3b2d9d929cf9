"""The training recipe, built from timm's utilities with every value from a :class:`pipeline.config.Recipe`:
AdamW from timm's optimizer factory with XCiT's weight-decay groups (:func:`weight_decay_groups`: none on
one-dimensional parameters, biases and the class token); a cosine schedule with warmup, stepped every update; the
learning rate scaled by ``global batch / lr_base_batch``; Mixup/CutMix with label smoothing; optional gradient clipping;
mixed precision on GPU (:func:`amp_dtype`: bf16, or fp16 with a gradient scaler on GPUs without native bf16).
:func:`train_step` is the one update both the training stages run and the bench stage times.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import Recipe

__all__ = [
    "TrainingDiverged",
    "amp_dtype",
    "evaluate",
    "loss_recipe",
    "make_optimizer",
    "make_scheduler",
    "set_seed",
    "train_step",
    "weight_decay_groups",
]

# XCiT's ``no_weight_decay()`` (facebookresearch/xcit xcit.py), which its main.py hands to timm 0.4.9's
# ``create_optimizer`` and ``add_weight_decay`` compares with whole parameter names: only ``cls_token`` is one
# (the positional encoding is the module ``pos_embeder`` there, ``pos_embed`` in timm; there is no distillation
# token), so the temperatures and the positional encoding's projection weight are decayed.
XCIT_NO_WEIGHT_DECAY = frozenset({"pos_embed", "cls_token", "dist_token"})


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(device: torch.device, requested: bool) -> torch.dtype | None:
    """The autocast dtype of a recipe's ``amp`` on ``device``: None (float32) on a CPU or when not requested; bf16
    on a GPU that computes it natively (compute capability 8.0 or newer), else fp16, which needs a gradient
    scaler (:func:`train_step`): on a T4 or V100 bf16 is emulated, several times slower."""
    if not requested or device.type != "cuda":
        return None
    native = torch.cuda.is_bf16_supported(including_emulation=False)  # CUDA only
    return torch.bfloat16 if native else torch.float16  # CUDA only


def loss_recipe(recipe: Recipe, num_classes: int):
    """``(mixup or None, criterion)`` of a recipe: timm's Mixup/CutMix with soft-target cross-entropy, else
    label-smoothed (or plain) cross-entropy."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if recipe.mixup > 0 or recipe.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=recipe.mixup,
            cutmix_alpha=recipe.cutmix,
            label_smoothing=recipe.label_smoothing,
            num_classes=num_classes,
        )
        return mixup, SoftTargetCrossEntropy()
    if recipe.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(recipe.label_smoothing)
    return None, torch.nn.CrossEntropyLoss()


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer at its effective learning rate, over :func:`weight_decay_groups`."""
    from timm.optim import create_optimizer_v2

    groups = weight_decay_groups(model, recipe.weight_decay)
    # torch's fused Adam/AdamW kernel: one pass over all parameters instead of a loop of small ops (a third of
    # the optimizer's time on CPU, docs/performance.md); the same update rule.
    fused = {"fused": True} if recipe.opt.lower() in ("adam", "adamw") else {}
    return create_optimizer_v2(
        groups, opt=recipe.opt, lr=recipe.lr_effective, weight_decay=recipe.weight_decay, **fused
    )


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The parameters that train, split as XCiT's recipe splits them: XCiT's main.py calls timm 0.4.9's
    ``create_optimizer(args, model)``, whose ``add_weight_decay`` exempts a parameter when
    ``len(param.shape) == 1 or name.endswith(".bias") or name in model.no_weight_decay()`` (whole names;
    :data:`XCIT_NO_WEIGHT_DECAY`). So norms, biases, layer scales and the class token are not decayed; the XCA
    temperatures ``(heads, 1, 1)``, the positional encoding's 1x1 projection and every other weight are. Today's
    timm (``param_groups_weight_decay``) matches ``no_weight_decay()`` as fnmatch patterns, and its XCiT lists
    ``pos_embed.*``, which would exempt that projection; hence the rule written out here.

    The embeddings' own parameters follow the same rule (references/assumptions.yaml, "weight decay of the
    embedding's parameters"): the F-SNE codes ``(3, L)`` are decayed like any weight; a grouped layer's parameter
    (qkv.embed's ``GroupedLinear``, ``GroupedLayerNorm``: G layers stacked) is judged by its shape per group, so
    the scales of three LayerNorms stay undecayed as XCiT's LayerNorms are. Empty groups are left out."""
    from qkv.embed import GroupedLayerNorm, GroupedLinear

    grouped = {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, (GroupedLinear, GroupedLayerNorm))
        for name, _ in module.named_parameters(recurse=False)
    }
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen: not trained at all
        shape = param.shape[1:] if name in grouped else param.shape
        exempt = len(shape) == 1 or name.endswith(".bias") or name in XCIT_NO_WEIGHT_DECAY
        (no_decay if exempt else decay).append(param)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return [group for group in groups if group["params"]]


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, updates_per_epoch: int):
    """Cosine with warmup, stepped every update."""
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=recipe.epochs,
        min_lr=recipe.min_lr,
        warmup_lr=recipe.warmup_lr,
        warmup_epochs=recipe.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def train_step(
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    criterion,
    mixup=None,
    amp: torch.dtype | None = None,
    scaler=None,
    clip_grad: float | None = None,
    check_loss=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of the recipe: Mixup/CutMix, forward (autocast to ``amp`` unless None), loss, backward, optional
    gradient clipping, optimizer step; with a ``scaler`` (fp16) the loss is scaled and the step skipped on
    overflow, as ``torch.amp.GradScaler`` does. ``check_loss(loss)``, if given, runs before the update (the
    training loop checks its losses every ``runtime.sync_every`` steps instead, after the updates). Returns
    ``(loss, logits)``. :func:`fit` trains with it and the bench stage times it, so the
    benchmark measures exactly the step the pipeline runs."""
    targets = labels
    if mixup is not None:
        images, targets = mixup(images, labels)
    amp = amp if isinstance(amp, torch.dtype) else None  # False / None: float32
    with torch.autocast(images.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        logits = net(images)
        loss = criterion(logits.float(), targets)
    if check_loss is not None:
        check_loss(loss)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        if clip_grad is not None:
            scaler.unscale_(optimizer)  # clip the true gradients
    if clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return loss, logits


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, env, amp: torch.dtype | None) -> dict:
    """Loss, top-1 and top-5 (%) over a whole split. Every rank evaluates its shard of the loader and the sums
    are added over the ranks (``env``: a :class:`pipeline.training.distributed.Dist`), so all ranks return the numbers
    of the whole split: the counts exactly those of one process, the loss up to the order of its float sum."""
    from pipeline.training.distributed import all_sum

    model.eval()
    device = env.device
    amp = amp if isinstance(amp, torch.dtype) else None  # False / None: float32
    loss_sum, correct1, correct5, count = 0.0, 0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            logits = model(images).float()  # top-k of fp32 logits: bf16 ties would depend on the kernel
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        count += len(labels)
    loss_sum, correct1, correct5, count = all_sum(env, [loss_sum, correct1, correct5, count])
    return {"loss": loss_sum / count, "top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count}
