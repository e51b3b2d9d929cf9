"""The report's tables of the study and of the claims: pretraining (the main table), transfer, the verdicts
and what each claim needs. Plain data in (rows of :mod:`pipeline.reporting.results`, verdicts of
:mod:`pipeline.reporting.claims`, claims of ``references/published.yaml``), a :class:`pipeline.reporting.tables.Table`
out."""

from __future__ import annotations

from pipeline.config import Claim, Params, Report
from pipeline.reporting.tables import Table, fmt, interval, mean_std

__all__ = ["main", "needs", "transfer", "verdicts"]


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
        "pipeline/reporting/stats.py). Claims this profile does not test: the settings of profile {plan.profile} "
        f"({len(plan.seeds)} seeds, {plan.report.confidence:.0%} interval, {plan.report.power:.0%} power) with "
        "the best spread this run offers, as labelled; a spread measured at another scale is an order of "
        "magnitude, not a plan.",
    )
