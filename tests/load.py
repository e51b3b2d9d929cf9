"""A busy machine for the tests that must hold under load (a cluster node running other jobs, a CI runner): ``n``
processes spinning on the CPU at the test's own priority, ended and reaped on exit."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def cpu_load(n: int = 2) -> Iterator[None]:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()
