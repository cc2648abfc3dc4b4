"""A prior named on the command line, with the precision and compilation options to load it with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class PriorSpec:
    """:func:`priors.compiled.load_accelerated` (``load_prior(name, device, dtype)``, then ``compile``,
    ``channels_last``); plain data, so a benchmark subprocess can rebuild it."""

    name: str = "natural-64"
    device: str = "cpu"
    dtype: str = "float32"
    compile: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def load(self) -> Any:
        from priors.compiled import load_accelerated

        return load_accelerated(self.name, torch.device(self.device), getattr(torch, self.dtype),
                                compile=self.compile, channels_last=self.channels_last)

    def label(self) -> str:
        extras = [self.dtype] + ["compiled"] * self.compile + ["channels-last"] * self.channels_last
        return f"{self.name} ({', '.join(extras)})"
