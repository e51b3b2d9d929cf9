"""pipeline.cluster with submitit's LocalExecutor, for real: a training job stopped by its time-limit signal is
requeued and resumes to the uninterrupted result, the requeue limit fails clearly, the no-shared-filesystem path
goes through a local-directory DVC remote and its run-cache; and the bad input of the cluster section and of the
command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import config
from pipeline.cluster import check_fit

from .cluster_repo import FINETUNE, PRETRAIN, RUN, cluster, dvc, edit_params, outputs, stale, timing, workspace
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
        ({"gpus_per_node": 3}, "python -m pipeline.launch --nproc-per-node 3", "pretrain.recipe.batch_size: 1024"),
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


def test_an_unknown_stage_is_refused(tmp_path):
    repo = workspace(tmp_path)
    done = cluster(repo, "submit", "pretrain@n12-nosuch-0")
    _one_line_error(done, "'pretrain@n12-nosuch-0' is not a stage or stage instance of dvc.yaml")
    _no_record(repo)
    _one_line_error(cluster(repo, "cancel", "flops"), "cancel takes no targets")


def test_a_second_submit_while_the_first_jobs_run_is_refused(tmp_path):
    repo = workspace(tmp_path)
    # a live job of an earlier submit: a process whose command line is submitit's, recorded for prepare@synthetic
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "submitit"])
    try:
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
        cancelled = cluster(repo, "cancel")
        assert f"cancelled prepare@synthetic: job {job.pid}" in cancelled.stdout, cancelled.stderr
        assert job.wait(timeout=10) != 0
    finally:
        job.kill()


# ------------------------------------------------------------------------------------ the local executor, for real
@pytest.mark.e2e
def test_a_timed_out_training_job_is_requeued_and_resumes_exactly(tmp_path):
    """submitit's LocalExecutor sends SIGUSR2 signal_delay_s before the job's time limit: the run stops at a step
    and saves its resume state; with requeue_limit 0 the job then fails, saying so; submitted again with a
    higher limit it resumes, is stopped and requeued once more, and ends byte-identical to a run never stopped."""
    # 700 epochs of the tiny model take about a minute here: more than two 20-s windows of a 30-s job
    repo = workspace(tmp_path, epochs=700, executor="local", requeue_limit=0, signal_delay_s=10,
                     training={"time_min": 0.5}, other={"time_min": 0.5})  # fmt: skip
    dvc(repo, "repro", "prepare@synthetic")

    done = cluster(repo, "submit", PRETRAIN)
    _one_line_error(done, "stopped by its time limit more times than cluster.requeue_limit (0) allows")
    assert (repo / ".resume/pretrain/n12-linear-0/checkpoint.pt").is_file()
    shown = cluster(repo, "status", PRETRAIN).stdout
    assert "pretrain@n12-linear-0  failed" in shown and "requeue_limit (0)" in shown, shown

    edit_params(repo, requeue_limit=3)
    done = cluster(repo, "submit", PRETRAIN)
    assert done.returncode == 0, done.stderr
    job = done.stdout.split("job ")[1].split()[0]
    log = (repo / f"logs/cluster/{job}_0_log.err").read_text()
    assert "resumed from epoch" in log and "Requeued job" in log, log[-3000:]
    assert int((repo / f"logs/cluster/attempts/{job}").read_text()) >= 2
    assert timing(repo)["resumed_from_epoch"] > 0
    assert PRETRAIN not in stale(repo)
    assert "pretrain@n12-linear-0  up to date" in cluster(repo, "status", PRETRAIN).stdout

    stopped = outputs(repo)
    dvc(repo, "repro", "--force", "--single-item", PRETRAIN)  # never stopped
    assert timing(repo)["resumed_from_epoch"] == 0
    assert outputs(repo) == stopped


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
    audited = subprocess.run([sys.executable, "-m", "pipeline.audit", FINETUNE], cwd=fresh, env=_env(fresh),
                             capture_output=True, text=True)  # fmt: skip
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "identical" in audited.stdout, audited.stdout
