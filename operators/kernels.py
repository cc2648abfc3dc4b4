"""Blur kernels: Gaussian, uniform (box) and random-trajectory camera-shake kernels.

All kernels are 2-D float64 tensors on the CPU that sum to 1; operators cast
them to the input's dtype and device when they are applied.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from operators.arguments import as_float, as_int


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


def gaussian_kernel(size: int = 61, sigma: float = 3.0) -> Tensor:
    r"""``k[i, j] ∝ exp(-((i - c)^2 + (j - c)^2) / (2 sigma^2))``, ``c = (size - 1) / 2``, sum 1."""
    size = as_int("kernel_size", size, minimum=1)
    sigma = as_float("sigma", sigma, minimum=0.0, strict_minimum=True)
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = torch.outer(profile, profile)
    return kernel / kernel.sum()


def uniform_kernel(size: int = 9) -> Tensor:
    """The ``size x size`` box kernel, every entry ``1 / size^2``."""
    size = as_int("size", size, minimum=1)
    return torch.full((size, size), 1.0 / size**2, dtype=torch.float64)


def motion_kernel(size: int = 61, intensity: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    r"""A random camera-shake kernel: a rasterised random trajectory (Boracchi & Foi, 2012).

    The camera moves ``T = 8 * size`` equal time steps along a planar path of
    length ``size / 2`` pixels.  The velocity keeps its direction from step to step
    (momentum) while its heading performs a Gaussian random walk whose total rms
    drift over the exposure is ``4 * intensity`` radians, and its log-speed a random
    walk with total rms ``1.5 * intensity``; with probability ``intensity / T`` per
    step an impulsive shake turns the heading by a uniform angle in ``[-pi, pi]``.
    ``intensity = 0`` gives a straight line at a random angle, ``intensity = 1`` a
    tangled path.  Each step deposits an equal share of the exposure at its
    position by bilinear splatting (slow parts come out brighter); the path is
    centred on its centre of mass and shrunk, if needed, to keep half a pixel
    inside the ``size x size`` support.  The kernel sums to 1.  All randomness
    comes from ``generator``, so the same seed gives the same kernel.
    """
    size = as_int("kernel_size", size, minimum=1)
    intensity = as_float("intensity", intensity, minimum=0.0, maximum=1.0)
    if generator is None:
        raise ValueError(
            "motion_kernel draws a random trajectory and needs a torch.Generator "
            "(e.g. torch.Generator().manual_seed(0)) so that the kernel is reproducible"
        )
    if size == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    steps = 8 * size
    options = {"generator": generator, "device": generator.device, "dtype": torch.float64}
    start = 2 * math.pi * torch.rand((), **options)
    turns = torch.randn(steps, **options) * (4 * intensity / math.sqrt(steps))
    shakes = (torch.rand(steps, **options) < intensity / steps) * (2 * torch.rand(steps, **options) - 1) * math.pi
    log_speed = torch.cumsum(torch.randn(steps, **options), 0) * (1.5 * intensity / math.sqrt(steps))
    heading = start + torch.cumsum(turns + shakes, 0)
    speed = torch.exp(log_speed)
    velocity = torch.polar(speed, heading)
    path = torch.cumsum(velocity, 0) * (size / 2 / speed.sum())
    points = torch.stack([path.imag, path.real], dim=1).cpu()
    return _splat(points, size)


def _splat(points: Tensor, size: int) -> Tensor:
    """Bilinear splatting of equally weighted ``(row, col)`` points, centred, onto a normalised kernel."""
    centre = (size - 1) / 2
    points = points - points.mean(0)
    radius = points.abs().max()
    limit = centre - 0.5
    if radius > limit:
        points = points * (limit / radius)
    points = points + centre
    base = points.floor().clamp(0, size - 2)
    frac = points - base
    base = base.long()
    kernel = torch.zeros(size, size, dtype=torch.float64)
    for d_row in (0, 1):
        for d_col in (0, 1):
            w_row = frac[:, 0] if d_row else 1 - frac[:, 0]
            w_col = frac[:, 1] if d_col else 1 - frac[:, 1]
            kernel.index_put_((base[:, 0] + d_row, base[:, 1] + d_col), w_row * w_col, accumulate=True)
    return kernel / kernel.sum()
