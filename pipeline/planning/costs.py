"""What one training run of the DAG costs, in closed form: the images it trains on and evaluates (as the training
loop and its samplers really draw them), its FLOPs (the closed-form counts of :mod:`qkv.counts`), and the bytes it
keeps and holds while it runs; the devices a launcher starts; the bytes of a prepared dataset. Pure arithmetic on
a :class:`pipeline.config.PlanConfig`; the plan stage (pipeline/stages/plan.py) adds the rates and the measurements.

Conventions: FLOPs as timm's and XCiT's tables count them (fvcore: one multiply-add is one flop, eval mode); a
training image costs 3 forward passes (forward + backward), an evaluated image one.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from pipeline.config import Net, ParamsError, Recipe, Splits

__all__ = [
    "Devices",
    "RunCost",
    "devices",
    "epoch_images",
    "forward_flops",
    "prepared_bytes",
    "run_cost",
    "weight_bytes",
]

_RA_ROUND = 256  # timm's RepeatAugSampler(selected_round=256): an epoch keeps whole rounds of 256 images
_LABEL_BYTES = 8  # int64 label of a prepared tensor dataset
_FLOAT_BYTES = 4  # float32 weights


@dataclass(frozen=True)
class Devices:
    """The processes a training stage runs on: ``per_node`` x ``nodes``, each on one GPU (cuda) or sharing the CPU."""

    kind: str  # "cuda" or "cpu"
    per_node: int
    nodes: int

    @property
    def total(self) -> int:
        return self.per_node * self.nodes

    @property
    def unit(self) -> str:
        return "GPU" if self.kind == "cuda" else "CPU process"


def devices(launcher: str, device: str, nodes: int = 1) -> Devices:
    """The devices of ``launcher`` (params.yaml's): ``python`` is one process; ``... --nproc-per-node N``
    (pipeline.training.launch, torchrun) is N per node, on ``nodes`` nodes."""
    if nodes < 1:
        raise ParamsError(f"--nodes: expected a positive number of nodes, got {nodes}")
    words = shlex.split(launcher)
    if words == ["python"]:
        return Devices(device, 1, 1)  # one process, whatever the node count
    per_node = 1
    for i, word in enumerate(words):
        key, _, value = word.partition("=")
        if key in ("--nproc-per-node", "--nproc_per_node"):
            value = value or (words[i + 1] if i + 1 < len(words) else "")
            if not value.isdigit() or int(value) < 1:
                raise ParamsError(f"launcher: {key} needs a positive number of processes, got {value!r}")
            per_node = int(value)
    return Devices(device, per_node, nodes)


def epoch_images(n_train: int, batch_size: int, world: int, repeats: int) -> int:
    """Images one epoch trains on, over all ranks, as the training loop draws them: each rank's sampler share
    (timm's RepeatAugSampler with ``repeats > 1``: whole rounds of 256 images spread over the ranks, each image
    ``repeats`` times, so an epoch stays about one pass long; else the shuffled split cut to a multiple of the ranks)
    in whole batches (the last partial batch is dropped)."""
    per_rank_batch = batch_size // world
    if repeats > 1:
        if n_train >= _RA_ROUND:
            selected = n_train // _RA_ROUND * _RA_ROUND // world
        else:
            selected = math.ceil(n_train / world)
        per_rank = min(selected, math.ceil(n_train * repeats / world))
    else:
        per_rank = n_train // world
    return per_rank // per_rank_batch * per_rank_batch * world


@dataclass(frozen=True)
class RunCost:
    """One training run: images and FLOPs, and bytes."""

    train_images: int
    eval_images: int
    train_flops: int  # 3 x forward x training images
    eval_flops: int  # forward x evaluated images
    weight_bytes: int  # the weights it keeps (raw, and EMA when the recipe keeps one)
    resume_bytes: int  # its resume checkpoint while it runs: weights, AdamW's two moments, EMA


def forward_flops(net: Net, num_classes: int) -> int:
    """Closed-form flops of one forward pass of one image (:func:`qkv.xcit_flops`)."""
    import qkv

    return qkv.xcit_flops(
        net.arch, net.embed, img_size=net.img_size, num_classes=num_classes, class_attn=net.class_attn
    ).total


def weight_bytes(net: Net, num_classes: int) -> int:
    """float32 bytes of the trainable parameters (:func:`qkv.xcit_params`)."""
    import qkv

    return _FLOAT_BYTES * qkv.xcit_params(net.arch, net.embed, num_classes=num_classes, class_attn=net.class_attn)


def run_cost(net: Net, splits: Splits, recipe: Recipe, world: int) -> RunCost:
    """What one run of ``net`` with ``recipe`` on a dataset of ``splits`` costs on ``world`` processes: per epoch
    its training images and one pass over the validation split; at the end the test split (raw weights, and EMA
    weights when the recipe keeps them) and the diagnostic's first test images."""
    ema = recipe.ema_decay is not None
    per_epoch = epoch_images(splits.train, recipe.batch_size, world, recipe.augment.repeated_aug)
    train = recipe.epochs * per_epoch
    diagnostic = min(recipe.diagnostic_images, splits.test)
    evaluated = recipe.epochs * splits.val + splits.test * (2 if ema else 1) + diagnostic
    flops = forward_flops(net, splits.classes)
    weights = weight_bytes(net, splits.classes)
    return RunCost(
        train_images=train,
        eval_images=evaluated,
        train_flops=3 * flops * train,
        eval_flops=flops * evaluated,
        weight_bytes=weights * (2 if ema else 1),
        resume_bytes=weights * (3 + (1 if ema else 0)),
    )


def prepared_bytes(splits: Splits, img_size: int, index_line_bytes: int | None) -> int:
    """Bytes of a prepared dataset: uint8 images (3 x img_size x img_size) and int64 labels, or, for file storage
    (ImageNet, read in place), the index of paths."""
    if index_line_bytes is not None:
        return splits.total * index_line_bytes
    return splits.total * (3 * img_size * img_size + _LABEL_BYTES)
