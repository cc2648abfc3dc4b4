"""Images for the image benchmarks: the held-out photo crops, the demo image, or the user's files."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from invsolve.evaluation.dataset import list_images
from invsolve.io import load_image
from priors.bundled import assets_root

DEMO_IMAGE = "chelsea-128.png"
#: Size of the held-out crops defined in ``scripts/photo_split.py``.
CROP_SIZE = 128


@dataclass
class BenchmarkImages:
    """Ground-truth images ``(N, 3, size, size)`` in [-1, 1], their names and where they came from."""

    images: Tensor
    names: list[str]
    source: str


def _photo_split() -> ModuleType | None:
    """``scripts/photo_split.py`` of a source checkout (the training / held-out split of the
    bundled prior), or ``None`` when it or scikit-image, which it reads from, is missing."""
    path = assets_root().parent / "scripts" / "photo_split.py"
    if not path.is_file() or importlib.util.find_spec("skimage") is None:
        return None
    spec = importlib.util.spec_from_file_location("invsolve_photo_split", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def heldout_images(size: int, count: int) -> BenchmarkImages | None:
    """The first ``count`` held-out evaluation crops of the bundled prior (never seen in
    training), 128 x 128 crops shrunk with antialiased bicubic filtering to ``size`` (or
    cropped at ``size`` when larger); ``None`` outside a source checkout with scikit-image."""
    split = _photo_split()
    if split is None:
        return None
    places = split.HELDOUT_CROPS[:count]
    crops = split.heldout_crops(max(size, CROP_SIZE), places)
    names = [f"{name}@{top},{left}" for name, top, left in places]
    source = f"held-out crops of scripts/photo_split.py ({max(size, CROP_SIZE)} px" + (
        f", shrunk to {size} px)" if size < CROP_SIZE else ")"
    )
    return BenchmarkImages(_resize(crops, size), names, source)


def demo_images(size: int) -> BenchmarkImages:
    """The bundled demo image (``assets/images/chelsea-128.png``) resized to ``size``."""
    path = assets_root() / "images" / DEMO_IMAGE
    return BenchmarkImages(load_image(path, size=size), [DEMO_IMAGE], f"demo image {DEMO_IMAGE} at {size} px")


def file_images(paths: list[str], size: int, count: int | None = None) -> BenchmarkImages:
    """Image files and folders (searched recursively), centre-cropped and resized to ``size``."""
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files.extend(entry.path for entry in list_images(path))
        else:
            files.append(path)
    files = files[:count] if count else files
    if not files:
        raise ValueError("no images given")
    images = torch.cat([load_image(path, size=size) for path in files])
    return BenchmarkImages(images, [path.name for path in files], f"{len(files)} user image(s) at {size} px")


def benchmark_images(spec: list[str] | None, size: int, count: int) -> BenchmarkImages:
    """``spec`` ``None`` or ``["heldout"]``: the held-out crops, else the demo image;
    ``["demo"]``: the demo image; anything else: image files or folders."""
    if spec and spec != ["heldout"]:
        return demo_images(size) if spec == ["demo"] else file_images(spec, size, count)
    found = heldout_images(size, count)
    if found is None:
        fallback = demo_images(size)
        fallback.source += " (the held-out crops need a source checkout and scikit-image)"
        return fallback
    return found
