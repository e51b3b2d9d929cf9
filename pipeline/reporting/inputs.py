"""The report's input files, each checked where it is read: a malformed or truncated file, a NaN or an infinity,
a missing key, a value of the wrong type or out of its range (:mod:`pipeline.reporting.ranges`), a file written
under another profile or for another instance is one line naming the file, what is wrong and what to do. An
absent file is an instance that has not run (None).

Identity: a training run's record (record.json) and a prepare result name their own instance (backbone, model,
variant, seed, dataset, stage; dataset), a provenance record its instance, and a curves file must fit its run's
record (one row per epoch, its last and best validation top-1 those the record holds): a file copied from another
instance is refused naming both.

Torch-free: JSON and CSV only.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from functools import partial
from pathlib import Path

from pipeline.reporting import ranges
from pipeline.reporting.ranges import BENCH, CURVES, FINETUNE, FLOPS, KINDS, PLAN, PREPARE, PRETRAIN, PROVENANCE

__all__ = [
    "BENCH",
    "FINETUNE",
    "FLOPS",
    "PLAN",
    "PREPARE",
    "PRETRAIN",
    "PROVENANCE",
    "bench_names",
    "load_json",
    "lock_outputs",
    "read_curves",
    "read_record",
    "same_layers",
]


def _refuse_constant(name: str):
    raise ValueError(f"holds {name}, not a finite number")


_JSON_BYTES = 10_000_000  # a result file is kilobytes: a bigger one is no result


def _read_object(path: Path, what: str, remedy: str) -> dict | None:
    if not path.is_file():
        return None
    if path.stat().st_size > _JSON_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes, not a {what} (at most {_JSON_BYTES:,}); {remedy}")
    try:
        data = json.loads(path.read_text(), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed or truncated {what} ({exc}); {remedy}") from None
    except ValueError as exc:  # NaN, Infinity
        raise ValueError(f"{path}: {exc}; {remedy}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}; {remedy}")
    return data


def _check(path: Path, data: dict, spec: dict, remedy: str) -> None:
    """``data`` against its table of :mod:`pipeline.reporting.ranges`: every key's type and range, every
    object's and list's size."""

    def fail(message: str):
        raise ValueError(f"{path}: {message}; {remedy}")

    ranges.check(data, spec, fail)


def load_json(path: Path, profile: str, schema: dict, instance: dict | None = None, *, remedy: str) -> dict | None:
    """A result file (None when its instance has not run), checked against ``schema`` (its required and optional
    keys), the active ``profile`` and, for a training result, its own record of the ``instance`` it belongs to.
    ``remedy`` says what to do about a bad file (e.g. "re-run it: dvc repro --force <instance>")."""
    data = _read_object(path, "result file", remedy)
    if data is None:
        return None
    _check(path, data, schema, remedy)
    if data["profile"] != profile:
        raise ValueError(
            f"{path} was written by profile {data['profile']!r}, but params.yaml is profile {profile!r}: results "
            "of two profiles are never mixed (re-run the stage, or restore its results)"
        )
    for key, expected in (instance or {}).items():
        if data.get(key) != expected:
            raise ValueError(
                f"{path}: written for {key} {data.get(key)!r}, but read as the result of {key} {expected!r}: a "
                f"result file copied or renamed from another instance; {remedy}"
            )
    return data


def read_record(path: Path, instance: str) -> dict | None:
    """The provenance record of ``instance`` (None when it has not run), checked: its required keys, and the
    instance it says it belongs to."""
    remedy = f"re-run it: dvc repro --force {instance} (or restore it: git checkout -- {path})"
    data = _read_object(path, "provenance file", remedy)
    if data is None:
        return None
    _check(path, data, PROVENANCE, remedy)
    recorded = data.get("stage_instance")
    if recorded is not None and recorded != instance:
        raise ValueError(f"{path}: the provenance of {recorded!r}, read as that of {instance!r}; {remedy}")
    return data


def read_curves(
    path: Path, instance: str, metrics: dict | None, *, remedy: str, others: dict, lock: dict | None = None
) -> list[dict]:
    """The per-epoch rows of ``instance``'s curves CSV as floats, each column in its range, the rows those of the
    run ``metrics`` records ([] when it has not run: a running instance's live curves are no result). ``others``
    (instance -> metrics) names the instance a copied file fits; ``lock`` (:func:`lock_outputs`), where it records
    the file, must record these bytes (two runs can end on the same validation accuracies)."""
    if metrics is None:
        return []
    if not path.is_file():
        raise ValueError(f"{path}: missing, but {instance} finished (its record.json is there); {remedy}")
    rows = _rows(path, metrics["epochs"], remedy)
    mismatch = _misfit(rows, metrics)
    if mismatch:
        fits = [name for name, m in others.items() if m is not None and name != instance and not _misfit(rows, m)]
        guess = f"they fit the metrics of {' or '.join(fits)}: a copy?" if fits else "nor of any other instance"
        raise ValueError(f"{path}: {mismatch}: not the curves of {instance} ({guess}); {remedy}")
    recorded = (lock or {}).get(os.path.abspath(path))
    if recorded is not None:
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        if md5 != recorded[1]:
            same = [f"{owner}'s {shown}" for owner, m, shown in lock.values() if m == md5]
            origin = f"that of {same[0]} (a copy)" if same else "no output's in dvc.lock (edited, or copied in)"
            raise ValueError(
                f"{path}: not the file {recorded[0]} wrote: its md5 {md5} is {origin}, dvc.lock records "
                f"{recorded[1]} for it; {remedy}"
            )
    return rows


def lock_outputs(lock: Path) -> dict[str, tuple[str, str, str]]:
    """Every output file ``lock`` (dvc.lock) records with its md5: absolute path -> (instance, md5, its path as
    dvc.lock writes it); {} without a dvc.lock."""
    import yaml

    if not lock.is_file():
        return {}
    try:
        data = yaml.load(lock.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{lock}: malformed ({str(exc).splitlines()[0]}); restore it: git checkout -- {lock}"
        ) from None
    stages = data.get("stages") if isinstance(data, dict) else None
    recorded = {}
    for name, stage in (stages if isinstance(stages, dict) else {}).items():
        for out in (stage.get("outs") or []) if isinstance(stage, dict) else []:
            if isinstance(out, dict) and out.get("hash") == "md5" and isinstance(out.get("md5"), str):
                shown = str(out.get("path"))
                recorded[os.path.abspath(lock.parent / shown)] = (name, out["md5"], shown)
    return recorded


_ROW_BYTES = 1_000  # a curves row is a few dozen bytes


def _rows(path: Path, epochs: int, remedy: str) -> list[dict]:
    """The rows of a curves CSV, each value a number in its column's range; at most ``epochs`` + 1 are read."""

    def fail(line: int, message: str):
        raise ValueError(f"{path}, line {line}: {message}; {remedy}")

    if path.stat().st_size > _ROW_BYTES * (epochs + 1):
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes, more than {epochs} rows can take; {remedy}")
    try:
        reader = csv.DictReader(path.read_text().splitlines())
        columns, rows = reader.fieldnames or [], []
        expected = f"a header and {epochs} rows, one per epoch of the run"
        if not columns:
            raise ValueError(f"{path}: empty, expected {expected}; {remedy}")
        missing = [k for k in CURVES if not k.endswith("?") and k not in columns]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)}; {remedy}")
        for line, row in enumerate(reader, start=2):  # line numbers as an editor shows them
            if line - 1 > epochs:
                fail(line, f"more rows than the run's {epochs} epochs")
            if None in row or None in row.values():
                fail(line, f"{'more' if None in row else 'fewer'} fields than the header's {len(columns)}")
            rows.append({key: _number(key, value, partial(fail, line)) for key, value in row.items()})
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: malformed curves file ({exc}); {remedy}") from None
    if not rows:
        raise ValueError(f"{path}: a header alone, expected {expected}; {remedy}")
    return rows


def _number(key: str, value: str, fail) -> float:
    """A curves cell as a float, in the range of its column's kind."""
    kind = KINDS[CURVES.get(key) or CURVES.get(f"{key}?") or "number"]
    try:
        number = float(value)
    except ValueError:
        fail(f"{key} is {value!r}, expected a number")
    if not math.isfinite(number):
        fail(f"{key} is {value}, not a finite number")
    if not kind.holds(int(number) if kind.whole and number.is_integer() else number):
        fail(f"{key} is {value}, expected {kind.what}")
    return number


def _misfit(rows: list[dict], metrics: dict) -> str:
    """How ``rows`` differ from the curves the run of ``metrics`` wrote ("" if they fit): as many rows as its
    epochs, numbered 1, 2, ...; the last row's val_top1 its val_top1_final; the first best its best epoch."""
    if len(rows) != metrics["epochs"]:
        return f"{len(rows)} row{'s' * (len(rows) != 1)}, but its record.json records {metrics['epochs']} epochs"
    for i, row in enumerate(rows, start=1):
        if row["epoch"] != i:
            return f"row {i} is epoch {row['epoch']:g}, expected {i} (one row per epoch, in order)"
    best = max(rows, key=lambda r: r["val_top1"])  # the first best, as the training stage picks it
    found = (rows[-1]["val_top1"], best["val_top1"], int(best["epoch"]))
    recorded = (metrics["val_top1_final"], metrics["val_top1_best"], metrics["best_epoch"])
    if any(not math.isclose(a, b, rel_tol=0, abs_tol=1e-6) for a, b in zip(found, recorded, strict=True)):
        shown = [", ".join(map(str, values)) for values in (found, recorded)]
        return f"its last val_top1, best val_top1 and best epoch are {shown[0]}; its record.json records {shown[1]}"
    return ""


def bench_names(path: Path, data: dict, remedy: str) -> None:
    """The bench's ``order``, ``baseline`` and ``reference`` name models it measured, each once in ``order``."""
    models, order = data["models"], data["order"]
    named = [*((f"order[{i}]", name) for i, name in enumerate(order)), ("baseline", data["baseline"])]
    for key, name in [*named, *([("reference", data["reference"])] if data["reference"] is not None else [])]:
        if name not in models:
            raise ValueError(
                f"{path}: {key} is {name!r}, expected one of the models it measured ({', '.join(models)}); {remedy}"
            )
    if len(set(order)) != len(order):
        raise ValueError(f"{path}: order is {order!r}, expected each model once; {remedy}")


def same_layers(runs: list[tuple[Path, dict, str]]) -> None:
    """The seeds of one backbone and variant (``(metrics path, metrics, remedy)`` each) record the Q/K/V
    similarity of the same layers (the figure averages them layer by layer)."""
    first_path, first, _ = runs[0]
    for path, metrics, remedy in runs[1:]:
        extra = set(metrics["qkv_similarity"]) ^ set(first["qkv_similarity"])
        if extra:
            raise ValueError(
                f"{path}: qkv_similarity differs from {first_path}'s in layer {sorted(extra)[0]!r}: the seeds of one "
                f"model have the same layers; {remedy}"
            )
