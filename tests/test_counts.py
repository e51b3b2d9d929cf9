"""Closed-form counts against fvcore and torch's FlopCounterMode, for every option combination."""

from __future__ import annotations

import pytest
import torch

import qkv
from pipeline.config import Count, network
from pipeline.stages.flops import check, count

from .conftest import tiny_xcit


def _counter_flops(model, image) -> tuple[int, int, int]:
    from fvcore.nn import FlopCountAnalysis
    from torch.utils.flop_counter import FlopCounterMode

    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    analysis = FlopCountAnalysis(model.eval(), image)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_op = analysis.by_operator()
    norms = by_op.get("layer_norm", 0) + by_op.get("batch_norm", 0)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    return analysis.total(), analysis.total() - norms, counter.get_total_flops() // 2


@pytest.mark.parametrize("class_attn", [False, True])
def test_flop_formula_equals_counters(options, class_attn):
    model = tiny_xcit({**options, "qkv_class_attn": class_attn}, num_classes=7)
    total, matmul, counter_matmul = _counter_flops(model, torch.zeros(1, 3, 32, 32))
    cfg, _ = qkv.split_model_options(options)
    arch = qkv.XcitArch(embed_dim=32, depth=2, num_heads=4, eta=1.0, tokens_norm=False, patch_size=8)
    formula = qkv.xcit_flops(arch, cfg, img_size=32, num_classes=7, class_attn=class_attn)
    assert (total, matmul) == (formula.total, formula.matmul)
    assert counter_matmul == formula.matmul


@pytest.mark.parametrize("patch_size", [4, 8, 16])
def test_flop_formula_per_stem_and_tokens_norm(patch_size):
    model = tiny_xcit({"qkv_embed": "psne"}, patch_size=patch_size, img_size=48, tokens_norm=True)
    total, matmul, _ = _counter_flops(model, torch.zeros(1, 3, 48, 48))
    arch = qkv.XcitArch(embed_dim=32, depth=2, num_heads=4, eta=1.0, tokens_norm=True, patch_size=patch_size)
    formula = qkv.xcit_flops(arch, qkv.EmbedConfig(kind="psne"), img_size=48, num_classes=5)
    assert (total, matmul) == (formula.total, formula.matmul)


def test_stage_count_row_for_published_baseline():
    net = network("qkv_xcit_nano_12_p16", "linear", {"qkv_embed": "linear"}, img_size=224, where="variants.linear")
    row = count(Count("main", net, 1000))
    assert row["params"] == row["params_formula"] == 3_053_224
    assert row["flops_fvcore"] == row["flops_formula"]
    assert row["matmul_fvcore"] == row["matmul_flop_counter"]
    assert row["gflops"] == pytest.approx(0.557, abs=5e-4)
    assert row["backbone"] == "N12" and row["patch_size"] == 16


def test_check_fails_on_disagreement():
    row = dict(
        section="main",
        model="m",
        variant="v",
        num_classes=10,
        params=10,
        params_formula=10,
        flops_fvcore=1000,
        flops_formula=1000,
        matmul_fvcore=900,
        matmul_flop_counter=900,
    )
    assert check([row], rel_tol=0.0)["max_rel_diff_formula"] == 0.0
    with pytest.raises(ValueError, match="11 parameters, formula says 10"):
        check([{**row, "params": 11}], rel_tol=0.0)
    with pytest.raises(ValueError, match=r"fvcore 1002 flops, formula 1000 \(relative difference 2.00e-03 > rel_tol"):
        check([{**row, "flops_fvcore": 1002}], rel_tol=1e-3)
    assert check([{**row, "flops_fvcore": 1001}], rel_tol=1e-3)["max_rel_diff_formula"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="FlopCounterMode/2 901"):
        check([{**row, "matmul_flop_counter": 901}], rel_tol=1e-4)
