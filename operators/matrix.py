"""A dense matrix acting on vectors."""

from __future__ import annotations

import torch
from torch import Tensor

from operators.arguments import as_float
from operators.base import LinearOperator, check_input
from operators.registry import register
from operators.svd import SVD


@register("matrix")
class MatrixOperator(LinearOperator):
    """``y = A x`` for vectors ``x`` of shape ``(B, d)`` and a matrix ``A`` of shape ``(m, d)``.

    The SVD ``A = U diag(s) V^T`` is computed once (``torch.linalg.svd``); the
    pseudo-inverse ``A^+ = V diag(1/s) U^T`` drops singular values below
    ``rcond * max(s)``; the prox solves ``(A^T A + rho I) x = A^T y + rho x0`` in
    the singular basis.

    ``A`` may be a tensor, a NumPy array or nested lists; it must be a finite,
    non-empty 2-D real matrix (integers are converted to float64).
    """

    has_svd = True
    kind = "matrix"
    output_in_image_range = False

    def __init__(self, A: Tensor, rcond: float = 1e-10):
        super().__init__()
        self.A = _as_matrix(A)
        self.rcond = as_float("rcond", rcond, minimum=0.0)
        self._svd = None
        self._casts: dict[tuple, tuple[Tensor, ...]] = {}

    def _cast(self, like: Tensor) -> Tensor:
        check_input(like, "MatrixOperator")
        key = ("A", like.device, like.dtype)
        if key not in self._casts:
            self._casts[key] = (self.A.to(device=like.device, dtype=like.dtype),)
        return self._casts[key][0]

    def forward(self, x: Tensor) -> Tensor:
        return x @ self._cast(x).T

    def adjoint(self, y: Tensor) -> Tensor:
        return y @ self._cast(y)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 2 or shape[1] != self.A.shape[1]:
            raise ValueError(f"MatrixOperator takes (B, {self.A.shape[1]}) inputs, got {tuple(shape)}")
        return (shape[0], self.A.shape[0])

    def input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[0], self.A.shape[1])

    def _factors(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(U, s, V)`` in float64 once, cast once per device and dtype."""
        if self._svd is None:
            U, s, Vh = torch.linalg.svd(self.A.double(), full_matrices=True)
            self._svd = (U, s, Vh.T)
        key = ("svd", like.device, like.dtype)
        if key not in self._casts:
            self._casts[key] = tuple(t.to(device=like.device, dtype=like.dtype) for t in self._svd)
        return self._casts[key]

    def pinv(self, y: Tensor) -> Tensor:
        U, s, V = self._factors(y)
        k = s.numel()
        inv = torch.where(s > self.rcond * s.max(), 1 / s, torch.zeros_like(s))
        return ((y @ U[:, :k]) * inv) @ V[:, :k].T

    def prox(self, x0: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        U, s, V = self._factors(y)
        k = s.numel()
        rho = torch.as_tensor(rho, device=y.device, dtype=y.dtype).reshape(-1, 1)
        c = x0 @ V
        ck = (s * (y @ U[:, :k]) + rho * c[:, :k]) / (s**2 + rho)
        return torch.cat([ck, c[:, k:]], dim=1) @ V.T

    def svd(self, x_shape: tuple[int, ...]) -> SVD:
        return MatrixSVD(*self._factors(self.A))


def _as_matrix(A: object) -> Tensor:
    """``A`` as a finite non-empty 2-D real tensor, or a one-line error saying what was wrong."""
    if isinstance(A, (str, bytes)) or not isinstance(A, (Tensor, list, tuple)) and not hasattr(A, "__array__"):
        raise TypeError(
            f"MatrixOperator needs a 2-D matrix (a torch.Tensor, NumPy array or nested lists), "
            f"got {type(A).__name__} {A!r}"
        )
    try:
        matrix = torch.as_tensor(A)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"MatrixOperator could not read A as a matrix of numbers: {error}") from None
    if matrix.ndim != 2 or matrix.numel() == 0:
        raise ValueError(f"MatrixOperator needs a non-empty 2-D matrix (m, d), got shape {tuple(matrix.shape)}")
    if matrix.is_complex() or matrix.dtype == torch.bool:
        raise TypeError(f"MatrixOperator needs a real matrix, got dtype {matrix.dtype}")
    if not matrix.is_floating_point():
        matrix = matrix.to(torch.float64)
    if not torch.isfinite(matrix).all():
        raise ValueError("MatrixOperator's matrix contains NaN or inf entries")
    return matrix


class MatrixSVD(SVD):
    """The SVD of a dense matrix, from ``torch.linalg.svd``."""

    def __init__(self, U: Tensor, s: Tensor, V: Tensor):
        self._U, self._s, self._V = U, s, V

    @property
    def singular_values(self) -> Tensor:
        return self._s

    def Vt(self, x: Tensor) -> Tensor:
        return x @ self._V.to(x)

    def V(self, c: Tensor) -> Tensor:
        return c @ self._V.to(c).T

    def Ut(self, y: Tensor) -> Tensor:
        return y @ self._U.to(y)

    def U(self, c: Tensor) -> Tensor:
        return c @ self._U.to(c).T
