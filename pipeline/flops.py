"""Stage ``flops``: parameters and FLOPs of every backbone x variant, and the parameter-forensics readings.

Each configuration is built with ``timm.create_model`` and counted three ways, which must agree:

- fvcore (``FlopCountAnalysis``, one multiply-add = one flop, norms included: the convention of the XCiT and
  timm tables), with every attention on its explicit matmul path (fvcore counts fused
  ``scaled_dot_product_attention`` as zero);
- torch's ``FlopCounterMode`` (2 flops per multiply-add, products and convolutions only), halved and compared
  with fvcore's products and convolutions;
- the closed-form formulas of :mod:`qkv.counts`, for both parameters (exactly) and flops.

Any disagreement beyond ``flops.rel_tol`` (parameters: none allowed) fails the stage and writes nothing.

Reads:  params.yaml sections ``variants``, ``flops``, ``forensics``.
Writes: --metrics     JSON: params and GFLOPs per model / num_classes / variant, the forensics readings, and
                      the largest disagreement found between the counters.
        --table       CSV, one row per configuration, every count side by side.
        --provenance  JSON: resolved params, code and package versions, hardware, wall time.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass

from pipeline.cli import run_stage
from pipeline.io import json_bytes, provenance, write_outputs
from pipeline.params import ParamsError, load_sections, parse, profile_name, variant_options

PARAMS = ("profile", "variants", "flops", "forensics")

_BACKBONE_LABEL = {"nano": "N12", "tiny": "T12", "small": "S12"}


@dataclass(frozen=True)
class FlopsParams:
    models: tuple[str, ...]  # registered qkv_xcit_* names
    variants: tuple[str, ...]  # keys of the ``variants`` section
    img_size: int
    num_classes: tuple[int, ...]
    rel_tol: float  # largest relative disagreement allowed between the flop counters and the formula


@dataclass(frozen=True)
class ForensicsParams:
    model: str
    img_size: int
    num_classes: tuple[int, ...]
    readings: dict[str, dict]  # reading name -> qkv_* model options


@dataclass(frozen=True)
class Config:
    """One configuration to count."""

    section: str  # "main" or "forensics"
    model: str
    variant: str  # variant key (main) or reading name (forensics)
    options: dict
    img_size: int
    num_classes: int


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


def load(path: str) -> tuple[str, dict, FlopsParams, ForensicsParams]:
    raw = load_sections(path, PARAMS)
    profile = profile_name(raw["profile"])
    variants = parse(dict[str, dict], raw["variants"], "variants")
    flops = parse(FlopsParams, raw["flops"], "flops")
    forensics = parse(ForensicsParams, raw["forensics"], "forensics")
    for name in flops.variants:
        variant_options(variants, name, "flops.variants")
    for name in forensics.readings:
        variant_options(forensics.readings, name, "forensics.readings")
    if not 0 <= flops.rel_tol < 1:
        raise ParamsError(f"flops.rel_tol: expected a number in [0, 1), got {flops.rel_tol}")
    for where, sizes in (
        ("flops.img_size", (flops.img_size,)),
        ("forensics.img_size", (forensics.img_size,)),
        ("flops.num_classes", flops.num_classes),
        ("forensics.num_classes", forensics.num_classes),
    ):
        if any(s <= 0 for s in sizes):
            raise ParamsError(f"{where}: expected positive integers, got {list(sizes)}")
    return profile, variants, flops, forensics


def configurations(variants: dict, flops: FlopsParams, forensics: ForensicsParams) -> list[Config]:
    configs = [
        Config("main", model, name, variants[name], flops.img_size, k)
        for model in flops.models
        for k in flops.num_classes
        for name in flops.variants
    ]
    configs += [
        Config("forensics", forensics.model, name, options, forensics.img_size, k)
        for k in forensics.num_classes
        for name, options in forensics.readings.items()
    ]
    return configs


def count(config: Config) -> dict:
    """Build one configuration and count it with fvcore, FlopCounterMode and the closed-form formulas."""
    import timm
    import torch
    from fvcore.nn import FlopCountAnalysis
    from torch.utils.flop_counter import FlopCounterMode

    import qkv

    try:
        arch = qkv.model_arch(config.model)
    except ValueError as exc:
        raise ParamsError(f"{config.section}: {exc}") from None
    if config.img_size % arch.patch_size:
        raise ParamsError(f"img_size {config.img_size} is not a multiple of {config.model}'s patch size")
    cfg, class_attn = qkv.split_model_options(config.options)
    torch.manual_seed(0)
    model = timm.create_model(
        config.model, num_classes=config.num_classes, img_size=config.img_size, **config.options
    ).eval()
    for module in model.modules():  # fvcore counts fused attention as zero: use the explicit matmul path
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    image = torch.zeros(1, 3, config.img_size, config.img_size)
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
    formula = qkv.xcit_flops(arch, cfg, img_size=config.img_size, num_classes=config.num_classes, class_attn=class_attn)
    return {
        "section": config.section,
        "model": config.model,
        "backbone": next(v for k, v in _BACKBONE_LABEL.items() if f"_{k}_" in config.model),
        "patch_size": arch.patch_size,
        "img_size": config.img_size,
        "num_classes": config.num_classes,
        "variant": config.variant,
        "embedding": json.dumps({**cfg.resolved(arch.embed_dim), "qkv_class_attn": class_attn}, sort_keys=True),
        "params": sum(p.numel() for p in model.parameters()),
        "params_formula": qkv.xcit_params(arch, cfg, num_classes=config.num_classes, class_attn=class_attn),
        "flops_fvcore": flops_fvcore,
        "flops_formula": formula.total,
        "matmul_fvcore": flops_fvcore - norm_fvcore,
        "matmul_flop_counter": counter.get_total_flops() // 2,
        "norm_fvcore": norm_fvcore,
        "gflops": round(flops_fvcore / 1e9, 6),
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


def run(
    profile: str, variants: dict, flops: FlopsParams, forensics: ForensicsParams, *, progress: bool = False
) -> tuple[dict, list[dict]]:
    """Count every configuration; returns (metrics, table rows)."""
    from tqdm import tqdm

    configs = configurations(variants, flops, forensics)
    rows = [count(c) for c in tqdm(configs, desc="flops", disable=not progress)]
    checks = check(rows, flops.rel_tol)
    metrics: dict = {"profile": profile, "models": {}, "forensics": {}, "checks": checks}
    for row in rows:
        entry = {"params": row["params"], "gflops": row["gflops"]}
        if row["section"] == "main":
            metrics["models"].setdefault(row["model"], {}).setdefault(str(row["num_classes"]), {})[row["variant"]] = (
                entry
            )
        else:
            metrics["forensics"].setdefault(str(row["num_classes"]), {})[row["variant"]] = entry
    return metrics, rows


def table_bytes(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.flops", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True, help="params.yaml")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    parser.add_argument("--table", required=True, help="CSV table to write")
    parser.add_argument("--provenance", required=True, help="provenance JSON to write")
    args = parser.parse_args(argv)
    run_stage("flops", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    started = time.time()
    profile, variants, flops, forensics = load(args.params)
    metrics, rows = run(profile, variants, flops, forensics, progress=sys.stderr.isatty())
    resolved = {"profile": profile, "variants": variants, "flops": asdict(flops), "forensics": asdict(forensics)}
    write_outputs(
        {
            args.metrics: json_bytes(metrics),
            args.table: table_bytes(rows),
            args.provenance: json_bytes(provenance("flops", resolved, started=started)),
        }
    )
    checks = metrics["checks"]
    print(
        f"flops: {len(rows)} configurations counted, counters agree (max relative difference: formula "
        f"{checks['max_rel_diff_formula']:.1e}, FlopCounterMode {checks['max_rel_diff_flop_counter']:.1e})"
    )


if __name__ == "__main__":
    main()
