"""A straightforward reference for every Q/K/V embedding: each branch computed on its own, literally as
the structure is described (no stacked products, no code-term shortcut). The fast QKVEmbed must match it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qkv.embed import QKVEmbed


def _norm(embed: QKVEmbed, hid: torch.Tensor, branch: int) -> torch.Tensor:
    norm = embed.norm
    if isinstance(norm, torch.nn.Identity):
        return hid
    if norm.weight.dim() == 2:  # one LayerNorm per branch
        return F.layer_norm(hid, hid.shape[-1:], norm.weight[branch], norm.bias[branch], norm.eps)
    return F.layer_norm(hid, hid.shape[-1:], norm.weight, norm.bias, norm.eps)


def _rows(bias: torch.Tensor | None, lo: int, hi: int):
    return None if bias is None else bias[lo:hi]


def reference_qkv(embed: QKVEmbed, x: torch.Tensor) -> torch.Tensor:
    """(B, N, C) -> (B, N, 3C), one branch at a time."""
    C, H, cfg = embed.dim, embed.hidden, embed.cfg
    if embed.kind == "linear":
        return torch.cat(
            [F.linear(x, embed.weight[i * C : (i + 1) * C], _rows(embed.bias, i * C, (i + 1) * C)) for i in range(3)],
            dim=-1,
        )
    outs = []
    for i in range(3):
        if embed.kind == "sne":
            w1, b1 = embed.fc1.weight[i * H : (i + 1) * H], _rows(embed.fc1.bias, i * H, (i + 1) * H)
            hid = F.relu(_norm(embed, F.linear(x, w1, b1), i))
            out = F.linear(hid, embed.fc2.weight[i], None if embed.fc2.bias is None else embed.fc2.bias[i])
        elif embed.kind == "psne" and cfg.resolved_shared == "first":
            hid = F.relu(_norm(embed, embed.fc1(x), i))
            out = F.linear(hid, embed.fc2.weight[i * C : (i + 1) * C], _rows(embed.fc2.bias, i * C, (i + 1) * C))
        elif embed.kind == "psne":
            w1, b1 = embed.fc1.weight[i * H : (i + 1) * H], _rows(embed.fc1.bias, i * H, (i + 1) * H)
            out = embed.fc2(F.relu(_norm(embed, F.linear(x, w1, b1), i)))
        else:  # fsne: the whole shared MLP, run once per branch with that branch's code
            code = embed.codes[i]
            mode = cfg.resolved_code_mode
            if mode == "concat":
                pre = embed.fc1(torch.cat([x, code.expand(*x.shape[:-1], code.numel())], dim=-1))
            elif mode == "add":
                pre = embed.fc1(x + code)
            else:
                pre = embed.fc1(x)
            hid = F.relu(_norm(embed, pre, i))
            if mode == "gate":
                hid = hid * code
            out = embed.fc2(hid)
        outs.append(out)
    return torch.cat(outs, dim=-1)
