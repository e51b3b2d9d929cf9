"""pipeline.data.standins: every stand-in read back through the users' code path, ImageNet's flat validation labels,
determinism, and photographs that are the packages' own."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

from pipeline.config import SOURCES, Dataset
from pipeline.data.datafiles import DEVKIT
from pipeline.data.datasets import load
from pipeline.data.photos import IMAGENET_SIZES
from pipeline.data.standins import WRITERS, photos, write_jpegs

SIZE = dict(classes=3, per_class=4, test_per_class=2)
FIRST_CLASSES = {
    "imagenet": ["n01440764", "n01443537", "n01484850"],
    "cifar10": ["airplane", "automobile", "bird"],
    "cifar100": ["apple", "aquarium_fish", "baby"],
    "stl10": ["airplane", "bird", "car"],
    "stanford_cars": ["Stand-in Car 1 2012", "Stand-in Car 2 2012", "Stand-in Car 3 2012"],
}


def entry(source: str, root: Path, img_size: int = 24) -> Dataset:
    """A checked ``datasets`` entry reading the stand-in at ``root`` (md5 sums off where torchvision has them)."""
    extra = {"stats_max_images": 4} if source == "imagenet" else {}
    extra |= {"checksums": False} if SOURCES[source].md5 else {}
    params = Dataset(source=source, img_size=img_size, val_fraction=0.25, seed=0, root=str(root), **extra)
    params.check(f"datasets.{source}")
    return params


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """Every stand-in once (3 classes, 4 training and 2 test images a class), ImageNet in both layouts."""
    root = tmp_path_factory.mktemp("standins")
    for source, writer in WRITERS.items():
        writer(root / source, **SIZE)
    WRITERS["imagenet"](root / "imagenet_folders", **SIZE, layout="folders")
    return root


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_writer_for_every_source_of_user_files():
    assert set(WRITERS) == {name for name, source in SOURCES.items() if source.kind == "user"}


@pytest.mark.parametrize("source", sorted(WRITERS))
def test_every_standin_reads_back_through_the_users_code_path(written, source):
    loaded = load(source, entry(source, written / source))
    assert loaded.classes == FIRST_CLASSES[source]
    for split, count in ((False, 4), (True, 2)):
        assert np.bincount(loaded.labels[loaded.is_test == split], minlength=3).tolist() == [count] * 3
    if loaded.images is not None:
        native = {"cifar10": 32, "cifar100": 32, "stl10": 96}.get(source, 24)  # stanford_cars: resized to img_size
        assert loaded.images.shape == (18, native, native, 3) and loaded.images.std() > 20
    else:
        assert loaded.files[-1].startswith("val/ILSVRC2012_val_000000") and not loaded.files[-1].startswith("/")


def test_flat_validation_labels_agree_with_the_class_folders(written):
    """The same seed puts each validation image in its class folder (labelled by torchvision's ImageFolder) or
    flat (labelled through the devkit): every file gets the same label both ways, and the devkit's IDs are not
    the labels in another order, so only the meta.mat lookup gets them right."""
    flat = load("imagenet", entry("imagenet", written / "imagenet"))
    folders = load("imagenet", entry("imagenet", written / "imagenet_folders"))
    by_name = {Path(f).name: label for f, label in zip(folders.files, folders.labels, strict=True) if f[:4] == "val/"}
    flat_val = {Path(f).name: label for f, label in zip(flat.files, flat.labels, strict=True) if f[:4] == "val/"}
    assert flat_val == by_name and len(flat_val) == 6
    wnid = next(
        p.name
        for p in (written / "imagenet_folders" / "val").iterdir()
        if (p / "ILSVRC2012_val_00000001.JPEG").exists()
    )
    assert flat.classes[flat_val["ILSVRC2012_val_00000001.JPEG"]] == wnid
    truth = (written / "imagenet" / DEVKIT / "data" / "ILSVRC2012_validation_ground_truth.txt").read_text().split()
    ids = [int(i) for i in truth]
    assert sorted(set(ids)) == [1, 2, 3] and [i - 1 for i in ids] != [flat_val[n] for n in sorted(flat_val)]


def test_the_devkit_and_annotations_have_the_real_fields(written):
    synsets = loadmat(written / "imagenet" / DEVKIT / "data" / "meta.mat", squeeze_me=True)["synsets"]
    assert synsets.dtype.names == (
        "ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"
    )  # fmt: skip
    assert synsets[synsets["WNID"] == "n01440764"]["words"][0] == "tench, Tinca tinca"
    cars = written / "stanford_cars" / "stanford_cars"
    for mat, images in (("devkit/cars_train_annos.mat", "cars_train"), ("cars_test_annos_withlabels.mat", "cars_test")):
        annotations = loadmat(cars / mat, squeeze_me=True)["annotations"]
        assert annotations.dtype.names == ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
        for box in annotations:  # the box lies inside its image
            with Image.open(cars / images / box["fname"]) as image:
                assert 1 <= box["bbox_x1"] < box["bbox_x2"] <= image.width and box["bbox_y2"] <= image.height
    with (written / "cifar100" / "cifar-100-python" / "train").open("rb") as fh:
        batch = pickle.load(fh, encoding="latin1")
    fine = {0: 4, 1: 1, 2: 14}  # apple: fruit_and_vegetables, aquarium_fish: fish, baby: people (the real superclasses)
    assert [fine[f] for f in batch["fine_labels"]] == batch["coarse_labels"]


def test_same_seed_same_bytes_other_seed_other_images(written, tmp_path):
    for source, writer in WRITERS.items():
        writer(tmp_path / "again" / source, **SIZE)
    again = files(tmp_path / "again")
    first = files(written)
    assert again == {k: v for k, v in first.items() if not k.startswith("imagenet_folders")}
    WRITERS["cifar10"](tmp_path / "other", **SIZE, seed=1)
    other = files(tmp_path / "other")
    assert other.keys() == files(written / "cifar10").keys()
    assert other["cifar-10-batches-py/test_batch"] != first["cifar10/cifar-10-batches-py/test_batch"]


def test_write_jpegs_are_imagenet_like(tmp_path):
    paths = write_jpegs(tmp_path / "a", 6, seed=2)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in write_jpegs(tmp_path / "b", 6, seed=2)]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size in IMAGENET_SIZES
    assert len({p.read_bytes() for p in paths}) == 6


def test_photos_are_the_packages_own_photographs():
    """Each array equals what its package's own loader returns (network refused: nothing is downloaded), and
    they are photographs: many distinct levels, not flat, each different."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    loaders = {"ihc.png": "immunohistochemistry", "motorcycle_left.png": "stereo_motorcycle"}
    found = photos()
    assert len(found) == 16
    for name, photo in found.items():
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3 and min(photo.shape[:2]) >= 300
        if name in ("china.jpg", "flower.jpg"):
            own = load_sample_image(name)
        else:
            own = getattr(skimage.data, loaders.get(name, name.split(".")[0]))()
            own = own[0] if isinstance(own, tuple) else own
        assert np.array_equal(photo, own if own.ndim == 3 else np.repeat(own[..., None], 3, axis=2)), name
        assert photo.std() > 10 and len(np.unique(photo)) > 100, name
    means = [tuple(photo.mean(axis=(0, 1)).round(1)) for photo in found.values()]
    assert len(set(means)) == len(means)


def test_writer_refuses_more_classes_than_the_real_dataset(tmp_path):
    with pytest.raises(ValueError, match=r"standins cifar10: classes must be in 1..10 \(the real dataset's\)"):
        WRITERS["cifar10"](tmp_path, classes=11, per_class=1, test_per_class=1)
