"""What :mod:`pipeline.cluster` knows of the jobs it submitted: the record it keeps in the log folder, the
scheduler's view (``squeue``; no ``sacct``, which needs SLURM's accounting database), submitit's result files,
and each instance's state for ``status``."""

from __future__ import annotations

import json
import pickle
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.cluster.dag import Instance, curves_epochs

__all__ = ["Record", "Row", "live_jobs", "reason", "result", "rows", "scheduler_states", "table"]

RECORD = "jobs.json"
LIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "SUSPENDED",
        "RESIZING", "SIGNALING", "STAGE_OUT")  # fmt: skip


@dataclass
class Record:
    """``<log_folder>/jobs.json``: the executor, and per instance the last job submitted for it."""

    folder: Path
    executor: str
    jobs: dict[str, str]  # instance -> job id

    @classmethod
    def read(cls, folder: Path, executor: str) -> Record:
        path = folder / RECORD
        if not path.is_file():
            return cls(folder, executor, {})
        try:
            data = json.loads(path.read_text())
            return cls(folder, data["executor"], dict(data["jobs"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"cluster: error: {path}: not a record this tool wrote ({exc}); move it away") from None

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{RECORD}.tmp"
        tmp.write_text(json.dumps({"executor": self.executor, "jobs": self.jobs}, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.folder / RECORD)


def scheduler_states(executor: str, job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``job id -> (state, reason)`` of the jobs the scheduler still lists."""
    if not job_ids:
        return {}
    if executor == "local":  # a LocalExecutor job's id is its controller's PID
        return {j: ("RUNNING", "") for j in job_ids if _controller_alive(j)}
    # --states=all: also the jobs that ended (kept for slurm.conf's MinJobAge), e.g. CANCELLED by a failed dependency
    try:
        done = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%r"], capture_output=True, text=True)
    except OSError as exc:
        raise SystemExit(
            f"cluster: error: jobs of the slurm executor are recorded (jobs {', '.join(job_ids)}) but squeue cannot "
            f"run here ({exc.strerror}): run this on a SLURM login node"
        ) from None
    if done.returncode != 0:
        raise SystemExit(f"cluster: error: squeue failed: {done.stderr.strip() or done.returncode}")
    states = {}
    for line in done.stdout.splitlines():
        job, state, reason = (line.split("|") + ["", ""])[:3]
        if job in job_ids:
            states[job] = (state, "" if reason in ("None", "(null)") else reason)
    return states


def _controller_alive(pid: str) -> bool:
    try:
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def live_jobs(record: Record, instances: list[str]) -> dict[str, str]:
    """``instance -> job id`` of those of ``instances`` whose last job is queued or running."""
    wanted = {i: record.jobs[i] for i in instances if i in record.jobs}
    states = scheduler_states(record.executor, sorted(set(wanted.values())))
    return {i: j for i, j in wanted.items() if states.get(j, ("", ""))[0] in LIVE}


def result(folder: Path, job_id: str) -> tuple[str, str] | None:
    """submitit's result of a job: ("success", ...) or ("error", traceback), None if it wrote none."""
    path = folder / f"{job_id}_0_result.pkl"
    try:
        with path.open("rb") as f:
            outcome, value = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError):
        return None
    return outcome, str(value)


def reason(traceback: str) -> str:
    """The one line a failed job's traceback ends with, without the exception's module path for our own."""
    last = [line.strip() for line in traceback.splitlines() if line.strip()][-1:] or ["(no message)"]
    return last[0].removeprefix("pipeline.cluster.job.JobFailed: ")


def log_tail(folder: Path, job_id: str, lines: int = 2) -> list[str]:
    """The last lines dvc and the stage wrote to the job's error log before it failed (the job's own traceback
    and submitit's and this tool's log lines left out)."""
    try:
        text = (folder / f"{job_id}_0_log.err").read_text(errors="replace")
    except OSError:
        return []
    own = text.splitlines()
    cut = max((i for i, line in enumerate(own) if line.startswith("Traceback (most recent call last)")), default=None)
    own = own[:cut] if cut is not None else own
    ours = ("submitit", " pipeline.cluster: ")
    kept = [line.strip() for line in own if line.strip() and not any(o in line for o in ours)]
    return kept[-lines:]


@dataclass(frozen=True)
class Row:
    instance: str
    state: str  # up to date, not submitted, queued, running, requeued, failed, ended, done
    job: str
    detail: str


def rows(root: Path, dag: dict[str, Instance], stale: set[str], record: Record) -> list[Row]:
    """One row per instance of ``dag``."""
    ids = sorted({record.jobs[n] for n in dag if n in record.jobs})
    states = scheduler_states(record.executor, ids)
    out = []
    for name, inst in dag.items():
        job = record.jobs.get(name, "")
        state, detail = _state(root, inst, name in stale, record, job, states.get(job))
        out.append(Row(name, state, job, detail))
    return out


def _state(root, inst, is_stale, record, job, live) -> tuple[str, str]:
    starts = _starts(record.folder, job) if job else 0
    again = f", restarted {starts - 1}x" if starts > 1 else ""
    state, why = live or ("", "")
    if state in LIVE:
        if state == "PENDING":
            return "queued", why and f"waiting: {why}"
        started = _started(record.folder, job)  # 0: running for the scheduler, but its run has not started yet
        epochs = curves_epochs(root, inst, since=started) if state == "RUNNING" and started else None
        where = f"epoch {epochs} done" if epochs else ""
        label = "requeued" if starts > 1 else state.lower()
        return label, ", ".join(filter(None, [where, again.lstrip(", ")]))
    if not is_stale:
        return "up to date", ""
    if not job:
        return "not submitted", ""
    outcome = result(record.folder, job)
    if state == "CANCELLED":  # scancel (the run stopped cleanly, its resume state kept), or a failed dependency
        return "cancelled", "an upstream job failed" if why == "DependencyNeverSatisfied" else "scancel" + again
    if (record.folder / "attempts" / f"{job}.cancelled").exists():  # a local job: `pipeline.cluster cancel`
        return "cancelled", "cluster cancel" + again
    if outcome is not None and outcome[0] == "success":
        return "done", "results not in this workspace's dvc.lock yet (clone workspace: `dvc repro --pull`)"
    if outcome is not None:
        tail = log_tail(record.folder, job)
        return "failed", " | ".join([reason(outcome[1]), *(f"log: {t}" for t in tail)]) + again
    if state:
        return state.lower(), why + again
    return "ended", "no result: cancelled or killed" + again


def _started(folder: Path, job: str) -> float:
    """When the job last started (its start count's time), 0 if it has not."""
    try:
        return (folder / "attempts" / job).stat().st_mtime
    except OSError:
        return 0.0


def _starts(folder: Path, job: str) -> int:
    try:
        return int((folder / "attempts" / job).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def table(rows_: list[Row]) -> str:
    """The status table: one line per instance, then the count of each state."""
    cells = [("instance", "state", "job", "detail")] + [(r.instance, r.state, r.job, r.detail) for r in rows_]
    widths = [max(len(c[k]) for c in cells) for k in range(3)]
    lines = ["  ".join([*(c[k].ljust(widths[k]) for k in range(3)), c[3]]).rstrip() for c in cells]
    counts: dict[str, int] = {}
    for r in rows_:
        counts[r.state] = counts.get(r.state, 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines) + "\n"
