"""Base of priors that wrap another prior."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from priors.base import Prior


class PriorWrapper(Prior):
    """A prior built around an inner prior ``self.prior``, whose network sets its device and dtype.

    Subclasses change ``denoise`` (clamping, tiling, ...) and keep the inner
    prior's placement, so ``solve()`` puts the sampler where the network runs, and
    its data range, ``clip_sample``, timestep table (``sigmas``) and flow grid (``flow_times``),
    so methods keep their official grids and clamping.
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

    @property
    def flow_times(self) -> Callable[[int], list[float]] | None:
        """A flow prior's scheduler grid (``None`` for other priors, which get the uniform grid)."""
        return getattr(self.prior, "flow_times", None)


class LatentPriorWrapper(PriorWrapper):
    """A :class:`PriorWrapper` around a latent prior: ``encode``, ``decode``, ``latent_shape`` and
    the text conditioning (``text_conditioned``, ``set_prompt``) are the inner prior's.  Put it
    before the wrapper that changes ``denoise`` (``class TiledLatent(LatentPriorWrapper, Tiled)``)."""

    @property
    def text_conditioned(self) -> bool:
        return bool(getattr(self.prior, "text_conditioned", False))

    def set_prompt(self, prompt: str = "", guidance_scale: float = 1.0) -> None:
        if not hasattr(self.prior, "set_prompt"):
            raise ValueError(f"{type(self.prior).__name__} takes no text prompt")
        self.prior.set_prompt(prompt, guidance_scale)

    def encode(self, x: Tensor) -> Tensor:
        return self.prior.encode(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.prior.decode(z)

    def latent_shape(self, pixel_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.prior.latent_shape(pixel_shape)
