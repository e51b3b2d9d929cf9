"""How much memory does each rank's loader take for a prepared dataset of a given size? A developer's
measurement on fake data of the real size, not a stage.

    python tools/loader_memory.py --images 16185 --size 224 --ranks 2     # Stanford Cars at 224 px (~2.4 GB)

Writes a fake prepared dataset (uint8 noise in the prepare stage's format) to a scratch folder, then starts
``--ranks`` processes, each building its loaders as a training rank does (pipeline.data.loaders.build_loaders, one
rank's shard) and drawing ``--batches`` training batches and a whole evaluation pass. Each process reports,
from /proc/self/smaps_rollup, in MiB: its resident memory (rss); its anonymous memory (the process's own: torch,
batches; a copy of the dataset would land here); the file pages it maps (page cache, shared by every rank and
reclaimable); and its proportional share (pss: a page mapped by two ranks counts half in each).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
from pathlib import Path

import numpy as np

from pipeline import cli
from pipeline.config import Augment
from pipeline.outputs import json_bytes, write_outputs

AUGMENT = Augment("batched", 0.5, 4, 1.0, None, None, 0.0, "const", 1, "bicubic", 1.0)


def _smaps() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        fields[key] = int(value.split()[0]) // 1024  # MiB
    return fields


def _rank(folder: str, rank: int, ranks: int, batches: int, queue) -> None:
    import torch

    from pipeline.data.loaders import build_loaders

    torch.set_num_threads(1)
    loaders = build_loaders(
        folder,
        AUGMENT,
        img_size=224,
        batch_size=64,
        eval_batch_size=256,
        workers=0,
        seed=0,
        rank=rank,
        world_size=ranks,
    )
    loaders.train.set_epoch(0)
    for i, _ in enumerate(loaders.train):
        if i + 1 == batches:
            break
    for _ in loaders.test:
        pass
    m = _smaps()
    queue.put(
        {"rank": rank, "rss": m["Rss"], "pss": m["Pss"], "anonymous": m["Anonymous"], "file": m["Rss"] - m["Anonymous"]}
    )


def fake(folder: Path, images: int, size: int) -> None:
    """A prepared dataset of ``images`` noise images at ``size`` px, 80/10/10 split, 100 classes."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    counts = {"train": images * 8 // 10, "val": images // 10}
    counts["test"] = images - counts["train"] - counts["val"]
    tensors = {}
    for split, n in counts.items():
        tensors[f"{split}_images"] = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
        tensors[f"{split}_labels"] = rng.integers(0, 100, size=n).astype(np.int64)
    save_file(tensors, str(folder / "data.safetensors"))
    meta = {"dataset": "fake", "storage": "tensor", "num_classes": 100, "mean": [0.5] * 3, "std": [0.29] * 3,
            "content_hash": "none", "synthetic": True}  # fmt: skip
    write_outputs({folder / "meta.json": json_bytes(meta)})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python tools/loader_memory.py", description=cli.describe(__doc__))
    parser.add_argument("--images", type=int, default=16185)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fake(Path(tmp), args.images, args.size)
        size_mib = (Path(tmp) / "data.safetensors").stat().st_size // 2**20
        queue = mp.get_context("spawn").Queue()
        procs = [
            mp.get_context("spawn").Process(target=_rank, args=(tmp, r, args.ranks, args.batches, queue))
            for r in range(args.ranks)
        ]
        for p in procs:
            p.start()
        rows = sorted((queue.get() for _ in procs), key=lambda r: r["rank"])
        for p in procs:
            p.join()
    print(json.dumps({"file_mib": size_mib, "images": args.images, "size": args.size, "ranks": rows}, indent=1))


if __name__ == "__main__":
    main()
