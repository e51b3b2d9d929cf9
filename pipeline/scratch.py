"""A scratch copy of the repository, to re-run stages away from the workspace (:mod:`pipeline.review.audit`,
:mod:`pipeline.review.rehearse`): its tracked files copied, committed as a one-commit git repository (provenance records
a commit), and ``dvc`` run there with this interpreter's environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["commit", "copy_tracked", "dvc", "dvc_command", "env"]


def copy_tracked(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy the files git tracks in ``source`` to ``target``, except paths starting with one of ``skip``."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=source, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        if not name.startswith(skip) and (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)


def commit(repo: Path, who: str) -> None:
    """Make ``repo`` a git repository holding everything in it as one commit by ``who``."""
    git = ["git", "-c", f"user.name={who}", "-c", f"user.email={who}@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", who]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)


def env() -> dict[str, str]:
    """This environment with this interpreter's bin folder first (stage commands call ``python``), no analytics."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def dvc_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "dvc"), *args]


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """``dvc <args>`` in ``repo``, output captured."""
    return subprocess.run(dvc_command(*args), cwd=repo, env=env(), capture_output=True, text=True)
