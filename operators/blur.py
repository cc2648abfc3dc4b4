"""Blur operators: same-size per-channel convolution by FFT, reflect or circular boundary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from operators.arguments import as_float, as_int
from operators.base import LinearOperator, _per_item
from operators.fourier import CirculantSVD, fast_length, kernel_on_canvas
from operators.kernels import check_kernel, gaussian_kernel, motion_kernel, uniform_kernel
from operators.registry import register
from operators.svd import SVD

PADDINGS = ("reflect", "circular")


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


class Blur(LinearOperator):
    r"""Same-size 2-D convolution of every channel with one kernel: ``y = k * x``.

    ``y[i, j] = sum_{a, b} k[a, b] x[i + c_0 - a, j + c_1 - b]`` with the kernel
    centre ``c = (kh // 2, kw // 2)`` (a true convolution, not a correlation), on
    images ``(B, C, H, W)``; pixels outside the image come from the boundary rule:

    * ``"reflect"`` (the benchmarks' rule, DPS / DAPS): the image is reflected
      about its edge pixels (``dcba|abcd|dcba``, repeated if the kernel is wider
      than the image), convolved circularly by FFT on a canvas large enough that
      nothing wraps, and cropped.  The adjoint is the exact transpose of
      crop ∘ convolve ∘ pad: embed, correlate (``conj`` in Fourier), fold the
      reflected margins back onto their source pixels.  ``pinv`` and ``prox`` use
      conjugate gradients (``cg_iterations`` of them).
    * ``"circular"``: periodic boundary.  With ``K`` the DFT of the kernel placed
      at the origin, ``A = F^{-1} diag(K) F``; everything is closed form:
      adjoint ``conj(K)``, pseudo-inverse ``conj(K) / |K|^2`` on the frequencies
      where ``|K| > rcond * max|K|`` (zero elsewhere: a truncated-SVD
      pseudo-inverse), prox ``(conj(K) Y + rho X0) / (|K|^2 + rho)``, and the exact
      SVD of :class:`operators.fourier.CirculantSVD`.

    Kernel spectra are computed in float64 once per canvas size, device and dtype.
    """

    kind = "blur"

    def __init__(self, kernel: Tensor, padding: str = "reflect", rcond: float = 1e-4):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.kernel = check_kernel(kernel)
        self.padding = padding
        self.rcond = as_float("rcond", rcond, minimum=0.0)
        self.has_svd = padding == "circular"
        kh, kw = self.kernel.shape
        self.center = (kh // 2, kw // 2)
        self._spectra: dict[tuple, Tensor] = {}

    # -- shapes ------------------------------------------------------------
    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 4:
            raise ValueError(f"{type(self).__name__} takes image batches (B, C, H, W), got shape {tuple(shape)}")

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_shape(shape)
        return tuple(shape)

    def input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_shape(shape)
        return tuple(shape)

    # -- spectra -----------------------------------------------------------
    def _spectrum(self, canvas: tuple[int, int], origin: tuple[int, int], like: Tensor, full: bool = False) -> Tensor:
        """DFT of the kernel on ``canvas`` with entry ``origin`` at (0, 0), cast like ``like``."""
        key = (canvas, origin, full, like.device, like.dtype)
        if key not in self._spectra:
            placed = kernel_on_canvas(self.kernel, canvas, origin)
            spectrum = torch.fft.fft2(placed) if full else torch.fft.rfft2(placed)
            self._spectra[key] = spectrum.to(device=like.device, dtype=like.dtype.to_complex())
        return self._spectra[key]

    def _padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Pixels added (before, after) on the row and column axes for the reflect rule."""
        kh, kw = self.kernel.shape
        return (kh - 1 - self.center[0], self.center[0]), (kw - 1 - self.center[1], self.center[1])

    def _reflect_plan(self, height: int, width: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
        (top, bottom), (left, right) = self._padding()
        rows = reflect_indices(height, top, bottom)
        cols = reflect_indices(width, left, right)
        canvas = (fast_length(rows.numel()), fast_length(cols.numel()))
        return rows, cols, canvas

    # -- the operator ------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        self._check_shape(tuple(x.shape))
        height, width = x.shape[-2:]
        if self.padding == "circular":
            spectrum = self._spectrum((height, width), self.center, x)
            return torch.fft.irfft2(torch.fft.rfft2(x) * spectrum, s=(height, width))
        rows, cols, canvas = self._reflect_plan(height, width)
        padded = x.index_select(-2, rows.to(x.device)).index_select(-1, cols.to(x.device))
        spectrum = self._spectrum(canvas, (0, 0), x)
        full = torch.fft.irfft2(torch.fft.rfft2(padded, s=canvas) * spectrum, s=canvas)
        kh, kw = self.kernel.shape
        return full[..., kh - 1 : kh - 1 + height, kw - 1 : kw - 1 + width]

    def adjoint(self, y: Tensor) -> Tensor:
        self._check_shape(tuple(y.shape))
        height, width = y.shape[-2:]
        if self.padding == "circular":
            spectrum = self._spectrum((height, width), self.center, y)
            return torch.fft.irfft2(torch.fft.rfft2(y) * spectrum.conj(), s=(height, width))
        rows, cols, canvas = self._reflect_plan(height, width)
        kh, kw = self.kernel.shape
        embedded = F.pad(y, (kw - 1, canvas[1] - (kw - 1) - width, kh - 1, canvas[0] - (kh - 1) - height))
        spectrum = self._spectrum(canvas, (0, 0), y)
        correlated = torch.fft.irfft2(torch.fft.rfft2(embedded) * spectrum.conj(), s=canvas)
        correlated = correlated[..., : rows.numel(), : cols.numel()]
        folded = y.new_zeros(*y.shape[:-2], height, cols.numel()).index_add(-2, rows.to(y.device), correlated)
        return y.new_zeros(y.shape).index_add(-1, cols.to(y.device), folded)

    def pinv(self, y: Tensor) -> Tensor:
        """``A^+ y``: closed form in Fourier (circular, frequencies with ``|K| <= rcond max|K|`` dropped) or CG."""
        if self.padding != "circular":
            return super().pinv(y)
        height, width = y.shape[-2:]
        spectrum = self._spectrum((height, width), self.center, y)
        magnitude = spectrum.abs()
        keep = magnitude > self.rcond * magnitude.max()
        inverse = torch.where(keep, spectrum.conj() / magnitude.square().clamp_min(torch.finfo(y.dtype).tiny), 0)
        return torch.fft.irfft2(torch.fft.rfft2(y) * inverse, s=(height, width))

    def prox(self, x0: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        """``argmin ||y - A x||^2 + rho ||x - x0||^2``: closed form in Fourier (circular) or CG."""
        if self.padding != "circular":
            return super().prox(x0, y, rho)
        height, width = y.shape[-2:]
        rho = _per_item(rho, y)
        spectrum = self._spectrum((height, width), self.center, y)
        numerator = spectrum.conj() * torch.fft.rfft2(y) + rho * torch.fft.rfft2(x0)
        return torch.fft.irfft2(numerator / (spectrum.abs().square() + rho), s=(height, width))

    def svd(self, x_shape: tuple[int, ...]) -> SVD | None:
        """The exact :class:`CirculantSVD` for circular padding; ``None`` for reflect."""
        self._check_shape(tuple(x_shape))
        if self.padding != "circular":
            return None
        height, width = x_shape[-2:]
        spectrum = torch.fft.fft2(kernel_on_canvas(self.kernel, (height, width), self.center))
        return CirculantSVD(spectrum, channels=x_shape[1])

    def __repr__(self) -> str:
        kh, kw = self.kernel.shape
        return f"{type(self).__name__}(kernel=<{kh}x{kw}>, padding={self.padding!r})"


@register("gaussian_blur")
class GaussianBlur(Blur):
    """Blur with the isotropic Gaussian kernel of :func:`operators.kernels.gaussian_kernel`.

    The benchmark setting (DPS, Chung et al. 2023; DAPS, Zhang et al. 2025) is
    ``kernel_size=61, sigma=3.0, padding="reflect"``.  See :class:`Blur` for the maths.
    """

    task = "gaussian_blur"

    def __init__(self, kernel_size: int = 61, sigma: float = 3.0, padding: str = "reflect", rcond: float = 1e-4):
        self.kernel_size = as_int("kernel_size", kernel_size, minimum=1)
        self.sigma = as_float("sigma", sigma, minimum=0.0, strict_minimum=True)
        super().__init__(gaussian_kernel(self.kernel_size, self.sigma), padding=padding, rcond=rcond)

    def __repr__(self) -> str:
        return f"GaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma}, padding={self.padding!r})"


@register("uniform_blur")
class UniformBlur(Blur):
    """Blur with the ``size x size`` box (moving-average) kernel. See :class:`Blur` for the maths."""

    task = "uniform_blur"

    def __init__(self, size: int = 9, padding: str = "reflect", rcond: float = 1e-4):
        self.size = as_int("size", size, minimum=1)
        super().__init__(uniform_kernel(self.size), padding=padding, rcond=rcond)

    def __repr__(self) -> str:
        return f"UniformBlur(size={self.size}, padding={self.padding!r})"


@register("motion_blur")
class MotionBlur(Blur):
    """Camera-shake blur with a random-trajectory kernel drawn once at construction.

    The kernel comes from :func:`operators.kernels.motion_kernel` with a
    ``torch.Generator`` seeded by ``seed`` (same seed, same kernel, on any
    device), or is given explicitly as ``kernel`` (then ``kernel_size``,
    ``intensity`` and ``seed`` are not used).  The benchmark setting (DPS / DAPS)
    is ``kernel_size=61, intensity=0.5``.  See :class:`Blur` for the maths.
    """

    task = "motion_blur"

    def __init__(
        self,
        kernel_size: int = 61,
        intensity: float = 0.5,
        seed: int = 0,
        padding: str = "reflect",
        kernel: Tensor | None = None,
        rcond: float = 1e-4,
    ):
        self.explicit = kernel is not None
        if kernel is None:
            self.kernel_size = as_int("kernel_size", kernel_size, minimum=1)
            self.intensity = as_float("intensity", intensity, minimum=0.0, maximum=1.0)
            self.seed = as_int("seed", seed)
            kernel = motion_kernel(self.kernel_size, self.intensity, torch.Generator().manual_seed(self.seed))
        super().__init__(kernel, padding=padding, rcond=rcond)

    def __repr__(self) -> str:
        if self.explicit:
            kh, kw = self.kernel.shape
            return f"MotionBlur(kernel=<{kh}x{kw}>, padding={self.padding!r})"
        return (
            f"MotionBlur(kernel_size={self.kernel_size}, intensity={self.intensity}, "
            f"seed={self.seed}, padding={self.padding!r})"
        )
