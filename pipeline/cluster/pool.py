"""``make repro`` (``runtime.jobs``, or ``JOBS=N``): the DAG's stale instances run side by side on this machine, N at
a time (one at a time: a plain ``dvc repro``), each as
``dvc --wait-for-lock repro --single-item <instance>`` in this workspace — the per-instance commands the cluster
jobs run (:mod:`pipeline.cluster.commands`), with a pool of slots instead of a scheduler.

- An instance starts once every instance it reads has succeeded (the DAG of :mod:`pipeline.cluster.dag`); among
  the ready ones, the DAG's order. A failure stops new starts; the running ones finish; the exit status is 1.
- Each slot owns its share of the machine: on ``device: cuda`` the launcher's GPUs per process group
  (``CUDA_VISIBLE_DEVICES``: slot k of a 4-GPU workstation with a 1-GPU launcher sees GPU k); on a CPU,
  ``runtime.threads`` cores (slot k is bound to cores k*t ... k*t+t-1 of the ones this process may use, so
  slots never share a core: OpenMP threads spinning on a shared core slow both jobs far more than 2x).
- The measuring stages (``bench``, ``plan``) run alone: nothing else runs beside them, so their timings are the
  machine's, not the pool's.
- Ctrl-C, SIGTERM or SIGHUP: every running instance gets SIGINT, as a terminal's Ctrl-C reaches a plain ``dvc repro``
  (a training run stops at its next step and keeps its resume state); a second signal kills them.

DVC runs nothing twice: its project lock is held only while an instance is collected and its outputs recorded,
and ``dvc.lock`` records every instance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import config, scratch
from pipeline.cluster.dag import Instance, scan, selected
from pipeline.planning.costs import devices

__all__ = ["EXCLUSIVE", "Slot", "main", "run", "slots"]

EXCLUSIVE = ("bench", "plan")  # measurements: run with nothing beside them
POLL_S = 0.2


class PoolError(ValueError):
    """Slots that do not fit this machine."""


@dataclass(frozen=True)
class Slot:
    index: int
    env: dict[str, str]  # added to the environment of what runs in it
    cpus: tuple[int, ...] | None  # cores it is bound to (None: not bound)

    @property
    def label(self) -> str:
        if "CUDA_VISIBLE_DEVICES" in self.env:
            return f"GPU {self.env['CUDA_VISIBLE_DEVICES']}"
        return f"CPU {','.join(map(str, self.cpus))}" if self.cpus else "unbound"


def slots(params: config.Params, jobs: int, *, gpus: int | None = None, cpus: list[int] | None = None) -> list[Slot]:
    """``jobs`` slots for ``params``' profile on this machine (``gpus``: the GPUs torch sees; ``cpus``: the cores
    this process may run on, default its affinity)."""
    if jobs < 1:
        raise PoolError(f"JOBS={jobs}: expected a positive number of instances to run at once")
    if params.device == "cuda":
        per = devices(params.launcher, params.device).per_node
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        if jobs * per > gpus:
            raise PoolError(
                f"JOBS={jobs} x {per} GPU(s) per instance (launcher: {params.launcher!r}) is more than the {gpus} "
                "GPU(s) torch sees here; lower JOBS"
            )
        inherited = os.environ.get("CUDA_VISIBLE_DEVICES")  # the GPUs this process was given (a job's, a user's)
        ids = [g.strip() for g in inherited.split(",")] if inherited else [str(g) for g in range(gpus)]
        return [Slot(k, {"CUDA_VISIBLE_DEVICES": ",".join(ids[k * per : k * per + per])}, None) for k in range(jobs)]
    cores = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    threads = params.runtime.threads
    if jobs == 1:
        return [Slot(0, {}, None)]
    if threads <= 0:
        raise PoolError(
            f"JOBS={jobs} on a CPU needs runtime.threads set (it is {threads}: torch's default, every core, in each "
            f"of the {jobs} instances); set runtime.threads to {max(1, len(cores) // jobs)} in params.yaml"
        )
    if jobs * threads > len(cores):
        raise PoolError(
            f"JOBS={jobs} x runtime.threads {threads} is more than the {len(cores)} core(s) this process may use: "
            f"slots would share cores; lower JOBS to {max(1, len(cores) // threads)} or runtime.threads"
        )
    return [Slot(k, {}, tuple(cores[k * threads : (k + 1) * threads])) for k in range(jobs)]


@dataclass
class _Running:
    name: str
    slot: Slot
    popen: subprocess.Popen
    started: float
    signalled: int = 0  # signals passed on to it


def _start(root: Path, name: str, slot: Slot, force: bool) -> _Running:
    command = scratch.dvc_command("--wait-for-lock", "repro", "--single-item", *(["--force"] if force else []), name)
    cpus = slot.cpus

    def bind() -> None:  # in the child, before exec: everything it starts inherits the binding
        if cpus:
            os.sched_setaffinity(0, cpus)

    popen = subprocess.Popen(command, cwd=root, env={**scratch.env(), **slot.env}, start_new_session=True,
                             preexec_fn=bind)  # fmt: skip
    print(f"pool: started {name} on {slot.label if cpus or slot.env else 'the whole machine'}", flush=True)
    return _Running(name, slot, popen, time.monotonic())


def run(root: Path, params: config.Params, jobs: int, targets: list[str], *, force: bool = False) -> int:
    """Run the stale instances among ``targets`` and upstream of them (with ``force`` the ``targets`` themselves
    too) ``jobs`` at a time; 0 if all succeeded."""
    pool = slots(params, jobs)
    dag, stale = scan(root)
    chosen = selected(dag, targets)
    named = {n for n in chosen if not targets or n in targets or dag[n].stage in targets}
    todo = [n for n in chosen if n in stale or (force and n in named)]  # force: the named ones, not their upstream
    if not todo:
        print(f"pool: every selected instance ({len(chosen)}) is up to date; nothing to run")
        return 0
    print(f"pool: {len(todo)} instance(s), {len(pool)} at a time ({', '.join(s.label for s in pool)})", flush=True)
    signals = _Signals()
    done, failed, running = set(), [], {}
    began = time.monotonic()
    with signals:
        try:
            while todo or running:
                _reap(running, done, failed, signals.count)
                if signals.count:
                    _interrupt(running, signals.count)
                elif not failed:
                    _fill(root, dag, todo, done, running, pool, force)
                if failed or signals.count:
                    todo.clear()
                time.sleep(POLL_S)
        finally:  # an error of the pool itself: its instances are not left running unsupervised
            if running:
                _interrupt(running, 1)
                for r in running.values():
                    r.popen.wait()
    if signals.count:
        print(f"pool: stopped by a signal; {len(done)} instance(s) finished", file=sys.stderr)
        return 128 + signals.last
    if failed:
        print(f"pool: {', '.join(failed)} failed; what depends on it was not started (its log is above)",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"pool: {len(done)} instance(s) in {time.monotonic() - began:.0f} s")
    return 0


def _reap(running: dict, done: set, failed: list, signalled: int) -> None:
    """Collect the instances that have ended, saying how each did."""
    for r in [r for r in running.values() if r.popen.poll() is not None]:
        del running[r.name]
        took = time.monotonic() - r.started
        if r.popen.returncode == 0:
            done.add(r.name)
            print(f"pool: {r.name} done in {took:.0f} s", flush=True)
        else:
            failed.append(r.name)
            how = "stopped by the signal" if signalled else "failed"
            print(f"pool: {r.name} {how} (exit {r.popen.returncode}) after {took:.0f} s", flush=True)


def _fill(root: Path, dag: dict[str, Instance], todo: list[str], done: set, running: dict, pool, force) -> None:
    """Start the ready instances on free slots, in DAG order; a measuring stage only on an idle pool."""
    waiting = set(todo) | set(running)
    for name in list(todo):
        free = [s for s in pool if all(r.slot != s for r in running.values())]
        if not free:
            return
        if any(u in waiting for u in dag[name].upstream):
            continue
        exclusive = dag[name].stage in EXCLUSIVE
        if any(dag[r].stage in EXCLUSIVE for r in running):
            return
        if exclusive and running:
            return  # the first ready instance measures: nothing more starts until the pool is idle
        todo.remove(name)
        waiting.discard(name)
        slot = Slot(free[0].index, free[0].env, None) if exclusive else free[0]  # measures on the whole machine
        running[name] = _start(root, name, slot, force)
        if exclusive:
            return


def _interrupt(running: dict, count: int) -> None:
    """SIGINT to every running instance's process group (once per signal received); SIGKILL from the second."""
    for r in running.values():
        if r.signalled < count:
            r.signalled = count
            try:
                os.killpg(r.popen.pid, signal.SIGINT if count == 1 else signal.SIGKILL)
            except ProcessLookupError:
                pass


class _Signals:
    """Counts SIGINT / SIGTERM while the pool runs (the handlers are restored afterwards)."""

    def __init__(self):
        self.count, self.last, self._old = 0, 0, {}

    def _handle(self, signum, frame) -> None:
        self.count += 1
        self.last = signum

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal or ssh session closed
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from pipeline import cli
    from pipeline.cluster.dag import DagError

    parser = argparse.ArgumentParser(prog="python -m pipeline.cluster.pool", description=cli.describe(__doc__))
    parser.add_argument("targets", nargs="*", help="stage instances or stages (default: the whole DAG)")
    parser.add_argument("--jobs", type=int, help="instances at once (default: runtime.jobs of the params file)")
    parser.add_argument("--force", action="store_true", help="run the selected instances even if up to date")
    parser.add_argument("--params", default="params.yaml", help="the params file (device, launcher, runtime.threads)")
    args = parser.parse_args(argv)
    from dvc.exceptions import DvcException  # not before --help: a second of imports

    root = Path.cwd()
    try:
        params = config.load(root / args.params)
        jobs = params.runtime.jobs if args.jobs is None else args.jobs
        if jobs == 1 and not args.targets and not args.force:  # one at a time: this process becomes a plain dvc repro
            command = scratch.dvc_command("repro")  # (Ctrl-C, SIGTERM and the exit status are dvc's own)
            os.execve(command[0], command, scratch.env())
        return run(root, params, jobs, args.targets, force=args.force)
    except (config.ParamsError, DagError, PoolError) as exc:
        raise SystemExit(f"pool: error: {exc}") from None
    except DvcException as exc:  # the project lock held too long by another dvc, a broken dvc.yaml
        raise SystemExit(f"pool: error: dvc: {exc}") from None
    except OSError as exc:  # dvc not next to this interpreter, or not runnable
        raise SystemExit(f"pool: error: cannot run {exc.filename or 'dvc'}: {exc.strerror}; run make venv") from None


if __name__ == "__main__":
    sys.exit(main())
