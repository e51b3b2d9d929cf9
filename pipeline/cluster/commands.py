"""Run the DAG's stage instances as cluster jobs through submitit, one job per instance that is not up to date.

    python -m pipeline.cluster submit [INSTANCE_OR_STAGE ...]   # make cluster PROFILE=paper
    python -m pipeline.cluster status [INSTANCE_OR_STAGE ...]
    python -m pipeline.cluster cancel

``submit`` reads the DAG and what is stale from DVC (:mod:`pipeline.cluster.dag`), checks that the profile fits the
jobs (the launcher's processes per node = ``cluster.training.gpus_per_node``, every batch divisible by them),
and submits, upstream first, one submitit job per stale instance (and per stale instance downstream of one):
``dvc --wait-for-lock repro --single-item <instance>`` in this workspace (:mod:`pipeline.cluster.job`).
With the ``slurm`` executor every job is an sbatch job that starts after its upstream jobs succeed
(``--dependency=afterok:...``; a failure cancels what depends on it); with the ``local`` executor (submitit's
LocalExecutor) the jobs run on this machine one after another while ``submit`` waits. DVC runs nothing twice:
the jobs share the workspace, DVC's lock is released while a stage's command runs, and an instance finished by
another job is up to date. Instances whose last job is still queued or running are not submitted again: the
command says which and exits 1. Settings: the ``cluster`` section of params.yaml (listed by no training stage).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline import cli, config, scratch
from pipeline.cluster import process_tree
from pipeline.cluster.dag import DagError, Instance, scan, selected
from pipeline.cluster.job import Clone, JobFailed, StageJob, release_runs
from pipeline.cluster.status import Record, live_jobs, reason, result, rows, table
from pipeline.planning.costs import devices

__all__ = ["check_fit", "main"]

STOP_TIMEOUT_S = 0.8  # of cluster.signal_delay_s: the time a stopped run has to save its state and end
# cancel (local executor): how long a job has to end after SIGTERM before it is killed: its own stop window
# (cluster.stop_window_s), the kill that may end it, and this margin
CANCEL_MARGIN_S = process_tree.KILL_WAIT_S + 5.0
KILL_WAIT_MARGIN_S = 5.0  # cluster.stop_window_s + this must fit in SLURM's KillWait


def fail(message: str) -> SystemExit:
    return SystemExit(f"cluster: error: {message}")


def check_fit(params: config.Params) -> None:
    """The profile's launcher and batches fit the training jobs' GPUs (one process per GPU), its threads their
    CPUs."""
    res = params.cluster.training
    nproc = devices(params.launcher, params.device).per_node
    if params.device == "cuda" and res.gpus_per_node == 0:
        raise fail("cluster.training.gpus_per_node: 0, but device is cuda: the training jobs need GPUs; set it")
    if res.gpus_per_node and res.gpus_per_node != nproc:
        raise fail(
            f"cluster.training.gpus_per_node: {res.gpus_per_node}, but the launcher ({params.launcher!r}) starts "
            f"{nproc} process(es) per node, one per GPU; make them equal"
        )
    threads = params.runtime.threads
    if threads and threads * nproc > res.cpus_per_node:
        raise fail(
            f"runtime.threads: {threads} torch threads x {nproc} process(es) need {threads * nproc} cores, but "
            f"cluster.training.cpus_per_node is {res.cpus_per_node}: oversubscribed cores run many times slower "
            "(measured here: 14 instead of 200 images/s); raise cpus_per_node or lower runtime.threads"
        )
    for section in ("pretrain", "finetune"):
        batch = getattr(params, section).recipe.batch_size
        if batch % nproc:
            raise fail(
                f"{section}.recipe.batch_size: {batch} images do not divide over the job's {nproc} processes "
                f"(cluster.training.gpus_per_node {res.gpus_per_node}); use a multiple of {nproc}"
            )


def check_scheduler(params: config.Params) -> None:
    cfg = params.cluster
    if cfg.executor != "slurm":
        return
    for tool in ("sbatch", "squeue", "scancel", "srun", "sinfo", "scontrol"):
        if shutil.which(tool) is None:
            raise fail(
                f"cluster.executor is slurm but {tool} is not on PATH: run this on a SLURM login node, or set "
                "cluster.executor: local to run the jobs on this machine"
            )
    kill_wait = _kill_wait()
    if kill_wait is not None and cfg.stop_window_s + KILL_WAIT_MARGIN_S > kill_wait:
        raise fail(
            f"cluster.stop_window_s: {cfg.stop_window_s:g} s does not fit in this cluster's KillWait ({kill_wait} s, "
            f"scontrol show config) with {KILL_WAIT_MARGIN_S:g} s to spare: SLURM would kill a stopping run before "
            f"it saved; lower stop_window_s to {kill_wait - KILL_WAIT_MARGIN_S:g} or less (a resume checkpoint must "
            "be written within it: the training warns when it is not)"
        )
    if cfg.partition:
        done = subprocess.run(["sinfo", "-h", "-p", cfg.partition, "-o", "%P"], capture_output=True, text=True)
        if done.returncode != 0 or not done.stdout.strip():
            raise fail(f"cluster.partition: {cfg.partition!r} is not a partition of this cluster (sinfo -s lists them)")


def _kill_wait() -> int | None:
    """SLURM's KillWait in seconds (``scontrol show config``), or None if it cannot be read."""
    done = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        key, _, value = line.partition("=")
        if key.strip() == "KillWait" and value.split() and value.split()[0].isdigit():
            return int(value.split()[0])
    return None


def _executor(params: config.Params, inst: Instance, folder: Path, after: list[str]):
    import submitit

    cfg = params.cluster
    res = cfg.training if inst.training else cfg.other
    if cfg.executor == "local":
        ex = submitit.LocalExecutor(folder, max_num_timeout=cfg.requeue_limit)
        ex.update_parameters(
            timeout_min=res.time_min, signal_delay_s=cfg.signal_delay_s, gpus_per_node=res.gpus_per_node
        )
        return ex
    ex = submitit.SlurmExecutor(folder, max_num_timeout=cfg.requeue_limit)
    extra = {"requeue": True}
    if after:
        extra.update(dependency="afterok:" + ":".join(after), kill_on_invalid_dep="yes")
    # The job step (submitit's srun) asks for the job's CPUs itself: from Slurm 22.05 to 23.02 srun does not inherit
    # --cpus-per-task, and where steps get what they ask for and tasks are bound (task/affinity, cgroup), a step
    # without it is pinned to one CPU: dvc, torchrun, every rank and loader worker on one core.
    ex.update_parameters(
        job_name=inst.name, nodes=1, ntasks_per_node=1, cpus_per_task=res.cpus_per_node, mem=f"{res.mem_gb}G",
        time=max(1, round(res.time_min)), signal_delay_s=cfg.signal_delay_s, partition=cfg.partition,
        account=cfg.account, gpus_per_node=res.gpus_per_node or None, additional_parameters=extra,
        srun_args=[f"--cpus-per-task={res.cpus_per_node}"],
    )  # fmt: skip
    return ex


def _clone(root: Path, params: config.Params) -> Clone | None:
    if params.cluster.workspace == "shared":
        return None
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True)  # noqa: E731
    if git("status", "--porcelain", "--untracked-files=no").stdout.strip():
        raise fail("cluster.workspace is clone and the workspace has uncommitted changes: the jobs clone HEAD; commit")
    remote = subprocess.run(scratch.dvc_command("remote", "default"), cwd=root, capture_output=True, text=True)
    if not remote.stdout.strip():
        raise fail("cluster.workspace is clone but DVC has no default remote (dvc remote add -d <name> <url>, commit)")
    origin = git("remote", "get-url", "origin").stdout.strip()
    source = origin or str(root)
    return Clone(source, git("rev-parse", "HEAD").stdout.strip())


def submit(root: Path, params: config.Params, targets: list[str]) -> int:
    check_fit(params)
    check_scheduler(params)
    cfg = params.cluster
    dag, stale = scan(root)
    chosen = selected(dag, targets)
    todo = [n for n in chosen if n in stale]
    folder = root / cfg.log_folder
    record = Record.read(folder, cfg.executor)
    if record.jobs and record.executor != cfg.executor:
        raise fail(f"{folder}: jobs of the {record.executor} executor are recorded; finish or cancel them first")
    busy = live_jobs(record, todo)
    if busy:
        names = ", ".join(f"{i} (job {j})" for i, j in busy.items())
        raise fail(f"still queued or running from an earlier submit, not submitted again: {names}; wait for them "
                   "(python -m pipeline.cluster status) or cancel them first; nothing submitted")  # fmt: skip
    if not todo:
        print(f"cluster: every selected instance ({len(chosen)}) is up to date; nothing submitted")
        return 0
    clone = _clone(root, params)
    stop_s = STOP_TIMEOUT_S * cfg.signal_delay_s
    submitted: dict[str, str] = {}
    for name in todo:
        inst = dag[name]
        after = [submitted[u] for u in inst.upstream if u in submitted]
        cpus = (cfg.training if inst.training else cfg.other).cpus_per_node
        job_fn = StageJob(name, str(root), str(folder / "attempts"), cfg.requeue_limit, stop_s, clone, cpus,
                          cfg.stop_window_s)  # fmt: skip
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's error, then raises it
                job = _executor(params, inst, folder, after).submit(job_fn)
        except Exception as exc:  # sbatch's refusal (an unknown partition or account, a GPU request, ...)
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            said = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else exc)
            done = f"; the {len(submitted)} submitted before it are in {folder}/jobs.json" if submitted else ""
            raise fail(f"submitting {name} failed: {said}{done}") from None
        submitted[name] = record.jobs[name] = str(job.job_id)
        record.write()
        print(f"submitted {name}: job {job.job_id}" + (f" (after {', '.join(after)})" if after else ""), flush=True)
        if cfg.executor == "local":  # no scheduler to hold the dependents: run this one to its end first
            job.wait()
            outcome = result(folder, str(job.job_id))
            if outcome is None or outcome[0] != "success":
                why = reason(outcome[1]) if outcome else "it ended without a result (killed?)"
                raise fail(f"job {job.job_id} ({name}) failed: {why}; the rest not submitted "
                           f"(log: {folder}/{job.job_id}_0_log.err)")  # fmt: skip
            print(f"  {outcome[1]}", flush=True)
    print(f"cluster: {len(todo)} job(s) submitted; watch them with `python -m pipeline.cluster status`")
    return 0


def status(root: Path, params: config.Params, targets: list[str]) -> int:
    dag, stale = scan(root)
    chosen = set(selected(dag, targets))
    record = Record.read(root / params.cluster.log_folder, params.cluster.executor)
    shown = {n: i for n, i in dag.items() if n in chosen}
    sys.stdout.write(table(rows(root, shown, stale, record)))
    return 0


def cancel(root: Path, params: config.Params, grace_s: float | None = None) -> int:
    """Cancel every queued or running job of ours, and say how each ended.

    SLURM: ``scancel`` (SLURM sends SIGTERM, the job stops its run cleanly, SIGKILL follows after its KillWait).
    Local executor: SIGTERM to the job's controller, which passes it to its task: the job stops its run, keeping the
    resume state, as on scancel. Not SIGINT first: on SIGINT submitit's controller kills its task with SIGKILL a
    second later, before the run can save (and a controller started from a shell that ignores SIGINT, as under
    nohup, ignores it). A job still running ``grace_s`` later is killed with everything below it (SIGKILL), and the
    lock records its dvc left are released."""
    record = Record.read(root / params.cluster.log_folder, params.cluster.executor)
    grace_s = params.cluster.stop_window_s + CANCEL_MARGIN_S if grace_s is None else grace_s
    live = live_jobs(record, list(record.jobs))
    if not live:
        print("cluster: no job of ours is queued or running; nothing cancelled")
        return 0
    ids = sorted(set(live.values()))
    if record.executor == "slurm":
        done = subprocess.run(["scancel", *ids], capture_output=True, text=True)
        if done.returncode != 0:
            raise fail(f"scancel {' '.join(ids)} failed: {done.stderr.strip()}")
        how = {j: "scancel: SLURM sends SIGTERM, the run saves its resume state; SIGKILL after KillWait" for j in ids}
    else:
        ended = process_tree.terminate([int(j) for j in ids], grace_s)
        how = {}
        for job in ids:
            (record.folder / "attempts").mkdir(parents=True, exist_ok=True)
            (record.folder / "attempts" / f"{job}.cancelled").touch()  # status shows it as cancelled
            end = ended[int(job)]
            if end.killed:
                inst = next(i for i, j in live.items() if j == job)
                release_runs(record.folder / "attempts", job, inst)
                how[job] = (
                    f"still running {grace_s:.0f} s after SIGTERM: killed (SIGKILL) with {end.killed} process(es)"
                )
            else:
                how[job] = f"SIGTERM: ended {end.seconds:.1f} s later; a training run keeps its resume state"
    for inst, job in live.items():
        print(f"cancelled {inst}: job {job} ({how[job]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cluster", description=cli.describe(__doc__))
    parser.add_argument(
        "command",
        choices=("submit", "status", "cancel"),
        help="submit the instances that are not up to date; show every instance's state and job; cancel every "
        "queued or running job",
    )
    parser.add_argument("targets", nargs="*", help="stage instances or stages (default: the whole DAG)")
    parser.add_argument("--params", default="params.yaml", help="the params file (its cluster section)")
    args = parser.parse_args(argv)
    root = Path.cwd()
    try:
        params = config.load(root / args.params)
        if args.command == "submit":
            return submit(root, params, args.targets)
        if args.command == "status":
            return status(root, params, args.targets)
        if args.targets:
            raise fail("cancel takes no targets: it cancels every queued or running job of the last submits")
        return cancel(root, params)
    except (config.ParamsError, DagError, JobFailed) as exc:
        raise fail(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
