"""The checked-in reference files the report cites: ``references/published.yaml`` (every number the paper and
XCiT publish, each with its source) and ``references/assumptions.yaml`` (what the abstracts leave open).

Parsed and checked like params (unknown keys, wrong types are errors naming the entry), so no published
number is ever typed into code: the report takes each one from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config.datasets import SOURCES
from pipeline.config.schema import ParamsError, parse, read_yaml
from pipeline.config.sections import BACKBONES

__all__ = ["Assumption", "Claim", "Published", "XcitResult", "load_assumptions", "load_published"]


@dataclass(frozen=True)
class Claim:
    """One published claim: top-1 of the baseline and of the proposed embedding, in %."""

    id: str
    claim: str  # the sentence, as the source states it
    source: str
    kind: str  # "pretrain" (ImageNet top-1) or "transfer" (average over the target datasets)
    datasets: tuple[str, ...]  # registry sources the claim is measured on
    backbone: str  # N12, T12 or S12
    baseline: float
    proposed: float
    params_m: float | None  # parameters of the proposed model (M), where stated
    img_size: int | None  # resolution of the published runs, where known
    patch: int | None  # patch size of the published baseline, where known
    pretrained_on: str | None  # transfer claims: the registry source the transferred models were pretrained on

    @property
    def difference(self) -> float:
        return self.proposed - self.baseline

    def check(self, where: str) -> None:
        if self.kind not in ("pretrain", "transfer"):
            raise ParamsError(f"{where}.kind: {self.kind!r} is not one of: pretrain, transfer")
        if self.backbone not in BACKBONES.values():
            raise ParamsError(f"{where}.backbone: {self.backbone!r} is not one of: {', '.join(BACKBONES.values())}")
        unknown = [d for d in self.datasets if d not in SOURCES]
        if unknown or not self.datasets:
            raise ParamsError(
                f"{where}.datasets: unknown dataset(s) {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(SOURCES)}"
            )
        if (self.kind == "transfer") != (self.pretrained_on is not None):
            raise ParamsError(f"{where}.pretrained_on: a transfer claim names its pretraining source, others null")
        if self.pretrained_on is not None and self.pretrained_on not in SOURCES:
            raise ParamsError(
                f"{where}.pretrained_on: unknown dataset {self.pretrained_on!r}; known: {', '.join(SOURCES)}"
            )


@dataclass(frozen=True)
class XcitResult:
    """A published XCiT model (224 px, no distillation)."""

    backbone: str
    patch: int
    top1: float
    params_m: float | None
    gflops: float | None


@dataclass(frozen=True)
class XcitTable:
    source: str
    models: tuple[XcitResult, ...]


@dataclass(frozen=True)
class Published:
    claims: tuple[Claim, ...]
    xcit: XcitTable

    def claim_for(self, kind: str, backbone: str) -> Claim | None:
        """The claim of ``kind`` about ``backbone``, if the paper makes one."""
        return next((c for c in self.claims if c.kind == kind and c.backbone == backbone), None)


@dataclass(frozen=True)
class Assumption:
    detail: str
    keys: tuple[str, ...]  # the qkv_* options of params.yaml's variants that choose it
    alternatives: str
    default: str


def load_published(path: str | Path) -> Published:
    data = read_yaml(path, "reference file")
    published = parse(Published, data, str(path))
    ids = [c.id for c in published.claims]
    if len(set(ids)) != len(ids):
        raise ParamsError(f"{path}: claim ids must be unique, got {ids}")
    return published


def load_assumptions(path: str | Path) -> tuple[Assumption, ...]:
    data = read_yaml(path, "reference file")
    return parse(tuple[Assumption, ...], data.get("assumptions"), f"{path}: assumptions")
