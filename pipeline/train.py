"""The training loop shared by the ``pretrain`` and ``finetune`` stages.

The recipe is built from timm's utilities, every value from params.yaml: AdamW from timm's optimizer
factory with no weight decay on norms, biases, XCA temperatures, the class token, the positional encoding and
F-SNE codes; a cosine schedule with warmup, stepped every update; the learning rate scaled by
``global batch / lr_base_batch`` (both recorded); Mixup/CutMix with label smoothing; model EMA; optional
gradient clipping; bf16 autocast on GPU.

Runs unchanged under ``torchrun`` (gloo on CPU, NCCL on GPU; BatchNorm synchronised on GPU); rank 0 writes.
Deterministic on CPU for a seed. Every ``checkpoint_every`` epochs the full training state (weights,
optimizer, scheduler, EMA, random generators, curves) is written atomically to a resume folder that DVC does
not manage, so a run killed part-way continues from its last checkpoint and ends with the same weights and
metrics as an uninterrupted run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.data import AugmentParams, build_loaders
from pipeline.params import ParamsError

__all__ = [
    "ModelParams",
    "Run",
    "TrainParams",
    "TrainingDiverged",
    "add_output_arguments",
    "arch_overrides",
    "build_model",
    "configure_torch",
    "fit",
    "forward_flops",
    "loss_recipe",
    "make_optimizer",
    "train_and_write",
    "train_step",
]


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class ModelParams:
    """The ``model`` section: the registered backbone and overrides of its timm arguments."""

    name: str  # qkv_xcit_* entrypoint
    img_size: int
    patch_size: int  # 4 (our stem), 8 or 16
    drop_path_rate: float
    depth: int | None = None  # None: the registered model's
    embed_dim: int | None = None
    num_heads: int | None = None


ARCH_KEYS = ("patch_size", "depth", "embed_dim", "num_heads")  # model-section keys that shape the backbone


def arch_overrides(model: ModelParams) -> dict:
    """The backbone arguments the ``model`` section sets (None: the registered model's own), as timm's ``Xcit``
    and :func:`qkv.model_arch` take them."""
    return {k: v for k, v in asdict(model).items() if k in ARCH_KEYS and v is not None}


@dataclass(frozen=True)
class TrainParams:
    """A training recipe (the ``pretrain`` and ``finetune`` sections share these keys)."""

    epochs: int
    batch_size: int  # global, over all processes
    lr: float  # at lr_base_batch; the effective lr is lr * batch_size / lr_base_batch
    lr_base_batch: int
    min_lr: float
    warmup_epochs: int
    warmup_lr: float
    weight_decay: float
    opt: str
    clip_grad: float | None
    mixup: float
    cutmix: float
    label_smoothing: float
    ema_decay: float | None
    eval_batch_size: int
    checkpoint_every: int  # epochs
    threads: int  # torch CPU threads (0: torch's default)
    amp: bool  # bf16 autocast (GPU only)
    diagnostic_images: int  # held-out images for the Q/K/V similarity diagnostic
    augment: AugmentParams

    @property
    def lr_effective(self) -> float:
        """The learning rate used: ``lr`` scaled by ``batch_size / lr_base_batch``."""
        return self.lr * self.batch_size / self.lr_base_batch

    @classmethod
    def recipe_of(cls, params: TrainParams) -> TrainParams:
        """Just the recipe fields of a stage's params (which add e.g. the dataset and variant lists)."""
        return cls(**{f.name: getattr(params, f.name) for f in fields(cls)})

    def check(self, where: str) -> None:
        for key in (
            "epochs",
            "batch_size",
            "lr_base_batch",
            "eval_batch_size",
            "checkpoint_every",
            "diagnostic_images",
        ):
            if getattr(self, key) <= 0:
                raise ParamsError(f"{where}.{key}: expected a positive integer, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ParamsError(f"{where}.lr: expected a positive number, got {self.lr}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ParamsError(f"{where}.warmup_epochs: {self.warmup_epochs} must be below epochs ({self.epochs})")
        for key in ("min_lr", "warmup_lr", "weight_decay", "mixup", "cutmix", "label_smoothing", "threads"):
            if getattr(self, key) < 0:
                raise ParamsError(f"{where}.{key}: must not be negative, got {getattr(self, key)}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ParamsError(f"{where}.ema_decay: expected a number in (0, 1) or null, got {self.ema_decay}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ParamsError(f"{where}.clip_grad: expected a positive number or null, got {self.clip_grad}")
        self.augment.check(f"{where}.augment")


@dataclass(frozen=True)
class Run:
    """One training run: what to train, on what, and where its resume state lives."""

    stage: str  # "pretrain" or "finetune"
    variant: str
    seed: int
    options: dict  # the variant's qkv_* options
    model: ModelParams
    train: TrainParams
    data: Path  # prepared dataset folder
    resume_dir: Path
    profile: str = ""  # the params profile, carried into every result
    data_root: str | None = None  # file datasets: where the images are
    init_weights: Path | None = None  # finetune: the pretrained weights

    def fingerprint(self, data_hash: str, world_size: int) -> dict:
        """Everything that determines the result; a checkpoint resumes only under an identical one."""
        return {
            "stage": self.stage,
            "variant": self.variant,
            "seed": self.seed,
            "options": self.options,
            "model": asdict(self.model),
            "train": asdict(self.train),
            "data_hash": data_hash,
            "init_weights": _file_hash(self.init_weights) if self.init_weights else None,
            "world_size": world_size,
        }


def _file_hash(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_model(model: ModelParams, options: dict, num_classes: int) -> torch.nn.Module:
    import timm

    import qkv  # noqa: F401  (registers the qkv_xcit_* models)

    return timm.create_model(
        model.name,
        num_classes=num_classes,
        img_size=model.img_size,
        drop_path_rate=model.drop_path_rate,
        **arch_overrides(model),
        **options,
    )


# ----------------------------------------------------------------------------------------------------
# Distributed set-up: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; plain `python` runs one process.


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed() -> Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world_size, device)


def configure_torch(device: torch.device, threads: int) -> None:
    """Thread count (0: torch's default) and, on CPU, deterministic algorithms: how every training step runs,
    in the stages and in the benchmark."""
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        # Deterministic mode also fills every new tensor with NaN, to expose reads of uninitialised memory; the
        # results do not depend on it, and it cost 6 % of a training step (docs/performance.md).
        torch.utils.deterministic.fill_uninitialized_memory = False


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"])


# ----------------------------------------------------------------------------------------------------


def loss_recipe(train: TrainParams, num_classes: int):
    """``(mixup or None, criterion)`` of a recipe: timm's Mixup/CutMix with soft-target cross-entropy, else
    label-smoothed (or plain) cross-entropy."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if train.mixup > 0 or train.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=train.mixup,
            cutmix_alpha=train.cutmix,
            label_smoothing=train.label_smoothing,
            num_classes=num_classes,
        )
        return mixup, SoftTargetCrossEntropy()
    if train.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(train.label_smoothing)
    return None, torch.nn.CrossEntropyLoss()


def _stop_if_diverged(loss: torch.Tensor, *, run: Run, epoch: int, step: int, update: int, lr: float, last) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"{run.stage} {run.variant}-{run.seed}: non-finite loss ({loss.item()}) at epoch {epoch + 1}, step "
            f"{step + 1} (update {update}), lr {lr:.3g}; last finite loss {last}. Lower the learning rate or "
            "enable clip_grad; no metrics were written."
        )


def train_step(
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    criterion,
    mixup=None,
    amp: bool = False,
    clip_grad: float | None = None,
    check_loss=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of the recipe: Mixup/CutMix, forward (bf16 autocast if ``amp``), loss, backward, optional
    gradient clipping, optimizer step. ``check_loss(loss)`` runs before the update (to stop on a non-finite
    loss). Returns ``(loss, logits)``. :func:`fit` trains with it and ``pipeline.bench`` times it, so the
    benchmark measures exactly the step the pipeline runs."""
    targets = labels
    if mixup is not None:
        images, targets = mixup(images, labels)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = net(images)
        loss = criterion(logits.float(), targets)
    if check_loss is not None:
        check_loss(loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
    optimizer.step()
    return loss, logits


def make_optimizer(model: torch.nn.Module, train: TrainParams, lr: float):
    from timm.optim import create_optimizer_v2, param_groups_weight_decay

    no_decay = {"*temperature", "cls_token", "pos_embed.*", "*.codes", *getattr(model, "no_weight_decay", set)()}
    groups = param_groups_weight_decay(model, train.weight_decay, no_weight_decay_list=sorted(no_decay))
    # torch's fused Adam/AdamW kernel: one pass over all parameters instead of a loop of small ops (a third of
    # the optimizer's time on CPU, docs/performance.md); the same update rule.
    fused = {"fused": True} if train.opt.lower() in ("adam", "adamw") else {}
    return create_optimizer_v2(groups, opt=train.opt, lr=lr, weight_decay=train.weight_decay, **fused)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, amp: bool) -> dict:
    """Loss, top-1 and top-5 (%) over a whole loader."""
    model.eval()
    loss_sum, correct1, correct5, count = 0.0, 0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        count += len(labels)
    return {"loss": loss_sum / count, "top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count}


def _save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: written beside, then renamed over the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, fingerprint: dict) -> dict | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    saved = json.loads(state["fingerprint"])
    if saved != fingerprint:
        differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        raise ValueError(
            f"checkpoint {path} was written by a different configuration ({', '.join(differ)} "
            f"differ); delete {path.parent} to start this run from scratch"
        )
    return state


def fit(run: Run, *, progress: bool = False) -> dict:
    """Train ``run`` to the end (resuming from its checkpoint if one exists); returns the results.

    Returns a dict with ``model`` (the trained network, unwrapped), ``metrics`` (deterministic, for the
    metrics file), ``curves`` (per-epoch rows), ``timing`` (throughput, for provenance) and ``dist``.
    Raises :class:`TrainingDiverged` on a non-finite loss.
    """
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3
    from tqdm import tqdm

    import qkv

    train = run.train
    train.check(run.stage)
    env = _init_distributed()
    configure_torch(env.device, train.threads)
    if train.batch_size % env.world_size:
        raise ParamsError(f"{run.stage}.batch_size: {train.batch_size} is not divisible by {env.world_size} processes")
    _set_seed(run.seed)
    loaders = build_loaders(
        run.data,
        train.augment,
        batch_size=train.batch_size // env.world_size,
        seed=run.seed,
        root=run.data_root,
        rank=env.rank,
        world_size=env.world_size,
        eval_batch_size=train.eval_batch_size,
    )
    num_classes = loaders.num_classes
    model = _initial_model(run, num_classes)
    n_params = sum(p.numel() for p in model.parameters())
    model.to(env.device)
    if env.world_size > 1 and env.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    lr = train.lr_effective
    optimizer = make_optimizer(model, train, lr)
    updates_per_epoch = len(loaders.train)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=train.epochs,
        min_lr=train.min_lr,
        warmup_lr=train.warmup_lr,
        warmup_epochs=train.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    mixup, criterion = loss_recipe(train, num_classes)
    ema = ModelEmaV3(model, decay=train.ema_decay) if train.ema_decay else None
    net = torch.nn.parallel.DistributedDataParallel(model) if env.world_size > 1 else model

    ckpt_path = run.resume_dir / "checkpoint.pt"
    fingerprint = json.loads(json.dumps(run.fingerprint(loaders.meta["content_hash"], env.world_size)))
    start_epoch, curves, last_finite = 0, [], None
    state = _load_checkpoint(ckpt_path, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"])
        start_epoch, curves, last_finite = state["epoch"], json.loads(state["curves"]), state["last_finite"]

    amp = train.amp and env.device.type == "cuda"
    seen, train_seconds = 0, 0.0
    for epoch in range(start_epoch, train.epochs):
        for epoch_aware in (loaders.train, getattr(loaders.train, "sampler", None)):
            if hasattr(epoch_aware, "set_epoch"):  # TensorBatches, DistributedSampler
                epoch_aware.set_epoch(epoch)
        net.train()
        loss_sum, correct, count, t0 = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(
            loaders.train,
            desc=f"{run.stage} {run.variant}-{run.seed} epoch {epoch + 1}/{train.epochs}",
            disable=not (progress and env.main),
            leave=False,
        )
        for step, (images, labels) in enumerate(bar):
            images, labels = images.to(env.device), labels.to(env.device)
            check_loss = functools.partial(
                _stop_if_diverged,
                run=run,
                epoch=epoch,
                step=step,
                update=epoch * updates_per_epoch + step + 1,
                lr=optimizer.param_groups[0]["lr"],
                last=last_finite,
            )
            loss, logits = train_step(
                net,
                images,
                labels,
                optimizer=optimizer,
                criterion=criterion,
                mixup=mixup,
                amp=amp,
                clip_grad=train.clip_grad,
                check_loss=check_loss,
            )
            last_finite = loss.item()
            scheduler.step_update(epoch * updates_per_epoch + step + 1)
            if ema is not None:
                ema.update(model, step=epoch * updates_per_epoch + step + 1)
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
            bar.set_postfix(
                loss=f"{loss.item():.3f}",
                acc=f"{100 * correct / count:.1f}",
                img_s=f"{count * env.world_size / (time.perf_counter() - t0):.0f}",
            )
        train_seconds += time.perf_counter() - t0
        seen += count * env.world_size
        if env.main:
            val = evaluate(model, loaders.val, env.device, amp)
            curves.append(
                {
                    "epoch": epoch + 1,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": loss_sum / count,
                    "train_top1": 100.0 * correct / count,
                    "val_loss": val["loss"],
                    "val_top1": val["top1"],
                    "val_top5": val["top5"],
                }
            )
        if env.world_size > 1:
            dist.barrier()
        if env.main and ((epoch + 1) % train.checkpoint_every == 0 and epoch + 1 < train.epochs):
            _save_checkpoint(
                ckpt_path,
                {
                    "fingerprint": json.dumps(fingerprint, sort_keys=True),
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": _rng_state(),
                    "curves": json.dumps(curves),
                    "last_finite": last_finite,
                },
            )

    result = {
        "model": model,
        "ema": ema.module if ema is not None else None,
        "dist": env,
        "curves": curves,
        "timing": {
            "train_seconds": round(train_seconds, 3),
            "train_images": seen,
            "train_img_per_s": round(seen / train_seconds, 1) if train_seconds else None,
        },
    }
    if env.main:
        test = evaluate(model, loaders.test, env.device, amp)
        best = max(curves, key=lambda r: r["val_top1"])
        diag_images = torch.cat([x for x, _ in _take(loaders.test, train.diagnostic_images)])[: train.diagnostic_images]
        similarity = qkv.qkv_similarity(model, diag_images.to(env.device))
        result["metrics"] = _round(
            {
                "profile": run.profile,
                "stage": run.stage,
                "variant": run.variant,
                "seed": run.seed,
                "dataset": loaders.meta["dataset"],
                "synthetic": loaders.meta["synthetic"],
                "epochs": train.epochs,
                "params": n_params,
                "gflops": round(forward_flops(run.model, run.options, num_classes) / 1e9, 6),
                "num_classes": num_classes,
                "global_batch": train.batch_size,
                "world_size": env.world_size,
                "lr_base": train.lr,
                "lr_effective": lr,
                "test_top1": test["top1"],
                "test_top5": test["top5"],
                "test_loss": test["loss"],
                "val_top1_final": curves[-1]["val_top1"],
                "val_top1_best": best["val_top1"],
                "best_epoch": best["epoch"],
                "qkv_similarity": {r["layer"]: {k: r[k] for k in ("q_k", "q_v", "k_v")} for r in similarity},
            }
        )
        if ema is not None:
            ema_test = evaluate(ema.module, loaders.test, env.device, amp)
            result["metrics"].update(_round({"ema_test_top1": ema_test["top1"], "ema_test_top5": ema_test["top5"]}))
        result["curves"] = [_round(r) for r in curves]
    return result


def model_arch(model: ModelParams):
    """The :class:`qkv.XcitArch` the ``model`` section builds."""
    import qkv

    return qkv.model_arch(model.name, **arch_overrides(model))


def forward_flops(model: ModelParams, options: dict, num_classes: int) -> int:
    """Closed-form flops of one forward pass of one image (fvcore convention: a multiply-add is one flop)."""
    import qkv

    cfg, class_attn = qkv.split_model_options(options)
    arch = model_arch(model)
    return qkv.xcit_flops(arch, cfg, img_size=model.img_size, num_classes=num_classes, class_attn=class_attn).total


def _take(loader, n: int):
    total = 0
    for images, labels in loader:
        yield images, labels
        total += len(images)
        if total >= n:
            return


def _round(obj, digits: int = 6):
    """Floats rounded for the metrics files (stable text, no spurious last-digit noise in diffs)."""
    if isinstance(obj, float):
        return round(obj, digits) if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v, digits) for v in obj]
    return obj


def _initial_model(run: Run, num_classes: int) -> torch.nn.Module:
    """A fresh model (pretrain), or the pretrained weights with a new head (finetune)."""
    if run.init_weights is None:
        return build_model(run.model, run.options, num_classes)
    from safetensors import safe_open
    from safetensors.torch import load_model

    path = Path(run.init_weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"no pretrained weights for variant {run.variant!r} seed {run.seed} at {path}: "
            f"pretrain it first (list it in pretrain.variants)"
        )
    with safe_open(str(path), framework="pt") as fh:
        source_classes = fh.get_tensor("head.weight").shape[0]
    model = build_model(run.model, run.options, source_classes)
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match variant {run.variant!r} with the model section: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.reset_classifier(num_classes)
    return model


def curves_csv(curves: list[dict]) -> bytes:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(curves[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(curves)
    return buffer.getvalue().encode()


def add_output_arguments(parser) -> None:
    """The output arguments both training stages take (paths written in dvc.yaml)."""
    parser.add_argument("--model-out", required=True, help="weights to write (safetensors)")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    parser.add_argument("--curves", required=True, help="per-epoch CSV to write")
    parser.add_argument("--provenance", required=True, help="provenance JSON to write")
    parser.add_argument("--resume-dir", required=True, help="where resume checkpoints live (not a DVC output)")


def train_and_write(run: Run, args, *, params: dict, started: float) -> None:
    """Fit ``run``; rank 0 then writes the weights (safetensors), metrics, curves and provenance, all or
    nothing, deletes the resume checkpoint and prints a one-line summary."""
    import shutil
    import sys
    import tempfile

    from safetensors.torch import save_model

    from pipeline.io import json_bytes, provenance, write_outputs

    result = fit(run, progress=sys.stderr.isatty())
    env = result["dist"]
    if not env.main:
        return
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.safetensors"
        save_model(result["model"], str(weights))  # no metadata: safetensors orders it randomly
        blob = weights.read_bytes()
    record = provenance(
        run.stage,
        params,
        started=started,
        extra={"timing": result["timing"], "world_size": env.world_size, "device": str(env.device)},
    )
    write_outputs(
        {
            args.model_out: blob,
            args.metrics: json_bytes(result["metrics"]),
            args.curves: curves_csv(result["curves"]),
            args.provenance: json_bytes(record),
        }
    )
    shutil.rmtree(run.resume_dir, ignore_errors=True)
    m = result["metrics"]
    print(
        f"{run.stage} {run.variant}-{run.seed}: test top-1 {m['test_top1']:.2f} % on {m['dataset']}"
        f"{' (SYNTHETIC)' if m['synthetic'] else ''}, {result['timing']['train_img_per_s']} img/s"
    )
