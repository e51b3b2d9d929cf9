"""One stage instance as one submitit job: ``dvc --wait-for-lock repro --single-item <instance>`` in the workspace
(or, without a shared filesystem, in a clone of it: upstream results come from the DVC remote's run-cache, and the
job's go there, :mod:`pipeline.runcache`).

Stopping. The dvc process and the stage it runs are started in their own process group, so what reaches them
is decided here, not by how the cluster tracks processes (a scheduler's signals to the job's step reach this
process; with cgroup tracking they may also reach the group, which ignores SIGUSR2 and stops cleanly on SIGTERM):

* SLURM's warning before the time limit, or a preemption notice (SIGUSR2, ``#SBATCH --signal=USR2@<delay>``):
  submitit calls :meth:`StageJob.checkpoint`, which sends SIGTERM to the group (the training run finishes its
  step, saves its resume state in ``.resume/`` and exits: :mod:`pipeline.signals`), waits for every process
  of it to end, and returns this same job, which submitit requeues (``scontrol requeue``; the local executor
  restarts it). The requeued job runs the same dvc command, and the stage resumes from its resume state.
* SIGTERM or SIGINT to this process (``scontrol requeue``, ``scancel``, a preemption without warning): the same
  stop, then the job ends with an error naming the signal; a job SLURM requeues starts again and resumes.

This process makes itself the "child subreaper" of its descendants (Linux), so the processes that outlive
dvc (the stage, torchrun's workers, which run in their own sessions) are still its children and it can wait
for all of them before the job ends or is requeued: nothing of a stopped run is left writing.

Every start of a job is counted in ``<log_folder>/attempts/<job id>``; a job that has started more than
``1 + cluster.requeue_limit`` times fails at once with a message saying so (submitit also counts time-outs).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from submitit.core.utils import UncompletedJobError

from . import scratch

__all__ = ["JobFailed", "StageJob"]

log = logging.getLogger("pipeline.cluster")

PR_SET_CHILD_SUBREAPER = 36  # prctl option (linux/prctl.h)
# After SIGTERM, SLURM kills the job's processes KillWait seconds later (30 by default): a run that has not saved by
# then is killed here, so that nothing outlives the job (processes in their own session would, and keep the node)
TERM_STOP_S = 20.0


class JobFailed(RuntimeError):
    """The job's one-line reason for failing, which ``pipeline.cluster status`` shows."""


def _ignore_usr2() -> None:  # runs in the child before exec: the disposition is inherited by dvc and the stage
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _children() -> list[int]:
    """PIDs of this process's live children (orphans re-parented to this subreaper included)."""
    me, kids = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] not in "ZX":
                kids.append(int(entry.name))
    return kids


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
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False, compare=False)
    _stop_reason: str = field(default="", init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:  # what submitit pickles: the settings, never a live process
        return {**self.__dict__, "_proc": None, "_stop_reason": ""}

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
        if hasattr(ctypes.CDLL(None), "prctl"):
            ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        workdir = self._workdir()
        python = [sys.executable, "-m", "pipeline.runcache"]
        if self.clone is not None:  # upstream results: from the remote's run-cache
            self._run(workdir, [*python, "pull"])
        try:
            self._run(workdir, scratch.dvc_command("--wait-for-lock", "repro", *self._repro_args()))
        except UncompletedJobError:  # raised by submitit's SIGUSR2 handler once the time-outs are used up
            raise JobFailed(
                f"{self.instance}: stopped by its time limit more times than cluster.requeue_limit "
                f"({self.requeue_limit}) allows; its resume state is kept: raise the limit or the job's time_min "
                "and submit again, it continues from there"
            ) from None
        if self.clone is not None:  # this run, its outputs and the upstream ones it restored: to the remote
            self._run(workdir, [*python, "push"])
            shutil.rmtree(workdir, ignore_errors=True)
        log.info("%s: done", self.instance)
        return f"{self.instance}: done"

    def _repro_args(self) -> list[str]:
        # In a clone, upstream instances come from the remote's run-cache (DVC restores a stage whose command,
        # dependencies and params it has run before instead of running it): repro with its upstream, pulling.
        return ["--pull", self.instance] if self.clone is not None else ["--single-item", self.instance]

    def _run(self, workdir: Path, command: list[str]) -> None:
        shown = " ".join([Path(command[0]).name, *command[1:]])
        log.info("%s: %s (in %s)", self.instance, shown, workdir)
        self._proc = subprocess.Popen(
            command, cwd=workdir, env=scratch.env(), start_new_session=True, preexec_fn=_ignore_usr2
        )
        code = self._proc.wait()
        self._reap(self.stop_timeout_s)
        if self._stop_reason:
            raise JobFailed(f"{self.instance}: stopped by {self._stop_reason}; resume state kept")
        if code != 0:
            raise JobFailed(
                f"{self.instance}: `{shown}` exited with status {code} (its output is above in this "
                "job's log); fix the cause and submit again: finished instances are not run again"
            )

    def _workdir(self) -> Path:
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

    def _count_start(self) -> int:
        from submitit import JobEnvironment

        path = Path(self.attempts) / JobEnvironment().job_id
        path.parent.mkdir(parents=True, exist_ok=True)
        start = int(path.read_text() or 0) + 1 if path.exists() else 1
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{start}\n")
        tmp.replace(path)
        return start

    # ----------------------------------------------------------------------------------------------- stopping
    def checkpoint(self):
        """submitit's hook on SIGUSR2 (time limit near, or preemption): stop the run cleanly, then requeue this
        same job, which resumes it."""
        from submitit.helpers import DelayedSubmission

        self._stop("the scheduler's warning before the time limit or a preemption (SIGUSR2)")
        return DelayedSubmission(StageJob(self.instance, self.workspace, self.attempts, self.requeue_limit,
                                          self.stop_timeout_s, self.clone))  # fmt: skip

    def _on_signal(self, signum: int, frame) -> None:
        self._stop(f"{signal.Signals(signum).name} (scancel, scontrol requeue or a preemption)", TERM_STOP_S)

    def _stop(self, reason: str, timeout_s: float | None = None) -> None:
        self._stop_reason = self._stop_reason or reason
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        log.warning("%s: stopping: %s", self.instance, reason)
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # dvc and the stage: the run saves its resume state and exits
        except ProcessLookupError:
            pass
        # Not proc.wait(): this runs in a signal handler that may have interrupted proc.wait(), whose lock it holds
        began = time.monotonic()
        self._reap(min(self.stop_timeout_s, timeout_s or self.stop_timeout_s))
        log.info("%s: every process of the run ended %.1f s after the stop", self.instance, time.monotonic() - began)

    def _reap(self, timeout_s: float) -> None:
        """Wait for every descendant (re-parented here) to end; after ``timeout_s`` kill what is left."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                return
            kids = _children()
            if not kids:
                return
            if time.monotonic() > deadline:
                log.warning("%s: killing processes still running after %.0f s: %s", self.instance, timeout_s, kids)
                for pid in kids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 5
            time.sleep(0.1)
