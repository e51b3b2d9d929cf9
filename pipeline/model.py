"""Building the networks the stages train, time and count: a :class:`pipeline.config.Net` (a registered
``qkv_xcit_*`` backbone with one variant's embedding, already checked by the qkv library) to a timm model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import Net

__all__ = ["build", "count_params", "forward_flops", "load_pretrained"]


def build(net: Net, num_classes: int) -> torch.nn.Module:
    """A freshly initialised model (drawing from torch's global generator)."""
    import timm

    import qkv  # noqa: F401  (registers the qkv_xcit_* models)

    return timm.create_model(net.name, **net.timm_kwargs(num_classes))


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(net: Net, num_classes: int) -> int:
    """Closed-form flops of one forward pass of one image (fvcore convention: a multiply-add is one flop)."""
    import qkv

    return qkv.xcit_flops(
        net.arch, net.embed, img_size=net.img_size, num_classes=num_classes, class_attn=net.class_attn
    ).total


def load_pretrained(net: Net, path: Path, num_classes: int) -> torch.nn.Module:
    """The weights at ``path`` (a pretraining stage's safetensors) in ``net``, with a new ``num_classes`` head."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no pretrained weights for variant {net.variant!r} at {path}: pretrain it first (list it in "
            "pretrain.variants)"
        )
    with safe_open(str(path), framework="pt") as fh:
        source_classes = fh.get_tensor("head.weight").shape[0]
    model = build(net, source_classes)
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match variant {net.variant!r} with the model section: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.reset_classifier(num_classes)
    return model
