"""Stage ``bench``: what each Q/K/V embedding costs in time, measured side by side in one process.

For every variant (and timm's own XCiT as a reference) at the profile's model, resolution and batch size:

- the median time of the pipeline's own training step (:func:`pipeline.train.train_step`: forward, loss,
  backward, the recipe's optimizer) and of an eval forward pass, after warm-up. The rounds are interleaved —
  each round times one step of every model in turn, starting at a different model each round — so drift of
  the machine (thermal, other load) hits every model alike;
- the step-time ratio to the linear baseline next to the FLOP ratio (closed-form formulas of ``qkv.counts``,
  the ones the flops stage cross-checks with fvcore): a variant should cost no more time than its FLOPs;
- the achieved GFLOP/s (2 flops per multiply-add; a training step counts 3x the forward) and its fraction of
  a matrix-product ceiling timed in the same rounds on the model's dominant shape (the MLP's first layer,
  ``(batch x tokens, C) @ (C, 4C)``), in the step's precision;
- the data loader's training images/s over the prepared source dataset, with the recipe's augmentation.

Timings are measurements, not reproducible results: they depend on the machine and its load. They live only
here — no training metrics file holds a time (those go to provenance) — so the audit of a training stage
never sees them. The stage itself is *not* marked always-changed: that would make every ``dvc repro`` re-run
it and break "a second ``dvc repro`` runs nothing". It re-runs when its code, params or data change, or on
request (``dvc repro -f -s bench``); ``make audit STAGE=bench`` compares the dimensionless ratios only,
within ``audit.ratio_rel_tol``.

Reads:  params.yaml ``profile``, ``variants``, ``model``, ``pretrain`` (recipe, augmentation),
        ``datasets.<source>``, ``bench``; the prepared source dataset.
Writes: --metrics     JSON: per model the median step times, img/s, ratios, GFLOP/s and fraction of the
                      ceiling; the ceiling; the loader; the targets and whether each is met.
        --times       CSV: every timed step (round, model, kind, seconds), for spread and plots.
        --provenance  JSON: resolved params, versions, hardware, wall time.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.io import json_bytes, provenance, write_outputs
from pipeline.params import ParamsError, load_sections, parse, variant_options

PARAMS = ("profile", "variants", "model", "pretrain", "datasets", "bench")
REFERENCE = "timm"  # the row of timm's own XCiT


@dataclass(frozen=True)
class Targets:
    step_over_flops: float  # a variant's step-time ratio may be at most this times its FLOP ratio
    ceiling_fraction: float  # the linear baseline's training GFLOP/s at least this fraction of the ceiling
    loader_over_train: float  # the loader at least this many times the baseline's training img/s


@dataclass(frozen=True)
class BenchParams:
    variants: tuple[str, ...]  # keys of the variants section
    baseline: str  # the variant (one of ``variants``) the ratios are taken against
    reference: str | None  # timm model timed beside the variants (same recipe), e.g. xcit_nano_12_p8_224
    device: str  # "cpu" or "cuda"
    amp: bool  # bf16 autocast (what the training stages do on GPU)
    threads: int  # torch CPU threads (0: torch's default)
    batch_size: int  # training batch per process
    eval_batch_size: int
    warmup: int  # untimed steps per model before the rounds
    rounds: int  # timed rounds; each times one train step and one eval pass of every model
    loader_batches: int  # training batches drawn to time the loader
    targets: Targets

    def check(self) -> None:
        for key in ("batch_size", "eval_batch_size", "rounds", "loader_batches"):
            if getattr(self, key) <= 0:
                raise ParamsError(f"bench.{key}: expected a positive integer, got {getattr(self, key)}")
        for key in ("warmup", "threads"):
            if getattr(self, key) < 0:
                raise ParamsError(f"bench.{key}: must not be negative, got {getattr(self, key)}")
        if self.device not in ("cpu", "cuda"):
            raise ParamsError(f"bench.device: {self.device!r} is not one of: cpu, cuda")
        if self.baseline not in self.variants:
            raise ParamsError(f"bench.baseline: {self.baseline!r} is not in bench.variants")
        for key, value in asdict(self.targets).items():
            if not value > 0:
                raise ParamsError(f"bench.targets.{key}: expected a positive number, got {value}")


def load(path: str):
    """The pretraining sections (as ``pipeline.pretrain`` reads them) and the ``bench`` section, validated."""
    from pipeline import pretrain as pretrain_stage

    bench = parse(BenchParams, load_sections(path, ("bench",))["bench"], "bench")
    bench.check()
    profile, variants, model, pretrain, dataset = pretrain_stage.load(path)
    for name in bench.variants:
        variant_options(variants, name, "bench.variants")
    pretrain.check("pretrain")
    return profile, variants, model, pretrain, dataset, bench


# ----------------------------------------------------------------------------------------------------


class _Timer:
    """Wall time of a callable, with the device synchronised around it."""

    def __init__(self, device):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self, fn) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start


@dataclass
class _Subject:
    """One timed model: how to run its training step and its eval pass."""

    name: str
    net: object  # the torch module
    flops: int  # forward flops per image (multiply-adds)
    train: object  # () -> None
    evaluate: object  # () -> None


def _subjects(variants, model, pretrain, bench, device, num_classes: int) -> list[_Subject]:
    import timm
    import torch

    from pipeline.train import (
        TrainParams,
        arch_overrides,
        build_model,
        forward_flops,
        loss_recipe,
        make_optimizer,
        train_step,
    )

    recipe = TrainParams.recipe_of(pretrain)
    lr = recipe.lr_effective
    amp = bench.amp and device.type == "cuda"
    size = model.img_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(bench.batch_size, 3, size, size, generator=g).to(device)
    labels = torch.randint(0, num_classes, (bench.batch_size,), generator=g).to(device)
    eval_images = torch.randn(bench.eval_batch_size, 3, size, size, generator=g).to(device)

    def subject(name: str, net: torch.nn.Module, flops: int) -> _Subject:
        net.to(device).train()
        optimizer = make_optimizer(net, recipe, lr)
        mixup, criterion = loss_recipe(recipe, num_classes)

        def step():
            train_step(net, images, labels, optimizer=optimizer, criterion=criterion, mixup=mixup, amp=amp)

        @torch.no_grad()
        def evaluate():
            net.eval()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                net(eval_images)
            net.train()

        return _Subject(name, net, flops, step, evaluate)

    out = []
    for name in bench.variants:
        torch.manual_seed(0)
        net = build_model(model, variants[name], num_classes)
        out.append(subject(name, net, forward_flops(model, variants[name], num_classes)))
    if bench.reference:
        if model.patch_size not in (8, 16):
            raise ParamsError(
                f"bench.reference: timm's XCiT has no patch-{model.patch_size} stem (model.patch_size); set "
                "bench.reference: null"
            )
        torch.manual_seed(0)
        try:
            net = timm.create_model(
                bench.reference,
                num_classes=num_classes,
                img_size=size,
                drop_path_rate=model.drop_path_rate,
                **arch_overrides(model),
            )
        except (RuntimeError, ValueError) as exc:  # timm: "Unknown model (...)"
            raise ParamsError(f"bench.reference: {exc}") from None
        baseline = out[bench.variants.index(bench.baseline)]
        _check_reference(bench, net.to(device), baseline.net, eval_images[:2])
        out.append(subject(REFERENCE, net, baseline.flops))
    return out


def _check_reference(bench, reference, baseline, images) -> None:
    """The reference must be the baseline's architecture: the baseline's weights load into it strictly and it
    then computes the same logits (up to float rounding)."""
    import torch

    problem = None
    try:
        reference.load_state_dict(baseline.state_dict(), strict=True)
    except RuntimeError as exc:
        problem = str(exc).splitlines()[0]
    else:
        with torch.no_grad():
            ref_out, base_out = reference.eval()(images), baseline.eval()(images)
        if not torch.allclose(ref_out, base_out, rtol=1e-4, atol=1e-5):
            problem = f"its logits differ from the baseline's by up to {(ref_out - base_out).abs().max():.3g}"
    reference.train()
    baseline.train()
    if problem:
        raise ParamsError(
            f"bench.reference: {bench.reference} is not the architecture of the baseline {bench.baseline!r} ({problem})"
        )


class _Matmul:
    """Timing of ``(M, K) @ (K, N)`` products in ``dtype``: enough back-to-back products per timing (~20 ms) to
    measure a rate rather than the launch and synchronisation overhead."""

    def __init__(self, shape: tuple[int, int, int], dtype, device, timer: _Timer):
        import torch

        M, K, N = shape
        g = torch.Generator().manual_seed(1)
        self.a = torch.randn(M, K, generator=g).to(device, dtype)
        self.b = torch.randn(K, N, generator=g).to(device, dtype)
        self.flops, self.timer, self.reps = 2 * M * K * N, timer, 1
        self.time()  # warm-up
        self.reps = max(1, math.ceil(0.02 / max(self.timer(self._run), 1e-9)))

    def _run(self) -> None:
        import torch

        for _ in range(self.reps):
            torch.mm(self.a, self.b)

    def time(self) -> float:
        """Seconds per product."""
        return self.timer(self._run) / self.reps


def _dominant_shape(model, batch_size: int) -> tuple[int, int, int]:
    """(M, K, N) of the model's largest product: the MLP's first layer over every token of the batch."""
    from pipeline.train import model_arch

    arch = model_arch(model)
    tokens = (model.img_size // arch.patch_size) ** 2
    return batch_size * tokens, arch.embed_dim, int(arch.embed_dim * arch.mlp_ratio)


def measure(variants, model, pretrain, dataset, bench, prepared: Path, *, progress: bool = False) -> tuple[dict, list]:
    """Run the benchmark; returns (metrics, rows of every timed step)."""
    import torch
    from tqdm import tqdm

    from pipeline.data import read_meta
    from pipeline.train import configure_torch

    if bench.device == "cuda" and not torch.cuda.is_available():
        raise ParamsError("bench.device: 'cuda' asked for, but torch sees no CUDA device here")
    device = torch.device(bench.device)
    configure_torch(device, bench.threads)  # as the training stages run
    timer = _Timer(device)
    num_classes = read_meta(prepared)["num_classes"]  # the source dataset's classifier width
    subjects = _subjects(variants, model, pretrain, bench, device, num_classes)

    dtype = torch.bfloat16 if bench.amp and device.type == "cuda" else torch.float32
    M, K, N = _dominant_shape(model, bench.batch_size)
    gemm = _Matmul((M, K, N), dtype, device, timer)
    side = 8192 if device.type == "cuda" else 1024  # the device's matrix rate: a large square product
    peak = _Matmul((side, side, side), dtype, device, timer)

    for s in subjects:
        for _ in range(bench.warmup):
            s.train()
            s.evaluate()
    rows = []
    n = len(subjects)
    for r in tqdm(range(bench.rounds), desc="bench rounds", disable=not progress):
        rows.append({"round": r, "model": "matmul", "kind": "ceiling", "seconds": gemm.time()})
        rows.append({"round": r, "model": "matmul", "kind": "peak", "seconds": peak.time()})
        for i in range(n):
            s = subjects[(r + i) % n]  # a different model first in each round
            rows.append({"round": r, "model": s.name, "kind": "train", "seconds": timer(s.train)})
            rows.append({"round": r, "model": s.name, "kind": "eval", "seconds": timer(s.evaluate)})

    def median(model_name: str, kind: str) -> float:
        return statistics.median(x["seconds"] for x in rows if x["model"] == model_name and x["kind"] == kind)

    ceiling = gemm.flops / median("matmul", "ceiling") / 1e9
    peak_rate = peak.flops / median("matmul", "peak") / 1e9
    base = next(s for s in subjects if s.name == bench.baseline)
    base_train = median(base.name, "train")
    per_model = {}
    for s in subjects:
        train_s, eval_s = median(s.name, "train"), median(s.name, "eval")
        train_rate, eval_rate = bench.batch_size / train_s, bench.eval_batch_size / eval_s
        step_ratio, flop_ratio = train_s / base_train, s.flops / base.flops
        train_gflops = 3 * 2 * s.flops * train_rate / 1e9
        times = sorted(x["seconds"] for x in rows if x["model"] == s.name and x["kind"] == "train")
        per_model[s.name] = {
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
            "train_ceiling_fraction": train_gflops / ceiling,
            "train_peak_fraction": train_gflops / peak_rate,
        }

    loader_rate = _loader_rate(pretrain, dataset, bench, prepared)
    base_rate = per_model[base.name]["train_img_per_s"]
    t = bench.targets
    targets = {
        "step_over_flops": {
            "limit": t.step_over_flops,
            "met": all(per_model[v]["step_over_flop_ratio"] <= t.step_over_flops for v in bench.variants),
        },
        "ceiling_fraction": {
            "limit": t.ceiling_fraction,
            "met": per_model[base.name]["train_ceiling_fraction"] >= t.ceiling_fraction,
        },
        "loader_over_train": {"limit": t.loader_over_train, "met": loader_rate / base_rate >= t.loader_over_train},
    }
    if bench.reference:
        targets["not_slower_than_timm"] = {
            "limit": 1.0,
            "met": per_model[base.name]["train_step_ms"] <= per_model[REFERENCE]["train_step_ms"],
        }
    metrics = {
        "measured": True,  # timings: machine-dependent, compared by the audit as ratios only
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "batch_size": bench.batch_size,
        "eval_batch_size": bench.eval_batch_size,
        "img_size": model.img_size,
        "rounds": bench.rounds,
        "baseline": bench.baseline,
        "reference": bench.reference,
        "order": [s.name for s in subjects],  # the JSON keys are sorted; this is the table's row order
        "models": per_model,
        "ceiling": {"shape": [M, K, N], "gflop_per_s": ceiling},
        "peak": {"shape": [side, side, side], "gflop_per_s": peak_rate},
        "loader": {"img_per_s": loader_rate, "over_train": loader_rate / base_rate, "mode": pretrain.augment.mode},
        "targets": targets,
    }
    return _round(metrics), rows


def _loader_rate(pretrain, dataset, bench, prepared: Path) -> float:
    """Training images/s the loader delivers (augmentation included), over ``bench.loader_batches`` batches."""
    from pipeline.data import build_loaders

    loaders = build_loaders(
        prepared,
        pretrain.augment,
        batch_size=bench.batch_size,
        seed=0,
        root=dataset.root,
        eval_batch_size=bench.eval_batch_size,
    )
    loader = loaders.train
    count, epoch, start = 0, 0, None
    while count < bench.loader_batches * bench.batch_size:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for images, _ in loader:
            if start is None:  # the clock starts after the first batch: worker start-up is not throughput
                start = time.perf_counter()
                continue
            count += len(images)
            if count >= bench.loader_batches * bench.batch_size:
                break
        epoch += 1
    return count / (time.perf_counter() - start)


def _round(obj, digits: int = 4):
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if obj else 0.0
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v, digits) for v in obj]
    return obj


def times_bytes(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["round", "model", "kind", "seconds"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "seconds": f"{r['seconds']:.6f}"} for r in rows)
    return buffer.getvalue().encode()


def table(metrics: dict) -> str:
    """The benchmark as a fixed-width text table (printed by the stage)."""
    lines = [
        f"{'model':<8} {'train ms':>9} {'img/s':>7} {'eval img/s':>10} {'step ratio':>10} {'FLOP ratio':>10} "
        f"{'step/FLOP':>9} {'GFLOP/s':>8} {'of ceiling':>10}"
    ]
    for name in metrics["order"]:
        m = metrics["models"][name]
        lines.append(
            f"{name:<8} {m['train_step_ms']:>9.1f} {m['train_img_per_s']:>7.0f} {m['eval_img_per_s']:>10.0f} "
            f"{m['step_time_ratio']:>10.3f} {m['flop_ratio']:>10.3f} {m['step_over_flop_ratio']:>9.3f} "
            f"{m['train_gflop_per_s']:>8.1f} {m['train_ceiling_fraction']:>10.1%}"
        )
    c, loader = metrics["ceiling"], metrics["loader"]
    peak, base = metrics["peak"], metrics["models"][metrics["baseline"]]
    lines.append(
        f"peak: {peak['gflop_per_s']:.1f} GFLOP/s ({metrics['dtype']} matmul, square {peak['shape'][0]}); the "
        f"baseline trains at {base['train_peak_fraction']:.1%} of it"
    )
    lines.append(
        f"ceiling: {c['gflop_per_s']:.1f} GFLOP/s ({metrics['dtype']} matmul {c['shape'][0]}x{c['shape'][1]} @ "
        f"{c['shape'][1]}x{c['shape'][2]}); loader {loader['img_per_s']:,.0f} img/s = "
        f"{loader['over_train']:.1f}x the baseline's training img/s"
    )
    for key, t in metrics["targets"].items():
        lines.append(f"target {key} ({t['limit']}): {'met' if t['met'] else 'NOT MET'}")
    return "\n".join(lines)


def profile_ops(variants, model, pretrain, bench, prepared: Path, name: str, steps: int = 5, rows: int = 25) -> str:
    """torch.profiler's table of the ops that take the most time in ``steps`` training steps of model ``name``
    (a variant, or ``timm``), after warm-up; for finding what to optimise (docs/performance.md)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from pipeline.data import read_meta
    from pipeline.train import configure_torch

    device = torch.device(bench.device)
    configure_torch(device, bench.threads)
    names = [v for v in bench.variants] + ([REFERENCE] if bench.reference else [])
    if name not in names:
        raise ParamsError(f"--profile: {name!r} is not benchmarked; choose one of: {', '.join(names)}")
    subjects = _subjects(variants, model, pretrain, bench, device, read_meta(prepared)["num_classes"])
    subject = next(s for s in subjects if s.name == name)
    for _ in range(max(bench.warmup, 2)):
        subject.train()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            subject.train()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--data", required=True, help="prepared source dataset folder (for the loader)")
    parser.add_argument("--metrics", help="metrics JSON to write")
    parser.add_argument("--times", help="CSV of every timed step to write")
    parser.add_argument("--provenance", help="provenance JSON to write")
    parser.add_argument(
        "--profile", metavar="MODEL", help="instead: print torch.profiler's top ops of MODEL's training step"
    )
    args = parser.parse_args(argv)
    if args.profile is None and not (args.metrics and args.times and args.provenance):
        parser.error("--metrics, --times and --provenance are required (unless --profile)")
    run_stage("bench", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    started = time.time()
    profile, variants, model, pretrain, dataset, bench = load(args.params)
    if args.profile:
        print(profile_ops(variants, model, pretrain, bench, Path(args.data), args.profile))
        return
    metrics, rows = measure(variants, model, pretrain, dataset, bench, Path(args.data), progress=sys.stderr.isatty())
    metrics = {"profile": profile, **metrics}
    resolved = {
        "profile": profile,
        "variants": {v: variants[v] for v in bench.variants},
        "model": asdict(model),
        "pretrain": asdict(pretrain),
        "datasets": {pretrain.dataset: asdict(dataset)},
        "bench": asdict(bench),
    }
    write_outputs(
        {
            args.metrics: json_bytes(metrics),
            args.times: times_bytes(rows),
            args.provenance: json_bytes(provenance("bench", resolved, started=started)),
        }
    )
    print(table(metrics))


if __name__ == "__main__":
    main()
