"""Where a result came from: stage, params, code version, software, hardware and wall time.

Kept apart from the metrics (a separate ``provenance.json`` beside each result), so that a re-run with
identical results leaves the metrics byte-identical.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.outputs import jsonable, round_measurement

__all__ = ["record"]

_VERSIONED = ("torch", "torchvision", "timm", "fvcore", "numpy", "pandas", "matplotlib", "jinja2", "dvc", "pyyaml")


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


def record(stage: str, config: Any, *, started: float, extra: dict | None = None) -> dict:
    """The provenance of one stage run: ``config`` (the stage's loaded params object, recorded as resolved),
    git commit, package versions, hardware and the wall time since ``started`` (a ``time.time()``)."""
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    params = jsonable(config)
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
        "wall_time_s": round_measurement(time.time() - started),
        **(extra or {}),
    }
