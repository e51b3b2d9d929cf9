"""Stage ``pretrain``: train one variant on one backbone with one seed on the source dataset
(``pretrain@<backbone>-<variant>-<seed>``).

Reads:  params.yaml ``profile``, ``variants.<variant>``, ``backbones.<backbone>``, ``device``,
        ``pretrain.dataset``, ``pretrain.recipe``
        (and ``runtime``, which never changes what is computed); the prepared source dataset.
Writes: --weights-out  folder of safetensors weights: raw.safetensors, and ema.safetensors with EMA (DVC cache).
        --metrics      JSON, the run's DVC metrics: test top-1 and loss of the final model, best val top-1.
        --record       JSON: test top-1/top-5 of the final model, final and best val top-1, epochs, parameters,
                       lr (base and effective), per-block Q/K/V cosine similarity on held-out images.
        --curves       CSV per epoch: lr, train loss/top-1, val loss/top-1/top-5 (``dvc plots``).
        --provenance   JSON: resolved params, git commit, versions, hardware, threads, world size, img/s.
Resume state lives in --resume-dir, outside DVC's outputs, and is deleted after a successful run.
Runs under ``torchrun --nproc_per_node N -m pipeline.stages.pretrain ...`` unchanged.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import cli, config
from pipeline.cli import run_stage

PARAMS = (
    "profile",
    "variants.{variant}",
    "backbones.{backbone}",
    "device",
    "pretrain.dataset",
    "pretrain.recipe",
)


def main(argv: list[str] | None = None) -> None:
    inputs = {"--variant": "entry of pretrain.variants", "--data": "prepared source dataset folder"}
    args = cli.training_parser("python -m pipeline.stages.pretrain", __doc__, inputs).parse_args(argv)

    def body() -> None:
        from pipeline.training import runner  # torch: once the arguments are parsed (--help needs none of it)

        outputs = runner.TrainOutputs.from_args(args)
        run = config.load_pretrain(args.params, args.backbone, args.variant, args.seed)
        runner.train_and_write(run, data=Path(args.data), outputs=outputs)

    run_stage("pretrain", body)


if __name__ == "__main__":
    main()
