"""Every result file the report reads is checked for meaning: each number in the range of its kind
(pipeline/reporting/ranges.py), every object and list of a bounded size, every file's identity (a metrics file and a
prepare result name their instance; a curves file fits its run's metrics and has the md5 dvc.lock records). A bad
file stops the report with one line naming the file, the key, the value, what was expected and the remedy, and
nothing is written. The committed results (git HEAD) pass, and copies between their instances are refused."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from pipeline.config import load_report
from pipeline.reporting import inputs
from pipeline.reporting.results import Paths, read_inputs
from pipeline.stages import report

from .test_report import build, fake_results, params_file
from .tiny import ROOT


def _json(edit):
    """A content function: the file's JSON with ``edit(data)`` applied."""

    def content(old):
        edit(old)
        return json.dumps(old)

    return content


def _set(*keys_and_value):
    """``data[k1][k2]... = value``."""
    *keys, value = keys_and_value

    def edit(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return edit


# (file, content(old), the one line's expected text after "<file>: ") per kind of result file
BAD = [
    ("pretrain/n12-sne-1/record.json", _json(_set("test_top1", 150)),
     "test_top1 is 150, expected an accuracy in [0, 100] (percent); re-run it: dvc repro --force pretrain@n12-sne-1"),
    ("pretrain/n12-sne-1/record.json", _json(_set("test_top1", -5)), "test_top1 is -5, expected an accuracy"),
    ("pretrain/n12-sne-1/record.json", _json(_set("raw_test_top1", 100.01)),
     "raw_test_top1 is 100.01, expected an accuracy in [0, 100] (percent)"),
    ("pretrain/n12-sne-1/record.json", _json(_set("qkv_similarity", "blocks.1.attn.qkv", "q_k", 5.0)),
     "qkv_similarity['blocks.1.attn.qkv']['q_k'] is 5.0, expected a cosine similarity in [-1, 1]"),
    ("pretrain/n12-sne-1/record.json", _json(_set("params", 0)),
     "params is 0, expected a parameter count: a whole number >= 1"),
    ("pretrain/n12-sne-1/record.json", _json(_set("gflops", -0.01)), "gflops is -0.01, expected a FLOP count"),
    ("pretrain/n12-sne-1/record.json", _json(_set("epochs", 0)), "epochs is 0, expected a number of epochs"),
    ("pretrain/n12-sne-1/record.json", _json(_set("weights", "best")), "weights is 'best', expected 'raw' or 'ema'"),
    ("pretrain/n12-sne-1/record.json", _json(_set("qkv_similarity", {})),
     "qkv_similarity is {}, expected an object of 1 to 200 entries"),
    ("finetune/n12-linear-digits-0/record.json", _json(_set("test_top1", 100.5)),
     "test_top1 is 100.5, expected an accuracy in [0, 100] (percent); re-run it: dvc repro --force "
     "finetune@n12-linear-digits-0"),
    ("pretrain/n12-sne-2/curves.csv", lambda m: "epoch,val_top1\n1,50.0\n2,150\n",
     "curves.csv, line 3: val_top1 is 150, expected an accuracy in [0, 100] (percent)"),
    ("pretrain/n12-sne-2/curves.csv", lambda m: "epoch,val_top1,val_loss\n1,50.0,-1\n2,80.5,0.5\n",
     "curves.csv, line 2: val_loss is -1, expected a loss: finite and >= 0"),
    ("pretrain/n12-sne-2/curves.csv", lambda m: "epoch,val_top1\n1.5,50.0\n2,80.5\n",
     "curves.csv, line 2: epoch is 1.5, expected a number of epochs: a whole number in [1, 10000]"),
    ("prepare/digits.json", _json(_set("content_hash", "sha256:abc")),
     "content_hash is 'sha256:abc', expected a content hash 'sha256:<64 hex digits>'; re-run it: dvc repro "
     "--force prepare@digits"),
    ("flops/metrics.json", _json(_set("forensics", "10", "linear", "params", -3)),
     "forensics['10']['linear']['params'] is -3, expected a parameter count: a whole number >= 1; re-run it: dvc "
     "repro --force flops"),
    ("flops/metrics.json", _json(_set("forensics", {})), "forensics is {}, expected an object of 1 to 20 entries"),
    ("flops/metrics.json", _json(_set("forensics", {"ten": {}})),
     "forensics has the key 'ten', expected a number of classes"),
    ("bench/metrics.json", _json(_set("models", "sne", "train_img_per_s", 0.0)),
     "models['sne']['train_img_per_s'] is 0.0, expected a rate (images/s, GFLOP/s): finite and > 0; re-run it: "
     "dvc repro --force bench"),
    ("bench/metrics.json", _json(_set("models", "sne", "train_ceiling_fraction", 7.0)),
     "models['sne']['train_ceiling_fraction'] is 7.0, expected a share of a measured ceiling in (0, 2]"),
    ("bench/metrics.json", _json(_set("ceiling", "shape", [2048, 128])),
     "ceiling['shape'] is [2048, 128], expected a list of 3 items, each a count: a whole number >= 1"),
    ("bench/metrics.json", _json(_set("order", ["linear", "nope"])),
     "order[1] is 'nope', expected one of the models it measured (linear, sne, xcit_nano_12_p8_224)"),
    ("plan/plan.json", _json(_set("groups", 0, "device_hours", -1.5)),
     "groups[0]['device_hours'] is -1.5, expected a number of hours: finite and > 0; re-run it: dvc repro "
     "--force plan"),
    ("plan/plan.json", _json(_set("groups", 0, "rate", "min", float("inf"))),
     "holds Infinity, not a finite number"),
    ("plan/plan.json", _json(_set("groups", [])), "groups is [], expected a list of 1 to 100 items"),
    ("plan/plan.json", _json(_set("prepare", "datasets", "synthetic", "train", -72)),
     "prepare['datasets']['synthetic']['train'] is -72, expected a count: a whole number >= 0"),
    ("pretrain/n12-sne-0/provenance.json", _json(_set("changed_files", "x")),
     "changed_files is 'x', expected a list of 0 to 100000 items, each a string; re-run it: dvc repro --force "
     "pretrain@n12-sne-0"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "content", "message"), BAD, ids=[f"{p}:{m[:40]}" for p, _, m in BAD])
def test_a_value_out_of_its_range_stops_the_report_in_one_line(tmp_path, path, content, message):
    results = fake_results(tmp_path / "results")
    target = results / path
    target.write_text(content(json.loads(target.read_text()) if target.suffix == ".json" else None))
    with pytest.raises(SystemExit) as excinfo:
        build(tmp_path, results, params_file(tmp_path))
    line = str(excinfo.value)
    assert line.startswith(f"report: error: {target}") and message in line, line
    assert "\n" not in line and "git checkout -- " in line
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "curves.csv: empty, expected a header and 2 rows, one per epoch of the run; re-run it"),
        ("epoch,val_top1\n", "curves.csv: a header alone, expected a header and 2 rows, one per epoch of the run"),
        ("epoch,val_top1\n1,50.0\n", "curves.csv: 1 row, but its record.json records 2 epochs: not the curves of"),
        ("epoch,val_top1\n1,50.0\n2,80.5\n3,81.0\n", "curves.csv, line 4: more rows than the run's 2 epochs"),
        ("epoch,val_top1\n2,50.0\n1,80.5\n", "curves.csv: row 1 is epoch 2, expected 1 (one row per epoch, in order)"),
        ("epoch,val_top1\n1,50.0\n2,80.5,7\n", "curves.csv, line 3: more fields than the header's 2"),
        (None, "curves.csv: missing, but pretrain@n12-sne-1 finished (its record.json is there)"),
    ],
)
def test_an_empty_short_or_missing_curves_file_is_refused(tmp_path, text, message):
    """No run silently drops out of the training-curves figure."""
    results = fake_results(tmp_path / "results")
    curves = results / "pretrain/n12-sne-1/curves.csv"
    curves.unlink() if text is None else curves.write_text(text)
    with pytest.raises(SystemExit) as excinfo:
        build(tmp_path, results, params_file(tmp_path))
    assert message in str(excinfo.value) and "dvc repro --force pretrain@n12-sne-1" in str(excinfo.value)
    assert not (tmp_path / "reports").exists()


def test_a_running_instances_live_curves_are_not_a_result(tmp_path):
    """While a run trains, DVC has removed its metrics and the curves grow epoch by epoch: not run, no error."""
    results = fake_results(tmp_path / "results")
    (results / "pretrain/n12-sne-1/record.json").unlink()
    (results / "pretrain/n12-sne-1/curves.csv").write_text("epoch,val_top1\n1,50.0\n")
    assert (build(tmp_path, results, params_file(tmp_path)) / "index.html").is_file()


@pytest.mark.parametrize(
    ("similarity", "message"),
    [
        ({"blocks.0.attn.qkv": {"q_k": "0.1", "q_v": 0.0, "k_v": 0.0}},
         "qkv_similarity['blocks.0.attn.qkv']['q_k'] is '0.1', expected a cosine similarity in [-1, 1]"),
        ({"blocks.0.attn.qkv": "high"}, "qkv_similarity['blocks.0.attn.qkv'] is 'high', expected an object"),
        ({"blocks.0.attn.qkv": {"q_k": 0.1, "q_v": 0.0}},
         "qkv_similarity['blocks.0.attn.qkv']: missing key 'k_v' (a cosine similarity in [-1, 1])"),
        ({"blocks.x.attn.qkv": {"q_k": 0.1, "q_v": 0.0, "k_v": 0.0}},
         "qkv_similarity has the key 'blocks.x.attn.qkv', expected a layer name (blocks.<n>... for an XCA block)"),
        ({"blocks.0.attn.qkv": {"q_k": 0.1, "q_v": 0.0, "k_v": 0.0}},
         "pretrain/n12-sne-2/record.json: qkv_similarity differs from "),  # seed 2 lacks the layer blocks.1
    ],
)  # fmt: skip
def test_a_string_or_a_missing_layer_in_qkv_similarity_is_one_line(tmp_path, similarity, message):
    """A nested value of the wrong type is one line naming where it sits, never a raw TypeError."""
    results = fake_results(tmp_path / "results")
    path = results / "pretrain/n12-sne-2/record.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "qkv_similarity": similarity}))
    with pytest.raises(SystemExit) as excinfo:
        build(tmp_path, results, params_file(tmp_path))
    assert message in str(excinfo.value) and str(excinfo.value).startswith("report: error: ")
    assert "\n" not in str(excinfo.value) and not (tmp_path / "reports").exists()


# ----------------------------------------------------------------------------------------------------
# The committed results (git HEAD: the working tree's may be half-way through a re-run).


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """HEAD's results, params.yaml and dvc.lock, extracted to a folder (read-only on the repository)."""
    done = subprocess.run(
        ["git", "archive", "HEAD", "results", "params.yaml", "dvc.lock"], cwd=ROOT, capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"no git HEAD to read the committed results from: {done.stderr.decode()[:200]}")
    folder = tmp_path_factory.mktemp("committed")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(folder, filter="data")
    return folder


def _paths(root: Path, lock: bool = True) -> Paths:
    results = root / "results"
    return Paths(
        ROOT / "references/published.yaml",
        ROOT / "references/assumptions.yaml",
        ROOT / "profiles/paper.yaml",
        results / "flops/metrics.json",
        results / "bench/metrics.json",
        str(results / "prepare/{dataset}.json"),
        str(results / "pretrain/{backbone}-{variant}-{seed}"),
        str(results / "finetune/{backbone}-{variant}-{dataset}-{seed}"),
        root / "reports",
        results / "plan/plan.json",
        root / "dvc.lock" if lock else None,
    )


def _copy(committed: Path, tmp_path: Path) -> Path:
    shutil.copytree(committed, tmp_path / "tree")
    return tmp_path / "tree"


def _build(root: Path) -> None:
    p = _paths(root)
    report.main(
        [
            *("--params", str(root / "params.yaml"), "--published", str(p.published)),
            *("--assumptions", str(p.assumptions), "--plan", str(p.plan), "--plan-table", str(p.plan_table)),
            *("--flops", str(p.flops), "--bench", str(p.bench), "--prepare", p.prepare),
            *("--pretrain", p.pretrain, "--finetune", p.finetune, "--lock", str(root / "dvc.lock")),
            *("--out", str(p.out), "--headline", str(p.out / "headline.json")),
        ]
    )


TIE = ("epochs", "val_top1_final", "val_top1_best", "best_epoch")  # what a curves file shares with its metrics


def _runs(committed: Path) -> dict[str, tuple[dict, Path]]:
    """Every committed pretraining run: instance -> (metrics, curves file)."""
    paths = _paths(committed)
    metrics = read_inputs(load_report(committed / "params.yaml"), paths).pretrain
    return {"pretrain@{}-{}-{}".format(*k): (m, paths.pretrain_dir(*k) / "curves.csv") for k, m in metrics.items()}


def test_the_committed_results_pass_every_check(committed):
    read = read_inputs(load_report(committed / "params.yaml"), _paths(committed))
    assert all(read.pretrain.values()) and all(read.finetune.values()) and all(read.prepare.values())
    assert read.flops and read.bench and read.plan
    assert all(len(read.curves[k]) == m["epochs"] for k, m in read.pretrain.items())


def test_a_curves_file_copied_from_another_committed_instance_is_refused_naming_both(committed, tmp_path):
    runs = _runs(committed)
    pairs = list(itertools.permutations(runs, 2))
    differ = next((a, b) for a, b in pairs if any(runs[a][0][k] != runs[b][0][k] for k in TIE))
    same = next(((a, b) for a, b in pairs if all(runs[a][0][k] == runs[b][0][k] for k in TIE)), None)
    root = _copy(committed, tmp_path)

    def copied(a: str, b: str) -> str:
        """The one line of the report with ``b``'s committed curves copied into ``a``'s folder; nothing written."""
        target = root / runs[a][1].relative_to(committed)
        shutil.copy(runs[b][1], target)
        with pytest.raises(SystemExit) as excinfo:
            _build(root)
        shutil.copy(runs[a][1], target)
        assert not (root / "reports").exists()
        line = str(excinfo.value)
        assert line.startswith(f"report: error: {target}: ") and "\n" not in line
        assert line.endswith(f"; re-run it: dvc repro --force {a} (or restore it: git checkout -- {target})")
        return line

    a, b = differ
    assert f": not the curves of {a} (they fit the metrics of " in copied(a, b) and b in copied(a, b)
    if same:  # two runs that ended on the same validation accuracies: only dvc.lock's md5 tells them apart
        a, b = same
        shown = runs[b][1].relative_to(committed)
        assert f": not the file {a} wrote: its md5 " in copied(a, b)
        assert f" is that of {b}'s {shown} (a copy), dvc.lock records " in copied(a, b)


def test_every_copy_between_committed_pretraining_runs_is_refused(committed, tmp_path):
    """Every ordered pair: by the content it shares with the metrics where that differs, else by dvc.lock's md5."""
    root = _copy(committed, tmp_path)
    runs, lock = _runs(root), inputs.lock_outputs(root / "dvc.lock")
    others = {name: m for name, (m, _) in runs.items()}
    by_content = by_lock = 0
    for a, b in itertools.permutations(runs, 2):
        (metrics, curves), source = runs[a], runs[b][1]
        own = curves.read_bytes()
        shutil.copy(source, curves)
        if any(metrics[k] != runs[b][0][k] for k in TIE):
            with pytest.raises(ValueError, match=f"not the curves of {a} \\(they fit the metrics of .*{b}"):
                inputs.read_curves(curves, a, metrics, remedy="r", others=others, lock=lock)
            by_content += 1
        elif own != source.read_bytes():
            with pytest.raises(ValueError, match=f"not the file {a} wrote: its md5 \\w+ is that of {b}'s "):
                inputs.read_curves(curves, a, metrics, remedy="r", others=others, lock=lock)
            by_lock += 1
        curves.write_bytes(own)
    assert by_content + by_lock == len(runs) * (len(runs) - 1)


def test_a_prepare_result_copied_from_another_committed_dataset_is_refused_naming_both(committed, tmp_path):
    root = _copy(committed, tmp_path)
    prepare = root / "results/prepare"
    shutil.copy(prepare / "lfw_faces.json", prepare / "digits.json")
    with pytest.raises(SystemExit) as excinfo:
        _build(root)
    assert str(excinfo.value) == (
        f"report: error: {prepare}/digits.json: written for dataset 'lfw_faces', but read as the result of dataset "
        "'digits': a result file copied or renamed from another instance; re-run it: dvc repro --force "
        f"prepare@digits (or restore it: git checkout -- {prepare}/digits.json)"
    )
    assert not (root / "reports").exists()


def test_a_malformed_dvc_lock_is_one_line(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text("stages: [unclosed\n")
    with pytest.raises(ValueError, match=r"dvc.lock: malformed \(.*\); restore it: git checkout -- ") as excinfo:
        inputs.lock_outputs(lock)
    assert "\n" not in str(excinfo.value)
    assert inputs.lock_outputs(tmp_path / "absent.lock") == {}
