"""Image files and value ranges: the only place where pixels leave or enter [-1, 1].

Files hold 8-bit (or 16-bit grayscale) pixels; invsolve works on float tensors
``(B, C, H, W)`` in [-1, 1].  An 8-bit value ``u`` maps to ``u / 127.5 - 1`` and
back to ``round((x + 1) * 127.5)``, so a uint8 image survives a round trip exactly.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from invsolve.resources import check_decode

IMAGE_MODES = ("RGB", "L")
#: Width in pixels of the white gap between images in :func:`side_by_side`.
STRIP_GAP = 4


def to_model_range(x: Tensor | np.ndarray) -> Tensor:
    """Pixels to the model's [-1, 1] scale.

    An integer tensor (uint8 or any integer type) is read as [0, 255] and mapped by
    ``x / 127.5 - 1``; a float tensor is read as [0, 1] and mapped by ``2 x - 1``.
    Values outside those ranges raise a ``ValueError`` instead of being guessed at.
    """
    x = torch.as_tensor(x)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"expected an integer [0, 255] or float [0, 1] image, got dtype {x.dtype}")
    if not x.is_floating_point():
        if x.numel() and (x.min() < 0 or x.max() > 255):
            raise ValueError("integer images must hold values in [0, 255]")
        return x.to(torch.float32) / 127.5 - 1
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"float images are read as [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]; "
            "divide [0, 255] data by 255 first or pass a uint8 tensor"
        )
    return 2 * x - 1


def from_model_range(x: Tensor) -> Tensor:
    """[-1, 1] to [0, 1]: ``(x + 1) / 2``, clamped to [0, 1]."""
    return ((x + 1) / 2).clamp(0, 1)


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] to uint8 [0, 255]: clamp, then ``round((x + 1) * 127.5)``."""
    return ((x.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


#: PIL's refusals of a header that claims too many pixels (over 2x and over 1x its limit).
DECOMPRESSION_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


@contextlib.contextmanager
def _open_refusing_bombs(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` (header only) that raises on either of :data:`DECOMPRESSION_BOMBS`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            yield image


def load_image(
    path: str | Path,
    size: int | tuple[int, int] | None = None,
    mode: str = "RGB",
) -> Tensor:
    """Read an image file as a ``(1, C, H, W)`` float32 tensor in [-1, 1].

    ``mode`` is ``"RGB"`` (C = 3) or ``"L"`` (C = 1, ITU-R 601 luma); grayscale,
    palette and 16-bit images are converted, and transparent pixels are composited
    over white.  With ``size`` (an int for a square, or ``(H, W)``) the image is
    centre-cropped to the target aspect ratio and resized with bicubic filtering
    (antialiased when shrinking).  A file whose header claims more pixels than PIL's bomb
    limit, or more than the free memory can decode (:func:`invsolve.resources.check_decode`),
    is refused with a ``ValueError`` before its pixels are decoded.
    """
    if mode not in IMAGE_MODES:
        raise ValueError(f"mode must be one of {IMAGE_MODES}, got {mode!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {str(path)!r}")
    try:
        with _open_refusing_bombs(path) as image:
            check_decode(image.height, image.width, repr(str(path)))
            image.load()
    except UnidentifiedImageError:
        raise ValueError(f"{str(path)!r} is not an image file PIL can read") from None
    except DECOMPRESSION_BOMBS as err:
        raise ValueError(f"{str(path)!r} is too large to decode safely: {err}") from None
    except (OSError, SyntaxError, EOFError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{str(path)!r} cannot be decoded (truncated or corrupt?): {reason}") from None
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = _wide_grayscale(image, size)
        return to_model_range(pixels if mode == "L" else pixels.expand(3, -1, -1))[None]
    image = _flatten_alpha(image)
    image = image.convert(mode)
    if size is not None:
        image = _crop_resize(image, _size_hw(size))
    array = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, -1)
    return to_model_range(torch.from_numpy(array.copy()).permute(2, 0, 1))[None]


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {str(path)!r}")
    try:
        with _open_refusing_bombs(path) as image:
            return image.height, image.width
    except UnidentifiedImageError:
        raise ValueError(f"{str(path)!r} is not an image file PIL can read") from None
    except DECOMPRESSION_BOMBS as err:
        raise ValueError(f"{str(path)!r} is too large to decode safely: {err}") from None
    except (OSError, SyntaxError, EOFError) as err:
        raise ValueError(f"{str(path)!r} cannot be read: {' '.join(str(err).split())}") from None


def save_image(x: Tensor, path: str | Path) -> Path:
    """Write ``x`` of shape ``(C, H, W)`` or ``(1, C, H, W)`` in [-1, 1] as an 8-bit PNG.

    Values are clamped to [-1, 1]; C is 1 (grayscale) or 3 (RGB).  Missing parent
    folders of ``path`` are created.  Returns the path written.
    """
    pixels = _as_chw(x)
    path = prepare_output(path)
    temporary = temporary_path(path)
    try:
        _to_pil(pixels).save(temporary, format="PNG")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def temporary_path(path: str | Path) -> Path:
    """Where ``path`` is written before it is renamed into place: ``.NAME.tmp`` beside it.

    Writing there first and renaming (atomic on one file system) means an interrupted
    write never leaves a half-written file under the final name.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def side_by_side(images: Sequence[Tensor], path: str | Path) -> Path:
    """Write ``images`` (each ``(C, H, W)`` or ``(1, C, H, W)`` in [-1, 1]) as one horizontal strip PNG.

    Images are top-aligned on a white background with a :data:`STRIP_GAP`-pixel gap;
    grayscale images are shown in RGB when the strip mixes channel counts.
    """
    if not images:
        raise ValueError("side_by_side needs at least one image")
    tiles = [_as_chw(image).detach().cpu().float() for image in images]
    channels = max(tile.shape[0] for tile in tiles)
    tiles = [tile.expand(channels, -1, -1) for tile in tiles]
    height = max(tile.shape[1] for tile in tiles)
    width = sum(tile.shape[2] for tile in tiles) + STRIP_GAP * (len(tiles) - 1)
    strip = torch.ones(channels, height, width)
    left = 0
    for tile in tiles:
        strip[:, : tile.shape[1], left : left + tile.shape[2]] = tile
        left += tile.shape[2] + STRIP_GAP
    return save_image(strip, path)


def check_output_path(path: str | Path) -> Path:
    """Check that ``path`` names a ``.png`` file that can be written; creates nothing.

    Refused: another suffix, an existing folder, a read-only existing file, and a
    path whose folder cannot be made or written (see :func:`check_writable_folder`).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output {str(path)!r} must be a .png file (images are written as lossless PNG)")
    if path.is_dir():
        raise ValueError(f"output {str(path)!r} is a folder; name a .png file")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"output {str(path)!r} exists and is read-only")
    check_writable_folder(path.parent, f"output {str(path)!r}")
    return path


def check_writable_folder(folder: str | Path, what: str | None = None) -> Path:
    """Check that ``folder`` is, or can be made, a writable folder; creates nothing.

    The nearest existing ancestor decides: it must be a folder (not a file) that this
    process may write, so problems show up before any work rather than after it.
    """
    folder = Path(folder)
    what = what or f"folder {str(folder)!r}"
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write {what}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what}: the folder {str(existing)!r} is not writable")
    return folder


def prepare_output(path: str | Path) -> Path:
    """:func:`check_output_path`, then create the missing parent folders of ``path`` (nothing else)."""
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def sibling_path(path: str | Path, tag: str) -> Path:
    """``OUT.png`` with ``tag`` → ``OUT.tag.png``, in the same folder."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{tag}.png")


def _as_chw(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor image, got {type(x).__name__}")
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(
            f"an image to save must have shape (C, H, W) or (1, C, H, W) with C = 1 or 3, got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"images to save are float tensors in [-1, 1], got dtype {x.dtype}")
    return x


def _to_pil(x: Tensor) -> Image.Image:
    array = to_uint8(x.cpu()).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparent images over white; other images are returned unchanged."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_grayscale(image: Image.Image, size: int | tuple[int, int] | None) -> Tensor:
    """A 16-bit grayscale image as a ``(1, H, W)`` float tensor in [0, 1]."""
    array = np.asarray(image, dtype=np.float64) / 65535.0
    float_image = Image.fromarray(array.astype(np.float32))
    if size is not None:
        float_image = _crop_resize(float_image, _size_hw(size))
    pixels = torch.from_numpy(np.asarray(float_image, dtype=np.float32).copy())
    return pixels.clamp(0, 1)[None]


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or any(not isinstance(s, int) or s < 1 for s in hw):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return hw


def _crop_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Centre-crop to the aspect ratio of ``size`` = (H, W), then resize to it."""
    height, width = size
    scale = min(image.width / width, image.height / height)
    crop_w, crop_h = round(width * scale), round(height * scale)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return image
