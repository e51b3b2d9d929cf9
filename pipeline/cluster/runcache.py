"""DVC's run-cache through a remote, whole: ``python -m pipeline.cluster.runcache pull|push`` (run by the cluster's jobs
that work in their own clone, :mod:`pipeline.cluster.job`).

``push`` does what ``dvc push --run-cache`` does — copy the local run-cache entries (``.dvc/cache/runs``) to the
default remote — and then also the objects of every output those runs record. DVC 3 pushes the entries and the
outputs ``dvc.lock`` tracks with the cache, but not the outputs a stage declares ``cache: false`` (here: every
metrics, record, provenance and curves file), although it saves them into the cache for its run-cache and restores them
from it; without their objects on the remote, ``dvc repro --pull`` elsewhere finds the run but not its outputs and
runs the stage again. ``pull`` copies the remote's run-cache entries here (``dvc fetch --run-cache`` without
fetching what ``dvc.lock`` lists), so that ``dvc repro --pull`` restores upstream stages instead of running them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import cli

__all__ = ["pull", "push"]


def pull(root: Path) -> int:
    """The remote's run-cache entries into the local cache; returns how many were copied."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return len(repo.stage_cache.pull(None))


def push(root: Path) -> tuple[int, int]:
    """The local run-cache entries and every object their outputs use to the default remote; returns the number of
    entries and of objects copied."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        runs = repo.stage_cache.push(None)
        copied = 0
        for odb, objs in repo.stage_cache.get_used_objs(runs).items():
            result = repo.cloud.push(objs, odb=odb)
            if result.failed:
                raise SystemExit(f"runcache: error: {len(result.failed)} object(s) could not be pushed to the remote")
            copied += len(result.transferred)
    return len(runs), copied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cluster.runcache", description=cli.describe(__doc__))
    parser.add_argument(
        "command",
        choices=("pull", "push"),
        help="pull: the remote's run-cache entries here; push: the local entries and their outputs' objects there",
    )
    args = parser.parse_args(argv)
    from dvc.exceptions import DvcException

    try:
        if args.command == "pull":
            print(f"runcache: {pull(Path.cwd())} run(s) pulled")
        else:
            runs, objects = push(Path.cwd())
            print(f"runcache: {runs} run(s) and {objects} output object(s) pushed")
    except DvcException as exc:
        sys.exit(f"runcache: error: {exc}")


if __name__ == "__main__":
    main()
