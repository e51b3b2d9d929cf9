"""Stage ``report``: the paper's tables and figures, side by side with the published numbers, as an offline page.

Every number on the page is read from a result file another stage declared, or cited from
``references/published.yaml``; the page says which. Nothing is recomputed and torch is never imported.

Reads:  params.yaml ``profile``, ``variants``, ``backbones``, ``seeds``, ``datasets``,
        ``pretrain.{dataset,variants}``, ``finetune.{datasets,variants}``, ``forensics.{model,img_size}``,
        ``report``; the flops, bench, prepare, pretrain and finetune result files (paths given as patterns);
        references/published.yaml and references/assumptions.yaml; --plan, the profile that can settle the
        claims (its seeds, confidence and power: what a claim this profile does not test would need);
        --plan-table, the plan stage's cost plan (shown as its table); --lock, dvc.lock (each curves file's md5).
        Every input is checked first (pipeline/reporting/inputs.py, ranges.py): a bad one is one line, no output.
Writes: --out/index.html (figures inlined, no network), --out/tables/*.{csv,md,tex},
        --out/figures/*.{png,svg}, --headline (DVC metrics: per claim its verdict, per backbone and variant the
        mean top-1, the paired difference and its interval). Byte-identical when re-run on the same inputs.
"""

from __future__ import annotations

import base64
from pathlib import Path

from pipeline import cli, config
from pipeline.cli import run_stage
from pipeline.config import Published, ReportConfig
from pipeline.outputs import json_bytes, round_result, write_outputs
from pipeline.planning import cost_tables
from pipeline.reporting import figures, results, study_tables, tables
from pipeline.reporting.claims import RULE, Verdict, judge
from pipeline.reporting.results import Inputs, Paths, pretraining, read_inputs, transfer

PARAMS = (
    "profile",
    "variants",
    "backbones",
    "seeds",
    "datasets",
    "pretrain.dataset",
    "pretrain.variants",
    "finetune.datasets",
    "finetune.variants",
    "forensics.model",
    "forensics.img_size",
    "report",
    "rehearsal",
)
TEMPLATE = Path(__file__).parents[1] / "reporting" / "templates" / "report.html.j2"


def build(cfg: ReportConfig, paths: Paths) -> dict[str, bytes]:
    """Everything the report writes, as ``relative path -> bytes`` (the headline metrics under ``headline``)."""
    published = config.load_published(paths.published)
    register = config.load_assumptions(paths.assumptions)
    plan = config.load(paths.plan)
    inputs = read_inputs(cfg, paths)
    baseline = cfg.report.baseline
    synthetic = any(m and m.get("synthetic") for m in [*inputs.pretrain.values(), *inputs.finetune.values()])
    source_synthetic = any(m and m.get("synthetic") for m in inputs.pretrain.values())
    imagenet = cfg.datasets[cfg.source].source == "imagenet"
    sizes = ", ".join(sorted({f"{m.img_size} px" for m in cfg.backbones.values()}))
    run_label = f"{cfg.source}{' [SYNTHETIC]' if source_synthetic else ''}, {sizes}, profile {cfg.profile}"
    source = cfg.source + (" — SYNTHETIC data" if source_synthetic else "") + ("." if imagenet else "; not ImageNet.")

    pre_rows, fine_rows = pretraining(cfg, inputs), transfer(cfg, inputs)
    outcomes = judge(cfg, published, inputs, plan)
    rule = RULE.format(confidence=cfg.report.confidence, baseline=baseline)
    claims = study_tables.claims(
        outcomes, published.claims, baseline=baseline, confidence=cfg.report.confidence, plan=plan, cost=inputs.plan
    )
    study = _study_tables(cfg, published, pre_rows, fine_rows, run_label, source)
    study += [
        tables.forensics(inputs.flops, published.claims, model=cfg.forensics_model, img_size=cfg.forensics_img_size),
        tables.bench(inputs.bench),
        cost_tables.plan(inputs.plan),
        tables.assumptions(register, cfg.variants),
        study_tables.needs(outcomes, published.claims, cfg.report, plan),
    ]
    provenance = tables.provenance(results.provenance_rows(cfg, paths, inputs))
    label = rehearsal_label(cfg)
    files, inline = _rendered(_figures(cfg, inputs, published, pre_rows, fine_rows, run_label), label)
    files["headline"] = json_bytes(headline(cfg, pre_rows, fine_rows, outcomes))
    written = [claims, *study, study_tables.verdicts(outcomes, rule), provenance]  # verdicts: a file, not a section
    files.update({path: data for table in written for path, data in tables.files(table, label).items()})
    files["index.html"] = _render(  # the page's order: claims, tables, figures, provenance
        profile=cfg.profile,
        synthetic=synthetic,
        run_label=run_label,
        claims=claims,
        verdicts=outcomes,
        rule=rule,
        tables=study,
        figures=inline,
        provenance=provenance,
        reduced=not imagenet,
        rehearsal=cfg.rehearsal,
        rehearsal_label=label,
    ).encode()
    return files


def _study_tables(cfg: ReportConfig, published: Published, pre_rows, fine_rows, run_label: str, source: str) -> list:
    """The main (pretraining) table and the transfer table, each beside the published claims about its backbones."""
    labels = {b: m.backbone for b, m in cfg.backbones.items()}
    baseline, confidence = cfg.report.baseline, cfg.report.confidence
    return [
        study_tables.main(
            pre_rows,
            claims={b: published.claim_for("pretrain", label) for b, label in labels.items()},
            baseline=baseline,
            run_label=run_label,
            source=source,
            confidence=confidence,
        ),
        study_tables.transfer(
            fine_rows,
            datasets=cfg.targets,
            claims={b: published.claim_for("transfer", label) for b, label in labels.items()},
            baseline=baseline,
            confidence=confidence,
        ),
    ]


def _rendered(drawn: dict, label: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """The figures' PNG and SVG files, and the PNGs inlined for the page; ``label`` (a rehearsal's) titles each."""
    files, inline = {}, {}
    for name, fig in drawn.items():
        if label:
            fig.suptitle(label, color="#b00", fontweight="bold")
        rendered = figures.save(fig)
        files[f"figures/{name}.png"] = rendered["png"]
        files[f"figures/{name}.svg"] = rendered["svg"]
        inline[name] = "data:image/png;base64," + base64.b64encode(rendered["png"]).decode()
    return files, inline


def rehearsal_label(cfg: ReportConfig) -> str:
    """The line every page, table and figure of a rehearsal's report carries ("" for a real run)."""
    if cfg.rehearsal is None:
        return ""
    return (
        f"REHEARSAL of profile {cfg.rehearsal.of} on a CPU: the profile's code paths with its size knobs shrunk; "
        "the numbers are meaningless as science"
    )


def headline(cfg: ReportConfig, pre_rows: list[dict], fine_rows: list[dict], outcomes: list[Verdict]) -> dict:
    """The answer to "did the embedding help?" in a dozen numbers, for ``dvc metrics show/diff`` and ``dvc exp
    show``: each claim's verdict, and per backbone and variant the mean test top-1 of pretraining and of the
    transfer average with their seed-paired differences to the baseline and intervals."""

    def stats(summary: dict, diff: dict | None, prefix: str) -> dict:
        out = {f"{prefix}top1": summary["mean"]}
        if diff is not None:
            out.update({f"{prefix}diff": diff["mean"], f"{prefix}ci_low": diff["ci_low"]})
            out[f"{prefix}ci_high"] = diff["ci_high"]
        return out

    study: dict[str, dict] = {}
    for r in pre_rows:
        study.setdefault(r["backbone"], {})[r["variant"]] = stats(r["summary"], r["diff"], "")
    for r in fine_rows:
        cell = study.setdefault(r["backbone"], {}).setdefault(r["variant"], {})
        cell.update(stats(r["average"], r["average_diff"], "transfer_"))
    return round_result({"profile": cfg.profile, "claims": {v.claim: v.outcome for v in outcomes}, **study})


def _published_points(baseline: str, published: Published) -> list[dict]:
    """The published models of the accuracy-against-cost figures: XCiT's baselines and the proposed models."""
    return [
        {"label": f"XCiT-{m.backbone}/{m.patch}", "kind": "baseline", "variant": baseline, **vars(m)}
        for m in published.xcit.models
    ] + [
        {
            "label": f"proposed {c.backbone}",
            "kind": "proposed",
            "params_m": c.params_m,
            "gflops": None,
            "top1": c.proposed,
        }
        for c in published.claims
        if c.kind == "pretrain" and c.params_m is not None
    ]


def _figures(cfg, inputs: Inputs, published: Published, pre_rows, fine_rows, run_label: str) -> dict:
    """The report's figures (matplotlib Figures by name), from the same rows as the tables."""
    published_points = _published_points(cfg.report.baseline, published)
    several = len(cfg.backbones) > 1

    def name(backbone: str, variant: str) -> str:  # a series of the figures
        return f"{backbone}/{variant}" if several else variant

    reproduced = [
        {
            "variant": name(r["backbone"], r["variant"]),
            "params_m": r["params"] / 1e6,
            "gflops": r["gflops"],
            "mean": r["summary"]["mean"],
            "std": r["summary"]["std"] or 0.0,
            "n": r["summary"]["n"],
        }
        for r in pre_rows
        if r["summary"]["n"]
    ]
    curves, similarity = {}, {}
    for b in cfg.backbones:
        for v in cfg.pretrained:
            runs = [c for s in cfg.seeds if (c := inputs.curves.get((b, v, s)))]
            if runs:
                epochs = min(len(r) for r in runs)
                curves[name(b, v)] = [
                    {"epoch": runs[0][e]["epoch"], "val_top1": sum(r[e]["val_top1"] for r in runs) / len(runs)}
                    for e in range(epochs)
                ]
            metrics = [m["qkv_similarity"] for (bb, vv, _), m in inputs.pretrain.items() if (bb, vv) == (b, v) and m]
            if metrics:
                blocks = sorted((k for k in metrics[0] if k.startswith("blocks.")), key=lambda k: int(k.split(".")[1]))
                similarity[name(b, v)] = [sum(max(r[k].values()) for r in metrics) / len(metrics) for k in blocks]
    bars = [
        {"variant": name(r["backbone"], r["variant"]), "dataset": d, "n": s["n"], "mean": s["mean"], "std": s["std"]}
        for r in fine_rows
        for d, s in zip(cfg.targets, r["cells"], strict=True)
    ]
    series = [name(b, v) for b in cfg.backbones for v in cfg.transferred]
    return {
        "accuracy_vs_params": figures.accuracy_vs_cost(
            published_points, reproduced, cost="params_m", reproduced_label=run_label
        ),
        "accuracy_vs_flops": figures.accuracy_vs_cost(
            published_points, reproduced, cost="gflops", reproduced_label=run_label
        ),
        "training_curves": figures.training_curves(curves, title=f"pretraining ({run_label})"),
        "transfer": figures.transfer_bars(bars, list(cfg.targets), series),
        "qkv_similarity": figures.similarity(similarity, title=f"Q/K/V similarity after pretraining ({run_label})"),
    }


def _render(**context) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATE.parent)),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template(TEMPLATE.name).render(**context)


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(
        "python -m pipeline.stages.report",
        __doc__,
        {
            "--params": "params.yaml",
            "--published": "references/published.yaml",
            "--assumptions": "references/assumptions.yaml",
            "--plan": "the params of the profile that can settle the claims (profiles/paper.yaml)",
            "--flops": "flops metrics JSON",
            "--bench": "bench metrics JSON",
            "--prepare": "pattern of prepare metrics, with {dataset}",
            "--pretrain": "pattern of pretrain result folders, {variant} {seed}",
            "--finetune": "pattern of finetune folders, {variant} {dataset} {seed}",
            "--out": "report folder",
            "--headline": "headline metrics JSON to write (DVC metrics)",
        },
    )
    parser.add_argument("--plan-table", help="the plan stage's JSON (results/plan/plan.json): the cost plan section")
    parser.add_argument("--lock", help="dvc.lock: a curves file must have the md5 it records for its instance")
    args = parser.parse_args(argv)
    paths = Paths(
        Path(args.published),
        Path(args.assumptions),
        Path(args.plan),
        Path(args.flops),
        Path(args.bench),
        args.prepare,
        args.pretrain,
        args.finetune,
        Path(args.out),
        Path(args.plan_table) if args.plan_table else None,
        Path(args.lock) if args.lock else None,
    )

    def body() -> None:
        files = build(config.load_report(args.params), paths)
        headline_json = files.pop("headline")
        write_outputs({Path(args.headline): headline_json, **{paths.out / name: data for name, data in files.items()}})
        print(f"report: {paths.out / 'index.html'} ({len(files)} files)")

    run_stage("report", body)


if __name__ == "__main__":
    main()
