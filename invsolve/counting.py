"""Prior proxies that count network, decoder and encoder evaluations."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from priors.base import is_latent_prior


class CountingPrior:
    """Forwards everything to ``prior`` and counts items passed to ``denoise``.

    ``items / batch`` is the number of function evaluations (NFE) per solved sample.
    ``counting(prior)`` builds the right proxy for pixel and latent priors.
    """

    def __init__(self, prior: Any):
        self.prior = prior
        self.items = 0

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.items += x.shape[0]
        return self.prior.denoise(x, sigma)

    def denoise_with_variance(self, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
        self.items += x.shape[0]
        return self.prior.denoise_with_variance(x, sigma, sigma_next)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.prior, name)


class CountingLatentPrior(CountingPrior):
    """A :class:`CountingPrior` that also counts items through ``decode`` and ``encode``."""

    def __init__(self, prior: Any):
        super().__init__(prior)
        self.decoded = 0
        self.encoded = 0

    def decode(self, z: Tensor) -> Tensor:
        self.decoded += z.shape[0]
        return self.prior.decode(z)

    def encode(self, x: Tensor) -> Tensor:
        self.encoded += x.shape[0]
        return self.prior.encode(x)


def counting(prior: Any) -> CountingPrior:
    """A counting proxy of ``prior``; latent priors get decoder and encoder counts too."""
    return CountingLatentPrior(prior) if is_latent_prior(prior) else CountingPrior(prior)
