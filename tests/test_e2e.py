"""End to end on a tiny profile, in temporary copies of the repository: a full `dvc repro` (then nothing to
do, an audit, a per-dataset re-run), and `kill -9` of `dvc repro` mid-training followed by a resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .tiny import tiny_params, write_params

ROOT = Path(__file__).resolve().parents[1]
SKIP = {
    ".git",
    ".venv",
    ".dvc/cache",
    ".dvc/tmp",
    "results",
    "data",
    "models",
    ".resume",
    "dvc.lock",
    ".rehearsal",
    ".pytest_cache",
    ".ruff_cache",
}


def _env(cwd: Path) -> dict:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(cwd / ".dvc-site"),
    }


def sh(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, env=_env(cwd), capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def source_copy(repo: Path) -> Path:
    """The repository's files (tracked and new, not ignored) without results, reports and dvc.lock, with a tiny
    profile training one variant for 40 epochs: a run long enough to interrupt."""
    listed = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(listed, cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, files.stdout.split("\0")):
        if (ROOT / name).is_file() and not name.startswith(("results/", "reports/")) and name != "dvc.lock":
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    params = tiny_params(pretrain={"epochs": 40, "variants": ["linear"]}, finetune={"variants": ["linear"]})
    write_params(repo / "params.yaml", params)
    return repo


def run_audit(stage: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.review.audit", stage], cwd=cwd, capture_output=True, text=True, env=_env(cwd)
    )


@pytest.mark.e2e
def test_dvc_repro_then_nothing_to_do(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(
        ROOT,
        repo,
        ignore=lambda d, names: [
            n for n in names if str((Path(d) / n).relative_to(ROOT)) in SKIP or n == "__pycache__"
        ],
    )
    params = tiny_params()
    write_params(repo / "params.yaml", params)
    sh("git", "init", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny", cwd=repo)
    dvc = str(Path(sys.executable).parent / "dvc")

    first = sh(dvc, "repro", cwd=repo)
    for stage in (
        "flops",
        "bench",
        "prepare@synthetic",
        "prepare@digits",
        "pretrain@n12-linear-0",
        "pretrain@n12-fsne-0",
        "finetune@n12-linear-digits-0",
        "finetune@n12-fsne-digits-0",
        "plan",
    ):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((repo / "results/flops/metrics.json").read_text())
    assert set(metrics["models"]["qkv_xcit_nano_12_p16"]["10"]) == set(params["flops"]["variants"])
    assert json.loads((repo / "results/prepare/synthetic.json").read_text())["synthetic"] is True
    assert (repo / "data/prepared/digits/data.safetensors").is_file()
    assert (repo / "dvc.lock").is_file()
    assert "Running stage 'report'" in first and (repo / "reports/index.html").is_file()
    assert "SYNTHETIC" in (repo / "reports/tables/main.csv").read_text()

    second = sh(dvc, "repro", cwd=repo)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second
    shown = json.dumps(json.loads(sh(dvc, "metrics", "show", "--json", cwd=repo)))
    assert "reports/headline.json" in shown and "results/pretrain/n12-linear-0/metrics.json" in shown
    assert "provenance" not in shown and "record.json" not in shown and "results/flops" not in shown

    # Audit one instance of the commit: identical to what it records; a tampered committed result is caught, and
    # the working tree is never what is judged.
    commit = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm"]
    audit = run_audit("prepare@synthetic", repo)
    assert audit.returncode == 1 and "no dvc.lock committed at HEAD" in audit.stderr, audit.stdout + audit.stderr
    sh("git", "add", "-A", cwd=repo)
    sh(*commit, "results", cwd=repo)
    audit = run_audit("prepare@synthetic", repo)
    assert audit.returncode == 0 and "audit prepare@synthetic: identical" in audit.stdout, audit.stdout + audit.stderr
    metrics_file = repo / "results/prepare/synthetic.json"
    tampered = json.loads(metrics_file.read_text())
    tampered["counts"]["train"] += 1
    metrics_file.write_text(json.dumps(tampered))
    assert "audit prepare@synthetic: identical" in run_audit("prepare@synthetic", repo).stdout  # not committed
    sh(*commit, "tampered", "results/prepare/synthetic.json", cwd=repo)
    audit = run_audit("prepare@synthetic", repo)
    assert audit.returncode == 1 and "differs" in audit.stdout
    assert "results/prepare/synthetic.json: counts.train:" in audit.stdout
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "revert", "--no-edit", "HEAD", cwd=repo)  # restore

    # The README's audit on a fresh clone, no DVC remote: the fine-tuning run's upstream instances are reproduced
    # first in the scratch copy (said, with the plan's estimate), then it is judged against HEAD.
    fresh = repo.parent / "fresh"
    sh("git", "clone", "-q", str(repo), str(fresh), cwd=repo.parent)
    audit = run_audit("finetune@n12-linear-digits-0", fresh)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    said = audit.stdout.splitlines()
    assert said[0].startswith(
        "audit: finetune@n12-linear-digits-0 needs prepare@digits, prepare@synthetic, pretrain@n12-linear-0, in "
        "neither this clone's DVC cache nor a DVC remote: reproducing them first in the scratch copy (~"
    ), said
    assert said[1].startswith("audit finetune@n12-linear-digits-0: identical"), said

    # The bench stage is a measurement: its audit compares ratios, never hashes or absolute timings.
    bench = json.loads((repo / "results/bench/metrics.json").read_text())
    assert bench["measured"] is True and set(bench["models"]) == {"linear", "fsne"}
    audit = run_audit("bench", repo)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "audit bench: equal within tolerance (measurement: ratios within rel 10)" in audit.stdout
    assert "models.fsne.step_time_ratio:" in audit.stdout

    # Changing one transfer dataset's params re-runs that dataset's instance alone.
    params["datasets"]["digits"]["seed"] = 1
    write_params(repo / "params.yaml", params)
    third = sh(dvc, "repro", cwd=repo)
    ran = sorted(line.split("'")[1] for line in third.splitlines() if line.startswith("Running stage"))
    # The plan prices every dataset (its split fractions, sizes): it re-runs too, in seconds.
    assert ran == ["finetune@n12-fsne-digits-0", "finetune@n12-linear-digits-0", "plan", "prepare@digits", "report"]

    # A setting that cannot change a result changes nothing DVC tracks: no stage is stale.
    for key, value in (("threads", 2), ("checkpoint_every", 5), ("workers", 2), ("eval_batch_size", 7)):
        write_params(repo / "params.yaml", {**params, "runtime": {**params["runtime"], key: value}})
        assert stale(repo) == set(), f"runtime.{key} made stages stale"

    # Adding a transfer dataset adds its instances and touches no existing one.
    grown = {
        **params,
        "datasets": {**params["datasets"], "faces": dict(params["datasets"]["digits"], source="lfw_faces")},
    }
    grown["finetune"] = {**params["finetune"], "datasets": ["digits", "faces"]}
    write_params(repo / "params.yaml", grown)
    added = {"prepare@faces", "finetune@n12-linear-faces-0", "finetune@n12-fsne-faces-0", "plan", "report"}
    assert stale(repo) == added
    write_params(repo / "params.yaml", params)

    # A name pasted into a shell command cannot run anything, even one that closes dvc.yaml's single quotes:
    # `make repro` checks the params before DVC runs (nothing is touched), and under a plain `dvc repro` every
    # stage's first command line (`python -m pipeline.config params.yaml`) refuses it before DVC hands the
    # line that pastes it to a shell.
    hostile = f"x';touch {tmp_path / 'pwned'};'"
    bad = {**params, "variants": {**params["variants"], hostile: {"qkv_embed": "linear"}}}
    bad["pretrain"] = {**params["pretrain"], "variants": ["linear", "fsne", hostile]}
    write_params(repo / "params.yaml", bad)
    message = f"variants: {hostile!r} is not a valid name"
    check = subprocess.run(
        [sys.executable, "-m", "pipeline.profile", "--check", "params.yaml"], cwd=repo, capture_output=True, text=True
    )
    assert (
        check.returncode == 1
        and check.stderr.strip()
        == f"profile: error: {message}: use letters, digits and "
        "underscores, starting with a letter (it becomes part of DVC stage names, paths and commands)"
    )
    done = subprocess.run([dvc, "repro"], cwd=repo, env=_env(repo), capture_output=True, text=True)
    assert done.returncode != 0 and message in done.stdout + done.stderr
    assert not (tmp_path / "pwned").exists(), "the shell ran a command pasted in a name"
    write_params(repo / "params.yaml", params)
    sh(dvc, "repro", cwd=repo)  # DVC removed the outputs of the stage it tried; rebuilt
    assert stale(repo) == set()


def stale(repo: Path) -> set[str]:
    """The stage instances `dvc status` reports as changed."""
    dvc = str(Path(sys.executable).parent / "dvc")
    return set(json.loads(sh(dvc, "status", "--json", cwd=repo)))


@pytest.mark.e2e
def test_kill_during_dvc_repro_then_repro_gives_the_same_result(tmp_path):
    """kill -9 of `dvc repro` mid-training; the next `dvc repro` resumes from the checkpoint (outside DVC's
    outputs) and ends with the metrics and curves of an uninterrupted run."""
    repo = source_copy(tmp_path / "repo")
    sh("git", "init", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny", cwd=repo)
    dvc = str(Path(sys.executable).parent / "dvc")
    sh(dvc, "repro", "prepare@synthetic", cwd=repo)

    checkpoint = repo / ".resume/pretrain/n12-linear-0/checkpoint.pt"
    proc = subprocess.Popen(
        [dvc, "repro", "pretrain@n12-linear-0"],
        cwd=repo,
        env=_env(repo),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the training process it started
    assert proc.wait() == -signal.SIGKILL, "dvc repro finished before it could be killed"
    assert checkpoint.exists() and not (repo / "results/pretrain/n12-linear-0/metrics.json").exists()

    sh(dvc, "repro", "pretrain@n12-linear-0", cwd=repo)
    resumed = {n: (repo / "results/pretrain/n12-linear-0" / n).read_bytes() for n in ("metrics.json", "curves.csv")}
    sh(dvc, "repro", "--force", "pretrain@n12-linear-0", cwd=repo)  # uninterrupted, from scratch
    for name, content in resumed.items():
        assert (repo / "results/pretrain/n12-linear-0" / name).read_bytes() == content, name
