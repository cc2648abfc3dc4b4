"""Memory checks run before any large allocation: refuse a problem that cannot fit, with the estimate.

The estimate adds two parts per sample: :data:`WORKING_COPIES` float32 tensors
the size of the unknown (the state, the denoised estimate, its gradient, the
noise, residuals, the network's input and output), and, for a fully
convolutional network prior, the activations its network keeps for one gradient,
measured per pixel on two small probes (:func:`network_bytes_per_pixel`).  For
the bundled ``natural-64`` this predicts 7.4 KB per pixel where DPS peaks at
8.6 KB (DDNM, which needs no network gradient, at 2.9 KB).  A problem whose
estimate exceeds the free memory is refused at once, instead of after minutes of
swapping or an out-of-memory kill.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from priors.base import is_latent_prior

#: Image-sized float tensors a sampler keeps per sample (a lower bound; see the module docstring).
WORKING_COPIES = 16


def available_memory(device: torch.device | str | None = None) -> int | None:
    """Free bytes on ``device``: ``torch.cuda.mem_get_info`` on CUDA, else the host's
    available memory (psutil, else ``/proc/meminfo``); ``None`` where it cannot be read."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


#: Sides of the two square probes whose difference gives the network's bytes per pixel.
PROBE_SIDES = (32, 64)
_PROBED: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def _innermost(prior: Any) -> Any:
    """The prior inside any wrappers (``ClippedPrior``, ``Tiled``, ... keep theirs in ``.prior``)."""
    seen = 0
    while hasattr(prior, "prior") and seen < 16:
        prior, seen = prior.prior, seen + 1
    return prior


def _holds_network(prior: Any) -> bool:
    try:
        return any(isinstance(value, torch.nn.Module) for value in vars(prior).values())
    except TypeError:
        return False


def network_bytes_per_pixel(prior: Any) -> float:
    """Bytes per image pixel that a fully convolutional network prior keeps for one gradient.

    Measured once per prior with ``torch.autograd.graph.saved_tensors_hooks`` on zero
    images of :data:`PROBE_SIDES` (the difference cancels the weights); 0 for priors
    without a network, fixed-size priors (tiled, so their network sees fixed tiles),
    latent priors, and networks that cannot take the probe sizes.
    """
    inner = _innermost(prior)
    shape = getattr(inner, "data_shape", None)
    if shape is not None or is_latent_prior(inner) or not hasattr(inner, "denoise") or not _holds_network(inner):
        return 0.0
    try:
        return _PROBED[inner]
    except (KeyError, TypeError):
        pass
    channels = getattr(inner, "channels", None) or 3
    try:
        saved = [_saved_bytes(inner, (1, channels, side, side)) for side in PROBE_SIDES]
        per_pixel = max(0.0, (saved[1] - saved[0]) / (PROBE_SIDES[1] ** 2 - PROBE_SIDES[0] ** 2))
    except (RuntimeError, ValueError):  # a network that cannot take the probe sizes: no estimate of its part
        per_pixel = 0.0
    try:
        _PROBED[inner] = per_pixel
    except TypeError:
        pass
    return per_pixel


def _saved_bytes(prior: Any, shape: tuple[int, ...]) -> int:
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    device, dtype = getattr(prior, "device", None), getattr(prior, "dtype", None)
    x = torch.zeros(shape, device=device, dtype=torch.promote_types(dtype or torch.float32, torch.float32))
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        prior.denoise(x.requires_grad_(True), torch.ones(1, device=x.device, dtype=x.dtype))
    return total


#: Peak bytes per pixel of decoding an image file into a float tensor (:func:`invsolve.io.load_image`):
#: PIL's decoded RGB (4 bytes per pixel, padded), its mode conversion (4), the NumPy array and its
#: copy (3 + 3), and two float32 RGB tensors alive at once in the [-1, 1] mapping (12 + 12): 38,
#: rounded up to 48, which also covers 16-bit grayscale files (float64 and float32 copies).
DECODE_BYTES_PER_PIXEL = 48


def check_decode(height: int, width: int, what: str) -> None:
    """Raise a ``ValueError`` before an image file of ``height x width`` pixels is decoded when
    decoding it (:data:`DECODE_BYTES_PER_PIXEL`) would not fit the host's free memory.  ``what``
    names the file.  ``INVSOLVE_SKIP_MEMORY_CHECK=1`` skips the check."""
    if os.environ.get("INVSOLVE_SKIP_MEMORY_CHECK", "") not in ("", "0"):
        return
    free = available_memory("cpu")
    needed = int(height) * int(width) * DECODE_BYTES_PER_PIXEL
    if free is None or needed <= free:
        return
    raise ValueError(
        f"{what} is {width}x{height} pixels: decoding it needs an estimated {needed / 2**30:.1f} GiB, more than "
        f"the {free / 2**30:.1f} GiB free; use a smaller image (INVSOLVE_SKIP_MEMORY_CHECK=1 skips this check)"
    )


def working_set_bytes(shape: Sequence[int], samples: int = 1, network_per_pixel: float = 0.0) -> int:
    """Estimated memory of a solve for an unknown of batch ``shape`` (``(B, C, H, W)`` for images)
    and ``samples`` samples: image-sized float32 buffers plus the network's activations."""
    rows = int(shape[0]) * int(samples)
    item = math.prod(int(n) for n in shape[1:])
    pixels = int(shape[-2]) * int(shape[-1]) if len(shape) == 4 else 0
    return rows * (item * 4 * WORKING_COPIES + int(pixels * network_per_pixel))


def check_working_set(
    shape: Sequence[int],
    samples: int = 1,
    device: torch.device | str | None = None,
    hint: str = "",
    prior: Any = None,
) -> None:
    """Raise a ``ValueError`` with the estimate when :func:`working_set_bytes` (with ``prior``'s
    :func:`network_bytes_per_pixel`) exceeds the free memory of ``device``.  ``hint`` says what
    to change (e.g. ``"use a smaller --size"``).  ``INVSOLVE_SKIP_MEMORY_CHECK=1`` skips the check."""
    if os.environ.get("INVSOLVE_SKIP_MEMORY_CHECK", "") not in ("", "0"):
        return
    free = available_memory(device)
    if free is None:
        return
    network = network_bytes_per_pixel(prior) if prior is not None and len(shape) == 4 else 0.0
    needed = working_set_bytes(shape, samples, network)
    if needed <= free:
        return
    item = "x".join(str(int(n)) for n in shape)
    parts = f"{WORKING_COPIES} float32 image buffers" + (f" and {network / 1024:.1f} KiB of network activations per pixel" if network else "")
    raise ValueError(
        f"an unknown of shape {item} with {samples} sample(s) needs an estimated {needed / 2**30:.1f} GiB "
        f"({parts}), more than the {free / 2**30:.1f} GiB free on {torch.device(device or 'cpu')}; "
        + (hint or "use a smaller image or fewer samples")
        + " (INVSOLVE_SKIP_MEMORY_CHECK=1 skips this check)"
    )
