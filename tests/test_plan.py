"""The cost plan (pipeline/stages/plan.py): its numbers from hand-computable cases and from the samplers the training
loop uses, the order in which it picks a training rate, bad input, rehearsal params, and the loader measurement."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from pipeline import config
from pipeline.config import ParamsError
from pipeline.planning import cost_tables, costs, rates, throughput
from pipeline.reporting import tables
from pipeline.stages import plan

from .tiny import ROOT, tiny_params, write_params

COMPUTE = ROOT / "references" / "compute.yaml"
PAPER = ROOT / "profiles" / "paper.yaml"


LOADER = {"per_core_img_per_s": 1000.0, "timm_per_core_img_per_s": 900.0, "ratio": 1000 / 900, "load_1min": [0.1, 0.1]}


def plan_of(params: Path, *, img_per_s: float | None = None, bench: Path | None = None, nodes: int = 1) -> dict:
    """The plan of ``params``, with one core's loader rate fixed at 100 img/s (no measurement)."""
    cfg = config.load_plan(params, COMPUTE)
    devices = costs.devices(cfg.params.launcher, cfg.params.device, nodes)
    rate = rates.resolve(cfg, img_per_s=img_per_s, bench=bench)
    return plan.run(cfg, devices=devices, rate=rate, measure=lambda augment, size: LOADER, host="test CPU")


def group(result: dict, stage: str, backbone: str = "n12") -> dict:
    return next(g for g in result["groups"] if (g["stage"], g["backbone"]) == (stage, backbone))


def flops(params: Path, variant: str, classes: int, backbone: str = "n12") -> int:
    cfg = config.load_plan(params, COMPUTE)
    return costs.forward_flops(cfg.nets[backbone, variant], classes)


def test_tiny_profile_by_hand(tmp_path):
    """Synthetic source: 3 classes x 40 images, 20 % val and 20 % test per class -> 72 / 24 / 24; batch 16, one
    process: 4 batches (64 images) an epoch, 2 epochs; every epoch the 24 validation images, then the 24 test images
    and 8 diagnostic ones. At --img-per-s 100 the baseline trains at 100 img/s and evaluates at 300."""
    params = write_params(tmp_path / "params.yaml", tiny_params())
    result = plan_of(params, img_per_s=100.0)
    pre = group(result, "pretrain")
    assert result["prepare"]["datasets"]["synthetic"] == {
        "train": 72, "val": 24, "test": 24, "classes": 3, "exact": True, "bytes": 120 * (3 * 16 * 16 + 8),
        "storage": "tensor",
    }  # fmt: skip
    assert (pre["runs"], pre["train_images"], pre["eval_images"]) == (2, 2 * 128, 2 * 80)
    f_linear, f_fsne = flops(params, "linear", 3), flops(params, "fsne", 3)
    assert pre["train_flops"] == 3 * 128 * (f_linear + f_fsne)
    assert pre["eval_flops"] == 80 * (f_linear + f_fsne)
    fsne_rate = 100.0 * f_linear / f_fsne  # --img-per-s is the baseline's; others by their FLOPs
    hours = (128 / 100 + 80 / 300) / 3600 + (128 / fsne_rate + 80 / (3 * fsne_rate)) / 3600
    assert pre["device_hours"] == pytest.approx(hours, rel=1e-3)
    assert pre["wall_hours"] == pytest.approx(hours, rel=1e-3)  # one process
    assert pre["rate"]["kinds"] == ["given", "given x FLOPs"]
    assert result["total"]["train_images"] == pre["train_images"] + group(result, "finetune")["train_images"]
    assert result["devices"] == {"kind": "cpu", "unit": "CPU process", "per_node": 1, "nodes": 1, "total": 1}
    assert result["input"] == [{"stage": "pretrain", "mode": "batched"}, {"stage": "finetune", "mode": "batched"}]


EPOCHS = [(72, 16, 1, 1), (1000, 64, 4, 1), (1000, 64, 4, 3), (300, 8, 8, 3), (200, 4, 2, 3), (5000, 512, 8, 3)]


@pytest.mark.parametrize(("n", "batch", "world", "repeats"), EPOCHS)
def test_epoch_images_are_what_the_samplers_draw(n, batch, world, repeats):
    """An epoch as the training loop draws it: each rank's sampler (timm's RepeatAugSampler under repeated
    augmentation), in whole per-rank batches (drop_last), over every rank."""
    from pipeline.data.samples import EpochSampler

    per_rank = len(EpochSampler(n, train=True, seed=0, rank=0, world_size=world, repeats=repeats))
    drawn = per_rank // (batch // world) * (batch // world) * world
    assert costs.epoch_images(n, batch, world, repeats) == drawn


def test_the_embedded_plan_trains_as_many_images_as_the_committed_runs_did():
    """The committed pretraining runs of the embedded profile recorded the images they trained on."""
    result = plan_of(ROOT / "params.yaml", bench=ROOT / "results/bench/metrics.json")
    pre = group(result, "pretrain")
    records = sorted((ROOT / "results/pretrain").glob("*/provenance.json"))
    assert records
    timings = [json.loads(record.read_text())["timing"] for record in records]
    whole = [t for t in timings if not t.get("resumed_from_epoch")]  # a resumed run trained only its last epochs
    assert whole
    for timing in whole:
        assert timing["train_images"] * pre["runs"] == pre["train_images"]
    assert pre["rate"]["kinds"] == ["measured"] and pre["device_hours"] > 0


def test_paper_profile_uses_the_cited_timm_figures_and_eight_gpus():
    result = plan_of(PAPER)
    assert result["devices"]["total"] == 8 and result["devices"]["unit"] == "GPU"
    pre = group(result, "pretrain")
    assert pre["runs"] == 12 and group(result, "finetune", "s12")["runs"] == 48
    assert pre["rate"]["max"] == pytest.approx(1969.78, rel=1e-3)  # the linear N12/16 is timm's xcit_nano_12_p16_224
    assert "timm" in pre["rate"]["kinds"]
    assert any("line 73" in s and "rtx3090.csv" in s for s in result["rate_sources"])
    # 1,268,355 training images (1,281,167 less 1 % val), RepeatAugSampler on 8 ranks, batch 128 a rank, 400 epochs
    per_epoch = 1268355 // 256 * 256 // 8 // 128 * 128 * 8
    assert pre["train_images"] == 12 * 400 * per_epoch
    assert group(result, "pretrain", "s12")["wall_hours"] > group(result, "pretrain", "t12")["wall_hours"]
    assert result["prepare"]["datasets"]["imagenet"]["exact"] is False


def test_two_nodes_halve_the_wall_time():
    one, two = plan_of(PAPER, img_per_s=1000.0), plan_of(PAPER, img_per_s=1000.0, nodes=2)
    assert two["devices"]["total"] == 16
    assert two["total"]["wall_hours"] == pytest.approx(one["total"]["wall_hours"] / 2, rel=0.02)


def fake_bench(params: Path, *, profile: str = "embedded", device: str = "cpu", scale: float = 1.0) -> dict:
    """A bench metrics file as pipeline.stages.bench writes it for the tiny profile (``scale``: another model's
    FLOPs)."""
    models = {}
    for v, rate in (("linear", 50.0), ("fsne", 40.0)):
        gflops = 2 * flops(params, v, 3) * scale / 1e9
        models[v] = {"forward_gflops_per_image": float(f"{gflops:.4g}"), "train_img_per_s": rate,
                     "eval_img_per_s": 3.5 * rate}  # fmt: skip
    return {"profile": profile, "device": device, "dtype": "float32", "batch_size": 16, "img_size": 16,
            "baseline": "linear", "models": models}  # fmt: skip


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_rate_order_bench_then_reference_then_given(tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_params())
    bench = write_json(tmp_path / "bench/metrics.json", fake_bench(params))
    cfg = config.load_plan(params, COMPUTE)
    measured = rates.resolve(cfg, img_per_s=None, bench=bench)
    assert measured(("n12"), "fsne", 3) == rates.Rate(40.0, 140.0, "measured")
    assert measured("n12", "fsne", 10).kind == "measured x FLOPs"  # the 10-class head of digits
    assert "measured: the bench stage" in measured.sources[0]
    given = rates.resolve(cfg, img_per_s=7.0, bench=bench)  # --img-per-s wins over a matching bench
    assert given("n12", "linear", 3) == rates.Rate(7.0, 21.0, "given")

    # On another device: ignored; a CPU profile then has no rate, a CUDA one cites timm's figure.
    other = write_json(tmp_path / "other/metrics.json", fake_bench(params, device="cuda:0"))
    none = rates.resolve(cfg, img_per_s=None, bench=other)
    assert none("n12", "linear", 3) is None and "not for profile 'embedded' on cpu: not used" in none.ignored[0]
    gpu = write_params(tmp_path / "gpu.yaml", tiny_params(device="cuda"))
    cited = rates.resolve(config.load_plan(gpu, COMPUTE), img_per_s=None, bench=bench)
    assert "on cpu, not for profile 'embedded' on cuda" in cited.ignored[0]
    timm = config.network("qkv_xcit_nano_12_p16", "linear", {"qkv_embed": "linear"}, img_size=224, where="t")
    expected = 1969.78 * costs.forward_flops(timm, 1000) / flops(gpu, "linear", 3)  # the nearest in FLOPs
    assert cited("n12", "linear", 3) == rates.Rate(pytest.approx(expected), pytest.approx(3 * expected), "timm x FLOPs")
    assert "xcit_nano_12_p16_224 1,969.78 img/s (batch 512, line 73)" in cited.sources[0]

    # Measured on another model (its FLOPs differ): ignored.
    wrong = write_json(tmp_path / "wrong/metrics.json", fake_bench(params, scale=1.5))
    skipped = rates.resolve(cfg, img_per_s=None, bench=wrong)
    assert skipped("n12", "linear", 3) is None and "not on backbones.n12 as params define it" in skipped.ignored[0]


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_a_rate_that_is_not_positive_is_one_line_and_a_failure(tmp_path, capsys, value):
    params = write_params(tmp_path / "params.yaml", tiny_params())
    with pytest.raises(SystemExit) as exit_:
        plan.main(["--params", str(params), "--img-per-s", value, "--json", str(tmp_path / "plan.json")])
    expected = f"plan: error: --img-per-s: expected a positive number of images/s per device, got {value}"
    assert exit_.value.code == expected
    assert not (tmp_path / "plan.json").exists()


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_a_measured_folder_that_is_missing_or_holds_no_record_is_one_line(tmp_path, kind):
    params = write_params(tmp_path / "params.yaml", tiny_params())
    folder = tmp_path / "results"
    if kind == "empty":
        folder.mkdir()
    argv = ["--params", str(params), "--img-per-s", "100", "--json", str(tmp_path / "plan.json")]
    with pytest.raises(SystemExit) as exit_:
        plan.main([*argv, "--measured", str(folder)])
    said = "no such folder" if kind == "missing" else "holds no provenance.json"
    assert exit_.value.code == (
        f"plan: error: --measured {folder}: {said}; give folders of training results, e.g. --measured results/pretrain"
    )
    assert not (tmp_path / "plan.json").exists()


def test_missing_roots_still_plan_and_write_json_and_table(tmp_path, monkeypatch, capsys):
    data = yaml.safe_load(PAPER.read_text())
    for entry in data["datasets"].values():
        entry["root"] = str(tmp_path / "nowhere")
    params = write_params(tmp_path / "paper.yaml", data)
    rates = {"per_core_img_per_s": 250.0, "timm_per_core_img_per_s": 200.0, "ratio": 1.25, "load_1min": [0.5, 0.6]}
    monkeypatch.setattr(throughput, "loader_rates", lambda augment, size, images: rates)
    out = tmp_path / "out"
    plan.main(["--params", str(params), "--json", str(out / "plan.json"), "--table", str(out / "plan.md")])
    written = json.loads((out / "plan.json").read_text())
    n12 = written["input"][0]["backbones"]["n12"]
    assert written["profile"] == "paper" and n12["per_core_img_per_s"] == 250.0 and n12["ratio"] == 1.25
    assert n12["cores_per_device"] == 16 and n12["loader_cores"] == 15 and n12["loader_img_per_s"] == 3750.0
    assert n12["cores_needed"] == pytest.approx(n12["device_img_per_s"] / 250.0 + 1, rel=1e-3)
    assert n12["effective_img_per_s"] == n12["device_img_per_s"] < 3750.0  # a 3090 is fed by 15 cores at this rate
    printed = capsys.readouterr().out
    assert "| pretrain n12 |" in printed and "runtime.workers = 15 per rank" in printed
    assert "250 img/s at 224 px (timm's stock path 200: 1.25x)" in printed
    assert (out / "plan.md").read_text().startswith("Cost plan:")


def test_a_device_faster_than_its_loader_cores_is_planned_at_the_loaders_rate(tmp_path, monkeypatch, capsys):
    """A GPU 3x a 3090 on 16 cores per GPU: the loader's 15 cores x 250 img/s limit N12; its hours use that rate."""
    data = yaml.safe_load(PAPER.read_text())
    params = write_params(tmp_path / "paper.yaml", data)
    rates = {"per_core_img_per_s": 250.0, "timm_per_core_img_per_s": 200.0, "ratio": 1.25, "load_1min": [0.5, 0.6]}
    monkeypatch.setattr(throughput, "loader_rates", lambda augment, size, images: rates)
    out = tmp_path / "out"
    plan.main(["--params", str(params), "--json", str(out / "plan.json"), "--img-per-s", "6000", "--gpu", "H100"])
    written = json.loads((out / "plan.json").read_text())
    n12 = written["input"][0]["backbones"]["n12"]
    assert n12["device_img_per_s"] == 6000.0 and n12["effective_img_per_s"] == 3750.0
    group = next(g for g in written["groups"] if (g["stage"], g["backbone"]) == ("pretrain", "n12"))
    assert group["rate"]["max"] == 3750.0 and group["rate"]["loader_bound"]
    at_loader = group["train_images"] / 3750 / 3600  # and evaluation on top
    assert at_loader < group["device_hours"] < 1.1 * at_loader and group["device_hours"] > 1.5 * at_loader * 3750 / 6000
    printed = capsys.readouterr().out
    assert "LOADER-BOUND" in printed and "needs 25.0 cores per GPU" in printed and "one H100" in printed


def rehearsal_of_paper(tmp_path: Path) -> Path:
    """The paper profile shrunk as a rehearsal shrinks it (size and data knobs), with its record of each."""
    real = yaml.safe_load(PAPER.read_text())
    data = copy.deepcopy(real)
    overrides = {}
    knobs = {"device": "cpu", "launcher": "python", "seeds": [0], "datasets.imagenet.root": str(tmp_path / "standins")}
    for stage in ("pretrain", "finetune"):
        knobs.update({f"{stage}.recipe.epochs": 2, f"{stage}.recipe.warmup_epochs": 1})
    for key, value in knobs.items():
        overrides[key] = {"profile": config.get_key(real, key), "rehearsal": value}
        config.put_key(data, key, value)
    data["backbones"] = {"n12": real["backbones"]["n12"]}
    overrides["backbones"] = {"profile": real["backbones"], "rehearsal": data["backbones"]}
    data["rehearsal"] = {"of": "paper", "overrides": overrides}
    return write_params(tmp_path / "rehearsal.yaml", data)


def test_rehearsal_params_plan_the_real_profile(tmp_path):
    result = plan_of(rehearsal_of_paper(tmp_path))
    assert result["rehearsal"] == {"of": "paper", "overrides": 9}
    assert result["devices"]["total"] == 8 and result["devices"]["kind"] == "cuda"
    assert [g["backbone"] for g in result["groups"]] == ["n12", "t12", "s12", "n12", "t12", "s12"]
    assert group(result, "pretrain")["runs"] == 12 and group(result, "pretrain")["epochs"] == 400
    assert result["total"] == plan_of(PAPER)["total"]
    assert "real profile of a rehearsal: 9 overrides undone" in cost_tables.plan(result).title


def test_a_rehearsal_record_naming_no_key_of_the_profile_is_refused(tmp_path):
    data = yaml.safe_load(rehearsal_of_paper(tmp_path).read_text())
    data["rehearsal"]["overrides"]["datasets.nope.root"] = {"profile": "x", "rehearsal": "y"}  # a knob, no such key
    params = write_params(tmp_path / "bad.yaml", data)
    message = "rehearsal.overrides: datasets.nope is not a key of the profile it rehearses; re-create the rehearsal"
    with pytest.raises(ParamsError, match=message):
        config.load_plan(params, COMPUTE)


def test_from_data_parses_a_mapping_and_names_where_it_came_from():
    data = yaml.safe_load(PAPER.read_text())
    assert config.from_data(data, "paper (test)").profile == "paper"
    data["plan"] = {"loader_images": 0}
    with pytest.raises(ParamsError, match=r"^plan.loader_images: expected a positive integer, got 0$"):
        config.from_data(data, "paper (test)")
    del data["plan"]
    with pytest.raises(ParamsError, match=r"^paper \(test\): missing section\(s\) plan$"):
        config.from_data(data, "paper (test)")


def test_compute_reference_file_is_checked(tmp_path):
    data = yaml.safe_load(COMPUTE.read_text())
    del data["datasets"]["stl10"]
    bad = tmp_path / "compute.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match=r"datasets: no entry for 'stl10'; give its images per split and its source"):
        config.load_compute(bad)
    data = yaml.safe_load(COMPUTE.read_text())
    data["datasets"]["digits"]["class_sizes"] = [1, 2]
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match=r"datasets.digits.class_sizes: expected 10 sizes adding up to 1797"):
        config.load_compute(bad)


def test_digits_splits_exactly_as_the_prepare_stage_did():
    """The committed prepare metrics of the embedded profile's bundled datasets, from sizes alone."""
    cfg = config.load_plan(ROOT / "params.yaml", COMPUTE)
    for name in cfg.params.datasets:
        counts = json.loads((ROOT / f"results/prepare/{name}.json").read_text())["counts"]
        splits = cfg.splits(name)
        assert (splits.train, splits.val, splits.test) == (counts["train"], counts["val"], counts["test"]), name


def test_launchers_and_their_devices():
    assert costs.devices("python", "cuda", 4).total == 1
    assert costs.devices("python -m pipeline.training.launch --nproc-per-node 8", "cuda", 2).total == 16
    assert costs.devices("torchrun --nproc_per_node=4", "cuda").total == 4
    with pytest.raises(ParamsError, match="--nodes: expected a positive number of nodes, got 0"):
        costs.devices("python", "cuda", 0)


def test_the_table_renders_in_every_format_and_says_not_run_without_a_plan(tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_params())
    table = cost_tables.plan(plan_of(params, img_per_s=100.0))
    assert [r[0] for r in table.rows] == ["prepare", "pretrain n12", "finetune n12", "total"]
    assert set(tables.files(table)) == {f"tables/plan.{ext}" for ext in ("csv", "md", "tex")}
    assert "given: --img-per-s 100 for n12/linear per device" in table.note
    assert cost_tables.plan(None).rows == [["not run", ""]]


def test_both_loader_paths_are_measured_side_by_side_on_a_few_jpegs():
    augment = config.load(PAPER).pretrain.recipe.augment
    rates = throughput.loader_rates(augment, 224, images=3, rounds=2)
    assert all(rates[k] > 0 and math.isfinite(rates[k]) for k in ("per_core_img_per_s", "timm_per_core_img_per_s"))
    assert rates["ratio"] == rates["per_core_img_per_s"] / rates["timm_per_core_img_per_s"]
    assert len(rates["load_1min"]) == 2 and rates["rounds"] == 2


def test_peak_memory_is_read_from_training_records(tmp_path):
    from pipeline.training.runner import peak_rss_mib

    assert peak_rss_mib() > 0
    assert throughput.peak_memory([]) is None
    record = {"stage_instance": "pretrain@n12-linear-0", "peak_rss_mib": 812.4, "world_size": 1,
              "params": {"profile": "embedded", "runtime": {"workers": 0}},
              "hardware": {"cpu": "test CPU"}}  # fmt: skip
    write_json(tmp_path / "n12-linear-0/provenance.json", record)
    write_json(tmp_path / "n12-sne-0/provenance.json", {**record, "peak_rss_mib": 700.0, "stage_instance": "x"})
    found = throughput.peak_memory([tmp_path])
    assert found["peak_rss_mib"] == 812.4 and found["instance"] == "pretrain@n12-linear-0"
    assert "812 MiB, measured in pretrain@n12-linear-0 (profile embedded, test CPU" in cost_tables._memory(found)


def test_a_loader_rate_taken_on_a_busy_machine_says_so():
    entry = {"stage": "pretrain", "mode": "timm", "decodes_jpeg": True, "measured_on": "test CPU, 8 stand-in JPEGs"}
    x = {"img_size": 224, "per_core_img_per_s": 96.0, "timm_per_core_img_per_s": 95.0, "ratio": 1.01,
         "load_1min": [1.85, 1.95], "cpus": 2, "device_img_per_s": None, "cores_per_device": 12}  # fmt: skip
    busy = cost_tables._input({**entry, "backbones": {"n12": x}}, "GPU")
    assert "THE MACHINE WAS BUSY (load 1.95 on 2 CPUs, less than a core free)" in busy
    idle = cost_tables._input({**entry, "backbones": {"n12": {**x, "load_1min": [1.15, 1.14]}}}, "GPU")
    assert "BUSY" not in idle and "1-min load 1.15 then 1.14" in idle
