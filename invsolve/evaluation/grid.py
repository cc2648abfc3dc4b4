"""``grid.png``: one row per image; columns ground truth, measurement, then each method."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from invsolve import io

#: White gap between tiles, in pixels.
GAP = 2


def _tile(path: Path, height: int, width: int, channels: int) -> Tensor:
    """The PNG at ``path`` as a ``(channels, height, width)`` tile (nearest-neighbour resized), white if missing."""
    if not path.is_file():
        return torch.ones(channels, height, width)
    image = io.load_image(path, mode="RGB" if channels == 3 else "L")
    if image.shape[-2:] != (height, width):
        image = F.interpolate(image, size=(height, width), mode="nearest")
    return image[0]


def write_grid(rows: list[list[Path]], path: Path, height: int, width: int, channels: int) -> Path:
    """Tile ``rows`` of image files into one PNG (missing files leave white tiles)."""
    if not rows:
        raise ValueError("the grid needs at least one row")
    columns = max(len(row) for row in rows)
    canvas = torch.ones(channels, len(rows) * (height + GAP) - GAP, columns * (width + GAP) - GAP)
    for i, row in enumerate(rows):
        for j, tile_path in enumerate(row):
            top, left = i * (height + GAP), j * (width + GAP)
            canvas[:, top : top + height, left : left + width] = _tile(tile_path, height, width, channels)
    return io.save_image(canvas, path)
