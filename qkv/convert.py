"""Retrofit a timm model's attention with a Q/K/V embedding from :mod:`qkv.embed`.

Any attention module that computes Q, K and V with one fused ``qkv = nn.Linear(d, 3d)`` and reshapes its
output as ``(B, N, 3, heads, d/heads)`` takes a :class:`~qkv.embed.QKVEmbed` in its place unchanged: XCiT's
``XCA`` and ViT/DeiT's ``Attention`` do. XCiT's class-attention blocks (CaiT's ``ClassAttn``) use separate
``q``, ``k``, ``v`` linears; with ``qkv_class_attn=True`` they are swapped for :class:`ClassAttnQKV`.
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import torch
from timm.models.cait import ClassAttn
from torch import nn

from .embed import QKVEmbed
from .options import EmbedConfig

__all__ = ["ClassAttnQKV", "convert", "embed_modules", "install"]


class ClassAttnQKV(ClassAttn):
    """CaiT/XCiT class attention whose Q, K, V come from one :class:`QKVEmbed`.

    The embedding runs over all tokens and the query of the class token is taken from its output.
    NOTE timm's ClassAttn computes the query for the class token only; a fused non-linear embedding cannot
    skip the other tokens' queries without splitting its shared layers, so this costs N extra query rows.
    """

    def __init__(self, dim: int, num_heads: int, embed: QKVEmbed, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads=num_heads, attn_drop=attn_drop, proj_drop=proj_drop)
        del self.q, self.k, self.v
        self.qkv = embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, C/heads) each
        q = q[:, :, :1]  # the class token's query: (B, heads, 1, C/heads)
        if self.fused_attn:
            x_cls = nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, 1, N)
            attn = self.attn_drop(attn.softmax(dim=-1))
            x_cls = attn @ v  # (B, heads, 1, C/heads)
        x_cls = x_cls.transpose(1, 2).reshape(B, 1, C)
        return self.proj_drop(self.proj(x_cls))


def _fused_qkv(module: nn.Module) -> nn.Linear | None:
    layer = getattr(module, "qkv", None)
    if isinstance(layer, nn.Linear) and layer.out_features == 3 * layer.in_features:
        return layer
    return None


@torch.no_grad()
def _copy_linear(embed: QKVEmbed, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Give a ``linear`` embedding the replaced layer's weights (and its bias where both have one)."""
    embed.weight.copy_(weight)
    if embed.bias is not None:
        embed.bias.copy_(bias) if bias is not None else embed.bias.zero_()


def convert(model: nn.Module, qkv_embed: str = "linear", *, qkv_class_attn: bool = False, **options) -> nn.Module:
    """Replace every fused ``qkv`` linear in ``model`` (in place) with the chosen embedding; returns ``model``.

    Args:
        model: a timm model whose attention uses a fused ``qkv = nn.Linear(d, 3d)``.
        qkv_embed: ``linear``, ``sne``, ``psne`` or ``fsne``.
        qkv_class_attn: also convert CaiT/XCiT class-attention blocks (separate q, k, v linears).
        **options: ``qkv_*`` options of :class:`~qkv.options.EmbedConfig`. ``qkv_bias`` defaults to whether the
            replaced layer has a bias.

    With ``qkv_embed='linear'`` the replaced layers' weights and biases are kept, so the converted model computes
    the same function (unless ``qkv_bias=False`` drops a bias). Other embeddings start from a fresh
    initialisation.
    """
    cfg = EmbedConfig.from_options(qkv_embed, **options)  # validated once, before touching the model
    return install(model, cfg, class_attn=qkv_class_attn, bias_from_layer="qkv_bias" not in options)


def _reads_weight(module: nn.Module) -> bool:
    """Whether ``module``'s forward uses its ``qkv`` layer's weight itself instead of calling the layer (BEiT, EVA
    and Swin V2 keep their q/v biases outside the linear and call ``F.linear(x, self.qkv.weight, bias)``)."""
    if hasattr(module, "q_bias"):
        return True
    try:
        return "qkv.weight" in inspect.getsource(type(module).forward)
    except (OSError, TypeError):  # no source to read: judged by q_bias alone
        return False


def _refuse_direct_weight_use(model: nn.Module, targets: list[nn.Module]) -> None:
    """Refuse, before anything is replaced, a model whose attention reads ``qkv.weight`` directly: an embedding in
    that place would fail at the first forward."""
    names = {id(m): n for n, m in model.named_modules()}
    direct = [m for m in targets if _reads_weight(m)]
    if direct:
        raise ValueError(
            f"{type(model).__name__}: its attention ({type(direct[0]).__name__} at {names[id(direct[0])]}, and "
            f"{len(direct) - 1} more) uses qkv.weight itself instead of calling its qkv layer (q/v biases kept "
            "outside it, as in BEiT, EVA and Swin V2), so a Q/K/V embedding cannot take that layer's place; "
            "convert a model whose attention calls its qkv layer (XCiT, ViT/DeiT, CaiT)"
        )


def install(
    model: nn.Module, cfg: EmbedConfig, *, class_attn: bool = False, bias_from_layer: bool = False
) -> nn.Module:
    """:func:`convert` with a ready :class:`EmbedConfig`: every fused ``qkv`` (and with ``class_attn`` every
    class attention's q, k, v) becomes ``QKVEmbed(dim, cfg)``. ``bias_from_layer`` gives each embedding a bias
    exactly where the layer it replaces has one, instead of ``cfg.bias``."""
    if not isinstance(class_attn, bool):
        raise ValueError(f"qkv_class_attn must be true or false, got {class_attn!r}")
    targets = [m for m in model.modules() if _fused_qkv(m) is not None]
    class_targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if class_attn and type(child) is ClassAttn
    ]
    if not targets and not class_targets:
        raise ValueError(
            f"{type(model).__name__} has no attention with a fused qkv = nn.Linear(d, 3d) to convert "
            "(supported: timm XCiT's XCA, ViT/DeiT's Attention, and with qkv_class_attn=True CaiT/XCiT's ClassAttn)"
        )
    _refuse_direct_weight_use(model, targets)
    with_bias = {cfg.bias: cfg, not cfg.bias: replace(cfg, bias=not cfg.bias)} if bias_from_layer else None
    shared_codes: dict[int, nn.Parameter] = {}

    def build(dim: int, bias: bool, like: torch.Tensor) -> QKVEmbed:
        layer_cfg = with_bias[bias] if with_bias else cfg
        codes = None
        if layer_cfg.kind == "fsne" and layer_cfg.resolved_code_scope == "global":
            if dim not in shared_codes:
                shared_codes[dim] = QKVEmbed.new_codes(dim, layer_cfg)
            codes = shared_codes[dim]
        return QKVEmbed(dim, layer_cfg, codes=codes).to(device=like.device, dtype=like.dtype)

    for module in targets:
        old = module.qkv
        new = build(old.in_features, old.bias is not None, old.weight)
        if new.kind == "linear":
            _copy_linear(new, old.weight, old.bias)
        module.qkv = new
    for parent, name, old in class_targets:
        dim = old.q.in_features
        embed = build(dim, old.q.bias is not None, old.q.weight)
        if embed.kind == "linear":
            biases = [layer.bias for layer in (old.q, old.k, old.v)]
            _copy_linear(
                embed,
                torch.cat([old.q.weight, old.k.weight, old.v.weight]),
                None if biases[0] is None else torch.cat(biases),
            )
        new = ClassAttnQKV(dim, old.num_heads, embed, attn_drop=old.attn_drop.p, proj_drop=old.proj_drop.p)
        new.proj.load_state_dict(old.proj.state_dict())
        new.fused_attn = old.fused_attn
        setattr(parent, name, new.to(device=old.proj.weight.device, dtype=old.proj.weight.dtype))
    return model


def embed_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Q/K/V embedding in ``model``: :class:`QKVEmbed` layers, and the fused
    ``qkv`` linears of unconverted timm models, in forward order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, QKVEmbed) or (
            name.endswith("qkv") and isinstance(module, nn.Linear) and module.out_features == 3 * module.in_features
        ):
            found.append((name, module))
    return found
