r"""Random camera-shake kernels drawn like the ``motionblur`` generator used by DPS and DAPS.

DPS (Chung et al., ICLR 2023; ``guided_diffusion/measurements.py``) and DAPS (Zhang
et al., CVPR 2025; ``forward_operator/__init__.py``) draw their motion-blur kernels
with ``Kernel(size=(61, 61), intensity=0.5).kernelMatrix`` of the ``motionblur``
package (L. Borodenko, github.com/LeviBorodenko/motionblur, ``motionblur.py``,
vendored in both repositories).  This module implements that algorithm from its
description, with every random number drawn from a ``torch.Generator``:

1. **Path length.**  On a canvas supersampled twice (``2n x 2n`` for an ``n x n``
   kernel, diagonal ``D = 2 sqrt(2) n``) the path is at least
   ``L = 0.75 D (U(0, 1) + U(0, i^2))`` long, ``i`` the intensity.
2. **Steps.**  Step lengths ``Beta(1, 30) (1 - i + 0.1) D``, redrawn while longer than
   ``L`` (drawn here directly from that truncated law), are appended until their sum
   reaches ``L``: the path overshoots ``L`` by less than one step.
3. **Headings.**  ``M = U(0, i pi)``, a sign-flip probability ``J = Beta(2, 20)``;
   the first heading is ``U(-M, M)``, every further one has magnitude
   ``Triangular(0, i M, M + 0.1)`` and flips the previous heading's sign with
   probability ``J`` (a zero first heading, as at ``i = 0``, keeps every heading 0).
4. **Path.**  The points are the cumulative sums of the steps along their headings,
   shifted so that their mean is 0, rotated by ``U(0, pi)`` and moved to pixel
   ``(n, n)`` of the supersampled canvas.
5. **Rendering.**  The polyline is drawn white on black, ``int(D / 150)`` pixels
   wide (at least 1: below ``n = 54`` the reference draws nothing and its kernel is
   0 / 0), blurred by a Gaussian of standard deviation ``int(0.01 D)`` pixels, resized
   to ``n x n`` with Lanczos resampling, and normalised to sum 1.  Step 5's
   drawing, blur and resize use Pillow's ``ImageDraw.line``,
   ``ImageFilter.GaussianBlur`` and ``Image.resize(LANCZOS)`` on an 8-bit grey image,
   as the reference does, so the rasterisation and its 8-bit rounding are the same.

For ``n = 61, i = 0.5`` the path is ``L / 2`` kernel pixels long: 40 px on average
(from 15 to 66 px); the line is 1 px wide on the canvas and the blur's std 1 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: The reference's additive constant in the step-length and heading laws.
EPS = 0.1
#: Steps drawn per batch while the path is shorter than its target length.
_CHUNK = 64


@dataclass(frozen=True)
class MotionPath:
    """One trajectory of :func:`draw_motion_path` on the supersampled canvas.

    ``points`` are complex ``col + 1j * row`` canvas coordinates (float64), one per
    step; ``steps`` and ``headings`` the step lengths and angles; ``min_length`` the
    drawn target length ``L``; ``diagonal`` the canvas diagonal ``D``.
    """

    points: Tensor
    steps: Tensor
    headings: Tensor
    min_length: float
    diagonal: float


def _uniform(generator: torch.Generator, count: int = 1, low: float = 0.0, high: float = 1.0) -> Tensor:
    u = torch.rand(count, generator=generator, dtype=torch.float64, device=generator.device).cpu()
    return low + (high - low) * u


def _truncated_beta_1_30(generator: torch.Generator, count: int, limit: float) -> Tensor:
    """``count`` draws of ``Beta(1, 30)`` conditioned on ``< limit`` (inverse CDF ``1 - (1 - t)^30``)."""
    top = 1.0 - (1.0 - min(limit, 1.0)) ** 30
    return 1.0 - (1.0 - _uniform(generator, count) * top) ** (1.0 / 30.0)


def _beta_2_20(generator: torch.Generator) -> float:
    """``Beta(2, 20)``: the second smallest of 21 uniforms."""
    return float(_uniform(generator, 21).sort().values[1])


def _triangular(u: Tensor, mode: float, right: float) -> Tensor:
    """Inverse CDF of ``Triangular(0, mode, right)`` at ``u``."""
    split = mode / right
    low = torch.sqrt(u * right * mode)
    high = right - torch.sqrt((1 - u) * right * (right - mode))
    return torch.where(u < split, low, high)


def _step_lengths(generator: torch.Generator, min_length: float, scale: float) -> Tensor:
    """Truncated ``Beta(1, 30) * scale`` steps, shorter than ``min_length``, until they sum to it."""
    if min_length <= 0:
        return torch.zeros(0, dtype=torch.float64)
    chunks, total = [], 0.0
    while total < min_length:
        chunk = _truncated_beta_1_30(generator, _CHUNK, min_length / scale) * scale
        sums = total + torch.cumsum(chunk, 0)
        reached = (sums >= min_length).nonzero()
        if len(reached):
            chunk = chunk[: int(reached[0]) + 1]
        chunks.append(chunk)
        total = float(sums[len(chunk) - 1])
    return torch.cat(chunks)


def _headings(generator: torch.Generator, count: int, intensity: float) -> Tensor:
    max_angle = float(_uniform(generator, 1, 0.0, intensity * math.pi))
    jitter = _beta_2_20(generator)
    first = _uniform(generator, 1, -max_angle, max_angle)
    magnitudes = _triangular(_uniform(generator, max(count - 1, 0)), intensity * max_angle, max_angle + EPS)
    flips = (_uniform(generator, max(count - 1, 0)) < jitter).to(torch.int64)
    signs = torch.sign(first) * (1 - 2 * (torch.cumsum(flips, 0) % 2))
    return torch.cat([first, magnitudes * signs])[:count]


def draw_motion_path(size: int, intensity: float, generator: torch.Generator) -> MotionPath:
    """Draw the trajectory of a ``size x size`` kernel (steps 1-4 of the module docstring)."""
    canvas = 2 * size
    diagonal = math.hypot(canvas, canvas)
    min_length = 0.75 * diagonal * float(_uniform(generator) + _uniform(generator, 1, 0.0, intensity**2))
    steps = _step_lengths(generator, min_length, (1 - intensity + EPS) * diagonal)
    headings = _headings(generator, len(steps), intensity)
    points = torch.cumsum(torch.polar(steps, headings), 0)
    rotation = torch.polar(torch.ones((), dtype=torch.float64), _uniform(generator, 1, 0.0, math.pi)[0])
    if len(points):
        points = (points - points.mean()) * rotation + complex(size, size)
    else:
        points = torch.full((1,), complex(size, size), dtype=torch.complex128)
    return MotionPath(points, steps, headings, min_length, diagonal)


def render_motion_path(path: MotionPath, size: int) -> Tensor:
    """Rasterise ``path`` as the reference does (step 5): a float64 ``(size, size)`` kernel, sum 1."""
    from PIL import Image, ImageDraw, ImageFilter

    canvas = 2 * size
    image = Image.new("L", (canvas, canvas))
    coordinates = [(float(p.real), float(p.imag)) for p in path.points.tolist()]
    if len(coordinates) == 1:
        coordinates = coordinates * 2
    width = max(1, int(path.diagonal / 150))
    ImageDraw.Draw(image).line(coordinates, fill=255, width=width)
    image = image.filter(ImageFilter.GaussianBlur(radius=int(path.diagonal * 0.01)))
    image = image.resize((size, size), resample=Image.LANCZOS)
    kernel = torch.from_numpy(np.asarray(image, dtype=np.float64).copy())
    if kernel.sum() <= 0:
        raise ValueError(
            f"the motion path left the {size} x {size} kernel empty; draw it with another seed"
        )
    return kernel / kernel.sum()
