"""A prior wrapper that keeps the denoiser's output in the data range."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from priors.wrapper import PriorWrapper


class ClippedPrior(PriorWrapper):
    r"""A prior whose denoiser output is clamped to the data range ``[low, high]``.

    When the clean data lie in the box ``[low, high]^n`` (images in [-1, 1]), so does
    their posterior mean ``D(x, sigma) = E[x0 | x0 + sigma eps = x]``, a convex
    combination of data points; clamping is the projection onto that box and can
    only bring an imperfect denoiser closer to the true ``D`` (coordinate-wise).
    This is the ``clip_sample`` step of DDPM sampling (Ho et al., 2020, the
    reference implementation clips the predicted ``x0`` to [-1, 1]): epsilon-
    predicting networks are least accurate in ``x0`` at large ``sigma``, where an
    error ``delta`` in ``eps`` becomes ``sigma * delta`` in ``D``.  Gradients do not
    flow through clamped entries.

    ``sigma_max``, if given, lowers the largest noise level samplers start from
    (it must lie in the prior's range): for data in [-1, 1] a start at
    ``sigma = 10`` is already pure noise to within a few per cent of its variance,
    and it skips the levels where a briefly trained network is least accurate.  A
    discrete prior's timestep table (``sigmas``) is cut at that level, so methods
    with an official timestep spacing spread their steps over the levels that remain.
    The wrapper declares ``data_range = (low, high)`` and ``clip_sample = True``.

    Since every prior now declares its data range and methods clamp where their
    official code does (or where the prior's scheduler does), the wrapper is needed
    only for other ranges or a lower start (the demo's tuned settings).
    """

    def __init__(self, prior: Any, low: float = -1.0, high: float = 1.0, sigma_max: float | None = None):
        if not low < high:
            raise ValueError(f"the data range needs low < high, got [{low}, {high}]")
        if sigma_max is not None and not prior.sigma_min < sigma_max <= prior.sigma_max:
            raise ValueError(
                f"sigma_max must lie in ({prior.sigma_min:.3g}, {prior.sigma_max:.3g}], the prior's range; got {sigma_max}"
            )
        self.prior = prior
        self.low, self.high = float(low), float(high)
        self.sigma_min = prior.sigma_min
        self.sigma_max = prior.sigma_max if sigma_max is None else float(sigma_max)
        self.data_shape = getattr(prior, "data_shape", None)

    @property
    def data_range(self) -> tuple[float, float]:
        return (self.low, self.high)

    @property
    def clip_sample(self) -> bool:
        return True

    @property
    def sigmas(self) -> Tensor | None:
        table = getattr(self.prior, "sigmas", None)
        return None if table is None else table[table <= self.sigma_max * (1 + 1e-12)]

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.prior.denoise(x, sigma).clamp(self.low, self.high)

    @property
    def learned_variance(self) -> bool:
        return bool(getattr(self.prior, "learned_variance", False))

    def denoise_with_variance(self, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
        """The inner prior's clamped ``D`` and its learned step variance (see :class:`priors.vp.VPDenoiser`)."""
        denoised, variance = self.prior.denoise_with_variance(x, sigma, sigma_next)
        return denoised.clamp(self.low, self.high), variance
