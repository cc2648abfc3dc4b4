"""Bad input to operators gets one clear line (issue 14): non-finite noise, integer images,
huge sizes (refused before any allocation), non-matrix ``A``, empty batches."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import operators
from operators import (
    Denoising,
    GaussianBlur,
    Inpainting,
    MatrixOperator,
    MotionBlur,
    SuperResolution,
    UniformBlur,
    box_mask,
    gaussian_kernel,
)

IMAGE_OPERATORS = [
    lambda: GaussianBlur(5, 1.0),
    lambda: GaussianBlur(5, 1.0, padding="circular"),
    lambda: MotionBlur(9, 0.5, seed=0),
    lambda: SuperResolution(2),
    lambda: Inpainting("random", missing=0.5),
    lambda: operators.PhaseRetrieval(),
    lambda: operators.HighDynamicRange(),
]
IDS = ["gaussian", "gaussian-circular", "motion", "sr", "inpainting", "phase-retrieval", "hdr"]


@pytest.mark.parametrize("noise_sigma", [math.nan, math.inf, -math.inf, -0.1, float("nan")])
def test_measure_refuses_non_finite_or_negative_noise(noise_sigma):
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="noise_sigma must be a finite number >= 0"):
        GaussianBlur(3, 1.0).measure(x, noise_sigma)
    with pytest.raises(ValueError, match="noise_sigma must be a finite number >= 0"):
        Denoising().measure(x, torch.tensor(noise_sigma), noise="poisson")


@pytest.mark.parametrize("noise_sigma", ["a lot", "0.1", None])
def test_measure_refuses_non_numeric_noise(noise_sigma):
    with pytest.raises(TypeError, match="noise_sigma must be a number"):
        Denoising().measure(torch.zeros(1, 3, 4, 4), noise_sigma)


@pytest.mark.parametrize("build", IMAGE_OPERATORS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_images_are_refused_with_the_conversion_to_use(build, dtype):
    op = build()
    x = torch.zeros(1, 3, 8, 8, dtype=dtype)
    with pytest.raises(TypeError, match="invsolve.io.to_model_range"):
        op(x)
    with pytest.raises(TypeError, match="invsolve.io.to_model_range"):
        op.measure(x, 0.05)


@pytest.mark.parametrize("build", [b for b, i in zip(IMAGE_OPERATORS, IDS) if i in IDS[:5]], ids=IDS[:5])
def test_linear_solves_refuse_integer_tensors(build):
    op = build()
    y = torch.zeros(op.output_shape((1, 3, 8, 8)), dtype=torch.uint8)
    x0 = torch.zeros(1, 3, 8, 8)
    for call in (lambda: op.adjoint(y), lambda: op.pinv(y), lambda: op.prox(x0, y, 0.1)):
        with pytest.raises(TypeError, match="to_model_range"):
            call()


def test_numpy_arrays_are_refused_with_a_hint():
    with pytest.raises(TypeError, match="takes a torch.Tensor, got ndarray"):
        GaussianBlur(3, 1.0)(np.zeros((1, 3, 8, 8)))


@pytest.mark.parametrize("build", IMAGE_OPERATORS + [lambda: Denoising()], ids=IDS + ["denoising"])
def test_an_empty_batch_is_refused(build):
    with pytest.raises(ValueError, match="empty batch"):
        build()(torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match="empty batch"):
        build().measure(torch.zeros(0, 3, 8, 8), 0.05)
    with pytest.raises(ValueError, match="empty batch"):
        MatrixOperator(torch.eye(3))(torch.zeros(0, 3))


@pytest.mark.parametrize(
    "make",
    [
        lambda: GaussianBlur(100001),
        lambda: operators.build("gaussian_blur", kernel_size="100001"),
        lambda: UniformBlur(100001),
        lambda: MotionBlur(100001),
        lambda: gaussian_kernel(100001),
    ],
    ids=["gaussian", "gaussian-cli", "uniform", "motion", "kernel"],
)
def test_huge_kernels_are_refused_before_any_allocation(make):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"kernel_size=100001 would need 80 GB|size=100001 would need 80 GB"):
        make()
    assert time.perf_counter() - start < 1.0  # nothing was allocated or computed


def test_huge_masks_are_refused_before_any_allocation():
    with pytest.raises(ValueError, match="masks are limited to"):
        Inpainting("box", size=8, shape=(100000, 100000))
    with pytest.raises(ValueError, match="masks are limited to"):
        box_mask((100000, 100000), 8)


@pytest.mark.parametrize(
    "A, error, message",
    [
        (3, TypeError, "needs a 2-D matrix"),
        ("3", TypeError, "needs a 2-D matrix"),
        (None, TypeError, "needs a 2-D matrix"),
        (torch.ones(3), ValueError, r"2-D matrix \(m, d\), got shape \(3,\)"),
        (torch.ones(2, 0), ValueError, "non-empty"),
        (torch.tensor([[1.0, math.nan]]), ValueError, "NaN or inf"),
        (torch.ones(2, 2, dtype=torch.complex64), TypeError, "real matrix"),
    ],
)
def test_matrix_operator_refuses_what_is_not_a_matrix(A, error, message):
    with pytest.raises(error, match=message):
        MatrixOperator(A)
    # from the command line (operators.build) the same words come back (TypeErrors as ValueErrors)
    with pytest.raises((TypeError, ValueError), match=message):
        operators.build("matrix", A=A)


def test_matrix_operator_accepts_lists_and_integer_matrices():
    op = MatrixOperator([[1, 2], [3, 4], [5, 6]])
    assert op.A.dtype == torch.float64
    x = torch.tensor([[1.0, -1.0]])
    assert torch.equal(op(x), torch.tensor([[-1.0, -1.0, -1.0]]))


def test_nonlinear_operator_parameters_are_finite_and_bounded():
    with pytest.raises(ValueError, match="oversample must be <= 16"):
        operators.PhaseRetrieval(oversample=1e6)  # a 1e6-times canvas is never allocated
    with pytest.raises(ValueError, match="oversample must be >= 1"):
        operators.PhaseRetrieval(oversample=0.5)
    with pytest.raises(ValueError, match="scale must be finite"):
        operators.HighDynamicRange(scale=math.inf)
    with pytest.raises(ValueError, match="scale must be > 0"):
        operators.HighDynamicRange(scale=0)


def test_matrix_operator_reuses_its_casts():
    op = MatrixOperator(torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    x = torch.randn(2, 4)
    assert op._cast(x) is op._cast(x) and op._factors(x) is op._factors(x)
    assert op._cast(x).dtype == torch.float32
