"""Blur kernels: Gaussian, uniform (box) and random-trajectory camera-shake kernels.

All kernels are 2-D float64 tensors on the CPU that sum to 1; operators cast
them to the input's dtype and device when they are applied.
"""

from __future__ import annotations

import torch
from torch import Tensor

from operators.arguments import as_float, as_int
from operators.motion_kernel import draw_motion_path, render_motion_path

#: The largest kernel side accepted (a 1025 x 1025 float64 kernel is 8.4 MB; the
#: benchmarks use 61).  Checked before anything is allocated.
MAX_KERNEL_SIZE = 1025


def kernel_side(name: str, value: object) -> int:
    """A kernel side as an int in ``[1, MAX_KERNEL_SIZE]``, refused before any allocation."""
    side = as_int(name, value, minimum=1)
    if side > MAX_KERNEL_SIZE:
        gigabytes = side * side * 8 / 1e9
        raise ValueError(
            f"{name}={side} would need {gigabytes:.3g} GB for the kernel alone; "
            f"kernel sides are limited to {MAX_KERNEL_SIZE} pixels"
        )
    return side


def check_kernel(kernel: Tensor) -> Tensor:
    """A user kernel as a finite 2-D float64 CPU tensor (a clear error otherwise)."""
    if not isinstance(kernel, Tensor):
        raise TypeError(f"a blur kernel must be a 2-D torch.Tensor, got {type(kernel).__name__}")
    if kernel.ndim != 2 or kernel.numel() == 0:
        raise ValueError(f"a blur kernel must be a non-empty 2-D tensor (kh, kw), got shape {tuple(kernel.shape)}")
    if kernel.is_complex() or not (kernel.is_floating_point() or kernel.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"a blur kernel must hold real numbers, got dtype {kernel.dtype}")
    kernel = kernel.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(kernel).all():
        raise ValueError("the blur kernel contains NaN or inf values")
    return kernel


def gaussian_kernel(size: int = 61, sigma: float = 3.0, truncate: float | None = None) -> Tensor:
    r"""``k[i, j] ∝ g(i - c) g(j - c)``, ``g(t) = exp(-t^2 / (2 sigma^2))``, ``c = (size - 1) / 2``, sum 1.

    With ``truncate``, ``g`` is zero beyond ``int(truncate * sigma + 0.5)`` pixels
    from the centre: the kernel DPS and DAPS build with
    ``scipy.ndimage.gaussian_filter`` of a centred delta (``truncate=4.0``, a radius of
    12 px at ``sigma = 3``; ``util/img_utils.py`` / ``forward_operator/__init__.py``
    ``Blurkernel``).  Without it the whole ``size x size`` window is used.
    """
    size = kernel_side("kernel_size", size)
    sigma = as_float("sigma", sigma, minimum=0.0, strict_minimum=True)
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-(offsets**2) / (2 * sigma**2))
    if truncate is not None:
        radius = int(as_float("truncate", truncate, minimum=0.0) * sigma + 0.5)
        profile = torch.where(offsets.abs() <= radius, profile, 0.0)
    kernel = torch.outer(profile, profile)
    return kernel / kernel.sum()


def uniform_kernel(size: int = 9) -> Tensor:
    """The ``size x size`` box kernel, every entry ``1 / size^2``."""
    size = kernel_side("size", size)
    return torch.full((size, size), 1.0 / size**2, dtype=torch.float64)


def motion_kernel(size: int = 61, intensity: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    r"""A random camera-shake kernel drawn like the ``motionblur`` generator of DPS / DAPS.

    See :mod:`operators.motion_kernel` for the algorithm (random path length, path drawn
    on a 2x supersampled canvas, blurred, Lanczos-resized to ``size x size``).  The
    kernel is non-negative and sums to 1.  All randomness comes from ``generator``, so
    the same seed gives the same kernel.
    """
    size = kernel_side("kernel_size", size)
    intensity = as_float("intensity", intensity, minimum=0.0, maximum=1.0)
    if generator is None:
        raise ValueError(
            "motion_kernel draws a random trajectory and needs a torch.Generator "
            "(e.g. torch.Generator().manual_seed(0)) so that the kernel is reproducible"
        )
    return render_motion_path(draw_motion_path(size, intensity, generator), size)
