"""Switch the active profile: ``make profile PROFILE=<name>`` (``python -m pipeline.profile <name>``).

A profile is a complete params file in ``profiles/<name>.yaml`` (embedded: offline CPU; cifar: one GPU with
your CIFAR/STL/Cars files; paper: ImageNet-1k with torchrun). Switching validates it through every stage's
loader for every instance of its DAG — unknown keys, wrong types, impossible values, unsafe names, datasets
that need a root, embedding options the qkv library refuses — and only then
copies it over ``params.yaml`` (atomically), so DVC sees the new params and ``dvc repro`` rebuilds what they
change. ``python -m pipeline.profile --check [FILE ...]`` validates the given params files (default: every
profile) without switching; ``make repro`` runs it on params.yaml before ``dvc repro``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import cli, config
from pipeline.cli import run_stage
from pipeline.config import ParamsError
from pipeline.outputs import write_outputs

__all__ = ["known", "switch", "validate"]


def known(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def validate(path: Path) -> str:
    """Check a params file through every stage's loader, for every instance of its DAG; returns its profile."""
    config.instances(path)
    return config.load(path).profile


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
    parser = cli.parser("python -m pipeline.profile", __doc__, {})
    parser.add_argument("name", nargs="?", help="the profile to make active")
    parser.add_argument(
        "--check",
        nargs="*",
        metavar="FILE",
        help="validate these params files (default: every profile), switch nothing",
    )
    parser.add_argument("--profiles", default="profiles", help="folder of profile files")
    parser.add_argument("--params", default="params.yaml", help="the active params file")
    args = parser.parse_args(argv)
    if (args.check is not None) == bool(args.name):
        parser.error("give a profile name, or --check")
    run_stage("profile", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    folder = Path(args.profiles)
    if args.check is not None:
        for path in [Path(f) for f in args.check] or [folder / f"{name}.yaml" for name in known(folder)]:
            print(f"{path}: valid (profile {validate(path)})")
        return
    switch(args.name, folder, Path(args.params))
    print(f"profile: params.yaml is now {args.name!r}; `dvc repro` rebuilds what it changes")


if __name__ == "__main__":
    main()
