"""Forward-only operators: simulators and other callables without derivatives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from operators.base import Operator


class _NoDerivative(torch.autograd.Function):
    """Evaluates a black box; backpropagating through it raises instead of returning zeros."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, evaluate: Callable[[Tensor], Tensor]) -> Tensor:
        return evaluate(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> None:
        raise RuntimeError(
            "a BlackBox operator has no derivative: use a derivative-free method "
            "(method='enkg'), or wrap a differentiable torch function with "
            "operators.FunctionOperator instead"
        )


class BlackBox(Operator):
    """A forward model ``y = G(x)`` known only through evaluations of a callable.

    ``fn`` maps a batch ``(N, *item_shape)`` to ``(N, *output_item_shape)``.  It may be

    * a torch function (``numpy=False``): it receives a detached tensor under
      ``torch.no_grad()``, on the input's device and dtype;
    * a NumPy function (``numpy=True``): it receives a NumPy array on the CPU;
      its result is converted back to a tensor on the input's device and dtype.

    No derivative is ever taken: ``forward_only`` is set, so ``capabilities`` is
    ``{"forward"}`` and :func:`invsolve.solve` rejects methods that need
    gradients (``vjp``), adjoints or pseudo-inverses before any work, naming the
    methods that work (derivative-free ones such as ``enkg``, Zheng et al. 2024).
    Calling the operator on a tensor that requires grad is allowed, but
    backpropagating through the result raises a ``RuntimeError`` rather than
    silently contributing a zero gradient.

    ``output_shape`` is the shape of one output item (without the batch axis), or a
    callable mapping the full input shape (batch included) to the full output
    shape.  When omitted, it is inferred by evaluating ``fn`` once on a single
    all-zero item for each distinct item shape (cached); that evaluation counts in
    ``forward_calls``, so for an expensive simulator pass ``output_shape``.
    ``output_in_image_range`` says whether outputs of images in [-1, 1] stay in
    [-1, 1] (default ``False``: no range check on measurements).
    """

    forward_only = True

    def __init__(
        self,
        fn: Callable[[Any], Any],
        output_shape: tuple[int, ...] | Callable[[tuple[int, ...]], tuple[int, ...]] | None = None,
        numpy: bool = False,
        output_in_image_range: bool = False,
        kind: str = "blackbox",
    ):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"BlackBox needs a callable, got {type(fn).__name__}")
        if output_shape is not None and not callable(output_shape):
            output_shape = tuple(int(n) for n in output_shape)
        self.fn = fn
        self.numpy = numpy
        self.output_in_image_range = output_in_image_range
        self.kind = kind
        self._output_shape = output_shape
        self._inferred: dict[tuple[int, ...], tuple[int, ...]] = {}

    def _evaluate(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            x = x.detach()
            if self.numpy:
                host = x.cpu() if x.dtype not in (torch.float16, torch.bfloat16) else x.float().cpu()
                out = torch.as_tensor(np.asarray(self.fn(host.numpy())))
            else:
                out = self.fn(x)
                if not isinstance(out, Tensor):
                    out = torch.as_tensor(np.asarray(out))
            out = out.to(device=x.device, dtype=x.dtype)
        if out.ndim == 0 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"the BlackBox function returned shape {tuple(out.shape)} for a batch of {x.shape[0]}: "
                "it must map (N, ...) inputs to (N, ...) outputs, one output per item"
            )
        return out

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _NoDerivative.apply(x, self._evaluate)
        return self._evaluate(x)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(shape)
        if callable(self._output_shape):
            return tuple(self._output_shape(shape))
        if self._output_shape is not None:
            return (shape[0], *self._output_shape)
        item = shape[1:]
        if item not in self._inferred:
            self.forward_calls += 1
            self._inferred[item] = tuple(self._evaluate(torch.zeros(1, *item)).shape[1:])
        return (shape[0], *self._inferred[item])

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"BlackBox({name}, numpy={self.numpy})"
