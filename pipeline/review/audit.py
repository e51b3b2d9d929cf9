"""Audit one stage instance: re-run it alone in a scratch copy and compare its outputs with the committed ones.

    python -m pipeline.review.audit finetune@n12-sne-digits-0        (or: make audit STAGE=finetune@n12-sne-digits-0)

It audits the commit at HEAD, never the working tree: HEAD's tracked files are exported twice to a scratch
folder (``git archive HEAD``), each a DVC repository sharing this clone's DVC cache. In the first, the instance's
committed outputs: git-tracked ones (metrics, records, curves, tables) as committed, DVC-cached ones (weights,
prepared data) checked out from the cache by HEAD's ``dvc.lock`` (one this clone does not have is noted and judged
by its hash). In the second, the instance is re-run: its upstream outputs are checked out from the cache as HEAD's
``dvc.lock`` records them, pulled from the DVC remote when one is configured, and whatever is still missing (a
fresh clone with no remote) is reproduced there first, after one line naming those instances and roughly how long
they take by the committed cost plan; then ``dvc repro --single-item --force <instance>``. Results that ``make
repro`` rewrote in the working tree are neither used nor compared with.

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
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from pipeline import cli, config
from pipeline.cli import run_stage
from pipeline.config import determinism
from pipeline.review.compare import compare_outputs, is_provenance
from pipeline.scratch import commit, dvc


def _outs(lock: dict, stage: str) -> dict[str, str]:
    return {o["path"]: o.get("md5", "") for o in lock["stages"][stage].get("outs", [])}


def _export_head(repo: Path, target: Path) -> None:
    """HEAD's tracked files in ``target`` (never the working tree's), a DVC repository sharing ``repo``'s cache."""
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=repo, capture_output=True, check=False)
    if archive.returncode != 0:
        said = (archive.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"{repo}: the audit compares with the commit at HEAD, but `git archive HEAD` failed: {said}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    commit(target, "audit")
    done = dvc(target, "cache", "dir", "--local", str(repo / ".dvc" / "cache"))
    if done.returncode != 0:
        raise ValueError(f"{target}: cannot share the DVC cache of {repo}: {done.stderr.strip()}")


def _estimate(repo: Path, names: list[str]) -> str:
    """Roughly how long ``names`` take, from the committed cost plan (results/plan/plan.json), or why unknown."""
    try:
        plan = json.loads((repo / "results" / "plan" / "plan.json").read_text())
        per = {g["stage"]: g["wall_hours"] / g["runs"] for g in plan["groups"] if g.get("wall_hours")}
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return "no estimate: results/plan/plan.json is not readable"
    hours = [per.get(name.partition("@")[0]) for name in names]
    known = sum(h for h in hours if h is not None)
    unknown = sum(h is None for h in hours)
    return f"~{known * 60:.0f} min by the plan" + (f", plus {unknown} stage(s) it does not time" if unknown else "")


def _upstream(scratch: Path, name: str) -> list[str]:
    """The instances ``name`` needs that are not up to date in ``scratch``: its upstream outputs are restored from
    the shared DVC cache as HEAD's dvc.lock records them, then pulled from the DVC remote, when one is set."""
    dvc(scratch, "checkout", "--quiet", "--with-deps", name)
    if dvc(scratch, "remote", "list").stdout.strip():
        dvc(scratch, "pull", "--with-deps", name)  # what the remote lacks is reproduced below
    done = dvc(scratch, "status", "--with-deps", "--json", name)
    try:
        status = json.loads(done.stdout) if done.returncode == 0 else None
    except ValueError:
        status = None
    if not isinstance(status, dict):
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"cannot list what {name} needs: `dvc status --with-deps {name}` failed: {said}")
    return sorted(stage for stage in status if stage != name and not stage.endswith(".dvc"))


def _get_upstream(scratch: Path, name: str, say) -> None:
    """Reproduce in ``scratch`` the upstream instances neither this clone's DVC cache nor a remote has, saying
    first what will run and roughly how long."""
    needed = _upstream(scratch, name)
    if not needed:
        return
    say(f"audit: {name} needs {', '.join(needed)}, in neither this clone's DVC cache nor a DVC remote: "
        f"reproducing them first in the scratch copy ({_estimate(scratch, needed)})")  # fmt: skip
    done = dvc(scratch, "repro", *needed)
    if done.returncode != 0:
        raise ValueError(f"reproducing {', '.join(needed)} for the audit failed: {done.stderr.strip()[-500:]}")


def _committed(name: str, outs: dict[str, str], root: Path) -> list[str]:
    """HEAD's outputs of ``name`` in ``root``, a HEAD export (:func:`_export_head`: git-tracked ones are there; the
    DVC-cached ones come from the cache by HEAD's dvc.lock); notes for those this clone does not have, which are
    then judged by hash alone."""
    dvc(root, "checkout", "--quiet", name)
    missing = [path for path in outs if not is_provenance(path) and not (root / path).exists()]
    return [
        f"note: {path}: HEAD's copy is not in this clone's DVC cache; judged by its dvc.lock hash" for path in missing
    ]


def _promise(committed: Path, name: str, outs: dict[str, str]) -> tuple[dict, dict] | None:
    """The committed run's ``determinism`` entry and provenance record (None for a stage that trains nothing);
    a ValueError, one line, when a re-run under the committed params cannot confirm that run."""
    record = _provenance(committed, outs)
    entry = determinism.committed(record) if record is not None else None
    if entry is None:
        return None
    params = config.load(committed / "params.yaml")  # what the re-run reads
    refused = determinism.refusal(name, entry, params.device, params.runtime.gpu_kernels)
    if refused:
        raise ValueError(refused)
    return entry, record


def _provenance(root: Path, outs: dict[str, str]) -> dict | None:
    """The stage's provenance record under ``root`` (None if it writes none or it is not there)."""
    for path in filter(is_provenance, outs):
        if (root / path).is_file():
            try:
                return json.loads((root / path).read_text())
            except ValueError as exc:
                raise ValueError(f"{root / path}: cannot be read as JSON ({exc})") from None
    return None


class Audited(NamedTuple):
    verdict: str  # identical, equal within tolerance (...), differs
    details: list[str]
    promise: str | None = None  # the committed run's bitwise promise, for the verdict line


def audit(repo: Path, name: str, tol: config.Audit, say=print) -> Audited:
    """Re-run stage instance ``name`` of ``repo``'s HEAD in a scratch copy; returns its verdict against HEAD's
    outputs, its details and promise. ``say`` prints what the audit will reproduce first, if anything."""
    with tempfile.TemporaryDirectory(prefix="audit-") as tmp:
        committed = Path(tmp) / "committed"
        _export_head(repo, committed)
        if not (committed / "dvc.lock").is_file():
            raise ValueError(f"{repo}: no dvc.lock committed at HEAD, nothing to audit: commit the results first")
        lock = config.read_yaml(committed / "dvc.lock", "DVC lock file")
        if name not in lock.get("stages", {}):
            recorded = ", ".join(lock.get("stages", {}))
            raise ValueError(f"no stage instance {name!r} in HEAD's dvc.lock; recorded: {recorded}")
        old = _outs(lock, name)
        noted = _committed(name, old, committed)
        promised = _promise(committed, name, old)  # before anything is spent on a re-run
        scratch = Path(tmp) / "repo"
        _export_head(repo, scratch)
        _get_upstream(scratch, name, say)
        done = dvc(scratch, "repro", "--single-item", "--force", name)
        if done.returncode != 0:
            return Audited("differs", [f"the stage failed when re-run:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"])
        new = _outs(config.read_yaml(scratch / "dvc.lock", "DVC lock file"), name)
        present = [p for p in old if (committed / p).exists() or is_provenance(p)]
        verdict, details = compare_outputs(committed, scratch, present, tol)
        rerun = _provenance(scratch, old) or {}
    absent = [p for p in old if p not in present]
    unequal = [p for p in absent if old[p] != new.get(p)]
    if unequal:
        verdict = "differs"
        details = [f"{p}: re-run hash {new.get(p)} is not HEAD's {old[p]} (HEAD's copy not here to compare "
                   "within tolerance: dvc pull it)" for p in unequal] + details  # fmt: skip
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
