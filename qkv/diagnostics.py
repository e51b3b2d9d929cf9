"""Diagnostics of what an embedding produces: are Q, K and V actually different?

F-SNE shares all its layers between Q, K and V and tells them apart only through its codes; when the codes'
contribution is small the three outputs coincide and XCA degenerates to Q = K = V attention, which can still
train to a good accuracy on easy data. Only a measurement like this one shows it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .convert import embed_modules

__all__ = ["qkv_similarity"]


@torch.no_grad()
def qkv_similarity(model: nn.Module, images: torch.Tensor) -> list[dict]:
    """Per embedding layer (XCA blocks first, in forward order), the mean cosine similarity between the Q, K
    and V vectors of each token.

    Returns one record per layer: ``{"layer": name, "q_k": .., "q_v": .., "k_v": ..}``, each the cosine
    over the channel dimension averaged over the batch and the tokens. 1.0 means the two are identical up to
    scale. The model is run in eval mode and left in the mode it was in.
    """
    layers = embed_modules(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Q/K/V embedding to inspect")
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach()))
        for name, module in layers
    ]
    was_training = model.training
    try:
        model.eval()
        model(images)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    records = []
    for name, _ in layers:
        q, k, v = outputs[name].float().chunk(3, dim=-1)  # (B, N, C) each
        records.append(
            {
                "layer": name,
                "q_k": F.cosine_similarity(q, k, dim=-1).mean().item(),
                "q_v": F.cosine_similarity(q, v, dim=-1).mean().item(),
                "k_v": F.cosine_similarity(k, v, dim=-1).mean().item(),
            }
        )
    return records
