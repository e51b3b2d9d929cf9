"""Small stand-in datasets written exactly in the on-disk formats users hold the real ones in, from real
photographs (:func:`photos`, shipped in installed packages): a rehearsal reads them through the same readers
(pipeline/data/datasets.py) as the real files, and decodes real JPEGs at the real sizes.

``WRITERS[source](root, classes=..., per_class=..., test_per_class=..., seed=0)`` writes under ``root`` what
``pipeline.data.datasets`` reads for that source with ``root`` as the entry's ``root``:

- ``imagenet``: ``train/<wnid>/<wnid>_<n>.JPEG``; ``val/ILSVRC2012_val_%08d.JPEG`` flat in a shuffled class
  order (or, with ``layout="folders"``, in ``val/<wnid>/``); the devkit's
  ``ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}``. JPEGs (quality 90) at
  ImageNet's usual sizes (500x375, 375x500, 500x333, ...).
- ``cifar10``: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``, python pickles with the
  real keys; 32x32.
- ``cifar100``: ``cifar-100-python/{train, test, meta}`` with fine and coarse labels and both name lists; 32x32.
- ``stl10``: ``stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin, class_names.txt,
  fold_indices.txt}``; 96x96.
- ``stanford_cars``: ``stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/*.jpg,
  cars_test_annos_withlabels.mat, cars_test/*.jpg}``, annotations with bounding boxes; JPEGs of car-photo sizes.

``classes`` may be fewer than the real dataset's: the same format with the first ``classes`` names (a 5-class
CIFAR-100 keeps the real fine names of those 5 and their real superclasses). Class ``c`` is crops of photograph
``c`` (quarter-turned past the number of photographs); each image is a seeded crop (position, scale, mirror).
ImageNet's first ten wnids are the real first ten with their words; further ones are made up (``n9...``).
The files are not the real ones, so their md5 sums differ from torchvision's: read CIFAR and STL-10 stand-ins
with ``checksums: false``. Everything is deterministic for a seed, byte for byte.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.datafiles import DEVKIT
from pipeline.data.photos import IMAGENET_SIZES, crop, photos, quarter_turned

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["WRITERS", "photos", "write_jpegs"]

Sizes = tuple[tuple[int, int], ...]  # (width, height) choices
JPEG_QUALITY = 90
CAR_SIZES = ((640, 480), (800, 600), (1024, 768), (400, 300), (259, 194), (600, 400), (320, 240), (480, 360))
CIFAR10 = "airplane automobile bird cat deer dog frog horse ship truck".split()
STL10 = "airplane bird car cat deer dog horse monkey ship truck".split()
CIFAR100 = {  # superclass (coarse label) -> its five classes; both sorted name lists are the real label orders
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
IMAGENET = {  # the first ten ImageNet-1k wnids (sorted) and their words, as meta.mat spells them
    "n01440764": "tench, Tinca tinca",
    "n01443537": "goldfish, Carassius auratus",
    "n01484850": "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
    "n01491361": "tiger shark, Galeocerdo cuvieri",
    "n01494475": "hammerhead, hammerhead shark",
    "n01496331": "electric ray, crampfish, numbfish, torpedo",
    "n01498041": "stingray",
    "n01514668": "cock",
    "n01514859": "hen",
    "n01518878": "ostrich, Struthio camelus",
}


def _check(source: str, classes: int, real: int, *counts: int) -> None:
    if not 1 <= classes <= real or min(counts) < 1:
        raise ValueError(
            f"standins {source}: classes must be in 1..{real} (the real dataset's) and images per class at least 1, "
            f"got classes={classes} and {', '.join(map(str, counts))} images per class"
        )


def _images(labels: np.ndarray, sizes: Sizes, seed: int, stream: int) -> Iterator[Image.Image]:
    """One PIL image per label: a crop of the label's photograph, its size drawn from ``sizes``; image ``i`` of
    ``stream`` depends on (seed, stream, i) only."""
    pictures = list(photos().values())
    for i, label in enumerate(labels):
        rng = np.random.default_rng([seed, stream, i])
        yield crop(quarter_turned(pictures, int(label)), sizes[rng.integers(len(sizes))], rng)


def _labels(classes: int, per_class: int, seed: int, stream: int) -> np.ndarray:
    """``per_class`` of each class, in a seeded random order (the real files are not sorted by class)."""
    return np.random.default_rng([seed, stream]).permutation(np.repeat(np.arange(classes), per_class))


def _array(labels: np.ndarray, size: int, seed: int, stream: int) -> np.ndarray:
    """(N, size, size, 3) uint8 crops, for the formats that store arrays."""
    images = [np.asarray(image) for image in _images(labels, ((size, size),), seed, stream)]
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)


def _save_jpegs(paths: list[Path], labels: np.ndarray, sizes: Sizes, seed: int, stream: int) -> None:
    for path, image in zip(paths, _images(labels, sizes, seed, stream), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="JPEG", quality=JPEG_QUALITY)


def _savemat(path: Path, variables: dict) -> None:
    """A MAT-file (version 5, as MATLAB writes) through scipy, with a fixed header text: scipy's carries the time
    of writing, which would make two writes differ."""
    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, variables)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"MATLAB 5.0 MAT-file, written by pipeline.data.standins".ljust(116) + buffer.getvalue()[116:])


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` ImageNet-like JPEGs (the ImageNet writer's crops, sizes and quality) in ``folder``, for measuring an
    input pipeline's throughput."""
    paths = [folder / f"image_{i:06d}.JPEG" for i in range(n)]
    _save_jpegs(paths, np.arange(n), IMAGENET_SIZES, seed, 0)
    return paths


def _cifar_batch(path: Path, targets: np.ndarray, names: list[str], stream: int, seed: int, **entry) -> None:
    """One CIFAR pickle (protocol 2, as the originals): ``entry`` (batch label, label lists) with the images of
    ``targets`` as (N, 3072) uint8 rows (the R, G, B planes of a 32x32 image) and their file names."""
    data = _array(targets, 32, seed, stream).transpose(0, 3, 1, 2).reshape(len(targets), -1)
    filenames = [f"{names[c]}_s_{stream:02d}{i:06d}.png" for i, c in enumerate(targets)]
    path.write_bytes(pickle.dumps({**entry, "data": data, "filenames": filenames}, protocol=2))


def _write_cifar10(root: Path, *, classes: int, per_class: int, test_per_class: int, seed: int = 0) -> None:
    """CIFAR-10's python version: five training batches, a test batch, batches.meta."""
    _check("cifar10", classes, 10, per_class, test_per_class)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = CIFAR10[:classes]
    parts = np.array_split(_labels(classes, per_class, seed, 1), 5)
    for b, part in enumerate(parts):
        label = f"training batch {b + 1} of 5"
        _cifar_batch(folder / f"data_batch_{b + 1}", part, names, 10 + b, seed, batch_label=label, labels=part.tolist())
    test = _labels(classes, test_per_class, seed, 2)
    _cifar_batch(folder / "test_batch", test, names, 2, seed, batch_label="testing batch 1 of 1", labels=test.tolist())
    meta = {"num_cases_per_batch": len(parts[0]), "label_names": names, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def _write_cifar100(root: Path, *, classes: int, per_class: int, test_per_class: int, seed: int = 0) -> None:
    """CIFAR-100's python version: train, test (fine and coarse labels) and meta (both name lists)."""
    _check("cifar100", classes, 100, per_class, test_per_class)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    superclass = {name: i for i, names in enumerate(CIFAR100.values()) for name in names.split()}
    names = sorted(superclass)[:classes]
    for split, count, stream in (("train", per_class, 1), ("test", test_per_class, 2)):
        labels = _labels(classes, count, seed, stream)
        coarse = [superclass[names[c]] for c in labels]
        label = f"{split}ing batch 1 of 1"
        entry = dict(batch_label=label, fine_labels=labels.tolist(), coarse_labels=coarse)
        _cifar_batch(folder / split, labels, names, stream, seed, **entry)
    meta = {"fine_label_names": names, "coarse_label_names": list(CIFAR100)}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))


def _write_stl10(root: Path, *, classes: int, per_class: int, test_per_class: int, seed: int = 0) -> None:
    """STL-10's binary version: uint8 images column-major (N, 3, 96, 96) as the original, labels 1-based, as many
    unlabeled images as training ones, and ten training folds of a fifth of the training images each."""
    _check("stl10", classes, 10, per_class, test_per_class)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    train, test = _labels(classes, per_class, seed, 1), _labels(classes, test_per_class, seed, 2)
    for split, labels, stream in (("train", train, 1), ("test", test, 2)):
        _array(labels, 96, seed, stream).transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")
        (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    unlabeled = np.random.default_rng([seed, 3]).integers(0, classes, len(train))
    _array(unlabeled, 96, seed, 3).transpose(0, 3, 2, 1).tofile(folder / "unlabeled_X.bin")
    (folder / "class_names.txt").write_text("".join(f"{name}\n" for name in STL10[:classes]))
    rng, fold = np.random.default_rng([seed, 4]), max(1, len(train) // 5)
    folds = [" ".join(str(i) for i in np.sort(rng.permutation(len(train))[:fold])) for _ in range(10)]
    (folder / "fold_indices.txt").write_text("".join(f"{line}\n" for line in folds))


def _write_stanford_cars(root: Path, *, classes: int, per_class: int, test_per_class: int, seed: int = 0) -> None:
    """Stanford Cars: devkit .mat files (class names; train annotations: bounding box, 1-based class, file name),
    the labelled test annotations, and jpgs of car-photo sizes named 00001.jpg, ..."""
    from PIL import Image

    _check("stanford_cars", classes, 196, per_class, test_per_class)
    base = root / "stanford_cars"
    names = np.array([f"Stand-in Car {c + 1} 2012" for c in range(classes)], dtype=object)
    _savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    for split, count, stream, mat in (
        ("train", per_class, 1, base / "devkit" / "cars_train_annos.mat"),
        ("test", test_per_class, 2, base / "cars_test_annos_withlabels.mat"),
    ):
        labels = _labels(classes, count, seed, stream)
        paths = [base / f"cars_{split}" / f"{i + 1:05d}.jpg" for i in range(len(labels))]
        _save_jpegs(paths, labels, CAR_SIZES, seed, stream)
        rng, records = np.random.default_rng([seed, 10 + stream]), []
        for path, label in zip(paths, labels, strict=True):
            with Image.open(path) as image:
                size = np.array(image.size)
            x1, y1 = (rng.uniform(0.0, 0.2, 2) * size).astype(int) + 1  # the car's box, in 1-based pixels
            x2, y2 = (rng.uniform(0.8, 1.0, 2) * size).astype(int)
            box = [np.uint16(v) for v in (x1, y1, x2, y2)]
            records.append((*box, np.uint8(label + 1), path.name))
        _savemat(mat, {"annotations": np.array(records, dtype=[(f, object) for f in fields])})


def _write_imagenet(
    root: Path, *, classes: int, per_class: int, test_per_class: int, seed: int = 0, layout: str = "flat"
) -> None:
    """ImageNet: ``train/<wnid>/<wnid>_<n>.JPEG``; validation images named as the official ones, flat in ``val/``
    (``layout="flat"``) or in ``val/<wnid>/`` (``layout="folders"``); the devkit's files either way."""
    _check("imagenet", classes, 1000, per_class, test_per_class)
    if layout not in ("flat", "folders"):
        raise ValueError(f"standins imagenet: layout must be 'flat' or 'folders', got {layout!r}")
    wnids = [*IMAGENET, *(f"n9{c:07d}" for c in range(len(IMAGENET), classes))][:classes]
    train = np.repeat(np.arange(classes), per_class)
    paths = [root / "train" / wnids[c] / f"{wnids[c]}_{i % per_class + 1}.JPEG" for i, c in enumerate(train)]
    _save_jpegs(paths, train, IMAGENET_SIZES, seed, 1)
    val = _labels(classes, test_per_class, seed, 2)
    names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(len(val))]
    folders = [root / "val" / wnids[c] if layout == "folders" else root / "val" for c in val]
    _save_jpegs([folder / name for folder, name in zip(folders, names, strict=True)], val, IMAGENET_SIZES, seed, 2)
    _write_devkit(root / DEVKIT / "data", wnids, val, per_class, seed)


def _write_devkit(data: Path, wnids: list[str], val: np.ndarray, per_class: int, seed: int) -> None:
    """The devkit's meta.mat (a struct array ``synsets`` with the real fields, in the real order: the classes,
    then a WordNet ancestor) and the validation ground truth (one ILSVRC2012_ID per image, in file-name order)."""
    fields = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height")
    ids = np.random.default_rng([seed, 5]).permutation(len(wnids)) + 1  # class c's ID
    if len(ids) > 1 and (np.diff(ids) > 0).all():  # not in wnid order, as the real IDs, not even by chance
        ids = np.roll(ids, 1)
    gloss = "a stand-in class of pipeline.data.standins: crops of one photograph"
    synsets = [
        (int(ids[c]), wnid, IMAGENET.get(wnid, f"stand-in class {c}"), gloss, 0, np.zeros(0), 0, per_class)
        for c, wnid in enumerate(wnids)
    ]
    synsets.sort(key=lambda synset: synset[0])  # listed by ID, as the real file
    entity = "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)"
    synsets.append((len(wnids) + 1, "n00001740", "entity", entity, len(wnids), np.sort(ids), 1, per_class * len(wnids)))
    dtype = [(f, object) for f in (*fields, "num_train_images")]
    _savemat(data / "meta.mat", {"synsets": np.array(synsets, dtype=dtype)})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[c]}\n" for c in val))


# The writer of each user-file source of pipeline.config's SOURCES.
WRITERS: dict[str, Callable[..., None]] = {
    "imagenet": _write_imagenet,
    "cifar10": _write_cifar10,
    "cifar100": _write_cifar100,
    "stl10": _write_stl10,
    "stanford_cars": _write_stanford_cars,
}
