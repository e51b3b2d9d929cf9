"""The verdict on each published claim, and what settling it needs.

A claim (``references/published.yaml``) is about one backbone at one setting, measured on some datasets: the
ImageNet top-1 of pretraining, or the average transfer top-1 over four targets. It is *tested* by the entry of
``backbones`` with the claim's backbone, patch size and resolution when the profile pretrains on the claim's
dataset (pretraining claims) or pretrains on ``pretrained_on`` and fine-tunes on every one of the claim's
datasets (transfer claims). The same rule judges both kinds, on seed-paired differences to the baseline.

For every claim the report also says what it needs (:mod:`pipeline.reporting.stats`): the seed spread of the paired
difference, the smallest difference the seeds can detect, and the seeds the published difference would need.
For a claim this profile does not test, the same is computed with the settings of the profile that can test it
(``profiles/paper.yaml``: its seeds, confidence and power) and the best spread this run offers, labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import Claim, Params, Published, ReportConfig
from pipeline.reporting.results import Inputs, accuracies, transfer_average
from pipeline.reporting.stats import detectable, paired, pooled_sd, seeds_needed

__all__ = ["RULE", "Needs", "Verdict", "judge", "tested_by", "verdict", "why_untested"]

RULE = (
    "A claim is tested only when the profile trains the claim's backbone at the claim's resolution and patch size on "
    "the claim's datasets (transfer claims: pretrained on the claim's source, fine-tuned on all its targets, averaged "
    "per seed); otherwise it is 'not run at this profile'. A tested claim is 'reproduced' when, for at least one "
    "proposed variant, the {confidence:.0%} confidence interval of the seed-paired difference to the {baseline} "
    "baseline lies above zero and contains the published difference; otherwise 'not reproduced'."
)


@dataclass(frozen=True)
class Needs:
    """What settling a claim takes: the seed spread of its paired difference and what that many seeds detect."""

    sd: float | None  # standard deviation over seeds of the paired difference (pooled over proposed variants)
    sd_source: str  # where ``sd`` comes from
    n: int  # seeds of the run judged (or planned)
    n_source: str  # "this run" or the planning profile
    detectable: float | None  # smallest true difference n seeds detect with the report's power
    seeds_needed: int | None  # seeds the published difference needs at that power


@dataclass(frozen=True)
class Verdict:
    claim: str
    outcome: str  # "reproduced", "not reproduced", "not run at this profile"
    detail: str
    backbone: str | None = None  # the entry of backbones that tested it
    differences: dict | None = None  # variant -> summary of the paired difference
    needs: Needs | None = None
    why: str = ""  # a claim this profile does not test: what the profile lacks (:func:`why_untested`)


def verdict(claim: Claim, *, tested: bool, differences: dict[str, dict]) -> Verdict:
    """The verdict on one published claim from the paired differences (variant -> summary) of this run."""
    published = claim.difference
    if not tested:
        where = f"pretrained on {claim.pretrained_on}, fine-tuned on " if claim.pretrained_on else "trained on "
        return Verdict(
            claim.id, "not run at this profile", f"needs {claim.backbone} {where}{', '.join(claim.datasets)}"
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


def tested_by(claim: Claim, cfg: ReportConfig) -> tuple[str, tuple[str, ...]] | None:
    """The entry of ``backbones`` that tests ``claim`` and the datasets it is measured on (the pretraining
    source, or the fine-tuning targets of the claim's datasets), or None when this profile does not test it."""
    sources = {name: d.source for name, d in cfg.datasets.items()}
    if claim.kind == "pretrain":
        ok, datasets = sources[cfg.source] in claim.datasets, (cfg.source,)
    else:
        datasets = tuple(t for t in cfg.targets if sources[t] in claim.datasets)
        covered = {sources[t] for t in datasets} == set(claim.datasets)
        ok = covered and sources[cfg.source] == claim.pretrained_on
    if not ok:
        return None
    for key, model in cfg.backbones.items():
        label, patch, img_size = model.setting
        if label == claim.backbone and claim.patch in (None, patch) and claim.img_size in (None, img_size):
            return key, datasets
    return None


def why_untested(claim: Claim, cfg: ReportConfig) -> str:
    """What this profile lacks to test ``claim`` (the conditions of :func:`tested_by` it misses), in one line."""
    sources = {name: d.source for name, d in cfg.datasets.items()}
    lacks = []
    if claim.kind == "pretrain" and sources[cfg.source] not in claim.datasets:
        lacks.append(f"pretrains on {cfg.source}, not {' or '.join(claim.datasets)}")
    if claim.kind == "transfer":
        if sources[cfg.source] != claim.pretrained_on:
            lacks.append(f"pretrains on {cfg.source}, not {claim.pretrained_on}")
        missing = [d for d in claim.datasets if d not in {sources[t] for t in cfg.targets}]
        if missing:
            lacks.append(f"does not fine-tune on {', '.join(missing)}")
    wanted = (
        claim.backbone
        + (f"/{claim.patch}" if claim.patch else "")
        + (f" at {claim.img_size} px" if claim.img_size else "")
    )
    matching = [
        key
        for key, m in cfg.backbones.items()
        if m.backbone == claim.backbone and claim.patch in (None, m.patch_size) and claim.img_size in (None, m.img_size)
    ]
    if not matching:
        have = ", ".join(f"{k}: {m.backbone}/{m.patch_size} at {m.img_size} px" for k, m in cfg.backbones.items())
        lacks.append(f"has no {wanted} backbone ({have})")
    return f"profile {cfg.profile} " + "; ".join(lacks or ["does not test it"])


def _differences(kind: str, cfg: ReportConfig, inputs: Inputs, backbone: str, datasets: tuple) -> dict:
    """Proposed variant -> summary of its seed-paired difference to the baseline on what a claim of ``kind``
    measures (pretraining top-1, or the per-seed average over ``datasets`` after transfer)."""
    baseline, confidence = cfg.report.baseline, cfg.report.confidence
    if kind == "pretrain":
        per_variant = {v: accuracies(inputs.pretrain, (backbone, v)) for v in cfg.pretrained}
    else:
        per_variant = {v: transfer_average(inputs, backbone, v, datasets) for v in cfg.transferred}
    base = per_variant.get(baseline, {})
    return {v: paired(acc, base, confidence) for v, acc in per_variant.items() if v != baseline}


def judge(cfg: ReportConfig, published: Published, inputs: Inputs, plan: Params) -> list[Verdict]:
    """The verdict on every published claim, with what it needs; ``plan`` is the profile that can settle the
    claims this one does not test."""
    report, out = cfg.report, []
    spreads = {  # every paired difference of this run, by kind: the best estimate of seed spread it offers
        kind: [d for b in cfg.backbones for d in _differences(kind, cfg, inputs, b, cfg.targets).values()]
        for kind in ("pretrain", "transfer")
    }
    for claim in published.claims:
        found = tested_by(claim, cfg)
        if found is None:
            out.append((claim, verdict(claim, tested=False, differences={}), None))
            continue
        differences = _differences(claim.kind, cfg, inputs, *found)
        out.append((claim, verdict(claim, tested=True, differences=differences), (found[0], differences)))
    verdicts = []
    for claim, v, found in out:
        if found is not None:
            sd, n = pooled_sd(list(found[1].values()))
            needs = Needs(
                sd,
                "this run" if sd is not None else "fewer than two paired seeds",
                n,
                "this run",
                detectable(sd, n, report.confidence, report.power),
                seeds_needed(sd, claim.difference, report.confidence, report.power),
            )
            verdicts.append(Verdict(v.claim, v.outcome, v.detail, found[0], found[1], needs))
            continue
        needs = _planned(claim, cfg, plan, spreads)
        verdicts.append(Verdict(v.claim, v.outcome, v.detail, needs=needs, why=why_untested(claim, cfg)))
    return verdicts


def _planned(claim: Claim, cfg: ReportConfig, plan: Params, spreads: dict[str, list[dict]]) -> Needs:
    """What a claim this profile does not test would need at ``plan``'s settings, with this run's spread of the
    same kind of difference as the best estimate available (or none)."""
    sd, _ = pooled_sd(spreads.get(claim.kind, []))
    kind = "pretraining" if claim.kind == "pretrain" else "transfer-average"
    source = (
        f"estimated from this run's {kind} differences (profile {cfg.profile}, not the claim's setting)"
        if sd is not None
        else f"no estimate: this run has no {kind} difference over two or more seeds"
    )
    rep, n = plan.report, len(plan.seeds)
    return Needs(
        sd,
        source,
        n,
        f"profile {plan.profile}",
        detectable(sd, n, rep.confidence, rep.power),
        seeds_needed(sd, claim.difference, rep.confidence, rep.power),
    )
