"""The signals that stop a training run cleanly, in one place, for every route they take to a rank.

A cluster or a user ends a job with one of :data:`NAMES`: SIGTERM (``kill``, ``scancel``, a time limit or a
preemption, systemd), SIGINT (Ctrl-C), SIGHUP (a closed terminal), SIGQUIT (Ctrl-\\), SIGUSR1 or SIGUSR2 (SLURM's
warning before a time limit, ``--signal=USR1@120``). Each reaches a rank by one of these routes, and each ends in
the same clean stop (finish the step, save the resume state, one line, exit 128 + the signal's number):

* to the rank itself: :class:`pipeline.training.signals.StopRequests` handles every one of them;
* through the launcher: torchrun's agent passes exactly these on to its ranks
  (:mod:`pipeline.training.launch` sets ``PET_SIGNALS_TO_HANDLE`` to them and refuses a value naming others);
* to every process of the job at once (``kill -- -PGID``, SLURM's signals under ``proctrack/cgroup``, systemd's
  ``KillMode=control-group``): the rank's DataLoader workers get the signal too. torch's own worker handler treats
  a SIGTERM not sent by its rank as a crash and re-raises it, and SIGINT ends a worker's loop, so the rank would
  see "DataLoader worker exited unexpectedly" and exit without saving. :func:`shield_worker`, every worker's
  ``worker_init_fn``, leaves the decision to the rank: the worker ignores these signals, except a SIGTERM from its
  own rank (the DataLoader ending a worker that did not exit in time), which ends it as torch's handler would.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

__all__ = ["NAMES", "WINDOW_ENV", "numbers", "shield_worker", "window_s"]

NAMES = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
# Set by a cluster job for its run: the seconds a stopped run has to save and end before the job kills it
# (cluster.stop_window_s, or 80 % of cluster.signal_delay_s if shorter)
WINDOW_ENV = "QKV_STOP_WINDOW_S"


def window_s(environ: dict | None = None) -> float | None:
    """The stop window this run was given (:data:`WINDOW_ENV`), or None outside a cluster job."""
    value = (os.environ if environ is None else environ).get(WINDOW_ENV, "")
    try:
        return float(value) if float(value) > 0 else None
    except ValueError:
        return None


def numbers() -> list[signal.Signals]:
    return [getattr(signal, name) for name in NAMES]


def shield_worker(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: block the stop signals in this worker and have one thread take them with
    ``sigwaitinfo``, which says who sent each: a SIGTERM from the worker's parent (its rank) ends the worker at once
    (exit 0, as torch's own handler does); anything else is dropped, for the rank (which got it too) to act on."""
    parent = multiprocessing.parent_process()
    rank = parent.pid if parent is not None else os.getppid()
    stops = set(numbers())
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # threads started from here on inherit the mask

    def take() -> None:
        while True:
            info = signal.sigwaitinfo(stops)
            if info.si_signo == signal.SIGTERM and info.si_pid == rank:
                os._exit(0)

    threading.Thread(target=take, name="stop-signals", daemon=True).start()
