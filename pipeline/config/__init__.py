"""Everything the pipeline reads from ``params.yaml`` and ``references/``, parsed and checked in one place.

``schema``     typed YAML parsing (unknown keys, types, names) shared by the modules below;
``sections``   the data, model, recipe and runtime sections;
``determinism`` what a training run promises about a re-run, by device and ``runtime.gpu_kernels``;
``params``     the counting, timing, report and audit sections, the whole file (:class:`Params`) and its
               cross-section rules;
``stages``     one loader per stage, returning one named object with exactly what that stage uses;
``rehearsal`` which keys a rehearsal of a GPU profile may override, and its record of them;
``references`` the published numbers and the assumption register the report cites;
``cluster``    where and with what resources the stage instances run as jobs (pipeline.cluster);
``compute``    the dataset sizes and GPU rates the cost plan cites, and the plan stage's loader.

Importing this package never imports torch; only the torch stages' loaders call the qkv library, lazily.
"""

from pipeline.config.cluster import Cluster, Resources
from pipeline.config.compute import (
    Compute,
    GpuReference,
    PlanConfig,
    SourceSize,
    Splits,
    load_compute,
    load_plan,
    split_counts,
)
from pipeline.config.datasets import SOURCES, Dataset, Source
from pipeline.config.params import Audit, Bench, Flops, Forensics, Params, Plan, Report, Targets, from_data, load
from pipeline.config.references import Assumption, Claim, Published, XcitResult, load_assumptions, load_published
from pipeline.config.rehearsal import DATA_KNOBS, SIZE_KNOBS, Rehearsal, get_key, is_knob, put_key, real_profile
from pipeline.config.schema import NAME_PATTERN, ParamsError, read_yaml
from pipeline.config.sections import BACKBONES, Augment, Finetune, Model, Pretrain, Recipe, Runtime, backbone_label
from pipeline.config.stages import (
    BenchConfig,
    Count,
    FlopsConfig,
    Net,
    PrepareConfig,
    ReportConfig,
    TrainConfig,
    instances,
    load_audit,
    load_bench,
    load_finetune,
    load_flops,
    load_prepare,
    load_pretrain,
    load_report,
    network,
)

__all__ = [
    "Cluster",
    "Resources",
    "DATA_KNOBS",
    "SIZE_KNOBS",
    "Rehearsal",
    "get_key",
    "is_knob",
    "put_key",
    "real_profile",
    "BACKBONES",
    "NAME_PATTERN",
    "SOURCES",
    "Assumption",
    "Audit",
    "Augment",
    "Bench",
    "BenchConfig",
    "Claim",
    "Compute",
    "Count",
    "Dataset",
    "Finetune",
    "Flops",
    "FlopsConfig",
    "Forensics",
    "GpuReference",
    "Model",
    "Net",
    "Params",
    "ParamsError",
    "Plan",
    "PlanConfig",
    "PrepareConfig",
    "Pretrain",
    "Published",
    "Recipe",
    "Report",
    "ReportConfig",
    "Runtime",
    "Source",
    "SourceSize",
    "Splits",
    "Targets",
    "TrainConfig",
    "XcitResult",
    "backbone_label",
    "from_data",
    "instances",
    "load",
    "load_assumptions",
    "load_audit",
    "load_bench",
    "load_compute",
    "load_finetune",
    "load_flops",
    "load_plan",
    "load_prepare",
    "load_pretrain",
    "load_published",
    "load_report",
    "network",
    "read_yaml",
    "split_counts",
]
