"""The no-learning baseline: invert the measurement with the operator alone."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: Name of the baseline's rows in ``metrics.csv`` and its column in ``grid.png``.
NO_LEARNING = "no-learning"


def baseline_kind(operator: Any) -> str:
    """Which no-learning estimate :func:`no_learning` gives for ``operator``."""
    if callable(getattr(operator, "pinv", None)):
        return "pseudo-inverse A^+ y"
    if callable(getattr(operator, "adjoint", None)):
        return "adjoint A^T y"
    return "measurement resized to the image size (bicubic)"


def no_learning(operator: Any, y: Tensor, x_shape: tuple[int, ...]) -> Tensor | None:
    """A restoration without a prior, clamped to [-1, 1]; ``None`` where none makes sense.

    ``A^+ y`` when the operator has a pseudo-inverse (the minimum-norm least-squares
    estimate), else ``A^T y``, else the measurement bicubically resized to the
    image size when it is an image with the right channel count.
    """
    with torch.no_grad():
        kind = baseline_kind(operator)
        if kind.startswith("pseudo-inverse"):
            x = operator.pinv(y)
        elif kind.startswith("adjoint"):
            x = operator.adjoint(y)
        elif y.ndim == 4 and len(x_shape) == 4 and y.shape[:2] == tuple(x_shape[:2]):
            x = y
            if tuple(y.shape) != tuple(x_shape):
                x = F.interpolate(y, size=tuple(x_shape[-2:]), mode="bicubic", align_corners=False)
        else:
            return None
    if tuple(x.shape) != tuple(x_shape):
        return None
    return x.clamp(-1, 1)
