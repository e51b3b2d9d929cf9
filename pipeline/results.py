"""Reading the pipeline's result files for the report, and the statistics and verdicts computed from them.

No torch here: the report stage reads JSON and CSV only and never recomputes a result.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Claim, Published, ReportConfig

__all__ = [
    "RULE",
    "Inputs",
    "Paths",
    "Verdict",
    "load_json",
    "paired",
    "pretraining",
    "read_curves",
    "read_inputs",
    "read_record",
    "summary",
    "transfer",
    "verdict",
    "verdicts",
]


def _read_object(path: Path, what: str) -> dict | None:
    """The JSON object at ``path``, or None when its stage instance has not run; a malformed one is an error
    naming the file."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed or truncated {what} ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def load_json(path: Path, profile: str) -> dict | None:
    """A result file, or None when its stage instance has not run. A malformed file, or one written under
    another profile, is an error naming the file."""
    data = _read_object(path, "result file")
    if data is not None and data.get("profile") != profile:
        raise ValueError(
            f"{path} was written by profile {data.get('profile')!r}, but params.yaml is profile {profile!r}: results "
            "of two profiles are never mixed (re-run the stage, or restore its results)"
        )
    return data


def read_record(path: Path) -> dict | None:
    """A provenance record, or None when its stage instance has not run."""
    return _read_object(path, "provenance file")


def read_curves(path: Path) -> list[dict]:
    """The per-epoch rows of a curves CSV as floats ([] when its instance has not run)."""
    if not path.is_file():
        return []
    try:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(path.read_text().splitlines())]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: malformed curves file ({exc})") from None


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, dof))


def summary(values: list[float], confidence: float) -> dict:
    """n, mean, sample std and a t confidence interval of ``values`` (None where undefined)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def paired(values: dict[int, float], baseline: dict[int, float], confidence: float) -> dict:
    """Summary of ``values[seed] - baseline[seed]`` over the seeds both have."""
    seeds = sorted(set(values) & set(baseline))
    return summary([values[s] - baseline[s] for s in seeds], confidence)


@dataclass(frozen=True)
class Verdict:
    claim: str
    outcome: str  # "reproduced", "not reproduced", "not run at this profile"
    detail: str


RULE = (
    "A claim is tested only when the profile trains on the claim's datasets with the claim's backbone, resolution "
    "and patch size; otherwise it is 'not run at this profile'. A tested claim is 'reproduced' when, for at least "
    "one proposed variant, the {confidence:.0%} confidence interval of the seed-paired difference to the "
    "{baseline} baseline lies above zero and contains the published difference; otherwise 'not reproduced'."
)


def verdict(claim: Claim, *, tested: bool, differences: dict[str, dict]) -> Verdict:
    """The verdict on one published claim from the paired differences (variant -> summary) of this run."""
    published = claim.difference
    if not tested:
        return Verdict(
            claim.id, "not run at this profile", f"needs {claim.backbone} trained on {', '.join(claim.datasets)}"
        )
    matching = [
        v
        for v, d in differences.items()
        if d["ci_low"] is not None and d["ci_low"] > 0 and d["ci_low"] <= published <= d["ci_high"]
    ]
    if matching:
        return Verdict(
            claim.id, "reproduced", f"published +{published:.1f} pp inside the interval of {', '.join(matching)}"
        )
    shown = (
        "; ".join(
            f"{v}: {d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
            for v, d in differences.items()
            if d["ci_low"] is not None
        )
        or "fewer than two paired seeds"
    )
    return Verdict(claim.id, "not reproduced", f"published +{published:.1f} pp; measured {shown}")


# ----------------------------------------------------------------------------------------------------
# The report's inputs, and the statistics of one study.


@dataclass(frozen=True)
class Paths:
    """Where the report reads (patterns with ``{dataset}``, ``{variant}``, ``{seed}``) and writes."""

    published: Path
    assumptions: Path
    flops: Path
    bench: Path
    prepare: str  # metrics JSON of a prepare instance
    pretrain: str  # folder of a pretrain instance
    finetune: str  # folder of a finetune instance
    out: Path

    def pretrain_dir(self, variant: str, seed: int) -> Path:
        return Path(self.pretrain.format(variant=variant, seed=seed))

    def finetune_dir(self, variant: str, dataset: str, seed: int) -> Path:
        return Path(self.finetune.format(variant=variant, dataset=dataset, seed=seed))

    def prepare_metrics(self, dataset: str) -> Path:
        return Path(self.prepare.format(dataset=dataset))


@dataclass(frozen=True)
class Inputs:
    """Every result file the report reads (None or absent: that instance has not run)."""

    flops: dict | None
    bench: dict | None
    prepare: dict[str, dict | None]
    pretrain: dict[tuple[str, int], dict | None]  # (variant, seed) -> metrics
    finetune: dict[tuple[str, str, int], dict | None]  # (variant, dataset, seed) -> metrics


def read_inputs(cfg: ReportConfig, paths: Paths) -> Inputs:
    profile = cfg.profile
    return Inputs(
        load_json(paths.flops, profile),
        load_json(paths.bench, profile),
        {d: load_json(paths.prepare_metrics(d), profile) for d in cfg.datasets},
        {
            (v, s): load_json(paths.pretrain_dir(v, s) / "metrics.json", profile)
            for v in cfg.pretrained
            for s in cfg.seeds
        },
        {
            (v, d, s): load_json(paths.finetune_dir(v, d, s) / "metrics.json", profile)
            for v in cfg.transferred
            for d in cfg.targets
            for s in cfg.seeds
        },
    )


def _accuracies(runs: dict, key: tuple, field: str = "test_top1") -> dict[int, float]:
    """``field`` (test top-1 of the reported weights by default) per seed of the instances whose key starts with
    ``key`` and that have it."""
    return {k[-1]: m[field] for k, m in runs.items() if k[:-1] == key and m is not None and field in m}


def pretraining(cfg: ReportConfig, inputs: Inputs) -> tuple[list[dict], dict[str, dict]]:
    """Per variant: the summary over seeds, the paired difference to the baseline, a run's size; and the
    differences alone (for the verdicts)."""
    confidence, baseline = cfg.report.confidence, cfg.report.baseline
    base = _accuracies(inputs.pretrain, (baseline,))
    rows, differences = [], {}
    for v in cfg.pretrained:
        acc = _accuracies(inputs.pretrain, (v,))
        run = next((m for (vv, _), m in inputs.pretrain.items() if vv == v and m), None)
        diff = paired(acc, base, confidence) if v != baseline else None
        if diff is not None:
            differences[v] = diff
        rows.append(
            {
                "variant": v,
                "embedding": cfg.variants[v].get("qkv_embed", v),
                "backbone": cfg.backbone,
                "params": run["params"] if run else None,
                "gflops": run["gflops"] if run else None,
                "summary": summary(list(acc.values()), confidence),
                "diff": diff,
                # both sets of weights where the run kept an EMA (test_top1 is the recipe's `weights`)
                "raw": summary(list(_accuracies(inputs.pretrain, (v,), "raw_test_top1").values()), confidence),
                "ema": summary(list(_accuracies(inputs.pretrain, (v,), "ema_test_top1").values()), confidence),
                "weights": run.get("weights", "raw") if run else None,
            }
        )
    return rows, differences


def transfer(cfg: ReportConfig, inputs: Inputs) -> list[dict]:
    """Per variant: a summary per target dataset, and of the per-seed averages over the targets."""
    confidence, rows = cfg.report.confidence, []
    for v in cfg.transferred:
        cells, per_seed = [], {}
        for d in cfg.targets:
            acc = _accuracies(inputs.finetune, (v, d))
            cells.append(summary(list(acc.values()), confidence))
            for seed, a in acc.items():
                per_seed.setdefault(seed, []).append(a)
        complete = [sum(a) / len(a) for a in per_seed.values() if len(a) == len(cfg.targets)]
        rows.append({"variant": v, "cells": cells, "average": summary(complete, confidence)})
    return rows


def verdicts(cfg: ReportConfig, published: Published, differences: dict[str, dict]) -> list:
    source = cfg.datasets[cfg.source].source
    return [
        verdict(
            claim,
            tested=claim.kind == "pretrain"
            and source in claim.datasets
            and cfg.backbone == claim.backbone
            and claim.img_size in (None, cfg.img_size)
            and claim.patch in (None, cfg.patch_size),
            differences=differences,
        )
        for claim in published.claims
    ]
