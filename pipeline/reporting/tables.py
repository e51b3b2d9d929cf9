"""The report's tables: one function per table, each taking plain data (result dicts, summaries computed by
:mod:`pipeline.reporting.results`, entries of the reference files) and returning a :class:`Table`; :func:`files` renders
any table as CSV, Markdown and LaTeX, :func:`text` for a terminal. The bench stage prints its table through
the same function the report uses. The tables of the study and the claims are in :mod:`pipeline.reporting.study_tables`.
Published numbers come from ``references/published.yaml`` only."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import Assumption, Claim, backbone_label

__all__ = [
    "Table",
    "assumptions",
    "bench",
    "files",
    "forensics",
    "provenance",
    "text",
]


@dataclass(frozen=True)
class Table:
    name: str  # file stem under reports/tables/
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


def _frame(table: Table):
    import pandas as pd

    return pd.DataFrame(table.rows, columns=table.columns)


# Every cell and header is escaped for its format: a name, a unit or a sign never breaks a LaTeX build or a
# Markdown table (tests/test_tables.py compiles the LaTeX with pdflatex and parses the Markdown).
_LATEX = {
    **{c: "\\" + c for c in "&%$#_{}"},
    "\\": r"\textbackslash{}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "±": r"\ensuremath{\pm}",
    "Δ": r"\ensuremath{\Delta}",
    "√": r"\ensuremath{\surd}",
    "·": r"\ensuremath{\cdot}",
    "×": r"\ensuremath{\times}",
    "→": r"\ensuremath{\rightarrow}",
    "≤": r"\ensuremath{\leq}",
    "≥": r"\ensuremath{\geq}",
    "−": "-",
    "–": "--",
    "—": "---",
}
_MARKDOWN = {"\\": "\\\\", "|": "\\|", "*": "\\*", "`": "\\`", "&": "&amp;", "<": "&lt;", ">": "&gt;"}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX source that typesets it (specials escaped, the report's symbols as math)."""
    return "".join(_LATEX.get(c, c) for c in str(text).replace("\n", " "))


def markdown_escape(text: str) -> str:
    """``text`` as one Markdown table cell: no raw HTML, no cell break, no emphasis."""
    return "".join(_MARKDOWN.get(c, c) for c in str(text).replace("\n", " "))


def _escaped(table: Table, escape):
    import pandas as pd

    return pd.DataFrame([[escape(c) for c in row] for row in table.rows], columns=[escape(c) for c in table.columns])


def files(table: Table, label: str = "") -> dict[str, bytes]:
    """``tables/<name>.{csv,md,tex}`` of ``table``, each escaped for its format; a ``label`` (a rehearsal's)
    heads each file: a ``#`` comment line of the CSV, a bold line of the Markdown, a bold paragraph of the LaTeX."""
    csv = _frame(table).to_csv(index=False, lineterminator="\n")
    md = _escaped(table, markdown_escape).to_markdown(index=False) + "\n"
    tex = _escaped(table, latex_escape).to_latex(index=False, escape=False)
    if label:
        csv = f"# {label}\n{csv}"
        md = f"**{markdown_escape(label)}**\n\n{md}"
        tex = f"\\noindent\\textbf{{{latex_escape(label)}}}\\par\n{tex}"
    return {
        f"tables/{table.name}.csv": csv.encode(),
        f"tables/{table.name}.md": md.encode(),
        f"tables/{table.name}.tex": tex.encode(),
    }


def text(table: Table) -> str:
    """The table for a terminal: title, Markdown grid, note."""
    return "\n".join(filter(None, [table.title, _frame(table).to_markdown(index=False), table.note]))


# Cell formats: one rule per kind of number on the page.
def fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def hours(h: float | None) -> str:
    """Device-hours as the cost plan and the claims table write them: whole hours from 100 on, else 3 digits."""
    if h is None:
        return "n/a"
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


def mean_std(s: dict) -> str:
    if not s["n"]:
        return "not run"
    return f"{fmt(s['mean'])} ± {fmt(s['std'])} (n={s['n']})" if s["std"] is not None else f"{fmt(s['mean'])} (n=1)"


def interval(s: dict, signed: bool = False) -> str:
    return "n/a" if s["ci_low"] is None else f"[{fmt(s['ci_low'], signed=signed)}, {fmt(s['ci_high'], signed=signed)}]"


# ----------------------------------------------------------------------------------------------------


def forensics(flops: dict | None, claims: tuple[Claim, ...], *, model: str, img_size: int) -> Table:
    """Which readings of the structures give the parameter counts the paper states for ``model``'s backbone
    (``claims`` with ``params_m``), counted by the flops stage with every head it counted (largest first)."""
    claims = [c for c in claims if c.params_m is not None and c.backbone == backbone_label(model)]
    targets = [(f"{c.params_m:g}M", c.params_m) for c in claims]
    readings = (flops or {}).get("forensics", {})
    heads = sorted(readings, key=int, reverse=True)  # num_classes, as the metrics file's keys
    body = []
    for name in readings[heads[0]] if heads else []:
        counts = [readings[k].get(name, {}).get("params") for k in heads]
        fits = [
            label
            for label, target in targets
            if any(p is not None and round(p / 1e6, 1) == target for p in counts)  # the paper's precision
        ]
        cells = [f"{p:,}" if p is not None else "not counted" for p in counts]
        body.append([name, *cells, fmt(readings[heads[0]][name]["gflops"], 3), ", ".join(fits) or "neither"])
    labels = " and ".join(label for label, _ in targets)
    sources = "; ".join(sorted({c.source for c in claims}))
    columns = ["reading", *(f"params, {k} classes" for k in heads), f"GFLOPs, {heads[0] if heads else '?'} classes"]
    return Table(
        "forensics",
        f"Parameter forensics: which readings give the paper's {labels} ({model}, {img_size} px)",
        [*columns, "rounds to"],
        body or [["not run", *[""] * len(columns)]],
        f"Counted by the flops stage (fvcore, cross-checked); {labels} from {sources}.",
    )


def bench(metrics: dict | None) -> Table:
    """The bench stage's measurements: step time and rates per model, ratios, fraction of the matmul ceiling."""
    columns = [
        "model",
        "train step (ms)",
        "train img/s",
        "eval img/s",
        "FLOP ratio",
        "step-time ratio",
        "step / FLOP ratio",
        "train GFLOP/s",
        "of matmul ceiling",
        "step ms range",
    ]
    title = "Cost in time: training step and eval pass per variant"
    if metrics is None:
        return Table("bench", title, columns, [["not run", *[""] * 9]], "The bench stage has not run.")
    rows = []
    for name in metrics["order"]:
        m = metrics["models"][name]
        rows.append(
            [
                name + (" (timm's own)" if name == metrics["reference"] else ""),
                fmt(m["train_step_ms"], 1),
                f"{m['train_img_per_s']:.0f}",
                f"{m['eval_img_per_s']:.0f}",
                fmt(m["flop_ratio"], 3),
                fmt(m["step_time_ratio"], 3),
                fmt(m["step_over_flop_ratio"], 3),
                fmt(m["train_gflop_per_s"], 1),
                f"{m['train_ceiling_fraction']:.0%}",
                f"{m['train_step_ms_min']:.1f}–{m['train_step_ms_max']:.1f}",
            ]
        )
    c, peak, loader = metrics["ceiling"], metrics["peak"], metrics["loader"]
    met = "; ".join(f"{k} ({t['limit']}): {'met' if t['met'] else 'NOT met'}" for k, t in metrics["targets"].items())
    note = (
        f"Measured by the bench stage on {metrics['device']} ({metrics['threads']} threads, {metrics['dtype']}), "
        f"batch {metrics['batch_size']} at {metrics['img_size']} px, median of {metrics['rounds']} interleaved "
        f"rounds; machine-dependent measurements, not reproducible results. Ceiling: {c['gflop_per_s']:.1f} "
        f"GFLOP/s, a {c['shape'][0]}x{c['shape'][1]} @ {c['shape'][1]}x{c['shape'][2]} matrix product timed in the "
        f"same rounds; the device's matrix rate (square {peak['shape'][0]} product): {peak['gflop_per_s']:.1f} "
        f"GFLOP/s, of which the baseline reaches {metrics['models'][metrics['baseline']]['train_peak_fraction']:.0%} "
        f"in training. Loader: {loader['img_per_s']:,.0f} training img/s ({_loader_how(loader)}), "
        f"{loader['over_train']:.0f}x the baseline's training rate. FLOPs: closed-form counts (2 flops per "
        f"multiply-add, a training step = 3x the forward). Targets: {met}."
    )
    return Table("bench", title, columns, rows, note)


def _loader_how(loader: dict) -> str:
    if loader["mode"] != "timm":
        return loader["mode"]
    return (
        f"timm path: {loader['per_core_img_per_s']:,.0f} per CPU core x {loader['workers']} workers; timm's stock "
        f"path {loader['timm_per_core_img_per_s']:,.0f} per core, {loader['ratio']:.2f}x; best of {loader['rounds']} "
        f"interleaved rounds, 1-min load {loader['load_1min'][0]:g} then {loader['load_1min'][1]:g}"
    )


def assumptions(register: tuple[Assumption, ...], variants: dict[str, dict]) -> Table:
    """Each detail the abstracts leave open, its alternatives, the default and what every variant uses."""
    rows = []
    for item in register:
        used = "; ".join(
            f"{v}: " + ", ".join(f"{k}={options[k]}" for k in item.keys if k in options)
            for v, options in variants.items()
            if any(k in options for k in item.keys)
        )
        rows.append([item.detail, item.alternatives, item.default, used or "(not a variant option)"])
    return Table(
        "assumptions",
        "Assumption register: details the abstracts leave open",
        ["detail", "alternatives", "default and why", "this run (params.yaml variants)"],
        rows,
    )


def provenance(rows: list[list[str]]) -> Table:
    """One row per stage instance: profile, params hash, commit, software, hardware, dataset content hash."""
    return Table(
        "provenance",
        "Provenance of every stage instance",
        ["instance", "profile", "params hash", "git commit", "software", "hardware", "dataset content hash"],
        rows,
    )
