"""The rehearsal of a GPU profile (pipeline/review/rehearsal.py, pipeline/review/rehearse.py): what it may change, what
it refuses, what it checks after the run. The whole rehearsals run in .ci/run (`make rehearse`); the fault test here
runs one up to the stage that must fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline import config
from pipeline.config import ParamsError, get_key, is_knob
from pipeline.review import rehearsal, rehearse

ROOT = Path(__file__).resolve().parents[1]


def _profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "profiles" / f"{name}.yaml").read_text())


def _derive(name: str, sets: dict | None = None, cores: int = 2):
    profile = _profile(name)
    roots = {n: Path("/stand-ins") / n for n in profile["datasets"]}
    return profile, *rehearsal.derive(profile, roots, sets or {}, cores)


@pytest.mark.parametrize("name", ["paper", "cifar"])
def test_a_rehearsal_changes_size_and_data_knobs_only_and_records_each(name, tmp_path):
    profile, params, overrides = _derive(name)
    assert overrides and all(is_knob(k) for k in overrides)
    for key, pair in overrides.items():
        assert get_key(params, key) == pair["rehearsal"] != pair["profile"]
    # every key the overrides do not name is the profile's: the recipe components, models, sizes, statistics
    restored = config.real_profile(params)
    restored.pop("rehearsal"), profile.pop("rehearsal")
    for dataset, entry in restored["datasets"].items():  # a key the profile left to its default comes back explicit
        if "checksums" not in profile["datasets"][dataset]:
            assert entry.pop("checksums", True) is True
    assert restored == profile
    assert params["pretrain"]["recipe"]["augment"] == profile["pretrain"]["recipe"]["augment"]
    assert params["backbones"] == profile["backbones"] and params["variants"] == profile["variants"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    loaded = config.load(path)  # a valid params file, through every stage loader
    config.instances(path)
    assert loaded.rehearsal.of == name and loaded.device == "cpu"


def test_the_paper_rehearsal_keeps_what_exercises_each_path():
    profile, params, overrides = _derive("paper")
    assert params["launcher"] == "python -m pipeline.training.launch --nproc-per-node 2"
    assert params["seeds"] == [0, 1]  # two seeds: intervals and verdicts are computed
    assert params["pretrain"]["variants"] == ["linear", "sne"]
    assert params["bench"]["variants"] == profile["bench"]["variants"]  # every embedding still trains a step
    assert list(params["backbones"]) == ["n12", "t12", "s12"]  # every claim's backbone
    assert params["runtime"]["threads"] == 1 and params["runtime"]["workers"] == 2
    assert params["datasets"]["cifar10"]["checksums"] is False
    assert "datasets.stanford_cars.checksums" not in overrides  # Stanford Cars has no md5 list
    assert overrides["pretrain.recipe.epochs"] == {"profile": 400, "rehearsal": 2}


def test_the_cifar_rehearsal_keeps_its_single_process_launcher():
    _, params, overrides = _derive("cifar", cores=8)
    assert params["launcher"] == "python" and "launcher" not in overrides
    assert params["runtime"]["threads"] == 4  # 8 cores over 2 processes' worth


def test_extra_overrides_must_be_size_knobs():
    assert rehearsal.parse_sets(["pretrain.recipe.epochs=3", "seeds=[5]"]) == {
        "pretrain.recipe.epochs": 3,
        "seeds": [5],
    }
    for bad in ("pretrain.recipe.lr=0.1", "pretrain.recipe.augment.re_prob=0", "datasets.cifar10.root=/x"):
        with pytest.raises(ParamsError, match="not a size knob"):
            rehearsal.parse_sets([bad])
    with pytest.raises(ParamsError, match="expected key=value"):
        rehearsal.parse_sets(["epochs"])
    _, params, overrides = _derive("paper", rehearsal.parse_sets(["pretrain.recipe.epochs=3"]))
    assert params["pretrain"]["recipe"]["epochs"] == 3 and overrides["pretrain.recipe.epochs"]["rehearsal"] == 3


def test_a_params_file_whose_rehearsal_changed_another_key_is_refused(tmp_path):
    _, params, _ = _derive("paper")
    params["rehearsal"]["overrides"]["pretrain.recipe.lr"] = {"profile": 5.0e-4, "rehearsal": 1.0}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(ParamsError, match=r"rehearsal\.overrides\.pretrain\.recipe\.lr: not a size or data knob"):
        config.load(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["embedded"], "needs no rehearsal: `make repro` runs it whole"),
        (["nosuch"], "unknown profile 'nosuch'; profiles to rehearse: cifar, paper"),
        (["paper", "--set", "pretrain.recipe.lr=1.0"], "--set pretrain.recipe.lr: not a size knob"),
        (["paper", "--set", "launcher=touch owned"], "--set launcher: the rehearsal sets it itself"),
        (["paper", "--set", "device=cuda"], "--set device: the rehearsal sets it itself"),
        (["paper", "--set", "seeds=[0, 1"], "--set 'seeds=[0, 1': its value is not valid YAML ("),
        (["paper", "--set", "bench.rounds=a: b: c"], "its value is not valid YAML"),
        (
            ["paper", "--set", "bench.rounds=3", "--set", "runtime.nosuch=1"],
            "profile 'paper' has no key runtime.nosuch",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path, capsys):
    workdir = tmp_path / "work"
    with pytest.raises(SystemExit) as exit_:
        rehearse.main([*args, "--workdir", str(workdir), "--profiles", str(ROOT / "profiles"), "--repo", str(ROOT)])
    assert message in str(exit_.value.code) and str(exit_.value.code).startswith("rehearse: error: ")
    assert "\n" not in str(exit_.value.code)
    assert not workdir.exists()


def test_a_folder_that_is_not_a_rehearsal_is_never_replaced(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(SystemExit, match="exists and is not a rehearsal's folder"):
        rehearse.main(["paper", "--workdir", str(tmp_path), "--profiles", str(ROOT / "profiles"), "--repo", str(ROOT)])
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_nan_and_infinite_numbers_are_found_wherever_they_are(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.json").write_text(json.dumps({"top1": 50.0, "curve": [{"loss": float("nan")}]}))
    (tmp_path / "curves.csv").write_text("# REHEARSAL of profile paper\nepoch,loss\n1,0.5\n2,inf\n")
    (tmp_path / "ok.json").write_text(json.dumps({"x": 1.5, "y": None}))
    found = rehearsal.bad_numbers(tmp_path)
    assert found == [
        f"{tmp_path / 'a' / 'metrics.json'}: .curve[0].loss = nan",
        f"{tmp_path / 'curves.csv'} row 2: loss = inf",
    ]


def test_the_lines_only_a_gpu_runs_are_listed():
    lines = rehearsal.cuda_lines(ROOT)
    assert any(
        line.startswith("pipeline/training/distributed.py:") and "torch.cuda.set_device" in line for line in lines
    )
    assert any('"nccl" if' in line for line in lines)
    assert not any(line.startswith("pipeline/review/rehearsal.py") for line in lines)
    assert all("# CUDA only" not in line for line in lines)


def test_a_backbone_subset_keeps_the_profiles_entries_and_the_benchs():
    _, params, overrides = _derive("paper", rehearsal.parse_sets(["backbones=[n12,s12]"]))
    assert params["backbones"] == {k: _profile("paper")["backbones"][k] for k in ("n12", "s12")}
    assert list(overrides["backbones"]["profile"]) == ["n12", "t12", "s12"]
    with pytest.raises(ParamsError, match=r"--set backbones: expected a list of entries .* \(n12, t12, s12\)"):
        _derive("paper", rehearsal.parse_sets(["backbones=[b16]"]))
    with pytest.raises(ParamsError, match="keep 'n12', the backbone the bench times"):
        _derive("paper", rehearsal.parse_sets(["backbones=[s12]"]))


def test_a_corrupt_file_fails_the_rehearsal_naming_the_stage_and_the_file(tmp_path, monkeypatch):
    """Fault injection: the rehearsal's stand-in CIFAR-100 training pickle is truncated after it is written; the
    rehearsal stops at the first stage that reads it and names both."""
    write = rehearse._write_data

    def write_then_corrupt(profile, roots):
        notes = write(profile, roots)
        train = roots["cifar100"] / "cifar-100-python" / "train"
        train.write_bytes(train.read_bytes()[:100])
        return notes

    monkeypatch.setattr(rehearse, "_write_data", write_then_corrupt)
    workdir = tmp_path / "work"
    with pytest.raises(SystemExit) as exit_:
        rehearse.main(["cifar", "--workdir", str(workdir), "--profiles", str(ROOT / "profiles"), "--repo", str(ROOT)])
    message = str(exit_.value.code)
    assert message.startswith("rehearse: error: stage prepare@cifar100 failed: prepare: error: dataset 'cifar100'")
    assert str(workdir / "data" / "cifar100" / "cifar-100-python") in message and "dvc-repro.log" in message
    assert "\n" not in message
    assert not (workdir / "summary.txt").exists()
