"""Stage ``pretrain``: train one variant with one seed on the source dataset (``pretrain@<variant>-<seed>``).

Reads:  params.yaml ``variants.<variant>``, ``model``, ``pretrain``, ``datasets.<source>`` (for a file
        dataset's root); the prepared source dataset.
Writes: --model-out    safetensors weights (DVC cache).
        --metrics      JSON: test top-1/top-5 of the final model, final and best val top-1, epochs, parameters,
                       lr (base and effective), per-block Q/K/V cosine similarity on held-out images.
        --curves       CSV per epoch: lr, train loss/top-1, val loss/top-1/top-5 (``dvc plots``).
        --provenance   JSON: resolved params, git commit, versions, hardware, threads, world size, img/s.
Resume state lives in --resume-dir, outside DVC's outputs, and is deleted after a successful run.
Runs under ``torchrun --nproc_per_node N -m pipeline.pretrain ...`` unchanged.
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

PARAMS = ("profile", "variants", "model", "pretrain", "datasets")


@dataclass(frozen=True)
class PretrainParams(TrainParams):
    dataset: str  # entry of the datasets section
    variants: tuple[str, ...]  # the variants pretrained (keys of the variants section)


def load(path: str, variant: str | None = None) -> tuple[str, dict, ModelParams, PretrainParams, DatasetParams]:
    """The sections a pretraining run reads, validated; ``variant`` (if given) must be listed in
    ``pretrain.variants``. The bench stage reads the same sections (without a variant)."""
    raw = load_sections(path, PARAMS)
    variants = parse(dict[str, dict], raw["variants"], "variants")
    pretrain = parse(PretrainParams, raw["pretrain"], "pretrain")
    for name in pretrain.variants:
        variant_options(variants, name, "pretrain.variants")
    if variant is not None and variant not in pretrain.variants:
        raise ParamsError(f"pretrain.variants: {variant!r} is not listed; listed: {', '.join(pretrain.variants)}")
    datasets = raw["datasets"]
    if not isinstance(datasets, dict) or pretrain.dataset not in datasets:
        raise ParamsError(f"pretrain.dataset: {pretrain.dataset!r} is not an entry of the datasets section")
    dataset = parse(DatasetParams, datasets[pretrain.dataset], f"datasets.{pretrain.dataset}")
    return profile_name(raw["profile"]), variants, parse(ModelParams, raw["model"], "model"), pretrain, dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--data", required=True, help="prepared source dataset folder")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    run_stage("pretrain", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    started = time.time()
    profile, variants, model, pretrain, dataset = load(args.params, args.variant)
    run = Run(
        stage="pretrain",
        profile=profile,
        variant=args.variant,
        seed=args.seed,
        options=variants[args.variant],
        model=model,
        train=TrainParams.recipe_of(pretrain),
        data=Path(args.data),
        resume_dir=Path(args.resume_dir),
        data_root=dataset.root,
    )
    params = {
        "profile": profile,
        "variants": {args.variant: variants[args.variant]},
        "model": asdict(model),
        "pretrain": asdict(pretrain),
        "datasets": {pretrain.dataset: asdict(dataset)},
    }
    train_and_write(run, args, params=params, started=started)


if __name__ == "__main__":
    main()
