"""Stopping a training run cleanly, whatever ends it.

Every signal of :data:`pipeline.stop_signals.NAMES` (SIGTERM: SLURM's preemption and time limit, ``kill``, systemd,
torchrun passing on its own; SIGINT: Ctrl-C; SIGHUP; SIGQUIT; SIGUSR1 and SIGUSR2: SLURM's warning before a time
limit), by whichever route it comes (to this process, through the launcher, to the whole process group or job:
:mod:`pipeline.stop_signals`), only sets a flag here. The training loop reads it before every step; every rank takes
the largest of the ranks' requests (:func:`pipeline.training.distributed.largest`), so all stop at the same step,
write a resume checkpoint and exit with one line and status 128 + the signal's number.

A run started by ``dvc repro`` also stops when that dvc process ends: ``kill -TERM`` of dvc ends dvc alone, and
its command, re-parented, would otherwise run on and write its outputs behind DVC's back (and meet the next
``dvc repro`` in its resume folder). :class:`StopRequests` records, at the start, the processes between this
one and its dvc (walking /proc's parent links: DVC runs a stage's command through ``$SHELL -c``, which execs
it, or through ``pipeline.training.launch``, which runs torchrun's agent in its own process) and checks about once a
second that they all still live; a torchrun worker outside DVC watches its agent the same way. The watch needs Linux's
/proc; elsewhere only signals stop a run.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from pipeline import procfs, stop_signals

__all__ = ["ANCESTOR_ENDED", "StopRequests", "Stopped", "watched_ancestors"]

ANCESTOR_ENDED = 129  # the stop code (and exit status) when a watched ancestor ended: 128 + SIGHUP, a hang-up
POLL_SECONDS = 1.0  # how often the watched ancestors are looked up


class Stopped(Exception):
    """Raised on every rank once the resume state of a stopped run is saved: ``line`` says where, ``status`` is
    the exit status."""

    def __init__(self, line: str, status: int):
        super().__init__(line)
        self.line, self.status = line, status


def _name(argv: list[str]) -> str:
    """What a process is, for the stop message: dvc, torchrun, or its program's name."""
    head = [Path(a).name for a in argv[:3]]
    if "dvc" in head:  # `dvc ...`, `python .../bin/dvc ...`, `python -m dvc ...`
        return "dvc"
    if {"torchrun", "torch.distributed.run", "pipeline.training.launch"} & set(head):
        return "torchrun"
    return head[0] if head else "its parent"


def watched_ancestors(environ: dict | None = None) -> list[tuple[int, int, str]]:
    """``(pid, start time, name)`` of the processes whose end stops this run: under DVC (``DVC_STAGE`` set)
    every ancestor up to and including the dvc process (its parent if no ancestor is dvc); under torchrun alone
    (``TORCHELASTIC_RUN_ID``) the agent, its parent; otherwise none (a run started by hand or under nohup goes on
    when its shell ends)."""
    environ = os.environ if environ is None else environ
    if "DVC_STAGE" not in environ and "TORCHELASTIC_RUN_ID" not in environ:
        return []
    chain, pid = [], os.getppid()
    while pid > 1:
        stat = procfs.stat(pid)
        if stat is None:
            break
        name = _name(procfs.argv(pid))
        chain.append((pid, stat[2], name))
        if name == "dvc" or "DVC_STAGE" not in environ:
            return chain
        pid = stat[1]
    return chain[:1]


class StopRequests:
    """The stop requests of this process, from the moment it is entered (``with``) until it is left, when the
    previous signal handlers come back: every stop signal (:data:`pipeline.stop_signals.NAMES`) sets a flag, and the
    end of a watched ancestor (:func:`watched_ancestors`) counts as one.

    ``linger``: once the run has stopped (:meth:`stopped`), leaving ignores the stop signals instead of restoring the
    previous handlers, for a process that exits right after. A torchrun worker is one: the agent sends SIGTERM to
    the ranks still running when the first one exits, and a rank that has saved but not yet exited would otherwise
    die of it (-15), which makes its clean stop look like a crash."""

    def __init__(self, *, ancestors: list[tuple[int, int, str]] | None = None, linger: bool = False):
        self.signals = stop_signals.numbers()
        self.linger, self._done = linger, False
        self.ancestors = watched_ancestors() if ancestors is None else ancestors
        self.received = 0  # the first stop signal's number
        self.ended: tuple[int, int, str] | None = None  # the watched ancestor that ended
        self._next_poll = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            if self.linger and self._done:
                handler = signal.SIG_IGN
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.received = self.received or signum  # a repeated signal changes nothing (SLURM and torchrun may both send)

    def code(self) -> int:
        """0 to go on; else the signal's number, or :data:`ANCESTOR_ENDED`."""
        if self.received:
            return self.received
        if self.ended is None and self.ancestors and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + POLL_SECONDS
            self.ended = next((a for a in self.ancestors if not procfs.alive(a[0], a[1])), None)
        return ANCESTOR_ENDED if self.ended is not None else 0

    def stopped(self, code: int, *, where: str, folder: Path) -> Stopped:
        """The exception that ends the run after its resume state at ``where`` is in ``folder``: the stop this
        process saw, or else the largest ``code`` of the ranks."""
        self._done = True
        code = self.code() or code
        if code == ANCESTOR_ENDED:
            pid, _, name = self.ended or (None, None, "the process that started it")
            cause = f"because {name}{f' (PID {pid})' if pid else ''} ended"
            status = ANCESTOR_ENDED
        else:
            cause, status = f"by {signal.Signals(code).name}", 128 + code
        return Stopped(f"stopped {cause} at {where}; resume state saved to {folder}; run dvc repro to continue", status)
