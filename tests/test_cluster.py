"""pipeline.cluster with submitit's LocalExecutor, for real: a training job stopped by its time-limit signal is
requeued and resumes to the uninterrupted result, the requeue limit fails clearly, the no-shared-filesystem path
goes through a local-directory DVC remote and its run-cache; and the bad input of the cluster section and of the
command line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dvc.lock import make_lock

from pipeline import config, procfs
from pipeline.cluster import process_tree
from pipeline.cluster.commands import cancel, check_fit
from pipeline.cluster.status import Record

from .cluster_repo import (
    FINETUNE,
    PRETRAIN,
    RUN,
    cluster,
    dvc,
    edit_params,
    epochs_this_start,
    job_process,
    outputs,
    stale,
    starts,
    submit_in_background,
    timing,
    wait_for,
    workspace,
)
from .load import cpu_load
from .test_e2e import _env
from .tiny import tiny_params

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- the params section
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"executor": "pbs"}, "cluster.executor"),
        ({"training": {"nodes": 2}}, "cluster.training.nodes: 2: a job runs on one node"),
        ({"other": {"gpus_per_node": 1}}, "cluster.other.gpus_per_node: the CPU stages use no GPU"),
        ({"signal_delay_s": 3600}, "cluster.signal_delay_s: 3600 s is not less than a job's time limit"),
        ({"requeue_limit": -1}, "cluster.requeue_limit: expected 0 or more"),
        ({"training": {"time_min": 0}}, "cluster.training.time_min: expected a positive number of minutes"),
        ({"workspace": "nfs"}, "cluster.workspace"),
        ({"log_folder": " "}, "cluster.log_folder: expected a folder"),
    ],
)
def test_the_cluster_section_is_checked(change, message):
    params = tiny_params()
    for key, value in change.items():
        params["cluster"][key] = {**params["cluster"][key], **value} if isinstance(value, dict) else value
    with pytest.raises(config.ParamsError, match=message.replace("(", r"\(")):
        config.from_data(params, "params.yaml")


def _paper(launcher: str | None = None, **training) -> config.Params:
    data = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    data["cluster"]["training"].update(training)
    data["launcher"] = launcher or data["launcher"]
    return config.from_data(data, "profiles/paper.yaml")


def test_every_profile_fits_its_jobs():
    for name in ("embedded", "cifar", "paper"):
        check_fit(config.load(ROOT / "profiles" / f"{name}.yaml"))


@pytest.mark.parametrize(
    ("training", "launcher", "message"),
    [
        ({"gpus_per_node": 4}, None, "cluster.training.gpus_per_node: 4, but the launcher"),
        ({"gpus_per_node": 0}, None, "cluster.training.gpus_per_node: 0, but device is cuda"),
        (
            {"gpus_per_node": 3},
            "python -m pipeline.training.launch --nproc-per-node 3",
            "pretrain.recipe.batch_size: 1024",
        ),
    ],
)
def test_a_gpu_count_the_profile_cannot_use_is_refused(training, launcher, message):
    with pytest.raises(SystemExit, match=message):
        check_fit(_paper(launcher, **training))


def test_more_threads_than_the_job_has_cores_is_refused():
    params = tiny_params()
    params["runtime"]["threads"] = 2
    params["cluster"]["training"]["cpus_per_node"] = 1
    with pytest.raises(SystemExit, match=r"runtime.threads: 2 torch threads x 1 process\(es\) need 2 cores, but "):
        check_fit(config.from_data(params, "params.yaml"))


# ----------------------------------------------------------------------------------------- the command line
def _no_record(repo: Path) -> None:
    assert not (repo / "logs").exists(), "nothing may be written on bad input"


def _one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cluster: error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_slurm_executor_without_sbatch_is_refused(tmp_path):
    repo = workspace(tmp_path, executor="slurm")
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # the venv only: no sbatch, whatever is installed
    done = cluster(repo, "submit", env=env)
    _one_line_error(done, "cluster.executor is slurm but sbatch is not on PATH", "cluster.executor: local")
    _no_record(repo)


@pytest.mark.parametrize("command", ["status", "cancel"])
def test_status_and_cancel_of_slurm_jobs_without_squeue_are_one_line(tmp_path, command):
    repo = workspace(tmp_path, executor="slurm")
    Record(repo / "logs/cluster", "slurm", {PRETRAIN: "10"}).write()
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # the venv only: no squeue, whatever is installed
    done = cluster(repo, command, env=env)
    _one_line_error(done, "jobs of the slurm executor are recorded (jobs 10) but squeue cannot run here (",
                    "run this on a SLURM login node")  # fmt: skip


def test_an_unknown_stage_is_refused(tmp_path):
    repo = workspace(tmp_path)
    done = cluster(repo, "submit", "pretrain@n12-nosuch-0")
    _one_line_error(done, "'pretrain@n12-nosuch-0' is not a stage or stage instance of dvc.yaml")
    _no_record(repo)
    _one_line_error(cluster(repo, "cancel", "flops"), "cancel takes no targets")


def test_a_second_submit_while_the_first_jobs_run_is_refused_and_cancel_kills_a_job_that_ignores_sigterm(
    tmp_path, capsys
):
    repo = workspace(tmp_path)
    # a live job of an earlier submit: a process whose command line is submitit's, recorded for prepare@synthetic,
    # that ignores SIGTERM and SIGINT and has a child
    stubborn = (
        "import signal, subprocess, sys, time\n"
        "for s in (signal.SIGTERM, signal.SIGINT): signal.signal(s, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print('ready', flush=True); time.sleep(120)\n"
    )
    job = subprocess.Popen([sys.executable, "-c", stubborn, "submitit"], stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline() == "ready\n"
        folder = repo / "logs/cluster"
        folder.mkdir(parents=True)
        record = f'{{"executor": "local", "jobs": {{"prepare@synthetic": "{job.pid}"}}}}\n'
        (folder / "jobs.json").write_text(record)
        done = cluster(repo, "submit", PRETRAIN)
        _one_line_error(done, f"prepare@synthetic (job {job.pid})", "nothing submitted")
        assert (folder / "jobs.json").read_text() == record
        assert sorted(p.name for p in folder.iterdir()) == ["jobs.json"]
        shown = cluster(repo, "status", PRETRAIN)
        assert shown.returncode == 0, shown.stderr
        assert f"prepare@synthetic      running        {job.pid}" in shown.stdout, shown.stdout
        assert "pretrain@n12-linear-0  not submitted" in shown.stdout, shown.stdout

        assert cancel(repo, config.load(repo / "params.yaml"), grace_s=1.0) == 0
        said = capsys.readouterr().out
        expected = (
            f"cancelled prepare@synthetic: job {job.pid} (still running 1 s after SIGTERM: killed (SIGKILL) with "
        )
        assert said == expected + "2 process(es))\n", said
        assert job.wait(timeout=10) == -signal.SIGKILL
        assert re.search(rf"prepare@synthetic +cancelled +{job.pid} +cluster cancel", cluster(repo, "status").stdout)
    finally:
        job.kill()
        job.wait()
        job.stdout.close()


# ------------------------------------------------------------------------------------ the local executor, for real
def _warn(job: str) -> None:
    """SLURM's warning before a time limit, or a preemption notice, as SLURM and submitit's LocalExecutor send it:
    SIGUSR2 to the job's task."""
    os.kill(wait_for(lambda: job_process(job, "submitit.core._submit"), "the job's task"), signal.SIGUSR2)


@pytest.mark.e2e
def test_a_training_job_stopped_in_any_phase_is_requeued_and_resumes_exactly_under_load(tmp_path):
    """SLURM's warning before the time limit (SIGUSR2, as submitit's LocalExecutor also sends it) in three phases of
    a start, on a busy machine: dvc waiting for the repo lock (it is interrupted: nothing has run), the stage
    starting up (before its first epoch), the stage training (it saves at a step). Every stop ends with every process
    reaped and no lock of its dvc left, so the next start, a second later, meets none (the landed job met its
    predecessor's zombie dvc here). With requeue_limit 2 the third stop fails the job, saying so; submitted again it
    resumes and ends byte-identical to a run never stopped."""
    # submitit counts a warning as a time-out when the job has run past min(0.8 x, x - 10 min) of its time limit x:
    # always, with 10 minutes; the test's own warnings come long before the LocalExecutor's at 10 min - 60 s
    repo = workspace(tmp_path, epochs=100, executor="local", requeue_limit=2, signal_delay_s=60,
                     training={"time_min": 10}, other={"time_min": 10})  # fmt: skip
    dvc(repo, "repro", "prepare@synthetic")
    with cpu_load(2), submit_in_background(repo, PRETRAIN) as (submit, job):  # it has read the DAG under DVC's lock
        log = repo / f"logs/cluster/{job}_0_log.err"
        # DVC's repo lock, taken before the job's dvc can (it starts ~2 s after the submit's line): its dvc waits
        with make_lock(str(repo / ".dvc/tmp/lock"), tmp_dir=str(repo / ".dvc/tmp")):
            waiting = wait_for(lambda: job_process(job, "dvc"), "the job's dvc")
            time.sleep(1.0)
            assert not process_tree.descendants(waiting), "dvc ran a stage while the repo lock was held"
            _warn(job)  # 1: dvc waiting for the lock
            wait_for(lambda: starts(repo, job) == 2, "the second start")
        assert re.search(r"ended and was reaped [0-4]\.\d s after the stop", log.read_text()), log.read_text()[-2000:]

        wait_for(lambda: job_process(job, "pipeline.stages.pretrain"), "the stage's process")
        assert epochs_this_start(log) == 0
        _warn(job)  # 2: the stage starting up
        wait_for(lambda: starts(repo, job) == 3, "the third start")

        wait_for(lambda: epochs_this_start(log) >= 1, "an epoch of the third start")
        _warn(job)  # 3: the stage training; one warning more than requeue_limit 2 allows
        _, err = submit.communicate(timeout=180)
    assert submit.returncode == 1 and "stopped by its time limit more times than cluster.requeue_limit (2)" in err
    assert (repo / ".resume/pretrain/n12-linear-0/checkpoint.pt").is_file()
    text = log.read_text()
    assert re.search(r"stopped by SIGTERM at epoch \d+ step \d+; resume state saved", text), text[-3000:]
    shown = cluster(repo, "status", PRETRAIN).stdout
    assert "pretrain@n12-linear-0  failed" in shown and "requeue_limit (2)" in shown, shown

    edit_params(repo, requeue_limit=3)
    done = cluster(repo, "submit", PRETRAIN)
    assert done.returncode == 0, done.stderr
    again = done.stdout.split("job ")[1].split()[0]
    text += (repo / f"logs/cluster/{again}_0_log.err").read_text()
    assert text.count("every process of the run ended and was reaped") == 3, text[-3000:]
    assert "resumed from epoch" in text
    for trace in ("had been killed. Auto removed", "is busy", "DVC lock record"):  # every dvc released its own locks
        assert trace not in text, text[-3000:]
    assert timing(repo)["resumed_from_epoch"] > 0
    assert PRETRAIN not in stale(repo)
    assert "pretrain@n12-linear-0  up to date" in cluster(repo, "status", PRETRAIN).stdout

    stopped = outputs(repo)
    dvc(repo, "repro", "--force", "--single-item", PRETRAIN)  # never stopped
    assert timing(repo)["resumed_from_epoch"] == 0
    assert outputs(repo) == stopped


@pytest.mark.e2e
def test_cancel_stops_a_local_job_started_with_sigint_ignored(tmp_path):
    """A job submitted from a shell that ignores SIGINT (nohup, a background shell; its controller and task ignore
    it too): cancel stops it anyway, cleanly (SIGTERM: the run saves its resume state), says so, and leaves no
    process of it behind."""
    repo = workspace(tmp_path, epochs=2000, executor="local")
    dvc(repo, "repro", "prepare@synthetic")
    with submit_in_background(repo, PRETRAIN, ignore_sigint=True) as (submit, job):
        log = repo / f"logs/cluster/{job}_0_log.err"
        wait_for(lambda: epochs_this_start(log) >= 1, "an epoch")
        ignored = int(Path(f"/proc/{job}/status").read_text().split("SigIgn:")[1].split()[0], 16)
        assert ignored & (1 << (signal.SIGINT - 1)), "the controller should ignore SIGINT, as under nohup"
        below = [int(job), *process_tree.descendants(int(job))]
        cancelled = cluster(repo, "cancel")
        expected = rf"cancelled {PRETRAIN}: job {job} \(SIGTERM: ended \d+\.\d s later; a training run keeps its "
        assert re.fullmatch(expected + r"resume state\)\n", cancelled.stdout), cancelled.stdout + cancelled.stderr
        _, err = submit.communicate(timeout=60)
    assert submit.returncode == 1 and f"job {job} ({PRETRAIN}) failed: {PRETRAIN}: stopped by SIGTERM" in err, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not [p for p in below if procfs.stat(p) is not None], "a process of the cancelled job is left"
    assert re.search(r"stopped by SIGTERM at epoch \d+ step \d+; resume state saved", log.read_text())
    job_log = log.read_text() + log.with_suffix(".out").read_text()  # submitit logs the job's JobFailed with its trace
    assert "KeyboardInterrupt" not in job_log and job_log.count("Traceback") == 1, job_log[-3000:]
    assert (repo / ".resume/pretrain/n12-linear-0/checkpoint.pt").is_file()
    assert re.search(rf"pretrain@n12-linear-0 +cancelled +{job} +cluster cancel", cluster(repo, "status").stdout)


@pytest.mark.e2e
def test_without_a_shared_filesystem_results_come_through_the_remote_and_run_cache(tmp_path):
    """workspace: clone: each job clones the commit on its node, restores its upstream from the remote's run-cache,
    runs, pushes; the workspace gets every result with `dvc repro --pull` without running a stage, and a reviewer's
    fresh clone audits the fine-tuning run from the same remote without re-running its pretraining."""
    remote = tmp_path / "remote"
    repo = workspace(tmp_path, executor="local", workspace="clone")
    dvc(repo, "remote", "add", "-d", "store", str(remote))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam"]
    subprocess.run([*git, "remote"], cwd=repo, check=True)
    node = tmp_path / "node"  # the compute node's scratch ($TMPDIR), where each job clones the commit
    node.mkdir()
    done = cluster(repo, "submit", FINETUNE, env={**_env(repo), "TMPDIR": str(node)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("submitted ") == 4, done.stdout  # prepare x2, pretrain, finetune
    logs = "".join(p.read_text() for p in (repo / "logs/cluster").glob("*_0_log.out"))
    assert logs.count("Running stage") == 4, "a job ran an upstream stage instead of restoring it"
    assert not (repo / RUN).exists() and (remote / "runs").is_dir()
    assert not list(node.iterdir()), "a finished job removes its clone"

    dvc(repo, "fetch", "--run-cache")  # the runs' records; their outputs come with the repro
    pulled = dvc(repo, "repro", "--pull", FINETUNE)
    assert "Running stage" not in pulled, pulled
    assert pulled.count("is cached - skipping run") == 4, pulled
    assert not stale(repo).keys() & {FINETUNE, PRETRAIN, "prepare@synthetic", "prepare@digits"}
    assert timing(repo)["train_images"] > 0
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "results"], cwd=repo, check=True)

    fresh = tmp_path / "reviewer"
    subprocess.run(["git", "clone", "-q", str(repo), str(fresh)], check=True)
    dvc(fresh, "pull", "--with-deps", FINETUNE)  # its inputs (prepared data, pretrained weights) and outputs
    audited = subprocess.run([sys.executable, "-m", "pipeline.review.audit", FINETUNE], cwd=fresh, env=_env(fresh),
                             capture_output=True, text=True)  # fmt: skip
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "identical" in audited.stdout, audited.stdout


def test_a_job_that_has_not_started_its_run_shows_no_epochs_of_the_previous_run(tmp_path):
    """A job the scheduler already calls RUNNING but whose run has not counted its start yet must not show the
    epochs of the curves a previous run left (a cancel timed by them hit the job 0.1 s after its start)."""
    from pipeline.cluster.dag import Instance
    from pipeline.cluster.status import Record, _state

    curves = tmp_path / "results/pretrain/n12-linear-0/curves.csv"
    curves.parent.mkdir(parents=True)
    curves.write_text("epoch,val_top1\n" + "".join(f"{e},50.0\n" for e in range(1, 601)))  # a finished run's
    inst = Instance(PRETRAIN, "pretrain", (), "results/pretrain/n12-linear-0/curves.csv")
    record = Record(tmp_path / "logs", "slurm", {PRETRAIN: "10"})
    assert _state(tmp_path, inst, True, record, "10", ("RUNNING", "")) == ("running", "")
    (record.folder / "attempts").mkdir(parents=True)
    (record.folder / "attempts" / "10").write_text("1")  # its run started ...
    os.utime(curves)  # ... and wrote its first epochs after that
    assert _state(tmp_path, inst, True, record, "10", ("RUNNING", "")) == ("running", "epoch 600 done")
