"""What the readers of users' dataset files share (pipeline/data/datasets.py holds the readers): the error they raise,
the checks of a root and of the files it must hold, torchvision's classes without their md5 check, the image
reader, and the labels of ImageNet's validation images in either of its layouts.

ImageNet's validation images come in two layouts. Class folders ``val/<wnid>/*.JPEG`` are read like the
training folders. The official flat folder ``val/ILSVRC2012_val_00000001.JPEG ...`` (as ``ILSVRC2012_img_val.tar``
extracts) is labelled by the devkit (``ILSVRC2012_devkit_t12.tar.gz`` extracted into the root):
``data/ILSVRC2012_validation_ground_truth.txt`` gives one ILSVRC2012_ID per image in file-name order, and
``data/meta.mat`` maps each ID to its wnid (the IDs are not in sorted-wnid order). The wnid's training folder
gives the label.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "DEVKIT",
    "DatasetError",
    "check_files",
    "check_root",
    "imagenet_val",
    "read_image",
    "reading",
    "unchecked",
]

DEVKIT = "ILSVRC2012_devkit_t12"  # the folder ILSVRC2012_devkit_t12.tar.gz extracts to
_META, _GROUND_TRUTH = "meta.mat", "ILSVRC2012_validation_ground_truth.txt"  # in <root>/<DEVKIT>/data


class DatasetError(ValueError):
    """A dataset that is missing, corrupt or inconsistent; the message names the dataset and the file."""


def check_root(name: str, root: str, layout: str) -> Path:
    """The dataset's root folder, which must exist."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"dataset {name!r}: root {path} does not exist; expected there: {layout}")
    return path


def check_files(name: str, folder: Path, files: list[tuple[str, str | None]], layout: str) -> None:
    """Every ``(filename, md5)`` must exist in ``folder`` and match its md5 (where one is given: torchvision's
    published sums, none for an :func:`unchecked` class)."""
    from torchvision.datasets.utils import check_integrity

    for filename, md5 in files:
        path = folder / filename
        if not path.is_file():
            raise DatasetError(f"dataset {name!r}: missing file {path}; expected: {layout}")
        if md5 is not None and not check_integrity(str(path), md5):
            raise DatasetError(f"dataset {name!r}: {path} is corrupt or truncated (md5 does not match {md5})")


def reading(name: str, build: Callable[[], object], files: str) -> object:
    """``build()`` (a torchvision dataset, a parsed file); errors it raises while reading become DatasetErrors
    naming the files."""
    try:
        return build()
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, RuntimeError, OSError) as exc:
        raise DatasetError(f"dataset {name!r}: could not read {files}: {type(exc).__name__}: {exc}") from None


class _ArraysOnly(pickle.Unpickler):
    """Unpickles only what CIFAR's python pickles hold (dicts, lists, strings, bytes, numbers and numpy arrays):
    any other global, the way a hostile pickle runs code, is refused before it is called."""

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}; a CIFAR pickle holds only arrays, lists, dicts, bytes and numbers"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        entry = _ArraysOnly(f, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError(f"{path.name} holds a {type(entry).__name__}, not CIFAR's dict")
    return entry


def read_cifar(folder: Path, files: list[str], meta: str, key: str) -> tuple[np.ndarray, list[int], list[str]]:
    """CIFAR's python pickles in ``folder`` as torchvision's CIFAR classes read them (images N x 32 x 32 x 3, labels,
    class names from the ``meta`` file's ``key``), through :class:`_ArraysOnly`: every value checked for its type
    and shape, since a file under a user's root is not trusted to be what its name says."""
    data, labels = [], []
    for filename in files:
        entry = _unpickle(folder / filename)
        images, found = entry.get("data"), entry.get("labels", entry.get("fine_labels"))
        if (
            not isinstance(images, np.ndarray)
            or images.dtype != np.uint8
            or images.ndim != 2
            or images.shape[1] != 3072
        ):
            raise ValueError(f"{filename}: 'data' is not a uint8 array of 3,072 values per image")
        if not isinstance(found, list) or len(found) != len(images) or not all(type(v) is int for v in found):
            raise ValueError(f"{filename}: its labels are not a list of {len(images)} integers")
        data.append(images)
        labels += found
    classes = _unpickle(folder / meta).get(key)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{meta}: {key!r} is not a list of class names")
    return np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1)), labels, classes


def unchecked(cls: type) -> type:
    """torchvision's ``cls`` (CIFAR10, CIFAR100 or STL10) reading the same files without their md5 sums: a subclass
    whose file lists carry no md5, so torchvision's own ``_check_integrity`` (and CIFAR's check of its meta file)
    only require each file to exist. For files that cannot match the published sums (``checksums: false``)."""
    attrs: dict[str, object] = {key: [[f, None] for f, _ in getattr(cls, key)] for key in ("train_list", "test_list")}
    if hasattr(cls, "meta"):
        attrs["meta"] = {**cls.meta, "md5": None}
    return type(f"Unchecked{cls.__name__}", (cls,), attrs)


def read_image(name: str, path: Path, size: int) -> np.ndarray:
    """An image file as (size, size, 3) uint8: shorter side resized to ``size`` (bicubic), centre crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = size / min(image.size)
            w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((w, h), Image.Resampling.BICUBIC)
            left, top = (w - size) // 2, (h - size) // 2
            return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"dataset {name!r}: cannot read image {path}: {exc}") from None


def imagenet_val(name: str, root: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image under ``root/val``, in class folders or the official flat layout; labels
    are indices of ``class_to_idx`` (the training folders')."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    val = root / "val"
    entries = sorted(val.iterdir())
    folders = [p for p in entries if p.is_dir()]
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
    if folders and images:
        raise DatasetError(
            f"dataset {name!r}: {val} holds both class folders ({folders[0].name}, ...) and images "
            f"({images[0].name}, ...); keep one layout: val/<wnid>/*.JPEG or the flat val/ILSVRC2012_val_*.JPEG"
        )
    if not images:
        part = reading(name, lambda: ImageFolder(str(val)), str(val))
        if part.class_to_idx != class_to_idx:
            raise DatasetError(f"dataset {name!r}: {root / 'train'} and {val} have different class folders")
        return part.samples
    labels = _devkit_labels(name, root, images, class_to_idx)
    return [(str(path), label) for path, label in zip(images, labels, strict=True)]


def _devkit_labels(name: str, root: Path, images: list[Path], class_to_idx: dict[str, int]) -> list[int]:
    """The labels of the flat validation ``images`` (sorted by name) from the devkit's ground truth and meta.mat."""
    data = root / DEVKIT / "data"
    meta, truth = data / _META, data / _GROUND_TRUTH
    for path in (meta, truth):
        if not path.is_file():
            raise DatasetError(
                f"dataset {name!r}: {root / 'val'} holds the flat validation images, labelled by {path}, which is "
                f"missing; extract ILSVRC2012_devkit_t12.tar.gz (ImageNet's devkit) into {root}"
            )
    id_to_wnid = reading(name, lambda: _leaf_synsets(meta), str(meta))
    ids = reading(name, lambda: [int(line) for line in truth.read_text().split()], str(truth))
    if len(ids) != len(images):
        raise DatasetError(
            f"dataset {name!r}: {truth} has {len(ids)} labels but {root / 'val'} holds {len(images)} images; "
            "put the validation images and the devkit of the same release (one label per image, in file-name order)"
        )
    labels = []
    for image, synset in zip(images, ids, strict=True):
        wnid = id_to_wnid.get(synset)
        if wnid is None:
            raise DatasetError(
                f"dataset {name!r}: {truth} labels {image.name} with ILSVRC2012_ID {synset}, which is not a class "
                f"(a synset without children) in {meta}"
            )
        if wnid not in class_to_idx:
            raise DatasetError(
                f"dataset {name!r}: {truth} labels {image.name} as {wnid}, which has no folder in {root / 'train'}; "
                "add its training folder"
            )
        labels.append(class_to_idx[wnid])
    return labels


def _leaf_synsets(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the classes in the devkit's meta.mat: its synsets without children (the rest are
    WordNet ancestors).

    NOTE: torchvision parses meta.mat and the ground truth in functions nested inside ``parse_devkit_archive``
    (``torchvision.datasets.imagenet``), which wants the devkit's .tar.gz with its md5, so they cannot be called on
    an extracted devkit; this is their reading of the same file, by field name instead of position."""
    from scipy.io import loadmat

    synsets = loadmat(path, squeeze_me=True)["synsets"]
    leaves = synsets[synsets["num_children"] == 0]
    return {int(i): str(wnid) for i, wnid in zip(leaves["ILSVRC2012_ID"], leaves["WNID"], strict=True)}
