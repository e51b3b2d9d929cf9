"""Compare a stage's committed outputs with a re-run's, file by file, by what each file means.

:func:`compare_outputs` takes two roots (the working tree, the scratch copy) and the outputs of one stage
(files or directories, as ``dvc.lock`` lists them; a directory is compared file by file, matched by relative
path, and a file on one side only is a difference). Each file is first compared byte for byte; a file whose
bytes differ is compared by its kind:

- ``*.json`` (metrics, metadata): value by value over the flattened keys, numbers within ``abs_tol``, any other
  value exactly; ``provenance.json`` and ``*.provenance.json`` (host, wall time) are skipped;
- ``*.csv`` (curves, tables): the same header, the same number of rows, numeric cells within ``abs_tol``,
  other cells exactly;
- ``*.safetensors`` (weights, prepared data): the same tensor names, shapes and dtypes, float tensors element
  by element within ``weights_abs_tol``, integer and boolean tensors exactly (read one tensor at a time);
- any other file: its bytes.

A measurement (a metrics JSON that says ``"measured": true``, the bench) is judged on its dimensionless ratios
only, within ``ratio_rel_tol`` (relative); its other files hold timings and are not judged.

Torch-free: numpy and safetensors are imported only when two weights files differ.
"""

from __future__ import annotations

import csv
import filecmp
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Audit

__all__ = ["RATIO_KEYS", "compare_file", "compare_measured", "compare_outputs", "flatten", "is_provenance"]

MAX_LINES = 10  # differing values listed in a "differs" verdict
RATIO_KEYS = ("flop_ratio", "step_time_ratio", "step_over_flop_ratio", "train_ceiling_fraction", "over_train")
MISSING = type("Missing", (), {"__repr__": lambda self: "<missing>"})()


@dataclass
class Findings:
    """What comparing the files found: differences beyond tolerance, and deviations within it."""

    compared: int = 0  # files compared
    changed: list[str] = field(default_factory=list)  # files whose bytes differ
    diffs: list[str] = field(default_factory=list)  # differences beyond tolerance, the first MAX_LINES
    n_diffs: int = 0
    max_dev: float = 0.0
    where: str = ""  # file:key of the largest deviation within tolerance
    per_file: dict[str, tuple[int, float, str]] = field(default_factory=dict)  # file -> (count, max, key)

    def differs(self, line: str) -> None:
        self.n_diffs += 1
        if len(self.diffs) < MAX_LINES:
            self.diffs.append(line)

    def deviation(self, name: str, key: str, value: float, count: int = 1) -> None:
        """``count`` values of ``name`` at ``key`` (a tensor: many) differ by at most ``value``."""
        before, worst, at = self.per_file.get(name, (0, -1.0, ""))
        if value > worst:
            worst, at = value, key
        self.per_file[name] = (before + count, worst, at)
        if not self.where or value > self.max_dev:
            self.max_dev, self.where = value, f"{name}:{key}"


def is_provenance(path: str) -> bool:
    name = Path(path).name
    return name == "provenance.json" or name.endswith(".provenance.json")


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """A nested JSON value as ``{"a.b.0": leaf}``."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    if isinstance(obj, list):
        return {k: v for i, value in enumerate(obj) for k, v in flatten(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _value(found: Findings, name: str, key: str, x, y, tol: float) -> None:
    """One value: equal, within ``tol`` (a deviation) or a difference."""
    numbers = _is_number(x) and _is_number(y)
    if x == y or (numbers and math.isnan(x) and math.isnan(y)):
        return
    if numbers and abs(x - y) <= tol:
        found.deviation(name, key, abs(x - y))
    else:
        found.differs(f"{name}: {key}: committed {x!r}, re-run {y!r}")


def _json(a: Path, b: Path, name: str, tol: Audit, found: Findings) -> None:
    old, new = flatten(json.loads(a.read_text())), flatten(json.loads(b.read_text()))
    for key in sorted(set(old) | set(new)):
        _value(found, name, key, old.get(key, MISSING), new.get(key, MISSING), tol.abs_tol)


def _cell(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _csv(a: Path, b: Path, name: str, tol: Audit, found: Findings) -> None:
    old, new = (list(csv.reader(p.read_text().splitlines())) for p in (a, b))
    if old[:1] != new[:1]:
        found.differs(f"{name}: header: committed {old[:1]}, re-run {new[:1]}")
        return
    if len(old) != len(new):
        found.differs(f"{name}: rows: committed {len(old) - 1}, re-run {len(new) - 1}")
        return
    header = old[0] if old else []
    for i, (r, s) in enumerate(zip(old[1:], new[1:], strict=True), start=1):
        if len(r) != len(s):
            found.differs(f"{name}: row {i}: committed {len(r)} cells, re-run {len(s)}")
            continue
        for j, (u, v) in enumerate(zip(r, s, strict=True)):
            column = header[j] if j < len(header) else str(j)
            _value(found, name, f"row {i} {column}", _cell(u), _cell(v), tol.abs_tol)


def _tensor(found: Findings, name: str, key: str, x, y, tol: float) -> None:
    import numpy as np

    if np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
        return
    if x.dtype.kind not in "fc":  # integers (labels, images, codes) and booleans: exactly
        i = np.unravel_index(int(np.argmax(x != y)), x.shape)
        found.differs(f"{name}: {key}{list(map(int, i))}: committed {x[i].item()!r}, re-run {y[i].item()!r}")
        return
    wide = np.result_type(x.dtype, np.float64)
    diff = np.abs(x.astype(wide) - y.astype(wide))
    diff[np.isnan(x) & np.isnan(y)] = 0.0
    bad = ~(diff <= tol)  # a NaN on one side only is beyond any tolerance
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), x.shape)
        found.differs(
            f"{name}: {key}{list(map(int, i))}: committed {x[i].item()!r}, re-run {y[i].item()!r} "
            f"({int(bad.sum())} element(s) beyond {tol:g}, max abs difference {float(np.nanmax(diff)):.3g})"
        )
    else:
        found.deviation(name, key, float(diff.max()), count=int((diff > 0).sum()))


def _safetensors(a: Path, b: Path, name: str, tol: Audit, found: Findings) -> None:
    from safetensors import safe_open

    with safe_open(str(a), "np") as f, safe_open(str(b), "np") as g:
        old, new = set(f.keys()), set(g.keys())
        for key in sorted(old ^ new):
            found.differs(f"{name}: {key}: tensor only in the {'committed' if key in old else 're-run'} file")
        if f.metadata() != g.metadata():
            found.differs(f"{name}: metadata: committed {f.metadata()!r}, re-run {g.metadata()!r}")
        for key in sorted(old & new):
            x, y = f.get_slice(key), g.get_slice(key)
            kinds = [f"{s.get_dtype()} {list(s.get_shape())}" for s in (x, y)]
            if kinds[0] != kinds[1]:
                found.differs(f"{name}: {key}: committed {kinds[0]}, re-run {kinds[1]}")
                continue
            _tensor(found, name, key, f.get_tensor(key), g.get_tensor(key), tol.weights_abs_tol)


KINDS = {".json": _json, ".csv": _csv, ".safetensors": _safetensors}


def compare_file(a: Path, b: Path, name: str, tol: Audit, found: Findings) -> None:
    """Compare the committed file ``a`` with the re-run's ``b`` (``name`` in messages), recording in ``found``."""
    found.compared += 1
    if filecmp.cmp(a, b, shallow=False):
        return
    found.changed.append(name)
    kind = KINDS.get(a.suffix)
    if kind is None:
        found.differs(f"{name}: bytes differ (committed {a.stat().st_size} B, re-run {b.stat().st_size} B)")
        return
    before = found.n_diffs
    try:
        kind(a, b, name, tol, found)
    except Exception as exc:  # unreadable JSON/CSV/safetensors (SafetensorError derives from Exception only)
        found.differs(f"{name}: cannot be read as {a.suffix[1:]} ({type(exc).__name__}: {exc}); bytes differ")
        return
    if found.n_diffs == before and name not in found.per_file:  # equal values, different bytes
        found.deviation(name, "(same values, different encoding)", 0.0)


def compare_measured(old: dict, new: dict, rel_tol: float) -> tuple[list[str], list[str]]:
    """For a measurement: (ratios that differ beyond ``rel_tol`` or are missing, every ratio compared)."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if k.rsplit(".", 1)[-1] in RATIO_KEYS)
    beyond, compared = [], []
    for key in keys:
        x, y = a.get(key, MISSING), b.get(key, MISSING)
        if not (_is_number(x) and _is_number(y)):
            beyond.append(f"{key}: {x!r} -> {y!r}")
            continue
        rel = abs(y - x) / max(abs(x), 1e-12)
        line = f"{key}: {x:g} -> {y:g} ({rel:+.1%})"
        compared.append(line)
        if rel > rel_tol:
            beyond.append(line)
    return beyond, compared


def _measured(root: Path, names: list[str]) -> list[str]:
    """The metrics files among ``names`` that record a measurement (``"measured": true``)."""
    out = []
    for name in names:
        if name.endswith(".json") and (root / name).is_file():
            try:
                data = json.loads((root / name).read_text())
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("measured") is True:
                out.append(name)
    return out


def _measurement(committed: Path, rerun: Path, names: list[str], tol: Audit) -> tuple[str, list[str]]:
    beyond, compared = [], []
    for name in names:
        if not (rerun / name).is_file():
            beyond.append(f"{name}: not written by the re-run")
            continue
        old, new = (json.loads((root / name).read_text()) for root in (committed, rerun))
        b, c = compare_measured(old, new, tol.ratio_rel_tol)
        beyond += [f"{name}: {line}" for line in b]
        compared += [f"{name}: {line}" for line in c]
    if beyond:
        return "differs", [f"ratios beyond rel {tol.ratio_rel_tol:g}:", *beyond, "all ratios:", *compared]
    return f"equal within tolerance (measurement: ratios within rel {tol.ratio_rel_tol:g})", compared


def _files(root: Path, path: str) -> set[str]:
    """The files of output ``path`` under ``root`` (the file itself, or every file of the directory)."""
    top = root / path
    if top.is_dir():
        return {f"{path.rstrip('/')}/{p.relative_to(top).as_posix()}" for p in top.rglob("*") if p.is_file()}
    return {path} if top.is_file() else set()


def compare_outputs(committed: Path, rerun: Path, paths: list[str], tol: Audit) -> tuple[str, list[str]]:
    """Compare outputs ``paths`` (files or directories, relative to both roots) of ``committed`` and ``rerun``.

    Returns (verdict, details): ``identical`` (every file's bytes equal), ``equal within tolerance (max
    deviation <value> at <file>:<key>)`` with one line per changed file, or ``differs`` with the first
    differing values (file, key, committed value, re-run value).
    """
    old = set().union(*(_files(committed, p) for p in paths))
    new = set().union(*(_files(rerun, p) for p in paths))
    names = sorted(n for n in old | new if not is_provenance(n))
    measured = _measured(committed, sorted(old))
    if measured:
        verdict, details = _measurement(committed, rerun, measured, tol)
        others = [n for n in names if n not in measured]
        return verdict, details + ([f"not judged (timings): {', '.join(others)}"] if others else [])
    found = Findings()
    for name in names:
        if name in old and name in new:
            compare_file(committed / name, rerun / name, name, tol, found)
        else:
            found.differs(f"{name}: only in the {'committed' if name in old else 're-run'} output")
    if found.n_diffs:
        more = found.n_diffs - len(found.diffs)
        return "differs", found.diffs + ([f"... and {more} more difference(s)"] if more else [])
    if not found.changed:
        judged = [p for p in paths if not is_provenance(p)]
        return "identical", [f"{found.compared} file(s) equal byte for byte, in {', '.join(judged)}"]
    details = [
        f"{name}: {count} value(s) within tolerance, max deviation {worst:.3g} at {key}"
        for name, (count, worst, key) in found.per_file.items()
    ]
    return f"equal within tolerance (max deviation {found.max_dev:.3g} at {found.where})", details
