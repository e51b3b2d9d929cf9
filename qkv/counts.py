"""Closed-form parameter and FLOP counts for the Q/K/V embeddings and for XCiT built around them.

Pure functions of the configuration, written out layer by layer like nanoGPT's ``estimate_mfu``, so a
counter (fvcore, torch's FlopCounterMode) can be checked against them and a reader can see where each number
comes from.

FLOP convention: fvcore's, the one XCiT's and timm's tables use — one multiply-add is one flop, for one image
(batch 1) in eval mode. Matrix products and convolutions count their multiply-adds; LayerNorm counts 5 per
element with an affine transform and 4 without; BatchNorm in eval 2 per element; softmax, GELU, L2
normalisation, residual additions and elementwise products count zero. :func:`xcit_flops` returns the
products and the norms separately because torch's FlopCounterMode counts only the products (at 2 flops per
multiply-add).
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import EmbedConfig
from .xcit import XcitArch

__all__ = ["FlopCount", "embed_flops", "embed_params", "stem_channels", "xcit_flops", "xcit_params"]

_POS_HIDDEN = 64  # PositionalEncodingFourier: 2 x 32 Fourier features projected to C by a 1x1 conv


@dataclass(frozen=True)
class FlopCount:
    """Flops of one forward pass of one image: ``matmul`` (products and convolutions) + ``norm`` (norms)."""

    matmul: int
    norm: int

    @property
    def total(self) -> int:
        return self.matmul + self.norm

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(self.matmul + other.matmul, self.norm + other.norm)

    def __mul__(self, k: int) -> FlopCount:
        return FlopCount(self.matmul * k, self.norm * k)


def _separate_first(cfg: EmbedConfig) -> bool:
    return cfg.kind == "sne" or (cfg.kind == "psne" and cfg.resolved_shared == "second")


def embed_params(cfg: EmbedConfig, dim: int, *, include_codes: bool = True) -> int:
    """Parameters of one embedding at token dimension ``dim``; ``include_codes=False`` leaves out fsne codes
    (for global codes, counted once per model)."""
    C, H, b = dim, cfg.hidden_width(dim), int(cfg.bias)
    if cfg.kind == "linear":
        return 3 * C * C + 3 * C * b
    branches_fc1 = 3 if _separate_first(cfg) else 1
    branches_fc2 = 3 if cfg.kind == "sne" or (cfg.kind == "psne" and cfg.resolved_shared == "first") else 1
    fc1_in = C + (cfg.code_width(C) if cfg.kind == "fsne" and cfg.resolved_code_mode == "concat" else 0)
    params = branches_fc1 * (fc1_in * H + H * b) + branches_fc2 * (H * C + C * b)
    if cfg.norm:
        params += branches_fc1 * 2 * H
    if cfg.kind == "fsne" and include_codes:
        params += 3 * cfg.code_width(C)
    return params


def embed_flops(cfg: EmbedConfig, dim: int, tokens: int) -> FlopCount:
    """Flops of one embedding over ``tokens`` tokens of one image."""
    C, H, N = dim, cfg.hidden_width(dim), tokens
    if cfg.kind == "linear":
        return FlopCount(N * C * 3 * C, 0)
    if cfg.kind == "psne" and cfg.resolved_shared == "first":
        # fc1: C -> H once; fc2: H -> 3C. LayerNorm (affine) over (N, H).
        return FlopCount(N * C * H + N * H * 3 * C, 5 * N * H if cfg.norm else 0)
    if cfg.kind == "fsne":
        mode = cfg.resolved_code_mode
        # fc1 over the tokens once; fc2 over the three branches' hidden.
        matmul = N * C * H + 3 * N * H * C
        if mode == "concat":
            matmul += 3 * cfg.code_width(C) * H  # code term W_c c_i, once per image
        elif mode == "add":
            matmul += 3 * C * H  # code term W c_i, once per image
        # The (affine) LayerNorm sees (N, 3, H) after the code term, or (N, H) before the gate.
        norm = (5 * N * H if mode == "gate" else 5 * N * 3 * H) if cfg.norm else 0
        return FlopCount(matmul, norm)
    # sne and psne-second: fc1 C -> 3H in one product; fc2 three (H -> C) products. The grouped LayerNorm is
    # F.layer_norm without affine (4 per element) followed by an elementwise affine (uncounted).
    return FlopCount(N * C * 3 * H + 3 * N * H * C, 4 * N * 3 * H if cfg.norm else 0)


def stem_channels(patch_size: int, dim: int) -> list[int]:
    """Output channels of the stride-2 3x3 convolutions of the patch-embedding stem."""
    stems = {16: [dim // 8, dim // 4, dim // 2, dim], 8: [dim // 4, dim // 2, dim], 4: [dim // 2, dim]}
    if patch_size not in stems:
        raise ValueError(f"patch_size={patch_size!r} is not one of: 4, 8, 16")
    return stems[patch_size]


def xcit_params(
    arch: XcitArch, cfg: EmbedConfig, *, num_classes: int, in_chans: int = 3, class_attn: bool = False
) -> int:
    """Trainable parameters of ``qkv_xcit_*`` (BatchNorm running statistics are buffers, not counted)."""
    C, b, hidden_mlp = arch.embed_dim, int(cfg.bias), int(arch.embed_dim * arch.mlp_ratio)
    total, c_in = 0, in_chans
    for c_out in stem_channels(arch.patch_size, C):
        total += c_in * c_out * 9 + 2 * c_out  # conv (no bias) + BN affine
        c_in = c_out
    total += C  # cls_token
    total += _POS_HIDDEN * C + C  # positional encoding projection
    mlp = C * hidden_mlp + hidden_mlp + hidden_mlp * C + C
    codes_global = cfg.kind == "fsne" and cfg.resolved_code_scope == "global"
    embed = embed_params(cfg, C, include_codes=not codes_global)
    xca_block = (
        2 * C  # norm1
        + arch.num_heads  # temperature
        + embed
        + C * C
        + C  # proj
        + 2 * C  # norm3
        + (9 * C + C) * 2
        + 2 * C  # LPI: two depthwise 3x3 convs with bias, BN affine
        + 2 * C  # norm2
        + mlp
        + 3 * C  # gamma1, gamma3, gamma2
    )
    qkv_ca = embed if class_attn else 3 * (C * C + C * b)
    ca_block = 2 * C + qkv_ca + C * C + C + 2 * C + mlp + 2 * C  # norm1, q/k/v, proj, norm2, mlp, gammas
    total += arch.depth * xca_block + arch.cls_attn_layers * ca_block
    if codes_global:
        total += 3 * cfg.code_width(C)
    total += 2 * C  # final norm
    total += C * num_classes + num_classes if num_classes > 0 else 0
    return total


def _conv_out(size: int) -> int:
    return (size + 2 - 3) // 2 + 1  # 3x3, stride 2, padding 1


def xcit_flops(
    arch: XcitArch,
    cfg: EmbedConfig,
    *,
    img_size: int | tuple[int, int],
    num_classes: int,
    in_chans: int = 3,
    class_attn: bool = False,
) -> FlopCount:
    """Flops of one eval-mode forward pass of one image, XCA on its explicit matmul path."""
    C, heads, hidden_mlp = arch.embed_dim, arch.num_heads, int(arch.embed_dim * arch.mlp_ratio)
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    flops, c_in = FlopCount(0, 0), in_chans
    for c_out in stem_channels(arch.patch_size, C):
        height, width = _conv_out(height), _conv_out(width)
        flops += FlopCount(height * width * c_out * c_in * 9, 2 * height * width * c_out)  # conv + BN (eval)
        c_in = c_out
    N = height * width  # tokens
    flops += FlopCount(N * _POS_HIDDEN * C, 0)  # positional encoding (computed once, whatever the batch)

    head_dim = C // heads
    xca = FlopCount(
        N * C * head_dim * 2  # q k^T and attn v: per head (d_h x N)(N x d_h), (d_h x d_h)(d_h x N)
        + N * C * C  # proj
        + N * C * 9 * 2  # LPI depthwise convs
        + N * C * hidden_mlp * 2,  # MLP
        5 * N * C * 3 + 2 * N * C,  # norm1, norm3, norm2 + LPI BatchNorm
    )
    flops += (xca + embed_flops(cfg, C, N)) * arch.depth

    T = N + 1  # with the class token
    if class_attn:
        qkv = embed_flops(cfg, C, T)
    else:
        qkv = FlopCount(C * C + 2 * T * C * C, 0)  # q for the class token; k, v for all tokens
    ca = FlopCount(
        2 * T * C  # class query against all keys, then the weighted values
        + C * C  # proj (class token)
        + 2 * C * hidden_mlp,  # MLP (class token)
        5 * T * C + (5 * T * C if arch.tokens_norm else 5 * C),  # norm1, norm2 (all tokens or class token)
    )
    flops += (ca + qkv) * arch.cls_attn_layers
    flops += FlopCount(C * num_classes if num_classes > 0 else 0, 5 * T * C)  # head, final norm
    return flops
