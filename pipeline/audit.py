"""Audit one stage instance: re-run it alone in a scratch copy and compare with what is committed.

    python -m pipeline.audit finetune@sne-digits-0        (or: make audit STAGE=finetune@sne-digits-0)

The repository's tracked files are copied to a scratch folder, together with the stage's dependencies that
git does not hold (prepared data, pretrained weights: taken from this working tree); the instance is re-run
there with ``dvc repro --single-item --force``. Then:

- every output's hash is compared with the one recorded in ``dvc.lock`` (provenance files, which record wall
  time and host, are left out);
- every metrics file is compared value by value with the committed one, numbers within ``audit.abs_tol``.

Verdict: ``identical`` (all hashes equal), ``equal within tolerance`` (hashes differ, every metric within
the tolerance) or ``differs`` (files and values listed). Exit status 0 for the first two, 1 otherwise.

Measurement stages (``bench``: its metrics file says ``"measured": true``) cannot be identical — their
timings depend on the machine and its load. For them the hashes are not compared, the absolute timings are
shown but not judged, and only the dimensionless ratios (step-time and FLOP ratios, fraction of the matmul
ceiling, loader over training rate) must agree within ``audit.ratio_rel_tol`` (relative).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline import cli, config
from pipeline.cli import run_stage


def _outs(lock: dict, stage: str) -> dict[str, str]:
    return {o["path"]: o.get("md5", "") for o in lock["stages"][stage].get("outs", [])}


def _flatten(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    if isinstance(obj, list):
        return {k: v for i, value in enumerate(obj) for k, v in _flatten(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}


def compare_metrics(old: dict, new: dict, abs_tol: float) -> tuple[list[str], list[str]]:
    """(values that differ beyond ``abs_tol``, values that differ within it), as readable lines."""
    a, b = _flatten(old), _flatten(new)
    beyond, within = [], []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        line = f"{key}: {x!r} -> {y!r}"
        (within if numeric and abs(x - y) <= abs_tol else beyond).append(line)
    return beyond, within


RATIO_KEYS = ("flop_ratio", "step_time_ratio", "step_over_flop_ratio", "train_ceiling_fraction", "over_train")


def compare_measured(old: dict, new: dict, rel_tol: float) -> tuple[list[str], list[str]]:
    """For a measurement: (ratios that differ beyond ``rel_tol`` or are missing, every ratio compared)."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if k.rsplit(".", 1)[-1] in RATIO_KEYS)
    beyond, compared = [], []
    for key in keys:
        x, y = a.get(key), b.get(key)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y)):
            beyond.append(f"{key}: {x!r} -> {y!r}")
            continue
        rel = abs(y - x) / max(abs(x), 1e-12)
        line = f"{key}: {x:g} -> {y:g} ({rel:+.1%})"
        compared.append(line)
        if rel > rel_tol:
            beyond.append(line)
    return beyond, compared


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def _scratch_copy(repo: Path, stage: dict, scratch: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        source = repo / name
        if source.is_file():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, scratch / name)
    for dep in stage.get("deps", []):
        path = repo / dep["path"]
        target = scratch / dep["path"]
        if target.exists():
            continue
        if not path.exists():
            raise FileNotFoundError(
                f"dependency {dep['path']} is not in the working tree: reproduce the stage that "
                "writes it first (dvc repro <that stage>) or fetch it (dvc pull)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)
    git = ["git", "-c", "user.name=audit", "-c", "user.email=audit@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "audit"]):
        subprocess.run([*git, *args], cwd=scratch, check=True, capture_output=True)


def audit(repo: Path, name: str, abs_tol: float, ratio_rel_tol: float) -> tuple[str, list[str]]:
    """Re-run stage instance ``name`` in a scratch copy of ``repo``; returns (verdict, details)."""
    lock = config.read_yaml(repo / "dvc.lock", "DVC lock file")
    if name not in lock.get("stages", {}):
        raise ValueError(f"no stage instance {name!r} in dvc.lock; recorded: {', '.join(lock.get('stages', {}))}")
    # Metrics files are the JSON outputs other than provenance (the pipeline's naming convention).
    metrics_paths = {p for p in _outs(lock, name) if p.endswith(".json") and not p.endswith("provenance.json")}
    with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
        scratch = Path(tmp) / "repo"
        scratch.mkdir()
        _scratch_copy(repo, lock["stages"][name], scratch)
        done = _dvc("repro", "--single-item", "--force", name, cwd=scratch)
        if done.returncode != 0:
            return "differs", [f"the stage failed when re-run:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"]
        new_lock = config.read_yaml(scratch / "dvc.lock", "DVC lock file")
        old, new = _outs(lock, name), _outs(new_lock, name)
        changed = sorted(p for p in old if not p.endswith("provenance.json") and old[p] != new.get(p))
        beyond, within, measured = [], [], False
        for path in sorted(metrics_paths):
            committed, rerun = repo / path, scratch / path
            if not committed.is_file():
                beyond.append(f"{path}: not in the working tree to compare with")
                continue
            old_metrics, new_metrics = json.loads(committed.read_text()), json.loads(rerun.read_text())
            if old_metrics.get("measured") is True:
                measured = True
                b, w = compare_measured(old_metrics, new_metrics, ratio_rel_tol)
            else:
                b, w = compare_metrics(old_metrics, new_metrics, abs_tol)
            beyond += [f"{path}: {line}" for line in b]
            within += [f"{path}: {line}" for line in w]
    if measured:
        if beyond:
            return "differs", [f"ratios beyond rel {ratio_rel_tol:g}:", *beyond, "all ratios:", *within]
        return f"equal within tolerance (measurement: ratios within rel {ratio_rel_tol:g})", within
    if not changed and not beyond and not within:
        compared = [p for p in old if not p.endswith("provenance.json")]
        return "identical", [f"{len(compared)} output(s) match dvc.lock: {', '.join(compared)}"]
    if not beyond and all(p in metrics_paths for p in changed):
        return f"equal within tolerance (abs {abs_tol:g})", within
    details = [f"{p}: hash {old[p]} in dvc.lock, {new.get(p)} re-run" for p in changed] + beyond
    return "differs", details


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("python -m pipeline.audit", __doc__, {})
    parser.add_argument("stage", help="a stage instance of dvc.lock, e.g. finetune@sne-digits-0")
    parser.add_argument("--repo", default=".", help="the repository to audit")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    run_stage("audit", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    params = config.load_audit(Path(args.repo) / args.params)
    verdict, details = audit(Path(args.repo).resolve(), args.stage, params.abs_tol, params.ratio_rel_tol)
    print(f"audit {args.stage}: {verdict}")
    for line in details[:50]:
        print(f"  {line}")
    if verdict == "differs":
        sys.exit(1)


if __name__ == "__main__":
    main()
