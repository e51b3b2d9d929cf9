"""Reading the pipeline's result files for the report, and the per-backbone, per-variant statistics of a study
(:mod:`pipeline.reporting.stats`); the verdicts on the published claims are :mod:`pipeline.reporting.claims`'.

No torch here: the report stage reads JSON and CSV only and never recomputes a result.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import ReportConfig
from pipeline.reporting import inputs as files
from pipeline.reporting.inputs import BENCH, FINETUNE, FLOPS, PLAN, PREPARE, PRETRAIN, load_json, read_record
from pipeline.reporting.stats import paired, summary

__all__ = [
    "Inputs",
    "Paths",
    "accuracies",
    "pretraining",
    "provenance_rows",
    "read_inputs",
    "transfer",
    "transfer_average",
]


# ----------------------------------------------------------------------------------------------------
# The report's inputs, and the statistics of one study.


@dataclass(frozen=True)
class Paths:
    """Where the report reads (patterns with ``{backbone}``, ``{dataset}``, ``{variant}``, ``{seed}``) and writes."""

    published: Path
    assumptions: Path
    plan: Path  # the params of the profile that can settle the claims (profiles/paper.yaml)
    flops: Path
    bench: Path
    prepare: str  # metrics JSON of a prepare instance
    pretrain: str  # folder of a pretrain instance
    finetune: str  # folder of a finetune instance
    out: Path
    plan_table: Path | None = None  # the plan stage's JSON (results/plan/plan.json)
    lock: Path | None = None  # dvc.lock: the md5 of every output, a curves file's identity

    def pretrain_dir(self, backbone: str, variant: str, seed: int) -> Path:
        return Path(self.pretrain.format(backbone=backbone, variant=variant, seed=seed))

    def finetune_dir(self, backbone: str, variant: str, dataset: str, seed: int) -> Path:
        return Path(self.finetune.format(backbone=backbone, variant=variant, dataset=dataset, seed=seed))

    def prepare_metrics(self, dataset: str) -> Path:
        return Path(self.prepare.format(dataset=dataset))


@dataclass(frozen=True)
class Inputs:
    """Every result file the report reads (None or absent: that instance has not run)."""

    flops: dict | None
    bench: dict | None
    prepare: dict[str, dict | None]
    pretrain: dict[tuple[str, str, int], dict | None]  # (backbone, variant, seed) -> metrics
    finetune: dict[tuple[str, str, str, int], dict | None]  # (backbone, variant, dataset, seed) -> metrics
    plan: dict | None = None  # the cost plan
    curves: dict[tuple[str, str, int], list[dict]] = field(default_factory=dict)  # pretraining's, as metrics


def remedy(instance: str, path: Path) -> str:
    """What to do about a bad result file ``path`` of ``instance``."""
    return f"re-run it: dvc repro --force {instance} (or restore it: git checkout -- {path})"


def read_inputs(cfg: ReportConfig, paths: Paths) -> Inputs:
    """Every result file of the study, each checked (:mod:`pipeline.reporting.inputs`)."""
    profile, models = cfg.profile, {b: m.name for b, m in cfg.backbones.items()}

    def trained(stage: str, folder: Path, b: str, v: str, s: int, d: str) -> dict | None:
        name = f"{stage}@{b}-{v}-{s}" if stage == "pretrain" else f"{stage}@{b}-{v}-{d}-{s}"
        instance = {"stage": stage, "backbone": b, "model": models[b], "variant": v, "seed": s, "dataset": d}
        schema = PRETRAIN if stage == "pretrain" else FINETUNE
        path = folder / "record.json"
        return load_json(path, profile, schema, instance, remedy=remedy(name, path))

    def single(stage: str, path: Path | None, schema: dict, instance: dict | None = None) -> dict | None:
        return load_json(path, profile, schema, instance, remedy=remedy(stage, path)) if path else None

    pretrain = {
        (b, v, s): trained("pretrain", paths.pretrain_dir(b, v, s), b, v, s, cfg.source)
        for b in cfg.backbones
        for v in cfg.pretrained
        for s in cfg.seeds
    }
    finetune = {
        (b, v, d, s): trained("finetune", paths.finetune_dir(b, v, d, s), b, v, s, d)
        for b in cfg.backbones
        for v in cfg.transferred
        for d in cfg.targets
        for s in cfg.seeds
    }
    bench = single("bench", paths.bench, BENCH)
    if bench is not None:
        files.bench_names(paths.bench, bench, remedy("bench", paths.bench))
    return Inputs(
        single("flops", paths.flops, FLOPS),
        bench,
        {d: single(f"prepare@{d}", paths.prepare_metrics(d), PREPARE, {"dataset": d}) for d in cfg.datasets},
        pretrain,
        finetune,
        single("plan", paths.plan_table, PLAN),
        _curves(cfg, paths, pretrain),
    )


def _curves(cfg: ReportConfig, paths: Paths, pretrain: dict) -> dict[tuple[str, str, int], list[dict]]:
    """The curves of every pretraining run that finished, each tied to its metrics; the seeds of one backbone and
    variant checked to record the same layers."""
    names = {key: "pretrain@{}-{}-{}".format(*key) for key in pretrain}
    others = {names[key]: m for key, m in pretrain.items()}
    lock = files.lock_outputs(paths.lock) if paths.lock else {}
    curves = {}
    for key, metrics in pretrain.items():
        path = paths.pretrain_dir(*key) / "curves.csv"
        fix = remedy(names[key], path)
        curves[key] = files.read_curves(path, names[key], metrics, remedy=fix, others=others, lock=lock)
    for b in cfg.backbones:
        for v in cfg.pretrained:
            runs = [
                (path, pretrain[b, v, s], remedy(names[b, v, s], path))
                for s in cfg.seeds
                if pretrain[b, v, s] is not None
                for path in [paths.pretrain_dir(b, v, s) / "record.json"]
            ]
            if runs:
                files.same_layers(runs)
    return curves


def accuracies(runs: dict, key: tuple, field: str = "test_top1") -> dict[int, float]:
    """``field`` (test top-1 of the reported weights by default) per seed of the instances whose key starts with
    ``key`` and that have it."""
    return {k[-1]: m[field] for k, m in runs.items() if k[:-1] == key and m is not None and field in m}


def pretraining(cfg: ReportConfig, inputs: Inputs) -> list[dict]:
    """Per backbone and variant: the summary over seeds, the paired difference to the baseline (None for the
    baseline itself), both weights' accuracies and a run's size."""
    confidence, baseline = cfg.report.confidence, cfg.report.baseline
    rows = []
    for b, model in cfg.backbones.items():
        base = accuracies(inputs.pretrain, (b, baseline))
        for v in cfg.pretrained:
            acc = accuracies(inputs.pretrain, (b, v))
            run = next((m for (bb, vv, _), m in inputs.pretrain.items() if (bb, vv) == (b, v) and m), None)
            rows.append(
                {
                    "backbone": b,
                    "label": model.backbone,
                    "variant": v,
                    "embedding": cfg.variants[v].get("qkv_embed", v),
                    "params": run["params"] if run else None,
                    "gflops": run["gflops"] if run else None,
                    "summary": summary(list(acc.values()), confidence),
                    "diff": paired(acc, base, confidence) if v != baseline else None,
                    # both sets of weights where the run kept an EMA (test_top1 is the recipe's `weights`)
                    "raw": summary(list(accuracies(inputs.pretrain, (b, v), "raw_test_top1").values()), confidence),
                    "ema": summary(list(accuracies(inputs.pretrain, (b, v), "ema_test_top1").values()), confidence),
                    "weights": run.get("weights", "raw") if run else None,
                }
            )
    return rows


def transfer_average(inputs: Inputs, backbone: str, variant: str, targets: tuple[str, ...]) -> dict[int, float]:
    """Per seed, the mean test top-1 over ``targets``, for the seeds that have every one of them."""
    per_seed: dict[int, list[float]] = {}
    for d in targets:
        for seed, a in accuracies(inputs.finetune, (backbone, variant, d)).items():
            per_seed.setdefault(seed, []).append(a)
    return {s: sum(a) / len(a) for s, a in per_seed.items() if len(a) == len(targets)}


def transfer(cfg: ReportConfig, inputs: Inputs) -> list[dict]:
    """Per backbone and variant: a summary and a seed-paired difference to the baseline per target dataset,
    and the same of the per-seed averages over the targets."""
    confidence, baseline, rows = cfg.report.confidence, cfg.report.baseline, []
    for b in cfg.backbones:
        for v in cfg.transferred:
            cells, diffs = [], []
            for d in cfg.targets:
                acc, base = (accuracies(inputs.finetune, (b, x, d)) for x in (v, baseline))
                cells.append(summary(list(acc.values()), confidence))
                diffs.append(paired(acc, base, confidence) if v != baseline else None)
            average = transfer_average(inputs, b, v, cfg.targets)
            base_average = transfer_average(inputs, b, baseline, cfg.targets)
            rows.append(
                {
                    "backbone": b,
                    "variant": v,
                    "cells": cells,
                    "diffs": diffs,
                    "average": summary(list(average.values()), confidence),
                    "average_diff": paired(average, base_average, confidence) if v != baseline else None,
                }
            )
    return rows


def provenance_rows(cfg: ReportConfig, paths: Paths, inputs: Inputs) -> list[list[str]]:
    """Where every stage instance's result came from, from its provenance record."""
    stages = [
        ("flops", paths.flops.with_name("provenance.json"), None),
        ("bench", paths.bench.with_name("provenance.json"), None),
        *[(f"prepare@{d}", paths.prepare_metrics(d).with_suffix(".provenance.json"), d) for d in cfg.datasets],
        *[
            (f"pretrain@{b}-{v}-{s}", paths.pretrain_dir(b, v, s) / "provenance.json", cfg.source)
            for b in cfg.backbones
            for v in cfg.pretrained
            for s in cfg.seeds
        ],
        *[
            (f"finetune@{b}-{v}-{d}-{s}", paths.finetune_dir(b, v, d, s) / "provenance.json", d)
            for b in cfg.backbones
            for v in cfg.transferred
            for d in cfg.targets
            for s in cfg.seeds
        ],
    ]
    rows = []
    for name, path, dataset in stages:
        record = read_record(path, name)
        if record is None:
            rows.append([name, "not run", "", "", "", "", ""])
            continue
        params_hash = hashlib.sha256(json.dumps(record.get("params"), sort_keys=True).encode()).hexdigest()[:12]
        content = (inputs.prepare.get(dataset) or {}).get("content_hash", "n/a")[:19] if dataset else "n/a"
        packages = record.get("packages", {})
        rows.append(
            [
                name,
                (record.get("params") or {}).get("profile", "?"),
                params_hash,
                (record.get("git_commit") or "?")[:10] + _code_state(record),
                f"torch {packages.get('torch', '?')}, timm {packages.get('timm', '?')}",
                record.get("hardware", {}).get("cpu", "?"),
                content,
            ]
        )
    return rows


def _code_state(record: dict) -> str:
    """Whether the stage's code and params differed from the commit when it ran (its dependencies only)."""
    changed = record.get("code_changed")
    if changed is None:
        return " (code state unknown)"
    return f" (+{len(record.get('changed_files') or [])} changed file(s))" if changed else ""
