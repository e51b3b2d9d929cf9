"""The processes of one cluster job's run: a command (dvc) started in its own session as this process's child, and
everything it starts. Linux only (``/proc``, ``prctl``), as the cluster jobs are.

This process makes itself the *child subreaper* of its descendants, so a process whose parent ends is re-parented
here instead of to init, and "the run has ended" has one exact meaning: this process has no child left, not even a
zombie (``waitpid`` fails with ECHILD). Every exit status is collected here by one non-blocking ``waitpid(-1)``
loop, so nothing of a run is left for init to reap. That matters to DVC: a process that has exited but is not yet
reaped (a zombie) still has its PID, and DVC's rwlock (``psutil.pid_exists``) counts it as holding the outputs it
locked. PID 1 reaps the zombies handed to it when it gets to them (about every 2 s, measured on these machines), so
a job that ended with unreaped children let its requeued start, 0.3 s later, meet its own predecessor's lock.

Stopping (:meth:`Run.stop`) signals the run's top processes only, never the command itself and never the processes
further down:

* SIGTERM to the command's children (the stage; ``$SHELL -c`` execs it) and to any orphan re-parented here. The
  stage saves its resume state and exits; dvc sees its stage fail, releases its locks and exits. A DataLoader
  worker is never signalled: torch's workers treat a SIGTERM not sent by their parent as a crash, and their rank
  then exits without saving. A child that appears after the stop (dvc started its stage late) is signalled too.
* SIGINT to the command only while it has never had a child (dvc still collecting or waiting for the repo lock):
  DVC unwinds on KeyboardInterrupt and releases its locks. Once a stage has run, dvc is left alone: after its last
  command it is writing ``dvc.lock`` for a finished run.
* After ``timeout_s``: SIGKILL to every process of the run, the command included; their locks are left for
  :mod:`pipeline.cluster.dvc_locks` to release.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import procfs

__all__ = ["Ended", "Run", "Stopped", "become_subreaper", "descendants", "terminate"]

PR_SET_CHILD_SUBREAPER = 36  # prctl option (linux/prctl.h)
KILL_WAIT_S = 10.0  # after SIGKILL: how long the kernel may take to end the processes (uninterruptible I/O)
POLL_S = 0.05  # while stopping
WATCH_S = 0.2  # while the command runs


def become_subreaper() -> None:
    """Orphaned descendants of this process are re-parented to it (Linux >= 3.4)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def descendants(root: int, table: dict[int, procfs.Stat] | None = None) -> list[int]:
    """PIDs of the processes below ``root`` (children, theirs, ...), zombies included."""
    table = procfs.processes() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _children(pid: int) -> list[int]:
    """Children of ``pid`` (every thread's, zombies included) from /proc/PID/task/TID/children; a scan of /proc on
    a kernel without that file."""
    try:
        tasks = [t.path for t in os.scandir(f"/proc/{pid}/task")]
    except OSError:  # pid has ended
        return []
    kids = []
    for task in tasks:
        try:
            kids += [int(c) for c in Path(task, "children").read_text().split()]
        except FileNotFoundError:
            if Path(task).exists():  # the kernel lacks the file (CONFIG_PROC_CHILDREN)
                return procfs.children(pid)
        except OSError:  # the thread ended while read
            continue
    return kids


def _child_dispositions() -> None:
    """Runs in the child before exec: what reaches dvc and its stage is decided here, not inherited from whoever
    started this job (a shell under nohup ignores SIGINT, and so would its children)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # SLURM's warning may reach every process of the job: ours to act on
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # the job blocks its stop signals while it starts us


@dataclass
class Stopped:
    """What :meth:`Run.stop` did."""

    seconds: float
    signalled: int  # processes sent SIGTERM or SIGINT
    killed: list[int]  # PIDs sent SIGKILL after the timeout
    left: list[int]  # PIDs still there KILL_WAIT_S after SIGKILL (uninterruptible): they may still hold locks


class Run:
    """``command`` run in ``cwd`` as this process's child in a new session, with everything it starts."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str]):
        # Popen's own wait is never used: the statuses are collected by collect(); poll() only settles its state
        self._popen = subprocess.Popen(
            command, cwd=cwd, env=env, start_new_session=True, preexec_fn=_child_dispositions
        )
        self.pid = self._popen.pid
        self.command = command
        self.status: int | None = None  # the command's exit code (-N: killed by signal N), once reaped
        self.started = (procfs.stat(self.pid) or ("", 0, 0))[2]  # its start time (clock ticks after boot)
        self._had_child = False
        self._deadline = float("inf")  # of the stop in progress
        self._stopping = 0  # stops in progress (a signal handler's stop may interrupt another)

    def collect(self) -> bool:
        """Reap every child that has exited; True once no child is left (everything of the run has ended and been
        reaped)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._popen.poll()  # sees ECHILD: marks the Popen ended (no ResourceWarning at exit)
                return True
            if pid == 0:
                return False
            if pid == self.pid:
                self.status = os.waitstatus_to_exitcode(status)

    def wait(self) -> int:
        """Until the command has exited; its exit code. Signal handlers may stop the run meanwhile."""
        while self.status is None:  # collected with the rest: the command is a child of this process
            self._had_child = self._had_child or bool(_children(self.pid))
            time.sleep(WATCH_S)
            self.collect()
        return self.status

    def tighten(self, timeout_s: float) -> None:
        """A stop in progress must end within ``timeout_s`` from now (a scheduler's SIGTERM during the warning's
        stop: its SIGKILL follows)."""
        self._deadline = min(self._deadline, time.monotonic() + timeout_s)

    def stop(self, timeout_s: float) -> Stopped:
        """Stop the run (see the module's docstring) and return once every process of it has ended and been reaped,
        or was killed and is still ending KILL_WAIT_S later."""
        began = time.monotonic()
        if self._stopping:
            self.tighten(timeout_s)
        else:
            self._deadline = began + timeout_s
        self._stopping += 1
        try:
            return self._stop(began)
        finally:
            self._stopping -= 1

    def _stop(self, began: float) -> Stopped:
        signalled: set[tuple[int, int]] = set()  # (pid, start time): a PID may be reused
        while not self.collect():
            table = procfs.processes()
            if time.monotonic() > self._deadline:
                return self._kill(began, len(signalled))
            mine, below = procfs.children(os.getpid(), table), procfs.children(self.pid, table)
            self._had_child = self._had_child or bool(below)
            for pid in [p for p in mine if p != self.pid] + below:
                self._signal(pid, signal.SIGTERM, table, signalled)
            if self.pid in mine and not self._had_child:
                self._signal(self.pid, signal.SIGINT, table, signalled)
            time.sleep(POLL_S)
        return Stopped(time.monotonic() - began, len(signalled), [], [])

    @staticmethod
    def _signal(pid: int, signum: int, table: dict, signalled: set) -> None:
        key = (pid, table[pid][2])
        if key not in signalled:
            signalled.add(key)
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _kill(self, began: float, signalled: int) -> Stopped:
        table = procfs.processes()
        killed = [p for p in descendants(os.getpid(), table) if table[p][0] not in "ZX"]
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        end = time.monotonic() + KILL_WAIT_S
        while not self.collect() and time.monotonic() < end:
            time.sleep(POLL_S)
        left = [] if self.collect() else descendants(os.getpid())
        return Stopped(time.monotonic() - began, signalled, killed, left)


@dataclass
class Ended:
    """How :func:`terminate` ended one process."""

    seconds: float  # after SIGTERM
    killed: int  # 0: it ended after SIGTERM; else how many processes (it and those below it) got SIGKILL


def terminate(pids: list[int], grace_s: float) -> dict[int, Ended]:
    """SIGTERM to each of ``pids`` (not children of this process), then, for those still running ``grace_s`` later,
    SIGKILL to them and every process below them. Returns once each has ended (a zombie has) or been killed."""
    began = time.monotonic()
    table = procfs.processes()
    started = {pid: table[pid][2] for pid in pids if pid in table}
    out = {pid: Ended(0.0, 0) for pid in pids if pid not in started}
    for pid in started:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    while True:
        for pid in [p for p in started if p not in out and not procfs.alive(p, started[p])]:
            out[pid] = Ended(time.monotonic() - began, 0)
        if len(out) == len(pids) or time.monotonic() - began > grace_s:
            break
        time.sleep(POLL_S)
    table = procfs.processes()
    doomed: list[tuple[int, int]] = []
    for pid in [p for p in started if p not in out]:
        tree = [p for p in (pid, *descendants(pid, table)) if table.get(p, ("Z",))[0] not in "ZX"]
        for each in tree:
            try:
                os.kill(each, signal.SIGKILL)
            except ProcessLookupError:
                pass
        doomed += [(each, table[each][2]) for each in tree]
        out[pid] = Ended(time.monotonic() - began, len(tree))
    end = time.monotonic() + KILL_WAIT_S
    while any(procfs.alive(*d) for d in doomed) and time.monotonic() < end:
        time.sleep(POLL_S)
    return out
