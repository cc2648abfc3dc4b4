"""The benchmark tasks of the methods x tasks matrix, their operators at any image size and
the no-learning estimate each is judged against."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from invsolve.evaluation.baseline import no_learning
from operators.base import Operator
from operators.presets import Preset, preset

#: Matrix task -> operator preset (operators/presets.py), in the matrix's column order.
TASK_PRESETS: dict[str, str] = {
    "gaussian_blur": "gauss61",
    "motion_blur": "motion61",
    "super_resolution": "sr4",
    "box_inpainting": "box128",
    "random_inpainting": "random70",
}

#: The image size the presets are written for (DPS / DAPS: FFHQ and ImageNet at 256 x 256).
PRESET_SIZE = 256

#: What the no-learning estimate is, per operator task.
BASELINES = {
    "gaussian_blur": "blurred input",
    "motion_blur": "blurred input",
    "super_resolution": "bicubic upsampling of the measurement",
    "box_inpainting": "masked image, holes filled with the mean of the observed pixels",
    "random_inpainting": "masked image, holes filled with the mean of the observed pixels",
}


@dataclass(frozen=True)
class BenchmarkTask:
    """One column of the matrix: an operator preset used at ``size`` x ``size`` pixels.

    Kernel sizes, the SR factor and the fraction of missing pixels are the preset's
    at every size.  The box hole keeps its share of the image: the 256-pixel protocol's
    128-pixel hole and 16-pixel margin are scaled by ``size / 256`` (a 32-pixel hole at
    64 pixels).  ``per_image`` presets (masks) draw a new operator per image from its
    seed, the others one per run (the motion kernel), as ``invsolve evaluate`` does.
    """

    name: str
    preset: Preset

    @property
    def noise_sigma(self) -> float:
        return self.preset.noise_sigma

    @property
    def per_image(self) -> bool:
        return self.preset.per_image

    def sized(self, size: int) -> Preset:
        """The preset with its size-dependent options (the box hole) scaled to ``size``."""
        options = dict(self.preset.options)
        if options.get("mask") == "box":
            options["size"] = max(1, round(options["size"] * size / PRESET_SIZE))
            options["margin"] = round(options.get("margin", 0) * size / PRESET_SIZE)
        return dataclasses.replace(self.preset, options=options)

    def operator(self, size: int, seed: int) -> Operator:
        """The operator for ``size`` x ``size`` images, drawn from ``seed`` when random."""
        return self.sized(size).build(seed=seed)

    def describe(self, size: int) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.sized(size).options.items())
        return f"{self.name}: {self.preset.operator}({options}), noise {self.noise_sigma}"


def benchmark_task(name: str) -> BenchmarkTask:
    """The task ``name`` (a key of :data:`TASK_PRESETS`, or a preset name such as ``gauss61``)."""
    by_preset = {value: key for key, value in TASK_PRESETS.items()}
    if name in by_preset:
        name = by_preset[name]
    if name not in TASK_PRESETS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASK_PRESETS)} (or their presets)")
    return BenchmarkTask(name, preset(TASK_PRESETS[name]))


def baseline_name(operator: Any) -> str:
    """What :func:`no_learning_estimate` returns for ``operator``."""
    return BASELINES.get(getattr(operator, "task", ""), "operator pseudo-inverse (generic no-learning)")


def no_learning_estimate(operator: Any, y: Tensor, x_shape: tuple[int, ...]) -> Tensor | None:
    """The restoration a user gets without any prior, clamped to [-1, 1].

    * blur: the blurred measurement itself;
    * super-resolution by ``f``: bicubic upsampling of ``y`` by ``f``
      (``torch.nn.functional.interpolate``, ``align_corners=False``);
    * inpainting: ``y`` on the observed pixels, the per-image, per-channel mean of the
      observed pixels in the holes;
    * anything else: :func:`invsolve.evaluation.baseline.no_learning` (``A^+ y``, ...).
    """
    task = getattr(operator, "task", "")
    with torch.no_grad():
        if task in ("gaussian_blur", "motion_blur", "uniform_blur") and tuple(y.shape) == tuple(x_shape):
            return y.clamp(-1, 1)
        if task == "super_resolution":
            up = F.interpolate(y, size=tuple(x_shape[-2:]), mode="bicubic", align_corners=False)
            return up.clamp(-1, 1)
        if task in ("box_inpainting", "random_inpainting", "inpainting"):
            mask = operator.mask_for(tuple(x_shape)).to(y.device).expand(x_shape)
            observed = mask.to(y.dtype)
            mean = (y * observed).sum((2, 3), keepdim=True) / observed.sum((2, 3), keepdim=True).clamp_min(1)
            return torch.where(mask, y, mean.expand_as(y)).clamp(-1, 1)
    return no_learning(operator, y, x_shape)
