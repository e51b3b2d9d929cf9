"""Checking a safetensors file before anything reads its tensors, so a truncated or corrupt file is one line naming
it instead of the library's ``SafetensorError: incomplete metadata``.

The format (github.com/huggingface/safetensors): an 8-byte little-endian header length, a JSON header mapping
each tensor's name to its dtype, shape and byte offsets in the data region (``__metadata__`` aside), then the
data region, its tensors back to back from byte 0 to its very end.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

__all__ = ["ITEMSIZE", "TensorInfo", "read_header"]

ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_MAX_HEADER = 100_000_000  # the library's own limit


class TensorInfo(NamedTuple):
    dtype: str  # safetensors' name: U8, I64, F32, ...
    shape: tuple[int, ...]
    begin: int  # byte offsets in the file (not in the data region)
    end: int


def read_header(path: Path, remedy: str) -> dict[str, TensorInfo]:
    """Every tensor of the safetensors file ``path``, its header checked against the file's size: a truncated or
    corrupt file is a ``ValueError`` ``<path>: <what is wrong>; <remedy>``."""
    path = Path(path)

    def bad(what: str) -> ValueError:
        return ValueError(f"{path}: {what}; {remedy}")

    size = path.stat().st_size
    with path.open("rb") as fh:
        if size < 8:
            raise bad(f"truncated ({size} bytes, not even the 8-byte header length)")
        length = int.from_bytes(fh.read(8), "little")
        if length > _MAX_HEADER:
            raise bad(f"corrupt header (its length field says {length} bytes): not a safetensors file")
        if 8 + length > size:
            raise bad(f"truncated ({size} bytes, shorter than its own {length}-byte header)")
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"corrupt header (not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise bad("corrupt header (not a JSON object)")
    header.pop("__metadata__", None)
    tensors = {}
    for name, entry in header.items():
        problem = _entry_problem(entry)
        if problem:
            raise bad(f"corrupt header (tensor {name!r}: {problem})")
        begin, end = entry["data_offsets"]
        tensors[name] = TensorInfo(entry["dtype"], tuple(entry["shape"]), 8 + length + begin, 8 + length + end)
    position = 8 + length  # the tensors must tile the data region: no gap, no overlap
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin != position:
            raise bad(f"corrupt header (tensor {name!r} starts at data byte {info.begin - 8 - length}, "
                      f"expected {position - 8 - length})")  # fmt: skip
        position = info.end
    if position > size:
        raise bad(f"truncated ({size} bytes, its header describes {position})")
    if position < size:
        raise bad(f"corrupt ({size - position} bytes after the last tensor)")
    return tensors


def _entry_problem(entry) -> str:
    """What is wrong with one tensor's header entry ('' if nothing)."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        return "expected dtype, shape and data_offsets"
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in ITEMSIZE:
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return f"shape {shape!r} is not a list of sizes"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        return f"data_offsets {offsets!r} is not a pair of integers"
    if not 0 <= offsets[0] <= offsets[1]:
        return f"data_offsets {offsets} are not increasing"
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != expected:
        return f"{offsets[1] - offsets[0]} bytes for shape {tuple(shape)} of {dtype} ({expected} expected)"
    return ""
