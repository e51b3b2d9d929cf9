"""The options of a Q/K/V embedding (:class:`EmbedConfig`, the ``qkv_*`` keys of a model), checked when made,
and the defaults each kind resolves them to. The layers they build are in :mod:`qkv.embed`.

Only the abstracts of the paper are available, so every structural detail they leave open is an option here
(see the assumption register in docs/paper.md).

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

__all__ = ["CODE_INITS", "CODE_MODES", "CODE_SCOPES", "EMBED_KINDS", "PSNE_SHARED", "EmbedConfig"]

EMBED_KINDS = ("linear", "sne", "psne", "fsne")
PSNE_SHARED = ("first", "second")
CODE_MODES = ("concat", "add", "gate")
CODE_INITS = ("onehot", "normal")
CODE_SCOPES = ("block", "global")

# Hidden width as a fraction of the token dimension when none is given (see the module docstring).
_DEFAULT_HIDDEN_RATIO = {"sne": 0.5, "psne": 0.75, "fsne": 1.0}
# Upper bounds of the sizes one may ask for: a hidden layer 16x the token width is past anything the paper or an
# MLP block uses (timm's mlp_ratio is 4); a code 4,096 long likewise. Beyond them a typo would only show as the
# allocator's out-of-memory error, naming no option.
MAX_HIDDEN_RATIO = 16.0
MAX_WIDTH = 65_536

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


def _positive(name: str, value, integer: bool, most: float = math.inf) -> None:
    """``None`` or a positive (integer / finite) number, at most ``most``; bools are not numbers here."""
    if value is None:
        return
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not 0 < value < math.inf:
        what = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"qkv_{name} must be {what}, got {value!r}")
    if value > most:
        raise ValueError(f"qkv_{name} must be at most {most:g} (a larger layer is no embedding), got {value!r}")


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
        _positive("hidden", self.hidden, integer=True, most=MAX_WIDTH)
        _positive("hidden_ratio", self.hidden_ratio, integer=False, most=MAX_HIDDEN_RATIO)
        _positive("code_dim", self.code_dim, integer=True, most=MAX_WIDTH)
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
