"""Tiny datasets written in the exact on-disk formats of the real ones, for loading through the same code
path users' files take. CIFAR and STL-10 here are random pixels with chosen labels (for the bad-input tests):
torchvision checks their files against published md5 sums, and the fakes' own sums are put into those lists
with pytest's monkeypatch (tests only). ImageNet and Stanford Cars are pipeline.data.standins' photographs."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np

from pipeline.data.standins import WRITERS


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(rng, n: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def write_cifar(
    root: Path, monkeypatch, *, hundred: bool = False, per_class: int = 3, labels_override: dict | None = None
) -> Path:
    """CIFAR-10 (or -100) python-version pickles: data (N, 3072) uint8, labels; str keys."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR100 if hundred else CIFAR10
    k = 100 if hundred else 10
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_key = "fine_labels" if hundred else "labels"
    files = [name for name, _ in cls.train_list + cls.test_list]
    for name in files:
        labels = np.tile(np.arange(k), per_class).tolist()
        if labels_override and name in labels_override:
            labels = labels_override[name]
        data = _images(rng, len(labels), 32).transpose(0, 3, 1, 2).reshape(len(labels), -1)
        (folder / name).write_bytes(pickle.dumps({"data": data, label_key: labels}))
    names = [f"class{i}" for i in range(k)]
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({cls.meta["key"]: names}))
    monkeypatch.setattr(cls, "train_list", [[n, md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5(folder / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})
    return folder


def write_stl10(root: Path, monkeypatch, *, per_class: int = 2) -> Path:
    """STL-10 binaries: uint8 images stored (N, 3, 96, 96) column-major as the original, labels 1..10."""
    from torchvision.datasets import STL10

    folder = root / STL10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 10 * per_class), ("test", 10 * per_class)):
        _images(rng, n, 96).transpose(0, 3, 2, 1).tofile(folder / f"{prefix}_X.bin")
        (np.tile(np.arange(10), n // 10) + 1).astype(np.uint8).tofile(folder / f"{prefix}_y.bin")
    _images(rng, 2, 96).tofile(folder / "unlabeled_X.bin")
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    monkeypatch.setattr(STL10, "train_list", [[n, md5(folder / n)] for n, _ in STL10.train_list])
    monkeypatch.setattr(STL10, "test_list", [[n, md5(folder / n)] for n, _ in STL10.test_list])
    return folder


def write_imagenet(root: Path, *, classes: int = 3, per_class: int = 4) -> Path:
    """ImageNet class folders train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (2 a class), from pipeline.data.standins."""
    WRITERS["imagenet"](root, classes=classes, per_class=per_class, test_per_class=2, layout="folders")
    return root
