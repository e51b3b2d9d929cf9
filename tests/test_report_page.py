"""The report page as a reader meets it: the claims first (published difference, what this run measured or why
not, the verdict, what settling it takes), then the tables, the figures, provenance last; and no unformatted
placeholder (``{plan.profile}``, ``{{ x }}``) anywhere in its text or its tables."""

from __future__ import annotations

import csv
import html as htmllib
import json
import re
from pathlib import Path

import pytest

from pipeline import config

from .test_claims import build_paper, paper_study
from .test_report import build, fake_plan, fake_results, params_file
from .tiny import ROOT

# What a format string or a template leaves behind when it is not filled in: `{name}`, `{plan.profile}`,
# `{x[0]}`, `{value:.2f}`, `{!r}`, `{}`, Jinja's `{{ }}`, `{% %}`, `{# #}`.
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}|\{[A-Za-z_]?[\w.]*(?:\[[^\]{}]*\])?(?:![rsa])?(?::[^{}]*)?\}")
TABLES = [  # the tables' titles in page order (prefixes)
    "Main table",
    "Transfer",
    "Parameter forensics",
    "Cost in time",
    "Cost plan",
    "Assumption register",
    "What each claim needs",
]


def page_text(page: str) -> str:
    """What a reader sees: no style, script or tags (inlined figures dropped), entities decoded."""
    page = re.sub(r"<(style|script)\b.*?</\1>", " ", page, flags=re.S)
    page = re.sub(r"<[^>]+>", " ", page)
    return htmllib.unescape(page)


def headings(page: str) -> list[str]:
    return [htmllib.unescape(h).strip() for h in re.findall(r"<h2[^>]*>(.*?)</h2>", page, flags=re.S)]


def section(page: str, title: str) -> str:
    """The HTML from the h2 ``title`` to the next h2."""
    start = page.index(f"<h2>{title}</h2>")
    end = page.find("<h2", start + 1)
    return page[start : end if end > 0 else len(page)]


def placeholders(text: str) -> list[str]:
    return sorted(set(PLACEHOLDER.findall(text)))


def test_the_placeholder_pattern_finds_what_it_must():
    for leftover in ("{plan.profile}", "{name}", "{{ profile }}", "}}", "{% if x %}", "{value:.2f}", "{}", "{x[0]}"):
        assert placeholders(f"a {leftover} b"), leftover
    assert placeholders("a set {1, 2}, 3 ± 1 (n=3) [0.5, 1.5]; x = {'a'}") == []


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    """The report of a reduced profile (no claim tested: each says why and what it would take)."""
    tmp = tmp_path_factory.mktemp("embedded")
    return build(tmp, fake_results(tmp / "results"), params_file(tmp))


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> Path:
    """The report of a paper-shaped study (every claim tested), with a cost plan of the paper profile."""
    tmp = tmp_path_factory.mktemp("paper")
    results = paper_study(tmp / "results")
    groups = [
        {**fake_plan("paper")["groups"][0], "stage": stage, "backbone": b, "device_hours": hours, "runs": runs}
        for stage, runs, hours in (("pretrain", 12, 100.0), ("finetune", 48, 10.0))
        for b in ("n12", "t12", "s12")
    ]
    plan = {**fake_plan("paper"), "groups": groups, "devices": {**fake_plan("paper")["devices"], "unit": "GPU"}}
    (results / "plan").mkdir(parents=True)
    (results / "plan/plan.json").write_text(json.dumps(plan))
    return build_paper(tmp, results, plan_table=results / "plan/plan.json")


@pytest.mark.parametrize("which", ["embedded", "paper"])
def test_no_unformatted_placeholder_reaches_the_page_or_a_table(which, request):
    out = request.getfixturevalue(which)
    assert placeholders(page_text((out / "index.html").read_text())) == []
    for path in sorted((out / "tables").glob("*.md")):
        assert placeholders(path.read_text()) == [], path.name


@pytest.mark.parametrize("which", ["embedded", "paper"])
def test_sections_come_claims_first_then_tables_figures_and_provenance_last(which, request):
    page = (request.getfixturevalue(which) / "index.html").read_text()
    found = headings(page)
    assert found[0] == "Claims", found
    assert len(found) == len(TABLES) + 3, found
    for title, prefix in zip(found[1:-2], TABLES, strict=True):
        assert title.startswith(prefix), (title, prefix)
    assert found[-2:] == ["Figures", "Provenance of every stage instance"]
    claims = section(page, "Claims")
    assert "Rule: A claim is tested only when" in page_text(claims)  # the rule sits with the verdicts
    assert page.index("<figure>") > page.index("What each claim needs") and page.index("<figure>") < page.index(
        "<h2>Provenance"
    )


def test_the_claims_section_cites_each_published_difference_and_says_why_nothing_was_measured(embedded):
    published = config.load_published(ROOT / "references/published.yaml")
    rows = re.findall(r"<tr>(.*?)</tr>", section((embedded / "index.html").read_text(), "Claims"), flags=re.S)
    cells = [[page_text(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)] for row in rows[1:]]
    assert [row[0].split(":")[0] for row in cells] == [c.id for c in published.claims]
    for claim, (text, difference, measured, verdict, seeds, compute) in zip(published.claims, cells, strict=True):
        assert claim.claim in text
        assert difference.startswith(f"{claim.difference:+.1f} pp") and claim.source in difference
        assert measured.startswith("not measured: profile embedded pretrains on synthetic, not imagenet")
        assert verdict == "not run at this profile"
        assert "seeds" in seeds and "another scale" in seeds  # the spread is this run's, at another scale
        assert compute.startswith("not in this run's cost plan") and "make plan PROFILE=paper" in compute
    assert cells[0][2].endswith("; has no N12/16 at 224 px backbone (n12: N12/4 at 16 px)")  # the tiny n12
    assert cells[1][0].startswith("transfer-n12") and cells[1][2].endswith(
        "; does not fine-tune on cifar10, cifar100, stanford_cars, stl10"
    )
    # the headline claim's published difference is on the first screen: before any table of the study
    page = (embedded / "index.html").read_text()
    first = published.claims[0]
    assert page.index(f"{first.difference:+.1f} pp") < page.index("<h2>Main table")


def test_the_claims_section_shows_what_the_run_measured_and_the_planned_cost(paper):
    claims = page_text(section((paper / "index.html").read_text(), "Claims"))
    assert "not measured" not in claims
    assert "sne +1.50 [" in claims  # imagenet-n12: the seed-paired difference and its interval
    verdicts = {
        row[0].split(":")[0]: row[3] for row in csv.reader((paper / "tables/claims.csv").read_text().splitlines())
    }
    assert verdicts["imagenet-n12"].startswith("reproduced: published +1.5 pp inside the interval of "), verdicts
    assert any(v.startswith("not reproduced: published ") for v in verdicts.values()), verdicts
    assert "100 GPU-hours in the cost plan of profile paper (pretrain n12: 12 runs)" in claims
    assert "110 GPU-hours in the cost plan of profile paper (pretrain s12: 12 runs + finetune s12: 48 runs)" in claims
    assert "this run" in claims  # seeds needed from this run's own spread
    csv_rows = (paper / "tables/claims.csv").read_text().splitlines()
    assert len(csv_rows) == 6 and csv_rows[0].startswith("claim,published")
