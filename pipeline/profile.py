"""Switch the active profile: ``make profile PROFILE=<name>`` (``python -m pipeline.profile <name>``).

A profile is a complete params file in ``profiles/<name>.yaml`` (embedded: offline CPU; cifar: one GPU with
your CIFAR/STL/Cars files; paper: ImageNet-1k with torchrun). Switching validates it through every stage's
own params loader — unknown keys, wrong types, impossible values, datasets that need a root — and only then
copies it over ``params.yaml`` (atomically), so DVC sees the new params and ``dvc repro`` rebuilds what they
change. ``python -m pipeline.profile --check`` validates every profile without switching.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.io import write_outputs
from pipeline.params import ParamsError, load_sections, parse, profile_name

__all__ = ["known", "switch", "validate"]


def known(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def validate(path: Path) -> str:
    """Check a params file with every stage's loader; returns its profile name."""
    from pipeline import audit, bench, finetune, flops, prepare, pretrain, report
    from pipeline.datasets import validate as validate_dataset
    from pipeline.train import TrainParams

    profile = profile_name(load_sections(path, ("profile",))["profile"])
    flops.load(str(path))
    datasets = load_sections(path, ("datasets",))["datasets"]
    if not isinstance(datasets, dict) or not datasets:
        raise ParamsError(f"{path}: datasets: expected at least one entry")
    for name in datasets:
        validate_dataset(name, prepare.load_params(str(path), name)[1])
    TrainParams.recipe_of(pretrain.load(str(path))[3]).check("pretrain")
    fine = load_sections(path, ("finetune",))["finetune"]
    for variant in fine.get("variants", []):
        for dataset in fine.get("datasets", []):
            params = finetune.load(str(path), variant, dataset)[3]
            TrainParams.recipe_of(params).check("finetune")
    bench.load(str(path))
    report.check_params(load_sections(path, ("report",))["report"])
    audit.load(path)
    raw = load_sections(path, ("launcher", "seeds"))
    parse(str, raw["launcher"], "launcher")
    if not parse(tuple[int, ...], raw["seeds"], "seeds"):
        raise ParamsError("seeds: expected at least one seed")
    return profile


def switch(name: str, folder: Path, params: Path) -> None:
    """Validate ``folder/<name>.yaml`` and make it ``params``."""
    source = folder / f"{name}.yaml"
    if not source.is_file():
        raise ParamsError(f"unknown profile {name!r}; known: {', '.join(known(folder))}")
    declared = validate(source)
    if declared != name:
        raise ParamsError(f"{source}: its profile key says {declared!r}; it must name the file ({name!r})")
    write_outputs({params: source.read_bytes()})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.profile", description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", help="the profile to make active")
    parser.add_argument("--check", action="store_true", help="validate every profile, switch nothing")
    parser.add_argument("--profiles", default="profiles", help="folder of profile files")
    parser.add_argument("--params", default="params.yaml", help="the active params file")
    args = parser.parse_args(argv)
    if args.check == bool(args.name):
        parser.error("give a profile name, or --check")
    run_stage("profile", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    folder = Path(args.profiles)
    if args.check:
        for name in known(folder):
            print(f"profile {name}: valid ({validate(folder / f'{name}.yaml')})")
        return
    switch(args.name, folder, Path(args.params))
    print(f"profile: params.yaml is now {args.name!r}; `dvc repro` rebuilds what it changes")


if __name__ == "__main__":
    main()
