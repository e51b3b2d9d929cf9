"""The report from hand-written result files: tables, statistics, verdicts, determinism, bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from pipeline.config import Claim
from pipeline.reporting.claims import verdict
from pipeline.reporting.stats import paired, summary
from pipeline.stages import report

from .tiny import ROOT, tiny_params, write_params

ACC = {"linear": [90.0, 91.0, 92.5], "sne": [91.0, 93.0, 93.5]}
SEEDS = [0, 1, 2]
RUN = {"epochs": 2, "val_top1_final": 80.5, "val_top1_best": 80.5, "best_epoch": 2}  # what the curves below end on


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def fake_results(root: Path, *, profile: str = "embedded", skip: tuple = ()) -> Path:
    """Hand-written result files of two variants x three seeds, one transfer dataset."""
    write_json(
        root / "flops/metrics.json",
        {
            "profile": profile,
            "forensics": {
                "1000": {"linear": {"params": 3053224, "gflops": 0.557}, "fsne": {"params": 2859796, "gflops": 0.596}},
                "10": {"linear": {"params": 2925514, "gflops": 0.557}, "fsne": {"params": 2732086, "gflops": 0.596}},
            },
        },
    )
    write_json(root / "flops/provenance.json", record("flops", profile))
    write_json(root / "bench/metrics.json", fake_bench(profile))
    write_json(root / "plan/plan.json", fake_plan(profile))
    for d in ("synthetic", "digits"):
        digest = "sha256:" + hashlib.sha256(d.encode()).hexdigest()
        write_json(root / f"prepare/{d}.json", {"profile": profile, "dataset": d, "content_hash": digest})
    for v, accs in ACC.items():
        for s, a in zip(SEEDS, accs, strict=True):
            if (v, s) in skip:
                continue
            folder = root / f"pretrain/n12-{v}-{s}"
            write_json(
                folder / "record.json",
                {
                    **instance(profile, v, s, "synthetic"),
                    "test_top1": a,
                    "params": 1000 + len(v),
                    "gflops": 0.01,
                    "synthetic": True,
                    **RUN,
                    "qkv_similarity": {
                        f"blocks.{b}.attn.qkv": {"q_k": 0.1 * b, "q_v": 0.0, "k_v": 0.0} for b in range(2)
                    },
                },
            )
            (folder / "curves.csv").write_text("epoch,val_top1\n1,50.0\n2,80.5\n")
            write_json(folder / "provenance.json", record("pretrain", profile))
            ft = root / f"finetune/n12-{v}-digits-{s}"
            metrics = {**instance(profile, v, s, "digits", stage="finetune"), "test_top1": a - 5, "synthetic": False}
            write_json(ft / "record.json", metrics)
    return root


def record(stage: str, profile: str) -> dict:
    """A provenance record with the keys the report reads."""
    hardware = {"cpu": "test CPU"}
    return {"stage": stage, "params": {"profile": profile}, "packages": {"torch": "2.14.1"}, "hardware": hardware}


def instance(
    profile: str, variant: str, seed: int, dataset: str, backbone: str = "n12", model: str = "", stage: str = "pretrain"
) -> dict:
    """What a training stage's metrics file records of its own instance (the report checks it)."""
    model = model or tiny_params()["backbones"]["n12"]["name"]
    return {
        "profile": profile,
        "stage": stage,
        "backbone": backbone,
        "model": model,
        "variant": variant,
        "seed": seed,
        "dataset": dataset,
    }


def fake_bench(profile: str) -> dict:
    """A bench metrics file as pipeline.stages.bench writes it, with round numbers."""

    def model(ms: float, flop_ratio: float) -> dict:
        return {
            "train_step_ms": ms,
            "train_step_ms_min": ms - 1,
            "train_step_ms_max": ms + 2,
            "train_img_per_s": 128 / ms * 1e3,
            "eval_img_per_s": 1000.0,
            "flop_ratio": flop_ratio,
            "step_time_ratio": ms / 200.0,
            "step_over_flop_ratio": ms / 200.0 / flop_ratio,
            "train_gflop_per_s": 120.0 * 200.0 / ms,
            "train_ceiling_fraction": 0.6 * 200.0 / ms,
            "train_peak_fraction": 0.4 * 200.0 / ms,
        }

    return {
        "profile": profile,
        "measured": True,
        "device": "cpu",
        "dtype": "float32",
        "threads": 2,
        "batch_size": 128,
        "img_size": 32,
        "rounds": 15,
        "reference": "xcit_nano_12_p8_224",
        "order": ["linear", "sne", "xcit_nano_12_p8_224"],
        "models": {"linear": model(200.0, 1.0), "sne": model(230.0, 1.05), "xcit_nano_12_p8_224": model(250.0, 1.0)},
        "ceiling": {"shape": [2048, 128, 512], "gflop_per_s": 200.0},
        "peak": {"shape": [1024, 1024, 1024], "gflop_per_s": 300.0},
        "baseline": "linear",
        "loader": {"img_per_s": 30000.0, "over_train": 46.9, "mode": "batched"},
        "targets": {
            "step_over_flops": {"limit": 1.1, "met": False},
            "ceiling_fraction": {"limit": 0.6, "met": True},
        },
    }


def fake_plan(profile: str) -> dict:
    """A plan JSON as pipeline.stages.plan writes it: one pretraining group of 2 runs at a given rate, round numbers."""
    group = {
        "stage": "pretrain", "backbone": "n12", "runs": 2, "epochs": 2, "train_images": 256, "eval_images": 160,
        "train_flops": 3_000_000_000, "eval_flops": 500_000_000, "weights_bytes": 2_000_000, "resume_bytes": 3_000_000,
        "device_hours": 1.5, "wall_hours": 1.5,
        "rate": {"min": 90.0, "max": 100.0, "kinds": ["given", "given x FLOPs"]},
    }  # fmt: skip
    synthetic = {"train": 72, "val": 24, "test": 24, "classes": 3, "exact": True, "bytes": 93_120, "storage": "tensor"}
    total = {k: group[k] for k in ("runs", "train_images", "eval_images", "train_flops", "eval_flops")}
    total.update(device_hours=1.5, wall_hours=1.5, disk_bytes=2_093_120, resume_bytes=3_000_000)
    return {
        "profile": profile,
        "rehearsal": None,
        "devices": {"kind": "cpu", "unit": "CPU process", "per_node": 1, "nodes": 1, "total": 1},
        "groups": [group],
        "prepare": {"datasets": {"synthetic": synthetic}, "bytes": 93_120},
        "total": total,
        "rate_sources": ["given: --img-per-s 100 for n12/linear per device"],
        "ignored": [],
        "input": [{"stage": "pretrain", "mode": "batched"}],
        "memory": None,
    }


def params_file(tmp_path: Path, **variants_extra) -> Path:
    params = tiny_params(seeds=SEEDS)
    params["pretrain"].update(variants=["linear", "sne"])
    params["finetune"].update(variants=["linear", "sne"], datasets=["digits"])
    params["variants"]["sne"].update(variants_extra)
    return write_params(tmp_path / "params.yaml", params)


def build(
    tmp_path: Path,
    results: Path,
    params: Path,
    out: str = "reports",
    published: Path = ROOT / "references/published.yaml",
) -> Path:
    out_dir = tmp_path / out
    report.main(
        [
            "--params",
            str(params),
            "--published",
            str(published),
            "--assumptions",
            str(ROOT / "references/assumptions.yaml"),
            "--plan",
            str(ROOT / "profiles/paper.yaml"),
            "--plan-table",
            str(results / "plan/plan.json"),
            "--flops",
            str(results / "flops/metrics.json"),
            "--bench",
            str(results / "bench/metrics.json"),
            "--prepare",
            str(results / "prepare/{dataset}.json"),
            "--pretrain",
            str(results / "pretrain/{backbone}-{variant}-{seed}"),
            "--finetune",
            str(results / "finetune/{backbone}-{variant}-{dataset}-{seed}"),
            "--out",
            str(out_dir),
            "--headline",
            str(out_dir / "headline.json"),
        ]
    )
    return out_dir


def rows(out: Path, table: str) -> list[dict]:
    return list(csv.DictReader((out / f"tables/{table}.csv").read_text().splitlines()))


def test_bench_table_shows_ratios_ceiling_and_targets(tmp_path):
    out = build(tmp_path, fake_results(tmp_path / "results"), params_file(tmp_path))
    bench = {r["model"]: r for r in rows(out, "bench")}
    assert list(bench) == ["linear", "sne", "xcit_nano_12_p8_224 (timm's own)"]
    assert bench["sne"]["step-time ratio"] == "1.150" and bench["sne"]["FLOP ratio"] == "1.050"
    assert bench["sne"]["step / FLOP ratio"] == f"{230 / 200 / 1.05:.3f}"
    assert bench["linear"]["of matmul ceiling"] == "60%" and bench["linear"]["train img/s"] == "640"
    html = (out / "index.html").read_text()
    assert "Ceiling: 200.0 GFLOP/s, a 2048x128 @ 128x512 matrix product" in html
    assert "(square 1024 product): 300.0 GFLOP/s, of which the baseline reaches 40% in training" in html
    assert "step_over_flops (1.1): NOT met; ceiling_fraction (0.6): met" in html


def test_plan_section_shows_the_cost_plan(tmp_path):
    out = build(tmp_path, fake_results(tmp_path / "results"), params_file(tmp_path))
    plan = {r["stage"]: r for r in rows(out, "plan")}
    assert list(plan) == ["prepare", "pretrain n12", "total"]
    assert plan["pretrain n12"]["train img/s per CPU process"] == "90–100 (given, given x FLOPs)"
    assert plan["pretrain n12"]["training FLOPs"] == "3.5 G" and plan["total"]["CPU process-hours"] == "1.5"
    assert plan["prepare"]["disk kept"] == "93.1 kB" and plan["total"]["wall time (1 CPU process)"] == "1.5 h"
    html = (out / "index.html").read_text()
    assert "Cost plan: images, FLOPs, device-hours and disk of every training stage" in html
    assert "Training rates: given: --img-per-s 100 for n12/linear per device." in html
    for ext in ("csv", "md", "tex"):
        assert (out / f"tables/plan.{ext}").stat().st_size > 0
    (tmp_path / "results/plan/plan.json").unlink()
    out = build(tmp_path, tmp_path / "results", params_file(tmp_path), "without")
    assert rows(out, "plan")[0]["stage"] == "not run"
    assert "The plan stage has not run." in (out / "index.html").read_text()


def test_report_without_bench_says_not_run(tmp_path):
    results = fake_results(tmp_path / "results")
    (results / "bench/metrics.json").unlink()
    out = build(tmp_path, results, params_file(tmp_path))
    assert rows(out, "bench")[0]["model"] == "not run"
    assert "The bench stage has not run." in (out / "index.html").read_text()


def test_tables_rows_means_stds_and_intervals(tmp_path):
    out = build(tmp_path, fake_results(tmp_path / "results"), params_file(tmp_path))
    main = rows(out, "main")
    assert [r["variant"] for r in main] == ["linear", "sne"]
    sne = ACC["sne"]
    mean, sd = sum(sne) / 3, stats.tstd(sne)
    low, high = stats.t.interval(0.95, 2, loc=mean, scale=stats.sem(sne))
    reproduced = [c for c in main[1] if c.startswith("reproduced")][0]
    assert main[1][reproduced] == f"{mean:.2f} ± {sd:.2f} (n=3)"
    assert main[1]["95% CI"] == f"[{low:.2f}, {high:.2f}]"
    diffs = [a - b for a, b in zip(ACC["sne"], ACC["linear"], strict=True)]
    dl, dh = stats.t.interval(0.95, 2, loc=sum(diffs) / 3, scale=stats.sem(diffs))
    assert main[1]["Δ vs linear, paired by seed [CI]"] == f"{sum(diffs) / 3:+.2f} [{dl:+.2f}, {dh:+.2f}]"
    transfer = rows(out, "transfer")
    assert transfer[0]["digits"].startswith(f"{sum(ACC['linear']) / 3 - 5:.2f} ± ")
    forensics = {r["reading"]: r["rounds to"] for r in rows(out, "forensics")}
    assert forensics == {"linear": "3.1M, 2.9M", "fsne": "2.9M"}
    verdicts = rows(out, "verdicts")
    assert len(verdicts) == 5 and {v["outcome"] for v in verdicts} == {"not run at this profile"}
    for ext in ("csv", "md", "tex"):
        assert (out / f"tables/assumptions.{ext}").stat().st_size > 0
    for name in ("accuracy_vs_params", "accuracy_vs_flops", "training_curves", "transfer", "qkv_similarity"):
        assert (out / f"figures/{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert b"<svg" in (out / f"figures/{name}.svg").read_bytes()
    html = (out / "index.html").read_text()
    assert (
        "Synthetic data" in html
        and "Reduced profile" in html
        and "http://" not in html.replace("http://www.w3.org", "")
    )


def test_rerun_is_byte_identical(tmp_path):
    results, params = fake_results(tmp_path / "results"), params_file(tmp_path)
    first, second = build(tmp_path, results, params, "a"), build(tmp_path, results, params, "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for f in files:
        assert (first / f).read_bytes() == (second / f).read_bytes(), f


def test_statistics_against_scipy():
    values = [1.0, 2.5, 4.0, 3.0]
    s = summary(values, 0.9)
    low, high = stats.t.interval(0.9, 3, loc=sum(values) / 4, scale=stats.sem(values))
    assert (s["n"], s["ci_low"], s["ci_high"]) == (4, pytest.approx(low), pytest.approx(high))
    assert summary([5.0], 0.95) == {"n": 1, "mean": 5.0, "std": None, "ci_low": None, "ci_high": None}
    d = paired({0: 3.0, 1: 5.0, 2: 9.0}, {0: 1.0, 1: 2.0, 3: 0.0}, 0.95)
    assert d["n"] == 2 and d["mean"] == pytest.approx(2.5)


CLAIM = Claim("c", "claim", "source", "pretrain", ("imagenet",), "N12", 69.9, 71.4, None, 224, 16, None)


@pytest.mark.parametrize(
    ("differences", "outcome"),
    [
        ({"sne": {"mean": 1.5, "ci_low": 0.5, "ci_high": 2.5}}, "reproduced"),
        ({"sne": {"mean": 0.3, "ci_low": 0.1, "ci_high": 0.6}}, "not reproduced"),  # significant, but too small
        ({"sne": {"mean": 1.5, "ci_low": -0.5, "ci_high": 3.5}}, "not reproduced"),  # interval includes zero
        ({"sne": {"mean": 1.0, "ci_low": None, "ci_high": None}}, "not reproduced"),  # one seed: no interval
        (
            {
                "sne": {"mean": 0.0, "ci_low": -1.0, "ci_high": 1.0},
                "fsne": {"mean": 1.4, "ci_low": 1.0, "ci_high": 1.8},
            },
            "reproduced",
        ),
    ],
)
def test_verdict_rule(differences, outcome):
    assert verdict(CLAIM, tested=True, differences=differences).outcome == outcome
    assert verdict(CLAIM, tested=False, differences=differences).outcome == "not run at this profile"


def test_missing_instance_reads_not_run(tmp_path):
    results = fake_results(tmp_path / "results", skip=(("sne", 0), ("sne", 1), ("sne", 2)))
    out = build(tmp_path, results, params_file(tmp_path))
    main = rows(out, "main")
    assert main[1]["params (M, this run)"] == "not run"
    assert "not run" in (out / "index.html").read_text()


def test_malformed_metrics_names_the_file(tmp_path):
    results = fake_results(tmp_path / "results")
    (results / "pretrain/n12-sne-1/record.json").write_text('{"profile": "embedded", "test_top1": 9')
    with pytest.raises(SystemExit, match="pretrain/n12-sne-1/record.json: malformed or truncated"):
        build(tmp_path, results, params_file(tmp_path))
    assert not (tmp_path / "reports").exists()


def test_other_profile_is_refused_naming_both(tmp_path):
    results = fake_results(tmp_path / "results")
    write_json(
        results / "finetune/n12-sne-digits-2/record.json",
        {**instance("paper", "sne", 2, "digits", stage="finetune"), "test_top1": 1.0},
    )
    with pytest.raises(
        SystemExit,
        match="sne-digits-2/record.json was written by profile 'paper', but params.yaml is profile 'embedded'",
    ):
        build(tmp_path, results, params_file(tmp_path))


def test_html_from_params_is_escaped(tmp_path):
    out = build(tmp_path, fake_results(tmp_path / "results"), params_file(tmp_path, qkv_norm="<b>bold</b>"))
    html = (out / "index.html").read_text()
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold</b>" not in html


def test_report_never_imports_torch(tmp_path):
    results, params = fake_results(tmp_path / "results"), params_file(tmp_path)
    code = (
        f"import sys; from tests.test_report import build; from pathlib import Path; "
        f"build(Path({str(tmp_path)!r}), Path({str(results)!r}), Path({str(params)!r}), 'sub'); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_broken_reference_file_names_it(tmp_path):
    results, params = fake_results(tmp_path / "results"), params_file(tmp_path)
    bad = tmp_path / "published.yaml"
    bad.write_text("claims:\n  - id: x\n")
    with pytest.raises(SystemExit, match=r"published.yaml: missing key\(s\) xcit"):
        build(tmp_path, results, params, published=bad)
    bad.write_text("claims:\n  - id: x\nxcit: {source: s, models: []}\n")
    with pytest.raises(SystemExit, match=r"published.yaml.claims\[0\]: missing key\(s\) claim, source, kind"):
        build(tmp_path, results, params, published=bad)
    bad.write_text("claims: []\nxcit: {source: s, models: []}\n")
    assert (build(tmp_path, results, params, published=bad) / "index.html").is_file()  # no claims still builds


def test_missing_reference_file_names_it(tmp_path):
    results, params = fake_results(tmp_path / "results"), params_file(tmp_path)
    with pytest.raises(SystemExit, match="nowhere.yaml: reference file not found"):
        build(tmp_path, results, params, published=tmp_path / "nowhere.yaml")
    assert not (tmp_path / "reports").exists()


def test_both_weights_accuracies_reach_the_report(tmp_path):
    """Runs that kept an EMA report both accuracies; the column says which one test_top1 is."""
    results = fake_results(tmp_path / "results")
    for seed, acc in zip(SEEDS, ACC["sne"], strict=True):
        path = results / f"pretrain/n12-sne-{seed}/record.json"
        metrics = json.loads(path.read_text())
        metrics.update(weights="raw", raw_test_top1=acc, ema_test_top1=acc + 1.0)
        write_json(path, metrics)
    main = rows(build(tmp_path, results, params_file(tmp_path)), "main")
    mean = sum(ACC["sne"]) / 3
    assert main[1]["raw / EMA weights' top-1"] == f"raw {mean:.2f}, EMA {mean + 1:.2f} (reported: raw)"
    assert main[0]["raw / EMA weights' top-1"] == "no EMA"


def test_a_result_file_of_another_instance_is_refused(tmp_path):
    """A metrics file copied from another backbone's (or variant's) folder names both."""
    results = fake_results(tmp_path / "results")
    path = results / "pretrain/n12-sne-1/record.json"
    metrics = json.loads(path.read_text())
    write_json(path, {**metrics, "backbone": "t12"})
    with pytest.raises(SystemExit, match="n12-sne-1/record.json: written for backbone 't12', but read as the result"):
        build(tmp_path, results, params_file(tmp_path))
    write_json(path, {**metrics, "variant": "linear"})
    with pytest.raises(SystemExit, match="written for variant 'linear', but read as the result of variant 'sne'"):
        build(tmp_path, results, params_file(tmp_path))


@pytest.mark.parametrize(
    ("path", "content", "message"),
    [
        (
            "pretrain/n12-sne-1/record.json",
            lambda m: json.dumps(m).replace('"test_top1": 93.0', '"test_top1": NaN'),
            "pretrain/n12-sne-1/record.json: holds NaN, not a finite number; re-run it: dvc repro --force "
            "pretrain@n12-sne-1",
        ),
        (
            "finetune/n12-linear-digits-0/record.json",
            lambda m: json.dumps(m).replace('"test_top1": 85.0', '"test_top1": Infinity'),
            "n12-linear-digits-0/record.json: holds Infinity, not a finite number",
        ),
        (
            "pretrain/n12-linear-2/record.json",
            lambda m: json.dumps({k: v for k, v in m.items() if k != "test_top1"}),
            "pretrain/n12-linear-2/record.json: missing key 'test_top1' (an accuracy in [0, 100] (percent)); re-run "
            "it: dvc repro --force pretrain@n12-linear-2",
        ),
        (
            "pretrain/n12-linear-0/record.json",
            lambda m: json.dumps({**m, "test_top1": "90.0"}),
            "n12-linear-0/record.json: test_top1 is '90.0', expected an accuracy in [0, 100] (percent)",
        ),
        (
            "pretrain/n12-linear-0/record.json",
            lambda m: json.dumps({**m, "seed": 1}),
            "n12-linear-0/record.json: written for seed 1, but read as the result of seed 0",
        ),
        ("pretrain/n12-linear-0/record.json", lambda m: "[1, 2]", "expected a JSON object, got list"),
        (
            "pretrain/n12-sne-0/provenance.json",
            lambda m: '{"stage": "pretrain", "par',
            "pretrain/n12-sne-0/provenance.json: malformed or truncated provenance file",
        ),
        (
            "pretrain/n12-sne-0/provenance.json",
            lambda m: json.dumps({**record("pretrain", "embedded"), "stage_instance": "pretrain@n12-sne-1"}),
            "n12-sne-0/provenance.json: the provenance of 'pretrain@n12-sne-1', read as that of 'pretrain@n12-sne-0'",
        ),
        (
            "flops/provenance.json",
            lambda m: json.dumps({"stage": "flops", "params": {}}),
            "flops/provenance.json: missing key 'packages' (an object); re-run it: dvc repro --force flops",
        ),
        (
            "pretrain/n12-sne-2/curves.csv",
            lambda m: "epoch,val_top1\n1,50.0\n2,nan\n",
            "n12-sne-2/curves.csv, line 3: val_top1 is nan, not a finite number",
        ),
        (
            "pretrain/n12-sne-2/curves.csv",
            lambda m: "epoch,val_loss\n1,50.0\n",
            "n12-sne-2/curves.csv: no column val_top1",
        ),
    ],
)
def test_a_bad_input_file_stops_the_report_naming_it(tmp_path, path, content, message):
    """NaN and infinities, missing keys, wrong types, truncated files and files of another instance: one line
    naming the file and the remedy, exit status 1, no report written."""
    results = fake_results(tmp_path / "results")
    target = results / path
    old = json.loads(target.read_text()) if target.suffix == ".json" else None
    target.write_text(content(old))
    with pytest.raises(SystemExit) as excinfo:
        build(tmp_path, results, params_file(tmp_path))
    assert message in str(excinfo.value) and str(excinfo.value).startswith("report: error: ")
    assert "\n" not in str(excinfo.value)
    assert not (tmp_path / "reports").exists()


def test_a_rehearsals_report_is_labelled_on_every_page_and_table(tmp_path):
    import yaml

    results = fake_results(tmp_path / "results")
    plain = build(tmp_path, results, params_file(tmp_path), out="plain")
    params = params_file(tmp_path)
    data = yaml.safe_load(params.read_text())
    data["rehearsal"] = {"of": "paper", "overrides": {"seeds": {"profile": [0, 1, 2], "rehearsal": [0, 1]}}}
    params.write_text(yaml.safe_dump(data))
    out = build(tmp_path, results, params, out="rehearsal")
    html = (out / "index.html").read_text()
    assert "<title>REHEARSAL" in html and "<code>seeds</code></td><td>[0, 1, 2]</td><td>[0, 1]</td>" in html
    sections = html.count("<h2>")
    assert html.count('<p class="rehearsal-label">REHEARSAL of profile paper') == sections
    for path in sorted((out / "tables").iterdir()):
        first = path.read_text().splitlines()[0]
        assert "REHEARSAL of profile paper" in first, path.name
    assert rows(plain, "main") == list(csv.DictReader((out / "tables/main.csv").read_text().splitlines()[1:]))
    assert "REHEARSAL" not in (plain / "index.html").read_text()
    for name in ("training_curves.png", "transfer.png"):  # each figure carries the label too
        assert (out / "figures" / name).read_bytes() != (plain / "figures" / name).read_bytes()
