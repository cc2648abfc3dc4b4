"""Denoising: the identity operator, ``y = x + noise``."""

from __future__ import annotations

import torch
from torch import Tensor

from operators.base import LinearOperator, _per_item
from operators.registry import register
from operators.svd import SVD


@register("denoising")
class Denoising(LinearOperator):
    r"""The identity ``A x = x``: the measurement is the image plus noise.

    Closed forms: ``adjoint(y) = pinv(y) = y``, ``prox(x0, y, rho) = (y + rho x0) / (1 + rho)``,
    and the SVD with ``U = V = I`` and all singular values 1 (:class:`IdentitySVD`).
    """

    has_svd = True
    kind = "denoising"

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) < 2:
            raise ValueError(f"Denoising takes batches (B, ...), got shape {tuple(shape)}")
        return tuple(shape)

    def input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.output_shape(shape)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def pinv(self, y: Tensor) -> Tensor:
        return y

    def prox(self, x0: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        rho = _per_item(rho, x0)
        return (y + rho * x0) / (1 + rho)

    def svd(self, x_shape: tuple[int, ...]) -> SVD:
        return IdentitySVD(tuple(self.output_shape(tuple(x_shape))[1:]))


class IdentitySVD(SVD):
    """``I = I diag(1) I``: coordinates are the flattened entries; singular values 1 (default dtype, CPU)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        self._s = torch.ones(int(torch.Size(shape).numel()))

    @property
    def singular_values(self) -> Tensor:
        return self._s

    def Vt(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def V(self, c: Tensor) -> Tensor:
        return c.reshape(c.shape[0], *self.shape)

    Ut = Vt
    U = V
