"""Rehearse a GPU profile on this CPU: its whole DAG, end to end, in a scratch copy, in minutes.

    python -m pipeline.review.rehearse paper        (or: make rehearse PROFILE=paper; also cifar)

1. The params: ``profiles/<name>.yaml`` with the size and data overrides of :mod:`pipeline.review.rehearsal` (and any
   ``--set key=value`` of a size knob), printed first and recorded in the params' ``rehearsal`` section, which
   labels the rehearsal's report REHEARSAL on every page and table.
2. The data: small stand-ins of every dataset the profile reads from your files, written in their real on-disk
   formats from real photographs (:mod:`pipeline.data.standins`), in ``<workdir>/data/<dataset>``.
3. The run: the repository's tracked code copied to ``<workdir>/repo`` (no results), ``dvc repro`` there.
4. The checks: any failing stage, NaN or infinite number, missing output, unbuilt report, or a claim the real
   profile tests left "not run" fails the rehearsal (exit 1), naming it. The summary (stages and wall time,
   verdicts — rehearsal numbers, meaningless as science — and the code only a GPU runs) ends the output and is
   written to ``<workdir>/summary.txt``.

Nothing is written into the workspace except ``<workdir>`` (default ``.rehearsal/<name>``, ignored by git and
DVC), which a new rehearsal of the same profile replaces.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline import cli, config
from pipeline.cli import run_stage
from pipeline.config import SOURCES, ParamsError
from pipeline.reporting.claims import tested_by
from pipeline.review import rehearsal
from pipeline.scratch import commit, copy_tracked, dvc, dvc_command, env

MARKER = ".qkv-rehearsal"  # a workdir holds this file: only such a folder is ever replaced


class RehearsalError(ValueError):
    """The rehearsal found something a real run would hit; the message names the stage or file."""


def _workdir(path: Path) -> Path:
    if path.exists():
        if not (path / MARKER).is_file():
            raise ParamsError(f"--workdir {path}: exists and is not a rehearsal's folder; give a new or empty path")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("a rehearsal's scratch folder (pipeline/review/rehearse.py); safe to delete\n")
    return path


def _repro(repo: Path, log: Path, total: int) -> list[tuple[str, float]]:
    """``dvc repro`` in ``repo``, its output in ``log``, one progress line per stage; the (stage, seconds) run."""
    timings: list[tuple[str, float]] = []
    with (
        log.open("w") as out,
        subprocess.Popen(
            dvc_command("repro"), cwd=repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
    ):
        started = time.monotonic()
        for line in proc.stdout:
            out.write(line)
            if line.startswith("Running stage '"):
                now = time.monotonic()
                if timings:
                    timings[-1] = (timings[-1][0], now - started)
                started, name = now, line.split("'")[1]
                timings.append((name, 0.0))
                print(f"[{len(timings):3d}/{total}] {name}", file=sys.stderr, flush=True)
        code = proc.wait()
    if timings:
        timings[-1] = (timings[-1][0], time.monotonic() - started)
    if code:
        stage = timings[-1][0] if timings else "(before any stage)"
        lines = [line.strip() for line in log.read_text().splitlines() if line.strip()]
        errors = [line for line in lines if ": error: " in line or line.startswith("ERROR")] or lines or ["no output"]
        raise RehearsalError(f"stage {stage} failed: {errors[0]} (full log: {log})")
    return timings


def _check(code: Path, real: Path, stages: list[str]) -> list[str]:
    """Raise if any stage did not run, an output is missing, a number is NaN or infinite, the report is missing
    or unlabelled, or a claim the real profile ``real`` tests was left "not run"; returns the claims the real
    profile tests that the rehearsal could not (its ``--set`` removed a backbone, seed or dataset they need)."""
    lock = config.read_yaml(code / "dvc.lock", "DVC lock file").get("stages", {})
    missing = [s for s in stages if s not in lock]
    if missing:
        raise RehearsalError(f"stage(s) never ran: {', '.join(missing)}")
    status = dvc(code, "status", "--json")
    if status.returncode or status.stdout.strip() not in ("{}", ""):
        raise RehearsalError(
            f"dvc status is not clean after the run: {status.stdout.strip()[:500]}{status.stderr[-500:]}"
        )
    for stage, entry in lock.items():
        for out in entry.get("outs", []):
            if not (code / out["path"]).exists():
                raise RehearsalError(f"stage {stage}: output {out['path']} is missing")
    bad = rehearsal.bad_numbers(code / "results") + rehearsal.bad_numbers(code / "reports")
    if bad:
        raise RehearsalError(f"{len(bad)} NaN or infinite number(s), the first: {bad[0]}")
    page = code / "reports" / "index.html"
    if not page.is_file() or "REHEARSAL" not in page.read_text():
        raise RehearsalError(f"{page}: the report is missing or not labelled REHEARSAL")
    outcomes = config.read_yaml(code / "reports" / "headline.json", "headline metrics")["claims"]
    real_cfg, cfg = config.load_report(real), config.load_report(code / "params.yaml")
    published = config.load_published(code / "references" / "published.yaml")
    skipped = []
    for claim in (c for c in published.claims if tested_by(c, real_cfg)):
        if not tested_by(claim, cfg):
            skipped.append(claim.id)  # a --set took away what it needs
        elif outcomes.get(claim.id, "missing").startswith(("not run", "missing")):
            raise RehearsalError(
                f"claim {claim.id}: tested by profile {cfg.profile}, but the rehearsal's report says "
                f"{outcomes.get(claim.id, 'nothing')!r}"
            )
    return skipped


def _write_data(profile: dict, roots: dict[str, Path]) -> list[str]:
    """The stand-in files of every dataset the profile reads from the user's files; what was done, per dataset."""
    from pipeline.data import standins

    notes = []
    for name, entry in profile["datasets"].items():
        if SOURCES[entry["source"]].kind != "user":
            continue
        yours = Path(entry["root"]).expanduser()
        standins.WRITERS[entry["source"]](roots[name], **rehearsal.DATA)
        state = "exists but is not read" if yours.is_dir() else "does not exist"
        notes.append(f"  {name}: stand-in {entry['source']} files written to {roots[name]} (your root {yours} {state})")
    return notes


def rehearse(repo: Path, source: Path, profile: dict, sets: dict, workdir: Path) -> str:
    """Rehearse ``profile`` (read from ``source``) with the extra size overrides ``sets`` in ``workdir``; returns
    the summary, or raises RehearsalError naming what failed."""
    began = time.monotonic()
    roots = {n: workdir / "data" / n for n in profile["datasets"]}
    params, overrides = rehearsal.derive(profile, roots, sets, os.cpu_count() or 1)
    print(rehearsal.describe(profile["profile"], source, overrides), file=sys.stderr, flush=True)
    notes = _write_data(profile, roots)
    print("data: the rehearsal makes its own (real photographs, the real formats)", *notes, sep="\n", file=sys.stderr)
    code = workdir / "repo"
    copy_tracked(repo, code, skip=("results/", "reports/", "dvc.lock"))  # the code, no results
    (code / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commit(code, "rehearsal")
    stages = dvc(code, "stage", "list", "--name-only").stdout.split()
    timings = _repro(code, workdir / "dvc-repro.log", len(stages))
    (workdir / "stages.tsv").write_text("".join(f"{stage}\t{seconds:.1f}\n" for stage, seconds in timings))
    skipped = _check(code, source, stages)
    summary = rehearsal.summary(
        profile["profile"], timings, time.monotonic() - began, code, rehearsal.cuda_lines(repo), skipped
    )
    (workdir / "summary.txt").write_text(summary + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(
        "python -m pipeline.review.rehearse", __doc__, {"profile": "the GPU profile to rehearse: cifar or paper"}
    )
    parser.add_argument("--workdir", help="scratch folder (default .rehearsal/<profile>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another size override")
    parser.add_argument("--profiles", default="profiles", help="folder of profile files")
    parser.add_argument("--repo", default=".", help="the repository whose code is rehearsed")
    args = parser.parse_args(argv)
    run_stage("rehearse", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    repo = Path(args.repo).resolve()
    source = Path(args.profiles) / f"{args.profile}.yaml"
    if args.profile == "embedded":
        raise ParamsError(
            "profile 'embedded' runs on this CPU as it is and needs no rehearsal: `make repro` runs it whole"
        )
    if not source.is_file():
        known = ", ".join(p.stem for p in sorted(Path(args.profiles).glob("*.yaml")) if p.stem != "embedded")
        raise ParamsError(f"unknown profile {args.profile!r}; profiles to rehearse: {known}")
    config.load(source)  # the real profile must be valid before anything is written
    profile = yaml.safe_load(source.read_text())
    sets = rehearsal.parse_sets(args.set)
    workdir = Path(args.workdir or repo / ".rehearsal" / args.profile)
    rehearsal.derive(profile, {n: workdir / "data" / n for n in profile["datasets"]}, sets, os.cpu_count() or 1)
    print(rehearse(repo, source, profile, sets, _workdir(workdir)))


if __name__ == "__main__":
    main()
