"""Stage ``flops``: parameters and FLOPs of every backbone x variant, and the parameter-forensics readings.

Each configuration is built with ``timm.create_model`` and counted three ways, which must agree:

- fvcore (``FlopCountAnalysis``, one multiply-add = one flop, norms included: the convention of the XCiT and
  timm tables), with every attention on its explicit matmul path (fvcore counts fused
  ``scaled_dot_product_attention`` as zero);
- torch's ``FlopCounterMode`` (2 flops per multiply-add, products and convolutions only), halved and compared
  with fvcore's products and convolutions;
- the closed-form formulas of :mod:`qkv.counts`, for both parameters (exactly) and flops.

Any disagreement beyond ``flops.rel_tol`` (parameters: none allowed) fails the stage and writes nothing.

Reads:  params.yaml ``profile``, ``variants``, ``flops``, ``forensics``.
Writes: --metrics     JSON: params and GFLOPs per model / num_classes / variant, the forensics readings, and
                      the largest disagreement found between the counters.
        --table       CSV, one row per configuration, every count side by side.
        --provenance  JSON: resolved params, code and package versions, hardware, wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

from pipeline import cli, config, provenance
from pipeline.cli import run_stage
from pipeline.config import Count
from pipeline.outputs import csv_bytes, json_bytes, round_result, write_outputs

PARAMS = ("profile", "variants", "flops", "forensics")

TABLE_COLUMNS = (
    "section",
    "model",
    "backbone",
    "patch_size",
    "img_size",
    "num_classes",
    "variant",
    "embedding",
    "params",
    "params_formula",
    "flops_fvcore",
    "flops_formula",
    "matmul_fvcore",
    "matmul_flop_counter",
    "norm_fvcore",
    "gflops",
)


def count(c: Count) -> dict:
    """Build one configuration and count it with fvcore, FlopCounterMode and the closed-form formulas."""
    # torch, timm and fvcore here, not at the top: --help answers without them, and importing fvcore warns about
    # torch.jit, which run_stage silences as known third-party noise
    import torch
    from fvcore.nn import FlopCountAnalysis
    from torch.utils.flop_counter import FlopCounterMode

    import qkv
    from pipeline.training import model as models

    net = c.net
    torch.manual_seed(0)
    model = models.build(net, c.num_classes).eval()
    for module in model.modules():  # fvcore counts fused attention as zero: use the explicit matmul path
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    image = torch.zeros(1, 3, net.img_size, net.img_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in shapes
        analysis = FlopCountAnalysis(model, image)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        by_op = analysis.by_operator()
        with FlopCounterMode(display=False) as counter:
            model(image)
    flops_fvcore = int(round(sum(by_op.values())))
    norm_fvcore = int(round(by_op.get("layer_norm", 0) + by_op.get("batch_norm", 0)))
    arch, cfg = net.arch, net.embed
    return {
        "section": c.section,
        "model": net.name,
        "backbone": config.backbone_label(net.name),
        "patch_size": arch.patch_size,
        "img_size": net.img_size,
        "num_classes": c.num_classes,
        "variant": net.variant,
        "embedding": json.dumps({**cfg.resolved(arch.embed_dim), "qkv_class_attn": net.class_attn}, sort_keys=True),
        "params": models.count_params(model),
        "params_formula": qkv.xcit_params(arch, cfg, num_classes=c.num_classes, class_attn=net.class_attn),
        "flops_fvcore": flops_fvcore,
        "flops_formula": models.forward_flops(net, c.num_classes),
        "matmul_fvcore": flops_fvcore - norm_fvcore,
        "matmul_flop_counter": counter.get_total_flops() // 2,
        "norm_fvcore": norm_fvcore,
        "gflops": round_result(flops_fvcore / 1e9),
    }


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1)


def check(rows: list[dict], rel_tol: float) -> dict:
    """Largest disagreements between the counters; raises if any exceeds the tolerance."""
    worst = {"formula": 0.0, "flop_counter": 0.0}
    problems = []
    for row in rows:
        label = f"{row['section']} {row['model']} {row['variant']} num_classes={row['num_classes']}"
        if row["params"] != row["params_formula"]:
            problems.append(f"{label}: {row['params']} parameters, formula says {row['params_formula']}")
        d_formula = _rel(row["flops_fvcore"], row["flops_formula"])
        d_counter = _rel(row["matmul_fvcore"], row["matmul_flop_counter"])
        worst = {"formula": max(worst["formula"], d_formula), "flop_counter": max(worst["flop_counter"], d_counter)}
        if d_formula > rel_tol:
            problems.append(
                f"{label}: fvcore {row['flops_fvcore']} flops, formula {row['flops_formula']} "
                f"(relative difference {d_formula:.2e} > rel_tol {rel_tol})"
            )
        if d_counter > rel_tol:
            problems.append(
                f"{label}: fvcore products {row['matmul_fvcore']}, FlopCounterMode/2 "
                f"{row['matmul_flop_counter']} (relative difference {d_counter:.2e} > rel_tol {rel_tol})"
            )
    if problems:
        raise ValueError("flop/parameter counters disagree:\n  " + "\n  ".join(problems))
    return {
        "rel_tol": rel_tol,
        "max_rel_diff_formula": worst["formula"],
        "max_rel_diff_flop_counter": worst["flop_counter"],
        "configurations": len(rows),
    }


def run(settings: config.FlopsConfig, *, progress: bool = False) -> tuple[dict, list[dict]]:
    """Count every configuration; returns (metrics, table rows)."""
    from tqdm import tqdm

    rows = [count(c) for c in tqdm(settings.counts, desc="flops", disable=not progress)]
    checks = check(rows, settings.rel_tol)
    metrics: dict = {"profile": settings.profile, "models": {}, "forensics": {}, "checks": checks}
    for row in rows:
        entry = {"params": row["params"], "gflops": row["gflops"]}
        if row["section"] == "main":
            metrics["models"].setdefault(row["model"], {}).setdefault(str(row["num_classes"]), {})[row["variant"]] = (
                entry
            )
        else:
            metrics["forensics"].setdefault(str(row["num_classes"]), {})[row["variant"]] = entry
    return metrics, rows


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(
        "python -m pipeline.stages.flops",
        __doc__,
        {
            "--params": "params.yaml",
            "--metrics": "metrics JSON to write",
            "--table": "CSV table to write",
            "--provenance": "provenance JSON to write",
        },
    )
    args = parser.parse_args(argv)
    run_stage("flops", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    started = time.time()
    settings = config.load_flops(args.params)
    metrics, rows = run(settings, progress=sys.stderr.isatty())
    write_outputs(
        {
            args.metrics: json_bytes(metrics),
            args.table: csv_bytes(rows, TABLE_COLUMNS),
            args.provenance: json_bytes(provenance.record("flops", settings, started=started)),
        }
    )
    checks = metrics["checks"]
    print(
        f"flops: {len(rows)} configurations counted, counters agree (max relative difference: formula "
        f"{checks['max_rel_diff_formula']:.1e}, FlopCounterMode {checks['max_rel_diff_flop_counter']:.1e})"
    )


if __name__ == "__main__":
    main()
