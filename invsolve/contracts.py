"""Run-time checks of the operator and prior contracts (:class:`operators.Operator`, :class:`priors.Prior`).

A user-written operator or prior that returns the wrong shape would otherwise be
broadcast silently into nonsense samples.  :func:`check_operator_output` calls the
operator once on the real batch before sampling; :func:`checked` wraps a prior so
that every ``denoise`` (and ``decode`` / ``encode`` of a latent prior) output is
checked where it happens.  Each failure is a ``ValueError`` / ``TypeError`` naming
the contract.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from priors.base import is_latent_prior


def _check_tensor(out: Any, what: str, contract: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(f"{what} returned {type(out).__name__}, not a torch.Tensor; {contract}")
    if not out.is_floating_point():
        raise TypeError(f"{what} returned dtype {out.dtype}; {contract} (a float tensor)")
    return out


class CheckedPrior:
    """Forwards everything to ``prior`` and checks that ``denoise(x, sigma)`` has ``x``'s shape."""

    def __init__(self, prior: Any):
        self.prior = prior

    def _name(self, method: str) -> str:
        return f"{type(self.prior).__name__}.{method}"

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        out = self.prior.denoise(x, sigma)
        contract = "a prior's denoise(x, sigma) must return a float tensor shaped like x (see priors.Prior)"
        _check_tensor(out, f"{self._name('denoise')}(x, sigma)", contract)
        if out.shape != x.shape:
            raise ValueError(
                f"{self._name('denoise')}(x, sigma) returned shape {tuple(out.shape)} for x of shape "
                f"{tuple(x.shape)}; {contract}"
            )
        if x.requires_grad and torch.is_grad_enabled() and not out.requires_grad:
            raise TypeError(
                f"{self._name('denoise')}(x, sigma) returned a tensor without a gradient for an x that needs one; "
                "methods such as dps backpropagate through denoise, so keep it differentiable "
                "(no .detach() or torch.no_grad() inside)"
            )
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.prior, name)


class CheckedLatentPrior(CheckedPrior):
    """A :class:`CheckedPrior` that also checks the batch axis of ``decode`` and ``encode``."""

    def _same_batch(self, out: Any, given: Tensor, method: str, contract: str) -> Tensor:
        what = f"{self._name(method)}({'z' if method == 'decode' else 'x'})"
        _check_tensor(out, what, contract)
        if out.ndim < 2 or out.shape[0] != given.shape[0]:
            raise ValueError(
                f"{what} returned shape {tuple(out.shape)} for an input of shape {tuple(given.shape)}; {contract}"
            )
        return out

    def decode(self, z: Tensor) -> Tensor:
        contract = "a latent prior's decode(z) must return pixels (N, C, H, W) for latents (N, ...) (see priors.LatentPrior)"
        return self._same_batch(self.prior.decode(z), z, "decode", contract)

    def encode(self, x: Tensor) -> Tensor:
        contract = "a latent prior's encode(x) must return latents (N, ...) for pixels (N, C, H, W) (see priors.LatentPrior)"
        return self._same_batch(self.prior.encode(x), x, "encode", contract)


def checked(prior: Any) -> CheckedPrior:
    """A checking proxy of ``prior``; latent priors get their ``decode`` / ``encode`` checked too."""
    return CheckedLatentPrior(prior) if is_latent_prior(prior) else CheckedPrior(prior)


def check_operator_output(
    operator: Any, x_shape: tuple[int, ...], y_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> None:
    """Call ``operator`` once on zeros of the real batch ``x_shape`` and compare with ``y_shape``.

    ``output_shape`` is what an operator declares; this catches a ``forward`` that
    returns another batch or shape (an operator must map ``(N, ...)`` to its declared
    ``(N, ...)`` for every ``N``, see ``operators.Operator``).
    """
    contract = "an operator must return its declared output_shape for every batch size (see operators.Operator)"
    with torch.no_grad():
        out = operator(torch.zeros(x_shape, device=device, dtype=dtype))
    name = type(operator).__name__
    if not isinstance(out, Tensor):
        raise TypeError(f"operator {name} returned {type(out).__name__}, not a torch.Tensor; {contract}")
    if tuple(out.shape) != tuple(y_shape):
        raise ValueError(
            f"operator {name} returned shape {tuple(out.shape)} for an input of shape {tuple(x_shape)}, "
            f"but declares {tuple(y_shape)}; {contract}"
        )
