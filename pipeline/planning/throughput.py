"""Measurements of this machine the cost plan and the bench use: how many images one CPU core decodes and
transforms with a profile's timm training transform, on this project's loader path and on timm's stock path, and
the peak host memory training runs recorded in their provenance."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from pipeline.config import Augment

__all__ = ["loader_rates", "peak_memory"]


def loader_rates(augment: Augment, img_size: int, *, images: int, rounds: int = 3, seed: int = 0,
                 prepared: Path | None = None) -> dict:  # fmt: skip
    """Training images/s of one CPU core on two input pipelines, side by side on the same images, each read, decoded
    and transformed under its own seed with one torch thread:

    - ``per_core_img_per_s``: this project's loader path (:func:`pipeline.data.samples.transform`: uint8 out;
      normalisation and random erasing follow on the device, :mod:`pipeline.data.finish`);
    - ``timm_per_core_img_per_s``: timm's stock path as XCiT's ``main.py`` feeds its model (``create_transform``
      with ToTensor, Normalize and RandomErasing on the CPU).

    The images: the first ``images`` of the training split of the ``prepared`` dataset (its files, or its tensors),
    else ``images`` ImageNet-like JPEG files (:func:`pipeline.data.standins.write_jpegs`). ``rounds`` interleaved
    rounds (each times both paths, in turn first), the best of each taken: a busy machine slows a round, never
    speeds one up. The host's 1-minute load average before and after is recorded beside. The one measurement of
    the loader's throughput per core: the plan and the bench stage both take it from here."""
    import torch

    from pipeline.data import samples, standins

    load = [round(os.getloadavg()[0], 2)]
    with tempfile.TemporaryDirectory(prefix="loader-jpegs-") as tmp:
        if prepared is None:
            folder = Path(tmp)
            names = [str(Path(f).relative_to(folder)) for f in standins.write_jpegs(folder, images, seed)]
            source, mean, std = {"files": names, "root": folder}, _IMAGENET_MEAN, _IMAGENET_STD
        else:
            source, mean, std = _prepared(Path(prepared), images)
        n = len(next(iter(source.values())))
        labels = torch.zeros(n, dtype=torch.int64)
        paths = {
            "per_core_img_per_s": samples.transform(augment, True, img_size, mean, std),
            "timm_per_core_img_per_s": _timm_stock(augment, img_size, mean, std),
        }
        datasets = {k: samples.ImageDataset(labels, t, **source) for k, t in paths.items()}
        best = _best_of(datasets, n, rounds, seed)
    load.append(round(os.getloadavg()[0], 2))
    out = {key: n / seconds for key, seconds in best.items()}
    out["ratio"] = out["per_core_img_per_s"] / out["timm_per_core_img_per_s"]
    return {**out, "images": n, "rounds": rounds, "load_1min": load, "cpus": os.cpu_count()}


_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # stand-ins: the cost is the same


def _prepared(folder: Path, images: int) -> tuple[dict, list[float], list[float]]:
    """The first ``images`` training samples of a prepared dataset as ImageDataset arguments, and its mean and std."""
    from pipeline.data.prepared import read_index, read_meta, read_tensors

    meta = read_meta(folder)
    if meta["storage"] == "tensor":
        data = read_tensors(folder, meta)["train"][0][:images]
        return {"images": data}, meta["mean"], meta["std"]
    files = read_index(folder, meta)["train"][0][:images]
    return (
        {"files": files, "root": Path(meta["root"]).expanduser(), "index": folder / "index.csv"},
        meta["mean"],
        meta["std"],
    )


def _best_of(datasets: dict, n: int, rounds: int, seed: int) -> dict[str, float]:
    """The shortest of ``rounds`` interleaved passes over ``n`` samples of each dataset, one torch thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = dict.fromkeys(datasets, float("inf"))
    try:
        for dataset in datasets.values():
            dataset[(0, seed)]  # untimed: imports, first-call costs
        for r in range(rounds):
            for key in list(datasets)[r % 2 :] + list(datasets)[: r % 2]:
                started = time.perf_counter()
                for i in range(n):
                    datasets[key][(i, seed + i)]
                best[key] = min(best[key], time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return best


def _timm_stock(augment: Augment, img_size: int, mean, std):
    from timm.data import create_transform

    return create_transform(
        img_size, is_training=True, scale=(augment.scale_min, 1.0), hflip=augment.hflip,
        auto_augment=augment.auto_augment, color_jitter=augment.color_jitter, re_prob=augment.re_prob,
        re_mode=augment.re_mode, interpolation=augment.interpolation, crop_pct=augment.crop_pct, mean=tuple(mean),
        std=tuple(std),
    )  # fmt: skip


def peak_memory(folders: list[Path]) -> dict | None:
    """The largest ``peak_rss_mib`` of the training provenance records under ``folders`` (rank 0's process plus
    its largest finished loader worker), with what it was measured on; None when no record holds one. A folder
    that is missing or holds no record is a ValueError naming it (``--measured`` of the plan)."""
    best = None
    for folder in folders:
        records = sorted(Path(folder).rglob("provenance.json")) if Path(folder).is_dir() else []
        if not records:
            said = "holds no provenance.json" if Path(folder).is_dir() else "no such folder"
            raise ValueError(f"--measured {folder}: {said}; give folders of training results, e.g. --measured "
                             "results/pretrain")  # fmt: skip
        for path in records:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                raise ValueError(f"{path}: unreadable provenance record; re-run its stage") from None
            peak = record.get("peak_rss_mib")
            if isinstance(peak, (int, float)) and (best is None or peak > best["peak_rss_mib"]):
                params = record.get("params") or {}
                gpu = (record.get("gpu") or {}).get("models") or []
                best = {
                    "peak_rss_mib": peak,
                    "instance": record.get("stage_instance") or str(path.parent),
                    "profile": params.get("profile"),
                    "hardware": gpu[0] if gpu else (record.get("hardware") or {}).get("cpu"),
                    "workers": (params.get("runtime") or {}).get("workers"),
                    "world_size": record.get("world_size"),
                }
    return best
