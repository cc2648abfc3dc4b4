"""The motion-blur kernel generator against the laws of the ``motionblur`` algorithm (DPS / DAPS).

Reference: L. Borodenko's ``motionblur.py`` (vendored as ``motionblur/motionblur.py``
in DPS2022/diffusion-posterior-sampling and ``forward_operator/motionblur`` in DAPS):
path length ``0.75 D (U(0, 1) + U(0, i^2))``, steps ``Beta(1, 30) (1 - i + 0.1) D``
below that length, headings bounded by ``i pi + 0.1``, drawn on a 2x canvas.
Statistical checks use bounds of 4 standard errors (failure probability < 1e-4 each).
"""

from __future__ import annotations

import math

import pytest
import torch

from operators import MotionBlur, motion_kernel
from operators.motion_kernel import (
    _beta_2_20,
    _triangular,
    _truncated_beta_1_30,
    draw_motion_path,
    render_motion_path,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("size, intensity", [(61, 0.5), (31, 0.5), (9, 0.5), (61, 1.0), (61, 0.0)])
def test_kernels_are_normalised_non_negative_and_deterministic(size, intensity):
    for seed in range(3):
        kernel = motion_kernel(size, intensity, _gen(seed))
        assert kernel.shape == (size, size) and kernel.dtype == torch.float64
        assert kernel.min() >= 0 and math.isclose(float(kernel.sum()), 1.0, rel_tol=1e-12)
        assert torch.equal(kernel, motion_kernel(size, intensity, _gen(seed)))
    assert not torch.equal(motion_kernel(size, intensity, _gen(0)), motion_kernel(size, intensity, _gen(1)))
    assert torch.equal(MotionBlur(size, intensity, seed=4).kernel, motion_kernel(size, intensity, _gen(4)))


def test_path_length_follows_the_reference_law():
    """``L / (0.75 D) = U(0, 1) + U(0, i^2)``: mean ``(1 + i^2) / 2``, variance ``(1 + i^4) / 12``."""
    intensity, n = 0.5, 400
    ratios, overshoots = [], []
    for seed in range(n):
        path = draw_motion_path(61, intensity, _gen(seed))
        assert path.diagonal == pytest.approx(2 * 61 * math.sqrt(2))
        ratios.append(path.min_length / (0.75 * path.diagonal))
        total = float(path.steps.sum())
        # steps are appended until they reach L, each shorter than L: overshoot < one step
        assert total >= path.min_length and (path.steps < path.min_length).all()
        overshoots.append((total - path.min_length) / float(path.steps[-1]))
    ratios = torch.tensor(ratios, dtype=torch.float64)
    mean, variance = (1 + intensity**2) / 2, (1 + intensity**4) / 12
    assert abs(ratios.mean() - mean) < 4 * math.sqrt(variance / n)
    assert abs(ratios.var() - variance) < 0.3 * variance
    assert 0 <= min(overshoots) and max(overshoots) < 1
    assert 0 <= ratios.min() and ratios.max() <= 1 + intensity**2


def test_step_and_heading_laws():
    g = _gen(0)
    n = 20000
    steps = _truncated_beta_1_30(g, n, limit=2.0)  # no truncation: Beta(1, 30)
    mean, variance = 1 / 31, 30 / (31**2 * 32)
    assert abs(steps.mean() - mean) < 4 * math.sqrt(variance / n)
    assert (_truncated_beta_1_30(g, 1000, limit=0.01) < 0.01).all()
    jitters = torch.tensor([_beta_2_20(g) for _ in range(4000)])
    assert abs(jitters.mean() - 2 / 22) < 4 * math.sqrt(2 * 20 / (22**2 * 23) / 4000)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    triangular = _triangular(u, mode=0.3, right=1.0)
    assert triangular.min() >= 0 and triangular.max() <= 1
    assert abs(triangular.mean() - 1.3 / 3) < 4 * math.sqrt((1 + 0.09 - 0.3) / 18 / n)
    for seed in range(50):
        path = draw_motion_path(61, 0.5, _gen(seed))
        assert path.headings.abs().max() <= 0.5 * math.pi + 0.1


def test_zero_intensity_draws_a_straight_segment():
    """``i = 0``: every heading is 0, so the rotated path is a segment of length ``l`` kernel pixels.

    Its kernel's second moments: ``l^2 / 12`` along the segment (a uniform density;
    plus the blur and the line ends, a few px^2), and across it only the 1-px line,
    the std-1 blur (0.5 px after resizing) and the Lanczos filter.
    """
    for seed in range(8):
        path = draw_motion_path(61, 0.0, _gen(seed))
        assert path.headings.eq(0).all()
        centred = path.points - path.points.mean()
        direction = centred[centred.abs().argmax()] / centred.abs().max()
        assert (centred / direction).imag.abs().max() < 1e-9
        kernel = render_motion_path(path, 61)
        rows, cols = torch.meshgrid(torch.arange(61.0), torch.arange(61.0), indexing="ij")
        coords = torch.stack([rows.flatten(), cols.flatten()], 1).double()
        weights = kernel.flatten()
        spread = coords - (weights[:, None] * coords).sum(0)
        moments = (weights[:, None, None] * spread[:, :, None] * spread[:, None, :]).sum(0)
        small, large = torch.linalg.eigvalsh(moments)
        length = float((path.points[-1] - path.points[0]).abs()) / 2
        assert small < 0.6
        if length >= 10:
            assert abs(large - length**2 / 12) < 0.1 * length**2 / 12 + 3


def test_kernels_are_centred_like_the_reference():
    """The path's mean sits at pixel (n, n) of the 2n canvas, i.e. (n / 2 - 0.25) after resizing.

    Paths that leave the canvas are clipped, so single kernels scatter by a few pixels;
    the mean over 100 kernels is within 0.5 px.
    """
    grid = torch.arange(61, dtype=torch.float64)
    rows, cols = [], []
    for seed in range(100):
        kernel = motion_kernel(61, 0.5, _gen(seed))
        rows.append(float((kernel.sum(1) * grid).sum()))
        cols.append(float((kernel.sum(0) * grid).sum()))
    assert abs(sum(rows) / 100 - 30.25) < 0.5 and abs(sum(cols) / 100 - 30.25) < 0.5


def test_benchmark_kernels_have_the_reference_spread():
    """61 px, intensity 0.5: paths 15-66 px long, so the kernels cover tens to hundreds of pixels.

    Reference values from 300 draws of the original generator (numpy seed 1), computed
    outside this repository: mean support 143 px (10 %-90 %: 54-235), major-axis std
    10.6 px (4.1-17.6).  Bounds here are 4 standard errors for 100 draws.
    """
    support, spread = [], []
    grid = torch.arange(61, dtype=torch.float64)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")
    for seed in range(100):
        kernel = motion_kernel(61, 0.5, _gen(seed))
        support.append(float((kernel > 0).sum()))
        mr, mc = (kernel * rows).sum(), (kernel * cols).sum()
        cov = torch.stack([
            torch.stack([(kernel * (rows - mr) ** 2).sum(), (kernel * (rows - mr) * (cols - mc)).sum()]),
            torch.stack([(kernel * (rows - mr) * (cols - mc)).sum(), (kernel * (cols - mc) ** 2).sum()]),
        ])
        spread.append(float(torch.linalg.eigvalsh(cov)[1].sqrt()))
    support_mean, spread_mean = sum(support) / 100, sum(spread) / 100
    assert abs(support_mean - 143) < 4 * 67 / 10
    assert abs(spread_mean - 10.6) < 4 * 5.0 / 10


def test_kernel_needs_a_generator_and_bounded_sizes():
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        motion_kernel(9, 0.5)
    with pytest.raises(ValueError, match="intensity must be <= 1"):
        motion_kernel(9, 1.5, _gen(0))
    with pytest.raises(ValueError, match="GB for the kernel alone"):
        MotionBlur(100001)
