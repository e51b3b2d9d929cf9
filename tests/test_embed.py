"""The Q/K/V embeddings: validation, fast path vs reference, parameter formula, gradients, invariants."""

from __future__ import annotations

import pytest
import torch
from timm.models.xcit import XCA

import qkv
from qkv.embed import QKVEmbed
from qkv.options import EmbedConfig

from .conftest import OPTION_SETS, option_id
from .reference import reference_qkv

DIM = 24


def make_embed(options: dict, dim: int = DIM) -> QKVEmbed:
    cfg = EmbedConfig.from_options(**options)
    codes = QKVEmbed.new_codes(dim, cfg) if cfg.kind == "fsne" and cfg.resolved_code_scope == "global" else None
    embed = QKVEmbed(dim, cfg, codes=codes)
    with torch.no_grad():  # non-trivial biases and norm affines, so the reference checks them too
        for name, p in embed.named_parameters():
            if name.endswith("bias") or name.startswith("norm"):
                p.add_(0.1 * torch.randn_like(p))
    return embed


@pytest.mark.parametrize("options", OPTION_SETS, ids=option_id)
def test_fast_path_equals_reference(options):
    torch.manual_seed(0)
    embed = make_embed(options)
    x = torch.randn(2, 7, DIM)
    out = embed(x)
    assert out.shape == (2, 7, 3 * DIM)
    torch.testing.assert_close(out, reference_qkv(embed, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", OPTION_SETS, ids=option_id)
def test_param_count_equals_formula(options):
    embed = make_embed(options)
    cfg = embed.cfg
    assert sum(p.numel() for p in embed.parameters()) == qkv.embed_params(cfg, DIM)


def test_linear_has_timm_parameter_names():
    embed = make_embed(dict(qkv_embed="linear"))
    linear = torch.nn.Linear(DIM, 3 * DIM)
    embed.load_state_dict(linear.state_dict(), strict=True)
    x = torch.randn(3, 5, DIM)
    torch.testing.assert_close(embed(x), linear(x))


@pytest.mark.parametrize(
    ("kind", "dim", "params"),
    [  # Hand arithmetic from docs/paper.md: 3(2Ch+h+C) with the default widths.
        ("linear", 128, 3 * 128 * 128 + 3 * 128),
        ("sne", 128, 3 * (2 * 128 * 64 + 64 + 128)),
        ("psne", 128, (128 * 96 + 96) + 3 * (96 * 128 + 128)),
        ("fsne", 128, (131 * 128 + 128) + (128 * 128 + 128) + 9),
    ],
)
def test_default_widths_parameter_arithmetic(kind, dim, params):
    assert qkv.embed_params(EmbedConfig(kind=kind), dim) == params


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(qkv_embed="mlp"), "qkv_embed='mlp' is not one of: linear, sne, psne, fsne"),
        (dict(qkv_embed="psne", qkv_shared="third"), "qkv_shared='third' is not one of: first, second"),
        (dict(qkv_embed="fsne", qkv_code_mode="mul"), "qkv_code_mode='mul' is not one of: concat, add, gate"),
        (dict(qkv_embed="fsne", qkv_code_init="zeros"), "qkv_code_init='zeros' is not one of: onehot, normal"),
        (dict(qkv_embed="fsne", qkv_code_scope="layer"), "qkv_code_scope='layer' is not one of: block, global"),
        (dict(qkv_embed="sne", qkv_hidden=0), "qkv_hidden must be a positive integer, got 0"),
        (dict(qkv_embed="sne", qkv_hidden=-4), "qkv_hidden must be a positive integer, got -4"),
        (dict(qkv_embed="sne", qkv_hidden_ratio=0.0), "qkv_hidden_ratio must be a positive finite number"),
        (dict(qkv_embed="sne", qkv_hidden_ratio=1e9), "qkv_hidden_ratio must be at most 16 (a larger layer is no"),
        (dict(qkv_embed="sne", qkv_hidden=10**9), "qkv_hidden must be at most 65536 (a larger layer is no"),
        (dict(qkv_embed="fsne", qkv_code_dim=10**7), "qkv_code_dim must be at most 65536"),
        (dict(qkv_embed="sne", qkv_hidden=8, qkv_hidden_ratio=0.5), "not both"),
        (dict(qkv_embed="fsne", qkv_code_dim=0), "qkv_code_dim must be a positive integer, got 0"),
        (dict(qkv_embed="fsne", qkv_code_mode="add", qkv_code_dim=4), "qkv_code_dim applies to qkv_code_mode='concat'"),
        (dict(qkv_embed="fsne", qkv_code_scale=-1.0), "qkv_code_scale must be a positive finite number"),
        (dict(qkv_embed="sne", qkv_shared="first"), "qkv_shared does not apply to qkv_embed='sne'"),
        (dict(qkv_embed="linear", qkv_hidden=8), "qkv_hidden does not apply to qkv_embed='linear'"),
        (dict(qkv_embed="sne", qkv_hiden=8), "unknown option(s) qkv_hiden; valid: qkv_embed, qkv_bias"),
        (dict(qkv_embed="sne", qkv_norm="yes"), "qkv_norm must be true or false, got 'yes'"),
    ],
)
def test_bad_options_raise_with_choices(options, message):
    with pytest.raises(ValueError) as excinfo:
        EmbedConfig.from_options(**options)
    assert message in str(excinfo.value)


def test_non_integer_hidden_width_is_an_error():
    with pytest.raises(ValueError, match="non-integer hidden width"):
        EmbedConfig(kind="sne", hidden_ratio=0.25).hidden_width(10)


def test_resolved_lists_every_option_the_kind_reads():
    assert EmbedConfig(kind="fsne").resolved(128) == {
        "qkv_embed": "fsne",
        "qkv_bias": True,
        "qkv_hidden": 128,
        "qkv_norm": False,
        "qkv_code_mode": "concat",
        "qkv_code_dim": 3,
        "qkv_code_init": "onehot",
        "qkv_code_scale": pytest.approx(128**0.5),
        "qkv_code_scope": "block",
    }
    cfg = EmbedConfig(kind="psne", shared="second", hidden=10)
    assert EmbedConfig.from_options(**cfg.options()) == cfg


@pytest.mark.parametrize("options", OPTION_SETS, ids=option_id)
def test_xca_is_equivariant_to_token_permutation(options):
    torch.manual_seed(0)
    xca = qkv.convert(XCA(DIM, num_heads=4, qkv_bias=True), **options).eval()
    x = torch.randn(2, 9, DIM)
    perm = torch.randperm(9)
    torch.testing.assert_close(xca(x[:, perm]), xca(x)[:, perm], rtol=1e-5, atol=1e-6)
