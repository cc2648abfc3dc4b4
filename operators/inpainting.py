"""Inpainting: a {0, 1} mask that keeps observed pixels and zeroes missing ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from operators.arguments import as_float, as_int
from operators.base import LinearOperator, _per_item, check_input
from operators.masks import MASK_KINDS, POSITIONS, _spatial, box_mask, load_mask, random_mask
from operators.registry import register
from operators.svd import SVD

__all__ = ["Inpainting", "MASK_KINDS", "POSITIONS", "PermutationSVD", "box_mask", "load_mask", "random_mask"]

def _as_mask_tensor(mask: Tensor) -> Tensor:
    """A user mask as a 4-D ``(b, c, H, W)`` bool tensor on the CPU, checked to hold only 0s and 1s."""
    if mask.ndim not in (2, 3, 4):
        raise ValueError(
            f"a mask must have shape (H, W), (C, H, W) or (B, C, H, W); got {tuple(mask.shape)}"
        )
    mask = mask.detach().cpu()
    if mask.dtype != torch.bool:
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("a mask must hold only 0 (missing) and 1 (observed)")
        mask = mask == 1
    while mask.ndim < 4:
        mask = mask.unsqueeze(0)
    return mask


@register("inpainting")
class Inpainting(LinearOperator):
    r"""Inpainting ``y = m \odot x`` with a {0, 1} mask ``m`` (1 = observed); missing pixels read 0.

    ``A`` is an orthogonal projection (``A = A^T = A^2``), so everything is closed
    form: ``adjoint(y) = pinv(y) = m y`` and
    ``prox(x0, y, rho) = (m y + rho x0) / (m + rho)``.  The exact SVD permutes
    each item's entries so that observed ones come first (a stable sort of the
    mask): singular values 1 on them and 0 on the rest.

    ``mask`` is one of

    * a tensor broadcastable to the images: ``(H, W)``, ``(1, H, W)``,
      ``(C, H, W)``, ``(1, 1, H, W)`` or per image ``(B, 1 or C, H, W)``.  A
      per-image mask applied to ``N = k B`` rows is tiled (row ``n`` uses mask
      ``n mod B``), matching how ``solve`` stacks ``num_samples`` copies;
    * ``"box"``: :func:`box_mask` with ``size``, ``position``, ``margin``;
    * ``"random"``: :func:`random_mask` with ``missing``;
    * a path to an image file: :func:`load_mask` with ``threshold``.

    Random masks and random box positions use a ``torch.Generator`` seeded by
    ``seed``.  ``"box"`` and ``"random"`` masks need the image size: give
    ``shape=(H, W)``, or leave it out and the mask is drawn at the first call,
    from that input's height and width, and then stays fixed (later inputs must
    have the same size).  Benchmarks: ``mask="box", size=128`` and
    ``mask="random", missing=0.7`` on 256 x 256 images.
    """

    has_svd = True
    kind = "inpainting"

    def __init__(
        self,
        mask: Tensor | str | Path,
        size: int | None = None,
        position: str | None = None,
        margin: int | None = None,
        missing: float | None = None,
        seed: int = 0,
        threshold: float | None = None,
        shape: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.seed = as_int("seed", seed)
        self._options = self._check_options(mask, size, position, margin, missing, threshold)
        if shape is not None and not (isinstance(mask, str) and mask in MASK_KINDS):
            raise ValueError(
                "shape applies only to mask='box' or mask='random'; a mask tensor or file has its own size"
            )
        self._masks: dict[tuple, Tensor] = {}
        self._mask: Tensor | None = None
        #: ``"box"``, ``"random"``, the mask file's path, or ``None`` for a mask tensor.
        self.source: str | None = None
        if isinstance(mask, Tensor):
            self._mask = _as_mask_tensor(mask)
        elif isinstance(mask, str) and mask in MASK_KINDS:
            self.source = mask
            if shape is not None:
                if not isinstance(shape, (tuple, list)) or len(shape) < 2:
                    raise ValueError(f"shape must be (H, W), got {shape!r}")
                self._build_mask(_spatial(tuple(shape)))
        else:
            self.source = str(mask)
            self._mask = _as_mask_tensor(load_mask(mask, **self._options))

    @staticmethod
    def _check_options(mask: Any, size, position, margin, missing, threshold) -> dict[str, Any]:
        given = {
            name: value
            for name, value in dict(
                size=size, position=position, margin=margin, missing=missing, threshold=threshold
            ).items()
            if value is not None
        }
        if isinstance(mask, Tensor):
            allowed: tuple[str, ...] = ()
        elif isinstance(mask, (str, Path)):
            kinds = {"box": ("size", "position", "margin"), "random": ("missing",)}
            allowed = kinds.get(mask, ("threshold",)) if isinstance(mask, str) else ("threshold",)
        else:
            raise TypeError(
                f"mask must be a tensor, 'box', 'random' or the path of a mask image; got {type(mask).__name__}"
            )
        extra = sorted(set(given) - set(allowed))
        if extra:
            kind = "a mask tensor" if isinstance(mask, Tensor) else f"mask={str(mask)!r}"
            raise ValueError(
                f"option(s) {', '.join(extra)} do not apply to {kind}; it takes {', '.join(allowed) or 'none'}"
            )
        if "position" in given and given["position"] not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {given['position']!r}")
        checks = {
            "size": lambda v: as_int("size", v, minimum=1),
            "margin": lambda v: as_int("margin", v, minimum=0),
            "missing": lambda v: as_float("missing", v, minimum=0.0, maximum=1.0),
            "threshold": lambda v: as_float("threshold", v, minimum=0.0, maximum=1.0),
        }
        return {name: checks[name](value) if name in checks else value for name, value in given.items()}

    def _build_mask(self, spatial: tuple[int, int]) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        if self.source == "box":
            options = {"size": 128, "position": "center", "margin": 16, **self._options}
            drawn = box_mask(spatial, generator=generator, **options)
        else:
            drawn = random_mask(spatial, generator=generator, **self._options)
        self._mask = _as_mask_tensor(drawn)

    @property
    def task(self) -> str:
        """``"box_inpainting"``, ``"random_inpainting"``, or ``"inpainting"`` for a given mask."""
        return f"{self.source}_inpainting" if self.source in MASK_KINDS else "inpainting"

    def mask_for(self, shape: tuple[int, ...]) -> Tensor:
        """The mask as a bool tensor broadcastable to images of ``shape`` (drawn now if lazy)."""
        if len(shape) != 4:
            raise ValueError(f"Inpainting takes image batches (B, C, H, W), got shape {tuple(shape)}")
        if self._mask is None:
            self._build_mask(_spatial(shape))
        mask = self._mask
        batch, channels, height, width = shape
        if tuple(mask.shape[-2:]) != (height, width):
            raise ValueError(
                f"the mask is {mask.shape[-2]}x{mask.shape[-1]} but the images are {height}x{width}; "
                "use a mask of the image size"
            )
        if mask.shape[1] not in (1, channels):
            raise ValueError(f"the mask has {mask.shape[1]} channels, the images {channels}")
        if batch % mask.shape[0]:
            raise ValueError(
                f"a batch of {mask.shape[0]} masks cannot be applied to {batch} images "
                "(the batch must be a multiple of the number of masks)"
            )
        return mask.repeat(batch // mask.shape[0], 1, 1, 1) if mask.shape[0] > 1 else mask

    def _cast(self, like: Tensor) -> Tensor:
        check_input(like, "Inpainting")
        mask = self.mask_for(tuple(like.shape))
        key = (tuple(mask.shape), like.device, like.dtype)
        if key not in self._masks:
            self._masks[key] = mask.to(device=like.device, dtype=like.dtype)
        return self._masks[key]

    @property
    def mask(self) -> Tensor | None:
        """The mask as a 4-D float tensor (``None`` while a lazy mask has not been drawn yet)."""
        return None if self._mask is None else self._mask.float()

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 4:
            raise ValueError(f"Inpainting takes image batches (B, C, H, W), got shape {tuple(shape)}")
        return tuple(shape)

    def input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.output_shape(shape)

    def forward(self, x: Tensor) -> Tensor:
        return x * self._cast(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return y * self._cast(y)

    def pinv(self, y: Tensor) -> Tensor:
        return y * self._cast(y)

    def prox(self, x0: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        mask = self._cast(y)
        rho = _per_item(rho, y)
        return (mask * y + rho * x0) / (mask + rho)

    def svd(self, x_shape: tuple[int, ...]) -> SVD:
        mask = self.mask_for(tuple(x_shape))
        full = mask.expand(mask.shape[0], *x_shape[1:]).flatten(1)
        return PermutationSVD(full, batched=self._mask.shape[0] > 1, shape=tuple(x_shape[1:]))

    def __repr__(self) -> str:
        options = "".join(f", {name}={value!r}" for name, value in self._options.items())
        if self.source in MASK_KINDS:
            return f"Inpainting(mask={self.source!r}{options}, seed={self.seed})"
        if self.source is not None:
            return f"Inpainting(mask={self.source!r}{options})"
        shape = "x".join(str(n) for n in self._mask.shape)
        return f"Inpainting(mask=<{shape}>, missing={1 - self._mask.float().mean().item():.3f})"


class PermutationSVD(SVD):
    """SVD of a {0, 1} diagonal operator: a per-item permutation putting kept entries first.

    ``V = U = P`` (the permutation that stably sorts the mask with ones first),
    singular values ``m[P]``: ones, then zeros.  ``full`` is the mask flattened to
    ``(b, n)``; ``b = 1`` (shared by all items: singular values ``(n,)``) or one
    row per item (singular values ``(b, n)``).  Singular values are returned in
    the default dtype on the CPU; cast them with ``.to(x)``.
    """

    def __init__(self, full: Tensor, batched: bool, shape: tuple[int, ...]):
        self.order = torch.argsort((~full).to(torch.uint8), dim=1, stable=True)
        self.inverse = torch.argsort(self.order, dim=1)
        sorted_mask = torch.gather(full, 1, self.order).to(torch.get_default_dtype())
        self._s = sorted_mask if batched else sorted_mask[0]
        self.shape = shape

    @property
    def singular_values(self) -> Tensor:
        return self._s

    def _index(self, index: Tensor, like: Tensor) -> Tensor:
        return index.to(like.device).expand(like.shape[0], -1)

    def Vt(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        return torch.gather(flat, 1, self._index(self.order, flat))

    def V(self, c: Tensor) -> Tensor:
        return torch.gather(c, 1, self._index(self.inverse, c)).reshape(c.shape[0], *self.shape)

    Ut = Vt
    U = V
