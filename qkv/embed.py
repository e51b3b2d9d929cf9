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

Defaults and why:

- hidden width ``h``: sne ``C/2`` and psne ``3C/4`` keep the block's parameter count equal to the linear
  baseline (3(2Ch+h+C) ~ 3C^2+3C); fsne ``C`` (the shared layers are already 1/3 of the baseline).
- psne shares the first layer (a shared feature layer with separate output heads).
- fsne: concat of a 3-dim one-hot code with the norm of a LayerNorm-ed token, ``sqrt(C)``. NOTE deliberate
  deviation from the "small random code" reading: a code drawn with std 0.02 shifts the pre-activation by
  ~0.02 * |c| against ~0.02 * sqrt(C) from the token, so Q, K and V come out identical (cosine >= 0.999
  in every block, before and after training, docs/paper.md). A one-hot code as large as the token starts the three
  branches apart (XCiT-N12, 32 px: cosine <= 0.8 at initialisation); ``code_init='normal', code_scale=0.02``
  reproduces the collapsing reading.
- codes per block, biases on (XCiT's ``qkv_bias=True``), no normalisation inside the embedding, ReLU between
  the two layers only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

__all__ = [
    "CODE_INITS",
    "CODE_MODES",
    "CODE_SCOPES",
    "EMBED_KINDS",
    "PSNE_SHARED",
    "EmbedConfig",
    "GroupedLayerNorm",
    "GroupedLinear",
    "QKVEmbed",
    "init_codes",
]

EMBED_KINDS = ("linear", "sne", "psne", "fsne")
PSNE_SHARED = ("first", "second")
CODE_MODES = ("concat", "add", "gate")
CODE_INITS = ("onehot", "normal")
CODE_SCOPES = ("block", "global")

# Hidden width as a fraction of the token dimension when none is given (see the module docstring).
_DEFAULT_HIDDEN_RATIO = {"sne": 0.5, "psne": 0.75, "fsne": 1.0}
_NORM_EPS = 1e-6  # as XCiT's own LayerNorms

# Which options each kind reads; giving an option to a kind that does not read it is an error.
_MLP_OPTIONS = frozenset({"bias", "hidden", "hidden_ratio", "norm"})
_KIND_OPTIONS = {
    "linear": frozenset({"bias"}),
    "sne": _MLP_OPTIONS,
    "psne": _MLP_OPTIONS | {"shared"},
    "fsne": _MLP_OPTIONS | {"code_mode", "code_dim", "code_init", "code_scale", "code_scope"},
}


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"qkv_{name}={value!r} is not one of: {', '.join(map(str, choices))}")


def _positive(name: str, value, integer: bool) -> None:
    """``None`` or a positive (integer / finite) number; bools are not numbers here."""
    if value is None:
        return
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not 0 < value < math.inf:
        what = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"qkv_{name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class EmbedConfig:
    """One Q/K/V embedding configuration. ``None`` means "the default for this kind" (see module docstring).

    The keyword names used by ``timm.create_model``, :func:`qkv.convert` and ``params.yaml`` are these field
    names with a ``qkv_`` prefix, and ``qkv_embed`` for ``kind``.
    """

    kind: str = "linear"
    bias: bool = True
    hidden: int | None = None  # absolute hidden width h; mutually exclusive with hidden_ratio
    hidden_ratio: float | None = None  # h = hidden_ratio * C
    norm: bool | None = None  # LayerNorm on the first layer's output (before the ReLU)
    shared: str | None = None  # psne: which layer is shared
    code_mode: str | None = None  # fsne: how the code enters
    code_dim: int | None = None  # fsne concat: code length (add: C, gate: h, fixed by the mode)
    code_init: str | None = None  # fsne: "onehot" (c_i[j] = scale if j % 3 == i) or "normal" (std = scale)
    code_scale: float | None = None  # fsne: one-hot value or normal std; default sqrt(C) / 0.02 (see above)
    code_scope: str | None = None  # fsne: codes per block or one set shared by all blocks

    def __post_init__(self):
        _choice("embed", self.kind, EMBED_KINDS)
        given = {f.name for f in fields(self) if f.name not in ("kind", "bias") and getattr(self, f.name) is not None}
        stray = sorted(given - _KIND_OPTIONS[self.kind])
        if stray:
            raise ValueError(
                f"{', '.join('qkv_' + s for s in stray)} does not apply to qkv_embed={self.kind!r}; it reads: "
                f"{', '.join('qkv_' + o for o in sorted(_KIND_OPTIONS[self.kind]))}"
            )
        for name in ("bias", "norm"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"qkv_{name} must be true or false, got {value!r}")
        if self.hidden is not None and self.hidden_ratio is not None:
            raise ValueError("give qkv_hidden or qkv_hidden_ratio, not both")
        _positive("hidden", self.hidden, integer=True)
        _positive("hidden_ratio", self.hidden_ratio, integer=False)
        _positive("code_dim", self.code_dim, integer=True)
        _positive("code_scale", self.code_scale, integer=False)
        for name, choices in (
            ("shared", PSNE_SHARED),
            ("code_mode", CODE_MODES),
            ("code_init", CODE_INITS),
            ("code_scope", CODE_SCOPES),
        ):
            if getattr(self, name) is not None:
                _choice(name, getattr(self, name), choices)
        if self.code_dim is not None and self.resolved_code_mode != "concat":
            raise ValueError(
                f"qkv_code_dim applies to qkv_code_mode='concat' only; with {self.code_mode!r} the code "
                "length is fixed (add: the token dimension, gate: the hidden width)"
            )

    @classmethod
    def from_options(cls, qkv_embed: str = "linear", **options) -> EmbedConfig:
        """Build from ``qkv_*`` keyword options, as ``timm.create_model`` and ``params.yaml`` spell them."""
        known = {f"qkv_{f.name}": f.name for f in fields(cls) if f.name != "kind"}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid: qkv_embed, {', '.join(sorted(known))}")
        return cls(kind=qkv_embed, **{known[k]: v for k, v in options.items()})

    # Resolved values: what the embedding actually uses, defaults filled in.
    @property
    def resolved_shared(self) -> str:
        return self.shared or "first"

    @property
    def resolved_code_mode(self) -> str:
        return self.code_mode or "concat"

    @property
    def resolved_code_init(self) -> str:
        return self.code_init or "onehot"

    @property
    def resolved_code_scope(self) -> str:
        return self.code_scope or "block"

    def hidden_width(self, dim: int) -> int:
        """Hidden width h for token dimension ``dim`` (0 for the linear baseline)."""
        if self.kind == "linear":
            return 0
        if self.hidden is not None:
            return self.hidden
        ratio = self.hidden_ratio if self.hidden_ratio is not None else _DEFAULT_HIDDEN_RATIO[self.kind]
        width = ratio * dim
        if abs(width - round(width)) > 1e-9 or round(width) <= 0:
            raise ValueError(f"qkv_hidden_ratio={ratio} gives a non-integer hidden width {width} for dim {dim}")
        return int(round(width))

    def code_width(self, dim: int) -> int:
        """Length of each of the three codes (0 unless fsne)."""
        if self.kind != "fsne":
            return 0
        mode = self.resolved_code_mode
        if mode == "concat":
            return self.code_dim if self.code_dim is not None else 3
        return dim if mode == "add" else self.hidden_width(dim)

    def code_init_scale(self, dim: int) -> float:
        """The one-hot value or normal std of the codes. Default for one-hot concat and add codes: each code
        gets the norm of a LayerNorm-ed token, sqrt(C), so it shifts the first layer as much as the token does;
        one-hot gates: 1 (each branch passes a third of the hidden units unchanged); normal: 0.02."""
        if self.code_scale is not None:
            return float(self.code_scale)
        if self.resolved_code_init == "normal":
            return 0.02
        if self.resolved_code_mode == "gate":
            return 1.0
        return math.sqrt(dim / math.ceil(self.code_width(dim) / 3))

    def resolved(self, dim: int) -> dict:
        """Every option this kind reads, with defaults filled in, keyed as in ``params.yaml``."""
        out = {"qkv_embed": self.kind, "qkv_bias": self.bias}
        if self.kind == "linear":
            return out
        out.update(qkv_hidden=self.hidden_width(dim), qkv_norm=bool(self.norm))
        if self.kind == "psne":
            out["qkv_shared"] = self.resolved_shared
        if self.kind == "fsne":
            out.update(
                qkv_code_mode=self.resolved_code_mode,
                qkv_code_dim=self.code_width(dim),
                qkv_code_init=self.resolved_code_init,
                qkv_code_scale=self.code_init_scale(dim),
                qkv_code_scope=self.resolved_code_scope,
            )
        return out

    def options(self) -> dict:
        """The non-default options as ``qkv_*`` keywords (the inverse of :meth:`from_options`)."""
        raw = {k: v for k, v in asdict(self).items() if k != "kind" and v is not None}
        return {"qkv_embed": self.kind, **{f"qkv_{k}": v for k, v in raw.items()}}


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
