"""Blur operators: same-size per-channel convolution, reflect or circular boundary."""

from __future__ import annotations

import torch
from torch import Tensor

from operators.arguments import as_float, as_int
from operators.base import LinearOperator, _per_item, check_input
from operators.conjugate_gradient import conjugate_gradient
from operators.convolution import CircularFFT, ReflectFFT, SeparableReflect
from operators.kernels import check_kernel, gaussian_kernel, kernel_side, motion_kernel, uniform_kernel
from operators.reflect import reflect_indices, separable_factors
from operators.registry import register
from operators.svd import SVD

__all__ = ["Blur", "GaussianBlur", "MotionBlur", "UniformBlur", "reflect_indices"]

PADDINGS = ("reflect", "circular")
#: ``rcond`` of the exact (circular, separable reflect) pseudo-inverses: singular values
#: at or below ``rcond * s_max`` are dropped.
EXACT_RCOND = 1e-4
#: ``rcond`` of the regularised pseudo-inverse of non-separable reflect blurs:
#: ``epsilon = (rcond * sum|k|)^2``.
REGULARISED_RCOND = 0.1
#: Truncation of each 1-D factor's singular values in the SVD and pseudo-inverse of separable
#: reflect blurs: ``ZERO = 3e-2`` of DDRM's ``Deblurring`` class (``functions/svd_replacement.py``),
#: also run by DDNM and NVlabs/RED-diff (``utils/degredations.py``).
OFFICIAL_FACTOR_RCOND = 3e-2


class Blur(LinearOperator):
    r"""Same-size 2-D convolution of every channel with one kernel: ``y = k * x``.

    ``y[i, j] = sum_{a, b} k[a, b] x[i + c_0 - a, j + c_1 - b]`` with the kernel
    centre ``c = (kh // 2, kw // 2)`` (a true convolution, not a correlation), on
    images ``(B, C, H, W)``; pixels outside the image come from the boundary rule.
    Three cases (engines in :mod:`operators.convolution`):

    * ``"circular"``: periodic boundary, ``A = F^{-1} diag(K) F`` with ``K`` the DFT
      of the kernel at the origin.  Closed forms: adjoint ``conj(K)``, pseudo-inverse
      ``conj(K) / |K|^2`` on the frequencies where ``|K| > rcond max|K|`` (zero
      elsewhere: a truncated-SVD pseudo-inverse), prox
      ``(conj(K) Y + rho X0) / (|K|^2 + rho)``, exact SVD
      :class:`operators.fourier.CirculantSVD`.
    * ``"reflect"`` (the benchmarks' rule, DPS / DAPS ``ReflectionPad2d``), separable
      kernel ``k = u v^T`` (Gaussian, uniform, any rank-one kernel, detected to float64
      rounding): ``A = R_u ⊗ R_v``, a Kronecker product of two 1-D reflect-convolution
      matrices.  SVD :class:`operators.separable.SeparableSVD`, truncated pseudo-inverse
      with the same ``rcond`` rule as circular, and exact prox, all from the two small SVDs
      (cached per size).  As the official DDRM / DDNM / ΠGDM code (DDRM
      ``functions/svd_replacement.py``, ``Deblurring``: ``ZERO = 3e-2``), the SVD and the
      pseudo-inverse truncate each 1-D factor's singular values at ``factor_rcond = 3e-2`` of
      its largest, so SVD-based methods see that truncated operator
      (``||A - A_t|| <= 0.03 ||A||``) and ``A^+`` amplifies noise at most about 1 / 0.03^2.
      ``factor_rcond=0`` gives the exact SVD.
    * ``"reflect"``, non-separable kernel (motion blur): the image is reflected about
      its edge pixels, convolved by FFT on a padded canvas and cropped; the adjoint is
      the exact transpose.  There is no cheap SVD.  ``prox`` runs conjugate
      gradients on ``(A^T A + rho I) x = A^T y + rho x0`` from ``x0`` until the relative
      residual is below ``cg_tolerance`` or after ``cg_iterations``.  ``pinv`` is the
      **regularised** pseudo-inverse ``(A^T A + eps I)^{-1} A^T y`` with
      ``eps = (rcond * sum|k|)^2`` (``rcond`` 0.1 by default), by CG on
      ``(A A^T + eps I) u = y``, ``x = A^T u``; a smaller ``rcond`` fits ``y`` closer and
      needs more iterations (raise ``cg_iterations``).

    ``rcond`` defaults to ``1e-4`` for the exact pseudo-inverses and to ``0.1`` for the
    regularised one.  Kernel spectra, matrices and SVDs are computed in float64 once
    per image size, device and dtype.
    """

    kind = "blur"
    cg_iterations = 100

    def __init__(
        self, kernel: Tensor, padding: str = "reflect", rcond: float | None = None, factor_rcond: float | None = None
    ):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.kernel = check_kernel(kernel)
        self.padding = padding
        kh, kw = self.kernel.shape
        self.center = (kh // 2, kw // 2)
        factors = separable_factors(self.kernel) if padding == "reflect" else None
        #: ``True`` for a reflect blur with a rank-one kernel (exact SVD, pinv, prox).
        self.separable = factors is not None
        self.has_svd = padding == "circular" or self.separable
        default = EXACT_RCOND if self.has_svd else REGULARISED_RCOND
        self.rcond = default if rcond is None else as_float("rcond", rcond, minimum=0.0)
        if factor_rcond is not None and not self.separable:
            raise ValueError("factor_rcond applies only to reflect blurs with a separable kernel")
        #: per-factor truncation of the SVD and pseudo-inverse (separable reflect blurs only).
        self.factor_rcond = None
        if self.separable:
            self.factor_rcond = OFFICIAL_FACTOR_RCOND if factor_rcond is None else as_float(
                "factor_rcond", factor_rcond, minimum=0.0, maximum=1.0
            )
        if padding == "circular":
            self._engine = CircularFFT(self.kernel, self.center)
        elif self.separable:
            self._engine = SeparableReflect(self.kernel, factors, self.center, self.factor_rcond)
        else:
            self._engine = ReflectFFT(self.kernel, self.center)

    # -- shapes ------------------------------------------------------------
    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 4:
            raise ValueError(f"{type(self).__name__} takes image batches (B, C, H, W), got shape {tuple(shape)}")

    def _check(self, x: Tensor, what: str) -> None:
        check_input(x, f"{type(self).__name__}.{what}")
        self._check_shape(tuple(x.shape))

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_shape(shape)
        return tuple(shape)

    def input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_shape(shape)
        return tuple(shape)

    @property
    def regularisation(self) -> float:
        """``eps = (rcond * sum|k|)^2`` of the regularised pseudo-inverse (non-separable reflect)."""
        return (self.rcond * float(self.kernel.abs().sum())) ** 2

    # -- the operator ------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        self._check(x, "forward")
        return self._engine.forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        self._check(y, "adjoint")
        return self._engine.adjoint(y)

    def normal(self, x: Tensor) -> Tensor:
        """``A^T A x`` (two matrix products for a separable reflect blur)."""
        if self.separable:
            self._check(x, "normal")
            return self._engine.normal(x)
        return super().normal(x)

    def pinv(self, y: Tensor) -> Tensor:
        """``A^+ y``: truncated closed form (circular, separable reflect) or the regularised CG solve."""
        self._check(y, "pinv")
        if self.padding == "circular":
            return self._engine.pinv(y, self.rcond)
        if self.separable:
            return self._engine.svd(tuple(y.shape)).pinv(y, self.rcond)
        eps = self.regularisation
        u = conjugate_gradient(
            lambda v: self.forward(self.adjoint(v)) + eps * v, y, self.cg_iterations, self.cg_tolerance
        )
        return self.adjoint(u)

    def prox(self, x0: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        """``argmin ||y - A x||^2 + rho ||x - x0||^2``: closed form (circular, separable reflect) or CG."""
        self._check(y, "prox")
        self._check(x0, "prox")
        if self.padding == "circular":
            return self._engine.prox(x0, y, _per_item(rho, y))
        if self.separable:
            return self._engine.svd(tuple(x0.shape)).prox(x0, y, _per_item(rho, y))
        return super().prox(x0, y, rho)

    def svd(self, x_shape: tuple[int, ...]) -> SVD | None:
        """The exact SVD (circular: :class:`CirculantSVD`; separable reflect: :class:`SeparableSVD`), else ``None``."""
        self._check_shape(tuple(x_shape))
        if not self.has_svd:
            return None
        return self._engine.svd(tuple(x_shape))

    def __repr__(self) -> str:
        kh, kw = self.kernel.shape
        return f"{type(self).__name__}(kernel=<{kh}x{kw}>, padding={self.padding!r})"


@register("gaussian_blur")
class GaussianBlur(Blur):
    """Blur with the isotropic Gaussian kernel of :func:`operators.kernels.gaussian_kernel`.

    The benchmark setting (DPS, Chung et al. 2023; DAPS, Zhang et al. 2025) is
    ``kernel_size=61, sigma=3.0, padding="reflect"``, with ``truncate=4.0`` for the
    kernel those repositories build (``scipy.ndimage.gaussian_filter``, zero beyond
    12 px).  The kernel is separable, so the reflect blur has an SVD (see ``factor_rcond``).  See
    :class:`Blur` for the maths.
    """

    task = "gaussian_blur"

    def __init__(
        self,
        kernel_size: int = 61,
        sigma: float = 3.0,
        padding: str = "reflect",
        rcond: float | None = None,
        truncate: float | None = None,
        factor_rcond: float | None = None,
    ):
        self.kernel_size = kernel_side("kernel_size", kernel_size)
        self.sigma = as_float("sigma", sigma, minimum=0.0, strict_minimum=True)
        self.truncate = None if truncate is None else as_float("truncate", truncate, minimum=0.0)
        kernel = gaussian_kernel(self.kernel_size, self.sigma, self.truncate)
        super().__init__(kernel, padding=padding, rcond=rcond, factor_rcond=factor_rcond)

    def __repr__(self) -> str:
        truncate = "" if self.truncate is None else f", truncate={self.truncate}"
        return (
            f"GaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma}{truncate}, padding={self.padding!r})"
        )


@register("uniform_blur")
class UniformBlur(Blur):
    """Blur with the ``size x size`` box (moving-average) kernel; separable (exact SVD). See :class:`Blur`."""

    task = "uniform_blur"

    def __init__(
        self, size: int = 9, padding: str = "reflect", rcond: float | None = None, factor_rcond: float | None = None
    ):
        self.size = kernel_side("size", size)
        super().__init__(uniform_kernel(self.size), padding=padding, rcond=rcond, factor_rcond=factor_rcond)

    def __repr__(self) -> str:
        return f"UniformBlur(size={self.size}, padding={self.padding!r})"


@register("motion_blur")
class MotionBlur(Blur):
    """Camera-shake blur with a random-trajectory kernel drawn once at construction.

    The kernel comes from :func:`operators.kernels.motion_kernel` (the ``motionblur``
    generator of DPS / DAPS, :mod:`operators.motion_kernel`) with a
    ``torch.Generator`` seeded by ``seed`` (same seed, same kernel, on any
    device), or is given explicitly as ``kernel`` (then ``kernel_size``,
    ``intensity`` and ``seed`` are not used).  The benchmark setting (DPS / DAPS)
    is ``kernel_size=61, intensity=0.5``.  DPS and DAPS apply their kernel with
    ``nn.Conv2d``, a correlation: to reproduce a kernel ``k`` saved from their code,
    pass ``kernel=k.flip(0, 1)``.  The kernel is not separable: see :class:`Blur` for
    the regularised pseudo-inverse and the CG prox.
    """

    task = "motion_blur"

    def __init__(
        self,
        kernel_size: int = 61,
        intensity: float = 0.5,
        seed: int = 0,
        padding: str = "reflect",
        kernel: Tensor | None = None,
        rcond: float | None = None,
    ):
        self.explicit = kernel is not None
        if kernel is None:
            self.kernel_size = kernel_side("kernel_size", kernel_size)
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
