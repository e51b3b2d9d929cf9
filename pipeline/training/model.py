"""Building the networks the stages train, time and count: a :class:`pipeline.config.Net` (a registered
``qkv_xcit_*`` backbone with one variant's embedding, already checked by the qkv library) to a timm model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import Net
from pipeline.data.tensorfile import read_header

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
    """The weights at ``path`` (a pretraining stage's safetensors) in ``net``, with a new ``num_classes`` head.
    The file is checked before it is read: missing, truncated or corrupt, or holding other tensors than ``net``'s
    (the weights of another backbone or variant) is one line naming it, the first mismatching tensors and what
    to do."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no pretrained weights for variant {net.variant!r} at {path}: pretrain it first (list it in "
            "pretrain.variants)"
        )
    rerun = _rerun(path)
    tensors = read_header(path, rerun)
    head = tensors.get("head.weight")
    if head is None or len(head.shape) != 2:
        raise ValueError(f"{path}: no classifier head.weight (not the weights of a classifier); {rerun}")
    model = build(net, head.shape[0])
    mismatch = _mismatch(model, {name: info.shape for name, info in tensors.items()})
    if mismatch:
        raise ValueError(
            f"{path}: not the weights of {net.name} with variant {net.variant!r} as params.yaml defines it "
            f"({mismatch}): the weights of another backbone or variant; point --pretrained at the weights of this "
            f"backbone and variant, or {rerun}"
        )
    try:
        load_model(model, str(path), strict=True)
    except SafetensorError as exc:  # anything the header check cannot see
        raise ValueError(f"{path}: unreadable ({exc}); {rerun}") from None
    model.reset_classifier(num_classes)
    return model


def _rerun(path: Path) -> str:
    """What to do about bad pretrained weights: re-run the instance that wrote them (named when the folder is a
    pretraining instance's, ``models/pretrain/<backbone>-<variant>-<seed>``)."""
    folder = path.parent
    if folder.parent.name == "pretrain":
        return f"re-run the pretraining instance: dvc repro --force pretrain@{folder.name}"
    return "re-run the pretraining instance that wrote it"


def _mismatch(model: torch.nn.Module, shapes: dict[str, tuple]) -> str:
    """The first tensors the file lacks, has in excess, or holds in another shape than ``model`` ('' if none)."""
    state = model.state_dict()
    stored = {(t.data_ptr(), tuple(t.shape)) for name, t in state.items() if name in shapes}
    missing = [n for n, t in state.items() if n not in shapes and (t.data_ptr(), tuple(t.shape)) not in stored]
    unexpected = [n for n in shapes if n not in state]
    wrong = [f"{n} is {tuple(shapes[n])} in the file, {tuple(t.shape)} in the model" for n, t in state.items()
             if n in shapes and tuple(shapes[n]) != tuple(t.shape)]  # fmt: skip
    parts = []
    for what, names, sep in (("missing ", missing, ", "), ("unexpected ", unexpected, ", "), ("", wrong, "; ")):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{what}{sep.join(names[:3])}{more}")
    return "; ".join(parts)
