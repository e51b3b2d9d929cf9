"""Stage ``report``: the paper's tables and figures, side by side with the published numbers, as an offline page.

Every number on the page is read from a result file another stage declared, or cited from
``references/published.yaml``; the page says which. Nothing is recomputed and torch is never imported.

Reads:  params.yaml ``profile``, ``variants``, ``model``, ``seeds``, ``datasets``, ``pretrain``, ``finetune``,
        ``report``; the flops, bench, prepare, pretrain and finetune result files (paths given as patterns);
        references/published.yaml and references/assumptions.yaml.
Writes: --out/index.html (figures inlined, no network), --out/tables/*.{csv,md,tex},
        --out/figures/*.{png,svg}. Byte-identical when re-run on the same inputs.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import json
from pathlib import Path

import yaml

from pipeline import figures
from pipeline.bench import REFERENCE as BENCH_REFERENCE
from pipeline.cli import run_stage
from pipeline.io import write_outputs
from pipeline.params import ParamsError, load_sections, profile_name
from pipeline.results import RULE, load_json, paired, summary, verdict

PARAMS = ("profile", "variants", "model", "seeds", "datasets", "pretrain", "finetune", "report")
TEMPLATE = Path(__file__).with_name("templates") / "report.html.j2"
_BACKBONES = {"nano": "N12", "tiny": "T12", "small": "S12"}


def _fmt(value, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _mean_std(s: dict) -> str:
    if not s["n"]:
        return "not run"
    return f"{_fmt(s['mean'])} ± {_fmt(s['std'])} (n={s['n']})" if s["std"] is not None else f"{_fmt(s['mean'])} (n=1)"


def _ci(s: dict, signed: bool = False) -> str:
    return (
        "n/a" if s["ci_low"] is None else f"[{_fmt(s['ci_low'], signed=signed)}, {_fmt(s['ci_high'], signed=signed)}]"
    )


def _read_curves(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(path.read_text().splitlines())]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: malformed curves file ({exc})") from None


def check_params(section) -> float:
    """The ``report`` section; returns the confidence level."""
    confidence = section.get("confidence") if isinstance(section, dict) else None
    if not isinstance(confidence, float) or not 0 < confidence < 1:
        raise ParamsError(f"report.confidence: expected a number in (0, 1), got {confidence!r}")
    unknown = sorted(set(section) - {"confidence"})
    if unknown:
        raise ParamsError(f"report: unknown key(s) {', '.join(unknown)}; expected: confidence")
    return confidence


def _reference(path: Path, keys: tuple[str, ...] | None):
    """A checked-in reference file: a mapping with ``keys``, or (``keys=None``) a list of register entries."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reference file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    required = {"claims": ("id", "kind", "datasets", "backbone", "baseline", "proposed")}
    if keys is None:
        entries, fields = data, ("detail", "keys", "alternatives", "default")
    elif isinstance(data, dict) and all(k in data for k in keys):
        entries, fields = data["claims"], required["claims"]
    else:
        raise ValueError(f"{path}: expected a mapping with keys {', '.join(keys)}")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and all(f in e for f in fields) for e in entries):
        raise ValueError(f"{path}: every entry needs the keys {', '.join(fields)}")
    return data


def _table(name: str, title: str, columns: list[str], rows: list[list[str]], note: str = "") -> dict:
    return {"name": name, "title": title, "columns": columns, "rows": rows, "note": note}


def _table_files(table: dict) -> dict[str, bytes]:
    import pandas as pd

    frame = pd.DataFrame(table["rows"], columns=table["columns"])
    return {
        f"tables/{table['name']}.csv": frame.to_csv(index=False, lineterminator="\n").encode(),
        f"tables/{table['name']}.md": (frame.to_markdown(index=False) + "\n").encode(),
        f"tables/{table['name']}.tex": frame.to_latex(index=False).encode(),
    }


def build(args: argparse.Namespace) -> dict[str, bytes]:
    """Everything the report writes, as ``relative path -> bytes``."""
    raw = load_sections(args.params, PARAMS)
    profile = profile_name(raw["profile"])
    confidence = check_params(raw["report"])
    seeds = raw["seeds"]
    pre, fine, model = raw["pretrain"], raw["finetune"], raw["model"]
    published = _reference(Path(args.published), ("claims", "xcit"))
    assumptions = _reference(Path(args.assumptions), None)
    source = raw["datasets"].get(pre["dataset"], {}).get("source", pre["dataset"])
    backbone = next((v for k, v in _BACKBONES.items() if f"_{k}_" in model["name"]), model["name"])

    def instance(pattern: str, **keys) -> Path:
        return Path(pattern.format(**keys))

    flops = load_json(Path(args.flops), profile)
    prepare = {d: load_json(instance(args.prepare, dataset=d), profile) for d in raw["datasets"]}
    pretrain = {
        (v, s): load_json(instance(args.pretrain, variant=v, seed=s) / "metrics.json", profile)
        for v in pre["variants"]
        for s in seeds
    }
    finetune = {
        (v, d, s): load_json(instance(args.finetune, variant=v, dataset=d, seed=s) / "metrics.json", profile)
        for v in fine["variants"]
        for d in fine["datasets"]
        for s in seeds
    }
    synthetic = any(m and m.get("synthetic") for m in [*pretrain.values(), *finetune.values()])
    source_synthetic = any(m and m.get("synthetic") for m in pretrain.values())
    run_label = (
        f"{pre['dataset']}{' [SYNTHETIC]' if source_synthetic else ''}, {model['img_size']} px, profile {profile}"
    )

    # Main table: the ImageNet claim's columns, this run's numbers on its own dataset.
    def accuracies(runs: dict, key) -> dict[int, float]:
        return {k[-1]: m["test_top1"] for k, m in runs.items() if k[:-1] == key and m is not None}

    baseline = accuracies(pretrain, ("linear",))
    main_rows, reproduced_points, differences = [], [], {}
    for v in pre["variants"]:
        acc = accuracies(pretrain, (v,))
        s = summary(list(acc.values()), confidence)
        any_run = next((m for (vv, _), m in pretrain.items() if vv == v and m), None)
        diff = paired(acc, baseline, confidence) if v != "linear" else None
        if diff is not None:
            differences[v] = diff
        main_rows.append(
            [
                v,
                raw["variants"][v].get("qkv_embed", v),
                backbone,
                _fmt(any_run["params"] / 1e6, 3) if any_run else "not run",
                _fmt(any_run["gflops"], 4) if any_run else "not run",
                "69.9" if v == "linear" else "71.4 (structure not stated)",
                _mean_std(s),
                _ci(s),
                "baseline"
                if diff is None
                else (f"{_fmt(diff['mean'], signed=True)} {_ci(diff, signed=True)}" if diff["n"] else "not run"),
            ]
        )
        if s["n"]:
            reproduced_points.append(
                {
                    "variant": v,
                    "params_m": any_run["params"] / 1e6,
                    "gflops": any_run["gflops"],
                    "mean": s["mean"],
                    "std": s["std"] or 0.0,
                    "n": s["n"],
                }
            )
    tables = [
        _table(
            "main",
            "Main table: the ImageNet claim (published) and this run (reproduced)",
            [
                "variant",
                "embedding",
                "backbone",
                "params (M, this run)",
                "GFLOPs (this run)",
                "published top-1, ImageNet-1k N12",
                f"reproduced top-1 ({run_label}), mean ± std",
                f"{confidence:.0%} CI",
                "Δ vs linear, paired by seed [CI]",
            ],
            main_rows,
            "Published: arXiv 2111.10017 abstract (which structure gave 71.4 is not stated). Reproduced: test top-1 of "
            f"this profile's runs on {pre['dataset']}" + (" — SYNTHETIC data" if synthetic else "") + "; not ImageNet.",
        )
    ]

    # Transfer table.
    transfer_rows, bars = [], []
    for v in fine["variants"]:
        cells, per_seed = [], {}
        for d in fine["datasets"]:
            acc = accuracies(finetune, (v, d))
            s = summary(list(acc.values()), confidence)
            cells.append(_mean_std(s))
            bars.append({"variant": v, "dataset": d, "n": s["n"], "mean": s["mean"], "std": s["std"]})
            for seed, a in acc.items():
                per_seed.setdefault(seed, []).append(a)
        average = summary([sum(a) / len(a) for a in per_seed.values() if len(a) == len(fine["datasets"])], confidence)
        transfer_rows.append(
            [v, *cells, _mean_std(average), "92.2" if v == "linear" else "93.3 (structure not stated)"]
        )
    tables.append(
        _table(
            "transfer",
            "Transfer: test top-1 per target dataset",
            [
                "variant",
                *fine["datasets"],
                "average (per seed, then over seeds)",
                "published average (N12, 4 datasets)",
            ],
            transfer_rows,
            "Published: arXiv 2111.10017 abstract, over CIFAR-10, CIFAR-100, Stanford Cars and STL-10; "
            f"reproduced: this profile's targets ({', '.join(fine['datasets'])}).",
        )
    )

    # Parameter forensics.
    forensics_rows = []
    readings = (flops or {}).get("forensics", {})
    for name in readings.get("1000", {}):
        p1000 = readings["1000"][name]["params"]
        p10 = readings.get("10", {}).get(name, {}).get("params")
        fits = [
            label
            for label, target in (("3.1M", 3.1), ("2.9M", 2.9))
            if round(p1000 / 1e6, 1) == target or (p10 is not None and round(p10 / 1e6, 1) == target)
        ]
        forensics_rows.append(
            [
                name,
                f"{p1000:,}",
                f"{p10:,}" if p10 is not None else "not counted",
                _fmt(readings["1000"][name]["gflops"], 3),
                ", ".join(fits) or "neither",
            ]
        )
    tables.append(
        _table(
            "forensics",
            "Parameter forensics: which readings give the paper's 3.1M and 2.9M (XCiT-N12/16, 224 px)",
            ["reading", "params, 1000 classes", "params, 10 classes", "GFLOPs, 1000 classes", "rounds to"],
            forensics_rows or [["not run", "", "", "", ""]],
            "Counted by the flops stage (fvcore, cross-checked); 3.1M and 2.9M from the arXiv abstract.",
        )
    )

    # Cost in time (the bench stage).
    bench = load_json(Path(args.bench), profile)
    if bench is None:
        bench_rows = [["not run", *[""] * 9]]
        bench_note = "The bench stage has not run."
    else:
        bench_rows = [
            [
                name + (f" ({bench['reference']}, timm's own)" if name == BENCH_REFERENCE else ""),
                _fmt(m["train_step_ms"], 1),
                f"{m['train_img_per_s']:.0f}",
                f"{m['eval_img_per_s']:.0f}",
                _fmt(m["flop_ratio"], 3),
                _fmt(m["step_time_ratio"], 3),
                _fmt(m["step_over_flop_ratio"], 3),
                _fmt(m["train_gflop_per_s"], 1),
                f"{m['train_ceiling_fraction']:.0%}",
                f"{m['train_step_ms_min']:.1f}–{m['train_step_ms_max']:.1f}",
            ]
            for name, m in ((n, bench["models"][n]) for n in bench["order"])
        ]
        c, loader, targets = bench["ceiling"], bench["loader"], bench["targets"]
        met = "; ".join(f"{k} ({t['limit']}): {'met' if t['met'] else 'NOT met'}" for k, t in targets.items())
        bench_note = (
            f"Measured by the bench stage on {bench['device']} ({bench['threads']} threads, {bench['dtype']}), batch "
            f"{bench['batch_size']} at {bench['img_size']} px, median of {bench['rounds']} interleaved rounds; machine-"
            f"dependent measurements, not reproducible results. Ceiling: {c['gflop_per_s']:.1f} GFLOP/s, a "
            f"{c['shape'][0]}x{c['shape'][1]} @ {c['shape'][1]}x{c['shape'][2]} matrix product timed in the same "
            f"rounds; the device's matrix rate (square {bench['peak']['shape'][0]} product): "
            f"{bench['peak']['gflop_per_s']:.1f} GFLOP/s, of which the baseline reaches "
            f"{bench['models'][bench['baseline']]['train_peak_fraction']:.0%} in training. Loader: "
            f"{loader['img_per_s']:,.0f} training img/s ({loader['mode']}), "
            f"{loader['over_train']:.0f}x the baseline's training rate. FLOPs: closed-form counts (2 flops per "
            f"multiply-add, a training step = 3x the forward). Targets: {met}."
        )
    tables.append(
        _table(
            "bench",
            "Cost in time: training step and eval pass per variant",
            [
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
            ],
            bench_rows,
            bench_note,
        )
    )

    # Assumption register.
    register = []
    for item in assumptions:
        used = "; ".join(
            f"{v}: " + ", ".join(f"{k}={raw['variants'][v][k]}" for k in item["keys"] if k in raw["variants"][v])
            for v in raw["variants"]
            if any(k in raw["variants"][v] for k in item["keys"])
        )
        register.append([item["detail"], item["alternatives"], item["default"], used or "(not a variant option)"])
    tables.append(
        _table(
            "assumptions",
            "Assumption register: details the abstracts leave open",
            ["detail", "alternatives", "default and why", "this run (params.yaml variants)"],
            register,
        )
    )

    # Verdicts.
    verdicts = []
    for claim in published["claims"]:
        tested = (
            claim["kind"] == "pretrain"
            and source in claim["datasets"]
            and backbone == claim["backbone"]
            and model["img_size"] == 224
        )
        verdicts.append(verdict(claim, tested=tested, differences=differences))
    rule = RULE.format(confidence=confidence)
    tables.append(
        _table(
            "verdicts",
            "Verdicts",
            ["claim", "outcome", "detail"],
            [[v.claim, v.outcome, v.detail] for v in verdicts],
            rule,
        )
    )

    # Provenance.
    prov_rows = []
    stages = (
        [("flops", Path(args.flops).with_name("provenance.json"), None)]
        + [("bench", Path(args.bench).with_name("provenance.json"), None)]
        + [
            (f"prepare@{d}", Path(str(instance(args.prepare, dataset=d)).replace(".json", ".provenance.json")), d)
            for d in raw["datasets"]
        ]
        + [
            (f"pretrain@{v}-{s}", instance(args.pretrain, variant=v, seed=s) / "provenance.json", pre["dataset"])
            for v in pre["variants"]
            for s in seeds
        ]
        + [
            (f"finetune@{v}-{d}-{s}", instance(args.finetune, variant=v, dataset=d, seed=s) / "provenance.json", d)
            for v in fine["variants"]
            for d in fine["datasets"]
            for s in seeds
        ]
    )
    for name, path, dataset in stages:
        record = json.loads(path.read_text()) if path.is_file() else None
        if record is None:
            prov_rows.append([name, "not run", "", "", "", "", ""])
            continue
        params_hash = hashlib.sha256(json.dumps(record.get("params"), sort_keys=True).encode()).hexdigest()[:12]
        content = (prepare.get(dataset) or {}).get("content_hash", "n/a")[:19] if dataset else "n/a"
        packages = record.get("packages", {})
        prov_rows.append(
            [
                name,
                record.get("params", {}).get("profile", "?"),
                params_hash,
                (record.get("git_commit") or "?")[:10] + (" (dirty)" if record.get("git_dirty") else ""),
                f"torch {packages.get('torch', '?')}, timm {packages.get('timm', '?')}",
                record.get("hardware", {}).get("cpu", "?"),
                content,
            ]
        )
    tables.append(
        _table(
            "provenance",
            "Provenance of every stage instance",
            ["instance", "profile", "params hash", "git commit", "software", "hardware", "dataset content hash"],
            prov_rows,
        )
    )

    # Figures.
    published_points = [
        {"label": f"XCiT-{m['backbone']}/{m['patch']}", "kind": "baseline", "variant": "linear", **m}
        for m in published["xcit"]["models"]
    ] + [{"label": "proposed N12", "kind": "proposed", "params_m": 3.1, "gflops": None, "top1": 71.4}]
    curves = {}
    for v in pre["variants"]:
        runs = [_read_curves(instance(args.pretrain, variant=v, seed=s) / "curves.csv") for s in seeds]
        runs = [r for r in runs if r]
        if runs:
            epochs = min(len(r) for r in runs)
            curves[v] = [
                {"epoch": runs[0][e]["epoch"], "val_top1": sum(r[e]["val_top1"] for r in runs) / len(runs)}
                for e in range(epochs)
            ]
    similarity = {}
    for v in pre["variants"]:
        runs = [m["qkv_similarity"] for (vv, _), m in pretrain.items() if vv == v and m]
        if runs:
            blocks = sorted((k for k in runs[0] if k.startswith("blocks.")), key=lambda k: int(k.split(".")[1]))
            similarity[v] = [sum(max(r[b].values()) for r in runs) / len(runs) for b in blocks]
    figs = {
        "accuracy_vs_params": figures.accuracy_vs_cost(
            published_points, reproduced_points, cost="params_m", reproduced_label=run_label
        ),
        "accuracy_vs_flops": figures.accuracy_vs_cost(
            published_points, reproduced_points, cost="gflops", reproduced_label=run_label
        ),
        "training_curves": figures.training_curves(curves, title=f"pretraining ({run_label})"),
        "transfer": figures.transfer_bars(bars, fine["datasets"], fine["variants"]),
        "qkv_similarity": figures.similarity(similarity, title=f"Q/K/V similarity after pretraining ({run_label})"),
    }
    files: dict[str, bytes] = {}
    inline = {}
    for name, fig in figs.items():
        rendered = figures.save(fig)
        files[f"figures/{name}.png"] = rendered["png"]
        files[f"figures/{name}.svg"] = rendered["svg"]
        inline[name] = "data:image/png;base64," + base64.b64encode(rendered["png"]).decode()
    for table in tables:
        files.update(_table_files(table))
    files["index.html"] = _render(
        profile=profile,
        synthetic=synthetic,
        run_label=run_label,
        tables=tables,
        verdicts=verdicts,
        rule=rule,
        figures=inline,
        reduced=source != "imagenet",
    ).encode()
    return files


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
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--published", required=True)
    parser.add_argument("--assumptions", required=True)
    parser.add_argument("--flops", required=True, help="flops metrics JSON")
    parser.add_argument("--bench", required=True, help="bench metrics JSON")
    parser.add_argument("--prepare", required=True, help="pattern of prepare metrics, with {dataset}")
    parser.add_argument("--pretrain", required=True, help="pattern of pretrain result folders, {variant} {seed}")
    parser.add_argument("--finetune", required=True, help="pattern of finetune folders, {variant} {dataset} {seed}")
    parser.add_argument("--out", required=True, help="report folder")
    args = parser.parse_args(argv)
    run_stage("report", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    files = build(args)
    write_outputs({Path(args.out) / name: content for name, content in files.items()})
    print(f"report: {Path(args.out) / 'index.html'} ({len(files)} files)")


if __name__ == "__main__":
    main()
