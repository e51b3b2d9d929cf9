"""Switch the active profile: ``make profile PROFILE=<name>`` (``python -m pipeline.profile <name>``).

A profile is a complete params file in ``profiles/<name>.yaml`` (embedded: offline CPU; cifar: one GPU with
your CIFAR/STL/Cars files; paper: ImageNet-1k with torchrun). Switching validates it through every stage's
loader for every instance of its DAG — unknown keys, wrong types, impossible values, unsafe names, datasets
that need a root, embedding options the qkv library refuses — and only then
copies it over ``params.yaml`` (atomically), so DVC sees the new params and ``dvc repro`` rebuilds what they
change. It refuses to overwrite a ``params.yaml`` whose data is that of no profile (your edits), naming the
changed keys, unless given ``--force`` (``make profile ... FORCE=1``); after switching it lists the new
profile's dataset roots that do not exist on this machine. ``python -m pipeline.profile --check [FILE ...]``
validates the given params files (default: every profile) without switching; ``make repro`` runs it on
params.yaml before ``dvc repro``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline import cli, config
from pipeline.cli import run_stage
from pipeline.config import ParamsError
from pipeline.outputs import write_outputs

__all__ = ["changed_keys", "edits", "known", "missing_roots", "switch", "validate"]

SHOWN_KEYS = 5  # changed keys named in a message; the rest are counted


def known(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def validate(path: Path) -> str:
    """Check a params file through every stage's loader, for every instance of its DAG; returns its profile."""
    return _validated(path)[0]


def _validated(path: Path) -> tuple[str, list[config.PrepareConfig]]:
    """:func:`validate`, and the config of every ``prepare@<dataset>`` instance of the DAG."""
    prepared = [c for _, c in config.instances(path) if isinstance(c, config.PrepareConfig)]
    return config.load(path).profile, prepared


def changed_keys(old: Any, new: Any, where: str = "") -> list[str]:
    """The dotted paths at which two parsed YAML documents differ: a key added, removed or given another value
    (a list is one value: ``pretrain.variants``). Key order, comments and layout do not count."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if _same(old, new) else [where or "(the whole file)"]
    out: list[str] = []
    for key in [*old, *(k for k in new if k not in old)]:
        path = f"{where}.{key}" if where else str(key)
        if key in old and key in new:
            out += changed_keys(old[key], new[key], path)
        else:
            out.append(path)
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal data, type for type (``1`` is not ``1.0`` nor ``true``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def edits(params: Path, folder: Path) -> tuple[Path | None, list[str]] | None:
    """What ``params`` holds that no profile in ``folder`` does: ``None`` if it is missing or has the data of
    some profile; else the profile it is closest to (the one its ``profile`` key names, else the one with the
    fewest changed keys; ``None`` if it is not valid YAML or no profile is) and the keys it changed from it."""
    if not params.is_file():
        return None
    raw = params.read_bytes()
    profiles = {p: p.read_bytes() for p in sorted(folder.glob("*.yaml"))}
    if raw in profiles.values():
        return None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        return None, []
    diffs = {}
    for path, text in profiles.items():
        try:
            diffs[path] = changed_keys(yaml.safe_load(text), data)
        except yaml.YAMLError:
            continue  # a broken profile is reported when it is switched to or checked
    if any(not keys for keys in diffs.values()):
        return None
    if not diffs:
        return None, ["no profile could be read to compare it with"]
    named = folder / f"{data.get('profile')}.yaml" if isinstance(data, dict) else None
    closest = named if named in diffs else min(diffs, key=lambda p: len(diffs[p]))
    return closest, diffs[closest]


def _how(closest: Path | None, keys: list[str], verb: str = "differs") -> str:
    """How the edited params file differs from the profiles: ``it differs from <closest> at <keys>``."""
    if closest is None:
        return keys[0] if keys else "it is not valid YAML"
    more = len(keys) - SHOWN_KEYS
    return f"it {verb} from {closest} at " + ", ".join(keys[:SHOWN_KEYS]) + (f" and {more} more" if more > 0 else "")


def _refusal(name: str, params: Path, folder: Path, closest: Path | None, keys: list[str]) -> str:
    """The one-line error of a switch that would overwrite edits."""
    return (
        f"not switching to {name!r}: {params} has edits that are in no profile ({_how(closest, keys)}); to keep "
        f"them, save it as a profile (cp {params} {folder}/<new name>.yaml and set its profile: key to the new "
        "name); to discard them, re-run with FORCE=1 (make profile) or --force (python -m pipeline.profile)"
    )


def missing_roots(prepared: list[config.PrepareConfig], base: Path) -> list[str]:
    """One line for each dataset whose ``root`` is set but is no folder on this machine (``~`` expanded; a
    relative root is taken from ``base``, the folder DVC runs the stages in)."""
    lines = []
    for p in prepared:
        root = p.dataset.root
        if root is None or (base / Path(root).expanduser()).is_dir():
            continue
        state = "is not a folder" if (base / Path(root).expanduser()).exists() else "does not exist here"
        if p.dataset.download:
            advice = f"prepare@{p.name} downloads the {p.dataset.source} files into it (download: true)"
        else:
            advice = f"put your {p.dataset.source} files under it or set datasets.{p.name}.root (docs/datasets.md)"
        lines.append(f"profile: dataset {p.name}: root {root} {state}; {advice}")
    return lines


def switch(name: str, folder: Path, params: Path, *, force: bool = False) -> list[str]:
    """Validate ``folder/<name>.yaml`` and make it ``params``; returns notes for stderr (the edits ``force``
    discarded, the dataset roots missing here). Without ``force``, a ``params`` holding edits (data that no
    profile of ``folder`` has) is a :class:`ParamsError` and nothing is written."""
    source = folder / f"{name}.yaml"
    if not source.is_file():
        raise ParamsError(f"unknown profile {name!r}; known: {', '.join(known(folder))}")
    before = params.read_bytes() if params.is_file() else None
    edited = edits(params, folder)
    if edited is not None and not force:
        raise ParamsError(_refusal(name, params, folder, *edited))
    declared, prepared = _validated(source)
    if declared != name:
        raise ParamsError(f"{source}: its profile key says {declared!r}; it must name the file ({name!r})")
    if (params.read_bytes() if params.is_file() else None) != before:
        raise ParamsError(f"{params} changed while {source} was validated; nothing was switched: run it again")
    write_outputs({params: source.read_bytes()})
    notes = [f"profile: --force: discarded the edits of {params} ({_how(*edited, verb='differed')})"] if edited else []
    return notes + missing_roots(prepared, params.parent)


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
    parser.add_argument(
        "--force", action="store_true", help="overwrite the params file even if it holds edits that are in no profile"
    )
    args = parser.parse_args(argv)
    if (args.check is not None) == bool(args.name):
        parser.error("give a profile name, or --check")
    if args.force and args.check is not None:
        parser.error("--force applies to a switch, not to --check")
    run_stage("profile", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    folder = Path(args.profiles)
    if args.check is not None:
        for path in [Path(f) for f in args.check] or [folder / f"{name}.yaml" for name in known(folder)]:
            print(f"{path}: valid (profile {validate(path)})")
        return
    notes = switch(args.name, folder, Path(args.params), force=args.force)
    print(f"profile: {args.params} is now {args.name!r}; `dvc repro` rebuilds what it changes", flush=True)
    for line in notes:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    main()
