"""The exported tables are valid in their own formats, whatever the names in them: the LaTeX compiles with
pdflatex (Debian's texlive; .ci/run installs it) and every Markdown row parses into its columns, with no raw
HTML."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.reporting import tables

from .test_report import build, fake_results, params_file

NASTY = ["lfw_faces", "95%", "<b>bold</b>", "a|b", "x & y", "$5", "#1", "~home", "x^2", r"C:\path", "{braces}"]
SIGNS = ["1.00 ± 0.20 (n=3)", "Δ +0.10 [−0.2, +0.4]", "√n", "—", "a · b", "→"]


def _pdflatex() -> str:
    path = shutil.which("pdflatex")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(
                "pdflatex is missing: .ci/run installs Debian's texlive-latex-base and texlive-latex-recommended"
            )
        pytest.skip("pdflatex not installed: apt-get install texlive-latex-base texlive-latex-recommended")
    return path


def compile_latex(tmp_path: Path, bodies: dict[str, str]) -> subprocess.CompletedProcess:
    """One document including every table body, compiled by pdflatex in batch mode (stops at the first error)."""
    document = "\n".join(
        [r"\documentclass{article}", r"\usepackage{booktabs}", r"\begin{document}"]
        + [f"% {name}\n{body}" for name, body in bodies.items()]
        + [r"\end{document}"]
    )
    (tmp_path / "tables.tex").write_text(document)
    return subprocess.run(
        [_pdflatex(), "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "tables.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def markdown_cells(line: str) -> list[str]:
    """The cells of one Markdown table row: split at every ``|`` not escaped by a backslash."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def nasty_table() -> tables.Table:
    signs = (SIGNS * 2)[: len(NASTY)]
    rows = [[n, s] for n, s in zip(NASTY, signs, strict=True)]
    return tables.Table("nasty", "t", ["name_with_underscore", "Δ vs linear (95% CI)"], rows)


def test_latex_tables_compile_with_any_names(tmp_path):
    tex = tables.files(nasty_table())["tables/nasty.tex"].decode()
    done = compile_latex(tmp_path, {"nasty": tex})
    assert done.returncode == 0, done.stdout[-3000:]
    # and the raw, unescaped cells would not: the test can fail
    raw = tables._frame(nasty_table()).to_latex(index=False)
    assert compile_latex(tmp_path, {"raw": raw}).returncode != 0


def test_every_report_table_compiles_and_parses(tmp_path):
    """The report's own tables, from result files whose names need escaping."""
    out = build(tmp_path, fake_results(tmp_path / "results"), params_file(tmp_path, qkv_norm="<b>50%_x|y</b>"))
    bodies = {p.stem: p.read_text() for p in sorted((out / "tables").glob("*.tex"))}
    names = {"claims", "main", "transfer", "verdicts", "needs", "assumptions", "forensics", "bench", "provenance"}
    assert names <= set(bodies)
    done = compile_latex(tmp_path, bodies)
    assert done.returncode == 0, done.stdout[-3000:]
    for path in sorted((out / "tables").glob("*.md")):
        lines = path.read_text().splitlines()
        width = len(markdown_cells(lines[0]))
        assert all(len(markdown_cells(line)) == width for line in lines), path.name
        assert "<b>" not in path.read_text(), path.name


def test_markdown_cells_keep_their_columns_and_show_no_html():
    md = tables.files(nasty_table())["tables/nasty.md"].decode().splitlines()
    rows = [markdown_cells(line) for line in md[2:]]
    assert [r[0] for r in rows] == [
        "lfw_faces",
        "95%",
        "&lt;b&gt;bold&lt;/b&gt;",
        r"a\|b",
        "x &amp; y",
        "$5",
        "#1",
        "~home",
        "x^2",
        r"C:\\path",
        "{braces}",
    ]
    raw = tables._frame(nasty_table()).to_markdown(index=False).splitlines()
    assert len(markdown_cells(raw[2 + NASTY.index("a|b")])) != 2  # unescaped, the row splits: the test can fail
