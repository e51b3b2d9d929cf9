"""DVC's per-path locks (``<repo>/.dvc/tmp/rwlock``) left by a dvc process that ended without releasing them.

``dvc repro`` records ``{pid, cmd}`` for every dependency it reads and output it writes while a stage runs, and
removes the records when it ends normally. Killed (SIGKILL, or SIGTERM, whose default action skips Python's
``finally``), it leaves them, and the next dvc treats them as held for as long as ``psutil.pid_exists(pid)``: while
the PID is a zombie, or on another node of a shared workspace whenever any process there has that PID. A cluster
job that killed its dvc, or that restarts after its own predecessor was killed, removes exactly the records of that
dvc process, under DVC's own guard of the file (the same function DVC edits it with), and says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

__all__ = ["held", "release"]

log = logging.getLogger("pipeline.cluster")


def _matches(info: dict, pid: int, cmd: str) -> bool:
    return info.get("pid") == pid and info.get("cmd") == cmd


def held(root: Path, pid: int, cmd: str) -> list[str]:
    """The paths whose lock records name dvc process ``pid`` run as ``cmd`` (read without DVC's guard: a hint)."""
    try:
        data = json.loads((root / ".dvc" / "tmp" / "rwlock").read_text())
    except (OSError, ValueError):
        return []
    writes = [path for path, info in data.get("write", {}).items() if _matches(info, pid, cmd)]
    reads = [path for path, infos in data.get("read", {}).items() if any(_matches(i, pid, cmd) for i in infos)]
    return sorted({*writes, *reads})


def release(root: Path, pid: int, cmd: str) -> list[str]:
    """Remove every lock record of dvc process ``pid`` run as ``cmd``, which has ended; the paths released."""
    if not held(root, pid, cmd):
        return []
    from dvc.repo import Repo
    from dvc.rwlock import _edit_rwlock  # DVC's own guarded edit (dvc is pinned: requirements.txt)

    repo = Repo(str(root))
    try:
        hardlink = repo.config["core"].get("hardlink_lock", False)
        with _edit_rwlock(repo.tmp_dir, repo.fs, hardlink) as lock:
            released = set()
            for path, info in list(lock["write"].items()):
                if _matches(info, pid, cmd):
                    released.add(path)
                    del lock["write"][path]
            for path, infos in list(lock["read"].items()):
                kept = [i for i in infos if not _matches(i, pid, cmd)]
                if len(kept) < len(infos):
                    released.add(path)
                    lock["read"][path] = kept
                if not kept:
                    del lock["read"][path]
    finally:
        repo.close()
    return sorted(released)
