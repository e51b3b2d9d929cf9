"""Stage ``finetune``: transfer one pretrained variant to one target dataset with one seed
(``finetune@<variant>-<dataset>-<seed>``): load the pretrained weights, replace the head, fine-tune, evaluate.

Reads:  params.yaml ``variants.<variant>``, ``model``, ``finetune``, ``datasets.<dataset>``; the prepared
        target dataset; the pretrained weights of the same variant and seed.
Writes: --model-out, --metrics, --curves, --provenance: as the pretrain stage.
A variant listed here with no pretrained weights is an error that says so.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.datasets import DatasetParams
from pipeline.params import ParamsError, load_sections, parse, profile_name, variant_options
from pipeline.train import ModelParams, Run, TrainParams, add_output_arguments, train_and_write

PARAMS = ("profile", "variants", "model", "finetune", "datasets", "pretrain")


@dataclass(frozen=True)
class FinetuneParams(TrainParams):
    datasets: tuple[str, ...]  # target entries of the datasets section
    variants: tuple[str, ...]  # variants transferred (each must be pretrained)


def load(path: str, variant: str, dataset: str) -> tuple[str, dict, ModelParams, FinetuneParams, DatasetParams]:
    raw = load_sections(path, PARAMS)
    variants = parse(dict[str, dict], raw["variants"], "variants")
    finetune = parse(FinetuneParams, raw["finetune"], "finetune")
    pretrained = raw["pretrain"].get("variants", []) if isinstance(raw["pretrain"], dict) else []
    for name in finetune.variants:
        variant_options(variants, name, "finetune.variants")
        if name not in pretrained:
            raise ParamsError(
                f"finetune.variants: {name!r} has no pretrained weights: it is not in pretrain.variants "
                f"({', '.join(map(str, pretrained))})"
            )
    if variant not in finetune.variants:
        raise ParamsError(f"finetune.variants: {variant!r} is not listed; listed: {', '.join(finetune.variants)}")
    if dataset not in finetune.datasets:
        raise ParamsError(f"finetune.datasets: {dataset!r} is not listed; listed: {', '.join(finetune.datasets)}")
    datasets = raw["datasets"]
    if not isinstance(datasets, dict) or dataset not in datasets:
        raise ParamsError(f"finetune.datasets: {dataset!r} is not an entry of the datasets section")
    target = parse(DatasetParams, datasets[dataset], f"datasets.{dataset}")
    return profile_name(raw["profile"]), variants, parse(ModelParams, raw["model"], "model"), finetune, target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.finetune", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--data", required=True, help="prepared target dataset folder")
    parser.add_argument("--pretrained", required=True, help="pretrained weights (safetensors)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    run_stage("finetune", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    started = time.time()
    profile, variants, model, finetune, dataset = load(args.params, args.variant, args.dataset)
    run = Run(
        stage="finetune",
        profile=profile,
        variant=args.variant,
        seed=args.seed,
        options=variants[args.variant],
        model=model,
        train=TrainParams.recipe_of(finetune),
        data=Path(args.data),
        resume_dir=Path(args.resume_dir),
        data_root=dataset.root,
        init_weights=Path(args.pretrained),
    )
    params = {
        "profile": profile,
        "variants": {args.variant: variants[args.variant]},
        "model": asdict(model),
        "finetune": asdict(finetune),
        "datasets": {args.dataset: asdict(dataset)},
    }
    train_and_write(run, args, params=params, started=started)


if __name__ == "__main__":
    main()
