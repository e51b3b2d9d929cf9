"""The bench stage on a tiny profile: what it measures and how, its table, its params, the audit's ratios."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from pipeline import config
from pipeline.config import Dataset
from pipeline.outputs import write_outputs
from pipeline.review import compare
from pipeline.stages import bench

from .tiny import tiny_params, write_params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from pipeline.stages import prepare

    entry = tiny_params()["datasets"]["synthetic"]
    files, _ = prepare.run("synthetic", Dataset(**entry))
    out = tmp_path_factory.mktemp("prepared") / "synthetic"
    write_outputs({out / k: v for k, v in files.items()})
    return out


def run_bench(tmp_path: Path, prepared: Path, **bench_updates) -> tuple[dict, list[dict], str]:
    params = tiny_params(bench=bench_updates)
    path = write_params(tmp_path / "params.yaml", params)
    out = tmp_path / "bench"
    bench.main(
        [
            "--params",
            str(path),
            "--data",
            str(prepared),
            "--metrics",
            str(out / "metrics.json"),
            "--times",
            str(out / "times.csv"),
            "--provenance",
            str(out / "provenance.json"),
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "times.csv").read_text().splitlines()))
    return metrics, rows, (out / "provenance.json").read_text()


def test_bench_measures_every_model_interleaved(tmp_path, prepared, capsys):
    metrics, rows, prov = run_bench(tmp_path, prepared, variants=["linear", "sne", "fsne"], rounds=3)
    assert metrics["profile"] == "embedded" and metrics["measured"] is True
    assert metrics["order"] == ["linear", "sne", "fsne"] and set(metrics["models"]) == set(metrics["order"])
    # Interleaved: every round times every model once, each round starting at a different model.
    trains = [r for r in rows if r["kind"] == "train"]
    assert len(trains) == 3 * 3 and len([r for r in rows if r["kind"] == "ceiling"]) == 3
    firsts = [next(r["model"] for r in trains if r["round"] == str(i)) for i in range(3)]
    assert firsts == ["linear", "sne", "fsne"]
    # Ratios are consistent with the timings and with the closed-form FLOP counts.
    from pipeline.training.model import forward_flops

    nets = {n.variant: n for n in config.load_bench(tmp_path / "params.yaml").nets}  # as run_bench wrote it
    base_flops = forward_flops(nets["linear"], 3)
    for name, m in metrics["models"].items():
        median = sorted(float(r["seconds"]) for r in trains if r["model"] == name)[1]
        assert m["train_step_ms"] == pytest.approx(1e3 * median, rel=1e-3)
        assert m["train_img_per_s"] == pytest.approx(16 / median, rel=1e-3)
        flops = forward_flops(nets[name], 3)
        assert m["flop_ratio"] == pytest.approx(flops / base_flops, rel=1e-3)
        assert m["step_over_flop_ratio"] == pytest.approx(m["step_time_ratio"] / m["flop_ratio"], rel=2e-3)
        assert m["train_gflop_per_s"] == pytest.approx(6 * flops * m["train_img_per_s"] / 1e9, rel=2e-3)
        assert (
            0
            < m["train_ceiling_fraction"]
            == pytest.approx(m["train_gflop_per_s"] / metrics["ceiling"]["gflop_per_s"], rel=2e-3)
        )
    assert metrics["models"]["linear"]["step_time_ratio"] == 1.0
    # The ceiling's shape is the MLP's first layer over the batch's tokens: 16 images x (16/4)^2 tokens, 32 -> 128.
    assert metrics["ceiling"]["shape"] == [16 * 16, 32, 128]
    assert metrics["loader"]["img_per_s"] > 0 and metrics["loader"]["mode"] == "batched"
    assert set(metrics["targets"]) == {"step_over_flops", "ceiling_fraction", "loader_over_train"}
    assert all(isinstance(t["met"], bool) for t in metrics["targets"].values())
    assert '"stage": "bench"' in prov
    out = capsys.readouterr().out
    assert "step / FLOP ratio" in out and "Ceiling:" in out and "ceiling_fraction (0.6):" in out


def test_bench_runs_timms_own_xcit_beside_the_baseline(tmp_path, prepared):
    params = tiny_params(
        model={"patch_size": 8, "img_size": 16},
        bench={"variants": ["linear"], "reference": "xcit_nano_12_p8_224", "rounds": 1, "warmup": 0},
    )
    path = write_params(tmp_path / "params.yaml", params)
    metrics, rows = bench.measure(config.load_bench(path), prepared)
    assert metrics["order"] == ["linear", "xcit_nano_12_p8_224"]
    assert metrics["models"]["xcit_nano_12_p8_224"]["flop_ratio"] == 1.0
    assert "not_slower_than_timm" in metrics["targets"]
    assert {r["model"] for r in rows} == {"linear", "xcit_nano_12_p8_224", "matmul"}


@pytest.mark.parametrize(
    "updates, message",
    [
        ({"baseline": "psne"}, "bench.baseline: 'psne' is not in bench.variants"),
        ({"variants": ["linear", "nope"]}, "bench.variants: unknown variant 'nope'"),
        ({"rounds": 0}, "bench.rounds: expected a positive integer, got 0"),
        ({"warmup": -1}, "bench.warmup: must not be negative"),
        ({"batch_size": "16"}, "bench.batch_size: expected an integer, got '16'"),
        ({"loader_workers": -1}, "bench.loader_workers: must not be negative, got -1"),
        ({"targets": {"step_over_flops": 0.0, "ceiling_fraction": 0.6, "loader_over_train": 5.0}}, "bench.targets"),
        ({"speed": 1}, "bench: unknown key(s) speed"),
    ],
)
def test_bench_bad_params(tmp_path, prepared, updates, message):
    with pytest.raises(SystemExit) as exc:
        run_bench(tmp_path, prepared, **updates)
    assert message in str(exc.value)
    assert not (tmp_path / "bench").exists()  # nothing half-written


def test_bench_reference_without_the_models_stem_is_refused(tmp_path, prepared):
    with pytest.raises(SystemExit) as exc:
        run_bench(tmp_path, prepared, variants=["linear"], reference="xcit_nano_12_p8_224", rounds=1)
    assert "bench.reference: timm's XCiT has no patch-4 stem (backbones.n12.patch_size)" in str(exc.value)
    assert not (tmp_path / "bench").exists()


def test_bench_reference_that_is_not_the_baseline_is_refused(tmp_path, prepared):
    params = tiny_params(
        model={"patch_size": 8, "img_size": 16},
        bench={"variants": ["linear"], "reference": "deit_tiny_patch16_224", "rounds": 1},
    )
    path = write_params(tmp_path / "params.yaml", params)
    expected = r"bench.reference: deit_tiny_patch16_224 is not the architecture of the baseline 'linear' \(Error"
    with pytest.raises(ValueError, match=expected):
        bench.measure(config.load_bench(path), prepared)


def test_bench_unknown_reference_is_refused(tmp_path, prepared):
    params = tiny_params(
        model={"patch_size": 8, "img_size": 16}, bench={"variants": ["linear"], "reference": "no_such_model"}
    )
    path = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ValueError, match="bench.reference: Unknown model \\(no_such_model\\)"):
        bench.measure(config.load_bench(path), prepared)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_cuda_without_a_gpu_is_a_clear_error(tmp_path, prepared):
    path = write_params(tmp_path / "params.yaml", tiny_params(device="cuda"))
    with pytest.raises(ValueError) as exc:
        bench.measure(config.load_bench(path), prepared)
    assert "device: 'cuda' asked for, but torch" in str(exc.value) and "sees no CUDA device here" in str(exc.value)


def test_audit_compares_a_measurement_by_its_ratios():
    old = {
        "measured": True,
        "models": {"linear": {"train_step_ms": 100.0, "step_time_ratio": 1.0}, "sne": {"step_time_ratio": 1.2}},
        "loader": {"over_train": 40.0},
    }
    slower_machine = json.loads(json.dumps(old))
    slower_machine["models"]["linear"]["train_step_ms"] = 250.0  # absolute timings are not judged
    slower_machine["models"]["sne"]["step_time_ratio"] = 1.3
    beyond, compared = compare.compare_measured(old, slower_machine, 0.25)
    assert beyond == [] and len(compared) == 3
    slower_machine["models"]["sne"]["step_time_ratio"] = 2.0
    beyond, _ = compare.compare_measured(old, slower_machine, 0.25)
    assert beyond == ["models.sne.step_time_ratio: 1.2 -> 2 (+66.7%)"]
    del slower_machine["loader"]
    beyond, _ = compare.compare_measured(old, slower_machine, 0.25)
    assert "loader.over_train: 40.0 -> <missing>" in beyond


def test_the_timm_paths_loader_is_measured_per_core_beside_timms_stock_path(tmp_path, prepared, capsys):
    """One measurement of the loader: the bench takes the plan's (both paths per core, side by side, load recorded),
    on the prepared dataset's own images, and the plan of the same profile reuses it instead of measuring again."""
    import copy

    from pipeline.stages import plan

    params = tiny_params(bench={"rounds": 1, "warmup": 1, "loader_batches": 2, "loader_workers": 3})
    params["pretrain"] = copy.deepcopy(params["pretrain"])
    params["pretrain"]["recipe"]["augment"].update(mode="timm", auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
                                                   re_mode="pixel")  # fmt: skip
    path = write_params(tmp_path / "params.yaml", params)
    out = tmp_path / "bench"
    files = ["--metrics", out / "metrics.json", "--times", out / "times.csv", "--provenance", out / "prov.json"]
    bench.main(["--params", str(path), "--data", str(prepared), *map(str, files)])
    loader = json.loads((out / "metrics.json").read_text())["loader"]
    assert loader["mode"] == "timm" and loader["workers"] == 3 and loader["images"] == 2 * 16
    assert loader["img_per_s"] == pytest.approx(3 * loader["per_core_img_per_s"], rel=1e-3)
    assert loader["ratio"] == pytest.approx(loader["per_core_img_per_s"] / loader["timm_per_core_img_per_s"], rel=1e-3)
    assert len(loader["load_1min"]) == 2
    assert "per CPU core x 3 workers; timm's stock path" in capsys.readouterr().out
    p = config.load(path)
    taken = plan._bench_loader(out / "metrics.json", p, p.pretrain.recipe.augment, 16)
    assert taken["per_core_img_per_s"] == loader["per_core_img_per_s"] and "the bench stage" in taken["measured_on"]
    assert plan._bench_loader(out / "metrics.json", p, p.pretrain.recipe.augment, 32) is None  # another size
