"""Checking a safetensors file before anything reads its tensors, so a truncated or corrupt file is one line naming
it instead of the library's ``SafetensorError: incomplete metadata``.

The format (github.com/huggingface/safetensors): an 8-byte little-endian header length, a JSON header mapping
each tensor's name to its dtype, shape and byte offsets in the data region (``__metadata__`` aside), then the
data region, its tensors back to back from byte 0 to its very end. A tensor's byte count is its element count times
its dtype's width in bits, divided by 8; the sub-byte dtypes (F4, F6_*) pack elements across bytes, and a tensor
whose bits do not fill whole bytes is invalid (the library refuses it: ``MisalignedSlice``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

__all__ = ["BITSIZE", "TensorInfo", "read_header"]

# Every dtype of the format and its width in bits: `Dtype` and `Dtype::bitsize` in safetensors/src/tensor.rs
# (huggingface/safetensors at 24b0b28, May 2026; the same list in v0.8.0-rc.0, the Rust core of the installed 0.8.0).
BITSIZE = {
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
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
    if dtype not in BITSIZE:
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return f"shape {shape!r} is not a list of sizes"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        return f"data_offsets {offsets!r} is not a pair of integers"
    if not 0 <= offsets[0] <= offsets[1]:
        return f"data_offsets {offsets} are not increasing"
    bits = math.prod(shape) * BITSIZE[dtype]
    if bits % 8:
        return f"shape {tuple(shape)} of {dtype} is {bits} bits, not a whole number of bytes"
    expected = bits // 8
    if offsets[1] - offsets[0] != expected:
        return f"{offsets[1] - offsets[0]} bytes for shape {tuple(shape)} of {dtype} ({expected} expected)"
    return ""
