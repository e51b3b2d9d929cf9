"""qkv.convert on timm models other than our own registrations."""

from __future__ import annotations

import pytest
import timm
import torch

import qkv
from qkv.embed import QKVEmbed


def test_convert_deit_tiny():
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=4)
    image = torch.randn(2, 3, 32, 32)
    before = model.eval()(image)
    qkv.convert(model, "linear")
    torch.testing.assert_close(model(image), before)  # linear keeps the weights: same function
    qkv.convert(timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8), "fsne")
    model = qkv.convert(timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=4), "sne")
    layers = qkv.embed_modules(model)
    assert len(layers) == 12 and all(isinstance(m, QKVEmbed) and m.kind == "sne" for _, m in layers)
    assert model(image).shape == (2, 4)


def test_convert_timm_xcit_class_attention_linear_is_identity():
    torch.manual_seed(0)
    model = timm.create_model("xcit_nano_12_p8_224", img_size=32, depth=2).eval()
    image = torch.randn(2, 3, 32, 32)
    before = model(image)
    qkv.convert(model, "linear", qkv_class_attn=True)
    assert all(isinstance(b.attn, qkv.ClassAttnQKV) for b in model.cls_attn_blocks)
    torch.testing.assert_close(model(image), before, rtol=1e-5, atol=1e-5)


def test_convert_global_codes_are_one_parameter():
    model = timm.create_model("xcit_nano_12_p8_224", img_size=32, depth=3)
    qkv.convert(model, "fsne", qkv_code_scope="global")
    codes = {id(m.codes) for _, m in qkv.embed_modules(model)}
    assert len(codes) == 1


def test_convert_without_fused_qkv_is_an_error():
    with pytest.raises(ValueError, match="has no attention with a fused qkv"):
        qkv.convert(timm.create_model("resnet18"), "sne")


@pytest.mark.parametrize("name", ["beit_base_patch16_224", "eva02_tiny_patch14_224"])
def test_a_model_whose_attention_reads_qkv_weight_itself_is_refused_unchanged(name):
    """BEiT and EVA keep their q/v biases outside the qkv linear and call F.linear(x, self.qkv.weight, bias): an
    embedding in its place would fail at the first forward, so conversion refuses, naming the model."""
    model = timm.create_model(name, depth=1, embed_dim=64, num_heads=2)
    with pytest.raises(
        ValueError, match=r"^\w+: its attention \(\w+ at blocks\.0\.attn, and 0 more\) uses qkv\.weight"
    ):
        qkv.convert(model, "sne")
    assert isinstance(model.blocks[0].attn.qkv, torch.nn.Linear)


def test_convert_rejects_bad_option_before_changing_the_model():
    model = timm.create_model("xcit_nano_12_p8_224", img_size=32, depth=1)
    with pytest.raises(ValueError, match="qkv_hidden must be a positive integer"):
        qkv.convert(model, "sne", qkv_hidden=-1)
    assert isinstance(model.blocks[0].attn.qkv, torch.nn.Linear)
