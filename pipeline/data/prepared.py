"""Reading a folder the ``prepare`` stage wrote (``data/prepared/<name>``), every file checked where it is read.

``meta.json`` (keys and types), ``data.safetensors`` (header against the file's size, the six tensors' dtypes and
shapes, labels within meta's classes) and ``index.csv`` (columns, splits, labels, its content hash, the image
root): anything missing, truncated or corrupt is one line ``<file>: <what is wrong>; re-create it with: dvc repro
--force prepare@<name>`` (a ``ValueError``; a missing file a ``FileNotFoundError``), before training starts.
"""

from __future__ import annotations

import csv
import hashlib
import json
import mmap
from pathlib import Path

import numpy as np
import torch

from pipeline.data.tensorfile import read_header

__all__ = ["SPLITS", "read_index", "read_meta", "read_tensors", "remedy"]

SPLITS = ("train", "val", "test")
_META = {  # key: (types, what)
    "storage": (str, "'tensor' or 'files'"),
    "dataset": (str, "a name"),
    "num_classes": (int, "a positive integer"),
    "img_size": (int, "a positive integer"),
    "synthetic": (bool, "true or false"),
    "mean": (list, "three numbers"),
    "std": (list, "three positive numbers"),
    "content_hash": (str, "a sha256 digest"),
}


def remedy(folder: Path) -> str:
    """What to do about a bad file of the prepared dataset ``folder``: re-run its prepare instance."""
    return f"re-create it with: dvc repro --force prepare@{Path(folder).name}"


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}; {remedy(path.parent)}")


def read_meta(prepared: str | Path) -> dict:
    """The prepared dataset's ``meta.json``, its keys and their types checked."""
    path = Path(prepared) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: prepared dataset not found; create it with: dvc repro prepare@{Path(prepared).name}"
        )
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise _bad(path, "not a JSON object")
    for key, (kind, what) in _META.items():
        value = meta.get(key)
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if ok and kind is int:
            ok = value > 0
        if ok and kind is list:
            ok = len(value) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            ok = ok and (key != "std" or all(v > 0 for v in value))
        if ok and key == "storage":
            ok = value in ("tensor", "files")
        if not ok:
            found = "missing" if key not in meta else f"{value!r}"
            raise _bad(path, f"{key}: expected {what}, found {found}")
    if meta["storage"] == "files" and not isinstance(meta.get("root"), str):
        raise _bad(path, f"root: expected the image folder of the index, found {meta.get('root')!r}")
    return meta


def read_tensors(prepared: Path, meta: dict) -> dict[str, tuple[np.ndarray, torch.Tensor]]:
    """The images of a prepared ``data.safetensors`` memory-mapped (read on demand and shared by every process
    through the page cache, never copied per rank), and the labels in memory; header, dtypes, shapes and labels
    checked."""
    path = Path(prepared) / "data.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prepared data not found; {remedy(prepared)}")
    tensors = read_header(path, remedy(prepared))
    size, num_classes = meta["img_size"], meta["num_classes"]
    out = {}
    for split in SPLITS:
        images, labels = tensors.get(f"{split}_images"), tensors.get(f"{split}_labels")
        for name, info, dtype in ((f"{split}_images", images, "U8"), (f"{split}_labels", labels, "I64")):
            if info is None:
                raise _bad(path, f"no tensor {name!r}")
            if info.dtype != dtype:
                raise _bad(path, f"{name} has dtype {info.dtype}, expected {dtype}")
        n = labels.shape[0] if len(labels.shape) == 1 else -1
        if images.shape != (n, 3, size, size):
            expected = f"(N, 3, {size}, {size})" + (f" with N = {n} labels" if n >= 0 else " and labels (N,)")
            raise _bad(path, f"{split}_images/labels have shapes {images.shape}/{labels.shape}, expected {expected}")
        label_array = np.array(_map(path, labels))
        if n and not 0 <= label_array.min() <= label_array.max() < num_classes:
            wrong = label_array[(label_array < 0) | (label_array >= num_classes)][0]
            raise _bad(path, f"{split}_labels holds label {wrong}, outside meta.json's {num_classes} classes")
        out[split] = (_map(path, images), torch.from_numpy(label_array))
    _every_class(path, meta, out["train"][1])
    return out


def _every_class(path: Path, meta: dict, train_labels: torch.Tensor) -> None:
    """meta.json's class count against the training labels (prepare refuses a class without a training image): a
    count larger than the classes present would train a head with classes never seen, silently."""
    names = meta.get("classes")
    if names is not None and (not isinstance(names, list) or len(names) != meta["num_classes"]):
        found = len(names) if isinstance(names, list) else repr(names)
        raise _bad(path.parent / "meta.json", f"num_classes is {meta['num_classes']} but classes lists {found}")
    present = int(torch.unique(train_labels).numel())
    if present != meta["num_classes"]:
        raise _bad(path, f"its training labels hold {present} classes, but meta.json's num_classes says "
                   f"{meta['num_classes']}")  # fmt: skip


class _Mapped(np.memmap):
    """A read-only ``np.memmap`` that pickles as its file region, not its bytes: DataLoader workers started by
    spawn or forkserver (macOS, Python 3.14) reopen the mapping instead of receiving a copy of the dataset."""

    def __reduce__(self):
        if isinstance(self.base, mmap.mmap):  # the whole mapped tensor
            return _open_mapped, (str(self.filename), self.dtype.str, self.offset, self.shape)
        return np.array, (np.asarray(self),)  # a view of one: its data


def _open_mapped(path: str, dtype: str, offset: int, shape: tuple) -> _Mapped:
    return _Mapped(path, np.dtype(dtype), "r", offset=offset, shape=shape)


def _map(path: Path, info) -> np.ndarray:
    dtype = {"U8": np.uint8, "I64": np.int64}[info.dtype]
    if info.end == info.begin:  # an empty split: nothing to map
        return np.zeros(info.shape, dtype)
    return _open_mapped(str(path), np.dtype(dtype).str, info.begin, info.shape)


def read_index(prepared: Path, meta: dict) -> dict[str, tuple[list[str], torch.Tensor]]:
    """The relative image paths and labels of a prepared ``index.csv`` (file storage), checked row by row and
    against meta's content hash; the images themselves are checked as they are read (:mod:`pipeline.data.samples`)."""
    path = Path(prepared) / "index.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prepared index not found; {remedy(prepared)}")
    content = path.read_bytes()
    if "sha256:" + hashlib.sha256(content).hexdigest() != meta["content_hash"]:
        raise _bad(path, "its content does not match meta.json's content_hash (edited or damaged)")
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    labels: dict[str, list[int]] = {s: [] for s in SPLITS}
    try:
        rows = csv.DictReader(content.decode().splitlines())
        if not {"split", "path", "label"} <= set(rows.fieldnames or ()):
            raise _bad(path, f"columns {rows.fieldnames}, expected split, path, label, bytes")
        for line, row in enumerate(rows, start=2):
            problem = _row_problem(row, meta["num_classes"])
            if problem:
                raise _bad(path, f"line {line}: {problem}")
            files[row["split"]].append(row["path"])
            labels[row["split"]].append(int(row["label"]))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _bad(path, f"not a valid CSV file ({exc})") from None
    root = Path(meta["root"]).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: the image folder of {path} (meta.json's root) does not exist; restore it, or set "
            f"datasets.{Path(prepared).name}.root and {remedy(prepared)}"
        )
    out = {s: (files[s], torch.tensor(labels[s], dtype=torch.int64)) for s in SPLITS}
    _every_class(path, meta, out["train"][1])
    return out


def _row_problem(row: dict, num_classes: int) -> str:
    if row["split"] not in SPLITS:
        return f"split {row['split']!r} is not one of {', '.join(SPLITS)}"
    if not row["path"] or Path(row["path"]).is_absolute():
        return f"path {row['path']!r} is not a path relative to the image folder"
    try:
        label = int(row["label"])
    except (TypeError, ValueError):
        return f"label {row['label']!r} is not an integer"
    if not 0 <= label < num_classes:
        return f"label {label} is outside meta.json's {num_classes} classes"
    return ""
