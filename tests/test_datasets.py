"""The dataset registry and the prepare stage: every format through the users' code path, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors

from pipeline.config import SOURCES, Dataset, ParamsError
from pipeline.config.schema import parse
from pipeline.data.datafiles import DEVKIT
from pipeline.data.datasets import READERS, DatasetError, load, split_indices
from pipeline.data.standins import WRITERS
from pipeline.stages import prepare

from . import fakes
from .tiny import tiny_params, write_params


def params(source: str, **kwargs) -> Dataset:
    defaults = dict(source=source, img_size=16, val_fraction=0.25, seed=0)
    if not SOURCES[source].official_test:
        defaults["test_fraction"] = 0.25
    if SOURCES[source].storage == "files":
        defaults["stats_max_images"] = 5
    return Dataset(**{**defaults, **kwargs})


def prepared(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    return load_safetensors(files["data.safetensors"])


@pytest.mark.parametrize(
    ("source", "n", "classes", "native"),
    [
        ("mnist5k", 5000, 10, 28),
        ("digits", 1797, 10, 8),
        ("lfw_faces", 200, 2, 25),
    ],
)
def test_bundled_datasets_load_offline(no_network, source, n, classes, native):
    files, metrics = prepare.run(source, params(source, img_size=native))
    data = prepared(files)
    assert sum(metrics["counts"].values()) == n and metrics["num_classes"] == classes
    assert data["train_images"].shape[1:] == (3, native, native) and data["train_images"].dtype == np.uint8
    assert (data["train_images"][:, 0] == data["train_images"][:, 2]).all(), "grayscale repeated to 3 channels"
    assert metrics["kind"] == "bundled" and not metrics["synthetic"]


def test_prepare_resizes_and_computes_train_stats():
    files, metrics = prepare.run("digits", params("digits", img_size=20))
    data = prepared(files)
    assert data["val_images"].shape[1:] == (3, 20, 20)
    train = data["train_images"].astype(np.float64) / 255
    assert metrics["mean"] == pytest.approx(train.mean(axis=(0, 2, 3)).tolist(), abs=1e-6)
    assert metrics["std"] == pytest.approx(train.std(axis=(0, 2, 3)).tolist(), abs=1e-6)
    meta = json.loads(files["meta.json"])
    assert meta["classes"] == [str(i) for i in range(10)] and meta["content_hash"] == metrics["content_hash"]


def test_splits_deterministic_disjoint_stratified():
    labels = np.repeat(np.arange(4), 25)
    a = split_indices(labels, None, val_fraction=0.2, test_fraction=0.2, seed=3)
    b = split_indices(labels, None, val_fraction=0.2, test_fraction=0.2, seed=3)
    c = split_indices(labels, None, val_fraction=0.2, test_fraction=0.2, seed=4)
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["test"] == c["test"]).all()
    together = np.concatenate(list(a.values()))
    assert len(together) == len(set(together.tolist())) == 100
    assert [int(np.sum(labels[a["test"]] == k)) for k in range(4)] == [5, 5, 5, 5]


def test_official_test_split_is_kept():
    labels = np.repeat(np.arange(2), 10)
    is_test = np.arange(20) % 5 == 0
    split = split_indices(labels, is_test, val_fraction=0.25, test_fraction=None, seed=0)
    assert (split["test"] == np.flatnonzero(is_test)).all()
    assert len(split["val"]) == 4 and not set(split["val"]) & set(split["test"])


def test_splits_stable_when_unrelated_params_change():
    small = prepared(prepare.run("digits", params("digits", img_size=8))[0])
    large = prepared(prepare.run("digits", params("digits", img_size=24))[0])
    for split in ("train", "val", "test"):
        assert (small[f"{split}_labels"] == large[f"{split}_labels"]).all()
    other_seed = prepared(prepare.run("digits", params("digits", img_size=8, seed=1))[0])
    assert not (small["test_labels"] == other_seed["test_labels"]).all()


def test_synthetic_is_deterministic_and_labelled():
    p = params("synthetic", num_classes=3, per_class=8, img_size=12)
    files, metrics = prepare.run("synthetic", p)
    assert metrics["synthetic"] is True and metrics["num_classes"] == 3
    assert files["data.safetensors"] == prepare.run("synthetic", p)[0]["data.safetensors"]


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_files(tmp_path, monkeypatch, hundred):
    fakes.write_cifar(tmp_path, monkeypatch, hundred=hundred)
    source = "cifar100" if hundred else "cifar10"
    files, metrics = prepare.run(source, params(source, root=str(tmp_path), img_size=32))
    k = 100 if hundred else 10
    # 5 train batches (cifar10) or 1 (cifar100) of 3 per class; the test file is the official test split
    train_files = 5 if not hundred else 1
    assert metrics["counts"]["test"] == 3 * k
    assert metrics["counts"]["train"] + metrics["counts"]["val"] == 3 * k * train_files
    assert prepared(files)["test_images"].shape == (3 * k, 3, 32, 32)
    assert json.loads(files["meta.json"])["classes"][:2] == ["class0", "class1"]


def test_stl10_files(tmp_path, monkeypatch):
    fakes.write_stl10(tmp_path, monkeypatch)
    files, metrics = prepare.run("stl10", params("stl10", root=str(tmp_path), img_size=24, val_fraction=0.5))
    assert metrics["counts"]["test"] == 20 and metrics["num_classes"] == 10
    assert prepared(files)["train_images"].shape[1:] == (3, 24, 24)


def test_stanford_cars_files(tmp_path):
    WRITERS["stanford_cars"](tmp_path, classes=3, per_class=2, test_per_class=2)
    files, metrics = prepare.run(
        "stanford_cars", params("stanford_cars", root=str(tmp_path), img_size=24, val_fraction=0.5)
    )
    assert metrics["counts"] == {"train": 3, "val": 3, "test": 6}
    assert json.loads(files["meta.json"])["classes"] == [f"Stand-in Car {c} 2012" for c in (1, 2, 3)]


def test_imagenet_index_not_copy(tmp_path):
    fakes.write_imagenet(tmp_path)
    files, metrics = prepare.run("imagenet", params("imagenet", root=str(tmp_path)))
    assert set(files) == {"index.csv", "meta.json"} and metrics["storage"] == "files"
    rows = files["index.csv"].decode().splitlines()
    assert rows[0] == "split,path,label,bytes" and len(rows) == 1 + 3 * 4 + 3 * 2
    split, path, label, size = rows[1].split(",")
    assert not path.startswith("/") and (tmp_path / path).stat().st_size == int(size)
    assert metrics["counts"]["test"] == 6


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_missing_root_names_dataset_path_and_layout(tmp_path):
    with pytest.raises(DatasetError) as excinfo:
        prepare.run("c10", params("cifar10", root=str(tmp_path / "nowhere")))
    message = str(excinfo.value)
    assert "dataset 'c10'" in message and "nowhere does not exist" in message and "cifar-10-batches-py" in message


def test_missing_file(tmp_path, monkeypatch):
    folder = fakes.write_cifar(tmp_path, monkeypatch)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="missing file .*data_batch_3; expected: <root>/cifar-10-batches-py"):
        prepare.run("cifar10", params("cifar10", root=str(tmp_path)))


def test_truncated_file_fails_checksum(tmp_path, monkeypatch):
    folder = fakes.write_cifar(tmp_path, monkeypatch)
    content = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(content[: len(content) // 2])
    with pytest.raises(DatasetError, match="test_batch is corrupt or truncated"):
        prepare.run("cifar10", params("cifar10", root=str(tmp_path)))


def test_unreadable_pickle_names_the_file(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    folder = fakes.write_cifar(tmp_path, monkeypatch)
    (folder / "data_batch_2").write_bytes(b"not a pickle at all")
    monkeypatch.setattr(CIFAR10, "train_list", [[n, fakes.md5(folder / n)] for n, _ in CIFAR10.train_list])
    with pytest.raises(DatasetError, match="could not read .*cifar-10-batches-py"):
        prepare.run("cifar10", params("cifar10", root=str(tmp_path)))


class _Hostile:  # what a hostile pickle does: a reducer that calls a function of the attacker's choice
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("hostile", "UnpicklingError: it refers to posix.system; a CIFAR pickle holds only arrays, lists, dicts"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "'data' is not a uint8 array of 3,072 values"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "its labels are not a list of 2 integers"),
        ([1, 2], "holds a list, not CIFAR's dict"),
    ],
    ids=["code", "dtype", "labels", "type"],
)
def test_a_cifar_pickle_is_read_for_arrays_only_even_unchecked(tmp_path, monkeypatch, entry, said):
    """checksums: false reads files no md5 vouches for: a pickle that would run code is refused before anything
    runs, and every value is checked for its type and size; one line naming the folder."""
    import pickle

    folder = fakes.write_cifar(tmp_path, monkeypatch)
    marker = tmp_path / "owned"
    (folder / "data_batch_2").write_bytes(pickle.dumps(_Hostile(marker) if entry == "hostile" else entry, protocol=2))
    with pytest.raises(DatasetError) as excinfo:
        load("cifar10", params("cifar10", root=str(tmp_path), checksums=False))
    assert said in str(excinfo.value) and str(folder) in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert not marker.exists()


def test_wrong_array_size_names_the_file(tmp_path, monkeypatch):
    from torchvision.datasets import STL10

    folder = fakes.write_stl10(tmp_path, monkeypatch)
    with (folder / "test_X.bin").open("ab") as fh:
        fh.write(b"\x00" * 7)
    monkeypatch.setattr(STL10, "test_list", [[n, fakes.md5(folder / n)] for n, _ in STL10.test_list])
    with pytest.raises(DatasetError, match="test_X.bin has .* bytes, not a whole number of 96x96x3 images"):
        prepare.run("stl10", params("stl10", root=str(tmp_path)))


def test_label_out_of_range(tmp_path, monkeypatch):
    fakes.write_cifar(tmp_path, monkeypatch, labels_override={"test_batch": [0, 1, 12]})
    with pytest.raises(DatasetError, match="label 12 out of range for 10 classes"):
        prepare.run("cifar10", params("cifar10", root=str(tmp_path)))


def test_empty_class(tmp_path, monkeypatch):
    no_nine = [i % 9 for i in range(27)]
    fakes.write_cifar(
        tmp_path,
        monkeypatch,
        labels_override={
            n: no_nine
            for n in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
        },
    )
    with pytest.raises(DatasetError, match="class\\(es\\) with no images: class9"):
        prepare.run("cifar10", params("cifar10", root=str(tmp_path)))


@pytest.mark.parametrize("source", ["cifar10", "cifar100", "stl10"])
def test_checksums_false_reads_files_that_cannot_match_the_published_md5(tmp_path, source):
    """pipeline.data.standins' files are in the real format with other bytes: refused by md5, read without it."""
    WRITERS[source](tmp_path, classes=2, per_class=3, test_per_class=2)
    with pytest.raises(DatasetError, match=r"is corrupt or truncated \(md5 does not match [0-9a-f]{32}\)"):
        load(source, params(source, root=str(tmp_path)))
    loaded = load(source, params(source, root=str(tmp_path), checksums=False))
    assert len(loaded.labels) == 10 and loaded.is_test.sum() == 4 and len(loaded.classes) == 2


@pytest.mark.parametrize(
    ("source", "path"), [("cifar10", "cifar-10-batches-py/batches.meta"), ("stl10", "stl10_binary/unlabeled_X.bin")]
)
def test_checksums_false_still_requires_every_file(tmp_path, source, path):
    WRITERS[source](tmp_path, classes=2, per_class=3, test_per_class=2)
    (tmp_path / path).unlink()
    with pytest.raises(DatasetError, match=f"missing file {tmp_path / path}; expected: <root>/{path.split('/')[0]}"):
        load(source, params(source, root=str(tmp_path), checksums=False))


TRUTH = f"{DEVKIT}/data/ILSVRC2012_validation_ground_truth.txt"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda root: (root / "val" / "n01440764").mkdir(),
            r"val holds both class folders \(n01440764, ...\) and images \(ILSVRC2012_val_00000001.JPEG, ...\); keep "
            "one layout",
        ),
        (
            lambda root: (root / DEVKIT / "data" / "meta.mat").unlink(),
            f"val holds the flat validation images, labelled by .*{DEVKIT}/data/meta.mat, which is missing; extract "
            f"{DEVKIT}.tar.gz",
        ),
        (
            lambda root: (root / "val" / "ILSVRC2012_val_00000004.JPEG").unlink(),
            r"ground_truth.txt has 6 labels but .*val holds 5 images; put the validation images and the devkit",
        ),
        (
            lambda root: shutil.rmtree(root / "train" / "n01443537"),
            r"ground_truth.txt labels ILSVRC2012_val_\d{8}.JPEG as n01443537, which has no folder in .*train",
        ),
        (
            lambda root: (root / TRUTH).write_text("4\n" * 6),  # the WordNet ancestor listed after the 3 classes
            r"labels ILSVRC2012_val_00000001.JPEG with ILSVRC2012_ID 4, which is not a class \(a synset without",
        ),
        (lambda root: (root / TRUTH).write_text("1\n2\nthree\n"), "could not read .*ground_truth.txt: ValueError"),
    ],
)
def test_imagenet_flat_val_errors_name_the_file(tmp_path, change, message):
    WRITERS["imagenet"](tmp_path, classes=3, per_class=2, test_per_class=2)
    change(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load("imagenet", params("imagenet", root=str(tmp_path)))


def checked(entry: Dataset, name: str = "d") -> Dataset:
    """``entry`` through pipeline.config's parser, as a stage loads it."""
    return parse(Dataset, {k: v for k, v in dataclasses.asdict(entry).items() if v is not None}, f"datasets.{name}")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(val_fraction=0.0), "datasets.d.val_fraction: expected a fraction in (0, 1), got 0.0"),
        (dict(val_fraction=1.5), "datasets.d.val_fraction: expected a fraction in (0, 1), got 1.5"),
        (dict(test_fraction=None), "datasets.d.test_fraction: digits has no official test split"),
        (dict(val_fraction=0.5, test_fraction=0.5), "val_fraction + test_fraction must be below 1"),
        (
            dict(source="mnist"),
            "datasets.d.source: unknown dataset 'mnist'; known: mnist5k, digits, lfw_faces, synthetic",
        ),
        (dict(root="/data"), "datasets.d.root: does not apply to bundled dataset digits"),
        (dict(num_classes=3), "datasets.d.num_classes: applies to the synthetic dataset only"),
        (dict(img_size=0), "datasets.d.img_size: expected a positive number, got 0"),
        (
            dict(checksums=False),
            "datasets.d.checksums: applies only to the sources whose files have published md5 sums (cifar10, "
            "cifar100, stl10), not digits; remove the key",
        ),
    ],
)
def test_bad_dataset_params(change, message):
    with pytest.raises(ParamsError) as excinfo:
        checked(dataclasses.replace(params("digits"), **change))
    assert message in str(excinfo.value)


def test_user_dataset_needs_root_and_no_test_fraction():
    with pytest.raises(ParamsError, match="datasets.d.root: cifar10 is read from your files"):
        checked(params("cifar10"))
    with pytest.raises(ParamsError, match="cifar10 has an official test split; remove the key"):
        checked(params("cifar10", root="/x", test_fraction=0.1))


def test_every_source_has_a_reader():
    assert set(READERS) == set(SOURCES)


def test_a_fraction_that_leaves_a_split_empty_is_refused():
    """lfw_faces has 100 images per class: 0.004 of them rounds to 0 in every class."""
    with pytest.raises(DatasetError) as excinfo:
        prepare.run("faces", params("lfw_faces", val_fraction=0.004), "embedded")
    assert str(excinfo.value) == (
        "datasets.faces.val_fraction: 0.004 of at most 100 images per class rounds to 0 images in every class, so "
        "the val split would be empty; raise it above 0.005"
    )
    with pytest.raises(DatasetError, match=r"datasets.faces.test_fraction: 0.001 of at most 100 images per class"):
        prepare.run("faces", params("lfw_faces", test_fraction=0.001), "embedded")


def stage_argv(tmp_path: Path, params_file: Path, dataset: str = "d") -> list[str]:
    out = tmp_path / "out"
    return [
        "--params",
        str(params_file),
        "--dataset",
        dataset,
        "--out",
        str(out / dataset),
        "--metrics",
        str(out / f"{dataset}.json"),
        "--provenance",
        str(out / f"{dataset}.provenance.json"),
    ]


def with_dataset(tmp_path: Path, entry: dict) -> Path:
    params = tiny_params()
    params["datasets"]["d"] = entry
    return write_params(tmp_path / "params.yaml", params)


def test_stage_failure_leaves_no_outputs(tmp_path):
    entry = dict(source="digits", img_size=8, val_fraction=2.0, test_fraction=0.2, seed=0)
    argv = stage_argv(tmp_path, with_dataset(tmp_path, entry))
    with pytest.raises(SystemExit) as excinfo:
        prepare.main(argv)
    assert "prepare: error: datasets.d.val_fraction: expected a fraction in (0, 1), got 2.0" in str(excinfo.value.code)
    assert not (tmp_path / "out").exists()
    entry["val_fraction"] = 0.25
    with pytest.raises(SystemExit, match="datasets: 'e' is not listed; listed: synthetic, digits, d"):
        prepare.main(stage_argv(tmp_path, with_dataset(tmp_path, entry), "e"))
    entry["val_fraction"] = 0.001  # valid as a fraction, empty as a split: refused before anything is read
    with pytest.raises(SystemExit, match=r"datasets.d.val_fraction: 0.001 of at most 183 images per class"):
        prepare.main(stage_argv(tmp_path, with_dataset(tmp_path, entry)))
    assert not (tmp_path / "out").exists()


def test_stage_writes_documented_files(tmp_path):
    entry = dict(
        source="synthetic", img_size=8, val_fraction=0.25, test_fraction=0.25, seed=0, num_classes=2, per_class=8
    )
    prepare.main(stage_argv(tmp_path, with_dataset(tmp_path, entry)))
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "d").iterdir()) == ["data.safetensors", "meta.json"]
    metrics = json.loads((out / "d.json").read_text())
    assert metrics["counts"] == {"train": 8, "val": 4, "test": 4} and metrics["synthetic"] is True
    assert "wall_time_s" in json.loads((out / "d.provenance.json").read_text())
