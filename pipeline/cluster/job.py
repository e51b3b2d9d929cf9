"""One stage instance as one submitit job: ``dvc --wait-for-lock repro --single-item <instance>`` in the workspace
(or, without a shared filesystem, in a clone of it: upstream results come from the DVC remote's run-cache, and the
job's go there, :mod:`pipeline.cluster.runcache`).

Stopping. dvc runs in its own session, with its signal dispositions set here (:mod:`pipeline.cluster.process_tree`), so
what reaches it and its stage is decided here, not by how the cluster tracks processes or by what this job
inherited:

* SLURM's warning before the time limit, or a preemption notice (SIGUSR2, ``#SBATCH --signal=USR2@<delay>``):
  submitit calls :meth:`StageJob.checkpoint`, which stops the run (the stage finishes its step, saves its resume
  state in ``.resume/`` and exits: :mod:`pipeline.training.signals`; dvc sees it fail and releases its locks), waits
  until every process of it has ended *and been reaped*, and returns this same job, which submitit requeues (``scontrol
  requeue``; the local executor restarts it). The requeued job runs the same dvc command; the stage resumes.
* SIGTERM or SIGINT to this process (``scontrol requeue``, ``scancel``, a preemption without warning,
  ``pipeline.cluster cancel``): the same stop, within ``cluster.stop_window_s``; then the job ends with an error
  naming the signal, and a job SLURM requeues starts again and resumes.

A job reports its end (or is requeued) only once its run has no process left, zombies included, and no lock record
of its dvc is left in DVC's rwlock (:mod:`pipeline.cluster.dvc_locks` removes those of a dvc that had to be killed).
Each start records its dvc process (host, PID, command) beside its start count; a start removes the records its
predecessors' dvc left if those have ended (a predecessor killed with its job, on this node or another).

Every start of a job is counted in ``<log_folder>/attempts/<job id>``; a job that has started more than
``1 + cluster.requeue_limit`` times fails at once with a message saying so (submitit also counts time-outs).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from submitit.core.utils import UncompletedJobError

from pipeline import procfs, scratch, stop_signals
from pipeline.cluster import dvc_locks, process_tree

__all__ = ["JobFailed", "StageJob", "release_runs"]

log = logging.getLogger("pipeline.cluster")

# After SIGTERM, SLURM kills the job's processes KillWait seconds later (30 by default): a run that has not saved
# within cluster.stop_window_s (checked below KillWait at submit) is killed here, so that nothing outlives the job
# (processes in their own session would, and keep the node). The run is told its window (stop_signals.WINDOW_ENV)
# and warns when writing its resume checkpoint takes more than half of it.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR2}


class JobFailed(RuntimeError):
    """The job's one-line reason for failing, which ``pipeline.cluster status`` shows."""


@dataclass
class Clone:
    """Where a job without a shared filesystem gets the code: a git URL (or path) and the commit submitted."""

    source: str
    commit: str


@dataclass
class StageJob:
    instance: str
    workspace: str  # the shared workspace (clone mode: where the log folder is)
    attempts: str  # folder of the per-job start counts
    requeue_limit: int
    stop_timeout_s: float  # how long a stopped run may take to save and end before it is killed
    clone: Clone | None = None
    cpus: int = 0  # the CPUs the job asked for (cluster.<training|other>.cpus_per_node); 0: not known
    term_stop_s: float = 20.0  # cluster.stop_window_s: after SIGTERM, how long the run may take to save and end
    _run: process_tree.Run | None = field(default=None, init=False, repr=False, compare=False)
    _workdir: Path | None = field(default=None, init=False, repr=False, compare=False)
    _stop_reason: str = field(default="", init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:  # what submitit pickles: the settings, never a live run
        return {**self.__dict__, "_run": None, "_workdir": None, "_stop_reason": ""}

    # ------------------------------------------------------------------------------------------------ running
    def __call__(self) -> str:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        start = self._count_start()
        if start > 1 + self.requeue_limit:
            raise JobFailed(
                f"{self.instance}: started {start} times, more than 1 + cluster.requeue_limit "
                f"({self.requeue_limit}); its resume state is kept: raise the limit or the time limit and submit again"
            )
        log.info("%s: start %d of at most %d", self.instance, start, 1 + self.requeue_limit)
        self._check_cpus()
        process_tree.become_subreaper()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        workdir = self._workdir = self._make_workdir()
        self._release_predecessors(workdir)
        python = [sys.executable, "-m", "pipeline.cluster.runcache"]
        if self.clone is not None:  # upstream results: from the remote's run-cache
            self._execute(workdir, [*python, "pull"])
        try:
            self._execute(workdir, scratch.dvc_command("--wait-for-lock", "repro", *self._repro_args()))
        except UncompletedJobError:  # raised by submitit's SIGUSR2 handler once the time-outs are used up
            raise JobFailed(
                f"{self.instance}: stopped by its time limit more times than cluster.requeue_limit "
                f"({self.requeue_limit}) allows; its resume state is kept: raise the limit or the job's time_min "
                "and submit again, it continues from there"
            ) from None
        if self.clone is not None:  # this run, its outputs and the upstream ones it restored: to the remote
            self._execute(workdir, [*python, "push"])
            shutil.rmtree(workdir, ignore_errors=True)
        log.info("%s: done", self.instance)
        return f"{self.instance}: done"

    def _repro_args(self) -> list[str]:
        # In a clone, upstream instances come from the remote's run-cache (DVC restores a stage whose command,
        # dependencies and params it has run before instead of running it): repro with its upstream, pulling.
        return ["--pull", self.instance] if self.clone is not None else ["--single-item", self.instance]

    def _execute(self, workdir: Path, command: list[str]) -> None:
        shown = " ".join([Path(command[0]).name, *command[1:]])
        log.info("%s: %s (in %s)", self.instance, shown, workdir)
        # A stop signal arriving while the process starts waits until the run is known here, then stops it
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            if self._stop_reason:
                raise JobFailed(f"{self.instance}: stopped by {self._stop_reason} before `{shown}` started")
            window = {stop_signals.WINDOW_ENV: f"{min(self.stop_timeout_s, self.term_stop_s):g}"}
            self._run = run = process_tree.Run(command, workdir, {**scratch.env(), **window})
            self._remember(run)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        code = run.wait()
        self._finish(run, run.stop(self.stop_timeout_s))  # what the command left running, normally nothing
        if self._stop_reason:
            raise JobFailed(f"{self.instance}: stopped by {self._stop_reason}; resume state kept")
        if code != 0:
            raise JobFailed(
                f"{self.instance}: `{shown}` exited with status {code} (its output is above in this "
                "job's log); fix the cause and submit again: finished instances are not run again"
            )

    def _make_workdir(self) -> Path:
        if self.clone is None:
            return Path(self.workspace)
        from submitit import JobEnvironment

        # node-local scratch ($TMPDIR, as clusters set it per job), one clone per job, reused by its restarts there
        path = Path(os.environ.get("TMPDIR") or "/tmp") / f"qkv-{JobEnvironment().job_id}"
        if not (path / ".git").is_dir():  # a restart on the node that has it keeps the clone and its .resume/
            shutil.rmtree(path, ignore_errors=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            for cmd in (["git", "clone", "--quiet", self.clone.source, str(path)],
                        ["git", "-C", str(path), "checkout", "--quiet", self.clone.commit]):  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise JobFailed(f"{self.instance}: {' '.join(cmd)} failed: {done.stderr.strip()}")
        return path

    def _check_cpus(self) -> None:
        """Say how many CPUs this job step may run on (its affinity, which SLURM's task/affinity or cgroup binding
        sets), against what the job asked for: a step bound to fewer starves the loader and idles the GPUs."""
        seen = len(os.sched_getaffinity(0))
        if self.cpus and seen < self.cpus:
            log.warning("%s: this job step may run on %d CPU(s), but the job asked for %d: the step was bound to "
                        "fewer (srun without --cpus-per-task?); the loader will starve the device", self.instance,
                        seen, self.cpus)  # fmt: skip
        else:
            log.info("%s: this job step may run on %d CPU(s) (asked for %d)", self.instance, seen, self.cpus)

    # ---------------------------------------------------------------------------------- starts and their dvc
    def _job_file(self, suffix: str = "") -> Path:
        from submitit import JobEnvironment

        return Path(self.attempts) / f"{JobEnvironment().job_id}{suffix}"

    def _count_start(self) -> int:
        path = self._job_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        start = int(path.read_text() or 0) + 1 if path.exists() else 1
        _write(path, f"{start}\n")
        return start

    def _remember(self, run: process_tree.Run) -> None:
        """Record this start's process (host, PID, start time, command) for the job's later starts."""
        path = self._job_file(".runs.json")
        runs = _read_runs(path)
        runs.append({"host": socket.gethostname(), "pid": run.pid, "started": run.started,
                     "cmd": " ".join(run.command), "workdir": str(self._workdir)})  # fmt: skip
        _write(path, json.dumps(runs, indent=1) + "\n")

    def _release_predecessors(self, workdir: Path) -> None:
        """Remove the lock records of the dvc processes this job's earlier starts ran, where those have ended: a
        predecessor killed with its job (SIGKILL after SLURM's KillWait, the OOM killer, a lost node) left them."""
        from submitit import JobEnvironment

        release_runs(Path(self.attempts), JobEnvironment().job_id, self.instance, workdir)

    # ----------------------------------------------------------------------------------------------- stopping
    def checkpoint(self):
        """submitit's hook on SIGUSR2 (time limit near, or preemption): stop the run cleanly, then requeue this
        same job, which resumes it."""
        from submitit.helpers import DelayedSubmission

        self._stop("the scheduler's warning before the time limit or a preemption (SIGUSR2)", self.stop_timeout_s)
        return DelayedSubmission(StageJob(self.instance, self.workspace, self.attempts, self.requeue_limit,
                                          self.stop_timeout_s, self.clone, self.cpus, self.term_stop_s))  # fmt: skip

    def _on_signal(self, signum: int, frame) -> None:
        self._stop(f"{signal.Signals(signum).name} (scancel, scontrol requeue, a preemption or cluster cancel)",
                   self.term_stop_s)  # fmt: skip

    def _stop(self, reason: str, timeout_s: float) -> None:
        """Runs in a signal handler: stop the run and return once all of it has ended, been reaped and left no lock.
        A second stop signal during a stop only shortens it."""
        run, stopping = self._run, bool(self._stop_reason)
        self._stop_reason = self._stop_reason or reason
        if run is None or run.status is not None and run.collect():
            return  # nothing running: __call__ starts nothing more
        if stopping:
            run.tighten(timeout_s)
            return
        log.warning("%s: stopping: %s", self.instance, reason)
        self._finish(run, run.stop(timeout_s))

    def _finish(self, run: process_tree.Run, stopped: process_tree.Stopped) -> None:
        """Log how the run ended and remove the lock records of its dvc if it had to be killed."""
        if stopped.killed:
            log.warning("%s: killed %d process(es) still running %.0f s after the stop: %s", self.instance,
                        len(stopped.killed), stopped.seconds, " ".join(map(str, stopped.killed)))  # fmt: skip
        if stopped.left:
            log.error("%s: process(es) %s did not end after SIGKILL (uninterruptible I/O?)", self.instance,
                      " ".join(map(str, stopped.left)))  # fmt: skip
        released = dvc_locks.release(self._workdir, run.pid, " ".join(run.command)) if not stopped.left else []
        if released:
            log.warning("%s: released %d DVC lock record(s) the killed dvc (PID %d) left: %s", self.instance,
                        len(released), run.pid, ", ".join(released))  # fmt: skip
        if stopped.signalled or stopped.killed:
            log.info("%s: every process of the run ended and was reaped %.1f s after the stop (exit status %s)%s",
                     self.instance, stopped.seconds, run.status,
                     "" if stopped.left else "; no DVC lock of it is left")  # fmt: skip


def release_runs(attempts: Path, job_id: str, instance: str, workdir: Path | None = None) -> None:
    """Remove the lock records left by the dvc processes that job ``job_id``'s starts ran (in ``workdir``, or in any
    that still exists) and that have ended (on another node: ended, as this job runs now, or was cancelled). One
    still running here is left, and named."""
    for run in _read_runs(attempts / f"{job_id}.runs.json"):
        where = Path(run.get("workdir", ""))
        if (workdir is not None and where != workdir) or not (where / ".dvc").is_dir():
            continue
        if run["host"] == socket.gethostname() and procfs.alive(run["pid"], run["started"]):
            log.warning("%s: the dvc of an earlier start of job %s (PID %d) is still running; DVC will say its "
                        "outputs are busy until it ends", instance, job_id, run["pid"])  # fmt: skip
            continue
        paths = dvc_locks.release(where, run["pid"], run["cmd"])
        if paths:
            log.warning("%s: released %d DVC lock record(s) the dvc of job %s (PID %d on %s) left: %s", instance,
                        len(paths), job_id, run["pid"], run["host"], ", ".join(paths))  # fmt: skip


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read_runs(path: Path) -> list[dict]:
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in runs if isinstance(r, dict) and {"host", "pid", "started", "cmd"} <= r.keys()]
