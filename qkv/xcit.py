"""XCiT (El-Nouby et al., https://arxiv.org/abs/2106.09681) with an injectable Q/K/V embedding.

timm's ``Xcit`` is built unchanged and its fused ``attn.qkv`` linears are then replaced by
:func:`qkv.convert`, so the ``linear`` embedding keeps timm's parameter names and loads a timm XCiT
state_dict with ``strict=True``. Registered in timm on ``import qkv`` under a ``qkv_`` prefix (timm owns
``xcit_*``)::

    import qkv, timm
    model = timm.create_model("qkv_xcit_nano_12_p16", qkv_embed="fsne", num_classes=10)

Keyword options: ``qkv_embed`` and the ``qkv_*`` options of :class:`qkv.options.EmbedConfig`;
``qkv_class_attn`` (also change the two class-attention blocks, default False); ``patch_size=4`` swaps in a
two-convolution stride-2 stem for small (32 px) inputs, which timm's ``ConvPatchEmbed`` (8 and 16 only)
lacks; every other keyword goes to timm's ``Xcit`` (``img_size``, ``num_classes``, ``depth``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.xcit import XCA, Xcit, checkpoint_filter_fn, conv3x3
from torch import nn
from torch.nn import functional as F

from .convert import install
from .options import EmbedConfig

__all__ = [
    "ARCHS",
    "ContiguousXCA",
    "ConvPatchEmbed4",
    "XcitArch",
    "create_qkv_xcit",
    "model_arch",
    "split_model_options",
]


@dataclass(frozen=True)
class XcitArch:
    """The backbone hyper-parameters of one registered model (as timm's ``xcit_*_12`` entrypoints)."""

    embed_dim: int
    depth: int
    num_heads: int
    eta: float
    tokens_norm: bool
    patch_size: int
    mlp_ratio: float = 4.0
    cls_attn_layers: int = 2


_BACKBONES = {
    "nano_12": dict(embed_dim=128, depth=12, num_heads=4, eta=1.0, tokens_norm=False),
    "tiny_12": dict(embed_dim=192, depth=12, num_heads=4, eta=1.0, tokens_norm=True),
    "small_12": dict(embed_dim=384, depth=12, num_heads=8, eta=1.0, tokens_norm=True),
}
ARCHS = {
    f"qkv_xcit_{name}_p{patch}": XcitArch(patch_size=patch, **args)
    for name, args in _BACKBONES.items()
    for patch in (16, 8)
}


class ConvPatchEmbed4(nn.Module):
    """Patch-4 convolutional stem in the style of timm's ``ConvPatchEmbed``: two 3x3 stride-2 conv+BN layers
    (``3 -> C/2 -> C``) with a GELU between, giving an 8x8 token grid for a 32-px image."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 32,
        in_chans: int = 3,
        embed_dim: int = 768,
        act_layer: type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        img_size = to_2tuple(img_size)
        self.img_size, self.patch_size = img_size, 4
        self.num_patches = (img_size[0] // 4) * (img_size[1] // 4)
        self.proj = nn.Sequential(
            conv3x3(in_chans, embed_dim // 2, 2), act_layer(), conv3x3(embed_dim // 2, embed_dim, 2)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)  # (B, C, H/4, W/4)
        Hp, Wp = x.shape[2], x.shape[3]
        return x.flatten(2).transpose(1, 2), (Hp, Wp)  # (B, N, C)


class ContiguousXCA(XCA):
    """timm's cross-covariance attention, same parameters and same math, with the ``(3, B, heads, C/heads, N)``
    q/k/v tensor made contiguous before the l2-normalisation over tokens. timm normalises a strided view of the
    ``(B, N, 3C)`` projection; on a CPU that one reduction took 3 ms per call, 16 % of a training step of
    XCiT-N12 at 32 px, and the copy removes it (docs/performance.md). Installed on every XCA of the
    ``qkv_xcit_*`` models (the linear baseline included) by :func:`create_qkv_xcit`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.contiguous().unbind(0)  # (B, heads, C/heads, N) each
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q * self.temperature, k, v, scale=1.0)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.temperature
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.permute(0, 3, 1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


def split_model_options(options: dict) -> tuple[EmbedConfig, bool]:
    """``(embedding config, qkv_class_attn)`` from model options ``qkv_embed``, ``qkv_*`` and ``qkv_class_attn``;
    a key without the ``qkv_`` prefix is an error."""
    stray = sorted(k for k in options if not k.startswith("qkv_"))
    if stray:
        raise ValueError(f"not a qkv_* model option: {', '.join(stray)}")
    options = dict(options)
    class_attn = options.pop("qkv_class_attn", False)
    if not isinstance(class_attn, bool):
        raise ValueError(f"qkv_class_attn must be true or false, got {class_attn!r}")
    return EmbedConfig.from_options(**options), class_attn


def create_qkv_xcit(
    variant: str,
    pretrained: bool = False,
    *,
    qkv_config: EmbedConfig | None = None,
    qkv_class_attn: bool = False,
    **kwargs,
) -> Xcit:
    """Build timm's ``Xcit`` from ``kwargs`` and install the Q/K/V embedding they choose: either a ready
    ``qkv_config`` (as the pipeline passes it, validated once) or ``qkv_embed`` and the other ``qkv_*`` options."""
    if pretrained:
        raise ValueError(
            f"{variant}: no pretrained weights exist for the qkv_ models; train them with the pipeline, or load "
            "a timm XCiT state_dict into the linear baseline with model.load_state_dict(..., strict=True)"
        )
    options = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("qkv_")}
    if qkv_config is None:
        qkv_config = EmbedConfig.from_options(**options)
    elif options:
        raise ValueError(f"give qkv_config or qkv_* options, not both (got {', '.join(sorted(options))})")
    kwargs["qkv_bias"] = qkv_config.bias  # timm's layers are built as the embedding that replaces them
    embed_dim, num_heads = kwargs["embed_dim"], kwargs["num_heads"]
    for name in ("embed_dim", "num_heads"):
        value = kwargs[name]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
    patch_size = kwargs.get("patch_size", 16)
    if patch_size not in (4, 8, 16):
        raise ValueError(f"patch_size={patch_size!r} is not one of: 4, 8, 16")
    if patch_size == 4:
        kwargs["patch_size"] = 8  # timm's stem cannot build patch 4; replaced below
    model = build_model_with_cfg(
        Xcit,
        variant,
        pretrained=False,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **kwargs,
    )
    if patch_size == 4:
        model.patch_embed = ConvPatchEmbed4(kwargs.get("img_size", 224), kwargs.get("in_chans", 3), embed_dim)
        for info in model.feature_info:
            info["reduction"] = 4
    for module in model.modules():
        if type(module) is XCA:
            module.__class__ = ContiguousXCA  # a subclass with the same parameters: only forward differs
    return install(model, qkv_config, class_attn=qkv_class_attn)


def model_arch(model_name: str, **overrides) -> XcitArch:
    """The :class:`XcitArch` of a registered model name, with timm keyword overrides applied."""
    if model_name not in ARCHS:
        raise ValueError(f"unknown model {model_name!r}; known: {', '.join(ARCHS)}")
    fields_ = {
        **ARCHS[model_name].__dict__,
        **{k: v for k, v in overrides.items() if k in XcitArch.__dataclass_fields__},
    }
    return XcitArch(**fields_)


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj.0.0",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg() for name in ARCHS})


def _entry(name: str, pretrained: bool, kwargs: dict) -> Xcit:
    arch = ARCHS[name]
    args = dict(
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        eta=arch.eta,
        tokens_norm=arch.tokens_norm,
    )
    return create_qkv_xcit(name, pretrained=pretrained, **dict(args, **kwargs))


@register_model
def qkv_xcit_nano_12_p16(pretrained: bool = False, **kwargs) -> Xcit:
    return _entry("qkv_xcit_nano_12_p16", pretrained, kwargs)


@register_model
def qkv_xcit_nano_12_p8(pretrained: bool = False, **kwargs) -> Xcit:
    return _entry("qkv_xcit_nano_12_p8", pretrained, kwargs)


@register_model
def qkv_xcit_tiny_12_p16(pretrained: bool = False, **kwargs) -> Xcit:
    return _entry("qkv_xcit_tiny_12_p16", pretrained, kwargs)


@register_model
def qkv_xcit_tiny_12_p8(pretrained: bool = False, **kwargs) -> Xcit:
    return _entry("qkv_xcit_tiny_12_p8", pretrained, kwargs)


@register_model
def qkv_xcit_small_12_p16(pretrained: bool = False, **kwargs) -> Xcit:
    return _entry("qkv_xcit_small_12_p16", pretrained, kwargs)


@register_model
def qkv_xcit_small_12_p8(pretrained: bool = False, **kwargs) -> Xcit:
    return _entry("qkv_xcit_small_12_p8", pretrained, kwargs)
