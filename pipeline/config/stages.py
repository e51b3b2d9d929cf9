"""One loader per stage, each returning one named object: the params of one stage instance and nothing else.

Every loader first parses and checks the whole params file (:func:`.params.load`), then selects what its
instance uses. The objects' fields are the keys its stage lists under ``params:`` in dvc.yaml (plus, for
training, the ``runtime`` settings, which change how a run executes, never what it computes), so a stage can
only be influenced by what DVC tracks for it.

A variant's ``qkv_*`` options are turned into the library's own :class:`qkv.EmbedConfig` here, once, by
:func:`network`, and travel on as that object to ``timm.create_model(..., qkv_config=...)``. :func:`network`
imports the library (hence torch): the loaders of the stages that run torch call it, for every variant; the
report's and the audit's never do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config.datasets import Dataset
from pipeline.config.params import Audit, Bench, Params, Report, load
from pipeline.config.rehearsal import Rehearsal
from pipeline.config.schema import ParamsError
from pipeline.config.sections import Model, Recipe, Runtime

if TYPE_CHECKING:
    from qkv import EmbedConfig, XcitArch


@dataclass(frozen=True)
class Net:
    """A network to build: a backbone with one variant's Q/K/V embedding, both checked by the qkv library."""

    name: str  # the registered qkv_xcit_* model
    variant: str  # the variant key (or forensics reading)
    embed: EmbedConfig
    class_attn: bool  # also change the class-attention blocks
    arch: XcitArch  # the backbone's hyper-parameters, overrides applied
    img_size: int
    drop_path_rate: float = 0.0
    overrides: tuple[tuple[str, int], ...] = ()  # timm arguments overriding the registered model's

    def timm_kwargs(self, num_classes: int) -> dict:
        """The arguments of ``timm.create_model(self.name, **...)``."""
        return {
            "num_classes": num_classes,
            "img_size": self.img_size,
            "drop_path_rate": self.drop_path_rate,
            **dict(self.overrides),
            "qkv_config": self.embed,
            "qkv_class_attn": self.class_attn,
        }


def network(
    name: str, variant: str, options: dict, *, img_size: int, model: Model | None = None, where: str, at: str = ""
) -> Net:
    """Check ``options`` (a variant's ``qkv_*`` options) and the backbone with the qkv library and return them
    as a :class:`Net`; ``model`` (an entry of ``backbones``, at params key ``at``) adds its overrides and drop
    path."""
    import qkv  # torch: the torch stages' loaders call this, the report's never does

    overrides = model.arch_overrides() if model else {}
    try:
        embed, class_attn = qkv.split_model_options(options)
    except ValueError as exc:
        raise ParamsError(f"{where}: {exc}") from None
    try:
        arch = qkv.model_arch(name, **overrides)
        if arch.embed_dim % arch.num_heads:
            raise ValueError(f"embed_dim={arch.embed_dim} is not divisible by num_heads={arch.num_heads}")
    except ValueError as exc:
        raise ParamsError(f"{at if model else where}: {exc}") from None
    try:
        embed.hidden_width(arch.embed_dim)  # a hidden ratio must give a whole number of units
    except ValueError as exc:
        raise ParamsError(f"{where}: {exc}") from None
    return Net(
        name,
        variant,
        embed,
        class_attn,
        arch,
        img_size,
        model.drop_path_rate if model else 0.0,
        tuple(sorted(overrides.items())),
    )


def _load_checked(path: str | Path) -> Params:
    """:func:`.params.load`, plus what only the qkv library can check: every variant's options on the model
    section, every flops model and every forensics reading. Every torch stage's loader uses it, so the first
    stage ``dvc repro`` runs refuses a variant that only a later stage would build."""
    params = load(path)
    for backbone in params.backbones:
        for variant in params.variants:
            _model_net(params, backbone, variant)
    for name in params.flops.models:
        network(name, "", {}, img_size=params.flops.img_size, where="flops.models")
    forensics = params.forensics
    for name, options in forensics.readings.items():
        network(forensics.model, name, options, img_size=forensics.img_size, where=f"forensics.readings.{name}")
    from timm.optim import list_optimizers

    for stage, recipe in (("pretrain", params.pretrain.recipe), ("finetune", params.finetune.recipe)):
        if recipe.opt.lower() not in list_optimizers():
            raise ParamsError(f"{stage}.recipe.opt: {recipe.opt!r} is not one of timm's optimizers (e.g. adamw, sgd)")
    return params


def _model_net(params: Params, backbone: str, variant: str) -> Net:
    model = params.backbones[backbone]
    options = params.variants[variant]
    where, at = f"variants.{variant}", f"backbones.{backbone}"
    return network(model.name, variant, options, img_size=model.img_size, model=model, where=where, at=at)


def _listed(where: str, value, listed: tuple) -> None:
    if value not in listed:
        raise ParamsError(f"{where}: {value!r} is not listed; listed: {', '.join(map(str, listed))}")


# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareConfig:
    profile: str
    name: str  # the entry of `datasets`
    dataset: Dataset


def load_prepare(path: str | Path, dataset: str) -> PrepareConfig:
    params = _load_checked(path)
    _listed("datasets", dataset, tuple(params.datasets))
    return PrepareConfig(params.profile, dataset, params.datasets[dataset])


@dataclass(frozen=True)
class Count:
    """One configuration the flops stage counts."""

    section: str  # "main" or "forensics"
    net: Net
    num_classes: int


@dataclass(frozen=True)
class FlopsConfig:
    profile: str
    counts: tuple[Count, ...]
    rel_tol: float


def load_flops(path: str | Path) -> FlopsConfig:
    params = _load_checked(path)
    flops, forensics = params.flops, params.forensics
    counts = [
        Count("main", network(m, v, params.variants[v], img_size=flops.img_size, where=f"variants.{v}"), k)
        for m in flops.models
        for k in flops.num_classes
        for v in flops.variants
    ]
    counts += [
        Count(
            "forensics", network(forensics.model, r, o, img_size=forensics.img_size, where=f"forensics.readings.{r}"), k
        )
        for k in forensics.num_classes
        for r, o in forensics.readings.items()
    ]
    return FlopsConfig(params.profile, tuple(counts), flops.rel_tol)


@dataclass(frozen=True)
class TrainConfig:
    """One training instance: ``pretrain@<variant>-<seed>`` or ``finetune@<variant>-<dataset>-<seed>``."""

    stage: str  # "pretrain" or "finetune"
    profile: str
    backbone: str  # the entry of `backbones`
    net: Net  # variants.<variant> on backbones.<backbone>
    seed: int
    dataset: str  # the prepared dataset it trains on
    recipe: Recipe  # pretrain.recipe or finetune.recipe
    device: str  # "cpu" or "cuda"
    runtime: Runtime  # how it runs, never what it computes (not hashed by DVC)
    pretrained_weights: str | None = None  # finetune: which pretrained weights it starts from (raw or ema)

    @property
    def name(self) -> str:
        """The DVC stage instance."""
        middle = f"-{self.dataset}" if self.stage == "finetune" else ""
        return f"{self.stage}@{self.backbone}-{self.net.variant}{middle}-{self.seed}"


def load_pretrain(path: str | Path, backbone: str, variant: str, seed: int) -> TrainConfig:
    params = _load_checked(path)
    _listed("backbones", backbone, tuple(params.backbones))
    _listed("pretrain.variants", variant, params.pretrain.variants)
    _listed("seeds", seed, params.seeds)
    pre, net = params.pretrain, _model_net(params, backbone, variant)
    return TrainConfig(
        "pretrain", params.profile, backbone, net, seed, pre.dataset, pre.recipe, params.device, params.runtime
    )


def load_finetune(path: str | Path, backbone: str, variant: str, dataset: str, seed: int) -> TrainConfig:
    params = _load_checked(path)
    _listed("backbones", backbone, tuple(params.backbones))
    _listed("finetune.variants", variant, params.finetune.variants)
    _listed("finetune.datasets", dataset, params.finetune.datasets)
    _listed("seeds", seed, params.seeds)
    net = _model_net(params, backbone, variant)
    recipe, init = params.finetune.recipe, params.pretrain.recipe.weights
    return TrainConfig(
        "finetune", params.profile, backbone, net, seed, dataset, recipe, params.device, params.runtime, init
    )


@dataclass(frozen=True)
class BenchConfig:
    profile: str
    backbone: str  # bench.backbone
    nets: tuple[Net, ...]  # bench.variants on backbones.<bench.backbone>
    dataset: str  # pretrain.dataset: the loader is timed on it
    recipe: Recipe  # pretrain.recipe: the step timed is the pretraining step
    device: str
    bench: Bench


def load_bench(path: str | Path) -> BenchConfig:
    params = _load_checked(path)
    backbone = params.bench.backbone
    nets = tuple(_model_net(params, backbone, v) for v in params.bench.variants)
    pre = params.pretrain
    return BenchConfig(params.profile, backbone, nets, pre.dataset, pre.recipe, params.device, params.bench)


@dataclass(frozen=True)
class ReportConfig:
    """What the report reads from params: which instances exist and how the study is set up. Torch-free."""

    profile: str
    variants: dict[str, dict]  # the qkv_* options as written (for the assumption register)
    backbones: dict[str, Model]  # the backbone axis
    seeds: tuple[int, ...]
    datasets: dict[str, Dataset]
    source: str  # pretrain.dataset
    pretrained: tuple[str, ...]  # pretrain.variants
    targets: tuple[str, ...]  # finetune.datasets
    transferred: tuple[str, ...]  # finetune.variants
    forensics_model: str  # forensics.model
    forensics_img_size: int  # forensics.img_size
    report: Report
    rehearsal: Rehearsal | None = None  # set in a rehearsal's params: the report labels every page and table


def load_report(path: str | Path) -> ReportConfig:
    p = load(path)
    return ReportConfig(
        p.profile,
        p.variants,
        p.backbones,
        p.seeds,
        p.datasets,
        p.pretrain.dataset,
        p.pretrain.variants,
        p.finetune.datasets,
        p.finetune.variants,
        p.forensics.model,
        p.forensics.img_size,
        p.report,
        p.rehearsal,
    )


def load_audit(path: str | Path) -> Audit:
    return load(path).audit


def instances(path: str | Path) -> list[tuple[str, object]]:
    """Every stage instance of the DAG with its loaded config, through the stage loaders (what ``make profile``
    validates before switching)."""
    params = load(path)
    out: list[tuple[str, object]] = [(f"prepare@{d}", load_prepare(path, d)) for d in params.datasets]
    out.append(("flops", load_flops(path)))
    for b in params.backbones:
        for v in params.pretrain.variants:
            for s in params.seeds:
                out.append((f"pretrain@{b}-{v}-{s}", load_pretrain(path, b, v, s)))
        for v in params.finetune.variants:
            for d in params.finetune.datasets:
                for s in params.seeds:
                    out.append((f"finetune@{b}-{v}-{d}-{s}", load_finetune(path, b, v, d, s)))
    out += [("bench", load_bench(path)), ("report", load_report(path)), ("audit", load_audit(path))]
    return out
