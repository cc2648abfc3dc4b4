"""``invsolve evaluate`` on an analytic Gaussian image prior, in this process or as a script.

The prior needs no download and no diffusers import, so a subprocess running
``python tests/helpers/gaussian_evaluate.py evaluate ...`` starts in a few seconds; the
kill and lock tests use that.  ``GAUSSIAN_PRIOR_DELAY`` (seconds per denoiser
call) stretches a run so that it can be interrupted half-way.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import priors
from priors import GaussianPrior

#: Image side of the prior (it models 3 x SIZE x SIZE images).
SIZE = 16


class SlowGaussianPrior(GaussianPrior):
    """``N(0, 0.25 I)`` on 3 x SIZE x SIZE images whose denoiser sleeps ``delay`` seconds per call."""

    def __init__(self, delay: float = 0.0):
        super().__init__(torch.zeros(3, SIZE, SIZE), 0.25)
        self.delay = delay

    def denoise(self, x, sigma):
        time.sleep(self.delay)
        return super().denoise(x, sigma)


def load_gaussian_prior(name, device=None, **kwargs):
    """Stands in for ``priors.load_prior`` whatever the name (the name still enters config.json)."""
    return SlowGaussianPrior(float(os.environ.get("GAUSSIAN_PRIOR_DELAY", "0")))


def save_random_images(folder: Path, count: int, seed: int) -> Path:
    """``count`` 20 x 20 RGB noise images ``img<i>.png`` in ``folder`` (a DATA_DIR for evaluate)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


if __name__ == "__main__":
    from invsolve.cli import main

    priors.load_prior = load_gaussian_prior
    sys.exit(main(sys.argv[1:]))
