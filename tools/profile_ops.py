"""Where does a training step spend its time? torch.profiler's table of the ops of one benchmarked model.

    python tools/profile_ops.py linear            # or a variant, or the bench's timm reference model name
    python tools/profile_ops.py fsne --steps 10 --rows 40 --params params.yaml --data data/prepared/mnist5k

A developer's tool, not a stage: it builds the models exactly as the bench stage times them (pipeline.planning.timing),
runs a few warm-up steps, then profiles ``--steps`` training steps of the one asked for. docs/performance.md
shows what it found.
"""

from __future__ import annotations

from torch.profiler import ProfilerActivity, profile

from pipeline import cli, config
from pipeline.data.loaders import read_meta
from pipeline.planning import timing
from pipeline.training import distributed
from pipeline.training.distributed import configure_torch


def profile_ops(params: str, data: str, name: str, steps: int, rows: int) -> str:
    settings = config.load_bench(params)
    bench = settings.bench
    device = distributed.init(settings.device).device
    configure_torch(device, bench.threads, "fast")  # as the bench stage times it
    names = [*bench.variants, *([bench.reference] if bench.reference else [])]
    if name not in names:
        raise config.ParamsError(f"model: {name!r} is not benchmarked; choose one of: {', '.join(names)}")
    subject = next(s for s in timing.subjects(settings, device, read_meta(data)["num_classes"]) if s.name == name)
    for _ in range(max(bench.warmup, 2)):
        subject.train()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            subject.train()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(
        "python tools/profile_ops.py", __doc__, {"model": "a variant of bench.variants, or bench.reference"}
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default=None, help="prepared source dataset (default: data/prepared/<source>)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)

    def body() -> None:
        data = args.data or f"data/prepared/{config.load(args.params).pretrain.dataset}"
        print(profile_ops(args.params, data, args.model, args.steps, args.rows))

    cli.run_stage("profile_ops", body)


if __name__ == "__main__":
    main()
