"""Stage ``plan``: what a profile's DAG will cost, before it runs — images, FLOPs, device-hours, wall time, disk and
input pipeline of every training stage, per stage and backbone and in total.

- Images: per run, the training images each epoch really draws (the samplers of :mod:`pipeline.data.samples` and
  :mod:`pipeline.data.batched`, repeated augmentation and whole batches included) times the epochs; evaluated images:
  the validation split every epoch, the test split at the end (twice with an EMA) and the diagnostic's images.
  Dataset sizes come from ``references/compute.yaml`` (cited), split by the profile's fractions as the prepare
  stage splits them: no dataset is read, the roots need not exist.
- FLOPs: the closed-form forward counts of :mod:`qkv.counts` for each backbone, variant and head, 3x per trained
  image, 1x per evaluated one.
- Device-hours: images / rate per device (:mod:`pipeline.planning.rates`: --img-per-s, else the bench
  stage's measurements of this profile on its device, else timm's published benchmark; each figure labelled).
  Wall time: device-hours over the launcher's processes (``--nproc-per-node`` x ``--nodes``), stages one after
  another, scaling assumed linear.
- Disk: prepared datasets; the weights kept (float32, x2 with an EMA); the resume checkpoint a run holds while it
  runs (weights, AdamW's two moments, EMA).
- Input pipeline (augment mode ``timm``): images/s one CPU core decodes and transforms, measured here
  (:mod:`pipeline.planning.throughput`), and the cores each device needs at its rate.

A rehearsal's params (a non-null ``rehearsal`` section) plan the real profile it records.

Reads:  params.yaml ``profile``, ``variants``, ``datasets``, ``backbones``, ``launcher``, ``device``, ``seeds``,
        ``pretrain``, ``finetune``, ``bench.backbone``, ``bench.baseline``, ``plan``, ``rehearsal``,
        ``cluster.training``;
        --compute (references/compute.yaml), --bench (the bench stage's metrics), --measured (training
        provenance records, optional: peak host memory).
Writes: --json   the plan (JSON: the report's plan section); --table  the table as Markdown. Prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import cli, config, provenance
from pipeline.cli import run_stage
from pipeline.config import ParamsError, PlanConfig
from pipeline.outputs import json_bytes, round_measurement, write_outputs
from pipeline.planning import cost_tables, costs, rates, throughput
from pipeline.reporting import tables

PARAMS = (
    "profile",
    "variants",
    "datasets",
    "backbones",
    "launcher",
    "device",
    "seeds",
    "pretrain",
    "finetune",
    "bench.backbone",
    "bench.baseline",
    "plan",
    "rehearsal",
    "cluster.training",  # its CPUs per GPU: the loader cores of each GPU, the loader cap
)


def run(
    cfg: PlanConfig, *, devices: costs.Devices, rate: rates.Rates, measure, host: str = "", memory: dict | None = None
) -> dict:
    """The plan of ``cfg``'s profile on ``devices`` at ``rate``; ``measure(augment, img_size)`` returns one CPU
    core's training images/s on this project's and timm's stock loader paths
    (:func:`pipeline.planning.throughput.loader_rates`, measured on ``host``); ``memory``: a measured peak host
    memory."""
    p = cfg.params
    inputs = _inputs(cfg, rate, measure, host)
    limits = {(e["stage"], b): x["loader_img_per_s"] for e in inputs for b, x in e.get("backbones", {}).items()}
    groups = [
        _group(cfg, stage, b, devices, rate, limits.get((stage, b))) for stage in ("pretrain", "finetune")
        for b in p.backbones
    ]  # fmt: skip
    prepared = {
        name: {**vars(cfg.splits(name)), "bytes": _prepared_bytes(cfg, name), "storage": d.info.storage}
        for name, d in p.datasets.items()
    }
    disk = sum(d["bytes"] for d in prepared.values())
    hours = [g["device_hours"] for g in groups]
    known = None not in hours
    total = {
        "runs": sum(g["runs"] for g in groups),
        **{k: sum(g[k] for g in groups) for k in ("train_images", "eval_images", "train_flops", "eval_flops")},
        "device_hours": sum(hours) if known else None,
        "wall_hours": sum(hours) / devices.total if known else None,
        "disk_bytes": disk + sum(g["weights_bytes"] for g in groups),
        "resume_bytes": max(g["resume_bytes"] for g in groups),
    }
    return round_measurement(
        {
            "profile": p.profile,
            "rehearsal": _rehearsal(cfg),
            "devices": {
                "kind": devices.kind,
                "unit": devices.unit,
                "per_node": devices.per_node,
                "nodes": devices.nodes,
                "total": devices.total,
            },  # fmt: skip
            "groups": groups,
            "prepare": {"datasets": prepared, "bytes": disk},
            "total": total,
            "rate_sources": rate.sources,
            "ignored": rate.ignored,
            "input": inputs,
            "memory": memory,
        }
    )


def _rehearsal(cfg: PlanConfig) -> dict | None:
    """What the plan undid: the rehearsal the params file records (None for a real profile)."""
    if cfg.rehearsal is None:
        return None
    return {"of": cfg.rehearsal.of, "overrides": len(cfg.rehearsal.overrides)}


def _group(cfg: PlanConfig, stage: str, backbone: str, devices: costs.Devices, rate: rates.Rates,
           loader: float | None) -> dict:  # fmt: skip
    """Every run of ``stage`` on ``backbone`` (variants x datasets x seeds), added up; each trains at the smaller of
    its device's rate and ``loader`` (images/s the CPU cores of one device deliver; None: no limit known)."""
    p = cfg.params
    section = p.pretrain if stage == "pretrain" else p.finetune
    recipe, world = section.recipe, devices.total
    datasets = (p.pretrain.dataset,) if stage == "pretrain" else p.finetune.datasets
    if recipe.batch_size % world:
        raise ParamsError(
            f"{stage}.recipe.batch_size: {recipe.batch_size} is not divisible by the {world} processes of the launcher "
            f"x nodes; the run would refuse to start"
        )
    sums = dict.fromkeys(("train_images", "eval_images", "train_flops", "eval_flops", "weights_bytes"), 0)
    resume, hours, seen = 0, 0.0, []
    for variant in section.variants:
        for dataset in datasets:
            splits = cfg.splits(dataset)
            cost = costs.run_cost(cfg.nets[backbone, variant], splits, recipe, world)
            if cost.train_images == 0:
                raise ParamsError(
                    f"{stage}.recipe.batch_size: {recipe.batch_size} is more than an epoch of datasets.{dataset} draws "
                    f"on {world} processes ({splits.train} training images); lower the batch or the processes"
                )
            r = rate(backbone, variant, splits.classes)
            if r is not None and loader is not None and loader < r.train:
                r = rates.Rate(loader, r.eval, r.kind + ", loader-bound")
            seen.append(r)
            n = len(p.seeds)
            for key, value in (("train_images", cost.train_images), ("eval_images", cost.eval_images),
                               ("train_flops", cost.train_flops), ("eval_flops", cost.eval_flops),
                               ("weights_bytes", cost.weight_bytes)):  # fmt: skip
                sums[key] += n * value
            resume = max(resume, cost.resume_bytes)
            if r is not None:
                hours += n * (cost.train_images / r.train + cost.eval_images / r.eval) / 3600
    known = [r for r in seen if r is not None]
    return {
        "stage": stage,
        "backbone": backbone,
        "runs": len(section.variants) * len(datasets) * len(p.seeds),
        "epochs": recipe.epochs,
        **sums,
        "resume_bytes": resume,
        "device_hours": hours if len(known) == len(seen) else None,
        "wall_hours": hours / world if len(known) == len(seen) else None,
        "rate": {
            "min": min(r.train for r in known),
            "max": max(r.train for r in known),
            "kinds": sorted({r.kind.removesuffix(", loader-bound") for r in known}),
            "loader_bound": any(r.kind.endswith("loader-bound") for r in known),
        }
        if known
        else None,
    }


def _prepared_bytes(cfg: PlanConfig, name: str) -> int:
    dataset = cfg.params.datasets[name]
    line = cfg.compute.datasets[dataset.source].index_line_bytes if dataset.info.kind != "synthetic" else None
    return costs.prepared_bytes(cfg.splits(name), dataset.img_size, line)


def _inputs(cfg: PlanConfig, rate: rates.Rates, measure, host: str) -> list[dict]:
    """Per training stage, its input pipeline: batched (nothing decoded per image), or timm: one core's measured
    rate on this project's path and on timm's stock path, and per backbone the cores each device has for its loader
    (the training jobs' CPUs per GPU less one for the rank's own process; whether ``runtime.workers`` uses them is
    a runtime setting, which reaches no output: :func:`cost_tables.plan_workers` says it), the rate they
    deliver, the device's rate and the smaller of the two: what the device trains at."""
    p, measured, out = cfg.params, {}, []
    for stage, section in (("pretrain", p.pretrain), ("finetune", p.finetune)):
        augment = section.recipe.augment
        datasets = (p.pretrain.dataset,) if stage == "pretrain" else p.finetune.datasets
        entry = {"stage": stage, "mode": augment.mode}
        if augment.mode == "timm":
            entry["decodes_jpeg"] = any(p.datasets[d].info.storage == "files" for d in datasets)
            entry["measured_on"] = f"{host or 'this CPU'}, {p.plan.loader_images} stand-in JPEGs"
            entry["backbones"] = {}
            cores = _cores_per_device(p)
            loader_cores = None if cores is None else max(1, cores - 1)  # runtime.workers: checked in main's lines
            for b, model in p.backbones.items():
                key = (augment, model.img_size)
                if key not in measured:
                    measured[key] = measure(augment, model.img_size)
                m = measured[key]
                entry["measured_on"] = m.get("measured_on", entry["measured_on"])
                fastest = [rate(b, v, cfg.splits(d).classes) for v in section.variants for d in datasets]
                device_rate = max((r.train for r in fastest if r is not None), default=None)
                decodes = entry["decodes_jpeg"]  # the JPEG rate caps only stages that decode JPEGs
                loader = None if loader_cores is None or not decodes else m["per_core_img_per_s"] * loader_cores
                entry["backbones"][b] = {
                    "img_size": model.img_size,
                    **{
                        k: m.get(k)
                        for k in ("per_core_img_per_s", "timm_per_core_img_per_s", "ratio", "load_1min", "cpus")
                    },  # fmt: skip
                    "cores_per_device": cores,
                    "loader_cores": loader_cores,
                    "loader_img_per_s": loader,
                    "device_img_per_s": device_rate,
                    "effective_img_per_s": None if device_rate is None else min(device_rate, loader or device_rate),
                    "cores_needed": None if device_rate is None else device_rate / m["per_core_img_per_s"] + 1,
                }
        out.append(entry)
    return out


def _cores_per_device(p) -> int | None:
    """CPU cores a training job has per GPU (``cluster.training``); None on a CPU profile (the loader shares the
    cores that train)."""
    res = p.cluster.training
    if p.device != "cuda" or not res.gpus_per_node:
        return None
    return res.cpus_per_node // res.gpus_per_node


def _bench_loader(bench: Path | None, p, augment, img_size: int) -> dict | None:
    """The bench stage's loader measurement (the same function's), when it was taken for this profile's pretraining
    augmentation at ``img_size``; else None (the plan measures)."""
    import json

    if bench is None or not bench.is_file() or augment != p.pretrain.recipe.augment:
        return None
    try:
        data = json.loads(bench.read_text())
        loader = data["loader"]
        same = data["profile"] == p.profile and data["img_size"] == img_size and loader["mode"] == "timm"
    except (ValueError, KeyError, TypeError):
        return None  # rates.resolve names a damaged bench file
    return {**loader, "measured_on": f"the bench stage ({bench}), {loader.get('images')} images"} if same else None


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(
        "python -m pipeline.stages.plan",
        __doc__,
        {"--params": "the params file to plan (a rehearsal's: the real profile it records)"},
    )
    parser.add_argument("--compute", default="references/compute.yaml", help="dataset sizes and GPU references")
    parser.add_argument("--bench", help="the bench stage's metrics JSON (used when measured for this profile)")
    parser.add_argument("--img-per-s", type=float, help="training images/s per device of bench.backbone's baseline")
    parser.add_argument("--gpu", help="the GPU --img-per-s was measured on, named in the plan (e.g. H100)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes the launcher runs on (default 1)")
    parser.add_argument("--measured", nargs="*", default=[], metavar="DIR", help="training provenance folders")
    parser.add_argument("--json", help="plan JSON to write")
    parser.add_argument("--table", help="Markdown table to write")
    args = parser.parse_args(argv)
    run_stage("plan", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    cfg = config.load_plan(args.params, args.compute)
    p = cfg.params
    devices = costs.devices(p.launcher, p.device, args.nodes)
    rate = rates.resolve(cfg, img_per_s=args.img_per_s, bench=Path(args.bench) if args.bench else None, gpu=args.gpu)

    def measure(augment, img_size: int) -> dict:
        taken = _bench_loader(Path(args.bench) if args.bench else None, p, augment, img_size)
        return taken or throughput.loader_rates(augment, img_size, images=p.plan.loader_images)

    memory = throughput.peak_memory([Path(d) for d in args.measured])
    plan = run(cfg, devices=devices, rate=rate, measure=measure, host=provenance.cpu_model(), memory=memory)
    table = cost_tables.plan(plan)
    files = {}
    if args.json:
        files[args.json] = json_bytes(plan)
    if args.table:
        files[args.table] = (tables.text(table) + "\n").encode()
    write_outputs(files)
    print(tables.text(table))
    for line in cost_tables.plan_workers(plan, p.runtime.workers):
        print(line)


if __name__ == "__main__":
    main()
