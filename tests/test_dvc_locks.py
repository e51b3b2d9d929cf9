"""pipeline.cluster.dvc_locks: the lock records of one ended dvc process are removed, every other record is kept, and
DVC reads the file afterwards; nothing is touched when the process holds none. And a job's start removing what its
killed predecessors left (pipeline.cluster.job.release_runs)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

from pipeline import procfs
from pipeline.cluster import dvc_locks
from pipeline.cluster.job import release_runs

DVC = str(Path(sys.executable).parent / "dvc")
KILLED = {"pid": 4242, "cmd": "/venv/bin/dvc --wait-for-lock repro --single-item pretrain@n12-linear-0"}
OTHER = {"pid": 4343, "cmd": "/venv/bin/dvc --wait-for-lock repro --single-item pretrain@n12-sne-0"}


def _repo(tmp_path: Path, records: dict) -> Path:
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".dvc/tmp").mkdir(exist_ok=True)
    (tmp_path / ".dvc/tmp/rwlock").write_text(json.dumps(records))
    return tmp_path


def test_release_removes_the_records_of_one_process_only(tmp_path):
    data, model, other = (str(tmp_path / p) for p in ("data/prepared/mnist5k", "models/n12-linear-0", "models/x"))
    repo = _repo(tmp_path, {"write": {model: KILLED, other: OTHER}, "read": {data: [KILLED, OTHER]}})
    assert dvc_locks.held(repo, **KILLED) == sorted([data, model])
    assert dvc_locks.release(repo, KILLED["pid"], KILLED["cmd"] + " x") == []  # another command with that PID
    assert dvc_locks.release(repo, **KILLED) == sorted([data, model])
    after = json.loads((repo / ".dvc/tmp/rwlock").read_text())
    assert after == {"write": {other: OTHER}, "read": {data: [OTHER]}}
    assert dvc_locks.held(repo, **KILLED) == [] and dvc_locks.release(repo, **KILLED) == []
    status = subprocess.run([DVC, "status"], cwd=repo, capture_output=True, text=True)
    assert status.returncode == 0, status.stderr


def test_no_lock_file_no_records(tmp_path):
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    assert dvc_locks.release(tmp_path, **KILLED) == []


def test_a_start_releases_what_its_killed_predecessors_left_but_not_a_live_ones(tmp_path, caplog):
    """A job's earlier starts, recorded in <attempts>/<job>.runs.json: one on another node (ended: the job runs
    here now), one here whose process is gone; one here still running (a live process): its records stay."""
    repo = tmp_path / "repo"
    repo.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs = [
            {"host": "node-7", "pid": 4242, "started": 1, "cmd": KILLED["cmd"], "workdir": str(repo)},
            {"host": socket.gethostname(), "pid": 999_999_999, "started": 1, "cmd": "dvc b", "workdir": str(repo)},
            {
                "host": socket.gethostname(),
                "pid": live.pid,
                "started": procfs.stat(live.pid)[2],
                "cmd": "dvc c",
                "workdir": str(repo),
            },  # fmt: skip
        ]
        b, c = {"pid": 999_999_999, "cmd": "dvc b"}, {"pid": live.pid, "cmd": "dvc c"}
        records = {"write": {"a": KILLED, "b": b, "c": c}}
        _repo(repo, records)
        (tmp_path / "attempts").mkdir()
        (tmp_path / "attempts/17.runs.json").write_text(json.dumps(runs))
        with caplog.at_level(logging.WARNING, logger="pipeline.cluster"):
            release_runs(tmp_path / "attempts", "17", "pretrain@n12-linear-0", repo)
        assert json.loads((repo / ".dvc/tmp/rwlock").read_text())["write"] == {"c": c}
        said = caplog.text
        assert "released 1 DVC lock record(s) the dvc of job 17 (PID 4242 on node-7) left: a" in said, said
        assert f"(PID {live.pid}) is still running; DVC will say its outputs are busy" in said, said
    finally:
        live.kill()
        live.wait()
