"""The whole of ``params.yaml``: :func:`load` parses every section (unknown or missing sections, unknown keys,
wrong types and impossible values are errors naming the key) and then the rules that span sections (a listed
variant or dataset must exist, a fine-tuned variant must be pretrained, ...). Every stage loader in
:mod:`.stages` starts here, so the first stage ``dvc repro`` runs refuses a bad file before any training.
Torch-free: the report, and ``python -m pipeline.config`` (the first line of every stage's command), load
params without importing torch.

This module also holds the sections only the counting, timing, planning, report and audit steps read.
"""

from __future__ import annotations

import importlib.util
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config.cluster import Cluster
from pipeline.config.datasets import Dataset
from pipeline.config.rehearsal import Rehearsal
from pipeline.config.schema import ParamsError, check_name, fraction, names_in, non_negative, parse, positive, read_yaml
from pipeline.config.sections import Finetune, Model, Pretrain, Runtime, check_options, registered

__all__ = ["Audit", "Bench", "Flops", "Forensics", "Params", "Plan", "Report", "Targets", "from_data", "load"]


def _sized(where: str, key: str, models: tuple[str, ...], img_size: int) -> None:
    """Registered model names (at ``where.key``), each with an ``img_size`` its patches tile."""
    for name in models:
        _, patch = registered(name, f"{where}.{key}")
        if img_size < patch or img_size % patch:
            raise ParamsError(f"{where}.img_size: {img_size} is not a positive multiple of {name}'s patch size {patch}")


@dataclass(frozen=True)
class Flops:
    models: tuple[str, ...]  # registered qkv_xcit_* names
    variants: tuple[str, ...]  # keys of `variants`
    img_size: int
    num_classes: tuple[int, ...]
    rel_tol: float  # largest relative disagreement allowed between the flop counters and the formula

    def check(self, where: str) -> None:
        _sized(where, "models", self.models, self.img_size)
        if not 0 <= self.rel_tol < 1:
            raise ParamsError(f"{where}.rel_tol: expected a number in [0, 1), got {self.rel_tol}")
        if not self.num_classes or any(k <= 0 for k in self.num_classes):
            raise ParamsError(f"{where}.num_classes: expected positive integers, got {list(self.num_classes)}")


@dataclass(frozen=True)
class Forensics:
    model: str
    img_size: int
    num_classes: tuple[int, ...]
    readings: dict[str, dict[str, Any]]  # reading name -> qkv_* model options

    def check(self, where: str) -> None:
        _sized(where, "model", (self.model,), self.img_size)
        if not self.num_classes or any(k <= 0 for k in self.num_classes):
            raise ParamsError(f"{where}.num_classes: expected positive integers, got {list(self.num_classes)}")
        for name, options in self.readings.items():
            check_options(f"{where}.readings.{name}", options)


@dataclass(frozen=True)
class Targets:
    step_over_flops: float  # a variant's step-time ratio may be at most this times its FLOP ratio
    ceiling_fraction: float  # the baseline's training GFLOP/s at least this fraction of the ceiling
    loader_over_train: float  # the loader at least this many times the baseline's training img/s

    def check(self, where: str) -> None:
        positive(where, **{k: getattr(self, k) for k in ("step_over_flops", "ceiling_fraction", "loader_over_train")})


@dataclass(frozen=True)
class Bench:
    backbone: str  # the entry of `backbones` every variant is timed on
    variants: tuple[str, ...]  # keys of `variants`
    baseline: str  # the variant (one of ``variants``) the ratios are taken against
    reference: str | None  # timm model timed beside the variants (same recipe), e.g. xcit_nano_12_p8_224
    amp: bool  # bf16 autocast (what the training stages do on GPU)
    threads: int  # torch CPU threads (0: torch's default)
    batch_size: int  # training batch per process
    eval_batch_size: int
    warmup: int  # untimed steps per model before the rounds
    rounds: int  # timed rounds; each times one train step and one eval pass of every model
    loader_batches: int  # training batches drawn to time the loader
    loader_workers: int  # DataLoader worker processes while timing the loader (timm path)
    targets: Targets

    def check(self, where: str) -> None:
        for key in ("batch_size", "eval_batch_size", "rounds", "loader_batches"):
            if getattr(self, key) <= 0:
                raise ParamsError(f"{where}.{key}: expected a positive integer, got {getattr(self, key)}")
        non_negative(where, warmup=self.warmup, threads=self.threads, loader_workers=self.loader_workers)
        if self.baseline not in self.variants:
            raise ParamsError(f"{where}.baseline: {self.baseline!r} is not in bench.variants")


@dataclass(frozen=True)
class Report:
    confidence: float  # two-sided t intervals of means and of seed-paired differences
    baseline: str  # the variant every difference is taken against (one of pretrain.variants)
    power: float  # the probability of detection "what a claim needs" is computed for

    def check(self, where: str) -> None:
        fraction(f"{where}.confidence", self.confidence)
        fraction(f"{where}.power", self.power)
        # A difference is detected when its two-sided interval lies above zero: a one-sided test at level
        # (1 - confidence)/2, which "detects" a zero difference with exactly that probability
        # (pipeline/reporting/stats.py). A power at or below it has no detectable difference to solve for. The
        # relative margin refuses the floor written in decimals ((1 - 0.9)/2 rounds to just below 0.05) and the few
        # ulps above it where the root search still fails in rounding.
        floor = (1 - self.confidence) / 2
        if self.power <= floor * (1 + 1e-9):
            raise ParamsError(
                f"{where}.power: {self.power} is not above (1 - {where}.confidence)/2 = {floor:.6g}, the chance that "
                f"a zero difference is detected; set a power above {floor:.6g} (0.8 is usual)"
            )


@dataclass(frozen=True)
class Audit:
    abs_tol: float  # metrics within this of the committed ones are "equal within tolerance"
    ratio_rel_tol: float  # measurements (bench): ratios within this relative difference
    weights_abs_tol: float  # weights (and prepared tensors): every element within this of the committed one

    def check(self, where: str) -> None:
        non_negative(
            where, abs_tol=self.abs_tol, ratio_rel_tol=self.ratio_rel_tol, weights_abs_tol=self.weights_abs_tol
        )


@dataclass(frozen=True)
class Plan:
    """The cost plan's own settings (pipeline/stages/plan.py)."""

    loader_images: int  # JPEGs decoded and transformed to time the timm input pipeline on one CPU core

    def check(self, where: str) -> None:
        if self.loader_images <= 0:
            raise ParamsError(f"{where}.loader_images: expected a positive integer, got {self.loader_images}")


# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """The whole of ``params.yaml``, parsed and cross-checked."""

    profile: str  # the name every result file carries (profiles/<profile>.yaml)
    variants: dict[str, dict[str, Any]]  # name -> qkv_* options
    flops: Flops
    forensics: Forensics
    datasets: dict[str, Dataset]
    backbones: dict[str, Model]  # name (in stage names) -> backbone: the study's backbone axis
    launcher: str  # how training stages start: python, or torchrun ... (part of their command)
    device: str  # "cpu" or "cuda": where the training stages and the bench run
    seeds: tuple[int, ...]
    pretrain: Pretrain
    finetune: Finetune
    runtime: Runtime
    bench: Bench
    report: Report
    audit: Audit
    plan: Plan
    cluster: Cluster  # where pipeline.cluster runs the stage instances (listed by the plan only: its loader cap)
    rehearsal: Rehearsal | None  # null, except in a rehearsal's params (pipeline.review.rehearse)
    path: Path = field(default=Path("params.yaml"), compare=False)

    def check(self, where: str) -> None:
        check_name("profile", self.profile)
        for name, options in self.variants.items():
            check_name("variants", name)
            check_options(f"variants.{name}", options)
        for name in self.datasets:
            check_name("datasets", name)
        self._check_backbones()
        if not self.launcher.strip():
            raise ParamsError("launcher: expected a command (python, or torchrun ...), got an empty string")
        _check_launcher_module(self.launcher)
        if self.device not in ("cpu", "cuda"):
            raise ParamsError(f"device: {self.device!r} is not one of: cpu, cuda")
        if not self.seeds:
            raise ParamsError("seeds: expected at least one seed (every training stage runs once per seed)")
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ParamsError(f"seeds: expected distinct non-negative integers, got {list(self.seeds)}")
        if self.pretrain.dataset not in self.datasets:
            raise ParamsError(f"pretrain.dataset: {self.pretrain.dataset!r} is not an entry of the datasets section")
        names_in("pretrain.variants", self.pretrain.variants, known=self.variants, what="variant")
        names_in("finetune.datasets", self.finetune.datasets, known=self.datasets, what="dataset")
        names_in("finetune.variants", self.finetune.variants, known=self.variants, what="variant")
        for name in self.finetune.variants:
            if name not in self.pretrain.variants:
                raise ParamsError(
                    f"finetune.variants: {name!r} has no pretrained weights: it is not in pretrain.variants "
                    f"({', '.join(self.pretrain.variants)})"
                )
        names_in("flops.variants", self.flops.variants, known=self.variants, what="variant")
        names_in("bench.variants", self.bench.variants, known=self.variants, what="variant")
        if self.report.baseline not in self.pretrain.variants:
            raise ParamsError(f"report.baseline: {self.report.baseline!r} is not in pretrain.variants")
        if self.bench.backbone not in self.backbones:
            raise ParamsError(
                f"bench.backbone: {self.bench.backbone!r} is not an entry of backbones ({', '.join(self.backbones)})"
            )
        patch = self.backbones[self.bench.backbone].patch_size
        if self.bench.reference and patch not in (8, 16):
            raise ParamsError(
                f"bench.reference: timm's XCiT has no patch-{patch} stem (backbones.{self.bench.backbone}.patch_size); "
                "set bench.reference: null"
            )
        for stage, recipe, datasets in (
            ("pretrain", self.pretrain.recipe, (self.pretrain.dataset,)),
            ("finetune", self.finetune.recipe, self.finetune.datasets),
        ):
            pad = recipe.augment.pad_crop
            for name in datasets:
                if recipe.augment.mode == "batched" and pad >= self.datasets[name].img_size:
                    raise ParamsError(
                        f"{stage}.recipe.augment.pad_crop: {pad} px of reflect padding needs images larger than "
                        f"that; datasets.{name}.img_size is {self.datasets[name].img_size}"
                    )

    def _check_backbones(self) -> None:
        """At least one backbone; names safe in stage names; no two entries with one setting (a claim about that
        backbone would get two results)."""
        if not self.backbones:
            raise ParamsError("backbones: expected at least one backbone (e.g. n12: {name: qkv_xcit_nano_12_p16, ...})")
        seen: dict[tuple, str] = {}
        for name, model in self.backbones.items():
            check_name("backbones", name)
            key = (*model.setting, model.arch_overrides().get("depth"), model.arch_overrides().get("embed_dim"))
            if key in seen:
                raise ParamsError(
                    f"backbones.{name}: the same backbone as backbones.{seen[key]} ({model.backbone}/"
                    f"{model.patch_size} at {model.img_size} px): its results would answer the same claims twice; "
                    "keep one entry"
                )
            seen[key] = name


def from_data(data: Any, where: str, *, path: str | Path | None = None) -> Params:
    """Parse and check a params mapping (as read from a params file); ``where`` names it in messages (the file,
    or what the mapping was derived from) and ``path`` is the file it came from (default: ``where``)."""
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    names = [f for f in Params.__dataclass_fields__ if f != "path"]
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        raise ParamsError(f"{where}: unknown section(s) {', '.join(map(str, unknown))}; expected: {', '.join(names)}")
    missing = [s for s in names if s not in data]
    if missing:
        raise ParamsError(f"{where}: missing section(s) {', '.join(missing)}")
    hints = typing.get_type_hints(Params)
    sections = {name: parse(hints[name], data[name], name) for name in names}
    params = Params(**sections, path=Path(path if path is not None else where))
    params.check(where)
    return params


def load(path: str | Path) -> Params:
    """Parse and check the whole params file at ``path``."""
    return from_data(read_yaml(path), str(path), path=path)


LAUNCHERS = ("python", "python3", "torchrun")  # what a launcher's first word may be (by file name)
_LAUNCHER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./=:,+- ")


def _check_launcher_module(launcher: str) -> None:
    """The launcher is part of every training stage's shell command (dvc.yaml): plain words of a safe set of
    characters, starting with python or torchrun; and its ``-m pipeline.<module>`` names a module of this project
    (a params file written before pipeline/ was grouped still says ``pipeline.launch``: it would fail only when a
    training stage starts)."""
    bad = sorted(set(launcher) - _LAUNCHER_CHARS)
    words = launcher.split()
    if bad or Path(words[0]).name not in LAUNCHERS:
        why = f"holds {''.join(bad)!r}" if bad else f"starts with {words[0]!r}"
        raise ParamsError(
            f"launcher: {launcher!r} {why}; it becomes part of each training stage's shell command: expected "
            f"{' or '.join(LAUNCHERS)} and plain words (letters, digits, _ . / = : , + -), e.g. python, or python -m "
            "pipeline.training.launch --nproc-per-node 8"
        )
    for flag, module in zip(words, words[1:], strict=False):
        if flag == "-m" and module.split(".")[0] == "pipeline" and not _exists(module):
            raise ParamsError(
                f"launcher: {launcher!r} runs {module}, which does not exist; the project's launcher is "
                "python -m pipeline.training.launch (--nproc-per-node N)"
            )


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
