r"""Reflect-boundary convolution along one axis, and separable kernels.

The benchmarks pad images by reflection about the edge pixels (``dcb|abcd|cba``,
PyTorch's ``ReflectionPad2d``), then convolve.  Padding acts on rows and columns
independently, so a rank-one kernel ``k = u v^T`` gives ``y = R_u x R_v^T`` with
``R_u`` the ``H x H`` matrix of the 1-D reflect-padded same-size convolution by
``u`` (:func:`reflect_convolution_matrix`): a Kronecker product, whose exact SVD is
the product of two small SVDs (:class:`operators.separable.SeparableSVD`).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: ``||k - u v^T||_F <= SEPARABLE_TOLERANCE ||k||_F`` makes a kernel separable: the
#: factors then reproduce the kernel to float64 rounding.
SEPARABLE_TOLERANCE = 1e-13


def reflect_indices(length: int, before: int, after: int) -> Tensor:
    """Source indices of a reflect-padded axis (edge sample not repeated), any pad width.

    Index ``i`` in ``[-before, length + after)`` maps to the reflection of ``i``
    that lies in ``[0, length)``, repeating the reflection as often as needed, so
    ``before`` and ``after`` may exceed the length.
    """
    positions = torch.arange(-before, length + after)
    if length == 1:
        return torch.zeros_like(positions)
    period = 2 * (length - 1)
    folded = positions % period
    return torch.where(folded < length, folded, period - folded)


def reflect_convolution_matrix(taps: Tensor, length: int, center: int) -> Tensor:
    r"""The ``(length, length)`` float64 matrix of the same-size 1-D convolution with reflect padding.

    ``y[i] = sum_a taps[a] x[r(i + center - a)]`` with ``r`` the reflection of
    :func:`reflect_indices`: entry ``(i, r(i + center - a))`` accumulates ``taps[a]``.
    """
    size = taps.numel()
    source = reflect_indices(length, size - 1 - center, center)
    rows = torch.arange(length)[:, None].expand(length, size)
    # padded position i + size - 1 - a holds coordinate i + center - a
    cols = source[torch.arange(length)[:, None] + (size - 1) - torch.arange(size)[None, :]]
    matrix = torch.zeros(length, length, dtype=torch.float64)
    return matrix.index_put_((rows, cols), taps.double()[None, :].expand(length, size), accumulate=True)


def separable_factors(kernel: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(u, v)`` with ``kernel = outer(u, v)`` to float64 rounding, or ``None`` if it is not rank one.

    The factors come from the kernel's SVD, ``u = sqrt(s_1) u_1`` and ``v = sqrt(s_1) v_1``,
    signed so that ``u`` sums to a non-negative number.
    """
    kernel = kernel.double()
    if kernel.abs().max() == 0:
        return None
    left, singular, right_t = torch.linalg.svd(kernel)
    u, v = left[:, 0] * singular[0].sqrt(), right_t[0] * singular[0].sqrt()
    if u.sum() < 0:
        u, v = -u, -v
    if torch.linalg.norm(kernel - torch.outer(u, v)) > SEPARABLE_TOLERANCE * torch.linalg.norm(kernel):
        return None
    return u, v


def fold_reflect(z: Tensor, dim: int, before: int, after: int, length: int) -> Tensor:
    """The adjoint of reflect padding along ``dim``: add the margins of ``z`` back onto their sources.

    ``z`` has ``before + length + after`` entries along ``dim``.  Margins up to
    ``length - 1`` wide fold by two flipped slice additions; wider ones (repeated
    reflections) by an index sum.
    """
    if before <= length - 1 and after <= length - 1:
        core = z.narrow(dim, before, length).clone()
        if before:
            core.narrow(dim, 1, before).add_(z.narrow(dim, 0, before).flip(dim))
        if after:
            core.narrow(dim, length - 1 - after, after).add_(z.narrow(dim, before + length, after).flip(dim))
        return core
    source = reflect_indices(length, before, after).to(z.device)
    shape = list(z.shape)
    shape[dim] = length
    return z.new_zeros(shape).index_add(dim, source, z)


def pad_reflect(x: Tensor, rows: tuple[int, int], cols: tuple[int, int]) -> Tensor:
    """Reflect-pad the last two axes of ``x`` by ``rows = (top, bottom)`` and ``cols = (left, right)``.

    ``torch.nn.functional.pad`` when every margin is narrower than its axis, an index
    gather (repeated reflections) otherwise.
    """
    height, width = x.shape[-2:]
    if max(rows) < height and max(cols) < width:
        return torch.nn.functional.pad(x, (*cols, *rows), mode="reflect")
    row_index = reflect_indices(height, *rows).to(x.device)
    col_index = reflect_indices(width, *cols).to(x.device)
    return x.index_select(-2, row_index).index_select(-1, col_index)
