"""pipeline.cluster on a real one-node SLURM cluster (Debian's munge, slurmctld, slurmd and slurm-client, started by
the test without systemd: tests/slurm_cluster.py): a tiny profile's whole DAG runs as sbatch jobs chained by
afterok dependencies and ends with dvc.lock complete and `dvc status` clean; a running training job gets SLURM's
warning before a time limit (SIGUSR2: stopped cleanly, requeued by submitit), then `scontrol requeue` (SIGTERM:
the same stop, SLURM starts it again), and resumes to the result of a run never stopped; cancel; bad input.

Skipped, saying how to run it, where SLURM is not installed (.ci/run installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .cluster_repo import PRETRAIN, cluster, dvc, edit_params, outputs, stale, timing, workspace
from .slurm_cluster import available, one_node_cluster
from .test_e2e import _env
from .tiny import ROOT, write_params

REASON = available()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
CPU_JOB = {"cpus_per_node": 1, "mem_gb": 1, "time_min": 30}
TRAIN_JOB = {**CPU_JOB, "cpus_per_node": 2}  # the node's two CPUs: a step bound to one would show


def _status(repo: Path, env: dict, *targets: str) -> str:
    done = cluster(repo, "status", *targets, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _wait(repo: Path, env: dict, done, *targets: str, timeout: float = 600) -> str:
    """Poll `status` every second until ``done(text)``; the last status text."""
    deadline = time.monotonic() + timeout
    while True:
        text = _status(repo, env, *targets)
        if done(text):
            return text
        assert time.monotonic() < deadline, f"timed out waiting; last status:\n{text}"
        time.sleep(1)


def _settled(text: str) -> bool:
    return not any(f"  {s} " in text for s in ("queued", "running", "requeued", "completing"))


def _epoch(low: int, high: int = 600):
    return lambda text: any(f"epoch {n} done" in text for n in range(low, high + 1))


def _set_epochs(repo: Path, epochs: int) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"]["recipe"]["epochs"] = epochs  # re-runs the pretraining only
    write_params(repo / "params.yaml", params)


def _submit(repo: Path, env: dict, *targets: str) -> tuple[str, str]:
    done = cluster(repo, "submit", *targets, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stdout.split("job ")[1].split()[0]


def _whole_dag(repo: Path, env: dict) -> None:
    """Every instance as a job, upstream first; a second submit meanwhile is refused; dvc.lock complete after."""
    instances = set(stale(repo))
    started = time.monotonic()
    out, _ = _submit(repo, env)
    assert out.count("submitted ") == len(instances) == 8 and "(after " in out, out  # afterok dependencies
    again = cluster(repo, "submit", env=env)  # while the first jobs are queued or running
    assert again.returncode == 1 and "still queued or running from an earlier submit" in again.stderr, again
    assert "nothing submitted" in again.stderr
    print(f"\nwhile it runs:\n{_status(repo, env)}")
    final = _wait(repo, env, _settled)
    print(f"\nthe tiny DAG as SLURM jobs, {time.monotonic() - started:.0f} s:\n{final}")
    assert final.strip().splitlines()[-1] == f"{len(instances)} up to date", final
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == instances
    assert stale(repo) == {}
    # CPU binding (task/affinity, exact steps): the training job's step, and the training in it, got both CPUs
    record = json.loads((repo / "results/pretrain/n12-linear-0/provenance.json").read_text())
    assert record["hardware"]["cpu_affinity"] == TRAIN_JOB["cpus_per_node"], record["hardware"]
    logs = "".join(p.read_text() for p in (repo / "logs/cluster").glob("*_0_log.err"))
    assert f"{PRETRAIN}: this job step may run on 2 CPU(s) (asked for 2)" in logs, logs[-3000:]


def _stopped_twice_then_exact(repo: Path, env: dict, slurm) -> None:
    """SLURM's warning (USR2: submitit's checkpoint hook stops the run, submitit requeues), then scontrol requeue
    (SIGTERM: the same stop, SLURM requeues); the result equals a run never stopped."""
    _set_epochs(repo, 600)
    out, job = _submit(repo, env, PRETRAIN)
    assert out.count("submitted ") == 1, out
    running = _wait(repo, env, _epoch(30), PRETRAIN)
    print(f"before SLURM's warning (scancel --signal=USR2, as before a time limit or a preemption):\n{running}")
    slurm.run("scancel", "--signal=USR2", job)
    again = _wait(repo, env, lambda t: "requeued" in t and _epoch(1)(t), PRETRAIN, timeout=300)
    print(f"requeued by submitit and running again:\n{again}")
    slurm.run("scontrol", "requeue", job)
    final = _wait(repo, env, lambda t: _settled(t) and "epoch" not in t, PRETRAIN, timeout=300)
    print(f"after scontrol requeue:\n{final}")
    assert "pretrain@n12-linear-0  up to date" in final, final
    log = (repo / f"logs/cluster/{job}_0_log.err").read_text()
    assert "Caught signal SIGUSR2" in log and "stopping: SIGTERM" in log, log[-3000:]
    assert log.count("resumed from epoch") == 2, log[-3000:]
    assert log.count("every process of the run ended and was reaped") == 2, log[-3000:]
    for trace in ("had been killed. Auto removed", "is busy", "DVC lock record"):  # each dvc released its own locks
        assert trace not in log, log[-3000:]
    assert int((repo / f"logs/cluster/attempts/{job}").read_text()) == 3
    resumed = timing(repo)["resumed_from_epoch"]
    assert resumed >= 30
    requeued = outputs(repo)
    dvc(repo, "repro", "--force", "--single-item", PRETRAIN)  # never stopped
    assert timing(repo)["resumed_from_epoch"] == 0
    assert outputs(repo) == requeued
    print(f"resumed last from epoch {resumed} of 600; metrics and curves byte-identical to the uninterrupted run")
    assert not [p for p in os.listdir(repo / ".resume/pretrain") if os.listdir(repo / ".resume/pretrain" / p)]


def _cancelled(repo: Path, env: dict) -> None:
    """cancel: the running job ends (SIGTERM: a clean stop), its resume state stays for the next submit."""
    _set_epochs(repo, 601)
    _, job = _submit(repo, env, PRETRAIN)
    _wait(repo, env, _epoch(5, 601), PRETRAIN)
    cancelled = cluster(repo, "cancel", env=env)
    expected = f"cancelled {PRETRAIN}: job {job} (scancel: SLURM sends SIGTERM, the run saves its resume state; "
    assert cancelled.stdout == expected + "SIGKILL after KillWait)\n", cancelled.stdout + cancelled.stderr
    final = _wait(repo, env, _settled, PRETRAIN, timeout=120)
    assert re.search(rf"pretrain@n12-linear-0 +cancelled +{job} +scancel", final), final
    assert (repo / ".resume/pretrain/n12-linear-0/checkpoint.pt").is_file()
    assert cluster(repo, "cancel", env=env).stdout.startswith("cluster: no job of ours is queued or running")


def _docs_script(cpus: int) -> str:
    """docs/cluster.md's own sbatch script, with a CPU job's numbers and this workspace's instance."""
    text = (ROOT / "docs/cluster.md").read_text().split("## Your own sbatch script", 1)[1]
    script = text.split("```sh\n", 1)[1].split("```", 1)[0]
    for old, new in {"--cpus-per-task=16 --gpus-per-node=1 --time=24:00:00": f"--cpus-per-task={cpus} --time=30",
                     "pretrain@s12-sne-0": PRETRAIN}.items():  # fmt: skip
        assert old in script, f"docs/cluster.md's sbatch script changed: {script}"
        script = script.replace(old, new)
    return script


def _by_hand(repo: Path, env: dict, slurm) -> None:
    """The docs' own sbatch script: SLURM's warning to the job step (--signal=USR1@... without B:) and to the
    batch shell (with B:) each stop the training cleanly with its resume state saved; the next sbatch resumes."""
    _set_epochs(repo, 602)
    shutil.rmtree(repo / ".resume/pretrain/n12-linear-0")  # the cancelled run's, of another configuration
    (repo / "job.sh").write_text(_docs_script(TRAIN_JOB["cpus_per_node"]))
    resume = repo / ".resume/pretrain/n12-linear-0/checkpoint.pt"
    for run, how in enumerate((["--signal=USR1"], ["--batch", "--signal=USR1"])):
        log = repo / f"by-hand-{run}.log"
        sbatch = ["sbatch", "--parsable", f"--output={log}", "job.sh"]
        job = subprocess.run(sbatch, cwd=repo, env=env, capture_output=True, text=True, check=True).stdout.strip()
        deadline = time.monotonic() + 300
        while not (log.exists() and re.search(r"epoch (\d\d+)/602", log.read_text())):
            ended = slurm.squeue([job]).get(job, ("?",))[0] not in ("PENDING", "RUNNING", "CONFIGURING")
            assert not ended and time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            time.sleep(0.5)
        slurm.run("scancel", *how, job)
        while slurm.squeue([job]).get(job, ("?",))[0] in ("PENDING", "RUNNING", "COMPLETING"):
            assert time.monotonic() < deadline, slurm.squeue([job])
            time.sleep(0.5)
        text = log.read_text()
        print(f"by hand, scancel {' '.join(how)}:\n" + "\n".join(text.splitlines()[-3:]))
        assert f"{PRETRAIN}: stopped by SIGUSR1 at epoch " in text and "Traceback" not in text, text[-3000:]
        assert resume.is_file() and ("resumed from epoch" in text) == (run == 1), text[-3000:]
    (repo / "job.sh").unlink()


def test_the_dag_runs_as_slurm_jobs_and_a_requeued_training_job_resumes_exactly(tmp_path):
    with one_node_cluster(tmp_path / "slurm") as slurm:
        repo = workspace(tmp_path, executor="slurm", partition="nosuch", training=TRAIN_JOB, other=CPU_JOB)
        local = _env(repo)
        env = {**slurm.env, **{k: local[k] for k in ("PATH", "DVC_NO_ANALYTICS", "DVC_SITE_CACHE_DIR")}}
        wrong = cluster(repo, "submit", env=env)
        assert wrong.returncode == 1 and "cluster.partition: 'nosuch' is not a partition" in wrong.stderr, wrong
        assert not (repo / "logs").exists()
        edit_params(repo, partition=slurm.partition, stop_window_s=26)  # KillWait 30: no 5 s to spare
        late = cluster(repo, "submit", env=env)
        assert late.returncode == 1 and "cluster.stop_window_s: 26 s does not fit in this cluster's KillWait (30 s" in (
            late.stderr
        ), late
        edit_params(repo, stop_window_s=20)

        _whole_dag(repo, env)
        _stopped_twice_then_exact(repo, env, slurm)
        _cancelled(repo, env)
        _by_hand(repo, env, slurm)

        # a GPU job on this GPU-less node: sbatch refuses it, the one-line error says so, nothing is recorded
        edit_params(repo, training={"gpus_per_node": 1})
        record = (repo / "logs/cluster/jobs.json").read_text()
        refused = cluster(repo, "submit", PRETRAIN, env=env)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "submitting pretrain@n12-linear-0 failed: sbatch: error: Invalid generic resource" in refused.stderr
        assert (repo / "logs/cluster/jobs.json").read_text() == record
