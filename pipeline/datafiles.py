"""What the readers of users' dataset files share (pipeline/datasets.py holds the readers): the error they raise,
the checks of a root and of the files it must hold, torchvision's errors turned into ours, and the image reader.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["DatasetError", "check_files", "check_root", "read_image", "reading"]


class DatasetError(ValueError):
    """A dataset that is missing, corrupt or inconsistent; the message names the dataset and the file."""


def check_root(name: str, root: str, layout: str) -> Path:
    """The dataset's root folder, which must exist."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"dataset {name!r}: root {path} does not exist; expected there: {layout}")
    return path


def check_files(name: str, folder: Path, files: list[tuple[str, str | None]], layout: str) -> None:
    """Every ``(filename, md5)`` must exist in ``folder`` and match its md5 (where one is given)."""
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
