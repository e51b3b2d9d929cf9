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
