"""Base of priors that wrap another prior."""

from __future__ import annotations

from typing import Any

import torch

from priors.base import Prior


class PriorWrapper(Prior):
    """A prior built around an inner prior ``self.prior``, whose network sets its device and dtype.

    Subclasses change ``denoise`` (clamping, tiling, ...) and keep the inner
    prior's placement, so ``solve()`` puts the sampler where the network runs, and
    its data range, ``clip_sample`` and timestep table (``sigmas``), so methods keep
    their official grids and clamping.
    """

    prior: Any

    @property
    def device(self) -> torch.device | None:
        return getattr(self.prior, "device", None)

    @property
    def dtype(self) -> torch.dtype | None:
        return getattr(self.prior, "dtype", None)

    @property
    def data_range(self) -> tuple[float, float] | None:
        return getattr(self.prior, "data_range", None)

    @property
    def clip_sample(self) -> bool:
        return bool(getattr(self.prior, "clip_sample", False))

    @property
    def sigmas(self) -> torch.Tensor | None:
        return getattr(self.prior, "sigmas", None)
