"""pipeline.data.tensorfile: every dtype of the safetensors format is read at its width in bits (F4 and F6_* pack
elements across bytes); a file whose byte counts disagree with its header is still refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pipeline.data.tensorfile import BITSIZE, read_header

REMEDY = "re-create it"


def _write(path: Path, entries: dict, data: bytes) -> Path:
    """A safetensors file written by hand per the format: 8-byte length, JSON header, data region."""
    header = json.dumps(entries).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


def _library_reads(path: Path) -> bool:
    try:
        with safe_open(str(path), "numpy") as f:
            f.keys()
    except SafetensorError:
        return False
    return True


def test_files_the_library_writes_in_the_newer_dtypes_are_read(tmp_path):
    tensors = {
        "e8m0": torch.ones(3, 5).to(torch.float8_e8m0fnu),  # F8_E8M0, 1 byte
        "c64": torch.randn(2, 3, dtype=torch.complex64),  # C64, 8 bytes
        "f4": torch.zeros(3, 2, dtype=torch.uint8).view(torch.float4_e2m1fn_x2),  # F4: shape (3, 4), 6 bytes
        "fnuz": torch.zeros(3).to(torch.float8_e5m2fnuz),
        "u32": torch.zeros(2, dtype=torch.uint32),
        "i64": torch.zeros(1, dtype=torch.int64),
    }
    path = tmp_path / "new.safetensors"
    save_file(tensors, str(path))
    info = read_header(path, REMEDY)
    assert {k: (v.dtype, v.shape, v.end - v.begin) for k, v in info.items()} == {
        "e8m0": ("F8_E8M0", (3, 5), 15),
        "c64": ("C64", (2, 3), 48),
        "f4": ("F4", (3, 4), 6),
        "fnuz": ("F8_E5M2FNUZ", (3,), 3),
        "u32": ("U32", (2,), 8),
        "i64": ("I64", (1,), 8),
    }


def test_every_dtype_of_the_format_is_read_when_the_library_reads_it(tmp_path):
    """One hand-written tensor of each dtype at a shape whose bits fill whole bytes; the installed library agrees."""
    for dtype, bits in BITSIZE.items():
        nbytes = bits  # shape (2, 4): 8 elements of `bits` bits each, whole bytes at 4 and 6 bits too
        entry = {"dtype": dtype, "shape": [2, 4], "data_offsets": [0, nbytes]}
        path = _write(tmp_path / f"{dtype}.safetensors", {"x": entry}, bytes(nbytes))
        assert _library_reads(path), dtype
        info = read_header(path, REMEDY)["x"]
        assert (info.dtype, info.shape, info.end - info.begin) == (dtype, (2, 4), nbytes)


@pytest.mark.parametrize(
    ("dtype", "shape", "nbytes", "what"),
    [
        ("F4", [3], 2, "shape (3,) of F4 is 12 bits, not a whole number of bytes"),
        ("F6_E3M2", [3], 3, "shape (3,) of F6_E3M2 is 18 bits, not a whole number of bytes"),
        ("F4", [3, 4], 7, "7 bytes for shape (3, 4) of F4 (6 expected)"),
        ("F8_E8M0", [5], 4, "4 bytes for shape (5,) of F8_E8M0 (5 expected)"),
        ("C64", [2], 8, "8 bytes for shape (2,) of C64 (16 expected)"),
        ("F12", [2], 3, "unknown dtype 'F12'"),
    ],
)
def test_a_header_that_disagrees_with_its_bytes_is_refused(tmp_path, dtype, shape, nbytes, what):
    path = _write(tmp_path / "bad.safetensors", {"x": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}},
                  bytes(nbytes))  # fmt: skip
    assert not _library_reads(path)
    with pytest.raises(ValueError) as excinfo:
        read_header(path, REMEDY)
    assert str(excinfo.value) == f"{path}: corrupt header (tensor 'x': {what}); {REMEDY}"
