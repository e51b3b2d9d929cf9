"""What every value the report reads from a result file may hold: one table of kinds (:data:`KINDS`: an
accuracy is in [0, 100], a cosine similarity in [-1, 1], a count is a whole number >= 1, ...) and, per kind of
result file, the kind of every key the report reads (:data:`PRETRAIN`, :data:`FINETUNE`, :data:`CURVES`,
:data:`PREPARE`, :data:`FLOPS`, :data:`BENCH`, :data:`PLAN`, :data:`PROVENANCE`). :func:`check` walks a file
against its table: a value of the wrong type or out of its kind's range, a missing key, an empty or oversized
object or list is one line naming the file, the key, the value, what was expected and the remedy.

A table is a dict ``key -> spec``; a key ending in ``?`` may be absent. A spec is a kind's name, another table,
:class:`Maybe` (null allowed), :class:`Each` (an object keyed by names), :class:`Items` (a list) or
:class:`ByMode` (a table chosen by a key's value). Keys the report does not read are not checked.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["BENCH", "CURVES", "FINETUNE", "FLOPS", "KINDS", "PLAN", "PREPARE", "PRETRAIN", "PROVENANCE", "check"]


@dataclass(frozen=True)
class Kind:
    """A kind of value: a number in [low, high] (``low`` itself excluded if ``above``; ``whole``: an integer), or
    a string matching ``pattern``, or true/false (``flag``), or any object or list (``shape``)."""

    what: str
    low: float | None = None
    high: float | None = None
    above: bool = False
    whole: bool = False
    pattern: str | None = None
    flag: bool = False
    shape: type | None = None

    def holds(self, value: Any) -> bool:
        if self.shape is not None:
            return isinstance(value, self.shape)
        if self.flag or isinstance(value, bool):
            return self.flag and isinstance(value, bool)
        if self.pattern is not None:
            return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None
        if not isinstance(value, int if self.whole else (int, float)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or value <= self.high


_LINE = r"[^\s](?:[^\n]*[^\s])?"  # one line, not empty, no surrounding blanks
# The range of every kind of value the report reads (each key of the tables below names one of these).
KINDS = {
    "accuracy": Kind("an accuracy in [0, 100] (percent)", 0, 100),
    "loss": Kind("a loss: finite and >= 0", 0),
    "cosine": Kind("a cosine similarity in [-1, 1]", -1, 1),
    "lr": Kind("a learning rate: finite and >= 0", 0),
    "count": Kind("a count: a whole number >= 1", 1, whole=True),
    "epochs": Kind("a number of epochs: a whole number in [1, 10000]", 1, 10_000, whole=True),
    "size": Kind("a count: a whole number >= 0", 0, whole=True),
    "seed": Kind("a seed: a whole number >= 0", 0, whole=True),
    "params": Kind("a parameter count: a whole number >= 1", 1, whole=True),
    "flops": Kind("a FLOP count: finite and > 0", 0, above=True),
    "rate": Kind("a rate (images/s, GFLOP/s): finite and > 0", 0, above=True),
    "ms": Kind("a time in ms: finite and > 0", 0, above=True),
    "hours": Kind("a number of hours: finite and > 0", 0, above=True),
    "bytes": Kind("a number of bytes: finite and >= 0", 0),
    "mib": Kind("a memory size in MiB: finite and > 0", 0, above=True),
    "ratio": Kind("a ratio: finite and > 0", 0, above=True),
    # the bench's *_fraction: a training step's GFLOP/s over a matrix product's timed in the same rounds; a little
    # above 1 is timing noise, twice is a broken measurement (no key the report reads is a plain fraction)
    "share": Kind("a share of a measured ceiling in (0, 2]", 0, 2, above=True),
    "load": Kind("a load average: finite and >= 0", 0),
    "number": Kind("a finite number"),
    "name": Kind("a non-empty one-line string", pattern=_LINE),
    "text": Kind("a string", pattern=r"[^\n]*"),
    "flag": Kind("true or false", flag=True),
    "hash": Kind("a content hash 'sha256:<64 hex digits>'", pattern=r"sha256:[0-9a-f]{64}"),
    "stage": Kind("a training stage: 'pretrain' or 'finetune'", pattern=r"pretrain|finetune"),
    "weights": Kind("'raw' or 'ema'", pattern=r"raw|ema"),
    "classes": Kind("a number of classes: digits, not 0", pattern=r"[1-9][0-9]*"),
    # a module's name; an XCA block's is blocks.<number>... (the similarity figure orders blocks by it)
    "layer": Kind(
        "a layer name (blocks.<n>... for an XCA block)", pattern=r"blocks\.[0-9]+(\.\w+)*|(?!blocks\.)\w+(\.\w+)*"
    ),
    "object": Kind("an object", shape=dict),
}


@dataclass(frozen=True)
class Maybe:
    """``spec``, or null."""

    spec: Any


@dataclass(frozen=True)
class Each:
    """An object of 1 to ``most`` entries, each key of kind ``key`` and each value a ``value``."""

    key: str
    value: Any
    most: int


@dataclass(frozen=True)
class Items:
    """A list of ``least`` to ``most`` items, each an ``item``."""

    item: Any
    least: int
    most: int


@dataclass(frozen=True)
class ByMode:
    """The table ``cases[value of key]``, or ``other``."""

    key: str
    cases: dict
    other: dict


# ----------------------------------------------------------------------------------------------------
# The kind of every key the report reads, per kind of result file.

_IDENTITY = {k: "name" for k in ("profile", "backbone", "model", "variant", "dataset")}
_IDENTITY.update(stage="stage", seed="seed")
_WEIGHTS = {"raw_test_top1?": "accuracy", "ema_test_top1?": "accuracy", "weights?": "weights", "synthetic?": "flag"}
FINETUNE = {**_IDENTITY, "test_top1": "accuracy", **_WEIGHTS}
PRETRAIN = {
    **FINETUNE,
    "params": "params",
    "gflops": "flops",
    "qkv_similarity": Each("layer", {"q_k": "cosine", "q_v": "cosine", "k_v": "cosine"}, 200),
    # what ties the curves to the run (pipeline/training/metrics.py writes them from its curves)
    "epochs": "epochs",
    "val_top1_final": "accuracy",
    "val_top1_best": "accuracy",
    "best_epoch": "epochs",
}
# a curves CSV's columns (pipeline/training/train.py); others must be finite numbers
CURVES = {
    "epoch": "epochs",
    "val_top1": "accuracy",
    "lr?": "lr",
    "train_loss?": "loss",
    "val_loss?": "loss",
    "train_top1?": "accuracy",
    "val_top5?": "accuracy",
}
PREPARE = {"profile": "name", "dataset": "name", "content_hash": "hash"}
FLOPS = {
    "profile": "name",
    "forensics": Each("classes", Each("name", {"params": "params", "gflops": "flops"}, 200), 20),
}
_LOAD = Items("load", 2, 2)  # the 1-min load average before and after
_RATES = {"per_core_img_per_s": "rate", "timm_per_core_img_per_s": "rate", "ratio": "ratio", "load_1min": _LOAD}
_BENCH_MODEL = {
    **dict.fromkeys(("train_step_ms", "train_step_ms_min", "train_step_ms_max"), "ms"),
    **dict.fromkeys(("train_img_per_s", "eval_img_per_s", "train_gflop_per_s"), "rate"),
    **dict.fromkeys(("flop_ratio", "step_time_ratio", "step_over_flop_ratio"), "ratio"),
    **dict.fromkeys(("train_ceiling_fraction", "train_peak_fraction"), "share"),
}
_PRODUCT = {"gflop_per_s": "rate", "shape": Items("count", 3, 3)}
_LOADER = {"mode": "name", "img_per_s": "rate", "over_train": "ratio"}
BENCH = {
    **dict.fromkeys(("profile", "device", "dtype", "baseline"), "name"),
    **dict.fromkeys(("threads", "batch_size", "img_size", "rounds"), "count"),
    "reference": Maybe("name"),
    "models": Each("name", _BENCH_MODEL, 100),
    "order": Items("name", 1, 100),
    "ceiling": _PRODUCT,
    "peak": _PRODUCT,
    "loader": ByMode("mode", {"timm": {**_LOADER, **_RATES, "workers": "count", "rounds": "count"}}, _LOADER),
    "targets": Each("name", {"limit": "ratio", "met": "flag"}, 20),
    "measured": "flag",
}
_HOURS = {"device_hours": Maybe("hours"), "wall_hours": Maybe("hours")}
_WORK = {
    "runs": "count",
    **dict.fromkeys(("train_images", "eval_images"), "count"),
    **dict.fromkeys(("train_flops", "eval_flops"), "flops"),
    **_HOURS,
    "resume_bytes": "bytes",
}
_RATE = {"min": "rate", "max": "rate", "kinds": Items("name", 1, 20), "loader_bound?": "flag"}
_GROUP = {**_WORK, "stage": "stage", "backbone": "name", "epochs": "epochs", "weights_bytes": "bytes"}
_GROUP["rate"] = Maybe(_RATE)
_SPLITS = {**dict.fromkeys(("train", "val", "test"), "size"), "classes": "count", "exact": "flag", "bytes": "bytes"}
_PLAN_LOADER = {
    **_RATES,
    "img_size": "count",
    **dict.fromkeys(("cpus", "cores_per_device", "loader_cores"), Maybe("count")),
    **dict.fromkeys(("loader_img_per_s", "device_img_per_s", "effective_img_per_s", "cores_needed"), Maybe("rate")),
}
_INPUT = {"stage": "stage", "mode": "name"}
_TIMM_INPUT = {**_INPUT, "decodes_jpeg": "flag", "measured_on": "text", "backbones": Each("name", _PLAN_LOADER, 100)}
_MEMORY = {"peak_rss_mib": "mib", "instance": "name", "profile": Maybe("name"), "hardware": Maybe("text")}
_MEMORY.update(world_size=Maybe("count"), workers=Maybe("size"))
PLAN = {
    "profile": "name",
    "rehearsal": Maybe({"of": "name", "overrides": "size"}),
    "devices": {"kind": "name", "unit": "name", **dict.fromkeys(("per_node", "nodes", "total"), "count")},
    "groups": Items(_GROUP, 1, 100),
    "prepare": {"datasets": Each("name", _SPLITS, 100), "bytes": "bytes"},
    "total": {**_WORK, "disk_bytes": "bytes"},
    "rate_sources": Items("text", 0, 100),
    "ignored": Items("text", 0, 100),
    "input": Items(ByMode("mode", {"timm": _TIMM_INPUT}, _INPUT), 1, 10),
    "memory": Maybe(_MEMORY),
}
PROVENANCE = {
    "stage": "name",
    **dict.fromkeys(("params", "packages", "hardware"), "object"),
    "git_commit?": Maybe("name"),
    "code_changed?": Maybe("flag"),
    "changed_files?": Maybe(Items("text", 0, 100_000)),
    "stage_instance?": Maybe("name"),
}


# ----------------------------------------------------------------------------------------------------


def where(parts: tuple) -> str:
    """``qkv_similarity['blocks.0.attn.qkv']['q_k']``, ``groups[0]['rate']``: a value's place in its file."""
    return str(parts[0]) + "".join(f"[{p!r}]" for p in parts[1:]) if parts else "the file"


def _what(spec: Any) -> str:
    if isinstance(spec, str):
        return KINDS[spec].what
    if isinstance(spec, Maybe):
        return _what(spec.spec) + " or null"
    if isinstance(spec, Items):
        n = f"{spec.least}" if spec.least == spec.most else f"{spec.least} to {spec.most}"
        return f"a list of {n} items, each {_what(spec.item)}"
    if isinstance(spec, Each):
        return f"an object of 1 to {spec.most} entries"
    return "an object"


def check(data: Any, spec: Any, fail, parts: tuple = ()) -> None:
    """Check ``data`` against ``spec``; ``fail(message)`` raises on the first problem, ``message`` naming the
    value's place in the file (``parts``), the value and what was expected."""

    def wrong(value: Any, spec: Any = spec) -> None:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        fail(f"{where(parts)} is {shown}, expected {_what(spec)}")

    if isinstance(spec, Maybe):
        if data is not None:
            check(data, spec.spec, fail, parts)
    elif isinstance(spec, str):
        if not KINDS[spec].holds(data):
            wrong(data)
    elif isinstance(spec, Items):
        if not isinstance(data, list) or not spec.least <= len(data) <= spec.most:
            wrong(data)
        for i, item in enumerate(data):
            check(item, spec.item, fail, (*parts, i))
    elif isinstance(spec, Each):
        if not isinstance(data, dict) or not 1 <= len(data) <= spec.most:
            wrong(data)
        for key, value in data.items():
            if not KINDS[spec.key].holds(key):
                fail(f"{where(parts)} has the key {key!r}, expected {KINDS[spec.key].what}")
            check(value, spec.value, fail, (*parts, key))
    elif not isinstance(data, dict):
        wrong(data)
    else:
        table = spec.cases.get(data.get(spec.key), spec.other) if isinstance(spec, ByMode) else spec
        for key, kind in table.items():
            name = key.removesuffix("?")
            if name not in data:
                if name == key:
                    fail(f"{where(parts) + ': ' if parts else ''}missing key {name!r} ({_what(kind)})")
                continue
            check(data[name], kind, fail, (*parts, name))
