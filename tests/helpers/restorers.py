"""A linear restorer network for restorer priors (DRP) on vectors, where fixed points have closed forms."""

import torch
from torch import nn


class LinearRestorer(nn.Module):
    """``R(v) = K v`` for vectors, with ``K`` a fixed matrix."""

    def __init__(self, K: torch.Tensor):
        super().__init__()
        self.register_buffer("K", K)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.K.T
