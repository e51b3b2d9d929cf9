"""Profiles: each validates through every stage's loader; the paper profile carries the XCiT recipe."""

from __future__ import annotations

import shutil

import pytest
import yaml

from pipeline import profile

from .tiny import ROOT

PROFILES = ROOT / "profiles"


@pytest.mark.parametrize("name", ["embedded", "cifar", "paper"])
def test_every_profile_validates(name):
    assert profile.validate(PROFILES / f"{name}.yaml") == name


def test_committed_params_is_its_profile_file():
    params = (ROOT / "params.yaml").read_bytes()
    name = yaml.safe_load(params)["profile"]
    assert (PROFILES / f"{name}.yaml").read_bytes() == params, "params.yaml drifted from its profile file"


def test_paper_profile_matches_the_xcit_recipe():
    """docs/paper.md: 400 epochs, AdamW, lr 5e-4 x batch/512, wd 0.05, cosine, 5 warmup epochs from 1e-6,
    min lr 1e-5, rand-m9-mstd0.5-inc1, colour jitter 0.4, mixup 0.8, cutmix 1.0, label smoothing 0.1,
    random erasing 0.25 in pixel mode, repeated augmentation, model EMA (the raw weights evaluated), bicubic,
    crop ratio 1.0, drop path per model; N12/16 at 224 on ImageNet; three seeds; on 8 GPUs per node."""
    p = yaml.safe_load((PROFILES / "paper.yaml").read_text())
    pre = p["pretrain"]["recipe"]
    assert (pre["epochs"], pre["opt"], pre["lr"], pre["lr_base_batch"]) == (400, "adamw", 5.0e-4, 512)
    assert (pre["weight_decay"], pre["warmup_epochs"], pre["warmup_lr"], pre["min_lr"]) == (0.05, 5, 1.0e-6, 1.0e-5)
    assert (pre["mixup"], pre["cutmix"], pre["label_smoothing"]) == (0.8, 1.0, 0.1)
    assert pre["ema_decay"] is not None and 0 < pre["ema_decay"] < 1
    aug = pre["augment"]
    assert (aug["mode"], aug["auto_augment"], aug["color_jitter"], aug["re_prob"]) == (
        "timm",
        "rand-m9-mstd0.5-inc1",
        0.4,
        0.25,
    )
    assert (aug["interpolation"], aug["crop_pct"]) == ("bicubic", 1.0)
    backbones = {k: (b["name"], b["img_size"], b["patch_size"], b["drop_path_rate"]) for k, b in p["backbones"].items()}
    assert backbones == {  # every backbone of the paper's claims, at XCiT's 224 px and 16-px patches
        "n12": ("qkv_xcit_nano_12_p16", 224, 16, 0.0),
        "t12": ("qkv_xcit_tiny_12_p16", 224, 16, 0.0),
        "s12": ("qkv_xcit_small_12_p16", 224, 16, 0.05),  # XCiT's README example; N12 and T12 ASSUMED
    }
    assert p["datasets"][p["pretrain"]["dataset"]]["source"] == "imagenet" and len(p["seeds"]) == 3
    assert sorted(p["finetune"]["datasets"]) == ["cifar10", "cifar100", "stanford_cars", "stl10"]
    assert p["launcher"] == "python -m pipeline.training.launch --nproc-per-node 8" and p["device"] == "cuda"
    assert (aug["re_mode"], aug["repeated_aug"], pre["weights"]) == ("pixel", 3, "raw")  # XCiT's main.py defaults


def test_switch_validates_then_replaces_params(tmp_path):
    folder = tmp_path / "profiles"
    shutil.copytree(PROFILES, folder)
    params = tmp_path / "params.yaml"
    params.write_bytes((PROFILES / "embedded.yaml").read_bytes())
    profile.switch("cifar", folder, params)
    assert params.read_bytes() == (folder / "cifar.yaml").read_bytes()
    with pytest.raises(ValueError, match="unknown profile 'imagenet'; known: cifar, embedded, paper"):
        profile.switch("imagenet", folder, params)
    broken = (folder / "paper.yaml").read_text().replace("    epochs: 400", "    epochs: -400")
    (folder / "paper.yaml").write_text(broken)
    with pytest.raises(ValueError, match="pretrain.recipe.epochs: expected a positive integer, got -400"):
        profile.switch("paper", folder, params)
    assert params.read_bytes() == (folder / "cifar.yaml").read_bytes(), "a failed switch leaves params.yaml alone"


def test_check_validates_a_params_file_through_every_stage_loader(tmp_path):
    """`make repro` runs this before `dvc repro`: a bad file fails in seconds, with one line, before DVC deletes
    any stage's outputs."""
    import subprocess
    import sys

    good = ROOT / "params.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.profile", "--check", str(good)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == f"{good}: valid (profile embedded)"
    params = yaml.safe_load(good.read_text())
    params["variants"]["psne"]["qkv_code_dim"] = 3  # an option the library refuses for psne
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.profile", "--check", str(bad)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "profile: error: variants.psne: qkv_code_dim does not apply to qkv_embed='psne'; it reads: qkv_bias, "
        "qkv_hidden, qkv_hidden_ratio, qkv_norm, qkv_shared"
    ]


def _workspace(tmp_path, active: str = "embedded"):
    """A copy of profiles/ and a params.yaml holding profile ``active``, in ``tmp_path``: (profiles folder, params)."""
    folder = tmp_path / "profiles"
    shutil.copytree(PROFILES, folder)
    params = tmp_path / "params.yaml"
    params.write_bytes((PROFILES / f"{active}.yaml").read_bytes())
    return folder, params


def _edit(params, edit) -> bytes:
    """Apply ``edit`` to the parsed ``params`` file and write it back (as a user's editor might); its new bytes."""
    data = yaml.safe_load(params.read_text())
    edit(data)
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    return params.read_bytes()


def _add_a_variant(p):
    p["variants"]["mine"] = {"qkv_embed": "linear", "qkv_bias": False}
    p["pretrain"]["variants"].append("mine")
    p["runtime"]["threads"] = 3


def test_an_edited_params_is_refused_in_one_line_naming_the_changed_keys(tmp_path):
    """A user's added variant and changed number: not overwritten, exit status 1, one line naming the closest
    profile, the changed keys and both ways out (save it as a profile; FORCE=1 / --force)."""
    import subprocess
    import sys

    folder, params = _workspace(tmp_path)
    before = _edit(params, _add_a_variant)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.profile", "cifar"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "profile: error: not switching to 'cifar': params.yaml has edits that are in no profile (it differs from "
        "profiles/embedded.yaml at variants.mine, runtime.threads, pretrain.variants); to keep them, save it as a "
        "profile (cp params.yaml profiles/<new name>.yaml and set its profile: key to the new name); to discard "
        "them, re-run with FORCE=1 (make profile) or --force (python -m pipeline.profile)"
    ]
    assert params.read_bytes() == before, "a refused switch leaves params.yaml byte for byte"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "profiles"], "nothing else was written"


def test_the_refusal_names_the_profile_the_params_says_and_counts_the_keys_past_five(tmp_path):
    folder, params = _workspace(tmp_path, "cifar")

    def many(p):
        p["seeds"] = [0]
        p["runtime"].update(threads=2, workers=1, eval_batch_size=64, sync_every=10, checkpoint_every=1)
        p["report"]["power"] = 0.9

    before = _edit(params, many)
    with pytest.raises(ValueError, match=r"^not switching to 'paper': .* \(it differs from .*cifar\.yaml at") as err:
        profile.switch("paper", folder, params)
    assert (
        "at seeds, runtime.threads, runtime.checkpoint_every, runtime.workers, runtime.eval_batch_size and 2 more)"
        in (str(err.value))
    )
    assert params.read_bytes() == before
    params.write_text("profile: [embedded\n")  # not YAML: no profile either, refused all the same
    with pytest.raises(ValueError, match=r"params\.yaml has edits that are in no profile \(it is not valid YAML\)"):
        profile.switch("embedded", folder, params)


def test_a_params_with_the_data_of_a_profile_is_overwritten(tmp_path):
    """Comments, blank lines, key order and quoting are no edits: the data is the embedded profile's."""
    folder, params = _workspace(tmp_path)
    text = (PROFILES / "embedded.yaml").read_text().replace("# ", "# (my note) ").replace("\n\n", "\n\n\n")
    params.write_text("# switched by hand\n" + text.replace("launcher: python", 'launcher: "python"'))
    assert profile.edits(params, folder) is None
    assert profile.switch("embedded", folder, params) == []
    assert params.read_bytes() == (PROFILES / "embedded.yaml").read_bytes()
    params.unlink()  # a missing params.yaml is simply written
    assert profile.switch("embedded", folder, params) == []
    assert params.read_bytes() == (PROFILES / "embedded.yaml").read_bytes()


def test_force_overwrites_the_edits_and_names_what_it_discarded(tmp_path, capsys):
    folder, params = _workspace(tmp_path)
    _edit(params, _add_a_variant)
    profile.main(["embedded", "--force", "--profiles", str(folder), "--params", str(params)])
    assert params.read_bytes() == (PROFILES / "embedded.yaml").read_bytes()
    out, err = capsys.readouterr()
    assert out == f"profile: {params} is now 'embedded'; `dvc repro` rebuilds what it changes\n"
    assert err.splitlines() == [
        f"profile: --force: discarded the edits of {params} (it differed from {folder / 'embedded.yaml'} at "
        "variants.mine, runtime.threads, pretrain.variants)"
    ]


def test_a_switch_lists_the_dataset_roots_missing_here(tmp_path, capsys, monkeypatch):
    """A warning, not a failure: the switch is made (exit status 0) and each missing root named, `~` expanded;
    once the folders exist, or for a profile without roots, nothing is listed."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    folder, params = _workspace(tmp_path)
    cifar = (folder / "cifar.yaml").read_text()
    (folder / "cifar.yaml").write_text(
        cifar.replace("root: ~/data/stl10\n    download: false", "root: ~/data/stl10\n    download: true")
    )
    profile.main(["cifar", "--profiles", str(folder), "--params", str(params)])
    assert params.read_bytes() == (folder / "cifar.yaml").read_bytes()
    out, err = capsys.readouterr()
    assert out == f"profile: {params} is now 'cifar'; `dvc repro` rebuilds what it changes\n"
    assert err.splitlines() == [
        "profile: dataset cifar100: root ~/data/cifar does not exist here; put your cifar100 files under it or set "
        "datasets.cifar100.root (docs/datasets.md)",
        "profile: dataset cifar10: root ~/data/cifar does not exist here; put your cifar10 files under it or set "
        "datasets.cifar10.root (docs/datasets.md)",
        "profile: dataset stl10: root ~/data/stl10 does not exist here; prepare@stl10 downloads the stl10 files into "
        "it (download: true)",
        "profile: dataset stanford_cars: root ~/data/stanford_cars does not exist here; put your stanford_cars files "
        "under it or set datasets.stanford_cars.root (docs/datasets.md)",
    ]
    for name in ("cifar", "stl10", "stanford_cars"):
        (home / "data" / name).mkdir(parents=True)
    assert profile.switch("cifar", folder, params) == []
    assert profile.switch("embedded", folder, params) == []  # bundled datasets: no root


def test_make_passes_force_through(tmp_path):
    """``make -n`` prints the recipe and runs none of it (the venv prerequisite included)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}

    def command(*assignments):
        done = subprocess.run(
            ["make", "-n", "profile", *assignments], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if line.startswith("python -m pipeline.profile")]

    assert command("PROFILE=cifar", "FORCE=1") == ['python -m pipeline.profile "cifar" --force']
    assert command("PROFILE=cifar") == command("PROFILE=cifar", "FORCE=0") == ['python -m pipeline.profile "cifar"']
