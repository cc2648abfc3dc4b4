"""The method contract: a small dataclass per method plus the problem it runs on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from invsolve.schedules import karras_sigmas

_METHODS: dict[str, type["Method"]] = {}


@dataclass
class Problem:
    """Everything a method sees: the measurement and the parts of the model.

    ``y`` holds ``num_samples`` copies of the measurement batch stacked along the
    first axis (``N = num_samples * B`` rows); ``x_shape`` is the shape of the
    unknown for those ``N`` rows, in pixels (latent methods map it with
    ``prior.latent_shape``).  ``noise_sigma`` is on the [-1, 1] scale.
    """

    y: Tensor
    operator: Any
    prior: Any
    x_shape: tuple[int, ...]
    noise_sigma: float
    steps: int
    generator: torch.Generator
    callback: Callable[[dict], None] | None = None
    progress: bool = False

    def randn(self, shape: tuple[int, ...] | None = None) -> Tensor:
        """Standard normal noise from the problem's generator (default shape: ``x_shape``)."""
        shape = self.x_shape if shape is None else shape
        return torch.randn(shape, generator=self.generator, device=self.y.device, dtype=self.y.dtype)

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``D(x, sigma)`` with a scalar or per-row ``sigma``."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        return self.prior.denoise(x, sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma)

    def sigmas(self, steps: int | None = None, rho: float = 7.0) -> list[float]:
        """The EDM grid between the prior's ``sigma_min`` and ``sigma_max``, ending at 0."""
        grid = karras_sigmas(steps or self.steps, self.prior.sigma_min, self.prior.sigma_max, rho)
        return grid.tolist()

    def iterate(self, items: Iterable, desc: str) -> Iterable:
        """``items`` with a progress bar when ``progress`` is on."""
        return tqdm(items, desc=desc, disable=not self.progress, leave=False, dynamic_ncols=True)

    def report(self, step: int, sigma: float, x: Tensor, denoised: Tensor) -> None:
        """Hand the current state to the user's callback, if any."""
        if self.callback is not None:
            self.callback({"step": step, "sigma": sigma, "x": x, "denoised": denoised})


@dataclass
class Method:
    """Base class of every sampler.

    Subclasses are dataclasses whose fields are the hyperparameters, with the
    paper defaults; ``needs`` lists capabilities of the operator (``forward``,
    ``vjp``, ``adjoint``, ``pinv``, ``prox``, ``svd``) and prior (``pixel``,
    ``latent``) the method requires, ``"a|b"`` meaning either; ``default_steps``
    is the paper's step count.  ``run`` returns the ``N`` restorations.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    default_steps: ClassVar[int] = 100
    summary: ClassVar[str] = ""

    def resolved(self, problem: Problem) -> "Method":
        """A copy with defaults that depend on the problem filled in (default: ``self``)."""
        return self

    def run(self, problem: Problem) -> Tensor:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    _METHODS[cls.name] = cls
    return cls


def registered() -> dict[str, type[Method]]:
    return dict(_METHODS)
