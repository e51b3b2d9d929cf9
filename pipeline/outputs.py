"""Writing stage outputs: all-or-nothing, deterministic bytes, provenance kept apart from results.

A stage computes everything first and then calls :func:`write_outputs` once, which writes every file to a
temporary name beside its target and renames them into place only when all were written; a failure leaves
no half-written output behind. Metrics are serialised with sorted keys and no timestamps, so an unchanged
result is byte-identical and DVC sees it as unchanged; wall-clock times, hosts and versions go to a
separate provenance record.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["json_bytes", "provenance", "write_outputs"]

_VERSIONED = ("torch", "torchvision", "timm", "fvcore", "numpy", "pandas", "matplotlib", "jinja2", "dvc", "pyyaml")


def json_bytes(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, two-space indent, trailing newline."""
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def write_outputs(files: dict[str | Path, bytes]) -> None:
    """Write every ``path -> content`` atomically, all or none: each goes to a temporary file beside its
    target and is renamed into place only once all were written. Parent folders are created (and removed
    again if the write fails)."""
    staged: list[tuple[str, Path]] = []
    created: list[Path] = []  # folders made here, removed again if the write fails
    done = False
    try:
        for path, content in files.items():
            path = Path(path)
            missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            created += reversed(missing)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        for tmp, path in staged:
            os.replace(tmp, path)
        done = True
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if not done:
            for folder in reversed(created):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(stage: str, params: dict[str, Any], *, started: float, extra: dict | None = None) -> dict:
    """Where a result came from: stage, resolved params, code version, software, hardware and wall time.

    ``started`` is a ``time.time()`` taken when the stage began.
    """
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    threads = None
    if "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "stage": stage,
        "argv": sys.argv,
        "params": params,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if dirty is None else bool(dirty),
        "python": platform.python_version(),
        "packages": versions,
        "hardware": {
            "machine": platform.machine(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": threads,
        },
        "host": platform.node(),
        "wall_time_s": round(time.time() - started, 3),
        **(extra or {}),
    }
