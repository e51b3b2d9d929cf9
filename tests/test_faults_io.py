"""Bad files and a hostile disk: a truncated or corrupt prepared dataset or pretrained weights, a full disk, a
read-only output folder. Each is one line naming the file, what is wrong and what to do, exit status 1 (a string
``SystemExit`` code: Python prints it and exits with 1; the subprocess cases check the status itself), and
nothing half-written left behind."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from pipeline.config import Dataset
from pipeline.data.loaders import build_loaders
from pipeline.outputs import OutputError, write_outputs
from pipeline.stages import finetune, prepare, pretrain
from pipeline.training import model

from . import fakes
from .test_data import TIMM
from .tiny import ROOT, tiny_params, write_params

REDO = "re-create it with: dvc repro --force prepare@synthetic"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("prepared")
    for name, entry in tiny_params()["datasets"].items():
        files, _ = prepare.run(name, Dataset(**entry))
        write_outputs({base / name / k: v for k, v in files.items()})
    return {name: base / name for name in tiny_params()["datasets"]}


def stage_error(main, argv: list[str]) -> str:
    """The one line a stage's ``main`` ends with (a string exit code: status 1)."""
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    message = excinfo.value.code
    assert isinstance(message, str) and "\n" not in message and "Traceback" not in message, message
    return message


def leftovers(folder: Path) -> list[str]:
    """Temporary or backup files of write_outputs anywhere under ``folder``."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith((".tmp", ".old")))


def train_argv(tmp: Path, params: Path, data_dir: Path, stage: str = "pretrain", **inputs) -> list[str]:
    out = tmp / "out"
    argv = ["--params", str(params), "--backbone", "n12", "--variant", inputs.pop("variant", "linear")]
    argv += ["--seed", "0", "--data", str(data_dir)]
    argv += [arg for key, value in inputs.items() for arg in (f"--{key}", str(value))]
    argv += ["--weights-out", str(out / "weights"), "--metrics", str(out / "metrics.json")]
    argv += ["--record", str(out / "record.json")]
    argv += ["--curves", str(out / "curves.csv"), "--provenance", str(out / "provenance.json")]
    return [*argv, "--resume-dir", str(tmp / "resume")]


def copy_prepared(prepared: dict, tmp: Path, name: str = "synthetic") -> Path:
    return Path(shutil.copytree(prepared[name], tmp / "prepared" / name))


def _cut_to_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage_length(path: Path) -> None:
    path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:])


def _header_not_json(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + b"#" * 16 + raw[24:])


def _rewrite(path: Path, **changes) -> None:
    from safetensors.numpy import load_file, save_file

    save_file({**load_file(str(path)), **changes}, str(path))


@pytest.mark.parametrize(
    ("corrupt", "what"),
    [
        (_cut_to_half, "truncated ("),
        (_garbage_length, "corrupt header (its length field says"),
        (_header_not_json, "corrupt header (not JSON"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\0" * 10), "corrupt (10 bytes after the last tensor)"),
        (lambda p: _rewrite(p, train_labels=np.full(72, 3, np.int64)), "train_labels holds label 3, outside meta"),
        (lambda p: _rewrite(p, val_labels=np.full(24, -1, np.int64)), "val_labels holds label -1, outside meta"),
        (lambda p: _rewrite(p, test_images=np.zeros((24, 3, 16, 16), np.float32)), "test_images has dtype F32"),
        (lambda p: _rewrite(p, train_images=np.zeros((72, 3, 8, 8), np.uint8)), "expected (N, 3, 16, 16)"),
        (lambda p: _rewrite(p, train_labels=np.zeros(71, np.int64)), "with N = 71 labels"),
    ],
    ids=["truncated", "header-length", "header-json", "trailing", "label-high", "label-negative", "dtype", "size",
         "count"],
)  # fmt: skip
def test_bad_prepared_data_is_one_line(tmp_path, prepared, corrupt, what):
    folder = copy_prepared(prepared, tmp_path)
    corrupt(folder / "data.safetensors")
    params = write_params(tmp_path / "params.yaml", tiny_params())
    message = stage_error(pretrain.main, train_argv(tmp_path, params, folder))
    assert message.startswith(f"pretrain: error: {folder / 'data.safetensors'}: ") and what in message, message
    assert message.endswith(REDO)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def _edit_meta(key, value):
    def edit(path: Path) -> None:
        meta = json.loads(path.read_text())
        if value is None:
            del meta[key]
        else:
            meta[key] = value
        path.write_text(json.dumps(meta))

    return edit


def _more_classes(k: int):
    """meta.json claiming ``k`` classes, names included, for data holding fewer: a k-way head, trained silently."""

    def edit(path: Path) -> None:
        meta = json.loads(path.read_text())
        path.write_text(json.dumps({**meta, "num_classes": k, "classes": [f"class{c}" for c in range(k)]}))

    return edit


@pytest.mark.parametrize(
    ("corrupt", "what"),
    [
        (lambda p: p.write_text('{"num_classes": 3,'), "not valid JSON ("),
        (lambda p: p.write_text("[1, 2]"), "not a JSON object"),
        (_edit_meta("num_classes", None), "num_classes: expected a positive integer, found missing"),
        (_edit_meta("num_classes", "3"), "num_classes: expected a positive integer, found '3'"),
        (_edit_meta("std", [0.2, 0.0, 0.2]), "std: expected three positive numbers, found [0.2, 0.0, 0.2]"),
        (_edit_meta("storage", "disk"), "storage: expected 'tensor' or 'files', found 'disk'"),
        (_edit_meta("num_classes", 2), "train_labels holds label 2, outside meta.json's 2 classes"),
        (_edit_meta("num_classes", 5), "num_classes is 5 but classes lists 3"),
        (_more_classes(5), "its training labels hold 3 classes, but meta.json's num_classes says 5"),
    ],
    ids=[
        "json",
        "not-object",
        "missing-key",
        "wrong-type",
        "std",
        "storage",
        "fewer-classes",
        "count-vs-names",
        "more-classes",
    ],  # fmt: skip
)
def test_bad_meta_is_one_line(tmp_path, prepared, corrupt, what):
    folder = copy_prepared(prepared, tmp_path)
    corrupt(folder / "meta.json")
    params = write_params(tmp_path / "params.yaml", tiny_params())
    message = stage_error(pretrain.main, train_argv(tmp_path, params, folder))
    assert f": {what}" in message and message.endswith(REDO), message
    bad = "data.safetensors" if "outside" in what or "training labels" in what else "meta.json"
    assert message.startswith(f"pretrain: error: {folder / bad}: "), message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("missing", ["meta.json", "data.safetensors"])
def test_missing_prepared_file(tmp_path, prepared, missing):
    folder = copy_prepared(prepared, tmp_path)
    (folder / missing).unlink()
    params = write_params(tmp_path / "params.yaml", tiny_params())
    message = stage_error(pretrain.main, train_argv(tmp_path, params, folder))
    assert message.startswith(f"pretrain: error: {folder / missing}: prepared "), message
    assert message.endswith("dvc repro prepare@synthetic" if missing == "meta.json" else REDO)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("imagenet")
    root = fakes.write_imagenet(tmp / "root")
    params = Dataset(source="imagenet", img_size=16, val_fraction=0.25, seed=0, root=str(root), stats_max_images=4)
    files, _ = prepare.run("imagenet", params)
    write_outputs({tmp / "imagenet" / k: v for k, v in files.items()})
    return tmp


def _rows(index: Path) -> list[list[str]]:
    return list(csv.reader(index.read_text().splitlines()))


def test_bad_index_is_one_line(tmp_path, imagenet):
    folder = Path(shutil.copytree(imagenet / "imagenet", tmp_path / "imagenet"))
    index = folder / "index.csv"
    rows = _rows(index)
    rows[3][2] = "x"
    index.write_text("".join(",".join(r) + "\n" for r in rows))

    def load():
        return build_loaders(folder, TIMM, img_size=16, batch_size=3, eval_batch_size=3, workers=0, seed=0)

    with pytest.raises(ValueError, match="content does not match meta.json's content_hash") as excinfo:
        load()
    assert str(excinfo.value).startswith(f"{index}: ") and "dvc repro --force prepare@imagenet" in str(excinfo.value)
    meta = json.loads((folder / "meta.json").read_text())  # a consistent index with a bad row: checked row by row
    meta["content_hash"] = "sha256:" + hashlib.sha256(index.read_bytes()).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"^{re.escape(str(index))}: line 4: label 'x' is not an integer; re-create"):
        load()
    with pytest.raises(SystemExit) as excinfo:
        cli.run_stage("pretrain", load)
    assert excinfo.value.code.startswith(f"pretrain: error: {index}: line 4:")


@pytest.mark.parametrize("workers", [0, 1])
def test_image_missing_from_the_index_root_is_one_line(tmp_path, imagenet, workers):
    """Checked as each image is read; from a DataLoader worker too (torch re-raises it with the worker's
    traceback as its message, which the error cuts back to its own line)."""
    root = Path(shutil.copytree(imagenet / "root", tmp_path / "root"))
    folder = Path(shutil.copytree(imagenet / "imagenet", tmp_path / "imagenet"))
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "root": str(root)}))
    for image in root.rglob("*.JPEG"):
        image.write_bytes(b"not a JPEG")
    loaders = build_loaders(folder, TIMM, img_size=16, batch_size=3, eval_batch_size=3, workers=workers, seed=0)
    with pytest.raises(SystemExit) as excinfo:
        cli.run_stage("pretrain", lambda: next(iter(loaders.test)))
    message = excinfo.value.code
    assert "\n" not in message and message.startswith(f"pretrain: error: {root}/"), message
    assert ": image unreadable (" in message and f"(listed in {folder / 'index.csv'})" in message
    assert message.endswith("re-create the index with: dvc repro --force prepare@imagenet")
    shutil.rmtree(root)
    with pytest.raises(SystemExit, match=f"^pretrain: error: {re.escape(str(root))}: the image folder of .* does not"):
        cli.run_stage("pretrain", lambda: build_loaders(folder, TIMM, img_size=16, batch_size=3,
                                                              eval_batch_size=3, workers=0, seed=0))  # fmt: skip


# Pretrained weights


def write_weights(folder: Path, params: dict, variant: str, num_classes: int = 3) -> Path:
    """The weights a pretraining instance of ``variant`` under ``params`` would write (untrained)."""
    from safetensors.torch import save_model

    from pipeline import config

    folder.mkdir(parents=True)
    path = write_params(folder / "params.yaml", params)
    net = config.load_pretrain(path, "n12", variant, 0).net
    path.unlink()
    save_model(model.build(net, num_classes), str(folder / "raw.safetensors"))
    return folder / "raw.safetensors"


def finetune_error(tmp: Path, prepared: dict, weights: Path, variant: str = "linear") -> str:
    params = write_params(tmp / "params.yaml", tiny_params())
    argv = train_argv(tmp, params, prepared["digits"], variant=variant, dataset="digits", pretrained=weights.parent)
    message = stage_error(finetune.main, argv)
    assert message.startswith(f"finetune: error: {weights}: "), message
    assert not (tmp / "out").exists() and not leftovers(tmp)
    return message


def test_truncated_pretrained_weights(tmp_path, prepared):
    weights = write_weights(tmp_path / "models" / "pretrain" / "n12-linear-0", tiny_params(), "linear")
    _cut_to_half(weights)
    message = finetune_error(tmp_path, prepared, weights)
    assert f"{weights}: truncated (" in message
    assert message.endswith("re-run the pretraining instance: dvc repro --force pretrain@n12-linear-0")
    weights.write_bytes(b"\x05")
    assert "truncated (1 bytes, not even the 8-byte header length)" in finetune_error(tmp_path, prepared, weights)


def test_weights_of_another_variant(tmp_path, prepared):
    weights = write_weights(tmp_path / "fsne-0" / "weights", tiny_params(), "fsne")
    message = finetune_error(tmp_path, prepared, weights, variant="linear")
    expected = "not the weights of qkv_xcit_nano_12_p8 with variant 'linear' as params.yaml defines it (missing "
    assert f"{expected}blocks.0.attn.qkv.weight, blocks.0.attn.qkv.bias; unexpected blocks.0.attn.qkv." in message
    assert "the weights of another backbone or variant; point --pretrained at the weights of this" in message
    assert message.endswith("re-run the pretraining instance that wrote it")


def test_weights_of_another_backbone_size(tmp_path, prepared):
    weights = write_weights(tmp_path / "wide" / "weights", tiny_params(model={"embed_dim": 64}), "linear")
    message = finetune_error(tmp_path, prepared, weights)
    assert "(cls_token is (1, 1, 64) in the file, (1, 1, 32) in the model; patch_embed." in message, message
    assert " more): the weights of another backbone or variant" in message


def test_weights_of_another_depth(tmp_path, prepared):
    weights = write_weights(tmp_path / "deep" / "weights", tiny_params(model={"depth": 2}), "linear")
    assert "(unexpected blocks.1." in finetune_error(tmp_path, prepared, weights)


# Writing outputs


def prepare_argv(tmp: Path, out: Path) -> list[str]:
    params = write_params(tmp / "params.yaml", tiny_params())
    metrics, record = out / "m" / "synthetic.json", out / "m" / "synthetic.prov.json"
    return ["--params", str(params), "--dataset", "synthetic", "--out", str(out / "synthetic"),
            "--metrics", str(metrics), "--provenance", str(record)]  # fmt: skip


@pytest.fixture
def full_disk(monkeypatch, tmp_path):
    """os.write under ``tmp_path / "full"`` writes half of what it is given, then fails as a full disk does."""
    write = os.write

    def fake(fd: int, content) -> int:
        if str(tmp_path / "full") in os.readlink(f"/proc/self/fd/{fd}"):
            write(fd, bytes(content[: len(content) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(fd, content)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell the output's file descriptors")
    monkeypatch.setattr(os, "write", fake)
    return tmp_path / "full"


def test_full_disk_injected(tmp_path, full_disk):
    message = stage_error(prepare.main, prepare_argv(tmp_path, full_disk))
    assert message.startswith(f"prepare: error: {full_disk / 'synthetic' / 'data.safetensors'}: no space left on "
                              "device while writing (needs "), message  # fmt: skip
    assert message.endswith(
        "bytes); free space or point the output elsewhere; none of the step's 4 outputs was changed"
    )
    assert not full_disk.exists(), "folders made for the outputs are removed again"


def test_full_disk_keeps_the_previous_outputs(tmp_path, full_disk):
    old = {full_disk / "synthetic" / "meta.json": b"old meta", full_disk / "m" / "synthetic.json": b"old metrics"}
    for path, content in old.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    stage_error(prepare.main, prepare_argv(tmp_path, full_disk))
    assert {p: p.read_bytes() for p in old} == old
    assert sorted(p.name for p in full_disk.rglob("*") if p.is_file()) == ["meta.json", "synthetic.json"]


@pytest.mark.parametrize("error", [errno.EACCES, errno.EROFS])
def test_unwritable_output_folder_injected(tmp_path, monkeypatch, error):
    """Root ignores permission bits: the refusal is injected where the temporary file is created."""
    out = tmp_path / "ro"
    (out / "m").mkdir(parents=True)
    mkstemp = tempfile.mkstemp

    def refuse(*args, **kwargs):
        if Path(kwargs.get("dir") or ".") == out / "m":
            raise OSError(error, os.strerror(error), str(out / "m" / ".synthetic.json.x.tmp"))
        return mkstemp(*args, **kwargs)

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    message = stage_error(prepare.main, prepare_argv(tmp_path, out))
    reason = "permission denied while writing; make" if error == errno.EACCES else "read-only file system ("
    assert message.startswith(f"prepare: error: {out / 'm' / 'synthetic.json'}: {reason}"), message
    assert ".tmp" not in message and str(out / "m") in message and "point the output elsewhere" in message
    assert [p.name for p in out.rglob("*")] == ["m"], "nothing written, the prepared folder removed again"


@contextlib.contextmanager
def mounted(folder: Path, options: str):
    """A tmpfs at ``folder`` (root on Linux with mount permitted: here and in CI's container when privileged);
    the test is skipped elsewhere, its injected twin covers the case."""
    folder.mkdir(parents=True)
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root on Linux")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"mount not permitted here ({done.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _prepare_process(tmp: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "pipeline.stages.prepare", *prepare_argv(tmp, out)]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_full_disk_for_real(tmp_path):
    """A 64 KiB tmpfs: the synthetic dataset (86 KiB of images) does not fit."""
    with mounted(tmp_path / "small", "size=64k") as out:
        done = _prepare_process(tmp_path, out)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        target = out / "synthetic" / "data.safetensors"
        assert lines[-1].startswith(f"prepare: error: {target}: no space left on device while writing"), lines
        assert "Traceback" not in done.stderr and ".tmp" not in lines[-1]
        assert list(out.iterdir()) == [], "no temporary file, no partial output"


def test_read_only_folder_for_real(tmp_path):
    with mounted(tmp_path / "ro", "ro,size=64k") as out:
        done = _prepare_process(tmp_path, out)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1] == (
            f"prepare: error: {out / 'synthetic' / 'data.safetensors'}: read-only file system ({out}); point the "
            "output elsewhere; none of the step's 4 outputs was changed"
        )


def test_a_rename_failing_midway_puts_back_the_old_outputs(tmp_path, monkeypatch):
    files = {tmp_path / name: f"new {name}".encode() for name in ("a", "b", "c")}
    (tmp_path / "a").write_bytes(b"old a")
    (tmp_path / "b").write_bytes(b"old b")
    replace, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 3 and Path(dst) == tmp_path / "c":
            raise OSError(errno.EIO, os.strerror(errno.EIO), src, dst)
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(SystemExit) as excinfo:
        cli.run_stage("x", lambda: write_outputs(files))
    assert excinfo.value.code == (
        f"x: error: {tmp_path / 'c'}: cannot be written (Input/output error); none of the step's 3 outputs was changed"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"], "c removed, no temporary or backup file"
    assert (tmp_path / "a").read_bytes() == b"old a" and (tmp_path / "b").read_bytes() == b"old b"


def test_an_output_that_cannot_be_put_back_is_named(tmp_path, monkeypatch):
    files = {tmp_path / name: f"new {name}".encode() for name in ("a", "b")}
    (tmp_path / "a").write_bytes(b"old a")
    replace = os.replace

    def flaky(src, dst):
        if Path(dst) == tmp_path / "b" or str(src).endswith(".old"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), src, dst)
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OutputError) as excinfo:
        write_outputs(files)
    assert str(excinfo.value) == (
        f"{tmp_path / 'b'}: cannot be written (Input/output error); could not put back {tmp_path / 'a'}: they hold "
        "this step's new content, re-run it"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"] and (tmp_path / "a").read_bytes() == b"new a"


def test_an_output_that_is_a_folder(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(OutputError, match=f"^{tmp_path / 'b'}: is a folder; remove it") as excinfo:
        write_outputs({tmp_path / "a": b"1", tmp_path / "b": b"2"})
    assert excinfo.value.errno == errno.EISDIR and excinfo.value.filename == str(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_outputs_replace_old_ones_and_leave_nothing_else(tmp_path):
    (tmp_path / "a").write_bytes(b"old")
    write_outputs({tmp_path / "a": b"new", tmp_path / "d" / "b": b"x" * 100_000})
    assert (tmp_path / "a").read_bytes() == b"new" and (tmp_path / "d" / "b").stat().st_size == 100_000
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == "0o644" and not leftovers(tmp_path)


def test_run_stage_keeps_the_traceback_of_bugs():
    def raises(exc: BaseException):
        def body():
            raise exc

        return body

    with pytest.raises(KeyError):
        cli.run_stage("x", raises(KeyError("k")))
    with pytest.raises(OSError, match="no file"):
        cli.run_stage("x", raises(OSError("no file")))  # an OSError naming no file: not an input or output
    with pytest.raises(SystemExit, match=r"^x: error: /nope/f: permission denied$"):
        cli.run_stage("x", raises(PermissionError(errno.EACCES, "Permission denied", "/nope/f")))
