"""What a rehearsal changes in a GPU profile, and what it checks afterwards (torch-free).

:func:`derive` turns a profile into the params a rehearsal runs: the profile with these overrides and no others
(size knobs and data knobs only, :mod:`pipeline.config.rehearsal`), each recorded in the params' ``rehearsal``
section:

| key | rehearsal value | why |
|---|---|---|
| ``device`` | ``cpu`` | no GPU here |
| ``launcher`` | ``--nproc-per-node 2`` (launcher ``python``: kept) | two gloo processes stand in for the GPUs |
| ``seeds`` | the profile's first two | two seeds: every interval and verdict is computed |
| ``{pretrain,finetune}.variants`` | the baseline and the first proposed | every claim is judged; bench trains all |
| ``*.recipe.epochs`` / ``warmup_epochs`` | 2 / 1 (0 if the profile has none) | warm-up and cosine, a checkpoint each |
| ``*.recipe.batch_size`` | 8 (4 per process) | the stand-in datasets hold a few dozen images |
| ``*.recipe.diagnostic_images`` | 8 | |
| ``datasets.*.root`` | the rehearsal's stand-in files | :mod:`pipeline.data.standins`, the real on-disk formats |
| ``datasets.*.download`` / ``checksums`` | false / false | offline; stand-ins cannot match the published md5 sums |
| ``datasets.*.val_fraction`` | 0.25 where the profile's rounds to an empty split | |
| ``datasets.*.stats_max_images`` | 16 | |
| ``runtime`` | threads: cores / processes, workers: at most 2, checkpoint_every 1, eval_batch_size 16 | |
| ``bench`` | batch 8, eval batch 16, warmup 1, rounds 2, loader batches 2, loader workers at most 2 | |

Every recipe component (timm transforms with RandAugment, random erasing, Mixup/CutMix, label smoothing, EMA,
repeated augmentation, drop path, bf16 autocast), every model, image size, dataset and statistic stays.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from pipeline.config import SOURCES, ParamsError, get_key, is_knob, put_key

__all__ = ["DATA", "PROCESSES", "bad_numbers", "cuda_lines", "derive", "describe", "parse_sets", "summary"]

PROCESSES = 2  # gloo processes standing in for a node's GPUs
DATA = {"classes": 4, "per_class": 6, "test_per_class": 2}  # stand-in images per dataset (pipeline.data.standins)
_EPOCHS, _BATCH, _EVAL_BATCH, _DIAGNOSTIC, _STATS, _WORKERS = 2, 8, 16, 8, 16, 2
_CHECKSUMMED = ("cifar10", "cifar100", "stl10")  # sources whose files torchvision checks against md5 sums
_DEFAULTS = {"checksums": True, "download": False}  # a dataset key's value when the profile leaves it out


FIXED = ("device", "launcher")  # size knobs the rehearsal itself decides: never the user's --set


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` arguments (values in YAML) as a mapping; only size knobs are accepted."""
    import yaml

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"--set {item!r}: expected key=value, e.g. --set pretrain.recipe.epochs=3")
        if key in FIXED:
            raise ParamsError(
                f"--set {key}: the rehearsal sets it itself (the CPU, and torchrun with {PROCESSES} gloo processes "
                "where the profile uses the launcher), so that it runs here; leave it out"
            )
        if not is_knob(key) or key.endswith((".root", ".download", ".checksums")):
            raise ParamsError(
                f"--set {key}: not a size knob; a rehearsal keeps every other key as the profile sets it "
                "(size knobs: pipeline/config/rehearsal.py SIZE_KNOBS)"
            )
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ParamsError(
                f"--set {item!r}: its value is not valid YAML ({where}); quote strings, e.g. --set seeds=[0,1]"
            ) from None
    return out


def _launcher(launcher: str) -> str:
    if "pipeline.training.launch" not in launcher:
        return launcher  # one process per run: the profile's own path
    if "--nproc-per-node" not in launcher:
        return f"{launcher} --nproc-per-node {PROCESSES}"
    return re.sub(r"--nproc-per-node[ =]\S+", f"--nproc-per-node {PROCESSES}", launcher)


def _sizes(profile: dict, cores: int) -> dict[str, Any]:
    """The size overrides of the module docstring's table, as dotted key -> value."""
    baseline = profile["report"]["baseline"]
    proposed = [v for v in profile["pretrain"]["variants"] if v != baseline][:1]
    kept = [baseline, *proposed]
    threads = max(1, cores // PROCESSES)
    out: dict[str, Any] = {
        "device": "cpu",
        "launcher": _launcher(profile["launcher"]),
        "seeds": list(profile["seeds"][:2]),
        "pretrain.variants": kept,
        "finetune.variants": [v for v in kept if v in profile["finetune"]["variants"]],
        "runtime.threads": threads,
        "runtime.workers": min(profile["runtime"]["workers"], _WORKERS),
        "runtime.checkpoint_every": 1,
        "runtime.eval_batch_size": _EVAL_BATCH,
        "bench.batch_size": _BATCH,
        "bench.eval_batch_size": _EVAL_BATCH,
        "bench.warmup": 1,
        "bench.rounds": 2,
        "bench.loader_batches": 2,
        "bench.loader_workers": min(profile["bench"]["loader_workers"], _WORKERS),
        "bench.threads": threads,
    }
    for stage in ("pretrain", "finetune"):
        recipe = profile[stage]["recipe"]
        out[f"{stage}.recipe.epochs"] = min(recipe["epochs"], _EPOCHS)
        out[f"{stage}.recipe.warmup_epochs"] = min(recipe["warmup_epochs"], _EPOCHS - 1)
        out[f"{stage}.recipe.batch_size"] = _BATCH
        out[f"{stage}.recipe.diagnostic_images"] = min(recipe["diagnostic_images"], _DIAGNOSTIC)
    return out


def _data(profile: dict, roots: dict[str, Path]) -> dict[str, Any]:
    """The data overrides: each user dataset read from the rehearsal's stand-in files."""
    out: dict[str, Any] = {}
    for name, entry in profile["datasets"].items():
        if SOURCES[entry["source"]].kind != "user":
            continue
        out[f"datasets.{name}.root"] = str(roots[name])
        out[f"datasets.{name}.download"] = False
        if entry["source"] in _CHECKSUMMED:
            out[f"datasets.{name}.checksums"] = False
        if round(DATA["per_class"] * entry["val_fraction"]) == 0:
            out[f"datasets.{name}.val_fraction"] = 0.25
        if entry.get("stats_max_images") is not None:
            out[f"datasets.{name}.stats_max_images"] = min(entry["stats_max_images"], _STATS)
    return out


def _backbones(profile: dict, keys: Any) -> dict:
    """``--set backbones=[n12, ...]``: the profile's entries of those names (the bench's must stay)."""
    known = profile["backbones"]
    if not isinstance(keys, list) or not keys or any(k not in known for k in keys):
        raise ParamsError(
            f"--set backbones: expected a list of entries of the profile's backbones ({', '.join(known)})"
        )
    if profile["bench"]["backbone"] not in keys:
        raise ParamsError(f"--set backbones: keep {profile['bench']['backbone']!r}, the backbone the bench times")
    return {k: known[k] for k in keys}


def derive(profile: dict, roots: dict[str, Path], sets: dict[str, Any], cores: int) -> tuple[dict, dict]:
    """The rehearsal's params from ``profile`` (a params mapping), the stand-in data folders ``roots`` (dataset
    name -> folder), the user's extra size overrides ``sets`` and this machine's core count. Returns the params
    and the overrides (dotted key -> {profile, rehearsal}) that differ from the profile."""
    out = copy.deepcopy(profile)
    overrides: dict[str, dict[str, Any]] = {}
    if "backbones" in sets:
        sets = {**sets, "backbones": _backbones(profile, sets["backbones"])}
    for key, value in {**_sizes(profile, cores), **_data(profile, roots), **sets}.items():
        try:
            real = get_key(profile, key)
        except KeyError as exc:
            if key.rsplit(".", 1)[-1] not in _DEFAULTS:
                raise ParamsError(f"--set {key}: profile {profile['profile']!r} has no key {exc.args[0]}") from None
            real = _DEFAULTS[key.rsplit(".", 1)[-1]]
        if real != value:
            overrides[key] = {"profile": copy.deepcopy(real), "rehearsal": value}
            put_key(out, key, value)
    for stage in ("pretrain", "finetune"):  # the YAML alias of the two recipes' augment: keep them separate objects
        out[stage]["recipe"] = copy.deepcopy(out[stage]["recipe"])
    out["rehearsal"] = {"of": profile["profile"], "overrides": overrides}
    return out, overrides


def _numbers(value: Any, where: str):
    if isinstance(value, float):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{where}[{i}]")


def _csv_rows(path: Path) -> list[list[str]]:
    """The rows of a CSV file, header first, without the "# REHEARSAL ..." line a rehearsal's tables start with."""
    with path.open(newline="") as f:
        return list(csv.reader(line for line in f if not line.startswith("#")))


def bad_numbers(folder: Path) -> list[str]:
    """Every NaN or infinite number in the JSON and CSV files under ``folder``, as ``file: key = value``."""
    found = []
    for path in sorted(folder.rglob("*.json")):
        data = json.loads(path.read_text())
        found += [f"{path}: {k} = {v}" for k, v in _numbers(data, "") if not math.isfinite(v)]
    for path in sorted(folder.rglob("*.csv")):
        rows = _csv_rows(path)
        for i, row in enumerate(rows[1:], start=1):
            for k, v in zip(rows[0], row, strict=False):
                if v.strip().lower() in ("nan", "inf", "-inf", "+inf"):
                    found.append(f"{path} row {i}: {k} = {v}")
    return found


def cuda_lines(repo: Path) -> list[str]:
    """The lines of the library and pipeline that only a GPU executes, as ``file:line: code``: those marked
    ``# CUDA only``, and the choice of NCCL (marked ``# NCCL on CUDA``)."""
    marker = re.compile(r"#\s*(CUDA only|NCCL on CUDA)\s*$")
    out = []
    for path in sorted([*repo.glob("pipeline/**/*.py"), *repo.glob("qkv/**/*.py")]):
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            if marker.search(line):
                out.append(f"{path.relative_to(repo)}:{i}: {marker.sub('', line).strip()}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def describe(name: str, source: Path, overrides: dict[str, dict]) -> str:
    """The overrides, one per line, as printed before the run and shown in the report."""
    lines = [f"REHEARSAL of profile {name}: every key as {source} sets it, except these {len(overrides)}:"]
    width = max((len(k) for k in overrides), default=0)
    lines += [f"  {k:<{width}}  {_short(v['profile'])} -> {_short(v['rehearsal'])}" for k, v in overrides.items()]
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s" if seconds >= 60 else f"{seconds:.0f} s"


def _verdicts(code: Path) -> list[str]:
    header, *cells = _csv_rows(code / "reports" / "tables" / "verdicts.csv")
    rows = [dict(zip(header, row, strict=True)) for row in cells]
    width = max((len(r["claim"]) for r in rows), default=0)
    return [f"  {r['claim']:<{width}}  {r['outcome']}: {r['detail']}" for r in rows]


def summary(
    name: str, timings: list[tuple[str, float]], wall: float, code: Path, gpu_lines: list[str], skipped: list[str]
) -> str:
    """The one-screen end of a rehearsal that passed: stages and wall time per kind, verdicts, what it could not
    exercise here."""
    kinds: dict[str, list[tuple[str, float]]] = {}
    for stage, seconds in timings:
        kinds.setdefault(stage.split("@")[0], []).append((stage, seconds))
    lines = [f"REHEARSAL of profile {name} passed: {len(timings)} stages in {_minutes(wall)} (this machine)"]
    for kind, runs in kinds.items():
        longest = max(runs, key=lambda r: r[1])
        extra = f"  longest {longest[0]} {_minutes(longest[1])}" if len(runs) > 1 else ""
        lines.append(f"  {kind:<9} x{len(runs):<3} {_minutes(sum(s for _, s in runs)):>12}{extra}")
    lines.append("verdicts (rehearsal numbers: they check the machinery, meaningless as science):")
    lines += _verdicts(code)
    if skipped:
        lines.append(f"  not judged in this rehearsal (its --set left out what they need): {', '.join(skipped)}")
    peaks = [
        (json.loads(path.read_text()).get("peak_rss_mib"), path.parent.name)
        for path in sorted((code / "results").glob("*/*/provenance.json"))
    ]
    peak = max(((m, n) for m, n in peaks if m is not None), default=None)
    if peak:
        results = code / "results"
        lines.append(
            f"peak host memory per rank: {peak[0]:,.0f} MiB ({peak[1]}; CPU, rehearsal sizes); the plan with it: "
            f"make plan PROFILE={name} ARGS='--measured {results / 'pretrain'} {results / 'finetune'}'"
        )
    lines.append(
        f"not exercised on this machine: CUDA and NCCL ({PROCESSES} gloo processes on the CPU stood in for each "
        "node's GPUs); the lines only a GPU runs:"
    )
    lines += [f"  {line}" for line in gpu_lines]
    lines.append(f"report: {code / 'reports' / 'index.html'}; every stage's wall time: {code.parent / 'stages.tsv'}")
    return "\n".join(lines)
