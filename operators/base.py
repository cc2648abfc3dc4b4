"""Forward-operator contracts.

An :class:`Operator` maps an image (or vector) ``x`` to a measurement ``A(x)``.
``op(x)`` is noiseless and differentiable; ``op.measure(x, noise_sigma)`` adds
the noise model.  A :class:`LinearOperator` adds the adjoint, a pseudo-inverse,
a proximal (normal-equation) solve and, where it is cheap, an exact SVD.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from operators.conjugate_gradient import conjugate_gradient
from operators.svd import SVD

NOISE_MODELS = ("gaussian", "poisson")


def check_input(x: Any, what: str = "the operator") -> None:
    """Refuse what no operator can take, with one line that says what to do.

    ``x`` must be a floating-point (or complex) tensor with a non-empty batch axis:
    integer and bool images raise ``TypeError`` (pixels must first be mapped to the
    [-1, 1] model range), anything else that is not a tensor too, and an empty batch
    raises ``ValueError``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{what} takes a torch.Tensor, got {type(x).__name__}; convert images with "
            "invsolve.io.to_model_range (or torch.as_tensor for other data)"
        )
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(
            f"{what} takes floating-point tensors on the [-1, 1] model scale, got dtype {x.dtype}; "
            "convert images with invsolve.io.to_model_range"
        )
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{what} got an empty batch (shape {tuple(x.shape)}); pass at least one item")


def check_noise_sigma(noise_sigma: Any, name: str = "noise_sigma") -> float:
    """``noise_sigma`` as a finite ``float`` >= 0: a number or a one-element tensor; text,
    booleans, NaN, infinities and negative values are refused."""
    if isinstance(noise_sigma, Tensor) and noise_sigma.numel() == 1:
        noise_sigma = noise_sigma.item()
    if isinstance(noise_sigma, bool) or not isinstance(noise_sigma, numbers.Real):
        raise TypeError(f"{name} must be a number (a standard deviation on the [-1, 1] scale), got {noise_sigma!r}")
    value = float(noise_sigma)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (a standard deviation on the [-1, 1] scale), got {value}")
    return value


class Operator(ABC):
    """A forward model ``y = A(x) + n``.

    ``__call__`` is noiseless and differentiable through autograd (unless
    ``forward_only`` is set, as for black-box simulators).  ``measure`` adds
    noise whose standard deviation ``noise_sigma`` is on the [-1, 1] image scale:

    * ``"gaussian"``: ``y = A(x) + noise_sigma * eps``.
    * ``"poisson"``: photon counts on the [0, 1] scale with peak
      ``4 / noise_sigma^2`` counts, so that a full-brightness pixel has standard
      deviation ``noise_sigma`` on the [-1, 1] scale:
      ``y01 = Poisson(peak * (A(x) + 1) / 2) / peak``, ``y = 2 y01 - 1``.

    Subclasses implement :meth:`forward` and :meth:`output_shape`.
    """

    #: ``True`` for operators that cannot be differentiated (black boxes).
    forward_only: bool = False
    #: ``True`` when the noiseless output of an image in [-1, 1] stays in [-1, 1]
    #: (blur, masks, resampling); used to catch images on the wrong scale.
    output_in_image_range: bool = True
    #: a short tag used by methods to pick paper defaults ("blur", "inpainting", ...).
    kind: str = "generic"

    @property
    def task(self) -> str:
        """The benchmark task this operator is, finer than ``kind`` where papers set
        different defaults per task: ``"gaussian_blur"``, ``"motion_blur"``,
        ``"box_inpainting"``, ``"random_inpainting"``, ...; ``kind`` otherwise."""
        return self.kind

    def __init__(self) -> None:
        self.forward_calls = 0

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Noiseless ``A(x)``."""

    @abstractmethod
    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of ``A(x)`` for an input of shape ``shape`` (batch included)."""

    def input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """Shape of ``x`` that produces a measurement of shape ``shape``, if implied."""
        return None

    def __call__(self, x: Tensor) -> Tensor:
        check_input(x, type(self).__name__)
        self.forward_calls += x.shape[0]
        return self.forward(x)

    @property
    def capabilities(self) -> frozenset[str]:
        """What methods may use: ``forward`` always, ``vjp`` unless forward-only."""
        return frozenset({"forward"} if self.forward_only else {"forward", "vjp"})

    def measure(
        self,
        x: Tensor,
        noise_sigma: float = 0.0,
        generator: torch.Generator | None = None,
        noise: str = "gaussian",
    ) -> Tensor:
        """Simulate a noisy measurement of ``x`` (no gradient)."""
        if noise not in NOISE_MODELS:
            raise ValueError(f"unknown noise model {noise!r}; choose one of {NOISE_MODELS}")
        noise_sigma = check_noise_sigma(noise_sigma)
        check_input(x, f"{type(self).__name__}.measure")
        with torch.no_grad():
            y = self.forward(x)
            if noise_sigma == 0:
                return y
            if noise == "gaussian":
                eps = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
                return y + noise_sigma * eps
            peak = 4.0 / noise_sigma**2
            rate = (peak * (y + 1) / 2).clamp_min(0)
            counts = torch.poisson(rate, generator=generator)
            return 2 * counts / peak - 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearOperator(Operator):
    """A linear operator ``A`` with adjoint, pseudo-inverse and proximal solve.

    Defaults that subclasses override where a closed form exists:

    * ``adjoint(y)``: the vector-Jacobian product of ``forward`` (exact for any
      linear ``forward`` written in differentiable torch ops);
    * ``pinv(y)``: the minimum-norm least-squares solution ``A^+ y`` by conjugate
      gradients on ``A A^T u = y``, ``x = A^T u``;
    * ``prox(x0, y, rho)``: ``argmin_x ||y - A x||^2 + rho ||x - x0||^2``, i.e.
      ``(A^T A + rho I) x = A^T y + rho x0``, by conjugate gradients;
    * ``svd(x_shape)``: ``None`` unless ``has_svd``.

    ``cg_iterations`` and ``cg_tolerance`` control the iterative fallbacks.
    """

    has_svd: bool = False
    cg_iterations: int = 50
    cg_tolerance: float = 1e-6

    @property
    def capabilities(self) -> frozenset[str]:
        caps = set(super().capabilities) | {"adjoint", "pinv", "prox"}
        if self.has_svd:
            caps.add("svd")
        return frozenset(caps)

    @abstractmethod
    def input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of ``x`` for a measurement of shape ``shape``."""

    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y``, by autograd's vector-Jacobian product of :meth:`forward`."""
        x = torch.zeros(self.input_shape(tuple(y.shape)), device=y.device, dtype=y.dtype)
        with torch.enable_grad():
            x.requires_grad_(True)
            (grad,) = torch.autograd.grad(self.forward(x), x, grad_outputs=y)
        return grad.detach()

    def normal(self, x: Tensor) -> Tensor:
        """``A^T A x``."""
        return self.adjoint(self.forward(x))

    def pinv(self, y: Tensor) -> Tensor:
        """Minimum-norm least-squares ``A^+ y`` (conjugate gradients on ``A A^T``)."""
        u = conjugate_gradient(
            lambda v: self.forward(self.adjoint(v)), y, self.cg_iterations, self.cg_tolerance
        )
        return self.adjoint(u)

    def prox(self, x0: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        """``argmin_x ||y - A x||^2 + rho ||x - x0||^2`` (``rho`` > 0, scalar or per item)."""
        rho = _per_item(rho, x0)
        rhs = self.adjoint(y) + rho * x0
        return conjugate_gradient(
            lambda v: self.normal(v) + rho * v, rhs, self.cg_iterations, self.cg_tolerance, x0=x0
        )

    def svd(self, x_shape: tuple[int, ...]) -> SVD | None:
        """Exact SVD for inputs of shape ``x_shape``, or ``None`` when not cheap."""
        return None


def _per_item(value: float | Tensor, like: Tensor) -> Tensor:
    """Broadcast a scalar or a ``(B,)`` tensor against a batch ``like``."""
    value = torch.as_tensor(value, device=like.device, dtype=like.dtype)
    if value.ndim == 1:
        value = value.reshape(-1, *([1] * (like.ndim - 1)))
    return value


class FunctionOperator(Operator):
    """Wrap a differentiable torch callable ``fn(x) -> y`` as an :class:`Operator`.

    ``output_shape`` maps an input shape to the output shape; without it one call
    of ``fn`` on zeros of ``probe_dtype`` (default: torch's default dtype) finds it.
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        output_shape: Callable | None = None,
        probe_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.fn = fn
        self._output_shape = output_shape
        self.probe_dtype = probe_dtype
        self.output_in_image_range = False

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self._output_shape is not None:
            return tuple(self._output_shape(shape))
        with torch.no_grad():
            return tuple(self.fn(torch.zeros(shape, dtype=self.probe_dtype)).shape)
