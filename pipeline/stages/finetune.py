"""Stage ``finetune``: transfer one pretrained variant to one target dataset with one seed
(``finetune@<backbone>-<variant>-<dataset>-<seed>``): load the pretrained weights, replace the head, fine-tune,
evaluate.

Reads:  params.yaml ``profile``, ``variants.<variant>``, ``backbones.<backbone>``, ``device``,
        ``pretrain.recipe.weights`` (which pretrained weights to start from), ``finetune.recipe`` (and ``runtime``,
        which never change what is computed); the prepared target dataset; the pretrained weights of the same
        backbone, variant and seed.
Writes: --weights-out, --metrics, --record, --curves, --provenance: as the pretrain stage.
A variant listed here with no pretrained weights is an error that says so.
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
    "pretrain.recipe.weights",
    "finetune.recipe",
)


def main(argv: list[str] | None = None) -> None:
    inputs = {
        "--variant": "entry of finetune.variants",
        "--dataset": "entry of finetune.datasets",
        "--data": "prepared target dataset folder",
        "--pretrained": "the pretraining instance's weights folder",
    }
    args = cli.training_parser("python -m pipeline.stages.finetune", __doc__, inputs).parse_args(argv)

    def body() -> None:
        from pipeline.training import runner  # torch: once the arguments are parsed (--help needs none of it)

        outputs = runner.TrainOutputs.from_args(args)
        run = config.load_finetune(args.params, args.backbone, args.variant, args.dataset, args.seed)
        init = Path(args.pretrained) / f"{run.pretrained_weights}.safetensors"  # pretrain.recipe.weights
        runner.train_and_write(run, data=Path(args.data), outputs=outputs, init_weights=init)

    run_stage("finetune", body)


if __name__ == "__main__":
    main()
