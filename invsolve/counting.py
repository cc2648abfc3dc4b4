"""A prior proxy that counts network evaluations."""

from __future__ import annotations

from typing import Any

from torch import Tensor


class CountingPrior:
    """Forwards everything to ``prior`` and counts items passed to ``denoise``.

    ``items / batch`` is the number of function evaluations (NFE) per solved sample.
    """

    def __init__(self, prior: Any):
        self.prior = prior
        self.items = 0

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.items += x.shape[0]
        return self.prior.denoise(x, sigma)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.prior, name)
