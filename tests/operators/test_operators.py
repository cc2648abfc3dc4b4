"""Properties of every registered linear operator, checked against closed-form identities.

Each case builds a small operator (16-24 pixel images, 5-9 pixel kernels, one
61 x 61 kernel) and checks adjointness, pseudo-inverse, prox normal equations,
the SVD, shapes, dtypes and determinism.  Reference values are independent of
the code under test: direct convolutions with ``torch.nn.functional.conv2d`` and
``numpy.pad``, hand-derived bicubic weights, statistics of the noise models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import operators
from operators import (
    Blur,
    Denoising,
    GaussianBlur,
    Inpainting,
    LinearOperator,
    MatrixOperator,
    MotionBlur,
    SuperResolution,
    UniformBlur,
    box_mask,
    gaussian_kernel,
    load_mask,
    motion_kernel,
    random_mask,
)
from operators.resize import bicubic_matrix

DOUBLE = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape, seed: int = 0, dtype=DOUBLE) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


def _well_conditioned_kernel() -> torch.Tensor:
    """Half identity, half Gaussian: |K| >= 0.5 at every frequency, so CG converges fast."""
    delta = torch.zeros(5, 5, dtype=DOUBLE)
    delta[2, 2] = 1
    return 0.5 * delta + 0.5 * gaussian_kernel(5, 1.0)


# Circular blurs use rcond = 1e-8 and separable reflect blurs rcond = 1e-12, so that
# their truncated pseudo-inverse is exact on everything but true (or numerical) null
# spaces; the default cutoffs are tested on their own.  Non-separable reflect blurs
# (motion, the half-delta kernel) have the regularised pseudo-inverse, checked against
# a dense solve in test_blur_exact.py.
@dataclass
class Case:
    id: str
    name: str | None  # registry name, None for unregistered classes
    build: Callable[[], LinearOperator]
    x_shape: tuple[int, ...]
    exact: bool  # pinv / prox in closed form (False: conjugate gradients)
    regularised: bool = False  # pinv is (A^T A + eps I)^{-1} A^T, not A^+


CASES = [
    Case("gaussian-reflect", "gaussian_blur", lambda: GaussianBlur(7, 1.5, rcond=1e-12, factor_rcond=0), (2, 3, 16, 16), True),
    Case("gaussian-circular", "gaussian_blur", lambda: GaussianBlur(7, 1.5, "circular", 1e-8), (2, 3, 16, 16), True),
    Case("gaussian61-reflect", "gaussian_blur", lambda: GaussianBlur(61, 3.0, rcond=1e-12, factor_rcond=0), (1, 3, 24, 24), True),
    Case(
        "gauss61-preset-reflect",
        "gaussian_blur",
        lambda: GaussianBlur(61, 3.0, truncate=4.0, rcond=1e-12, factor_rcond=0),
        (1, 2, 40, 36),
        True,
    ),
    Case("gaussian61-circular", "gaussian_blur", lambda: GaussianBlur(61, 3.0, "circular", 1e-8), (1, 3, 24, 24), True),
    Case("motion-reflect", "motion_blur", lambda: MotionBlur(9, 0.5, seed=1), (2, 3, 16, 16), False, True),
    Case("motion-circular", "motion_blur", lambda: MotionBlur(9, 0.5, 1, "circular", rcond=1e-8), (2, 3, 16, 16), True),
    Case("uniform-reflect", "uniform_blur", lambda: UniformBlur(5, rcond=1e-12, factor_rcond=0), (2, 3, 15, 15), True),
    # 5-tap box on 15 pixels: the DFT vanishes at frequency 3, so A has a true null space.
    Case("uniform-circular", "uniform_blur", lambda: UniformBlur(5, "circular", rcond=1e-8), (2, 3, 15, 15), True),
    Case("blur-well-conditioned", None, lambda: Blur(_well_conditioned_kernel()), (2, 3, 16, 16), False, True),
    Case("inpainting-box", "inpainting", lambda: Inpainting("box", size=6, shape=(16, 16)), (2, 3, 16, 16), True),
    Case("inpainting-random", "inpainting", lambda: Inpainting("random", missing=0.7, seed=0), (2, 3, 16, 16), True),
    Case(
        "inpainting-per-image",
        "inpainting",
        lambda: Inpainting(random_mask((2, 1, 16, 16), 0.5, _gen(5)) * box_mask((2, 1, 16, 16), 4)),
        (4, 3, 16, 16),
        True,
    ),
    Case("sr-bicubic-2", "super_resolution", lambda: SuperResolution(2), (2, 3, 16, 16), True),
    Case("sr-bicubic-4", "super_resolution", lambda: SuperResolution(4), (2, 3, 24, 24), True),
    Case("sr-average-2", "super_resolution", lambda: SuperResolution(2, "average"), (2, 3, 16, 16), True),
    Case("sr-average-3", "super_resolution", lambda: SuperResolution(3, "average"), (2, 2, 12, 18), True),
    Case("denoising", "denoising", Denoising, (2, 3, 8, 8), True),
    Case("matrix", "matrix", lambda: MatrixOperator(_randn((5, 8), seed=9)), (3, 8), True),
]
IDS = [case.id for case in CASES]
SVD_CASES = [case for case in CASES if case.build().has_svd]


def _measurement_like(op: LinearOperator, case: Case, seed: int) -> torch.Tensor:
    return _randn(op.output_shape(case.x_shape), seed=seed)


def test_every_registered_linear_operator_has_a_case():
    linear = {name for name in operators.available() if issubclass(operators.get(name), LinearOperator)}
    covered = {case.name for case in CASES}
    assert linear <= covered, f"add test cases for {sorted(linear - covered)}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_adjoint(case):
    op = case.build()
    x = _randn(case.x_shape, seed=1)
    y = _measurement_like(op, case, seed=2)
    lhs, rhs = _dot(op(x), y), _dot(x, op.adjoint(y))
    assert abs(lhs - rhs) <= 1e-10 * (op(x).norm() * y.norm())


MP_CASES = [case for case in CASES if not case.regularised]


@pytest.mark.parametrize("case", MP_CASES, ids=[c.id for c in MP_CASES])
def test_pinv_reproduces_measurements_in_the_range(case):
    """``A A^+ (A x) = A x`` to float64 rounding: every pseudo-inverse here is a closed form.

    Reflect-padded Gaussian and box blurs are Kronecker products with an exact SVD;
    bicubic SR too.  Even at condition numbers near 1e19 (61-pixel Gaussian on 24
    pixels) the identity holds to rounding on the kept singular values.  A blur's
    truncated pseudo-inverse drops singular values ``s <= rcond s_max``, which removes
    at most ``rcond s_max ||x||`` from ``A x``; ``s_max <= sqrt(||A||_1 ||A||_inf) <= sqrt(2)``
    for a non-negative kernel summing to 1 (rows sum to 1, reflected columns to at most 2).
    """
    op = case.build()
    x = _randn(case.x_shape, seed=3)
    y = op(x)
    dropped = 1.5 * op.rcond * (x.norm() / y.norm()).item() if isinstance(op, Blur) else 0.0
    assert _rel(op(op.pinv(y)), y) < 1e-10 + dropped


# Condition numbers below 1e7 keep 1/s_min * 1e-16 under the 1e-8 bound of the second condition.
PENROSE_CASES = [c for c in MP_CASES if c.id not in ("gaussian61-reflect", "gauss61-preset-reflect")]


@pytest.mark.parametrize("case", PENROSE_CASES, ids=[c.id for c in PENROSE_CASES])
def test_pinv_penrose_conditions(case):
    """For any y: ``A^T (A A^+ y - y) = 0`` (least squares) and ``A^+ A A^+ y = A^+ y``."""
    op = case.build()
    y = _measurement_like(op, case, seed=4)
    x = op.pinv(y)
    scale = op.adjoint(y).norm()
    assert (op.adjoint(op(x) - y)).norm() < 1e-6 * scale
    assert _rel(op.pinv(op(x)), x) < 1e-8


def test_circular_pinv_drops_frequencies_below_rcond():
    """With rcond = 0.5 the Gaussian pseudo-inverse keeps only the strong frequencies."""
    op = GaussianBlur(7, 1.5, padding="circular", rcond=0.5)
    y = op(_randn((1, 1, 16, 16), seed=5))
    x = op.pinv(y)
    spectrum = torch.fft.fft2(x)
    kernel = torch.fft.fft2(operators.fourier.kernel_on_canvas(op.kernel, (16, 16), op.center))
    dropped = kernel.abs() <= 0.5 * kernel.abs().max()
    assert dropped.sum() > 10
    assert spectrum[0, 0][dropped].abs().max() < 1e-10
    kept = ~dropped
    assert torch.allclose(spectrum[0, 0][kept] * kernel[kept], torch.fft.fft2(y)[0, 0][kept])


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("per_item", [False, True], ids=["scalar-rho", "per-item-rho"])
def test_prox_solves_normal_equations(case, per_item):
    op = case.build()
    x0 = _randn(case.x_shape, seed=6)
    y = _measurement_like(op, case, seed=7)
    batch = case.x_shape[0]
    rho = torch.linspace(0.05, 2.0, batch, dtype=DOUBLE) if per_item else 0.3
    x = op.prox(x0, y, rho)
    rho_b = rho.reshape(-1, *([1] * (x0.ndim - 1))) if per_item else rho
    lhs = op.adjoint(op(x)) + rho_b * x
    rhs = op.adjoint(y) + rho_b * x0
    # CG stops at a relative residual of 1e-6 (cg_tolerance); closed forms are exact
    assert _rel(lhs, rhs) < (1e-10 if case.exact else 1e-5)


@pytest.mark.parametrize("case", SVD_CASES, ids=[c.id for c in SVD_CASES])
def test_svd_reconstructs_the_operator(case):
    op = case.build()
    svd = op.svd(case.x_shape)
    x = _randn(case.x_shape, seed=8)
    y = _measurement_like(op, case, seed=9)
    s = svd.singular_values.to(x)
    k = s.shape[-1]
    vx, uy = svd.Vt(x), svd.Ut(y)
    n, m = vx.shape[1], uy.shape[1]
    assert vx.shape == (case.x_shape[0], x[0].numel()) and uy.shape == (y.shape[0], y[0].numel())
    assert k <= min(n, m)
    # A x = U (s * V^T x, zeros)
    spectral = torch.zeros(x.shape[0], m, dtype=DOUBLE)
    spectral[:, :k] = s * vx[:, :k]
    assert _rel(svd.U(spectral), op(x)) < 1e-6
    # A^T y = V (s * U^T y, zeros): the U side matches the adjoint too
    back = torch.zeros(x.shape[0], n, dtype=DOUBLE)
    back[:, :k] = s * uy[:, :k]
    assert _rel(svd.V(back), op.adjoint(y)) < 1e-6
    # U^T A x vanishes beyond k
    if m > k:
        assert svd.Ut(op(x))[:, k:].abs().max() < 1e-10 * x.norm()
    # V and U are orthogonal
    assert _rel(svd.V(vx), x) < 1e-12
    assert _rel(svd.U(uy), y) < 1e-12
    assert torch.allclose(vx.norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-12)
    assert torch.allclose(uy.norm(dim=1), y.flatten(1).norm(dim=1), rtol=1e-12)
    assert svd.V(vx).shape == x.shape and svd.U(uy).shape == y.shape


def test_svd_availability_follows_padding_separability_and_method():
    assert GaussianBlur(7, 1.0, padding="circular").svd((1, 1, 8, 8)) is not None
    assert GaussianBlur(7, 1.0).svd((1, 1, 8, 8)) is not None and "svd" in GaussianBlur(7, 1.0).capabilities
    assert "svd" in UniformBlur(4).capabilities and "svd" in operators.preset("gauss61").build().capabilities
    motion = MotionBlur(9, 0.5, seed=1)
    assert motion.svd((1, 1, 8, 8)) is None and "svd" not in motion.capabilities
    assert "svd" in MotionBlur(9, 0.5, seed=1, padding="circular").capabilities
    assert "svd" in SuperResolution(2, "average").capabilities and "svd" in SuperResolution(2).capabilities


def test_bicubic_singular_values_are_products_of_the_one_dimensional_ones():
    """Separable ``R_H x R_W^T``: the spectrum is {s_H[i] s_W[j]} per channel, from numpy's SVD."""
    import numpy as np

    from operators.resize import bicubic_matrix

    svd = SuperResolution(4).svd((1, 2, 16, 24))
    s_h = np.linalg.svd(bicubic_matrix(16, 4).numpy(), compute_uv=False)
    s_w = np.linalg.svd(bicubic_matrix(24, 6).numpy(), compute_uv=False)
    expected = np.sort(np.tile(np.outer(s_h, s_w).ravel(), 2))
    assert np.allclose(np.sort(svd.singular_values.double().numpy()), expected, atol=1e-6)


def test_circular_blur_singular_values_are_the_kernel_spectrum():
    """The multiset of singular values equals {|K(f)|} over all frequencies, for each channel."""
    op = MotionBlur(7, 0.8, seed=3, padding="circular")
    svd = op.svd((1, 2, 12, 10))
    kernel = torch.fft.fft2(operators.fourier.kernel_on_canvas(op.kernel, (12, 10), op.center))
    expected = kernel.abs().flatten().repeat(2).sort().values
    assert torch.allclose(svd.singular_values.double().sort().values, expected, atol=1e-6)


def test_inpainting_singular_values_sort_the_mask():
    mask = random_mask((2, 1, 6, 6), 0.4, _gen(1))
    op = Inpainting(mask)
    s = op.svd((2, 3, 6, 6)).singular_values
    assert s.shape == (2, 3 * 36)
    observed = mask.flatten(1).sum(1) * 3
    for row, count in zip(s, observed):
        assert row[: int(count)].eq(1).all() and row[int(count) :].eq(0).all()
    assert Inpainting(mask[:1]).svd((2, 3, 6, 6)).singular_values.shape == (3 * 36,)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtype_device_follow_the_input(case, dtype):
    op = case.build()
    x = _randn(case.x_shape, seed=10, dtype=dtype)
    y = op(x)
    assert tuple(y.shape) == op.output_shape(case.x_shape)
    assert op.input_shape(tuple(y.shape)) == case.x_shape
    for out in (y, op.adjoint(y), op.pinv(y), op.prox(x, y, 0.5)):
        assert out.dtype == dtype and out.device == x.device
    assert op.adjoint(y).shape == x.shape and op.pinv(y).shape == x.shape
    svd = op.svd(case.x_shape)
    if svd is not None:
        for out in (svd.Vt(x), svd.Ut(y), svd.V(svd.Vt(x)), svd.U(svd.Ut(y))):
            assert out.dtype == dtype and out.device == x.device


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: Blur(torch.rand(3, 4, generator=_gen(2), dtype=DOUBLE)), (1, 2, 5, 6)),
        (lambda: Blur(torch.rand(3, 4, generator=_gen(2), dtype=DOUBLE), padding="circular"), (1, 2, 5, 6)),
        (lambda: SuperResolution(2), (1, 1, 6, 8)),
        (lambda: SuperResolution(2, "average"), (1, 1, 4, 4)),
        (lambda: Inpainting("random", missing=0.5, seed=1), (1, 2, 4, 4)),
    ],
    ids=["blur-reflect", "blur-circular", "sr-bicubic", "sr-average", "inpainting"],
)
def test_forward_is_differentiable(build, shape):
    op = build()
    x = _randn(shape, seed=11).requires_grad_(True)
    assert torch.autograd.gradcheck(op, (x,), eps=1e-6, atol=1e-8)


# -- blur against independent references ---------------------------------------------------


def _direct_convolution(x: torch.Tensor, kernel: torch.Tensor, padding: str) -> torch.Tensor:
    """Same-size convolution by conv2d (a correlation, hence the flip) after numpy padding."""
    kh, kw = kernel.shape
    ch, cw = kh // 2, kw // 2
    widths = ((0, 0), (0, 0), (kh - 1 - ch, ch), (kw - 1 - cw, cw))
    mode = "reflect" if padding == "reflect" else "wrap"
    padded = torch.from_numpy(np.pad(x.numpy(), widths, mode=mode))
    out = F.conv2d(padded.reshape(-1, 1, *padded.shape[-2:]), kernel.flip(0, 1)[None, None])
    return out.reshape(x.shape)


@pytest.mark.parametrize("padding", ["reflect", "circular"])
@pytest.mark.parametrize(
    "kernel_shape, image_shape",
    [((5, 4), (2, 3, 11, 13)), ((6, 6), (1, 1, 9, 8)), ((61, 61), (1, 2, 24, 20))],
    ids=["odd-even", "even", "61-wider-than-image"],
)
def test_blur_matches_direct_convolution(padding, kernel_shape, image_shape):
    kernel = torch.rand(kernel_shape, generator=_gen(12), dtype=DOUBLE)
    x = _randn(image_shape, seed=13)
    op = Blur(kernel, padding=padding)
    assert _rel(op(x), _direct_convolution(x, kernel, padding)) < 1e-12


def test_reflect_and_circular_agree_away_from_the_border():
    x = _randn((1, 1, 32, 32), seed=14)
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    a, b = GaussianBlur(9, 2.0)(x), GaussianBlur(9, 2.0, padding="circular")(x)
    assert torch.allclose(a[inner], b[inner], atol=1e-12)
    assert not torch.allclose(a, b, atol=1e-3)


def test_blur_preserves_constants():
    for op in (GaussianBlur(61, 3.0), MotionBlur(9, 0.7, seed=2), UniformBlur(4, padding="circular")):
        x = torch.full((1, 3, 20, 20), 0.37, dtype=DOUBLE)
        assert torch.allclose(op(x), x, atol=1e-12)


# -- kernels ---------------------------------------------------------------------------------


def test_gaussian_kernel_formula():
    k = gaussian_kernel(7, 1.5)
    assert torch.isclose(k.sum(), torch.tensor(1.0, dtype=DOUBLE))
    # ratio between centre and the pixel at offset (1, 2): exp(-(1 + 4) / (2 * 1.5^2))
    assert torch.isclose(k[4, 5] / k[3, 3], torch.exp(torch.tensor(-5 / 4.5, dtype=DOUBLE)))
    assert torch.equal(k, k.T) and torch.equal(k, k.flip(0))


def test_explicit_motion_kernel_is_used_as_given():
    kernel = torch.rand(5, 5, generator=_gen(3))
    op = MotionBlur(kernel=kernel)
    assert torch.equal(op.kernel, kernel.double())
    assert "kernel=<5x5>" in repr(op)


# -- super-resolution -------------------------------------------------------------------------


def test_bicubic_weights_match_hand_derived_matlab_values():
    """MATLAB imresize, scale 1/2, bicubic, antialiased.

    The kernel is h(t) = cubic(t / 2) / 2; interior output i sits at input 2 i - 1/2
    (1-based), so the taps are at distances 0.5, 1.5, 2.5, 3.5 on each side and
    take cubic(0.25) = 0.8671875, cubic(0.75) = 0.2265625, cubic(1.25) = -0.0703125,
    cubic(1.75) = -0.0234375 (Keys, a = -0.5), each halved by the normalisation.
    At the first output the four left taps mirror onto samples 1, 2, 3 (edge repeated).
    """
    interior = torch.tensor([-0.0234375, -0.0703125, 0.2265625, 0.8671875] * 1, dtype=DOUBLE) / 2
    interior = torch.cat([interior, interior.flip(0)])
    matrix = bicubic_matrix(16, 8)
    assert torch.allclose(matrix[3, 3:11], interior, atol=1e-15)
    assert matrix[3, :3].abs().max() == 0 and matrix[3, 11:].abs().max() == 0
    first = torch.tensor([0.546875, 0.3984375, 0.1015625, -0.03515625, -0.01171875], dtype=DOUBLE)
    assert torch.allclose(matrix[0, :5], first, atol=1e-15)
    # imresize([1 2 3 4], 0.5) = [1.4609375, 3.5390625]
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]], dtype=DOUBLE).expand(1, 1, 4, 4)
    y = SuperResolution(2)(x)
    assert torch.allclose(y, torch.tensor([1.4609375, 3.5390625], dtype=DOUBLE).expand(1, 1, 2, 2), atol=1e-14)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bicubic_rows_sum_to_one_and_constants_are_preserved(factor):
    assert torch.allclose(bicubic_matrix(12 * factor, 12).sum(1), torch.ones(12, dtype=DOUBLE), atol=1e-14)
    x = torch.full((1, 2, 6 * factor, 9 * factor), -0.3, dtype=DOUBLE)
    assert torch.allclose(SuperResolution(factor)(x), torch.full((1, 2, 6, 9), -0.3, dtype=DOUBLE), atol=1e-14)


def test_bicubic_keeps_linear_ramps_away_from_the_border():
    """A symmetric kernel centred on each block maps a ramp to the block centre's value."""
    factor, size = 4, 40
    ramp = (0.1 * torch.arange(size, dtype=DOUBLE) - 1).expand(1, 1, size, size)
    y = SuperResolution(factor)(ramp)
    centres = 0.1 * (factor * torch.arange(size // factor, dtype=DOUBLE) + (factor - 1) / 2) - 1
    inner = slice(2, -2)
    assert torch.allclose(y[0, 0, 3, inner], centres[inner], atol=1e-13)


def test_average_sr_is_the_block_mean():
    x = torch.arange(16, dtype=DOUBLE).reshape(1, 1, 4, 4)
    expected = torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]], dtype=DOUBLE)
    assert torch.equal(SuperResolution(2, "average")(x), expected)


def test_super_resolution_needs_a_multiple_of_the_factor():
    with pytest.raises(ValueError, match="multiple of the factor 4"):
        SuperResolution(4)(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="method must be one of"):
        SuperResolution(4, method="lanczos")


# -- masks ------------------------------------------------------------------------------------


def test_box_mask_center_and_random_positions():
    mask = box_mask((3, 20, 24), size=8)
    assert mask.shape == (3, 20, 24)
    missing = (mask[0] == 0).nonzero()
    assert missing[:, 0].min() == 6 and missing[:, 0].max() == 13 and missing[:, 1].min() == 8
    assert (mask == 0).sum() == 3 * 64
    tops = set()
    for seed in range(30):
        m = box_mask((32, 32), size=10, position="random", margin=4, generator=_gen(seed))
        rows, cols = (m == 0).nonzero().unbind(1)
        assert rows.min() >= 4 and rows.max() <= 32 - 4 - 1 and cols.min() >= 4 and cols.max() <= 27
        assert (m == 0).sum() == 100
        tops.add(int(rows.min()))
    assert len(tops) > 5
    assert torch.equal(
        box_mask((32, 32), 10, "random", 4, _gen(3)), box_mask((32, 32), 10, "random", 4, _gen(3))
    )


def test_random_mask_statistics_and_seeding():
    mask = random_mask((3, 50, 40), missing=0.7, generator=_gen(0))
    assert (mask == 0).float().mean().item() == pytest.approx(0.7, abs=1e-3)
    assert torch.equal(mask[0], mask[1]) and torch.equal(mask[0], mask[2])  # all channels
    assert torch.equal(mask, random_mask((3, 50, 40), 0.7, _gen(0)))
    assert not torch.equal(mask, random_mask((3, 50, 40), 0.7, _gen(1)))
    # uniform over positions: each quadrant misses about 70 % too
    assert abs((mask[0, :25, :20] == 0).float().mean().item() - 0.7) < 0.08


def test_random_operators_are_deterministic_from_their_seed():
    x = torch.ones(1, 1, 16, 16)
    a, b = Inpainting("random", missing=0.5, seed=3), Inpainting("random", missing=0.5, seed=3)
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), Inpainting("random", missing=0.5, seed=4)(x))
    box = Inpainting("box", size=4, position="random", margin=2, seed=1)
    again = Inpainting("box", size=4, position="random", margin=2, seed=1)
    assert torch.equal(box(x), box(x)) and torch.equal(box(x), again(x))


def test_load_mask_from_png(tmp_path):
    picture = np.zeros((6, 8), dtype=np.uint8)
    picture[:, :3] = 255
    picture[0, 7] = 200  # 0.78 of full scale: observed at threshold 0.5, missing at 0.9
    path = tmp_path / "mask.png"
    Image.fromarray(picture).convert("RGB").save(path)
    mask = load_mask(path)
    assert mask.shape == (6, 8) and mask[:, :3].eq(1).all() and mask[1:, 3:].eq(0).all() and mask[0, 7] == 1
    assert load_mask(path, threshold=0.9)[0, 7] == 0
    op = Inpainting(str(path))
    y = op(torch.ones(2, 3, 6, 8))
    assert torch.equal(y, mask.expand(2, 3, 6, 8))
    with pytest.raises(FileNotFoundError, match="white = observed"):
        load_mask(tmp_path / "missing.png")


def test_inpainting_built_lazily_from_cli_style_arguments():
    op = operators.build("inpainting", mask="box", size="8")
    assert op.mask is None
    y = op(torch.ones(1, 3, 16, 20))
    assert y[0, :, 4:12, 6:14].eq(0).all() and y.eq(0).sum() == 3 * 64
    assert op.mask.shape == (1, 1, 16, 20)
    with pytest.raises(ValueError, match="the mask is 16x20 but the images are 16x16"):
        op(torch.ones(1, 3, 16, 16))
    random = operators.build("inpainting", mask="random", missing="0.7", seed="2")
    assert (random(torch.ones(1, 1, 20, 20)) == 0).sum() == 280


def test_inpainting_rejects_bad_masks_and_options():
    with pytest.raises(ValueError, match="only 0 \\(missing\\) and 1"):
        Inpainting(torch.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="missing do not apply to mask='box'"):
        Inpainting("box", missing=0.3)
    with pytest.raises(TypeError, match="mask must be a tensor"):
        Inpainting(3)
    with pytest.raises(ValueError, match="does not fit"):
        Inpainting("box", size=40, shape=(32, 32))
    with pytest.raises(ValueError, match="position must be one of"):
        Inpainting("box", position="corner")  # checked at construction, before any image is seen
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        random_mask((8, 8))
    with pytest.raises(ValueError, match="multiple of the number of masks"):
        Inpainting(torch.ones(2, 1, 4, 4))(torch.ones(3, 1, 4, 4))


def test_per_image_masks_tile_over_stacked_samples():
    masks = torch.stack([box_mask((1, 6, 6), 2), torch.ones(1, 6, 6)])
    y = Inpainting(masks)(torch.ones(4, 2, 6, 6))
    assert y[0].eq(0).any() and y[1].eq(1).all() and torch.equal(y[2], y[0]) and torch.equal(y[3], y[1])


# -- construction errors and reprs ----------------------------------------------------------


def test_clear_errors_for_bad_arguments():
    with pytest.raises(ValueError, match="padding must be one of"):
        GaussianBlur(7, 1.0, padding="zeros")
    with pytest.raises(ValueError, match="sigma must be > 0"):
        GaussianBlur(7, 0.0)
    with pytest.raises(TypeError, match="kernel_size must be an integer"):
        GaussianBlur("big")
    with pytest.raises(ValueError, match="intensity must be <= 1"):
        MotionBlur(9, 1.5)
    with pytest.raises(ValueError, match="2-D tensor"):
        Blur(torch.ones(3))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        GaussianBlur(5, 1.0)(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="bad arguments for operator 'gaussian_blur'"):
        operators.build("gaussian_blur", radius=3)
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        motion_kernel(9, 0.5)


def test_reprs_show_parameters():
    assert repr(GaussianBlur(61, 3.0)) == "GaussianBlur(kernel_size=61, sigma=3.0, padding='reflect')"
    assert repr(MotionBlur()) == "MotionBlur(kernel_size=61, intensity=0.5, seed=0, padding='reflect')"
    assert repr(UniformBlur(9, "circular")) == "UniformBlur(size=9, padding='circular')"
    assert repr(SuperResolution(4)) == "SuperResolution(factor=4, method='bicubic')"
    assert repr(Inpainting("box", size=32)) == "Inpainting(mask='box', size=32, seed=0)"
    assert repr(Denoising()) == "Denoising()"
    assert "missing=0.250" in repr(Inpainting(box_mask((8, 8), 4)))


def test_operator_kinds():
    assert GaussianBlur(5, 1.0).kind == MotionBlur(5).kind == UniformBlur(3).kind == "blur"
    assert Inpainting("box").kind == "inpainting"
    assert SuperResolution(2).kind == "super_resolution"
    assert Denoising().kind == "denoising"


# -- measurement noise ------------------------------------------------------------------------


def test_gaussian_measurement_noise_has_the_requested_std():
    op = GaussianBlur(5, 1.0, padding="circular")
    x = _randn((2, 1, 100, 100), seed=15).clamp(-1, 1)
    noise = op.measure(x, noise_sigma=0.1, generator=_gen(1)) - op(x)
    # 20000 samples: the std estimate has relative std 1/sqrt(2 n) = 0.5 %
    assert noise.std().item() == pytest.approx(0.1, rel=0.02)
    assert abs(noise.mean().item()) < 0.003


def test_poisson_noise_std_at_full_brightness():
    """Documented: a full-brightness pixel (A x = 1) has std noise_sigma on the [-1, 1] scale."""
    x = torch.ones(1, 1, 150, 150, dtype=DOUBLE)
    y = Denoising().measure(x, noise_sigma=0.1, generator=_gen(2), noise="poisson")
    assert y.std().item() == pytest.approx(0.1, rel=0.03)
    assert y.mean().item() == pytest.approx(1.0, abs=0.003)
    black = Denoising().measure(-x, noise_sigma=0.1, generator=_gen(2), noise="poisson")
    assert black.eq(-1).all()


def test_same_generator_seed_gives_the_same_measurement():
    op = SuperResolution(2)
    x = _randn((1, 3, 16, 16), seed=16, dtype=torch.float32)
    a = op.measure(x, 0.05, generator=_gen(4))
    assert torch.equal(a, op.measure(x, 0.05, generator=_gen(4)))
    assert not torch.equal(a, op.measure(x, 0.05, generator=_gen(5)))
    assert torch.equal(op.measure(x, 0.0), op(x))
