"""BlackBox, PhaseRetrieval and HighDynamicRange against closed forms and identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from invsolve import solve
from operators import BlackBox, HighDynamicRange, PhaseRetrieval, build
from priors import GaussianPrior

F64 = torch.float64


def _image(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * 2 - 1


# ---------------------------------------------------------------- BlackBox


def test_blackbox_numpy_callable_gets_arrays_and_returns_input_dtype():
    A = np.arange(12, dtype=np.float32).reshape(3, 4)
    seen = []

    def simulator(a):
        assert isinstance(a, np.ndarray) and a.dtype == np.float64
        seen.append(a.shape)
        return (a @ A.T).astype(np.float32)

    op = BlackBox(simulator, output_shape=(3,), numpy=True)
    x = torch.randn(5, 4, dtype=F64)
    y = op(x)
    assert y.dtype == F64 and y.device == x.device and y.shape == (5, 3)
    torch.testing.assert_close(y, x @ torch.from_numpy(A).double().T, rtol=1e-6, atol=1e-5)
    assert seen == [(5, 4)] and op.forward_calls == 5


def test_blackbox_torch_callable_never_sees_autograd():
    def simulator(x):
        assert not torch.is_grad_enabled() and not x.requires_grad
        return x.sum(dim=1, keepdim=True) ** 2

    op = BlackBox(simulator, output_shape=(1,))
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    y = op(x)
    torch.testing.assert_close(y.detach(), x.detach().sum(1, keepdim=True) ** 2)
    with pytest.raises(RuntimeError, match="no derivative"):
        y.sum().backward()


def test_blackbox_capabilities_and_shape_inference():
    calls = []

    def simulator(x):
        calls.append(x.shape[0])
        return x[:, :2] * 3

    op = BlackBox(simulator)
    assert op.forward_only and op.capabilities == {"forward"} and not op.output_in_image_range
    assert op.output_shape((7, 5)) == (7, 2) and op.output_shape((9, 5)) == (9, 2)
    assert calls == [1] and op.forward_calls == 1  # one inference call on a single zero item, cached
    assert BlackBox(simulator, output_shape=(2,)).output_shape((4, 5)) == (4, 2)
    assert BlackBox(simulator, output_shape=lambda s: (s[0], 2)).output_shape((4, 5)) == (4, 2)
    assert calls == [1]


def test_blackbox_bad_input_errors():
    with pytest.raises(TypeError, match="callable"):
        BlackBox(42)
    with pytest.raises(ValueError, match="one output per item"):
        BlackBox(lambda x: x.sum())(torch.randn(3, 2))


def test_blackbox_measure_adds_noise_with_the_generator():
    op = BlackBox(lambda x: 2 * x, output_shape=(3,))
    x = torch.zeros(1000, 3, dtype=F64)
    y = op.measure(x, noise_sigma=0.5, generator=torch.Generator().manual_seed(0))
    assert abs(y.std().item() - 0.5) < 0.03
    y2 = op.measure(x, noise_sigma=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, y2)


def test_gradient_methods_reject_a_blackbox_and_name_enkg():
    prior = GaussianPrior(torch.zeros(4), 1.0)
    op = BlackBox(lambda a: a[:, :2], output_shape=(2,), numpy=True)
    y = torch.zeros(1, 2, dtype=F64)
    with pytest.raises(ValueError, match="vjp") as err:
        solve(y, op, prior, method="dps", steps=2, seed=0, progress=False)
    assert "enkg" in str(err.value).split("methods that work here:")[1]


# ---------------------------------------------------------------- PhaseRetrieval


def _centered_dft_magnitude(canvas: torch.Tensor) -> torch.Tensor:
    """``|sum_n x_n exp(-2 pi i k n / N)| / sqrt(N)`` by explicit DFT matrices, zero frequency centred."""
    out = canvas.to(torch.complex128)
    for axis in (-2, -1):
        n = canvas.shape[axis]
        k = torch.arange(n, dtype=F64)
        W = torch.exp(-2j * math.pi * torch.outer(k, k) / n) / math.sqrt(n)
        out = torch.movedim(torch.tensordot(out, W.T, dims=([axis], [0])), -1, axis)
        out = torch.roll(out, shifts=n // 2, dims=axis)
    return out.abs()


def test_phase_retrieval_matches_the_explicit_dft_of_the_padded_unit_image():
    x = _image((2, 3, 5, 6))
    op = PhaseRetrieval(oversample=2.0)
    canvas = torch.zeros(2, 3, 11, 12, dtype=F64)  # 5 -> 3 + 5 + 3 (half up), 6 -> 3 + 6 + 3
    canvas[..., 3:8, 3:9] = (x + 1) / 2
    assert op.output_shape(tuple(x.shape)) == (2, 3, 11, 12)
    torch.testing.assert_close(op(x), _centered_dft_magnitude(canvas), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("oversample, side", [(1.0, 8), (1.5, 12), (2.0, 16), (3.0, 24)])
def test_phase_retrieval_shape_and_parseval(oversample, side):
    x = _image((2, 1, 8, 8), seed=1)
    y = PhaseRetrieval(oversample)(x)
    assert y.shape == (2, 1, side, side) and (y >= 0).all()
    torch.testing.assert_close(y.pow(2).sum((-2, -1)), ((x + 1) / 2).pow(2).sum((-2, -1)))


def test_phase_retrieval_invariances_shift_and_twin_image():
    op = PhaseRetrieval(2.0)
    x = -torch.ones(1, 2, 12, 12, dtype=F64)  # black, i.e. 0 on the [0, 1] scale
    patch = _image((1, 2, 4, 5), seed=2)
    x[..., 2:6, 1:6] = patch
    moved = -torch.ones_like(x)
    moved[..., 7:11, 6:11] = patch  # the object translated inside the canvas
    y = op(x)
    torch.testing.assert_close(op(moved), y)
    torch.testing.assert_close(op(torch.flip(x, dims=(-2, -1))), y)  # conjugate / twin image
    assert (op(x + 0.1 * _image(x.shape, seed=3)) - y).abs().max() > 1e-3


def test_phase_retrieval_is_differentiable_and_registered():
    x = _image((1, 1, 4, 4), seed=4).requires_grad_(True)
    op = build("phase_retrieval", oversample=1.5)
    assert isinstance(op, PhaseRetrieval) and op.kind == "phase_retrieval" and not op.output_in_image_range
    assert op.capabilities == {"forward", "vjp"}
    assert torch.autograd.gradcheck(op, (x,))
    with pytest.raises(ValueError, match=">= 1"):
        PhaseRetrieval(0.5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        op(torch.zeros(3, 4))


# ---------------------------------------------------------------- HighDynamicRange


def test_hdr_known_values_monotone_and_derivative():
    op = build("hdr", scale=2.0)
    assert isinstance(op, HighDynamicRange) and op.kind == "hdr" and op.output_in_image_range
    x = torch.tensor([-1.0, -0.8, -0.5, -0.3, 0.0, 0.2, 0.5, 0.7, 1.0], dtype=F64).reshape(1, 1, 3, 3)
    expected = torch.tensor([-1.0, -1.0, -1.0, -0.6, 0.0, 0.4, 1.0, 1.0, 1.0], dtype=F64).reshape(1, 1, 3, 3)
    torch.testing.assert_close(op(x), expected)
    grid = torch.linspace(-1, 1, 401, dtype=F64).reshape(1, 1, 1, -1)
    assert (op(grid).diff(dim=-1) >= 0).all()
    assert op.output_shape((2, 3, 5, 5)) == (2, 3, 5, 5)
    z = torch.tensor([-0.9, -0.2, 0.1, 0.6], dtype=F64).reshape(1, 1, 2, 2).requires_grad_(True)
    (grad,) = torch.autograd.grad(op(z).sum(), z)
    torch.testing.assert_close(grad.flatten(), torch.tensor([0.0, 2.0, 2.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="scale"):
        HighDynamicRange(0.0)
