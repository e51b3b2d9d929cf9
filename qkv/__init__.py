"""Q/K/V embeddings for vision transformers (arXiv 2111.10017), as a timm extension.

Importing ``qkv`` registers the ``qkv_xcit_*`` models in timm.
"""

from .convert import ClassAttnQKV, convert, embed_modules
from .counts import FlopCount, embed_flops, embed_params, xcit_flops, xcit_params
from .diagnostics import qkv_similarity
from .embed import QKVEmbed
from .options import EMBED_KINDS, EmbedConfig
from .xcit import ARCHS, ContiguousXCA, ConvPatchEmbed4, XcitArch, create_qkv_xcit, model_arch, split_model_options

__all__ = [
    "ARCHS",
    "EMBED_KINDS",
    "ClassAttnQKV",
    "ContiguousXCA",
    "ConvPatchEmbed4",
    "EmbedConfig",
    "FlopCount",
    "QKVEmbed",
    "XcitArch",
    "convert",
    "create_qkv_xcit",
    "embed_flops",
    "embed_modules",
    "embed_params",
    "model_arch",
    "qkv_similarity",
    "split_model_options",
    "xcit_flops",
    "xcit_params",
]
