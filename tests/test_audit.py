"""The audit's comparison of committed and re-run outputs, by file kind, on files built here (the end-to-end
audit, which re-runs a stage with DVC, is in test_e2e)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from pipeline.config import Audit
from pipeline.review.audit import audit
from pipeline.review.compare import compare_measured, compare_outputs
from pipeline.scratch import dvc

from .tiny import ROOT, write_params

TOL = Audit(abs_tol=0.01, ratio_rel_tol=0.25, weights_abs_tol=1e-3)
METRICS = {"top1": 95.0, "loss": 0.3, "name": "a", "per": {"b0": [0.1, 0.2]}, "n": 3}
CURVES = [["epoch", "lr", "val_loss", "note"], ["1", "0.001", "1.25", "x"], ["2", "0.0005", "0.75", "y"]]


def _weights(**changes) -> dict[str, np.ndarray]:
    tensors = {
        "blocks.0.weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 10,
        "labels": np.array([0, 1, 2, 1, 0], dtype=np.int64),
    }
    return {**tensors, **changes}


def _write(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(content, indent=2))
    elif path.suffix == ".csv":
        path.write_text("".join(",".join(row) + "\n" for row in content))
    elif path.suffix == ".safetensors":
        save_file(content, str(path))
    else:
        path.write_bytes(content)


def _compare(tmp_path: Path, name: str, old, new, tol: Audit = TOL) -> tuple[str, list[str]]:
    """Write ``old`` as the committed file ``name`` and ``new`` as the re-run one, then compare them."""
    _write(tmp_path / "committed" / name, old)
    if new is not None:
        _write(tmp_path / "rerun" / name, new)
    return compare_outputs(tmp_path / "committed", tmp_path / "rerun", [name], tol)


def _curves(row: int, column: int, value: str) -> list[list[str]]:
    rows = [list(r) for r in CURVES]
    rows[row][column] = value
    return rows


# ---------------------------------------------------------------------------------------------- one file


@pytest.mark.parametrize(
    "name, old, new",
    [
        ("r/metrics.json", METRICS, METRICS),
        ("r/curves.csv", CURVES, CURVES),
        ("m/raw.safetensors", _weights(), _weights()),
        ("r/figure.png", b"\x89PNG...", b"\x89PNG..."),
    ],
)
def test_identical_files_are_identical(tmp_path, name, old, new):
    verdict, details = _compare(tmp_path, name, old, new)
    assert verdict == "identical"
    assert details == [f"1 file(s) equal byte for byte, in {name}"]


@pytest.mark.parametrize(
    "name, old, new, where, deviation",
    [
        ("r/metrics.json", METRICS, {**METRICS, "top1": 95.005, "loss": 0.301}, "r/metrics.json:top1", "0.005"),
        ("r/metrics.json", METRICS, {**METRICS, "per": {"b0": [0.1, 0.2002]}}, "r/metrics.json:per.b0.1", "0.0002"),
        ("r/curves.csv", CURVES, _curves(2, 2, "0.758"), "r/curves.csv:row 2 val_loss", "0.008"),
        ("r/curves.csv", CURVES, _curves(1, 2, "1.250000"), "r/curves.csv:(same values, different encoding)", "0"),
        (
            "m/raw.safetensors",
            _weights(),
            _weights(**{"blocks.0.weight": _weights()["blocks.0.weight"] + np.float32(5e-4)}),
            "m/raw.safetensors:blocks.0.weight",
            "0.0005",
        ),
    ],
)
def test_within_tolerance_names_the_largest_deviation(tmp_path, name, old, new, where, deviation):
    verdict, details = _compare(tmp_path, name, old, new)
    assert verdict == f"equal within tolerance (max deviation {deviation} at {where})"
    assert len(details) == 1 and details[0].startswith(f"{name}: ")


def test_weights_within_tolerance_counts_the_elements(tmp_path):
    w = _weights()["blocks.0.weight"].copy()
    w[1, 2] += 8e-4
    w[0, 0] -= 1e-4
    verdict, details = _compare(tmp_path, "m/ema.safetensors", _weights(), _weights(**{"blocks.0.weight": w}))
    assert verdict == "equal within tolerance (max deviation 0.0008 at m/ema.safetensors:blocks.0.weight)"
    assert details == ["m/ema.safetensors: 2 value(s) within tolerance, max deviation 0.0008 at blocks.0.weight"]


def test_nan_equals_nan_only(tmp_path):
    w = _weights()["blocks.0.weight"].copy()
    w[0, 0] = np.nan
    moved = w.copy()
    moved[1, 1] += 1e-4
    old, new = _weights(**{"blocks.0.weight": w}), _weights(**{"blocks.0.weight": moved})
    assert _compare(tmp_path / "a", "m/raw.safetensors", old, new)[0].startswith("equal within tolerance")
    verdict, details = _compare(tmp_path / "b", "m/raw.safetensors", old, _weights())
    assert verdict == "differs" and details[0].startswith("m/raw.safetensors: blocks.0.weight[0, 0]: committed nan")
    nan = {**METRICS, "loss": float("nan")}
    assert _compare(tmp_path / "c", "r/m.json", nan, {**nan, "top1": 95.001})[0].startswith("equal within")


def _shifted(at: tuple[int, int], by: float) -> np.ndarray:
    w = _weights()["blocks.0.weight"].copy()
    w[at] += by
    return w


@pytest.mark.parametrize(
    "name, old, new, first",
    [
        ("r/metrics.json", METRICS, {**METRICS, "loss": 0.35}, "r/metrics.json: loss: committed 0.3, re-run 0.35"),
        ("r/metrics.json", METRICS, {**METRICS, "name": "b"}, "r/metrics.json: name: committed 'a', re-run 'b'"),
        ("r/metrics.json", METRICS, {**METRICS, "n": 3.5}, "r/metrics.json: n: committed 3, re-run 3.5"),
        ("r/metrics.json", METRICS, {**METRICS, "x": 1}, "r/metrics.json: x: committed <missing>, re-run 1"),
        ("r/curves.csv", CURVES, _curves(2, 2, "0.8"), "r/curves.csv: row 2 val_loss: committed 0.75, re-run 0.8"),
        ("r/curves.csv", CURVES, _curves(1, 3, "z"), "r/curves.csv: row 1 note: committed 'x', re-run 'z'"),
        ("r/curves.csv", CURVES, CURVES[:2], "r/curves.csv: rows: committed 2, re-run 1"),
        (
            "r/curves.csv",
            CURVES,
            _curves(0, 2, "val_top1"),
            "r/curves.csv: header: committed [['epoch', 'lr', 'val_loss', 'note']], "
            "re-run [['epoch', 'lr', 'val_top1', 'note']]",
        ),
        (
            "m/raw.safetensors",
            _weights(),
            _weights(**{"blocks.0.weight": _shifted((1, 0), 2e-3)}),
            "m/raw.safetensors: blocks.0.weight[1, 0]: committed 0.30000001192092896, re-run 0.3020000159740448 "
            "(1 element(s) beyond 0.001, max abs difference 0.002)",
        ),
        (
            "m/raw.safetensors",
            _weights(),
            _weights(labels=np.array([0, 1, 2, 2, 0], dtype=np.int64)),
            "m/raw.safetensors: labels[3]: committed 1, re-run 2",
        ),
        (
            "m/raw.safetensors",
            _weights(),
            _weights(**{"blocks.0.weight": _weights()["blocks.0.weight"].reshape(3, 2)}),
            "m/raw.safetensors: blocks.0.weight: committed F32 [2, 3], re-run F32 [3, 2]",
        ),
        (
            "m/raw.safetensors",
            _weights(),
            _weights(labels=_weights()["labels"].astype(np.int32)),
            "m/raw.safetensors: labels: committed I64 [5], re-run I32 [5]",
        ),
        (
            "m/raw.safetensors",
            _weights(),
            {"blocks.0.weight": _weights()["blocks.0.weight"]},
            "m/raw.safetensors: labels: tensor only in the committed file",
        ),
        ("r/figure.png", b"\x89PNG...", b"\x89PNG,,,,", "r/figure.png: bytes differ (committed 7 B, re-run 8 B)"),
        ("r/metrics.json", METRICS, None, "r/metrics.json: only in the committed output"),
    ],
)
def test_beyond_tolerance_names_the_first_difference(tmp_path, name, old, new, first):
    verdict, details = _compare(tmp_path, name, old, new)
    assert verdict == "differs"
    assert details[0] == first


def test_weights_tolerance_is_its_own(tmp_path):
    """A weights deviation above ``abs_tol``'s scale is judged by ``weights_abs_tol`` (and the other way)."""
    tol = Audit(abs_tol=1e-6, ratio_rel_tol=0.25, weights_abs_tol=0.1)
    new = _weights(**{"blocks.0.weight": _shifted((0, 0), 0.05)})
    assert _compare(tmp_path, "m/raw.safetensors", _weights(), new, tol)[0].startswith("equal within tolerance")
    assert _compare(tmp_path, "r/m.json", METRICS, {**METRICS, "top1": 95.05}, tol)[0] == "differs"


def test_unreadable_file_of_a_known_kind_differs(tmp_path):
    _write(tmp_path / "committed/r/m.json", METRICS)
    (tmp_path / "rerun/r").mkdir(parents=True)
    (tmp_path / "rerun/r/m.json").write_text("{not json")
    verdict, details = compare_outputs(tmp_path / "committed", tmp_path / "rerun", ["r/m.json"], TOL)
    assert verdict == "differs" and details[0].startswith("r/m.json: cannot be read as json (JSONDecodeError")


def test_differences_are_listed_up_to_ten(tmp_path):
    new = {f"k{i:02d}": i + 1 for i in range(25)}
    verdict, details = _compare(tmp_path, "r/m.json", {f"k{i:02d}": i for i in range(25)}, new)
    assert verdict == "differs"
    assert details[0] == "r/m.json: k00: committed 0, re-run 1"
    assert len(details) == 11 and details[-1] == "... and 15 more difference(s)"


# ------------------------------------------------------------------------------------------- directories


def _tree(root: Path, *, weight_shift: float = 0.0, top1: float = 95.0, extra: bool = False, host: str = "a") -> Path:
    """A stage's outputs: a model directory, prepared data, metrics, curves, provenance and a figure."""
    _write(root / "models/x/raw.safetensors", _weights(**{"blocks.0.weight": _shifted((0, 1), weight_shift)}))
    _write(root / "models/x/ema.safetensors", _weights())
    _write(root / "models/x/sub/notes.txt", b"notes")
    if extra:
        _write(root / "models/x/sub/extra.txt", b"extra")
    _write(root / "results/x/metrics.json", {**METRICS, "top1": top1})
    _write(root / "results/x/curves.csv", CURVES)
    _write(root / "results/x/provenance.json", {"host": host, "seconds": len(host)})
    return root


OUTS = ["models/x", "results/x/curves.csv", "results/x/metrics.json", "results/x/provenance.json"]


def test_directory_trees_identical_skip_provenance(tmp_path):
    verdict, details = compare_outputs(_tree(tmp_path / "a"), _tree(tmp_path / "b", host="bb"), OUTS, TOL)
    assert verdict == "identical"
    assert details == [f"5 file(s) equal byte for byte, in {', '.join(OUTS[:3])}"]


def test_directory_trees_within_tolerance(tmp_path):
    old, new = _tree(tmp_path / "a"), _tree(tmp_path / "b", weight_shift=3e-4, top1=95.002)
    verdict, details = compare_outputs(old, new, OUTS, TOL)
    assert verdict == "equal within tolerance (max deviation 0.002 at results/x/metrics.json:top1)"
    assert len(details) == 2
    assert details[0].startswith("models/x/raw.safetensors: 1 value(s) within tolerance, max deviation 0.0003")
    assert details[1].startswith("results/x/metrics.json: 1 value(s) within tolerance, max deviation 0.002 at top1")


def test_directory_trees_differ(tmp_path):
    old, new = _tree(tmp_path / "a"), _tree(tmp_path / "b", weight_shift=0.5, top1=96.0, extra=True)
    verdict, details = compare_outputs(old, new, OUTS, TOL)
    assert verdict == "differs"
    assert details[0].startswith("models/x/raw.safetensors: blocks.0.weight[0, 1]: committed 0.10000000149011612")
    assert details[1:] == [
        "models/x/sub/extra.txt: only in the re-run output",
        "results/x/metrics.json: top1: committed 95.0, re-run 96.0",
    ]


def test_directory_file_missing_on_one_side_differs(tmp_path):
    old, new = _tree(tmp_path / "a", extra=True), _tree(tmp_path / "b")
    verdict, details = compare_outputs(old, new, OUTS, TOL)
    assert (verdict, details) == ("differs", ["models/x/sub/extra.txt: only in the committed output"])


# ------------------------------------------------------------------------------------------- measurements


def _bench(root: Path, ratio: float, seconds: float) -> Path:
    _write(root / "results/bench/metrics.json", {"measured": True, "models": {"fsne": {"step_time_ratio": ratio}}})
    _write(root / "results/bench/times.csv", [["round", "seconds"], ["0", str(seconds)]])
    return root


def test_measurement_judges_ratios_only(tmp_path):
    outs = ["results/bench/metrics.json", "results/bench/times.csv"]
    old, new = _bench(tmp_path / "a", 1.5, 0.01), _bench(tmp_path / "b", 1.65, 0.5)
    verdict, details = compare_outputs(old, new, outs, TOL)
    assert verdict == "equal within tolerance (measurement: ratios within rel 0.25)"
    assert details == [
        "results/bench/metrics.json: models.fsne.step_time_ratio: 1.5 -> 1.65 (+10.0%)",
        "not judged (timings): results/bench/times.csv",
    ]
    verdict, details = compare_outputs(old, _bench(tmp_path / "c", 3.0, 0.01), outs, TOL)
    assert (
        verdict == "differs"
        and details[1] == "results/bench/metrics.json: models.fsne.step_time_ratio: 1.5 -> 3 (+100.0%)"
    )


def test_compare_measured_flags_missing_ratios():
    beyond, compared = compare_measured({"a": {"flop_ratio": 2.0}, "t": 1.0}, {"t": 9.0}, 0.1)
    assert beyond == ["a.flop_ratio: 2.0 -> <missing>"] and compared == []


# ------------------------------------------------------------------------------------------- the audit itself


def _committed_repo(repo: Path) -> None:
    """``repo`` as a git and DVC repository with everything in it committed."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    assert dvc(repo, "init", "-q").returncode == 0
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "run"], cwd=repo, check=True)


def test_audit_needs_a_commit_and_an_instance_of_heads_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    with pytest.raises(
        ValueError, match=re.escape("the audit compares with the commit at HEAD, but `git archive HEAD`")
    ):
        audit(tmp_path, "prepare@x", TOL)
    lock = {"schema": "2.0", "stages": {"prepare@x": {"cmd": "true", "outs": [{"path": "d", "md5": "0.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))
    _committed_repo(tmp_path)
    with pytest.raises(ValueError, match=re.escape("no stage instance 'y' in HEAD's dvc.lock; recorded: prepare@x")):
        audit(tmp_path, "y", TOL)


AUDIT = {"abs_tol": 0.01, "ratio_rel_tol": 0.25, "weights_abs_tol": 1.0e-3}


def _params_with_audit(path: Path, section: dict) -> Path:
    """The embedded profile (what the tiny one is built from) with ``section`` as its audit section."""
    params = yaml.safe_load((ROOT / "profiles" / "embedded.yaml").read_text())
    params["audit"] = section
    return write_params(path, params)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"abs_tol": 0.01, "weights_abs_tol": 1.0e-3}, "audit: missing key(s) ratio_rel_tol"),
        ({"abs_tol": 0.01, "ratio_rel_tol": 0.25}, "audit: missing key(s) weights_abs_tol"),
        ({**AUDIT, "ratio_rel_tol": -0.1}, "audit.ratio_rel_tol: must not be negative, got -0.1"),
        ({**AUDIT, "weights_abs_tol": -1.0e-3}, "audit.weights_abs_tol: must not be negative, got -0.001"),
        ({**AUDIT, "abs_tol": "0.01"}, "audit.abs_tol: expected a finite number, got '0.01'"),
        ({**AUDIT, "weights_abs_tol": "1e-3"}, "audit.weights_abs_tol: expected a finite number, got '1e-3'"),
        ({**AUDIT, "rel_tol": 1.0}, "audit: unknown key(s) rel_tol"),
    ],
)
def test_audit_params_are_checked(tmp_path, section, message):
    from pipeline.config import ParamsError, load_audit

    path = _params_with_audit(tmp_path / "params.yaml", section)
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_audit(path)


def test_audit_params_load(tmp_path):
    from pipeline.config import load_audit

    assert load_audit(_params_with_audit(tmp_path / "params.yaml", AUDIT)) == TOL


# ------------------------------------------------------------------------------------------- the promise


GPU_RUN = "pretrain@s12-sne-0"
REFUSED = (
    f"{GPU_RUN} ran on cuda with runtime.gpu_kernels: fast (cuDNN autotuner, TF32): GPU runs are not bitwise "
    "reproducible and drift past audit.abs_tol over a run, so a re-run cannot confirm it; re-run it with "
    "runtime.gpu_kernels: deterministic and commit that result to audit it, or compare seeds instead (the report's "
    "spread over seeds)"
)


def _gpu_run(repo: Path, record: dict) -> Path:
    """A committed pretraining instance run on a GPU: its lock entry and its provenance record (its weights, in the
    DVC cache, are not on disk: the refusal comes before the check for them)."""
    out = "results/pretrain/s12-sne-0"
    outs = [{"path": "models/pretrain/s12-sne-0", "md5": "0.dir"}, {"path": f"{out}/metrics.json", "md5": "1"}]
    outs.append({"path": f"{out}/provenance.json", "md5": "2"})
    (repo / "dvc.lock").write_text(json.dumps({"schema": "2.0", "stages": {GPU_RUN: {"cmd": "false", "outs": outs}}}))
    _write(repo / f"{out}/metrics.json", METRICS)
    _write(repo / f"{out}/provenance.json", {"stage": "pretrain", "device": "cuda:0", **record})
    params = _params_with_audit(repo / "params.yaml", AUDIT)
    _committed_repo(repo)
    return params


@pytest.mark.parametrize(
    "record",
    [{"determinism": {"device": "cuda", "gpu_kernels": "fast", "bitwise": False}}, {}],
    ids=["recorded", "before-the-record"],
)
def test_audit_refuses_a_gpu_run_with_fast_kernels_before_re_running(tmp_path, monkeypatch, record):
    import pipeline.review.audit as module

    _gpu_run(tmp_path, record)

    def spend(*args):
        raise AssertionError("the audit started a re-run")

    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setattr(module, "_get_upstream", spend)
    with pytest.raises(ValueError, match=f"^{re.escape(REFUSED)}$"):
        audit(tmp_path, GPU_RUN, TOL)


def test_audit_refusal_is_one_line_and_fails(tmp_path):
    _gpu_run(tmp_path, {"determinism": {"device": "cuda", "gpu_kernels": "fast", "bitwise": False}})
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.review.audit", GPU_RUN, "--repo", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"audit: error: {REFUSED}\n")


TRAIN = """import json, sys
from pathlib import Path
out = Path("results") / sys.argv[1]
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps({"top1": 95.0, "data": Path("data.txt").read_text()}))
record = {"device": "cpu", "determinism": {"device": "cpu", "gpu_kernels": "fast", "bitwise": True},
          "hardware": {"cpu": "This CPU", "torch_threads": 1}, "packages": {"torch": "2.14.1"}, "world_size": 1}
(out / "provenance.json").write_text(json.dumps(record))
"""
DVC_YAML = """stages:
  prep:
    cmd: {python} -c "open('data.txt', 'w').write('prepared')"
    deps: [train.py]
    outs: [data.txt]
  train:
    foreach: [x]
    do:
      cmd: {python} train.py ${{item}}
      deps: [train.py, data.txt]
      metrics:
        - results/${{item}}/metrics.json: {{cache: false}}
      plots:
        - results/${{item}}/provenance.json: {{cache: false}}
"""
CPU_PROMISE = (
    "bitwise promise: CPU, deterministic algorithms, same CPU model, torch build, threads, evaluation batch and "
    "processes"
)
PLAN = {"groups": [{"stage": "prep", "wall_hours": 0.5, "runs": 1}]}


def test_audit_of_a_cpu_run_names_its_promise_and_notes_another_cpu_model(tmp_path, monkeypatch, capsys):
    """A stand-in training stage (a script writing a metrics file and a CPU run's provenance record) and the stage
    that prepares its data, committed and re-run by the audit with DVC: the verdict carries the promise; a
    committed record made on another CPU model adds a note saying the tolerances judge; the working tree is
    never what is compared; a fresh clone (no DVC cache, no remote) reproduces the upstream stage first, saying
    so with the plan's estimate."""
    from pipeline.review.audit import main

    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text(TRAIN)
    (repo / "dvc.yaml").write_text(DVC_YAML.format(python=sys.executable))
    _write(repo / "results/plan/plan.json", PLAN)
    _params_with_audit(repo / "params.yaml", AUDIT)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    assert dvc(repo, "init", "-q").returncode == 0
    assert dvc(repo, "repro").returncode == 0
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "run"], cwd=repo, check=True)

    said = []
    verdict, details, promise = audit(repo, "train@x", TOL, say=said.append)
    assert (verdict, promise, said) == ("identical", CPU_PROMISE, [])
    assert details == ["1 file(s) equal byte for byte, in results/x/metrics.json"]

    # the working tree is not what is audited: an edited result (a re-run that rewrote it) changes nothing
    metrics = repo / "results/x/metrics.json"
    metrics.write_text(metrics.read_text().replace("95.0", "95.5"))
    assert audit(repo, "train@x", TOL, say=said.append)[:2] == ("identical", details)

    subprocess.run(["git", "checkout", "--", "results/x/metrics.json"], cwd=repo, check=True)
    provenance = repo / "results/x/provenance.json"
    provenance.write_text(provenance.read_text().replace("This CPU", "AMD EPYC"))
    subprocess.run([*git, "commit", "-qam", "another CPU"], cwd=repo, check=True)
    main(["train@x", "--repo", str(repo)])
    assert capsys.readouterr().out.splitlines() == [
        f"audit train@x: identical ({CPU_PROMISE})",
        "  note: CPU model: committed AMD EPYC, re-run This CPU: bitwise equality is not promised across CPU models; "
        "audit.abs_tol and audit.weights_abs_tol apply",
        "  1 file(s) equal byte for byte, in results/x/metrics.json",
    ]

    # a fresh clone: no DVC cache, no remote: prep is reproduced first, said with the plan's estimate
    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(repo), str(fresh)], check=True)
    verdict, details, _ = audit(fresh, "train@x", TOL, say=said.append)
    assert said == [
        "audit: train@x needs prep, in neither this clone's DVC cache nor a DVC remote: reproducing them first in "
        "the scratch copy (~30 min by the plan)"
    ]
    assert verdict == "identical", details
