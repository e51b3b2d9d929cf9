"""What the cost plan (pipeline/stages/plan.py) reads: ``references/compute.yaml`` (the size of every dataset source and
timm's published GPU training rates, each with its source), parsed and checked like params; the split sizes a
prepared dataset will have, computed from it with the rounding rule the prepare stage uses
(:func:`.datasets.split_sizes`) without reading the data; and :func:`load_plan`, the plan stage's loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config.datasets import SOURCES, Dataset, split_sizes
from pipeline.config.params import Params, from_data
from pipeline.config.rehearsal import Rehearsal, real_profile
from pipeline.config.schema import ParamsError, parse, positive, read_yaml
from pipeline.config.sections import BACKBONES
from pipeline.config.stages import Net, network

__all__ = ["Compute", "GpuReference", "PlanConfig", "SourceSize", "Splits", "load_compute", "load_plan", "split_counts"]


@dataclass(frozen=True)
class SourceSize:
    """The images of one dataset source (``train``/``test`` with an official test split, else ``images``)."""

    classes: int
    source: str
    train: int | None = None
    test: int | None = None
    images: int | None = None
    balanced: bool = False  # every class the same size
    class_sizes: tuple[int, ...] | None = None  # of `train` (or `images`), where known
    index_line_bytes: int | None = None  # file storage: one line of the prepared index.csv

    @property
    def pool(self) -> int:
        """The images the per-class split is taken from (``train``, or all ``images``)."""
        return self.train if self.train is not None else self.images

    def check(self, where: str) -> None:
        if (self.train is None) != (self.test is None) or (self.train is None) == (self.images is None):
            raise ParamsError(f"{where}: give train and test (an official test split), or images (none)")
        positive(where, classes=self.classes, images=self.pool)
        sizes = self.class_sizes
        if sizes is not None and (len(sizes) != self.classes or sum(sizes) != self.pool):
            raise ParamsError(
                f"{where}.class_sizes: expected {self.classes} sizes adding up to {self.pool}, got "
                f"{len(sizes)} adding up to {sum(sizes)}"
            )
        if self.balanced and self.pool % self.classes:
            raise ParamsError(f"{where}.balanced: {self.pool} images do not divide into {self.classes} equal classes")


@dataclass(frozen=True)
class GpuReference:
    """One row of timm's published training benchmark: train images/s of one GPU."""

    model: str  # timm's name, e.g. xcit_nano_12_p16_224
    backbone: str  # N12, T12 or S12
    patch: int
    img_size: int
    gpu: str
    precision: str
    batch_size: int
    train_img_per_s: float
    source: str  # the file, at a commit
    line: int  # its line in the file (the header is line 1)

    def check(self, where: str) -> None:
        if self.backbone not in BACKBONES.values():
            raise ParamsError(f"{where}.backbone: {self.backbone!r} is not one of: {', '.join(BACKBONES.values())}")
        positive(where, batch_size=self.batch_size, train_img_per_s=self.train_img_per_s, line=self.line)


@dataclass(frozen=True)
class Compute:
    datasets: dict[str, SourceSize]  # keyed by the sources of SOURCES (all but synthetic)
    gpu_train: tuple[GpuReference, ...]


def load_compute(path: str | Path) -> Compute:
    """``references/compute.yaml``, checked: an entry per non-synthetic source, each with the splits its source has."""
    compute = parse(Compute, read_yaml(path, "reference file"), str(path))
    for name, source in SOURCES.items():
        entry = compute.datasets.get(name)
        if source.kind == "synthetic":
            if entry is not None:
                raise ParamsError(f"{path}: datasets.{name}: the synthetic dataset's size comes from its params")
            continue
        if entry is None:
            raise ParamsError(f"{path}: datasets: no entry for {name!r}; give its images per split and its source")
        if (entry.test is not None) != source.official_test:
            what = "train and test (it has an official test split)" if source.official_test else "images"
            raise ParamsError(f"{path}: datasets.{name}: give {what}")
        if (entry.index_line_bytes is not None) != (source.storage == "files"):
            raise ParamsError(f"{path}: datasets.{name}.index_line_bytes: for file storage (imagenet) only, and needed")
    unknown = sorted(set(compute.datasets) - set(SOURCES))
    if unknown:
        raise ParamsError(f"{path}: datasets: unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}")
    return compute


@dataclass(frozen=True)
class Splits:
    """The images of a prepared dataset's splits, and its classes."""

    train: int
    val: int
    test: int
    classes: int
    exact: bool  # False: split on the totals (per-class rounding unknown: within classes/2 images of the truth)

    @property
    def total(self) -> int:
        return self.train + self.val + self.test


def split_counts(dataset: Dataset, compute: Compute) -> Splits:
    """The train / val / test sizes the prepare stage will give ``dataset`` (an entry of ``datasets``)."""
    if dataset.info.kind == "synthetic":
        k, n = dataset.num_classes, dataset.per_class
        entry = SourceSize(classes=k, source="params", images=k * n, balanced=True)
    else:
        entry = compute.datasets[dataset.source]
    test_fraction = None if entry.test is not None else dataset.test_fraction
    if entry.class_sizes is not None or entry.balanced:
        sizes = entry.class_sizes or (entry.pool // entry.classes,) * entry.classes
        per_class = [split_sizes(c, dataset.val_fraction, test_fraction) for c in sizes]
        test, val, train = (sum(column) for column in zip(*per_class, strict=True))
        exact = True
    else:
        test, val, train = split_sizes(entry.pool, dataset.val_fraction, test_fraction)
        exact = False
    return Splits(train, val, entry.test if entry.test is not None else test, entry.classes, exact)


# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanConfig:
    """What the plan stage reads: the profile it plans (a rehearsal's real profile), every network of its DAG
    (checked by the qkv library) and the reference sizes and rates."""

    params: Params  # the profile planned
    rehearsal: Rehearsal | None  # the record of the rehearsal whose params were given (None: a real profile)
    compute: Compute
    nets: dict[tuple[str, str], Net]  # (backbone, variant) -> network

    def splits(self, dataset: str) -> Splits:
        return split_counts(self.params.datasets[dataset], self.compute)


def load_plan(path: str | Path, compute_path: str | Path) -> PlanConfig:
    """The params file at ``path``, checked as it is; when it is a rehearsal's (a non-null ``rehearsal``
    section), the real profile it records (:func:`.rehearsal.real_profile`), checked in turn. Reads no dataset:
    the roots need not exist."""
    data = read_yaml(path)
    own = from_data(data, str(path), path=path)
    params = own
    if own.rehearsal is not None:
        try:
            real = real_profile(data)
        except KeyError as exc:
            raise ParamsError(
                f"{path}: rehearsal.overrides: {exc.args[0]} is not a key of the profile it rehearses; re-create the "
                "rehearsal's params"
            ) from None
        params = from_data(real, f"{path} (the profile {own.rehearsal.of!r} its rehearsal section records)", path=path)
    nets = {}
    for b, model in params.backbones.items():
        for v in dict.fromkeys((*params.pretrain.variants, *params.finetune.variants, *params.bench.variants)):
            where, at = f"variants.{v}", f"backbones.{b}"
            nets[b, v] = network(model.name, v, params.variants[v], img_size=model.img_size, model=model, where=where,
                                 at=at)  # fmt: skip
    return PlanConfig(params, own.rehearsal, load_compute(compute_path), nets)
