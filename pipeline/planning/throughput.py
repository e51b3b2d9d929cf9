"""Measurements of this machine the cost plan uses: how many images one CPU core decodes and transforms with a
profile's timm training transform, and the peak host memory training runs recorded in their provenance."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from pipeline.config import Augment

__all__ = ["peak_memory", "per_core_rate"]


def per_core_rate(augment: Augment, img_size: int, *, images: int, seed: int = 0) -> float:
    """Training images/s of one CPU core on the timm loader path: ``images`` ImageNet-like JPEGs
    (:func:`pipeline.data.standins.write_jpegs`) each read, decoded (PIL) and transformed by the training transform of
    ``augment`` at ``img_size`` px under its own seed, as :class:`pipeline.data.samples.ImageDataset` does in a loader
    worker, with one torch thread. One more image, first, is transformed untimed (imports, first-call costs)."""
    import torch
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # normalisation constants: no cost difference

    from pipeline.data import samples, standins

    with tempfile.TemporaryDirectory(prefix="plan-jpegs-") as tmp:
        folder = Path(tmp)
        files = standins.write_jpegs(folder, images + 1, seed)
        transform = samples.transform(augment, True, img_size, list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD))
        names = [str(Path(f).relative_to(folder)) for f in files]
        labels = torch.zeros(len(names), dtype=torch.int64)
        dataset = samples.ImageDataset(labels, transform, files=names, root=folder)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            dataset[(0, seed)]
            started = time.perf_counter()
            for i in range(1, len(names)):
                dataset[(i, seed + i)]
            seconds = time.perf_counter() - started
        finally:
            torch.set_num_threads(threads)
    return images / seconds


def peak_memory(folders: list[Path]) -> dict | None:
    """The largest ``peak_rss_mib`` of the training provenance records under ``folders`` (rank 0's process plus
    its largest finished loader worker), with what it was measured on; None when no record holds one."""
    best = None
    for folder in folders:
        for path in sorted(Path(folder).rglob("provenance.json")):
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
