"""A tiny profile built from the embedded one: the same sections and keys, sized to run in seconds."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_params(**section_updates) -> dict:
    """The embedded profile shrunk: synthetic source, digits target, a depth-1 model, 2 epochs.

    ``section_updates`` maps a section name to a dict merged into it (``runtime={"threads": 2}``); for
    ``pretrain`` and ``finetune`` the keys of the recipe may be given directly (``pretrain={"epochs": 3}``);
    ``model`` updates the profile's one backbone (``backbones.n12``).
    """
    params = yaml.safe_load((ROOT / "profiles" / "embedded.yaml").read_text())
    params["flops"].update(models=["qkv_xcit_nano_12_p16"], img_size=32, num_classes=[10])
    readings = params["forensics"]["readings"]
    params["forensics"].update(img_size=32, num_classes=[10], readings={k: readings[k] for k in list(readings)[:3]})
    params["datasets"] = {
        "synthetic": dict(
            source="synthetic", img_size=16, val_fraction=0.2, test_fraction=0.2, seed=0, num_classes=3, per_class=40
        ),
        "digits": dict(source="digits", img_size=16, val_fraction=0.1, test_fraction=0.2, seed=0),
    }
    params["backbones"]["n12"].update(img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=4)
    params["seeds"] = [0]
    params["runtime"].update(threads=1, eval_batch_size=64)
    for section in ("pretrain", "finetune"):
        params[section] = copy.deepcopy(params[section])  # undo the YAML alias before editing
        params[section]["variants"] = ["linear", "fsne"]
        params[section]["recipe"].update(epochs=2, batch_size=16, diagnostic_images=8)
    params["pretrain"]["dataset"] = "synthetic"
    params["pretrain"]["recipe"]["lr"] = 3.2e-2  # effective 1e-3 at batch 16
    params["finetune"]["datasets"] = ["digits"]
    params["bench"] = {
        **params["bench"],
        "variants": ["linear", "fsne"],
        "reference": None,  # the tiny model's patch-4 stem has no timm counterpart
        "threads": 1,
        "batch_size": 16,
        "eval_batch_size": 32,
        "warmup": 1,
        "rounds": 2,
        "loader_batches": 2,
    }
    # Two timing rounds of a depth-1 model are noise: the audit of the tiny bench checks the machinery only.
    params["audit"] = {**params["audit"], "ratio_rel_tol": 10.0}
    for section, values in section_updates.items():
        if section == "model":
            params["backbones"]["n12"].update(values)
        elif section in ("pretrain", "finetune") and isinstance(values, dict):
            recipe = {k: v for k, v in values.items() if k in params[section]["recipe"]}
            params[section]["recipe"].update(recipe)
            params[section].update({k: v for k, v in values.items() if k not in recipe})
        elif isinstance(values, dict) and isinstance(params.get(section), dict):
            params[section] = {**params[section], **values}
        else:
            params[section] = values
    return params


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def paper_recipe(epochs: int = 6) -> dict:
    """``tiny_params`` updates that train with the paper profile's pretraining recipe, component for component
    (timm transforms with RandAugment, pixel random erasing and repeated augmentation, Mixup/CutMix, label
    smoothing, EMA), shrunk in epochs and batch only, plus drop path and two loader workers per rank."""
    paper = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())["pretrain"]["recipe"]
    recipe = {**paper, "epochs": epochs, "batch_size": 16, "warmup_epochs": 1, "diagnostic_images": 8}
    recipe["lr"] = 3.2e-2  # effective 1e-3 at batch 16, as the tiny profile
    return {
        "pretrain": recipe,
        "model": {"drop_path_rate": 0.1},
        "runtime": {"workers": 2, "checkpoint_every": 1},
    }


def prepare_synthetic(folder: Path) -> Path:
    """The tiny profile's synthetic dataset prepared into ``folder``/synthetic (as the prepare stage writes it)."""
    from pipeline.config import Dataset
    from pipeline.outputs import write_outputs
    from pipeline.stages import prepare

    files, _ = prepare.run("synthetic", Dataset(**tiny_params()["datasets"]["synthetic"]))
    write_outputs({folder / "synthetic" / k: v for k, v in files.items()})
    return folder / "synthetic"
