"""Writing stage outputs: all-or-nothing, deterministic bytes, one rounding rule per kind of number.

A stage computes everything first and then calls :func:`write_outputs` once, which writes every file to a
temporary name beside its target and renames them into place only when all were written; a failure (a full disk,
a read-only folder) leaves no half-written output and no temporary file behind, and is one line naming the
output. Metrics are serialised with sorted keys and no timestamps, so an unchanged
result is byte-identical and DVC sees it as unchanged; wall-clock times, hosts and versions go to the
separate provenance record (:mod:`pipeline.provenance`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "OutputError",
    "csv_bytes",
    "inert",
    "json_bytes",
    "jsonable",
    "round_measurement",
    "round_result",
    "write_outputs",
]


def json_bytes(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, two-space indent, trailing newline."""
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def csv_bytes(rows: list[dict], columns: list[str] | tuple[str, ...] | None = None) -> bytes:
    """CSV with a header (``columns``, or the first row's keys) and ``\\n`` line ends."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns or rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _round(obj: Any, rule) -> Any:
    if isinstance(obj, float):
        return rule(obj) if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _round(v, rule) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v, rule) for v in obj]
    return obj


def round_result(obj: Any) -> Any:
    """Results (accuracies, losses, cosines, learning rates): every float to 6 decimals, so the text is stable
    and diffs show no last-digit noise."""
    return _round(obj, lambda x: round(x, 6))


def round_measurement(obj: Any) -> Any:
    """Measurements (timings, rates, ratios): every float to 4 significant digits, all they can carry."""
    return _round(obj, lambda x: float(f"{x:.4g}") if x else 0.0)


def jsonable(obj: Any) -> Any:
    """Dataclasses, tuples and paths as plain JSON values (for provenance records of typed configs)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def inert(obj: Any) -> Any:
    """``obj`` (JSON values) with every list that is empty or holds an object written as an object keyed by
    position (``{"0": ..., "1": ...}``; ``{}`` for none); lists of plain values stay lists.

    For the records dvc.yaml declares as plots only to keep them in git and in DVC's run-cache (provenance, a
    run's record: not metrics, so not in ``dvc metrics show`` or ``dvc exp show``): DVC's plot reader draws every
    list of objects it finds under an object as a data series and fails on an empty one
    (``dvc.render.converter.vega.get_datapoints``, DVC 3.67), so such a record must hold neither for ``dvc plots
    show`` to draw nothing for it (tests/test_dvc_views.py)."""
    if isinstance(obj, dict):
        return {k: inert(v) for k, v in obj.items()}
    if isinstance(obj, list):
        items = [inert(v) for v in obj]
        if not items or any(isinstance(v, (dict, list)) for v in items):
            return {str(i): v for i, v in enumerate(items)}
        return items
    return obj


class OutputError(OSError):
    """An output that could not be written: one line naming its final path (never a temporary one), the reason
    and what to do. ``filename`` is the final path and ``errno`` the cause's."""

    def __init__(self, path: Path, exc: OSError, needs: int, note: str = ""):
        reason = _REASONS.get(exc.errno, f"cannot be written ({exc.strerror or exc})")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = reason.format(needs=needs)
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason = reason.format(folder=_first_existing(path.parent))
        super().__init__(f"{path}: {reason}{note}")
        self.errno, self.filename = exc.errno, str(path)

    def __str__(self) -> str:
        return self.args[0]  # the message alone (OSError's own form: "[Errno 28] None: '<filename>'")


_REASONS = {
    errno.ENOSPC: "no space left on device while writing (needs {needs} bytes); free space or point the output "
    "elsewhere",
    errno.EDQUOT: "disk quota exceeded while writing (needs {needs} bytes); free space or point the output elsewhere",
    errno.EACCES: "permission denied while writing; make {folder} writable or point the output elsewhere",
    errno.EPERM: "permission denied while writing; make {folder} writable or point the output elsewhere",
    errno.EROFS: "read-only file system ({folder}); point the output elsewhere",
    errno.EISDIR: "is a folder; remove it or point the output elsewhere",
}


def _first_existing(folder: Path) -> Path:
    return next((p for p in (folder, *folder.parents) if p.exists()), folder)


def write_outputs(files: dict[str | Path, bytes]) -> None:
    """Write every ``path -> content`` atomically, all or none.

    Every file first goes to a temporary file beside its target (a unique ``.<name>.*.tmp``, fsynced); only when
    all were written are they renamed into place, an existing target kept under a second name (a hard link, or
    a copy) until the last rename succeeded. If anything fails, every temporary file is removed, targets already
    renamed are put back as they were (restored, or removed if new), folders created here are removed, and an
    :class:`OutputError` names the final path that failed (a full disk: with the bytes all the files need, as
    their temporary files coexist): no half-written file and no mix of old and new outputs remains."""
    targets = {Path(path): content for path, content in files.items()}
    staged: dict[Path, str] = {}  # target -> its temporary file, until renamed
    backups: dict[Path, str | None] = {}  # target -> second name of its previous content (None: it had none)
    created: list[Path] = []  # folders made here, removed again if the write fails
    current, done = None, False
    try:
        for current, content in targets.items():
            staged[current] = _stage(current, content, created)
        for current in targets:
            backups[current] = _backup(current, staged[current])
        for current in targets:
            os.replace(staged[current], current)
            del staged[current]
        done = True
    except BaseException as exc:
        stuck = _roll_back(backups, staged)
        note = f"; none of the step's {len(targets)} outputs was changed" if len(targets) > 1 else ""
        if stuck:
            note = f"; could not put back {', '.join(stuck)}: they hold this step's new content, re-run it"
        if isinstance(exc, OSError) and current is not None:
            raise OutputError(current, exc, sum(map(len, targets.values())), note) from exc
        raise
    finally:
        for tmp in [*staged.values(), *(b for b in backups.values() if b)]:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not done:
            for folder in reversed(created):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()


def _stage(path: Path, content: bytes, created: list[Path]) -> str:
    """``content`` written and fsynced to a new temporary file beside ``path``; its name."""
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    created += reversed(missing)  # before mkdir: it may make some and fail on the next
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view[: 1 << 24]) :]  # 16 MiB at a time: os.write may write less
            os.fsync(fd)  # a full disk may only show here (delayed allocation) or at close (NFS)
            os.fchmod(fd, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _backup(path: Path, tmp: str) -> str | None:
    """A second name for ``path``'s current content, so a failed step can put it back (None if it has none)."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
    if not os.path.lexists(path):
        return None
    backup = tmp.removesuffix(".tmp") + ".old"
    try:
        os.link(path, backup, follow_symlinks=False)  # no copy, no space; a link into DVC's cache stays a link
    except OSError:
        try:
            shutil.copy2(path, backup, follow_symlinks=False)  # file systems without hard links
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(backup)
            raise
    return backup


def _roll_back(backups: dict[Path, str | None], staged: dict[Path, str]) -> list[str]:
    """Put back every target already replaced (those whose temporary file is gone); those that could not be."""
    replaced = [path for path in backups if path not in staged]
    stuck = []
    for path in replaced:
        try:
            if backups[path] is None:
                os.unlink(path)  # it did not exist before
            else:
                os.replace(backups[path], path)
                backups[path] = None
        except OSError:
            stuck.append(str(path))
    return stuck
