"""The qkv_xcit_* models: timm oracle, published counts, every option combination end to end."""

from __future__ import annotations

import pytest
import timm
import torch

import qkv

from .conftest import tiny_xcit


@pytest.mark.parametrize("patch", [16, 8])
def test_linear_model_is_timm_xcit(patch):
    """Oracle: timm's XCiT-N12 weights load strictly into the linear baseline and give the same logits."""
    torch.manual_seed(0)
    reference = timm.create_model(f"xcit_nano_12_p{patch}_224").eval()
    model = timm.create_model(f"qkv_xcit_nano_12_p{patch}").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference(image)
        # ContiguousXCA normalises a contiguous copy: the same math, summed in another order.
        torch.testing.assert_close(model(image), expected, rtol=1e-5, atol=1e-6)
        from timm.models.xcit import XCA

        for block in model.blocks:
            block.attn.__class__ = XCA  # timm's own forward: then bit for bit
        torch.testing.assert_close(model(image), expected, rtol=0, atol=0)


def test_baseline_nano_counts_match_published():
    from fvcore.nn import FlopCountAnalysis

    model = timm.create_model("qkv_xcit_nano_12_p16").eval()
    assert sum(p.numel() for p in model.parameters()) == 3_053_224
    analysis = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    assert round(analysis.total() / 1e9, 3) == 0.557


def test_every_option_combination_trains(options):
    for class_attn in (False, True):
        model = tiny_xcit({**options, "qkv_class_attn": class_attn}, num_classes=5).train()
        logits = model(torch.randn(4, 3, 32, 32))
        assert logits.shape == (4, 5)
        assert torch.isfinite(logits).all()
        logits.logsumexp(dim=1).mean().backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert no_grad == [], f"parameters without gradient: {no_grad}"
        cfg, _ = qkv.split_model_options(options)
        arch = qkv.XcitArch(embed_dim=32, depth=2, num_heads=4, eta=1.0, tokens_norm=False, patch_size=8)
        expected = qkv.xcit_params(arch, cfg, num_classes=5, class_attn=class_attn)
        assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name", sorted(qkv.ARCHS))
def test_registered_models_build(name):
    model = timm.create_model(name, qkv_embed="sne", num_classes=3, img_size=64)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert name in timm.list_models("qkv_xcit_*")


def test_patch4_stem_gives_an_8x8_grid_at_32px():
    model = timm.create_model("qkv_xcit_nano_12_p8", patch_size=4, img_size=32, num_classes=10, depth=1)
    tokens, grid = model.patch_embed(torch.randn(2, 3, 32, 32))
    assert grid == (8, 8) and tokens.shape == (2, 64, 128)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    arch = qkv.model_arch("qkv_xcit_nano_12_p8", patch_size=4, depth=1)
    assert sum(p.numel() for p in model.parameters()) == qkv.xcit_params(arch, qkv.EmbedConfig(), num_classes=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(embed_dim=30, num_heads=4), "embed_dim=30 is not divisible by num_heads=4"),
        (dict(num_heads=0), "num_heads must be a positive integer, got 0"),
        (dict(patch_size=2), "patch_size=2 is not one of: 4, 8, 16"),
        (dict(qkv_embed="bogus"), "qkv_embed='bogus' is not one of: linear, sne, psne, fsne"),
        (dict(qkv_class_attn="yes"), "qkv_class_attn must be true or false"),
        (dict(pretrained=True), "no pretrained weights exist"),
    ],
)
def test_bad_model_arguments(kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        timm.create_model("qkv_xcit_nano_12_p16", **kwargs)
    assert message in str(excinfo.value)


def _max_similarity(records) -> float:
    return max(max(r["q_k"], r["q_v"], r["k_v"]) for r in records)


def _min_similarity(records) -> float:
    return min(min(r["q_k"], r["q_v"], r["k_v"]) for r in records)


def test_similarity_diagnostic_shows_collapse_and_default_does_not():
    """docs/paper.md's measurement: concatenated 16-d codes drawn with std 0.02 give Q = K = V in every block.
    The fsne defaults (one-hot codes scaled to a token's norm) start the branches apart."""
    torch.manual_seed(0)
    images = torch.rand(8, 3, 32, 32)
    common = dict(patch_size=4, img_size=32, num_classes=10)
    torch.manual_seed(1)
    collapsed = timm.create_model(
        "qkv_xcit_nano_12_p8", qkv_embed="fsne", qkv_code_dim=16, qkv_code_init="normal", qkv_code_scale=0.02, **common
    )
    torch.manual_seed(1)
    default = timm.create_model("qkv_xcit_nano_12_p8", qkv_embed="fsne", **common)
    records = qkv.qkv_similarity(collapsed, images)
    assert len(records) == 12 and all(r["layer"].startswith("blocks.") for r in records)
    assert _min_similarity(records) >= 0.999
    assert _max_similarity(qkv.qkv_similarity(default, images)) < 0.9
    for mode in ("add", "gate"):
        torch.manual_seed(1)
        model = timm.create_model("qkv_xcit_nano_12_p8", qkv_embed="fsne", qkv_code_mode=mode, **common)
        assert _max_similarity(qkv.qkv_similarity(model, images)) < 0.9


def test_similarity_diagnostic_reads_timm_models_and_leaves_mode():
    model = timm.create_model("xcit_nano_12_p8_224", img_size=32, depth=2).train()
    records = qkv.qkv_similarity(model, torch.rand(2, 3, 32, 32))
    assert [r["layer"] for r in records] == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert model.training
    with pytest.raises(ValueError, match="no Q/K/V embedding"):
        qkv.qkv_similarity(torch.nn.Linear(3, 3), torch.rand(1, 3))


@pytest.mark.parametrize("fused", [False, True])
def test_contiguous_xca_matches_timms_xca(fused):
    """Every XCA of a qkv_xcit model is a ContiguousXCA: same parameters, same outputs and gradients as timm's."""
    from timm.models.xcit import XCA

    model = timm.create_model("qkv_xcit_nano_12_p8", img_size=32, num_classes=10)
    assert {type(b.attn) for b in model.blocks} == {qkv.ContiguousXCA}
    torch.manual_seed(0)
    fast = qkv.ContiguousXCA(dim=64, num_heads=4, qkv_bias=True)
    with torch.no_grad():
        fast.temperature.uniform_(0.5, 2.0)
    reference = XCA(dim=64, num_heads=4, qkv_bias=True)
    reference.load_state_dict(fast.state_dict(), strict=True)
    fast.fused_attn = reference.fused_attn = fused
    x = torch.randn(3, 10, 64, requires_grad=True)
    y_fast = fast(x)
    (grad_fast,) = torch.autograd.grad(y_fast.square().sum(), x, retain_graph=True)
    y_ref = reference(x)
    (grad_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_fast, grad_ref, rtol=1e-5, atol=1e-5)
    fast.temperature.grad = None
    y_fast.sum().backward()
    assert fast.temperature.grad is not None and fast.temperature.grad.abs().sum() > 0
