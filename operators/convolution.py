r"""Same-size 2-D convolution engines behind :class:`operators.blur.Blur`.

Each engine applies one kernel to every channel of ``(B, C, H, W)`` images and keeps
what it can reuse across calls (kernel spectra, padding plans, matrices, SVDs) per
image size, device and dtype:

* :class:`CircularFFT`: periodic boundary, ``A = F^{-1} diag(K) F``;
* :class:`ReflectFFT`: reflect padding, FFT on a padded canvas, crop (any kernel);
* :class:`SeparableReflect`: reflect padding with a rank-one kernel ``u v^T``,
  ``y = R_u x R_v^T`` as two matrix products, or :class:`ReflectFFT` on images larger
  than :attr:`SeparableReflect.matmul_max_side` (a measured crossover).

The timings behind the engine choices are in the docs' operator notes
(``docs/method_notes/operators.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from operators.fourier import CirculantSVD, fast_length, kernel_on_canvas
from operators.reflect import fold_reflect, pad_reflect, reflect_convolution_matrix
from operators.separable import SeparableSVD


class _SpectrumCache:
    """DFTs of a kernel placed on a canvas, computed in float64 once per canvas, device and dtype."""

    def __init__(self, kernel: Tensor):
        self.kernel = kernel
        self._spectra: dict[tuple, Tensor] = {}

    def get(self, canvas: tuple[int, int], origin: tuple[int, int], like: Tensor, full: bool = False) -> Tensor:
        key = (canvas, origin, full, like.device, like.dtype)
        if key not in self._spectra:
            placed = kernel_on_canvas(self.kernel, canvas, origin)
            spectrum = torch.fft.fft2(placed) if full else torch.fft.rfft2(placed)
            self._spectra[key] = spectrum.to(device=like.device, dtype=like.dtype.to_complex())
        return self._spectra[key]


class CircularFFT:
    r"""Periodic convolution: adjoint ``conj(K)``, truncated pseudo-inverse ``conj(K) / |K|^2``
    where ``|K| > rcond max|K|``, prox ``(conj(K) Y + rho X0) / (|K|^2 + rho)``, :class:`CirculantSVD`."""

    def __init__(self, kernel: Tensor, center: tuple[int, int]):
        self.center = center
        self.spectra = _SpectrumCache(kernel)
        self._svds: dict[tuple, CirculantSVD] = {}

    def _spectrum(self, like: Tensor) -> Tensor:
        return self.spectra.get(tuple(like.shape[-2:]), self.center, like)

    def _apply(self, x: Tensor, multiplier: Tensor) -> Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x) * multiplier, s=tuple(x.shape[-2:]))

    def forward(self, x: Tensor) -> Tensor:
        return self._apply(x, self._spectrum(x))

    def adjoint(self, y: Tensor) -> Tensor:
        return self._apply(y, self._spectrum(y).conj())

    def pinv(self, y: Tensor, rcond: float) -> Tensor:
        spectrum = self._spectrum(y)
        magnitude = spectrum.abs()
        keep = magnitude > rcond * magnitude.max()
        tiny = torch.finfo(y.dtype).tiny
        return self._apply(y, torch.where(keep, spectrum.conj() / magnitude.square().clamp_min(tiny), 0))

    def prox(self, x0: Tensor, y: Tensor, rho: Tensor) -> Tensor:
        spectrum = self._spectrum(y)
        numerator = spectrum.conj() * torch.fft.rfft2(y) + rho * torch.fft.rfft2(x0)
        return torch.fft.irfft2(numerator / (spectrum.abs().square() + rho), s=tuple(y.shape[-2:]))

    def svd(self, x_shape: tuple[int, ...]) -> CirculantSVD:
        key = tuple(x_shape[1:])
        if key not in self._svds:
            height, width = x_shape[-2:]
            spectrum = torch.fft.fft2(kernel_on_canvas(self.spectra.kernel, (height, width), self.center))
            self._svds[key] = CirculantSVD(spectrum, channels=x_shape[1])
        return self._svds[key]


class ReflectFFT:
    r"""Reflect padding, circular convolution on a canvas large enough that nothing wraps, crop.

    With margins ``(kh - 1 - c_0, c_0)`` and ``(kw - 1 - c_1, c_1)`` the padded image is
    ``(H + kh - 1) x (W + kw - 1)``; the canvas is the next FFT-friendly size
    (:func:`operators.fourier.fast_length`).  The adjoint is the exact transpose of
    crop ∘ convolve ∘ pad: embed, correlate (``conj`` in Fourier), fold the reflected
    margins back onto their source pixels (:func:`operators.reflect.fold_reflect`).
    One real FFT pair per call; the kernel spectrum is cached per canvas.

    This is the only engine for non-separable kernels: overlap-add transforms more points
    (``(H / b)^2 (b + kh - 1)^2 > (H + kh - 1)^2`` for blocks of ``b`` px) and direct spatial
    convolution (``conv2d``) costs ``kh kw`` per pixel; both measured slower (operator notes).
    """

    def __init__(self, kernel: Tensor, center: tuple[int, int]):
        kh, kw = kernel.shape
        self.size = (kh, kw)
        self.margins = ((kh - 1 - center[0], center[0]), (kw - 1 - center[1], center[1]))
        self.spectra = _SpectrumCache(kernel)

    def canvas(self, height: int, width: int) -> tuple[int, int]:
        kh, kw = self.size
        return fast_length(height + kh - 1), fast_length(width + kw - 1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        canvas = self.canvas(height, width)
        padded = pad_reflect(x, *self.margins)
        spectrum = self.spectra.get(canvas, (0, 0), x)
        full = torch.fft.irfft2(torch.fft.rfft2(padded, s=canvas) * spectrum, s=canvas)
        kh, kw = self.size
        return full[..., kh - 1 : kh - 1 + height, kw - 1 : kw - 1 + width]

    def adjoint(self, y: Tensor) -> Tensor:
        height, width = y.shape[-2:]
        canvas = self.canvas(height, width)
        kh, kw = self.size
        embedded = F.pad(y, (kw - 1, canvas[1] - (kw - 1) - width, kh - 1, canvas[0] - (kh - 1) - height))
        spectrum = self.spectra.get(canvas, (0, 0), y)
        correlated = torch.fft.irfft2(torch.fft.rfft2(embedded) * spectrum.conj(), s=canvas)
        (top, bottom), (left, right) = self.margins
        correlated = correlated[..., : height + top + bottom, : width + left + right]
        return fold_reflect(fold_reflect(correlated, -2, top, bottom, height), -1, left, right, width)


class SeparableReflect:
    r"""Reflect-padded convolution with a rank-one kernel ``k = u v^T``: ``y = R_u x R_v^T``.

    ``R_u`` (``H x H``) and ``R_v`` (``W x W``) are the 1-D reflect-convolution matrices
    (:func:`operators.reflect.reflect_convolution_matrix`), so ``A = R_u ⊗ R_v`` and

    * ``A^T y = R_u^T y R_v``, ``A^T A x = (R_u^T R_u) x (R_v^T R_v)``;
    * the SVD is :class:`operators.separable.SeparableSVD` of the two matrices (each
      factor truncated at ``factor_rcond``), which also gives the truncated
      pseudo-inverse and the exact prox in closed form.

    Images whose longer side is at most :attr:`matmul_max_side` use the matrix
    products (``2 H W (H + W)`` flops per channel); larger ones use
    :class:`ReflectFFT`, whose cost grows like ``H W log(H W)``.  Matrices and SVDs
    are built in float64 once per size and cast once per device and dtype.
    """

    #: Longest image side applied by matrix products: the measured crossover between matrix
    #: products and :class:`ReflectFFT` (between 256 and 320 px; operator notes).
    matmul_max_side = 288

    def __init__(
        self, kernel: Tensor, factors: tuple[Tensor, Tensor], center: tuple[int, int], factor_rcond: float = 0.0
    ):
        self.factors = factors
        self.factor_rcond = factor_rcond
        self.center = center
        self.fft = ReflectFFT(kernel, center)
        self._matrices: dict[tuple, Tensor] = {}
        self._svds: dict[tuple, SeparableSVD] = {}

    def uses_matrices(self, height: int, width: int) -> bool:
        return max(height, width) <= self.matmul_max_side

    def matrix(self, axis: int, length: int, like: Tensor | None = None, normal: bool = False) -> Tensor:
        """``R`` (or ``R^T R`` when ``normal``) along ``axis`` (0: rows, 1: columns) for ``length``."""
        key = (axis, length, normal, None if like is None else (like.device, like.dtype))
        if key not in self._matrices:
            if like is None:
                matrix = reflect_convolution_matrix(self.factors[axis], length, self.center[axis])
                self._matrices[key] = matrix.T @ matrix if normal else matrix
            else:
                self._matrices[key] = self.matrix(axis, length, None, normal).to(device=like.device, dtype=like.dtype)
        return self._matrices[key]

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if not self.uses_matrices(height, width):
            return self.fft.forward(x)
        return self.matrix(0, height, x) @ x @ self.matrix(1, width, x).T

    def adjoint(self, y: Tensor) -> Tensor:
        height, width = y.shape[-2:]
        if not self.uses_matrices(height, width):
            return self.fft.adjoint(y)
        return self.matrix(0, height, y).T @ y @ self.matrix(1, width, y)

    def normal(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if not self.uses_matrices(height, width):
            return self.fft.adjoint(self.fft.forward(x))
        return self.matrix(0, height, x, normal=True) @ x @ self.matrix(1, width, x, normal=True)

    def svd(self, x_shape: tuple[int, ...]) -> SeparableSVD:
        key = tuple(x_shape[1:])
        if key not in self._svds:
            channels, height, width = key
            self._svds[key] = SeparableSVD(self.matrix(0, height), self.matrix(1, width), channels, self.factor_rcond)
        return self._svds[key]
