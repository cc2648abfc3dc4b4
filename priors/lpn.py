r"""Learned proximal networks (Fang, Buchanan and Sulam, "What's in a Prior? Learned Proximal
Networks for Inverse Problems", ICLR 2024; official code ``ZhenghanFang/learned-proximal-networks``).

An LPN is the gradient of an input-convex potential, ``f = \nabla\psi``.  By Gribonval and
Nikolova (2020) a map is the proximal operator of some regulariser exactly when it is the
gradient of a convex function, so ``f = prox_R`` with

.. math::  R = \psi^* - \tfrac12\lVert\cdot\rVert^2, \qquad
           R(f(y)) = \langle y, f(y)\rangle - \tfrac12\lVert f(y)\rVert^2 - \psi(y),

and ``R(x)`` is evaluated by finding ``y`` with ``f(y) = x``: the minimiser of the convex
``\psi(y) - \langle x, y\rangle`` (the official ``lpn/utils/prior.py``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from priors.network_folder import build_network, read_config, save_network


class ConvexPotential(nn.Module):
    r"""An input-convex network ``\psi: (B, C, H, W) \to (B,)`` that takes any image size.

    .. math::
        z_1 &= s(V_0 x + b_0), \qquad
        z_{k+1} = s(W_k z_k + V_k x + b_k) \quad (k = 1, \dots, L-1), \\
        \psi(x) &= \textstyle\sum_{\text{pixels}} w^\top z_L + \tfrac{\alpha}{2}\lVert x\rVert^2,

    with ``W_k \ge 0`` and ``w \ge 0`` (:meth:`clamp_weights` after every optimiser step, as the
    official ``wclip``), ``V_k`` unconstrained (linear in ``x``), ``s`` the softplus with
    sharpness ``beta`` (convex, non-decreasing): every ``z_k`` is convex in ``x`` (Amos et al.,
    ICML 2017), so ``\psi`` is.  The layers are 3x3 convolutions with reflect padding (a linear
    map of ``x``, and a non-negative one of ``z``), dilated by ``dilations`` for a wide
    receptive field.  ``quadratic > 0`` adds a convex quadratic ``\tfrac12\lVert L x\rVert^2`` with ``L``
    an unconstrained ``quadratic_size`` convolution to ``quadratic`` channels, initialised so
    that ``f`` starts as the identity (its gradient ``L^\top L x`` is a learned linear, Wiener-like
    filter; not in the official network, added so that a short CPU training starts from a sensible
    map).  The potential sums over pixels rather than averaging, so ``f = \nabla\psi``
    acts on each pixel's neighbourhood the same way at any image size.  Official defaults:
    ``beta = 100``, ``alpha = 1e-6`` (``exps/celeba/configs/model.json``); the official 128x128
    network downsamples to one 1x1 feature instead.
    """

    def __init__(
        self,
        channels: int = 3,
        hidden: int = 32,
        dilations: tuple[int, ...] = (1, 2, 4, 8, 4, 2, 1),
        kernel_size: int = 3,
        beta: float = 100.0,
        alpha: float = 1e-6,
        quadratic: int = 0,
        quadratic_size: int = 5,
    ):
        super().__init__()
        self.arguments = {
            "channels": channels, "hidden": hidden, "dilations": list(dilations), "kernel_size": kernel_size,
            "beta": beta, "alpha": alpha, "quadratic": quadratic, "quadratic_size": quadratic_size,
        }
        self.kernel_size, self.dilations, self.beta, self.alpha = kernel_size, tuple(dilations), beta, alpha
        self.skips = nn.ModuleList(nn.Conv2d(channels, hidden, kernel_size, dilation=d) for d in self.dilations)
        self.hidden = nn.ModuleList(
            nn.Conv2d(hidden, hidden, kernel_size, dilation=d, bias=False) for d in self.dilations[1:]
        )
        self.out = nn.Conv2d(hidden, 1, 1, bias=False)
        self.quadratic = None
        if quadratic:
            self.quadratic = nn.Conv2d(channels, quadratic, quadratic_size, bias=False)
            with torch.no_grad():
                self.quadratic.weight.zero_()
                for c in range(min(channels, quadratic)):
                    self.quadratic.weight[c, c, quadratic_size // 2, quadratic_size // 2] = 1.0

    def constrained(self) -> list[nn.Parameter]:
        """The weights that must stay non-negative for convexity."""
        return [layer.weight for layer in self.hidden] + [self.out.weight]

    @torch.no_grad()
    def init_constrained(self, mean: float = -10.0, std: float = 0.1, generator: torch.Generator | None = None) -> None:
        """The official initialisation of the constrained weights: ``exp(N(mean, std^2))`` (``init_weights(-10, 0.1)``)."""
        for weight in self.constrained():
            weight.copy_(torch.randn(weight.shape, generator=generator).mul(std).add(mean).exp())

    @torch.no_grad()
    def clamp_weights(self) -> None:
        """Project the constrained weights onto the non-negative orthant."""
        for weight in self.constrained():
            weight.clamp_(min=0)

    def _pad(self, t: Tensor, dilation: int) -> Tensor:
        pad = dilation * (self.kernel_size // 2)
        return F.pad(t, (pad,) * 4, mode="reflect") if pad else t

    def forward(self, x: Tensor) -> Tensor:
        """``psi(x)`` per item, shape ``(B,)``."""
        reach = max(self.dilations) * (self.kernel_size // 2)
        if min(x.shape[-2:]) <= reach:
            raise ValueError(f"this LPN needs images larger than {reach}x{reach} pixels, got {tuple(x.shape[-2:])}")
        z = F.softplus(self.skips[0](self._pad(x, self.dilations[0])), beta=self.beta)
        for layer, skip, dilation in zip(self.hidden, self.skips[1:], self.dilations[1:]):
            z = F.softplus(layer(self._pad(z, dilation)) + skip(self._pad(x, dilation)), beta=self.beta)
        value = self.out(z).flatten(1).sum(1) + 0.5 * self.alpha * x.flatten(1).pow(2).sum(1)
        if self.quadratic is not None:
            pad = self.quadratic.kernel_size[0] // 2
            value = value + 0.5 * self.quadratic(F.pad(x, (pad,) * 4, mode="reflect")).flatten(1).pow(2).sum(1)
        return value


#: Potential classes a saved LPN folder may name.
ARCHITECTURES: dict[str, type[nn.Module]] = {"ConvexPotential": ConvexPotential}


def potential_gradient(potential: nn.Module, x: Tensor, create_graph: bool = False) -> Tensor:
    """``grad psi(x)``, per item; ``create_graph`` keeps the graph for training through it."""
    with torch.enable_grad():
        inputs = x if x.requires_grad else x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(potential(inputs).sum(), inputs, create_graph=create_graph)
    return grad


class LPNPrior:
    r"""A learned proximal network as a prior: ``prox(x) = \nabla\psi(x)`` (prior kind ``"proximal"``).

    **Contract.** ``potential`` is any ``nn.Module`` mapping ``(B, C, H, W)`` images in [-1, 1]
    to ``(B,)`` values, convex in its input (e.g. :class:`ConvexPotential`); ``noise_sigma``
    is the Gaussian noise level (on [-1, 1]) it was trained to remove, for the record.
    Methods that need a proximal operator (``pnp_admm``) accept it; methods that need a
    diffusion denoiser refuse it.  ``regulariser(x)`` evaluates the ``R`` with
    ``prox = prox_R``, up to an additive constant.
    """

    prior_kind = "proximal"
    data_shape = None
    data_range = None

    def __init__(self, potential: nn.Module, noise_sigma: float | None = None):
        if not isinstance(potential, nn.Module):
            raise TypeError(f"potential must be a torch.nn.Module mapping images to (B,) values, got {type(potential).__name__}")
        self.potential = potential
        self.noise_sigma = noise_sigma

    @property
    def device(self) -> torch.device | None:
        return next(self.potential.parameters()).device

    @property
    def dtype(self) -> torch.dtype | None:
        return next(self.potential.parameters()).dtype

    def psi(self, x: Tensor) -> Tensor:
        """The convex potential per item, ``(B,)``."""
        return self.potential(x.to(self.dtype))

    def prox(self, x: Tensor) -> Tensor:
        """``f(x) = grad psi(x) = prox_R(x)`` (no graph is kept)."""
        return potential_gradient(self.potential, x.to(self.dtype)).detach().to(x.dtype)

    def invert(self, x: Tensor, iterations: int = 200, tolerance: float = 1e-7) -> Tensor:
        """``y`` with ``f(y) = x``: L-BFGS on the convex ``psi(y) - <x, y>`` from ``y = x`` (official: Adam
        from 0 in ``invert_cvx_gd.py``; L-BFGS with a line search reaches the same minimiser faster)."""
        x = x.detach().to(self.dtype)
        y = x.clone().requires_grad_(True)
        optimiser = torch.optim.LBFGS(
            [y], max_iter=iterations, tolerance_grad=tolerance, tolerance_change=0, line_search_fn="strong_wolfe"
        )

        def objective() -> Tensor:
            optimiser.zero_grad()
            value = (self.potential(y) - (x * y).flatten(1).sum(1)).sum()
            value.backward()
            return value

        with torch.enable_grad():
            optimiser.step(objective)
        return y.detach()

    def regulariser(self, x: Tensor, iterations: int = 200) -> Tensor:
        r"""``R(x) = <y, x> - ||x||^2 / 2 - psi(y)`` with ``f(y) = x`` (per item, ``(B,)``); ``R`` is defined
        up to a constant, and only on the range of ``f``, where the inversion converges."""
        y = self.invert(x, iterations)
        x = x.to(self.dtype)
        with torch.no_grad():
            return (y * x).flatten(1).sum(1) - 0.5 * x.flatten(1).pow(2).sum(1) - self.potential(y)

    def save(self, folder: str | os.PathLike, **card: Any) -> None:
        """Write the LPN folder (``config.json`` + ``model.safetensors``); ``card`` adds fields to the config."""
        save_network(folder, self.potential, {
            "invsolve_prior": "lpn", "arguments": getattr(self.potential, "arguments", {}),
            "noise_sigma": self.noise_sigma, **card,
        })

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> LPNPrior:
        """Load a folder written by :meth:`save`."""
        config = read_config(folder)
        if config is None or config["invsolve_prior"] != "lpn":
            raise ValueError(f"{folder} is not an LPN folder (config.json with \"invsolve_prior\": \"lpn\")")
        return cls(build_network(folder, config, ARCHITECTURES, device, dtype), config.get("noise_sigma"))

    def __repr__(self) -> str:
        return f"LPNPrior({type(self.potential).__name__}, noise_sigma={self.noise_sigma})"
