"""Q/K/V embeddings for attention: the linear baseline and the three non-linear structures of
"Rethinking Query, Key, and Value Embedding in Vision Transformer under Tiny Model Constraints"
(Ahn et al., arXiv 2111.10017; journal names SNE / P-SNE / F-SNE, Mathematics 2023, 11(8), 1933).

Every embedding maps tokens ``(B, N, C)`` to ``(B, N, 3C)`` laid out as ``[q | k | v]``, exactly like the
fused ``Linear(C, 3C)`` it replaces in XCiT's XCA and ViT's Attention, so the attention code reshapes it
unchanged.

Only the abstracts of the paper are available, so every structural detail they leave open is an option of
:class:`EmbedConfig` (see the assumption register in docs/paper.md):

``linear``  the baseline: one ``Linear(C, 3C)`` with timm's parameter names (``weight``, ``bias``).
``sne``     separate non-linear embedding: ``fc2_i(relu(fc1_i(x)))`` for i in q, k, v. The three first
            layers run as one ``Linear(C, 3h)``; the three second layers as one grouped product.
``psne``    partially shared: ``shared='first'`` shares the first layer (one ``Linear(C, h)`` whose hidden
            feeds three output heads, i.e. one ``Linear(h, 3C)``); ``shared='second'`` shares the second
            layer (three first layers as one ``Linear(C, 3h)``, one ``Linear(h, C)`` applied per branch).
``fsne``    fully shared: one ``fc2(relu(fc1(.)))`` for all three, told apart by trainable codes c_i:
            ``code_mode='concat'`` feeds ``[x; c_i]``, ``'add'`` feeds ``x + c_i``, ``'gate'`` multiplies the
            hidden activation by c_i. For concat and add the code only shifts the first layer's output by a
            per-branch bias ``W c_i``, so ``fc1`` runs once over the tokens and the three code terms (3 x h
            numbers) are added afterwards.

The options and their defaults, with the reasoning, are in :mod:`qkv.options`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from .options import EmbedConfig

__all__ = ["GroupedLayerNorm", "GroupedLinear", "QKVEmbed", "init_codes"]

_NORM_EPS = 1e-6  # as XCiT's own LayerNorms


class GroupedLinear(nn.Module):
    """``G`` independent linear layers applied to ``(..., G, in)``, as one batched product."""

    def __init__(self, groups: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(groups, out_features)) if bias else None
        trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        G, I = x.shape[-2:]
        out = torch.bmm(x.reshape(-1, G, I).transpose(0, 1), self.weight.transpose(1, 2))  # (G, M, out)
        out = out.transpose(0, 1).reshape(*x.shape[:-1], -1)  # (..., G, out)
        return out if self.bias is None else out + self.bias


class GroupedLayerNorm(nn.Module):
    """``G`` independent LayerNorms over the last dim of ``(..., G, C)``."""

    def __init__(self, groups: int, dim: int, eps: float = _NORM_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(groups, dim))
        self.bias = nn.Parameter(torch.zeros(groups, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias


def init_codes(codes: torch.Tensor, init: str, scale: float) -> None:
    """Fill ``codes`` (3, L) in place: "onehot" sets c_i[j] = scale where j % 3 == i (a one-hot code for
    L = 3, a partition of the L entries into three groups otherwise); "normal" draws N(0, scale^2)."""
    with torch.no_grad():
        if init == "onehot":
            index = torch.arange(codes.shape[1], device=codes.device)
            codes.copy_((index.unsqueeze(0) % 3 == torch.arange(3, device=codes.device).unsqueeze(1)) * scale)
        else:
            codes.normal_(0.0, scale)


class QKVEmbed(nn.Module):
    """Token-wise Q/K/V embedding ``(B, N, C) -> (B, N, 3C)`` chosen by ``cfg.kind``.

    Args:
        dim: token dimension C.
        cfg: the embedding configuration.
        codes: for ``fsne`` with ``code_scope='global'``, the ``(3, L)`` code parameter shared by every block
            (create it with :meth:`new_codes`); must be ``None`` otherwise.
    """

    def __init__(self, dim: int, cfg: EmbedConfig, *, codes: nn.Parameter | None = None):
        super().__init__()
        self.dim, self.cfg, self.kind = dim, cfg, cfg.kind
        self.hidden = H = cfg.hidden_width(dim)
        bias = cfg.bias
        if self.kind == "linear":
            # Same parameter names and shapes as the nn.Linear(dim, 3 * dim) it replaces.
            self.weight = nn.Parameter(torch.empty(3 * dim, dim))
            self.bias = nn.Parameter(torch.zeros(3 * dim)) if bias else None
            trunc_normal_(self.weight, std=0.02)
            return
        separate_first = self.kind == "sne" or (self.kind == "psne" and cfg.resolved_shared == "second")
        if separate_first:
            self.fc1 = nn.Linear(dim, 3 * H, bias=bias)  # the three first layers, stacked
        elif self.kind == "fsne" and cfg.resolved_code_mode == "concat":
            self.fc1 = nn.Linear(dim + cfg.code_width(dim), H, bias=bias)  # input is [x; c_i]
        else:
            self.fc1 = nn.Linear(dim, H, bias=bias)
        if cfg.norm:
            self.norm = GroupedLayerNorm(3, H) if separate_first else nn.LayerNorm(H, eps=_NORM_EPS)
        else:
            self.norm = nn.Identity()
        if self.kind == "sne":
            self.fc2 = GroupedLinear(3, H, dim, bias=bias)
        elif self.kind == "psne" and cfg.resolved_shared == "first":
            self.fc2 = nn.Linear(H, 3 * dim, bias=bias)  # three output heads on one hidden
        else:
            self.fc2 = nn.Linear(H, dim, bias=bias)
        for layer in (self.fc1, self.fc2):
            trunc_normal_(layer.weight, std=0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        if self.kind == "fsne":
            if cfg.resolved_code_scope == "global":
                if codes is None:
                    raise ValueError(
                        "qkv_code_scope='global' needs the shared codes: pass codes=QKVEmbed.new_codes(...)"
                    )
                expected = (3, cfg.code_width(dim))
                if tuple(codes.shape) != expected:
                    raise ValueError(f"shared codes have shape {tuple(codes.shape)}, expected {expected}")
                self.codes = codes
            else:
                self.codes = self.new_codes(dim, cfg)
        if codes is not None and not (self.kind == "fsne" and cfg.resolved_code_scope == "global"):
            raise ValueError("codes= is only for qkv_embed='fsne' with qkv_code_scope='global'")

    @staticmethod
    def new_codes(dim: int, cfg: EmbedConfig) -> nn.Parameter:
        """A freshly initialised ``(3, L)`` code parameter for ``cfg`` at token dimension ``dim``."""
        codes = nn.Parameter(torch.empty(3, cfg.code_width(dim)))
        init_codes(codes, cfg.resolved_code_init, cfg.code_init_scale(dim))
        return codes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H = self.hidden
        if self.kind == "linear":
            return F.linear(x, self.weight, self.bias)  # (B, N, 3C)
        if self.kind == "psne" and self.cfg.resolved_shared == "first":
            hid = F.relu(self.norm(self.fc1(x)))  # (B, N, H)
            return self.fc2(hid)  # (B, N, 3C)
        if self.kind == "fsne":
            hid = self._fsne_hidden(x)  # (B, N, 3, H)
        else:  # sne, psne-second: three first layers in one product
            hid = F.relu(self.norm(self.fc1(x).unflatten(-1, (3, H))))  # (B, N, 3, H)
        return self.fc2(hid).flatten(-2)  # (B, N, 3, C) -> (B, N, 3C)

    def _fsne_hidden(self, x: torch.Tensor) -> torch.Tensor:
        C = self.dim
        mode = self.cfg.resolved_code_mode
        weight = self.fc1.weight
        if mode == "gate":
            hid = F.relu(self.norm(self.fc1(x)))  # (B, N, H)
            return hid.unsqueeze(-2) * self.codes  # (B, N, 3, H)
        # fc1([x; c_i]) = W_x x + W_c c_i + b and fc1(x + c_i) = W x + W c_i + b: run fc1 over the tokens
        # once and add the three per-branch code terms (3, H).
        if mode == "concat":
            pre = F.linear(x, weight[:, :C], self.fc1.bias)  # (B, N, H)
            code_term = self.codes @ weight[:, C:].t()  # (3, H)
        else:  # add
            pre = self.fc1(x)
            code_term = self.codes @ weight.t()
        return F.relu(self.norm(pre.unsqueeze(-2) + code_term))  # (B, N, 3, H)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.cfg.resolved(self.dim).items())
