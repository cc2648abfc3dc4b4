"""The training / held-out split of scikit-image's bundled colour photographs.

The bundled prior ``natural-64`` is trained only on photographs that ship inside
scikit-image (``skimage/data``; no download). The split, fixed before training:

* ``chelsea.png`` (the cat) is held out entirely; the demo image
  (``assets/images/chelsea-128.png``) is its central 300x300 square shrunk to 128x128.
* Of every other photograph, the bottom band of ``max(128, H // 4)`` rows is held
  out; training crops come only from the rows above it. The motorcycle stereo pair
  shares its band, so no held-out content leaks through the other view.

Held-out 128x128 crops come from chelsea and from those bottom bands: evaluation
crops (``HELDOUT_CROPS``) and separate tuning crops (``TUNING_CROPS``) on which
the methods' hyperparameters were chosen.
"""

from __future__ import annotations

import os

import numpy as np
import skimage
import skimage.io
import torch
import torch.nn.functional as F

TRAIN_FILES: tuple[str, ...] = (
    "astronaut.png",
    "coffee.png",
    "rocket.jpg",
    "retina.jpg",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
)
HELDOUT_FILE = "chelsea.png"

# (file, top, left) of each held-out 128x128 crop; tops lie inside the held-out band.
HELDOUT_CROPS: tuple[tuple[str, int, int], ...] = (
    ("chelsea.png", 60, 110),
    ("chelsea.png", 150, 200),
    ("astronaut.png", 384, 200),
    ("coffee.png", 272, 250),
    ("rocket.jpg", 299, 300),
    ("motorcycle_left.png", 372, 300),
    ("ihc.png", 384, 200),
    ("hubble_deep_field.jpg", 700, 400),
)
# Other held-out crops, used only to tune the methods' hyperparameters.
TUNING_CROPS: tuple[tuple[str, int, int], ...] = (
    ("chelsea.png", 0, 320),
    ("astronaut.png", 384, 30),
    ("coffee.png", 272, 440),
    ("retina.jpg", 1100, 600),
    ("ihc.png", 384, 380),
    ("motorcycle_right.png", 372, 560),
)


def data_dir() -> str:
    """Folder of scikit-image's bundled data files."""
    return os.path.join(os.path.dirname(skimage.__file__), "data")


def read_photo(name: str) -> torch.Tensor:
    """One photograph as a float32 tensor (3, H, W) in [-1, 1]."""
    array = skimage.io.imread(os.path.join(data_dir(), name))
    if array.ndim != 3 or array.shape[2] < 3:
        raise ValueError(f"{name} is not an RGB photograph")
    array = np.ascontiguousarray(array[..., :3]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def heldout_rows(height: int) -> int:
    """Number of bottom rows of a training photograph that are held out."""
    return max(128, height // 4)


def training_regions() -> list[torch.Tensor]:
    """The training part (rows above the held-out band) of each training photograph."""
    regions = []
    for name in TRAIN_FILES:
        photo = read_photo(name)
        regions.append(photo[:, : photo.shape[1] - heldout_rows(photo.shape[1])])
    return regions


def heldout_crops(size: int = 128, places: tuple[tuple[str, int, int], ...] = HELDOUT_CROPS) -> torch.Tensor:
    """Held-out crops at ``places`` (default: the evaluation crops), (len(places), 3, size, size) in [-1, 1]."""
    crops = []
    for name, top, left in places:
        photo = read_photo(name)
        if name != HELDOUT_FILE and top < photo.shape[1] - heldout_rows(photo.shape[1]):
            raise ValueError(f"crop of {name} at row {top} is not in the held-out band")
        crop = photo[:, top : top + size, left : left + size]
        if crop.shape[1:] != (size, size):
            raise ValueError(f"crop of {name} at ({top}, {left}) leaves the image")
        crops.append(crop)
    return torch.stack(crops)


def demo_image(size: int = 128) -> torch.Tensor:
    """The bundled demo image: chelsea's central square shrunk (antialiased) to (3, size, size)."""
    photo = read_photo(HELDOUT_FILE)
    side = min(photo.shape[1:])
    left = (photo.shape[2] - side) // 2
    square = photo[None, :, :side, left : left + side]
    return F.interpolate(square, size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0].clamp(-1, 1)
