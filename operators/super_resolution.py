"""Super-resolution: downsampling by an integer factor (bicubic imresize or block average)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from operators.arguments import as_float, as_int
from operators.base import LinearOperator, _per_item, check_input
from operators.registry import register
from operators.resize import bicubic_matrix
from operators.separable import SeparableSVD
from operators.svd import SVD

__all__ = ["BlockSVD", "SeparableSVD", "SuperResolution", "helmert_basis"]

METHODS = ("bicubic", "average")


def helmert_basis(size: int) -> Tensor:
    r"""An orthonormal ``(size, size)`` float64 matrix whose first row is ``1 / sqrt(size)``.

    Row ``j >= 1`` is the Helmert contrast ``(1, ..., 1, -j, 0, ..., 0) / sqrt(j (j + 1))``
    (``j`` ones): rows ``1..size-1`` span the complement of the constant vector.
    """
    basis = torch.zeros(size, size, dtype=torch.float64)
    basis[0] = 1 / math.sqrt(size)
    for j in range(1, size):
        basis[j, :j] = 1 / math.sqrt(j * (j + 1))
        basis[j, j] = -j / math.sqrt(j * (j + 1))
    return basis


@register("super_resolution")
class SuperResolution(LinearOperator):
    r"""Downsampling ``(B, C, H, W) -> (B, C, H / f, W / f)`` by an integer factor ``f``.

    * ``method="bicubic"`` (the benchmarks' SR x4, DPS / DAPS): MATLAB ``imresize``
      by ``1 / f`` with antialiasing, Keys' cubic (``a = -0.5``) stretched by ``f``
      and mirrored boundaries (:func:`operators.resize.bicubic_matrix`).  It is
      separable, ``y = R_H x R_W^T`` with the two weight matrices built once per
      size, device and dtype, so the adjoint ``R_H^T y R_W`` is exact.  The
      exact SVD is the Kronecker product of the two factors' SVDs
      (:class:`operators.separable.SeparableSVD`, cached per size); ``pinv`` (singular
      values at or below ``rcond * s_max`` dropped: none for x4 bicubic at the default
      ``1e-4``, whose smallest is about 0.49 s_max at 64-256 px) and ``prox`` are
      closed forms in it.
    * ``method="average"``: the mean of each ``f x f`` block.  Per block
      ``A = (1/f) e^T`` with ``e`` the normalised all-ones vector, so
      ``A A^T = I / f^2``: ``pinv(y)`` replicates ``y`` over the block,
      ``prox`` is closed form (``A^T A = Pi / f^2`` with ``Pi`` the block-mean
      projection: ``x = b / rho - (1 / rho - 1 / (1/f^2 + rho)) Pi b``,
      ``b = A^T y + rho x0``), and the exact SVD has singular value ``1 / f`` on
      ``e`` and a Helmert basis of the null space in each block (:class:`BlockSVD`).

    Height and width must be multiples of ``f``.
    """

    kind = "super_resolution"

    def __init__(self, factor: int = 4, method: str = "bicubic", rcond: float = 1e-4):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.factor = as_int("factor", factor, minimum=1)
        self.method = method
        self.rcond = as_float("rcond", rcond, minimum=0.0)
        self.has_svd = True
        self._matrices: dict[tuple, Tensor] = {}
        self._svds: dict[tuple, SVD] = {}

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 4:
            raise ValueError(f"SuperResolution takes image batches (B, C, H, W), got shape {tuple(shape)}")
        batch, channels, height, width = shape
        if height % self.factor or width % self.factor:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the factor {self.factor}; "
                f"crop or pad the image to a multiple of {self.factor}"
            )
        return (batch, channels, height // self.factor, width // self.factor)

    def input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 4:
            raise ValueError(f"SuperResolution takes measurements (B, C, h, w), got shape {tuple(shape)}")
        batch, channels, height, width = shape
        return (batch, channels, height * self.factor, width * self.factor)

    def _matrix(self, length: int, like: Tensor) -> Tensor:
        """The bicubic weights ``(length / f, length)`` cast like ``like`` (cached)."""
        key = (length, like.device, like.dtype)
        if key not in self._matrices:
            weights = bicubic_matrix(length, length // self.factor)
            self._matrices[key] = weights.to(device=like.device, dtype=like.dtype)
        return self._matrices[key]

    def _replicate(self, y: Tensor) -> Tensor:
        return y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "SuperResolution.forward")
        self.output_shape(tuple(x.shape))
        if self.method == "average":
            return F.avg_pool2d(x, self.factor)
        rows, cols = self._matrix(x.shape[-2], x), self._matrix(x.shape[-1], x)
        return rows @ x @ cols.T

    def adjoint(self, y: Tensor) -> Tensor:
        check_input(y, "SuperResolution.adjoint")
        height, width = self.input_shape(tuple(y.shape))[-2:]
        if self.method == "average":
            return self._replicate(y) / self.factor**2
        rows, cols = self._matrix(height, y), self._matrix(width, y)
        return rows.T @ y @ cols

    def pinv(self, y: Tensor) -> Tensor:
        """``A^+ y``: replicate ``y`` over each block (average) or the SVD closed form (bicubic)."""
        check_input(y, "SuperResolution.pinv")
        x_shape = self.input_shape(tuple(y.shape))
        if self.method == "average":
            return self._replicate(y)
        return self.svd(x_shape).pinv(y, self.rcond)

    def prox(self, x0: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        """``argmin ||y - A x||^2 + rho ||x - x0||^2``: closed form per block (average) or in the SVD (bicubic)."""
        check_input(x0, "SuperResolution.prox")
        check_input(y, "SuperResolution.prox")
        if self.method != "average":
            return self.svd(tuple(x0.shape)).prox(x0, y, _per_item(rho, x0))
        rho = _per_item(rho, x0)
        rhs = self.adjoint(y) + rho * x0
        block_mean = self._replicate(F.avg_pool2d(rhs, self.factor))
        return rhs / rho - (1 / rho - 1 / (self.factor**-2 + rho)) * block_mean

    def svd(self, x_shape: tuple[int, ...]) -> SVD:
        """The exact :class:`BlockSVD` (average) or :class:`SeparableSVD` (bicubic), cached per shape."""
        self.output_shape(tuple(x_shape))
        key = tuple(x_shape[1:])
        if key not in self._svds:
            channels, height, width = key
            if self.method == "average":
                self._svds[key] = BlockSVD((channels, height, width), self.factor)
            else:
                rows = bicubic_matrix(height, height // self.factor)
                cols = bicubic_matrix(width, width // self.factor)
                self._svds[key] = SeparableSVD(rows, cols, channels)
        return self._svds[key]

    def __repr__(self) -> str:
        return f"SuperResolution(factor={self.factor}, method={self.method!r})"


class BlockSVD(SVD):
    r"""SVD of the ``f x f`` block mean on images ``(C, H, W)``.

    In each block the coordinates are ``Q x_b`` with ``Q`` the Helmert basis
    (:func:`helmert_basis`); the first, ``e^T x_b``, carries singular value
    ``1 / f`` and the other ``f^2 - 1`` span the null space.  ``V^T x`` lists the
    ``k = C (H/f) (W/f)`` first coordinates (in the measurement's order) and then
    the null-space ones; ``U`` is the identity on the flattened measurement.
    Singular values are in the default dtype on the CPU; cast them with ``.to(x)``.
    """

    def __init__(self, shape: tuple[int, int, int], factor: int):
        self.channels, self.height, self.width = shape
        self.factor = factor
        self.basis = helmert_basis(factor * factor)
        count = self.channels * (self.height // factor) * (self.width // factor)
        self._s = torch.full((count,), 1 / factor, dtype=torch.get_default_dtype())

    @property
    def singular_values(self) -> Tensor:
        return self._s

    def _low_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.channels, self.height // self.factor, self.width // self.factor)

    def Vt(self, x: Tensor) -> Tensor:
        f = self.factor
        _, channels, low_h, low_w = self._low_shape(x.shape[0])
        blocks = rearrange(x, "b c (h fh) (w fw) -> b c h w (fh fw)", c=channels, h=low_h, w=low_w, fh=f, fw=f)
        coords = blocks @ self.basis.to(x).T
        return torch.cat([coords[..., 0].flatten(1), coords[..., 1:].flatten(1)], dim=1)

    def V(self, c: Tensor) -> Tensor:
        f = self.factor
        k = self._s.numel()
        low = self._low_shape(c.shape[0])
        coords = torch.cat([c[:, :k].reshape(*low, 1), c[:, k:].reshape(*low, -1)], dim=-1)
        return rearrange(coords @ self.basis.to(c), "b c h w (fh fw) -> b c (h fh) (w fw)", fh=f, fw=f)

    def Ut(self, y: Tensor) -> Tensor:
        return y.flatten(1)

    def U(self, c: Tensor) -> Tensor:
        return c.reshape(self._low_shape(c.shape[0]))
