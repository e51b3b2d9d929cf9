"""pipeline.config: typed parsing, the whole-file rules, the stage loaders, names and the reference files."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
import yaml

from pipeline import config
from pipeline.config import ParamsError, read_yaml
from pipeline.config.schema import parse

from .tiny import ROOT, tiny_params, write_params


@dataclass(frozen=True)
class Inner:
    lr: float
    epochs: int
    name: str = "x"
    sizes: tuple[int, ...] = ()
    flag: bool | None = None

    def check(self, where: str) -> None:
        if self.epochs > 100:
            raise ParamsError(f"{where}.epochs: at most 100, got {self.epochs}")


def test_parse_converts_validates_and_runs_the_sections_check():
    inner = parse(Inner, {"lr": 1, "epochs": 3, "sizes": [1, 2]}, "train")
    assert inner == Inner(lr=1.0, epochs=3, sizes=(1, 2))
    assert isinstance(inner.lr, float)
    with pytest.raises(ParamsError, match=r"train.epochs: at most 100, got 101"):
        parse(Inner, {"lr": 1.0, "epochs": 101}, "train")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"lr": 1.0, "epochs": 3, "epoch": 2}, "train: unknown key(s) epoch; expected: lr, epochs, name, sizes, flag"),
        ({"lr": 1.0}, "train: missing key(s) epochs"),
        ({"lr": "1e-3", "epochs": 3}, "train.lr: expected a finite number, got '1e-3' (write floats with a dot"),
        ({"lr": float("nan"), "epochs": 3}, "train.lr: expected a finite number, got nan"),
        ({"lr": 1.0, "epochs": 2.5}, "train.epochs: expected an integer, got 2.5"),
        ({"lr": 1.0, "epochs": True}, "train.epochs: expected an integer, got True"),
        ({"lr": 1.0, "epochs": 1, "sizes": 3}, "train.sizes: expected a list, got 3"),
        ({"lr": 1.0, "epochs": 1, "sizes": [1, "a"]}, "train.sizes[1]: expected an integer, got 'a'"),
        ({"lr": 1.0, "epochs": 1, "flag": "no"}, "train.flag: expected bool, got 'no'"),
        ([1, 2], "train: expected a mapping, got [1, 2]"),
    ],
)
def test_parse_errors_name_the_key(value, message):
    with pytest.raises(ParamsError) as excinfo:
        parse(Inner, value, "train")
    assert message in str(excinfo.value)


def test_read_yaml_errors(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        read_yaml(tmp_path / "missing.yaml")
    path = tmp_path / "params.yaml"
    path.write_text("a: [1\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        read_yaml(path)
    path.write_text("- 1\n")
    with pytest.raises(ParamsError, match="expected a mapping at the top level"):
        read_yaml(path)


def test_a_key_given_twice_is_refused_where_dvc_would_refuse_it(tmp_path):
    """PyYAML keeps the last of two equal keys; DVC, reading the same file, refuses it: the check must too. Keys
    merged in with ``<<`` may be overridden (YAML's rule)."""
    path = tmp_path / "params.yaml"
    path.write_text("base: &b {lr: 1, wd: 2}\nrun:\n  <<: *b\n  lr: 3\n")
    assert read_yaml(path)["run"] == {"lr": 3, "wd": 2}
    lines = (ROOT / "params.yaml").read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("  epochs:") or line.startswith("    epochs:"))
    path.write_text("".join([*lines[: at + 1], lines[at], *lines[at + 1 :]]))
    done = subprocess.run([sys.executable, "-m", "pipeline.config", str(path)], cwd=ROOT, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 1 and done.stderr == (
        f"params: error: {path}: line {at + 2}: key 'epochs' given twice in one mapping (first on line {at + 1}); "
        "keep one\n"
    ), done.stderr


def _load(tmp_path, params: dict):
    return config.load(write_params(tmp_path / "params.yaml", params))


def test_whole_file_sections(tmp_path):
    params = tiny_params()
    del params["bench"]
    with pytest.raises(ParamsError, match=r"missing section\(s\) bench"):
        _load(tmp_path, params)
    with pytest.raises(ParamsError, match=r"unknown section\(s\) benchmark"):
        _load(tmp_path, {**tiny_params(), "benchmark": {}})


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("x;touch /tmp/p;", "variants"),
        ("with space", "variants"),
        ("quo'te", "variants"),
        ("a-b", "variants"),
        ("1st", "variants"),
        ("x;touch /tmp/p;", "datasets"),
    ],
)
def test_names_must_be_safe(tmp_path, name, where):
    params = tiny_params()
    entry = params[where]["linear" if where == "variants" else "digits"]
    params[where][name] = entry
    with pytest.raises(ParamsError) as excinfo:
        _load(tmp_path, params)
    assert str(excinfo.value) == (
        f"{where}: {name!r} is not a valid name: use letters, digits and underscores, starting with a letter "
        "(it becomes part of DVC stage names, paths and commands)"
    )


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        (dict(seeds=[]), "seeds: expected at least one seed (every training stage runs once per seed)"),
        (dict(seeds=[0, 0]), "seeds: expected distinct non-negative integers, got [0, 0]"),
        (dict(model={"img_size": 30}), "backbones.n12.img_size: 30 is not a positive multiple of patch_size 4"),
        (dict(model={"patch_size": 2}), "backbones.n12.patch_size: 2 is not one of: 4, 8, 16"),
        (dict(model={"name": "xcit_nano_12_p16"}), "backbones.n12.name: unknown model 'xcit_nano_12_p16'"),
        (dict(finetune={"datasets": ["nope"]}), "finetune.datasets: unknown dataset 'nope'; known: synthetic, digits"),
        (dict(finetune={"datasets": ["digits", "digits"]}), "finetune.datasets: digits listed twice"),
        (dict(pretrain={"variants": []}), "pretrain.variants: expected at least one entry"),
        (dict(report={"baseline": "sne"}), "report.baseline: 'sne' is not in pretrain.variants"),
        (dict(launcher=" "), "launcher: expected a command"),
        (dict(launcher="python; touch owned"), "launcher: 'python; touch owned' holds ';'; it becomes part of each"),
        (dict(launcher="python $(touch owned)"), "launcher: 'python $(touch owned)' holds '$()'; it becomes part"),
        (dict(launcher="bash -c id"), "launcher: 'bash -c id' starts with 'bash'; it becomes part of each training"),
        (dict(launcher="python -m x 'a b'"), 'holds "\'"; it becomes'),
        (
            dict(launcher="python -m pipeline.launch --nproc-per-node 2"),
            "launcher: 'python -m pipeline.launch --nproc-per-node 2' runs pipeline.launch, which does not exist; "
            "the project's launcher is python -m pipeline.training.launch (--nproc-per-node N)",
        ),
        (
            dict(launcher="python -m pipeline.nope.launch"),
            "launcher: 'python -m pipeline.nope.launch' runs pipeline.nope.launch, which does not exist; "
            "the project's launcher is python -m pipeline.training.launch (--nproc-per-node N)",
        ),
        (dict(runtime={"workers": -1}), "runtime.workers: must not be negative, got -1"),
        (dict(runtime={"eval_batch_size": 0}), "runtime.eval_batch_size: expected a positive integer, got 0"),
        (dict(pretrain={"label_smoothing": 1.5}), "pretrain.recipe.label_smoothing: expected a probability"),
        (dict(pretrain={"augment": {"mode": "fast"}}), "pretrain.recipe.augment: missing key(s)"),
        (dict(variants={"linear": {"embed": "linear"}}), "variants.linear: 'embed' is not a qkv_* model option"),
        (dict(variants={"linear": {"qkv_embed": ["linear"]}}), "variants.linear.qkv_embed: expected a plain value"),
        (
            dict(bench={"reference": "xcit_nano_12_p8_224"}),
            "bench.reference: timm's XCiT has no patch-4 stem (backbones.n12.patch_size); set bench.reference: null",
        ),
        (dict(bench={"backbone": "t12"}), "bench.backbone: 't12' is not an entry of backbones (n12)"),
        (
            dict(backbones={**tiny_params()["backbones"], "again": tiny_params()["backbones"]["n12"]}),
            "backbones.again: the same backbone as backbones.n12 (N12/4 at 16 px)",
        ),
        (dict(backbones={"n-12": tiny_params()["backbones"]["n12"]}), "backbones: 'n-12' is not a valid name"),
        (
            dict(pretrain={"augment": {**tiny_params()["pretrain"]["recipe"]["augment"], "pad_crop": 16}}),
            "pretrain.recipe.augment.pad_crop: 16 px of reflect padding needs images larger than that; "
            "datasets.synthetic.img_size is 16",
        ),
        (
            dict(
                datasets={
                    **tiny_params()["datasets"],
                    "digits": {**tiny_params()["datasets"]["digits"], "val_fraction": 0.002},
                }
            ),
            "datasets.digits.val_fraction: 0.002 of at most 183 images per class rounds to 0 images in every class",
        ),
        (
            dict(
                datasets={
                    **tiny_params()["datasets"],
                    "synthetic": {
                        **tiny_params()["datasets"]["synthetic"],
                        "per_class": 2,
                        "val_fraction": 0.3,
                        "test_fraction": 0.3,
                    },
                }
            ),
            "datasets.synthetic: a class of 2 images is too few to split off val_fraction 0.3 and test_fraction 0.3",
        ),
    ],
)
def test_cross_field_rules(tmp_path, updates, message):
    with pytest.raises(ParamsError) as excinfo:
        _load(tmp_path, tiny_params(**updates))
    assert message in str(excinfo.value)


def test_stage_loaders_return_their_instance(tmp_path):
    path = write_params(tmp_path / "params.yaml", tiny_params(seeds=[0, 3]))
    run = config.load_pretrain(path, "n12", "fsne", 3)
    assert (run.stage, run.name, run.dataset, run.seed) == ("pretrain", "pretrain@n12-fsne-3", "synthetic", 3)
    assert run.net.embed.kind == "fsne" and run.net.arch.embed_dim == 32 and run.net.img_size == 16
    assert run.runtime.threads == 1 and run.recipe.lr_effective == pytest.approx(3.2e-2 * 16 / 512)
    assert config.load_finetune(path, "n12", "linear", "digits", 0).name == "finetune@n12-linear-digits-0"
    for call, message in (
        (
            lambda: config.load_pretrain(path, "n12", "sne", 0),
            "pretrain.variants: 'sne' is not listed; listed: linear, fsne",
        ),
        (lambda: config.load_pretrain(path, "n12", "fsne", 1), "seeds: 1 is not listed; listed: 0, 3"),
        (
            lambda: config.load_finetune(path, "n12", "fsne", "synthetic", 0),
            "finetune.datasets: 'synthetic' is not listed",
        ),
        (lambda: config.load_prepare(path, "cifar"), "datasets: 'cifar' is not listed; listed: synthetic, digits"),
    ):
        with pytest.raises(ParamsError, match=re.escape(message)):
            call()


def test_every_variant_is_checked_by_the_library_in_every_model_stage(tmp_path):
    """A variant whose options the qkv library refuses stops any stage that builds models (the first one dvc runs),
    not only its own instances."""
    params = tiny_params()
    params["variants"]["sne"] = {"qkv_embed": "sne", "qkv_shared": "first"}
    path = write_params(tmp_path / "params.yaml", params)
    for call in (
        lambda: config.load_pretrain(path, "n12", "linear", 0),
        lambda: config.load_prepare(path, "digits"),
        lambda: config.load_bench(path),
    ):
        with pytest.raises(ParamsError, match=r"variants.sne: qkv_shared does not apply to qkv_embed='sne'"):
            call()
    assert config.load_report(path).pretrained == ("linear", "fsne")  # torch-free: displays, never builds


def test_an_optimizer_timm_does_not_know_is_refused_by_every_torch_stage(tmp_path):
    path = write_params(tmp_path / "params.yaml", tiny_params(finetune={"opt": "adamw2"}))
    with pytest.raises(ParamsError, match=r"finetune.recipe.opt: 'adamw2' is not one of timm's optimizers"):
        config.load_prepare(path, "digits")


def test_hidden_ratio_must_give_whole_units(tmp_path):
    params = tiny_params()
    params["variants"]["fsne"]["qkv_hidden_ratio"] = 0.3  # 0.3 x 32 = 9.6 units
    with pytest.raises(ParamsError, match=r"variants.fsne: qkv_hidden_ratio=0.3 gives a non-integer hidden width"):
        config.load_pretrain(write_params(tmp_path / "params.yaml", params), "n12", "fsne", 0)


def test_backbone_labels_cover_the_registered_models():
    """pipeline.config knows the registered names without importing the library: the two lists must agree."""
    import qkv
    from pipeline.config.sections import registered

    assert {config.backbone_label(name) for name in qkv.ARCHS} == set(config.BACKBONES.values())
    assert {name: registered(name)[1] for name in qkv.ARCHS} == {n: a.patch_size for n, a in qkv.ARCHS.items()}
    assert len(qkv.ARCHS) == 2 * len(config.BACKBONES)  # every name the config accepts is registered


def test_published_and_assumptions_load_and_are_checked(tmp_path):
    published = config.load_published(ROOT / "references" / "published.yaml")
    assert published.claim_for("pretrain", "N12").id == "imagenet-n12"
    assert published.claim_for("transfer", "T12") is None
    assert len(config.load_assumptions(ROOT / "references" / "assumptions.yaml")) > 5
    data = yaml.safe_load((ROOT / "references" / "published.yaml").read_text())
    for field, value, message in (
        ("backbone", "B16", "claims[0].backbone: 'B16' is not one of: N12, T12, S12"),
        ("datasets", ["imagenet21k"], "claims[0].datasets: unknown dataset(s) imagenet21k"),
        ("kind", "zero-shot", "claims[0].kind: 'zero-shot' is not one of: pretrain, transfer"),
        ("baseline", "69.9%", "claims[0].baseline: expected a finite number, got '69.9%'"),
    ):
        broken = yaml.safe_load(yaml.safe_dump(data))
        broken["claims"][0][field] = value
        path = tmp_path / "published.yaml"
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(ParamsError, match=re.escape(message)):
            config.load_published(path)


def test_importing_config_and_loading_for_the_report_never_imports_torch(tmp_path):
    import subprocess
    import sys

    path = write_params(tmp_path / "params.yaml", tiny_params())
    code = (
        "import sys; from pipeline import config; config.load_report(sys.argv[1]); config.load_audit(sys.argv[1]); "
        "config.load(sys.argv[1]); "
        "bad = [m for m in ('torch', 'timm', 'qkv') if m in sys.modules]; assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_the_check_every_stage_command_starts_with(tmp_path):
    """`python -m pipeline.config params.yaml`: torch-free, one line, exit 1 (dvc.yaml runs it first)."""
    import subprocess
    import sys

    params = tiny_params()
    params["variants"]["x';touch nowhere;'"] = {"qkv_embed": "linear"}
    path = write_params(tmp_path / "params.yaml", params)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.config", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "params: error: variants: \"x';touch nowhere;'\" is not a valid name: use letters, digits and underscores, "
        "starting with a letter (it becomes part of DVC stage names, paths and commands)"
    ]
    good = write_params(tmp_path / "good.yaml", tiny_params())
    assert subprocess.run([sys.executable, "-m", "pipeline.config", str(good)], cwd=ROOT).returncode == 0


def test_a_profile_without_backbones_is_refused(tmp_path):
    params = tiny_params()
    params["backbones"] = {}
    with pytest.raises(ParamsError, match="backbones: expected at least one backbone"):
        _load(tmp_path, params)


@pytest.mark.parametrize(
    ("confidence", "power", "floor"), [(0.95, 0.025, "0.025"), (0.95, 0.01, "0.025"), (0.9, 0.05, "0.05")]
)
def test_a_power_a_zero_difference_reaches_is_refused(tmp_path, confidence, power, floor):
    """The report detects a difference when its two-sided interval lies above zero: a zero difference is detected
    with probability (1 - confidence)/2, so no power at or below that has a detectable difference (the report
    crashed in the root search, naming no key)."""
    with pytest.raises(ParamsError) as excinfo:
        _load(tmp_path, tiny_params(report={"confidence": confidence, "power": power}))
    assert str(excinfo.value) == (
        f"report.power: {power} is not above (1 - report.confidence)/2 = {floor}, the chance that a zero difference "
        f"is detected; set a power above {floor} (0.8 is usual)"
    )


@pytest.mark.parametrize(("confidence", "power"), [(0.95, 0.025 + 1e-9), (0.95, 0.0251), (0.9, 0.05 + 1e-6)])
def test_a_power_just_above_the_floor_is_loaded_and_computed(tmp_path, confidence, power):
    from pipeline.reporting.stats import detectable, seeds_needed

    report = _load(tmp_path, tiny_params(report={"confidence": confidence, "power": power})).report
    for n in (2, 3, 8, 1000):
        assert 0 <= detectable(1.0, n, report.confidence, report.power) < 0.1
    assert seeds_needed(1.0, 0.5, report.confidence, report.power) == 2
