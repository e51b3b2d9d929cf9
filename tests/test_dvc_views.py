"""DVC's own views of the committed results show what a researcher compares, not provenance: ``dvc exp show``
has a few hundred metric and param columns, ``dvc metrics show`` lists no provenance or record file, ``dvc plots
show`` draws the curves, the FLOPs table and the bench timings and nothing (and no error) for the records
declared as plots, and a re-run whose results are identical (only its provenance new) shows no metric
difference. Read from the repository itself: what a clean clone, and CI, have."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))
LEAVES_AT_MOST = 400  # the bound for the embedded profile (#27)
DRAWN = ("curves.csv", "results/flops/table.csv", "results/bench/times.csv")  # the real plots


def _dvc(*args: str, cwd: Path = ROOT) -> dict | list:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([DVC, *args, "--json"], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _leaves(obj) -> int:
    return sum(_leaves(v) for v in obj.values()) if isinstance(obj, dict) else 1


def test_exp_show_has_a_few_hundred_columns():
    row = _dvc("exp", "show")[0]["data"]
    metrics, params = _leaves(row["metrics"]), _leaves(row["params"])
    assert metrics + params <= LEAVES_AT_MOST, f"{metrics} metric and {params} param columns"
    assert not [f for f in row["metrics"] if "provenance" in f or f.endswith("record.json")]


def test_metrics_show_lists_results_not_provenance():
    files = set(_dvc("metrics", "show")[""]["data"])
    assert "reports/headline.json" in files and "results/pretrain/n12-linear-0/metrics.json" in files
    assert not [f for f in files if "provenance" in f or f.endswith("record.json")], sorted(files)
    for path in files:  # each training run's metrics: numbers only, a handful
        data = json.loads((ROOT / path).read_text())
        if path.startswith(("results/pretrain/", "results/finetune/")):
            assert sorted(data) == ["test_loss", "test_top1", "val_top1_best"], path


def test_plots_show_draws_the_plots_and_nothing_for_the_records():
    shown = _dvc("plots", "show")
    assert not shown.get("errors"), shown.get("errors")
    drawn = {path for path, panes in shown["data"].items() if panes and panes[0]["content"]["data"]["values"]}
    assert drawn == {path for path in shown["data"] if path.endswith(DRAWN)}, sorted(drawn)
    for path in ("results/flops/table.csv", "results/bench/times.csv"):
        spec = shown["data"][path][0]["content"]
        assert spec["encoding"]["x"]["field"] != "step" and spec["encoding"]["y"]["field"] != "step", path


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_rerun_with_identical_results_shows_no_metric_difference(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    records = sorted(clone.glob("results/**/*provenance.json")) + sorted(clone.glob("results/**/record.json"))
    assert records
    for path in records:  # what a re-run rewrites even when its results are identical
        data = json.loads(path.read_text())
        data["wall_time_s"], data["host"] = 1.0, "another-host"
        path.write_text(json.dumps(data))
    assert _dvc("metrics", "diff", cwd=clone) == {}
