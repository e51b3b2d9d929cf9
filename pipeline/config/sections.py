"""The sections of ``params.yaml`` the training stages read: the model, the recipes and the ``runtime``
settings. Each is a frozen dataclass that checks itself once when parsed (:mod:`.schema`).

Settings that can change a result live in their sections and are listed in the stages' ``params:`` in
dvc.yaml; settings that cannot (threads, checkpoint interval, loader workers, evaluation batch) live in
``runtime``, which no stage lists, so changing them re-runs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.config.determinism import GPU_KERNELS
from pipeline.config.schema import ParamsError, fraction, non_negative, positive

__all__ = [
    "BACKBONES",
    "Augment",
    "Finetune",
    "Model",
    "Pretrain",
    "Recipe",
    "Runtime",
    "backbone_label",
    "check_options",
    "registered",
]

# The registered backbones (qkv/xcit.py's ARCHS) and the label the paper and the report give each.
BACKBONES = {"nano": "N12", "tiny": "T12", "small": "S12"}
_MODEL_NAME = re.compile(r"qkv_xcit_(nano|tiny|small)_12_p(8|16)")


def registered(model_name: str, where: str = "backbones.<name>.name") -> tuple[str, int]:
    """The paper's label (N12, T12, S12) and the patch size of a registered ``qkv_xcit_*`` model name."""
    match = _MODEL_NAME.fullmatch(model_name)
    if match is None:
        raise ParamsError(f"{where}: unknown model {model_name!r}; known: qkv_xcit_{{nano,tiny,small}}_12_p{{8,16}}")
    return BACKBONES[match.group(1)], int(match.group(2))


def backbone_label(model_name: str) -> str:
    """The paper's label (N12, T12, S12) of a registered ``qkv_xcit_*`` model name."""
    return registered(model_name)[0]


# ----------------------------------------------------------------------------------------------------
# The backbone and the training recipe.


@dataclass(frozen=True)
class Model:
    """One entry of the ``backbones`` section: a registered backbone and its timm arguments. Its key names the
    backbone in stage names and result paths (``pretrain@<backbone>-<variant>-<seed>``)."""

    name: str  # a qkv_xcit_* entrypoint
    img_size: int  # the resolution the model is built for, trained and evaluated at (loaders resize to it)
    patch_size: int  # 4 (the pipeline's stem), 8 or 16
    drop_path_rate: float  # stochastic depth of this backbone (XCiT sets it per model)
    depth: int | None = None  # None: the registered model's
    embed_dim: int | None = None
    num_heads: int | None = None

    @property
    def backbone(self) -> str:
        """The paper's label of the backbone (N12, T12, S12)."""
        return backbone_label(self.name)

    @property
    def setting(self) -> tuple[str, int, int]:
        """What a published claim is about: (label, patch size, resolution)."""
        return self.backbone, self.patch_size, self.img_size

    def arch_overrides(self) -> dict[str, int]:
        """The backbone arguments this section sets (the registered model's own where None)."""
        keys = ("patch_size", "depth", "embed_dim", "num_heads")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def check(self, where: str) -> None:
        registered(self.name, f"{where}.name")
        if self.patch_size not in (4, 8, 16):
            raise ParamsError(f"{where}.patch_size: {self.patch_size} is not one of: 4, 8, 16")
        if self.img_size < self.patch_size or self.img_size % self.patch_size:
            raise ParamsError(
                f"{where}.img_size: {self.img_size} is not a positive multiple of patch_size {self.patch_size}"
            )
        for key in ("depth", "embed_dim", "num_heads"):
            if getattr(self, key) is not None:
                positive(where, **{key: getattr(self, key)})
        fraction(f"{where}.drop_path_rate", self.drop_path_rate, closed=True)


@dataclass(frozen=True)
class Augment:
    """How training images are augmented (``mode``) and evaluation images cropped."""

    mode: str  # "batched" (in-memory tensors, whole-batch ops) or "timm" (per-sample transforms)
    hflip: float  # probability of a horizontal flip
    pad_crop: int  # batched: pad by this many pixels (reflect), crop back at a random offset
    scale_min: float  # timm: random-resized-crop minimum area fraction (1.0 = no crop)
    auto_augment: str | None  # timm: e.g. "rand-m9-mstd0.5-inc1", or null
    color_jitter: float | None  # timm
    re_prob: float  # timm: random erasing probability
    re_mode: str  # timm: what erased pixels become: "const" (zeros), "rand" (one colour per box), "pixel" (noise)
    repeated_aug: int  # timm: each image this many times per epoch, spread over the ranks (1: off; XCiT: 3)
    interpolation: str  # "bicubic", "bilinear" or "nearest"
    crop_pct: float  # evaluation centre-crop ratio (1.0: whole image)

    def check(self, where: str) -> None:
        if self.mode not in ("batched", "timm"):
            raise ParamsError(f"{where}.mode: {self.mode!r} is not one of: batched, timm")
        if self.re_mode not in ("const", "rand", "pixel"):
            raise ParamsError(f"{where}.re_mode: {self.re_mode!r} is not one of: const, rand, pixel")
        if self.repeated_aug < 1:
            raise ParamsError(f"{where}.repeated_aug: expected a positive integer (1: off), got {self.repeated_aug}")
        if self.repeated_aug > 1 and self.mode != "timm":
            raise ParamsError(f"{where}.repeated_aug: {self.repeated_aug} needs mode 'timm' (timm's RepeatAugSampler)")
        fraction(f"{where}.hflip", self.hflip, closed=True)
        fraction(f"{where}.re_prob", self.re_prob, closed=True)
        if not 0 < self.scale_min <= 1 or not 0 < self.crop_pct <= 1:
            raise ParamsError(f"{where}: scale_min and crop_pct must lie in (0, 1]")
        non_negative(where, pad_crop=self.pad_crop)
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ParamsError(
                f"{where}.interpolation: {self.interpolation!r} is not one of: bicubic, bilinear, nearest"
            )


@dataclass(frozen=True)
class Recipe:
    """A training recipe (``pretrain.recipe``, ``finetune.recipe``): every setting that reaches the result."""

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
    weights: str  # "raw" or "ema": the weights the run evaluates, reports as test_top1 and hands on to fine-tuning
    amp: bool  # bf16 autocast (GPU only)
    diagnostic_images: int  # held-out images for the Q/K/V similarity diagnostic
    augment: Augment

    @property
    def lr_effective(self) -> float:
        """The learning rate used: ``lr`` scaled by ``batch_size / lr_base_batch``."""
        return self.lr * self.batch_size / self.lr_base_batch

    def check(self, where: str) -> None:
        for key in ("epochs", "batch_size", "lr_base_batch", "diagnostic_images"):
            if getattr(self, key) <= 0:
                raise ParamsError(f"{where}.{key}: expected a positive integer, got {getattr(self, key)}")
        positive(where, lr=self.lr)
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ParamsError(f"{where}.warmup_epochs: {self.warmup_epochs} must be below epochs ({self.epochs})")
        non_negative(
            where,
            min_lr=self.min_lr,
            warmup_lr=self.warmup_lr,
            weight_decay=self.weight_decay,
            mixup=self.mixup,
            cutmix=self.cutmix,
        )
        fraction(f"{where}.label_smoothing", self.label_smoothing, closed=True)
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ParamsError(f"{where}.ema_decay: expected a number in (0, 1) or null, got {self.ema_decay}")
        if self.weights not in ("raw", "ema"):
            raise ParamsError(f"{where}.weights: {self.weights!r} is not one of: raw, ema")
        if self.weights == "ema" and self.ema_decay is None:
            raise ParamsError(f"{where}.weights: 'ema' needs an ema_decay (it is null: no EMA is kept)")
        if self.clip_grad is not None:
            positive(where, clip_grad=self.clip_grad)


@dataclass(frozen=True)
class Pretrain:
    dataset: str  # the source: an entry of `datasets`
    variants: tuple[str, ...]  # the variants pretrained (keys of `variants`)
    recipe: Recipe


@dataclass(frozen=True)
class Finetune:
    datasets: tuple[str, ...]  # the targets: entries of `datasets`
    variants: tuple[str, ...]  # the variants transferred (each must be pretrained)
    recipe: Recipe


@dataclass(frozen=True)
class Runtime:
    """How the training stages run, never what they compute: no stage lists this section in dvc.yaml, so editing
    it re-runs nothing. ``checkpoint_every``,
    ``workers``, ``sync_every`` and ``jobs`` leave results byte-identical; ``threads`` and
    ``eval_batch_size`` change the order of float sums and can move the last bits, the same kind of
    difference as another CPU model (docs/auditing.md); ``gpu_kernels`` chooses what a CUDA run promises, fast
    or bitwise reproducible kernels (:mod:`.determinism`; a CPU run is deterministic either way)."""

    threads: int  # torch CPU threads per process (0: torch's default)
    checkpoint_every: int  # epochs between resume checkpoints
    workers: int  # DataLoader worker processes per rank (timm loader path)
    eval_batch_size: int  # images per forward pass in evaluation, per process
    # Training steps between the host's reads of the device (loss sums, the non-finite-loss check, the ranks'
    # agreement to stop): each read waits for the device and, with several ranks, all-reduces. 1 on a CPU (free).
    sync_every: int = 1
    # Stage instances `make repro` runs at once, each in its own slot (pipeline/cluster/pool.py; JOBS=N overrides).
    jobs: int = 1
    # CUDA kernels: fast (cuDNN autotuner, TF32: timm's and XCiT's) or deterministic (bitwise, slower).
    gpu_kernels: str = GPU_KERNELS[0]

    def check(self, where: str) -> None:
        non_negative(where, threads=self.threads, workers=self.workers)
        if self.gpu_kernels not in GPU_KERNELS:
            raise ParamsError(f"{where}.gpu_kernels: {self.gpu_kernels!r} is not one of: {', '.join(GPU_KERNELS)}")
        for key in ("checkpoint_every", "eval_batch_size", "sync_every", "jobs"):
            if getattr(self, key) <= 0:
                raise ParamsError(f"{where}.{key}: expected a positive integer, got {getattr(self, key)}")


def check_options(where: str, options: dict) -> None:
    """A variant's options as the qkv library takes them: ``qkv_*`` keys with plain values. What each option
    means is checked by the library itself when a stage builds the model (pipeline.config.stages.network)."""
    for key, value in options.items():
        if not isinstance(key, str) or not key.startswith("qkv_"):
            raise ParamsError(f"{where}: {key!r} is not a qkv_* model option")
        if not isinstance(value, (bool, int, float, str)):
            raise ParamsError(f"{where}.{key}: expected a plain value, got {value!r}")
