"""The report's input files, each checked where it is read: a malformed or truncated file, a NaN or an infinity,
a missing key, a value of the wrong type, a file written under another profile or for another instance is one
line naming the file, what is wrong and what to do. An absent file is an instance that has not run (None).

Torch-free: JSON and CSV only.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

__all__ = [
    "BENCH",
    "FINETUNE",
    "FLOPS",
    "PLAN",
    "PREPARE",
    "PRETRAIN",
    "PROVENANCE",
    "load_json",
    "read_curves",
    "read_record",
]

NUMBER = "a number"
# Required keys of each kind of file and what each must hold ("optional" ones are checked when present).
_IDENTITY = {"profile": str, "backbone": str, "model": str, "variant": str, "seed": int, "dataset": str}
_WEIGHTS = {"raw_test_top1": NUMBER, "ema_test_top1": NUMBER, "weights": str, "synthetic": bool}
FINETUNE = {"required": {**_IDENTITY, "test_top1": NUMBER}, "optional": _WEIGHTS}
PRETRAIN = {
    "required": {**FINETUNE["required"], "params": int, "gflops": NUMBER, "qkv_similarity": dict},
    "optional": _WEIGHTS,
}
PREPARE = {"required": {"profile": str, "content_hash": str}, "optional": {}}
FLOPS = {"required": {"profile": str, "forensics": dict}, "optional": {}}
BENCH = {
    "required": {
        **{k: str for k in ("profile", "device", "dtype", "baseline")},
        **{k: int for k in ("threads", "batch_size", "img_size", "rounds")},
        **{k: dict for k in ("models", "ceiling", "peak", "loader", "targets")},
        "order": list,
        "measured": bool,
    },
    "optional": {"reference": str},
}
PLAN = {
    "required": {
        "profile": str,
        **{k: dict for k in ("devices", "prepare", "total")},
        **{k: list for k in ("groups", "rate_sources", "ignored", "input")},
    },
    "optional": {"rehearsal": dict, "memory": dict},
}
PROVENANCE = {
    "required": {"stage": str, "params": dict, "packages": dict, "hardware": dict},
    "optional": {"git_commit": str, "code_changed": bool, "changed_files": list, "stage_instance": str},
}
_TYPES = {str: "a string", int: "an integer", dict: "an object", list: "a list", bool: "true or false"}


def _refuse_constant(name: str):
    raise ValueError(f"holds {name}, not a finite number")


def _read_object(path: Path, what: str, remedy: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed or truncated {what} ({exc}); {remedy}") from None
    except ValueError as exc:  # NaN, Infinity
        raise ValueError(f"{path}: {exc}; {remedy}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}; {remedy}")
    return data


def _holds(value, kind) -> bool:
    if value is None:
        return False
    if kind == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check(path: Path, data: dict, schema: dict, remedy: str) -> None:
    for key, kind in schema["required"].items():
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r} ({_TYPES.get(kind, kind)}); {remedy}")
    for key, kind in {**schema["required"], **schema["optional"]}.items():
        if key in data and not (_holds(data[key], kind) or (key in schema["optional"] and data[key] is None)):
            raise ValueError(f"{path}: {key} is {data[key]!r}, expected {_TYPES.get(kind, kind)}; {remedy}")


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
    remedy = f"re-run it: dvc repro --force {instance}"
    data = _read_object(path, "provenance file", remedy)
    if data is None:
        return None
    _check(path, data, PROVENANCE, remedy)
    recorded = data.get("stage_instance")
    if recorded is not None and recorded != instance:
        raise ValueError(f"{path}: the provenance of {recorded!r}, read as that of {instance!r}; {remedy}")
    return data


def read_curves(path: Path, instance: str) -> list[dict]:
    """The per-epoch rows of a curves CSV as finite floats ([] when its instance has not run)."""
    if not path.is_file():
        return []
    remedy = f"re-run it: dvc repro --force {instance}"
    rows = list(csv.DictReader(path.read_text().splitlines()))
    for i, row in enumerate(rows, start=2):  # line numbers as an editor shows them
        missing = [k for k in ("epoch", "val_top1") if k not in row]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)}; {remedy}")
        for key, value in row.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {i}: {key} is {value!r}, expected a number; {remedy}") from None
            if not math.isfinite(number):
                raise ValueError(f"{path}, line {i}: {key} is {value}, not a finite number; {remedy}")
            row[key] = number
    return rows
