"""Tiled denoising with a shifted tile grid: any image size with a fixed-size prior."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint
from einops import rearrange
from torch import Tensor

from priors.base import is_latent_prior, is_prior
from priors.wrapper import LatentPriorWrapper, PriorWrapper

#: Tile side used when neither ``tile`` nor the inner prior's ``data_shape`` gives one.
DEFAULT_TILE = 256
#: Inner-denoiser calls see at most this many tiles unless ``batch_size`` says otherwise.
DEFAULT_BATCH_SIZE = 8


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")
    return pair


def ramp_window(tile: int, overlap: int) -> Tensor:
    r"""The 1-D blending window of a tile: raised-cosine ramps of ``overlap`` pixels, 1 between.

    ``w(i) = sin^2(pi (i + 1/2) / (2 overlap))`` for ``i < overlap``, mirrored at the
    other end.  It is positive everywhere, and the ramp-down of a tile and the
    ramp-up of the next (``tile - overlap`` pixels further) sum to ``cos^2 + sin^2 = 1``.
    """
    window = torch.ones(tile, dtype=torch.float64)
    if overlap:
        ramp = torch.sin(math.pi * (torch.arange(overlap, dtype=torch.float64) + 0.5) / (2 * overlap)) ** 2
        window[:overlap] = ramp
        window[tile - overlap :] = ramp.flip(0)
    return window


def mirror_indices(start: int, length: int, size: int) -> Tensor:
    """Source indices of positions ``start .. start + length - 1`` of an axis of ``size``
    extended by whole-sample symmetric reflection (``torch.nn.functional.pad``'s
    ``"reflect"``, repeated as often as needed, so any padding length works)."""
    positions = torch.arange(start, start + length)
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    positions = positions.remainder(period)
    return torch.where(positions >= size, period - positions, positions)


@dataclass(frozen=True)
class TileAxis:
    """Where the tiles lie along one axis of ``size`` pixels.

    The padded axis starts ``before`` pixels ahead of the image (the grid offset) and
    holds ``count`` tiles of ``tile`` pixels, ``tile - overlap`` apart, that cover
    the image; ``total`` is the padded length.
    """

    size: int
    tile: int
    overlap: int
    before: int

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def count(self) -> int:
        return max(1, math.ceil((self.before + self.size - self.tile) / self.stride) + 1)

    @property
    def total(self) -> int:
        return (self.count - 1) * self.stride + self.tile

    def starts(self) -> Tensor:
        return torch.arange(self.count) * self.stride

    def sources(self) -> Tensor:
        return mirror_indices(-self.before, self.total, self.size)

    def weight_sum(self, window: Tensor) -> Tensor:
        """Sum over tiles of the window placed at each tile, along the padded axis."""
        positions = (self.starts()[:, None] + torch.arange(self.tile)).flatten()
        return torch.zeros(self.total, dtype=window.dtype).index_add_(0, positions, window.repeat(self.count))


class Tiled(PriorWrapper):
    r"""A prior evaluated on overlapping, shifted tiles: any image size, bounded memory.

    ``denoise(x, sigma)`` extends ``x`` (N, C, H, W) by symmetric reflection so that a
    grid of ``tile``-sized tiles, ``tile - overlap`` apart, covers it; runs the inner
    prior on batches of at most ``batch_size`` tiles (each tile keeps the ``sigma`` of
    its image row); and blends the tile outputs with separable raised-cosine windows
    ``w`` (see :func:`ramp_window`), normalised by their sum:

    .. math::
        D(x, \sigma)(p) = \frac{\sum_k w_k(p)\, D_{inner}(P_k x, \sigma)(p)}{\sum_k w_k(p)}

    with ``P_k`` the crop to tile ``k`` (a weighted average of overlapping tile
    predictions, as in MultiDiffusion, Bar-Tal et al., ICML 2023).  The windows are
    positive everywhere, so the normalisation never divides by zero, and in the image
    interior they sum to 1.  At each call the grid is shifted by a random offset in
    ``[0, tile - overlap)`` per axis, so tile borders never stay in place across
    sampler steps (the shifted partitions of Mask-Shift Restoration, Wang, Yu, Yu and
    Zhang, "Unlimited-Size Diffusion Restoration", arXiv:2303.00354, 2023);
    ``shift=False`` keeps the grid at the image's top-left corner.  Axes shorter than a
    tile are reflected up to the tile size and cropped back.

    Determinism: the offsets come from a CPU ``torch.Generator`` owned by the wrapper,
    seeded with ``seed`` at construction and again by :meth:`reseed` (``solve()``
    reseeds it with its own seed); the same seed and the same sequence of calls give
    the same offsets and hence the same results.  ``last_offsets`` holds the offsets
    of the latest call: the grid starts that many pixels above and left of the image.

    ``tile`` defaults to the inner prior's ``data_shape`` (which it must match when
    the inner prior has one), else 256; ``overlap`` defaults to a quarter of the tile
    and is at most half of it.  The wrapper takes any size (``data_shape = None``)
    and keeps ``sigma_min``, ``sigma_max``, ``device`` and ``dtype`` of the inner
    prior.  Memory beyond the image itself is bounded by one batch of tiles, also
    when a sampler backpropagates through the denoiser: with ``checkpoint=True``
    (default) each batch's network activations are dropped after the forward pass
    and recomputed during the backward pass (gradient checkpointing, Chen et al.
    2016), at the price of one more network evaluation per tile.  A latent prior
    gives a :class:`TiledLatent`, which tiles in latent space.
    """

    data_shape = None

    def __new__(cls, prior: Any, *args: Any, **kwargs: Any) -> Tiled:
        if cls is Tiled and is_latent_prior(prior):
            cls = TiledLatent
        return super().__new__(cls)

    def __init__(
        self,
        prior: Any,
        tile: int | tuple[int, int] | None = None,
        overlap: int | tuple[int, int] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        shift: bool = True,
        seed: int = 0,
        checkpoint: bool = True,
    ):
        if not is_prior(prior):
            raise TypeError(
                f"{type(prior).__name__} is not a prior: Tiled wraps an object with denoise(x, sigma), "
                "sigma_min and sigma_max"
            )
        inner_shape = getattr(prior, "data_shape", None)
        if inner_shape is not None and len(inner_shape) != 3:
            raise ValueError(
                f"Tiled wraps image priors with data_shape (C, H, W); this prior models data of shape "
                f"{tuple(inner_shape)}"
            )
        if tile is None:
            tile = (int(inner_shape[1]), int(inner_shape[2])) if inner_shape is not None else DEFAULT_TILE
        self.tile = _pair(tile, "tile")
        if inner_shape is not None and self.tile != tuple(inner_shape[1:]):
            raise ValueError(
                f"tile {self.tile} differs from the prior's image size {tuple(inner_shape[1:])}; "
                "leave tile=None to use the prior's size"
            )
        if min(self.tile) < 1:
            raise ValueError(f"tile must be positive, got {self.tile}")
        if overlap is None:
            overlap = (self.tile[0] // 4, self.tile[1] // 4)
        self.overlap = _pair(overlap, "overlap")
        if any(o < 0 or 2 * o > t for o, t in zip(self.overlap, self.tile)):
            raise ValueError(f"overlap must lie between 0 and half the tile {self.tile}, got {self.overlap}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.prior = prior
        self.batch_size = batch_size
        self.shift = bool(shift)
        self.checkpoint = bool(checkpoint)
        self.channels = inner_shape[0] if inner_shape is not None else getattr(prior, "channels", None)
        self.sigma_min = prior.sigma_min
        self.sigma_max = prior.sigma_max
        self.last_offsets: tuple[int, int] | None = None
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the sequence of grid offsets from ``seed``."""
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    def options(self) -> dict[str, Any]:
        """The tiling settings, as recorded in ``Result.options["tiling"]``."""
        return {
            "tile": list(self.tile),
            "overlap": list(self.overlap),
            "batch_size": self.batch_size,
            "shift": self.shift,
            "seed": self.seed,
            "checkpoint": self.checkpoint,
        }

    def _next_offsets(self) -> tuple[int, int]:
        if not self.shift:
            return (0, 0)
        strides = [t - o for t, o in zip(self.tile, self.overlap)]
        return tuple(int(torch.randint(0, s, (1,), generator=self._generator)) for s in strides)

    def _check_input(self, x: Tensor, sigma: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise ValueError(f"Tiled denoises images (N, C, H, W), got shape {tuple(getattr(x, 'shape', ()))}")
        if self.channels is not None and x.shape[1] != self.channels:
            raise ValueError(f"the prior expects {self.channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
        return sigma

    def _denoise_tiles(self, tiles: Tensor, sigma: Tensor) -> Tensor:
        if self.checkpoint and torch.is_grad_enabled() and (tiles.requires_grad or sigma.requires_grad):
            return torch.utils.checkpoint.checkpoint(self.prior.denoise, tiles, sigma, use_reentrant=False)
        return self.prior.denoise(tiles, sigma)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = self._check_input(x, sigma)
        self.last_offsets = self._next_offsets()
        rows, cols = (
            TileAxis(size, tile, overlap, offset)
            for size, tile, overlap, offset in zip(x.shape[-2:], self.tile, self.overlap, self.last_offsets)
        )
        device = x.device
        padded = x.index_select(2, rows.sources().to(device)).index_select(3, cols.sources().to(device))
        padded = rearrange(padded, "n c h w -> n h w c")
        window_rows, window_cols = ramp_window(rows.tile, rows.overlap), ramp_window(cols.tile, cols.overlap)
        window = (window_rows[:, None, None] * window_cols[None, :, None]).to(device, x.dtype)

        per_image = rows.count * cols.count
        items = torch.arange(x.shape[0] * per_image, device=device)
        image_of, tile_of = items // per_image, items % per_image
        tops = rows.starts().to(device)[tile_of // cols.count]
        lefts = cols.starts().to(device)[tile_of % cols.count]
        row_offsets = torch.arange(rows.tile, device=device)
        col_offsets = torch.arange(cols.tile, device=device)
        blended = torch.zeros_like(padded)
        for chunk in items.split(self.batch_size):
            image = image_of[chunk][:, None, None]
            r = (tops[chunk][:, None] + row_offsets)[:, :, None]
            c = (lefts[chunk][:, None] + col_offsets)[:, None, :]
            tiles = rearrange(padded[image, r, c], "t h w c -> t c h w").contiguous()
            denoised = self._denoise_tiles(tiles, sigma[image_of[chunk]])
            blended.index_put_((image, r, c), rearrange(denoised, "t c h w -> t h w c") * window, accumulate=True)

        height, width = x.shape[-2:]
        top, left = rows.before, cols.before
        weight = rows.weight_sum(window_rows)[top : top + height, None] * cols.weight_sum(window_cols)[left : left + width]
        out = blended[:, top : top + height, left : left + width] / weight.to(device, x.dtype)[..., None]
        return rearrange(out, "n h w c -> n c h w")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.prior!r}, tile={self.tile}, overlap={self.overlap}, "
            f"batch_size={self.batch_size}, shift={self.shift}, seed={self.seed})"
        )


class TiledLatent(LatentPriorWrapper, Tiled):
    """:class:`Tiled` around a latent prior: tiles in latent space (``tile`` in latent
    pixels), with ``encode``, ``decode``, ``latent_shape`` and the text conditioning
    (``text_conditioned``, ``set_prompt``) of the inner prior."""
