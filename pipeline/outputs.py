"""Writing stage outputs: all-or-nothing, deterministic bytes, one rounding rule per kind of number.

A stage computes everything first and then calls :func:`write_outputs` once, which writes every file to a
temporary name beside its target and renames them into place only when all were written; a failure leaves
no half-written output behind. Metrics are serialised with sorted keys and no timestamps, so an unchanged
result is byte-identical and DVC sees it as unchanged; wall-clock times, hosts and versions go to the
separate provenance record (:mod:`pipeline.provenance`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["csv_bytes", "json_bytes", "jsonable", "round_measurement", "round_result", "write_outputs"]


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
