"""Inpainting masks: boxes, uniformly random pixels, and mask images ({0, 1}: 1 = observed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from operators.arguments import as_float, as_int

POSITIONS = ("center", "random")
MASK_KINDS = ("box", "random")


#: The most pixels a drawn mask may have (8192 x 8192; 268 MB while it is drawn).
MAX_MASK_PIXELS = 8192 * 8192


def _spatial(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(H, W)`` of a mask shape, refused before any allocation when it is too large."""
    if len(shape) < 2:
        raise ValueError(f"a mask shape needs at least (H, W), got {tuple(shape)}")
    height, width = as_int("mask height", shape[-2], minimum=1), as_int("mask width", shape[-1], minimum=1)
    if height * width > MAX_MASK_PIXELS:
        raise ValueError(
            f"a {height} x {width} mask would need {height * width * 4 / 1e9:.3g} GB while it is drawn; "
            f"masks are limited to {MAX_MASK_PIXELS} pixels (8192 x 8192)"
        )
    return height, width


def _need_generator(generator: torch.Generator | None, what: str) -> torch.Generator:
    if generator is None:
        raise ValueError(
            f"{what} is random and needs a torch.Generator (e.g. torch.Generator().manual_seed(0)) "
            "so that the mask is reproducible"
        )
    return generator


def box_mask(
    shape: tuple[int, ...],
    size: int | tuple[int, int] = 128,
    position: str = "center",
    margin: int = 16,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A mask of ``shape`` (``(H, W)``, ``(C, H, W)``, ...) that is 0 in a box and 1 elsewhere.

    ``size`` is the box side (or ``(height, width)``).  ``position="center"``
    centres it (top-left ``((H - h) // 2, (W - w) // 2)``); ``"random"`` draws the
    top-left corner uniformly from ``{margin, ..., H - h - margin - 1}`` (and likewise
    for the columns) using ``generator``: ``numpy.random.randint(margin, H - h - margin)``
    as DPS (``util/img_utils.py``) and DAPS (``forward_operator/__init__.py``)
    ``random_sq_bbox`` draw it, so the hole keeps ``margin`` pixels from the top and
    left edges and ``margin + 1`` from the bottom and right.  The same box is missing
    in every channel.
    """
    height, width = _spatial(shape)
    box_h, box_w = (size, size) if not isinstance(size, (tuple, list)) else size
    box_h, box_w = as_int("size", box_h, minimum=1), as_int("size", box_w, minimum=1)
    margin = as_int("margin", margin, minimum=0)
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if position == "center":
        if box_h > height or box_w > width:
            raise ValueError(f"a {box_h}x{box_w} box does not fit in a {height}x{width} image")
        top, left = (height - box_h) // 2, (width - box_w) // 2
    else:
        if box_h + 2 * margin >= height or box_w + 2 * margin >= width:
            raise ValueError(
                f"a {box_h}x{box_w} box with margin {margin} does not fit in a {height}x{width} image "
                "(it needs size + 2 * margin < the image side); use a smaller size or margin"
            )
        generator = _need_generator(generator, "a box at a random position")
        top = margin + int(torch.randint(height - box_h - 2 * margin, (), generator=generator))
        left = margin + int(torch.randint(width - box_w - 2 * margin, (), generator=generator))
    mask = torch.ones(height, width)
    mask[top : top + box_h, left : left + box_w] = 0
    return mask.expand(*shape).clone()


def random_mask(
    shape: tuple[int, ...], missing: float = 0.7, generator: torch.Generator | None = None
) -> Tensor:
    """A mask of ``shape`` with exactly ``round(missing * H * W)`` pixels missing (0), uniformly at random.

    A pixel is missing in all channels (the benchmark convention of DPS / DAPS:
    "random 70 %").  ``generator`` is required.
    """
    height, width = _spatial(shape)
    missing = as_float("missing", missing, minimum=0.0, maximum=1.0)
    generator = _need_generator(generator, "a random mask")
    count = round(missing * height * width)
    order = torch.randperm(height * width, generator=generator)
    mask = torch.ones(height * width)
    mask[order[:count]] = 0
    return mask.reshape(height, width).expand(*shape).clone()


def load_mask(path: str | Path, threshold: float = 0.5) -> Tensor:
    """Read a mask image: white (>= ``threshold`` of full scale, grey level) = observed, black = missing.

    Any format PIL reads; colour images are converted to grey levels first.
    Returns an ``(H, W)`` float tensor of 0s and 1s.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {str(path)!r} does not exist (white = observed, black = missing)")
    threshold = as_float("threshold", threshold, minimum=0.0, maximum=1.0)
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((grey >= threshold).astype(np.float32))
