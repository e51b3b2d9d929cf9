"""A tiny workspace for the cluster tests (tests/test_cluster.py, tests/test_slurm.py): the repository's files with
a tiny profile, committed to git, and helpers to run ``python -m pipeline.cluster`` and dvc in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from .test_e2e import _env, sh, source_copy
from .tiny import tiny_params, write_params

PRETRAIN = "pretrain@n12-linear-0"
FINETUNE = "finetune@n12-linear-digits-0"
RUN = "results/pretrain/n12-linear-0"


def workspace(tmp: Path, *, epochs: int = 2, **cluster) -> Path:
    """A committed tiny workspace training one variant for ``epochs``; ``cluster`` updates the cluster section
    (``training`` / ``other`` update their resources)."""
    repo = source_copy(tmp / "repo")
    params = tiny_params(pretrain={"epochs": epochs, "variants": ["linear"]}, finetune={"variants": ["linear"]})
    set_cluster(params, **cluster)
    write_params(repo / "params.yaml", params)
    sh("git", "init", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny", cwd=repo)
    return repo


def set_cluster(params: dict, **cluster) -> dict:
    for key, value in cluster.items():
        if key in ("training", "other"):
            params["cluster"][key].update(value)
        else:
            params["cluster"][key] = value
    return params


def edit_params(repo: Path, **cluster) -> None:
    path = repo / "params.yaml"
    write_params(path, set_cluster(yaml.safe_load(path.read_text()), **cluster))


def cluster(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline.cluster <args>`` in ``repo``, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cluster", *args],
        cwd=repo,
        env=env or _env(repo),
        capture_output=True,
        text=True,
    )


def dvc(repo: Path, *args: str) -> str:
    return sh(str(Path(sys.executable).parent / "dvc"), *args, cwd=repo)


def stale(repo: Path) -> dict:
    return json.loads(dvc(repo, "status", "--json"))


def outputs(repo: Path, run: str = RUN) -> dict[str, bytes]:
    return {name: (repo / run / name).read_bytes() for name in ("metrics.json", "curves.csv")}


def timing(repo: Path, run: str = RUN) -> dict:
    return json.loads((repo / run / "provenance.json").read_text())["timing"]
