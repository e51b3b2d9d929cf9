"""Stage ``bench``: what each Q/K/V embedding costs in time, measured side by side in one process.

For every variant (and timm's own XCiT as a reference) at the profile's model, resolution and batch size:

- the median time of the pipeline's own training step (:func:`pipeline.training.recipe.train_step`: forward, loss,
  backward, the recipe's optimizer) and of an eval forward pass, after warm-up. The rounds are interleaved —
  each round times one step of every model in turn, starting at a different model each round — so drift of
  the machine (thermal, other load) hits every model alike;
- the step-time ratio to the baseline (``bench.baseline``) next to the FLOP ratio (closed-form formulas of
  ``qkv.counts``, the ones the flops stage cross-checks with fvcore): a variant should cost no more time than
  its FLOPs;
- the achieved GFLOP/s (2 flops per multiply-add; a training step counts 3x the forward) and its fraction of
  a matrix-product ceiling timed in the same rounds on the model's dominant shape (the MLP's first layer,
  ``(batch x tokens, C) @ (C, 4C)``), in the step's precision;
- the data loader's training images/s over the prepared source dataset, with the recipe's augmentation (on the timm
  path: one CPU core on this project's path and on timm's stock path side by side, the plan's measurement, times
  ``bench.loader_workers``).

Timings are measurements, not reproducible results: they depend on the machine and its load. They live only
here — no training metrics file holds a time (those go to provenance) — so the audit of a training stage
never sees them. The stage itself is *not* marked always-changed: that would make every ``dvc repro`` re-run
it and break "a second ``dvc repro`` runs nothing". It re-runs when its code, params or data change, or on
request (``dvc repro -f -s bench``); ``make audit STAGE=bench`` compares the dimensionless ratios only,
within ``audit.ratio_rel_tol``.

Reads:  params.yaml ``profile``, ``variants``, ``model``, ``device``, ``pretrain.dataset``, ``pretrain.recipe``,
        ``bench``;
        the prepared source dataset.
Writes: --metrics     JSON: per model the median step times, img/s, ratios, GFLOP/s and fraction of the
                      ceiling; the ceiling; the loader; the targets and whether each is met.
        --times       CSV: every timed step (round, model, kind, seconds), for spread and plots.
        --provenance  JSON: resolved params, versions, hardware, wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from pipeline import cli, config, provenance
from pipeline.cli import run_stage
from pipeline.outputs import csv_bytes, json_bytes, round_measurement, write_outputs
from pipeline.reporting import tables

PARAMS = ("profile", "variants", "backbones", "device", "pretrain.dataset", "pretrain.recipe", "bench")


def measure(settings: config.BenchConfig, prepared: Path, *, progress: bool = False) -> tuple[dict, list[dict]]:
    """Run the benchmark; returns (metrics, rows of every timed step)."""
    import torch  # torch and what imports it: here, not at the top, so --help answers without them

    from pipeline.data.loaders import read_meta
    from pipeline.planning import timing
    from pipeline.training import distributed
    from pipeline.training.distributed import configure_torch
    from pipeline.training.recipe import amp_dtype

    bench = settings.bench
    device = distributed.init(settings.device).device  # one process; an error if CUDA is asked for and absent
    # as the training stages run, with timm's and XCiT's GPU kernels (runtime.gpu_kernels: fast), which the rates
    # timm publishes and the plan prices assume; deterministic ones are slower (docs/auditing.md)
    configure_torch(device, bench.threads, "fast")
    timer = timing.Timer(device)
    num_classes = read_meta(prepared)["num_classes"]  # the source dataset's classifier width
    subjects = timing.subjects(settings, device, num_classes)
    dtype = amp_dtype(device, bench.amp) or torch.float32
    shape = timing.dominant_shape(settings.nets[0], bench.batch_size)
    gemm = timing.Matmul(shape, dtype, device, timer)
    side = 8192 if device.type == "cuda" else 1024  # the device's matrix rate: a large square product
    peak = timing.Matmul((side, side, side), dtype, device, timer)

    rows = _rounds(subjects, gemm, peak, timer, bench, progress)
    rates = {"ceiling": gemm.flops / _median(rows, "matmul", "ceiling") / 1e9}
    rates["peak"] = peak.flops / _median(rows, "matmul", "peak") / 1e9
    per_model = _per_model(subjects, rows, settings, rates)
    loader = _loader(settings, prepared)
    metrics = {
        "profile": settings.profile,
        "measured": True,  # timings: machine-dependent, compared by the audit as ratios only
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "batch_size": bench.batch_size,
        "eval_batch_size": bench.eval_batch_size,
        "img_size": settings.nets[0].img_size,
        "rounds": bench.rounds,
        "baseline": bench.baseline,
        "reference": bench.reference,
        "order": [s.name for s in subjects],  # the JSON keys are sorted; this is the table's row order
        "models": per_model,
        "ceiling": {"shape": list(shape), "gflop_per_s": rates["ceiling"]},
        "peak": {"shape": [side, side, side], "gflop_per_s": rates["peak"]},
        "loader": {**loader, "over_train": loader["img_per_s"] / per_model[bench.baseline]["train_img_per_s"]},
    }
    metrics["targets"] = _targets(metrics, bench)
    return round_measurement(metrics), rows


def _loader(settings: config.BenchConfig, prepared: Path) -> dict:
    """The loader's training images/s. Batched path: the loader itself over ``bench.loader_batches`` batches. timm
    path: one CPU core on this project's path and on timm's stock path, side by side on the prepared dataset's
    first ``loader_batches x batch_size`` training images (:func:`pipeline.planning.throughput.loader_rates`, the
    plan's measurement), times ``bench.loader_workers`` cores."""
    from pipeline.planning import throughput, timing

    bench, augment = settings.bench, settings.recipe.augment
    if augment.mode != "timm":
        return {"mode": augment.mode, "img_per_s": timing.loader_rate(settings, prepared)}
    images = bench.loader_batches * bench.batch_size
    rates = throughput.loader_rates(augment, settings.nets[0].img_size, images=images, prepared=prepared)
    workers = max(1, bench.loader_workers)
    return {"mode": "timm", "img_per_s": rates["per_core_img_per_s"] * workers, "workers": workers, **rates}


def _rounds(subjects, gemm, peak, timer, bench: config.Bench, progress: bool) -> list[dict]:
    """Warm every model up, then time ``bench.rounds`` interleaved rounds: each times both matrix products and one
    training step and one eval pass of every model, starting at a different model each round."""
    from tqdm import tqdm

    for s in subjects:
        for _ in range(bench.warmup):
            s.train()
            s.evaluate()
    rows = []
    for r in tqdm(range(bench.rounds), desc="bench rounds", disable=not progress):
        rows.append({"round": r, "model": "matmul", "kind": "ceiling", "seconds": gemm.time()})
        rows.append({"round": r, "model": "matmul", "kind": "peak", "seconds": peak.time()})
        for i in range(len(subjects)):
            s = subjects[(r + i) % len(subjects)]  # a different model first in each round
            rows.append({"round": r, "model": s.name, "kind": "train", "seconds": timer(s.train)})
            rows.append({"round": r, "model": s.name, "kind": "eval", "seconds": timer(s.evaluate)})
    return rows


def _median(rows: list[dict], model: str, kind: str) -> float:
    return statistics.median(x["seconds"] for x in rows if x["model"] == model and x["kind"] == kind)


def _per_model(subjects, rows: list[dict], settings: config.BenchConfig, rates: dict) -> dict:
    """Step times, rates and ratios of every timed model, against the baseline's."""
    bench = settings.bench
    base = next(s for s in subjects if s.name == bench.baseline)
    base_train = _median(rows, base.name, "train")
    out = {}
    for s in subjects:
        train_s, eval_s = _median(rows, s.name, "train"), _median(rows, s.name, "eval")
        train_rate, eval_rate = bench.batch_size / train_s, bench.eval_batch_size / eval_s
        step_ratio, flop_ratio = train_s / base_train, s.flops / base.flops
        train_gflops = 3 * 2 * s.flops * train_rate / 1e9
        times = sorted(x["seconds"] for x in rows if x["model"] == s.name and x["kind"] == "train")
        out[s.name] = {
            "forward_gflops_per_image": 2 * s.flops / 1e9,
            "train_step_ms": 1e3 * train_s,
            "train_step_ms_min": 1e3 * times[0],
            "train_step_ms_max": 1e3 * times[-1],
            "eval_ms": 1e3 * eval_s,
            "train_img_per_s": train_rate,
            "eval_img_per_s": eval_rate,
            "step_time_ratio": step_ratio,
            "flop_ratio": flop_ratio,
            "step_over_flop_ratio": step_ratio / flop_ratio,
            "train_gflop_per_s": train_gflops,
            "eval_gflop_per_s": 2 * s.flops * eval_rate / 1e9,
            "train_ceiling_fraction": train_gflops / rates["ceiling"],
            "train_peak_fraction": train_gflops / rates["peak"],
        }
    return out


def _targets(metrics: dict, bench: config.Bench) -> dict:
    models, t = metrics["models"], bench.targets
    base = models[bench.baseline]
    targets = {
        "step_over_flops": {
            "limit": t.step_over_flops,
            "met": all(models[v]["step_over_flop_ratio"] <= t.step_over_flops for v in bench.variants),
        },
        "ceiling_fraction": {"limit": t.ceiling_fraction, "met": base["train_ceiling_fraction"] >= t.ceiling_fraction},
        "loader_over_train": {
            "limit": t.loader_over_train,
            "met": metrics["loader"]["over_train"] >= t.loader_over_train,
        },
    }
    if bench.reference:
        targets["not_slower_than_timm"] = {
            "limit": 1.0,
            "met": base["train_step_ms"] <= models[bench.reference]["train_step_ms"],
        }
    return targets


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(
        "python -m pipeline.stages.bench",
        __doc__,
        {
            "--params": "params.yaml",
            "--data": "prepared source dataset folder (for the loader)",
            "--metrics": "metrics JSON to write",
            "--times": "CSV of every timed step to write",
            "--provenance": "provenance JSON to write",
        },
    )
    args = parser.parse_args(argv)
    run_stage("bench", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    started = time.time()
    settings = config.load_bench(args.params)
    metrics, rows = measure(settings, Path(args.data), progress=sys.stderr.isatty())
    times = round_measurement(rows)
    write_outputs(
        {
            args.metrics: json_bytes(metrics),
            args.times: csv_bytes(times, ["round", "model", "kind", "seconds"]),
            args.provenance: json_bytes(provenance.record("bench", settings, started=started)),
        }
    )
    print(tables.text(tables.bench(metrics)))


if __name__ == "__main__":
    main()
