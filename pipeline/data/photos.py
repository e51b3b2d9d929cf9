"""Real photographs shipped inside installed packages, and seeded crops of them: the pixels of the stand-in
datasets (pipeline/data/standins.py), so a rehearsal decodes, resizes and augments photographs, not noise.

Every file is read from the package's own folder with PIL; nothing is fetched (scikit-image's ``skimage.data``
functions may download files that are not bundled: none of these is used through them).

| file | package | what |
|---|---|---|
| ``skimage/data/astronaut.png`` | scikit-image | portrait of astronaut Eileen Collins (NASA), 512x512 |
| ``skimage/data/coffee.png`` | scikit-image | a cup of coffee, 600x400 |
| ``skimage/data/chelsea.png`` | scikit-image | Chelsea the cat, 451x300 |
| ``skimage/data/rocket.jpg`` | scikit-image | a SpaceX Falcon 9 launch, 640x427 |
| ``skimage/data/motorcycle_left.png`` | scikit-image | a motorcycle (left view of a stereo pair), 741x500 |
| ``skimage/data/hubble_deep_field.jpg`` | scikit-image | the Hubble eXtreme Deep Field (NASA), 1000x872 |
| ``skimage/data/retina.jpg`` | scikit-image | a human retina (fundus photograph), 1411x1411 |
| ``skimage/data/ihc.png`` | scikit-image | a stained tissue section (immunohistochemistry), 512x512 |
| ``skimage/data/camera.png`` | scikit-image | the "cameraman" (grayscale), 512x512 |
| ``skimage/data/coins.png`` | scikit-image | Greek coins (grayscale), 384x303 |
| ``skimage/data/{brick,grass,gravel}.png`` | scikit-image | textures (grayscale), 512x512 |
| ``skimage/data/moon.png`` | scikit-image | the surface of the moon (grayscale), 512x512 |
| ``sklearn/datasets/images/{china,flower}.jpg`` | scikit-learn | a Chinese temple; a flower, 640x427 |

Grayscale photographs are repeated to three channels. Left out: scikit-image's drawn or synthetic images
(``color.png`` is a colour wheel; chessboards, logo, phantom, text, page, horse silhouette).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGENET_SIZES", "SKIMAGE_FILES", "crop", "photos", "quarter_turned"]

SKIMAGE_FILES = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "coins.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "moon.png",
)
# (width, height) of common ImageNet images: most are 500 px on the longer side, landscape or portrait
IMAGENET_SIZES = ((500, 375), (500, 333), (375, 500), (500, 400), (400, 500), (500, 500), (333, 500), (500, 281))


def photos() -> dict[str, np.ndarray]:
    """The photographs (see the module docstring), keyed by file name, as (H, W, 3) uint8 RGB arrays, in a
    fixed order."""
    import skimage
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = Path(skimage.__file__).parent / "data"
    out = {}
    for name in SKIMAGE_FILES:
        with Image.open(folder / name) as image:
            out[name] = np.asarray(image.convert("RGB"), dtype=np.uint8)
    sample = load_sample_images()
    for filename, image in zip(sample.filenames, sample.images, strict=True):
        out[Path(filename).name] = np.asarray(image, dtype=np.uint8)
    return out


def quarter_turned(pictures: list[np.ndarray], k: int) -> np.ndarray:
    """Picture ``k mod len(pictures)`` turned by ``k div len(pictures)`` quarter turns: one distinct source per
    class for 4x as many classes as pictures (flips come on top, per image)."""
    return np.rot90(pictures[k % len(pictures)], k // len(pictures))


def crop(photo: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A ``size`` = (width, height) PIL image: a crop of ``photo`` with that aspect ratio, 30-100% of the largest
    one on a side, at a random position, mirrored half the time, resized with bicubic (PIL antialiases when it
    shrinks)."""
    from PIL import Image

    height, width = photo.shape[:2]
    aspect = size[0] / size[1]
    largest_w = min(width, height * aspect)
    scale = rng.uniform(0.3, 1.0)
    w, h = max(1, round(largest_w * scale)), max(1, round(largest_w * scale / aspect))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    image = Image.fromarray(np.ascontiguousarray(photo[y : y + h, x : x + w]))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.resize(size, Image.Resampling.BICUBIC)
