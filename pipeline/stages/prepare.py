"""Stage ``prepare``: read one dataset from the registry, split it, and write it in a training-ready form.

One DVC instance per entry of ``params.yaml``'s ``datasets`` section (``prepare@<name>``), each depending on
its own entry only, so changing one dataset's params re-runs that dataset alone.

- Tensor storage (every dataset but ImageNet): images converted to 3 channels (grayscale repeated), resized
  to ``img_size`` (bicubic, antialiased), and written with their labels as one safetensors file — a few
  files rather than thousands of little ones, which DVC would hash one by one.
- File storage (ImageNet): read in place, never copied; the stage writes an index of relative paths,
  labels and file sizes.

Per-channel mean and std come from the training split only (file storage: a seeded sample of
``stats_max_images`` training images).

Reads:  params.yaml ``datasets.<name>``; the dataset's files (user datasets) or installed packages (bundled).
Writes: --out DIR        ``data.safetensors`` ({train,val,test}_images uint8 (N, 3, S, S) and _labels int64)
                         or ``index.csv`` (split, path, label, bytes); ``meta.json`` (classes, mean, std, ...).
        --metrics        JSON: counts per split, classes, per-class balance, mean/std, content hash.
        --provenance     JSON: resolved params, versions, hardware, wall time.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np

from pipeline import cli, config, provenance
from pipeline.cli import run_stage
from pipeline.config import Dataset
from pipeline.data.datasets import Loaded, load, read_image, split_indices
from pipeline.outputs import json_bytes, round_result, write_outputs

PARAMS = ("profile", "datasets.{dataset}")
SPLITS = ("train", "val", "test")
_RESIZE_CHUNK = 1024  # images resized at a time (bounds memory)


def to_rgb_resized(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, C) uint8, C in (1, 3) -> (N, 3, size, size) uint8; bicubic with antialiasing, rounded."""
    import torch
    import torch.nn.functional as F

    out = np.empty((len(images), 3, size, size), dtype=np.uint8)
    for start in range(0, len(images), _RESIZE_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + _RESIZE_CHUNK])).permute(0, 3, 1, 2)
        chunk = chunk.expand(-1, 3, -1, -1) if chunk.shape[1] == 1 else chunk  # grayscale -> 3 channels
        if chunk.shape[-2:] != (size, size):
            chunk = F.interpolate(chunk.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
            chunk = chunk.round().clamp(0, 255)
        out[start : start + len(chunk)] = chunk.to(torch.uint8).numpy()
    return out


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, 3, H, W) uint8 images, on the 0..1 scale."""
    x = images.astype(np.float64) / 255.0
    return round_result([float(v) for v in x.mean(axis=(0, 2, 3))]), round_result(
        [float(v) for v in x.std(axis=(0, 2, 3))]
    )


def balance(labels: np.ndarray, num_classes: int) -> dict:
    counts = np.bincount(labels, minlength=num_classes)
    return {"min": int(counts.min()), "max": int(counts.max())} if len(labels) else {"min": 0, "max": 0}


def run(name: str, params: Dataset, profile: str = "") -> tuple[dict[str, bytes], dict]:
    """Prepare dataset ``name``; returns (files to write into the output folder, metrics)."""
    source = params.info
    loaded = load(name, params)
    splits = split_indices(
        loaded.labels,
        loaded.is_test,
        val_fraction=params.val_fraction,
        test_fraction=params.test_fraction,
        seed=params.seed,
        where=f"datasets.{name}",
    )
    if source.storage == "tensor":
        files, mean, std = _tensor_files(loaded, splits, params.img_size)
    else:
        files, mean, std = _index_files(name, loaded, splits, params)
    content = "data.safetensors" if source.storage == "tensor" else "index.csv"
    digest = "sha256:" + hashlib.sha256(files[content]).hexdigest()
    num_classes = len(loaded.classes)
    metrics = {
        "profile": profile,
        "dataset": name,
        "source": params.source,
        "kind": source.kind,
        "synthetic": loaded.synthetic,
        "storage": source.storage,
        "img_size": params.img_size,
        "num_classes": num_classes,
        "counts": {s: int(len(splits[s])) for s in SPLITS},
        "per_class": {s: balance(loaded.labels[splits[s]], num_classes) for s in SPLITS},
        "mean": mean,
        "std": std,
        "content_hash": digest,
    }
    meta = {**metrics, "classes": loaded.classes, "root": params.root if source.storage == "files" else None}
    files["meta.json"] = json_bytes(meta)
    return files, metrics


def _tensor_files(loaded: Loaded, splits: dict, size: int) -> tuple[dict[str, bytes], list, list]:
    from safetensors.numpy import save

    images = to_rgb_resized(loaded.images, size)
    tensors = {}
    for split in SPLITS:
        tensors[f"{split}_images"] = np.ascontiguousarray(images[splits[split]])
        tensors[f"{split}_labels"] = loaded.labels[splits[split]].astype(np.int64)
    mean, std = channel_stats(tensors["train_images"])
    return {"data.safetensors": save(tensors)}, mean, std


def _index_files(name: str, loaded: Loaded, splits: dict, params: Dataset) -> tuple[dict[str, bytes], list, list]:
    root = Path(params.root).expanduser()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["split", "path", "label", "bytes"])
    for split in SPLITS:
        for i in splits[split]:
            writer.writerow([split, loaded.files[i], int(loaded.labels[i]), (root / loaded.files[i]).stat().st_size])
    train = splits["train"]
    rng = np.random.default_rng(params.seed)
    sample = np.sort(rng.choice(train, size=min(params.stats_max_images, len(train)), replace=False))
    images = np.stack([read_image(name, root / loaded.files[i], params.img_size) for i in sample])
    mean, std = channel_stats(images.transpose(0, 3, 1, 2))
    return {"index.csv": buffer.getvalue().encode()}, mean, std


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(
        "python -m pipeline.stages.prepare",
        __doc__,
        {
            "--params": "params.yaml",
            "--dataset": "entry of the datasets section",
            "--out": "folder for the prepared dataset",
            "--metrics": "metrics JSON to write",
            "--provenance": "provenance JSON to write",
        },
    )
    args = parser.parse_args(argv)
    run_stage("prepare", lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    started = time.time()
    prep = config.load_prepare(args.params, args.dataset)
    params = prep.dataset
    files, metrics = run(prep.name, params, prep.profile)
    out = Path(args.out)
    record = provenance.record("prepare", prep, started=started)
    write_outputs(
        {
            **{out / k: v for k, v in files.items()},
            args.metrics: json_bytes(metrics),
            args.provenance: json_bytes(record),
        }
    )
    label = " (SYNTHETIC)" if metrics["synthetic"] else ""
    print(
        f"prepare: {args.dataset}{label}: {json.dumps(metrics['counts'])} at {params.img_size} px, "
        f"{metrics['num_classes']} classes, {metrics['content_hash'][:19]}"
    )


if __name__ == "__main__":
    main()
