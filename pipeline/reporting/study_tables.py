"""The report's tables of the study and of the claims: the claims at a glance (the page's first screen),
pretraining (the main table), transfer, the verdicts and what each claim needs. Plain data in (rows of
:mod:`pipeline.reporting.results`, verdicts of :mod:`pipeline.reporting.claims`, claims of
``references/published.yaml``), a :class:`pipeline.reporting.tables.Table` out."""

from __future__ import annotations

from pipeline.config import Claim, Params, Report
from pipeline.reporting.tables import Table, fmt, hours, interval, mean_std

__all__ = ["claims", "main", "needs", "transfer", "verdicts"]


def _both_weights(row: dict) -> str:
    """Both accuracies of runs that kept an EMA, marking the one reported; "no EMA" otherwise."""
    if not row["ema"]["n"]:
        return "no EMA"
    return f"raw {fmt(row['raw']['mean'])}, EMA {fmt(row['ema']['mean'])} (reported: {row['weights']})"


def _published(claim: Claim | None, baseline: bool) -> str:
    if claim is None:
        return "not published"
    return f"{claim.baseline:g}" if baseline else f"{claim.proposed:g} (structure not stated)"


def _delta(diff: dict | None) -> str:
    """A seed-paired difference and its interval; "baseline" for the baseline itself."""
    if diff is None:
        return "baseline"
    return f"{fmt(diff['mean'], signed=True)} {interval(diff, signed=True)}" if diff["n"] else "not run"


def _sources(claims: dict[str, Claim | None]) -> str:
    return "; ".join(sorted({c.source for c in claims.values() if c is not None}))


def main(
    rows: list[dict],
    *,
    claims: dict[str, Claim | None],
    baseline: str,
    run_label: str,
    source: str,
    confidence: float,
) -> Table:
    """The ImageNet claims' columns beside this run's pretraining. ``rows``: per backbone and variant
    (:func:`pipeline.reporting.results.pretraining`); ``claims``: the pretraining claim about each backbone, if any."""
    body = [
        [
            r["backbone"],
            r["variant"],
            r["embedding"],
            fmt(r["params"] / 1e6, 3) if r["params"] is not None else "not run",
            fmt(r["gflops"], 4) if r["gflops"] is not None else "not run",
            _published(claims.get(r["backbone"]), r["variant"] == baseline),
            mean_std(r["summary"]),
            interval(r["summary"]),
            _delta(r["diff"]),
            _both_weights(r),
        ]
        for r in rows
    ]
    cited = _sources(claims)
    return Table(
        "main",
        "Main table: the ImageNet claims (published) and this run (reproduced)",
        [
            "backbone",
            "variant",
            "embedding",
            "params (M, this run)",
            "GFLOPs (this run)",
            "published ImageNet-1k top-1",
            f"reproduced top-1 ({run_label}), mean ± std",
            f"{confidence:.0%} CI",
            f"Δ vs {baseline}, paired by seed [CI]",
            "raw / EMA weights' top-1",
        ],
        body,
        (f"Published: {cited} (which structure gave the proposed number is not stated). " if cited else "")
        + f"Reproduced: test top-1 of this profile's runs on {source}",
    )


def transfer(
    rows: list[dict], *, datasets: tuple[str, ...], claims: dict[str, Claim | None], baseline: str, confidence: float
) -> Table:
    """Transfer accuracy per target and averaged, each with its seed-paired difference to the baseline.
    ``rows``: per backbone and variant (:func:`pipeline.reporting.results.transfer`)."""

    def cell(summary: dict, diff: dict | None) -> str:
        return mean_std(summary) + ("" if diff is None or not summary["n"] else f"; Δ {_delta(diff)}")

    body = [
        [
            r["backbone"],
            r["variant"],
            *(cell(s, d) for s, d in zip(r["cells"], r["diffs"], strict=True)),
            cell(r["average"], r["average_diff"]),
            _published(claims.get(r["backbone"]), r["variant"] == baseline),
        ]
        for r in rows
    ]
    cited = _sources(claims)
    return Table(
        "transfer",
        "Transfer: test top-1 per target dataset, and the average over the targets",
        ["backbone", "variant", *datasets, "average (per seed, then over seeds)", "published average"],
        body,
        (f"Published: {cited}, averaged over CIFAR-10, CIFAR-100, Stanford Cars and STL-10. " if cited else "")
        + f"Reproduced: mean ± std over seeds; Δ: seed-paired difference to {baseline} [{confidence:.0%} CI]; "
        + f"this profile's targets: {', '.join(datasets)}.",
    )


def claims(
    outcomes: list,
    published: tuple[Claim, ...],
    *,
    baseline: str,
    confidence: float,
    plan: Params,
    cost: dict | None,
) -> Table:
    """The first screen: per published claim its difference as published (cited), what this run measured or why it
    could not, the verdict, the seeds the published difference needs
    (:class:`pipeline.reporting.claims.Needs`) and the device-hours of the claim's stages in the cost plan
    (``cost``: the plan stage's JSON, or None); ``plan``: the profile that can test what this one does not."""
    by_id = {c.id: c for c in published}
    rows = [
        [
            f"{v.claim}: {by_id[v.claim].claim}",
            f"{by_id[v.claim].difference:+.1f} pp ({by_id[v.claim].source})",
            f"not measured: {v.why}" if v.backbone is None else _measured(v),
            v.outcome if v.backbone is None else f"{v.outcome}: {v.detail}",
            _seeds(v.needs),
            _compute(v.backbone, by_id[v.claim].kind, cost, plan.profile),
        ]
        for v in outcomes
    ]
    return Table(
        "claims",
        "Claims",
        [
            "claim",
            "published Δ (source)",
            f"this run: Δ vs {baseline}, paired by seed [{confidence:.0%} CI]",
            "verdict",
            "seeds the published Δ needs",
            "compute: the claim's stages in the cost plan",
        ],
        rows,
        "Published Δ: the proposed minus the baseline top-1 as published (references/published.yaml). This run: per "
        "proposed variant of the backbone that tests the claim, the seed-paired difference to the baseline on what "
        "the claim measures (ImageNet top-1, or the transfer average). Seeds: the fewest whose interval clears zero "
        "at the published Δ with the power of this run's settings or of the profile named, from the seed spread "
        "named (details: What each claim needs). "
        "Compute: the device-hours of the claim's training stages (a transfer claim: pretraining and fine-tuning), "
        "every variant and seed of the cost plan's profile (details: Cost plan).",
    )


def _measured(v) -> str:
    """The paired differences of the proposed variants on the backbone that tested the claim."""
    shown = "; ".join(f"{variant} {_delta(d)}" for variant, d in (v.differences or {}).items())
    return f"{v.backbone}: {shown or 'no proposed variant trained'}"


def _seeds(n) -> str:
    """What a claim's :class:`pipeline.reporting.claims.Needs` says, in one cell."""
    if n is None or n.sd is None:
        return f"n/a: {n.sd_source if n else 'no spread known'}"
    count = f"{n.seeds_needed} seeds" if n.seeds_needed is not None else "n/a (more than the search allows)"
    if n.sd_source == "this run":
        return f"{count}, from this run's seed std of Δ {fmt(n.sd, 3)} pp ({n.n} seeds run)"
    return (
        f"{count} at the settings of {n.n_source}, from a seed std of Δ {fmt(n.sd, 3)} pp measured at another scale "
        "(an order of magnitude, not a plan)"
    )


def _compute(backbone: str | None, kind: str, cost: dict | None, planned: str) -> str:
    """The device-hours the cost plan gives the stages that test a claim on ``backbone`` (None: not tested here)."""
    if cost is None:
        return "no cost plan (the plan stage has not run)"
    if backbone is None:
        return (
            f"not in this run's cost plan (profile {cost['profile']} does not test it); profile {planned}'s: "
            f"make plan PROFILE={planned}"
        )
    stages = ("pretrain",) if kind == "pretrain" else ("pretrain", "finetune")
    groups = [g for g in cost["groups"] if g["backbone"] == backbone and g["stage"] in stages]
    spent = [g["device_hours"] for g in groups]
    if not groups:
        return f"not in the cost plan of profile {cost['profile']}"
    total = "unknown (no training rate)" if None in spent else hours(sum(spent))
    real = " (the real profile, the rehearsal's overrides undone)" if cost.get("rehearsal") else ""
    runs = " + ".join(f"{g['stage']} {g['backbone']}: {g['runs']} runs" for g in groups)
    return f"{total} {cost['devices']['unit']}-hours in the cost plan of profile {cost['profile']}{real} ({runs})"


def verdicts(outcomes: list, rule: str) -> Table:
    """One row per published claim (:class:`pipeline.reporting.claims.Verdict`)."""
    return Table(
        "verdicts",
        "Verdicts",
        ["claim", "tested by", "outcome", "detail"],
        [[v.claim, v.backbone or "—", v.outcome, v.detail] for v in outcomes],
        rule,
    )


def needs(outcomes: list, claims: tuple[Claim, ...], report: Report, plan: Params) -> Table:
    """Per claim: the seed spread of its paired difference, what the seeds detect, what the published difference
    needs; claims this profile does not test are planned at ``plan``'s settings."""
    published = {c.id: c.difference for c in claims}
    rows = []
    for v in outcomes:
        n = v.needs
        rows.append(
            [
                v.claim,
                f"{published[v.claim]:+.1f}",
                fmt(n.sd, 3) + f" ({n.sd_source})",
                f"{n.n} ({n.n_source})",
                fmt(n.detectable, 2, signed=False),
                str(n.seeds_needed) if n.seeds_needed is not None else "n/a",
            ]
        )
    return Table(
        "needs",
        "What each claim needs: seeds, spread and the smallest detectable difference",
        [
            "claim",
            "published Δ (pp)",
            "seed std of Δ (source)",
            "seeds",
            f"detectable Δ at {report.power:.0%} power (pp)",
            "seeds the published Δ needs",
        ],
        rows,
        f"Detectable: the smallest true difference whose seed-paired {report.confidence:.0%} interval lies above "
        f"zero in {report.power:.0%} of studies with that many seeds and that spread (non-central t; "
        f"pipeline/reporting/stats.py). Claims this profile does not test: the settings of profile {plan.profile} "
        f"({len(plan.seeds)} seeds, {plan.report.confidence:.0%} interval, {plan.report.power:.0%} power) with "
        "the best spread this run offers, as labelled; a spread measured at another scale is an order of "
        "magnitude, not a plan.",
    )
