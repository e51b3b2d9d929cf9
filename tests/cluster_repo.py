"""A tiny workspace for the cluster tests (tests/test_cluster.py, tests/test_slurm.py): the repository's files with
a tiny profile, committed to git, and helpers to run ``python -m pipeline.cluster`` and dvc in it."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline import procfs
from pipeline.cluster import process_tree

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


# ------------------------------------------------------------------- a local-executor job, watched from outside
@contextlib.contextmanager
def submit_in_background(repo: Path, *targets: str, ignore_sigint: bool = False):
    """``python -m pipeline.cluster submit`` left running (the local executor waits for its jobs); yields it and the
    id of its first job (its controller's PID) once submitted. ``ignore_sigint``: started as under nohup or from a
    non-interactive background shell, which ignore SIGINT, as does everything they start. On the way out whatever
    is left of it is killed and reaped."""
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cluster", "submit", *targets], cwd=repo, env=_env(repo),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)  # fmt: skip
    job = ""
    try:
        line = proc.stdout.readline()
        assert line.startswith("submitted "), line
        job = line.split("job ")[1].split()[0]
        yield proc, job
    finally:
        if proc.poll() is None:
            process_tree.terminate([*([int(job)] if job else []), proc.pid], grace_s=0.0)
        proc.communicate()


def job_process(job: str, marker: str) -> int | None:
    """The PID of the process of local job ``job`` (its controller's PID) whose command line holds ``marker``:
    "submitit.core._submit" (its task), "dvc", "pipeline.stages.pretrain" (the stage)."""
    for pid in process_tree.descendants(int(job)):
        if any(marker in arg for arg in procfs.argv(pid)[:4]) and (procfs.stat(pid) or "Z")[0] not in "ZX":
            return pid
    return None


def wait_for(condition, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def this_start(log: Path) -> str:
    """The job's log since its last start."""
    text = log.read_text() if log.exists() else ""
    return text[text.rfind(": start ") :] if ": start " in text else ""


def epochs_this_start(log: Path) -> int:
    return len(re.findall(r" epoch \d+/\d+: train loss", this_start(log)))


def starts(repo: Path, job: str) -> int:
    path = repo / "logs/cluster/attempts" / job
    return int(path.read_text()) if path.exists() else 0
