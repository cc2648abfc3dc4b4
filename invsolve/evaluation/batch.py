"""Batched evaluation: groups of images solved in one ``solve()`` call, and their joint operator."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch

from operators import Inpainting

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive runs of at most ``size`` items, in order."""
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


class StackedInpainting(Inpainting):
    """The per-image masks of several :class:`operators.Inpainting` operators as one batched operator.

    Row ``n`` of a batch of ``N = k B`` rows uses mask ``n % B`` (the layout of
    ``solve()``'s ``num_samples`` copies), so image ``b`` sees exactly its own operator.
    ``task`` stays that of the stacked operators (``"box_inpainting"`` for the DPS box
    protocol), so methods keep their per-task defaults.
    """

    def __init__(self, parts: Sequence[Inpainting], image_shape: tuple[int, ...]):
        masks = [part.mask_for((1, *image_shape[1:])) for part in parts]
        super().__init__(torch.cat([mask.expand(1, *mask.shape[1:]) for mask in masks]))
        tasks = {part.task for part in parts}
        if len(tasks) != 1:
            raise ValueError(f"stacked inpainting operators must share one task, got {sorted(tasks)}")
        self._task = tasks.pop()

    @property
    def task(self) -> str:
        return self._task


def stacked_operator(parts: Sequence[Any], image_shape: tuple[int, ...]) -> Any | None:
    """One operator that applies ``parts[b]`` to image ``b`` of a batch, or ``None`` when
    there is no such operator for these parts (then each image is solved alone).

    The same object for every image is returned as it is; per-image masks of
    :class:`operators.Inpainting` become a :class:`StackedInpainting`.
    """
    first = parts[0]
    if all(part is first for part in parts):
        return first
    if all(type(part) is Inpainting for part in parts):
        return StackedInpainting(parts, image_shape)
    return None
