"""Stage ``report``: the paper's tables and figures, side by side with the published numbers, as an offline page.

Every number on the page is read from a result file another stage declared, or cited from
``references/published.yaml``; the page says which. Nothing is recomputed and torch is never imported.

Reads:  params.yaml ``profile``, ``variants``, ``model.{name,img_size,patch_size}``, ``seeds``, ``datasets``,
        ``pretrain.{dataset,variants}``, ``finetune.{datasets,variants}``, ``forensics.{model,img_size}``,
        ``report``; the flops, bench,
        prepare, pretrain and finetune result files (paths given as patterns); references/published.yaml and
        references/assumptions.yaml.
Writes: --out/index.html (figures inlined, no network), --out/tables/*.{csv,md,tex},
        --out/figures/*.{png,svg}. Byte-identical when re-run on the same inputs.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from pipeline import cli, config, figures, tables
from pipeline.cli import run_stage
from pipeline.config import Published, ReportConfig
from pipeline.outputs import write_outputs
from pipeline.results import RULE, Inputs, Paths, pretraining, read_curves, read_inputs, read_record, transfer, verdicts

PARAMS = (
    "profile",
    "variants",
    "model.name",
    "model.img_size",
    "model.patch_size",
    "seeds",
    "datasets",
    "pretrain.dataset",
    "pretrain.variants",
    "finetune.datasets",
    "finetune.variants",
    "forensics.model",
    "forensics.img_size",
    "report",
)
TEMPLATE = Path(__file__).with_name("templates") / "report.html.j2"


def provenance_rows(cfg: ReportConfig, paths: Paths, inputs: Inputs) -> list[list[str]]:
    """Where every stage instance's result came from, from its provenance record."""
    stages = [
        ("flops", paths.flops.with_name("provenance.json"), None),
        ("bench", paths.bench.with_name("provenance.json"), None),
        *[(f"prepare@{d}", paths.prepare_metrics(d).with_suffix(".provenance.json"), d) for d in cfg.datasets],
        *[
            (f"pretrain@{v}-{s}", paths.pretrain_dir(v, s) / "provenance.json", cfg.source)
            for v in cfg.pretrained
            for s in cfg.seeds
        ],
        *[
            (f"finetune@{v}-{d}-{s}", paths.finetune_dir(v, d, s) / "provenance.json", d)
            for v in cfg.transferred
            for d in cfg.targets
            for s in cfg.seeds
        ],
    ]
    rows = []
    for name, path, dataset in stages:
        record = read_record(path)
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
                (record.get("git_commit") or "?")[:10] + (" (dirty)" if record.get("git_dirty") else ""),
                f"torch {packages.get('torch', '?')}, timm {packages.get('timm', '?')}",
                record.get("hardware", {}).get("cpu", "?"),
                content,
            ]
        )
    return rows


def build(cfg: ReportConfig, paths: Paths) -> dict[str, bytes]:
    """Everything the report writes, as ``relative path -> bytes``."""
    published = config.load_published(paths.published)
    register = config.load_assumptions(paths.assumptions)
    inputs = read_inputs(cfg, paths)
    backbone, baseline = cfg.backbone, cfg.report.baseline
    synthetic = any(m and m.get("synthetic") for m in [*inputs.pretrain.values(), *inputs.finetune.values()])
    source_synthetic = any(m and m.get("synthetic") for m in inputs.pretrain.values())
    imagenet = cfg.datasets[cfg.source].source == "imagenet"
    run_label = f"{cfg.source}{' [SYNTHETIC]' if source_synthetic else ''}, {cfg.img_size} px, profile {cfg.profile}"
    source = cfg.source + (" — SYNTHETIC data" if source_synthetic else "") + ("." if imagenet else "; not ImageNet.")

    pre_rows, differences = pretraining(cfg, inputs)
    fine_rows = transfer(cfg, inputs)
    outcomes = verdicts(cfg, published, differences)
    rule = RULE.format(confidence=cfg.report.confidence, baseline=baseline)
    pretrain_claim = published.claim_for("pretrain", backbone)
    table_list = [
        tables.main(
            pre_rows,
            claim=pretrain_claim,
            baseline=baseline,
            run_label=run_label,
            source=source,
            confidence=cfg.report.confidence,
        ),
        tables.transfer(
            fine_rows, datasets=cfg.targets, claim=published.claim_for("transfer", backbone), baseline=baseline
        ),
        tables.forensics(inputs.flops, published.claims, model=cfg.forensics_model, img_size=cfg.forensics_img_size),
        tables.bench(inputs.bench),
        tables.assumptions(register, cfg.variants),
        tables.verdicts(outcomes, rule),
        tables.provenance(provenance_rows(cfg, paths, inputs)),
    ]
    drawn = _figures(cfg, paths, inputs, published, pre_rows, fine_rows, run_label)
    files: dict[str, bytes] = {}
    inline = {}
    for name, fig in drawn.items():
        rendered = figures.save(fig)
        files[f"figures/{name}.png"] = rendered["png"]
        files[f"figures/{name}.svg"] = rendered["svg"]
        inline[name] = "data:image/png;base64," + base64.b64encode(rendered["png"]).decode()
    for table in table_list:
        files.update(tables.files(table))
    files["index.html"] = _render(
        profile=cfg.profile,
        synthetic=synthetic,
        run_label=run_label,
        tables=table_list,
        verdicts=outcomes,
        rule=rule,
        figures=inline,
        reduced=not imagenet,
    ).encode()
    return files


def _figures(cfg, paths: Paths, inputs: Inputs, published: Published, pre_rows, fine_rows, run_label: str) -> dict:
    """The report's figures (matplotlib Figures by name), from the same rows as the tables."""
    published_points = [
        {"label": f"XCiT-{m.backbone}/{m.patch}", "kind": "baseline", "variant": cfg.report.baseline, **vars(m)}
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
    reproduced = [
        {
            "variant": r["variant"],
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
    for v in cfg.pretrained:
        runs = [c for c in (read_curves(paths.pretrain_dir(v, s) / "curves.csv") for s in cfg.seeds) if c]
        if runs:
            epochs = min(len(r) for r in runs)
            curves[v] = [
                {"epoch": runs[0][e]["epoch"], "val_top1": sum(r[e]["val_top1"] for r in runs) / len(runs)}
                for e in range(epochs)
            ]
        metrics = [m["qkv_similarity"] for (vv, _), m in inputs.pretrain.items() if vv == v and m]
        if metrics:
            blocks = sorted((k for k in metrics[0] if k.startswith("blocks.")), key=lambda k: int(k.split(".")[1]))
            similarity[v] = [sum(max(r[b].values()) for r in metrics) / len(metrics) for b in blocks]
    bars = [
        {"variant": r["variant"], "dataset": d, "n": s["n"], "mean": s["mean"], "std": s["std"]}
        for r in fine_rows
        for d, s in zip(cfg.targets, r["cells"], strict=True)
    ]
    return {
        "accuracy_vs_params": figures.accuracy_vs_cost(
            published_points, reproduced, cost="params_m", reproduced_label=run_label
        ),
        "accuracy_vs_flops": figures.accuracy_vs_cost(
            published_points, reproduced, cost="gflops", reproduced_label=run_label
        ),
        "training_curves": figures.training_curves(curves, title=f"pretraining ({run_label})"),
        "transfer": figures.transfer_bars(bars, list(cfg.targets), list(cfg.transferred)),
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
        "python -m pipeline.report",
        __doc__,
        {
            "--params": "params.yaml",
            "--published": "references/published.yaml",
            "--assumptions": "references/assumptions.yaml",
            "--flops": "flops metrics JSON",
            "--bench": "bench metrics JSON",
            "--prepare": "pattern of prepare metrics, with {dataset}",
            "--pretrain": "pattern of pretrain result folders, {variant} {seed}",
            "--finetune": "pattern of finetune folders, {variant} {dataset} {seed}",
            "--out": "report folder",
        },
    )
    args = parser.parse_args(argv)
    paths = Paths(
        Path(args.published),
        Path(args.assumptions),
        Path(args.flops),
        Path(args.bench),
        args.prepare,
        args.pretrain,
        args.finetune,
        Path(args.out),
    )

    def body() -> None:
        files = build(config.load_report(args.params), paths)
        write_outputs({paths.out / name: content for name, content in files.items()})
        print(f"report: {paths.out / 'index.html'} ({len(files)} files)")

    run_stage("report", body)


if __name__ == "__main__":
    main()
