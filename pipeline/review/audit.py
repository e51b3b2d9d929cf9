"""Audit one stage instance: re-run it alone in a scratch copy and compare its outputs with the committed ones.

    python -m pipeline.review.audit finetune@n12-sne-digits-0        (or: make audit STAGE=finetune@n12-sne-digits-0)

First the instance's inputs in the working tree are checked against ``dvc.lock`` (``dvc status``): one modified
since (prepared data, upstream weights, code, params) is one line naming it, before anything re-runs, since a re-run
from it cannot reproduce the committed outputs; an output that differs from ``dvc.lock`` is noted with the verdict.
The repository's tracked files are copied to a scratch folder, together with the stage's dependencies that
git does not hold (prepared data, pretrained weights: taken from this working tree); the instance is re-run
there with ``dvc repro --single-item --force``. Then every output the stage records in ``dvc.lock`` (files
or directories, file by file) is compared with the committed one: the working tree's copy (git-tracked
metrics, curves and tables; for DVC-cached outputs such as models and prepared data, the copy on disk). A
committed output missing from the working tree is an error naming it (``dvc pull`` or ``dvc repro`` it first).

Each file is compared by what it means (:mod:`pipeline.review.compare`): metrics JSON value by value and CSV cell by
cell, numbers within ``audit.abs_tol``; safetensors (weights, prepared data) tensor by tensor, same names,
shapes and dtypes, float elements within ``audit.weights_abs_tol``, integer ones exactly; any other file byte
for byte. Provenance files (host, wall time) are left out.

Verdict: ``identical`` (every file's bytes equal), ``equal within tolerance (max deviation <value> at
<file>:<key>)`` or ``differs``, followed by the first values that differ (file, key, committed and re-run
value). Exit status 0 for the first two, 1 otherwise.

What a training run promises (:mod:`pipeline.config.determinism`, recorded in its provenance as ``determinism``;
a record from before that entry is read by its ``device``) is checked before any re-run: a CUDA run with
``runtime.gpu_kernels: fast`` promises no bitwise repeat and drifts past the tolerances over a run, so its audit is
refused with one line (exit status 1) rather than judged by a looser tolerance; so is a bitwise-promised run when
``params.yaml`` now asks for another device or, for a CUDA run, for fast kernels. Otherwise the verdict line names the
promise (``identical (bitwise promise: CPU, ...)``), and a note names each recorded condition of it (CPU or GPU
model, torch version, threads, evaluation batch, processes) on which the re-run differs: there the tolerances judge.

Measurement stages (``bench``: its metrics file says ``"measured": true``) cannot be identical — their
timings depend on the machine and its load. For them the absolute timings are shown but not judged, and only
the dimensionless ratios (step-time and FLOP ratios, fraction of the matmul ceiling, loader over training
rate) must agree within ``audit.ratio_rel_tol`` (relative).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from pipeline import cli, config
from pipeline.cli import run_stage
from pipeline.config import determinism
from pipeline.review.compare import compare_outputs, is_provenance
from pipeline.scratch import commit, copy_tracked, dvc


def _outs(lock: dict, stage: str) -> dict[str, str]:
    return {o["path"]: o.get("md5", "") for o in lock["stages"][stage].get("outs", [])}


def _scratch_copy(repo: Path, stage: dict, scratch: Path) -> None:
    copy_tracked(repo, scratch)
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
    commit(scratch, "audit")


def _missing_outputs(repo: Path, name: str, outs: dict[str, str]) -> None:
    """Raise if an output to compare with is not in the working tree (before spending a re-run on it)."""
    for path in outs:
        if not is_provenance(path) and not (repo / path).exists():
            raise FileNotFoundError(
                f"committed output {path} is not in the working tree: fetch it (dvc pull {path}) or "
                f"reproduce it (dvc repro {name}), then audit again"
            )


def _provenance(root: Path, outs: dict[str, str]) -> dict | None:
    """The stage's provenance record under ``root`` (None if it writes none or it is not there)."""
    for path in filter(is_provenance, outs):
        if (root / path).is_file():
            try:
                return json.loads((root / path).read_text())
            except ValueError as exc:
                raise ValueError(f"{root / path}: cannot be read as JSON ({exc})") from None
    return None


def _promise(repo: Path, name: str, outs: dict[str, str]) -> tuple[dict, dict] | None:
    """The committed run's ``determinism`` entry and provenance record (None for a stage that trains nothing);
    a ValueError, one line, when a re-run under the current params cannot confirm that run."""
    record = _provenance(repo, outs)
    entry = determinism.committed(record) if record is not None else None
    if entry is None:
        return None
    params = config.load(repo / "params.yaml")  # what the re-run reads (its scratch copy)
    refused = determinism.refusal(name, entry, params.device, params.runtime.gpu_kernels)
    if refused:
        raise ValueError(refused)
    return entry, record


def _as_recorded(repo: Path, name: str) -> list[str]:
    """Raise (one line) if an input of ``name`` in the working tree is not what ``dvc.lock`` recorded (a re-run
    from it could not reproduce the committed outputs, whatever the code does); notes for its outputs that differ
    from dvc.lock, with which the re-run is compared (``dvc status``)."""
    done = dvc(repo, "status", "--json", name)
    try:
        status = json.loads(done.stdout) if done.returncode == 0 else None
    except ValueError:
        status = None
    if not isinstance(status, dict):
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"cannot check the inputs of {name} against dvc.lock: `dvc status {name}` failed: {said}")
    changed: dict[str, dict] = {"changed deps": {}, "changed outs": {}}
    for entry in status.get(name, []):
        for kind in changed:
            if isinstance(entry, dict) and isinstance(entry.get(kind), dict):
                changed[kind].update(entry[kind])
    if changed["changed deps"]:
        what = ", ".join(f"{path} ({how})" for path, how in changed["changed deps"].items())
        raise ValueError(
            f"{name}: its inputs are not what dvc.lock recorded: {what} (dvc status {name}); a re-run from them "
            "cannot reproduce the committed outputs: restore them (git checkout / dvc checkout <path>) or re-run "
            "the stages that write them (dvc repro), then audit"
        )
    return [f"note: {path} is {how} against dvc.lock; the re-run is compared with this working-tree copy"
            for path, how in changed["changed outs"].items() if not is_provenance(path)]  # fmt: skip


class Audited(NamedTuple):
    verdict: str  # identical, equal within tolerance (...), differs
    details: list[str]
    promise: str | None = None  # the committed run's bitwise promise, for the verdict line


def audit(repo: Path, name: str, tol: config.Audit) -> Audited:
    """Re-run stage instance ``name`` in a scratch copy of ``repo``; returns its verdict, details and promise."""
    lock = config.read_yaml(repo / "dvc.lock", "DVC lock file")
    if name not in lock.get("stages", {}):
        raise ValueError(f"no stage instance {name!r} in dvc.lock; recorded: {', '.join(lock.get('stages', {}))}")
    old = _outs(lock, name)
    promised = _promise(repo, name, old)  # before anything is spent on a re-run
    _missing_outputs(repo, name, old)
    noted = _as_recorded(repo, name)
    with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
        scratch = Path(tmp) / "repo"
        scratch.mkdir()
        _scratch_copy(repo, lock["stages"][name], scratch)
        done = dvc(scratch, "repro", "--single-item", "--force", name)
        if done.returncode != 0:
            return Audited("differs", [f"the stage failed when re-run:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"])
        new = _outs(config.read_yaml(scratch / "dvc.lock", "DVC lock file"), name)
        verdict, details = compare_outputs(repo, scratch, list(old), tol)
        rerun = _provenance(scratch, old) or {}
    if verdict == "identical":  # the working tree equals the re-run: does it also equal what dvc.lock says?
        stale = [p for p in old if not is_provenance(p) and old[p] != new.get(p)]
        details += [f"note: {p} matches the re-run but not its hash in dvc.lock (see dvc status)" for p in stale]
    return _judged(promised, rerun, verdict, noted + details)


def _judged(promised: tuple[dict, dict] | None, rerun: dict, verdict: str, details: list[str]) -> Audited:
    """The verdict with the committed run's promise, led by a note on each of its conditions the re-run did not
    meet (or, when it met them all and still differs, a note saying so)."""
    if promised is None:
        return Audited(verdict, details)
    entry, committed = promised
    notes = determinism.unmet(entry, committed, rerun)
    if rerun and not notes and verdict != "identical" and determinism.promise(entry):
        notes = ["note: every recorded condition of the bitwise promise holds, yet the outputs are not identical"]
    return Audited(verdict, notes + details, determinism.promise(entry))


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("python -m pipeline.review.audit", __doc__, {})
    parser.add_argument("stage", help="a stage instance of dvc.lock, e.g. finetune@n12-sne-digits-0")
    parser.add_argument("--repo", default=".", help="the repository to audit")
    parser.add_argument("--params", default="params.yaml", help="the params file (audit tolerances), in --repo")
    args = parser.parse_args(argv)
    run_stage("audit", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    tol = config.load_audit(Path(args.repo) / args.params)
    verdict, details, promise = audit(Path(args.repo).resolve(), args.stage, tol)
    print(f"audit {args.stage}: {verdict}" + (f" ({promise})" if promise else ""))
    for line in details[:50]:
        print(f"  {line}")
    if verdict == "differs":
        sys.exit(1)


if __name__ == "__main__":
    main()
