"""pipeline.training.recipe's weight-decay groups against XCiT's rule, written out here independently: XCiT's
main.py calls timm 0.4.9's ``create_optimizer(args, model)``, whose ``add_weight_decay`` exempts a parameter when
``len(param.shape) == 1 or name.endswith(".bias") or name in model.no_weight_decay()`` (whole names)."""

from __future__ import annotations

import pytest
import timm
import torch

import qkv  # noqa: F401  (registers the qkv_xcit_* models)
from pipeline import config
from pipeline.training import model as models
from pipeline.training.recipe import make_optimizer, weight_decay_groups

from .tiny import ROOT

EMBEDDED = ROOT / "profiles" / "embedded.yaml"


def xcit_exempt(model: torch.nn.Module) -> set[str]:
    """The names XCiT's recipe does not decay (timm 0.4.9 ``add_weight_decay``, skip list taken literally)."""
    skip = model.no_weight_decay()
    return {
        name
        for name, param in model.named_parameters()
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip
    }


def split(model: torch.nn.Module, groups: list[dict]) -> dict[float, set[str]]:
    """Parameter names by the weight decay of their group; each parameter in exactly one group."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[float, set[str]] = {}
    for group in groups:
        out.setdefault(group["weight_decay"], set()).update(names[id(p)] for p in group["params"])
    assert sum(len(g["params"]) for g in groups) == len(names)
    return out


@pytest.mark.parametrize("variant", ["linear", "sne", "psne", "fsne"])
def test_the_embedded_models_are_decayed_as_xcit_decays_them(variant):
    run = config.load_pretrain(EMBEDDED, "n12", variant, config.load(EMBEDDED).seeds[0])
    net = models.build(run.net, 10)
    names = {n for n, _ in net.named_parameters()}
    exempt = xcit_exempt(net)
    groups = split(net, make_optimizer(net, run.recipe).param_groups)
    assert groups == {0.0: exempt, run.recipe.weight_decay: names - exempt}
    decayed = groups[run.recipe.weight_decay]
    # what the project exempted before: XCiT decays them
    assert {"blocks.0.attn.temperature", "blocks.11.attn.temperature", "pos_embed.token_projection.weight"} <= decayed
    assert {"cls_token", "pos_embed.token_projection.bias", "blocks.0.gamma1", "blocks.0.norm1.weight"} <= exempt
    if variant == "fsne":  # the codes (3, L) are decayed by the same rule (references/assumptions.yaml)
        assert {f"blocks.{i}.attn.qkv.codes" for i in range(12)} <= decayed


def test_a_grouped_layer_counts_by_its_shape_per_group():
    """SNE's stacked layers stand for three separate ones: the three LayerNorm scales (3, h) stay undecayed as
    XCiT's LayerNorms are; the three second-layer weights (3, d, h) are decayed, their biases (3, d) not."""
    net = timm.create_model("qkv_xcit_nano_12_p16", qkv_embed="sne", qkv_norm=True, depth=1, num_classes=10)
    groups = split(net, weight_decay_groups(net, 0.05))
    prefix = "blocks.0.attn.qkv"
    assert {f"{prefix}.norm.weight", f"{prefix}.norm.bias", f"{prefix}.fc2.bias", f"{prefix}.fc1.bias"} <= groups[0.0]
    assert {f"{prefix}.fc1.weight", f"{prefix}.fc2.weight"} <= groups[0.05]
    assert groups[0.05] == {n for n, _ in net.named_parameters()} - xcit_exempt(net) - {f"{prefix}.norm.weight"}


def test_frozen_parameters_are_left_out_and_timms_reference_model_splits_alike():
    net = timm.create_model("xcit_nano_12_p16_224", num_classes=10)
    net.patch_embed.requires_grad_(False)
    groups = weight_decay_groups(net, 0.05)
    names = {id(p): n for n, p in net.named_parameters()}
    grouped = {names[id(p)] for g in groups for p in g["params"]}
    assert grouped == {n for n, p in net.named_parameters() if p.requires_grad}
    assert "blocks.0.attn.temperature" in {names[id(p)] for p in groups[1]["params"]}
