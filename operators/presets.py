"""The operator settings of the published FFHQ / ImageNet 256 benchmarks (DPS, DAPS, ...), by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from operators.base import Operator
from operators.registry import build


@dataclass(frozen=True)
class Preset:
    """A benchmark task: a registered operator with fixed options and a measurement noise level.

    ``build(seed)`` makes the operator; presets whose operator is random (a mask or a
    motion kernel) pass ``seed`` to it.  ``per_image`` says whether the protocol draws
    a new one for every image (DPS draws a fresh box per image; DAPS draws its mask
    once, at the first measurement of the whole data set, and keeps it; both draw the
    motion kernel once per run): ``invsolve evaluate`` then seeds it from the image's
    file name and ``--seed``, otherwise from ``--seed`` alone.  ``description`` names
    the paper whose protocol the preset reproduces and its source file.  ``noise_sigma`` is the standard deviation
    of the Gaussian measurement noise on the [-1, 1] scale.  All presets assume
    256 x 256 images (Chung et al. 2023, DPS, Sec. 4; Zhang et al. 2025, DAPS, Sec. 5).
    """

    name: str
    operator: str
    options: dict[str, Any] = field(default_factory=dict)
    noise_sigma: float = 0.05
    seeded: bool = False
    per_image: bool = False
    description: str = ""

    def build(self, seed: int = 0) -> Operator:
        """The operator, drawn from ``seed`` when it is random."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        options = dict(self.options, seed=seed) if self.seeded else dict(self.options)
        return build(self.operator, **options)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "sr4", "super_resolution", {"factor": 4, "method": "bicubic"},
            description=(
                "super-resolution x4: bicubic imresize with antialiasing, 256 -> 64 "
                "(DPS and DAPS protocol: util/resizer.py Resizer)"
            ),
        ),
        Preset(
            "box128", "inpainting", {"mask": "box", "size": 128, "position": "random", "margin": 16},
            seeded=True, per_image=True,
            description=(
                "box inpainting, DPS protocol: a 128 x 128 hole, top-left corner uniform in [16, 112), "
                "a new hole per image (DPS util/img_utils.py mask_generator, margin 16)"
            ),
        ),
        Preset(
            "box128_daps", "inpainting", {"mask": "box", "size": 128, "position": "random", "margin": 32},
            seeded=True,
            description=(
                "box inpainting, DAPS protocol: a 128 x 128 hole, top-left corner uniform in [32, 96), "
                "one hole for the whole run (DAPS forward_operator mask_generator, margin 32, mask kept)"
            ),
        ),
        Preset(
            "random70", "inpainting", {"mask": "random", "missing": 0.7},
            seeded=True,
            description=(
                "random inpainting, DAPS protocol: 70 % of the pixels missing in all channels, one mask "
                "for the whole run (DAPS configs/task/inpainting_rand.yaml; DAPS draws 70-71 %)"
            ),
        ),
        Preset(
            "gauss61", "gaussian_blur", {"kernel_size": 61, "sigma": 3.0, "truncate": 4.0, "padding": "reflect"},
            description=(
                "Gaussian deblurring, DPS and DAPS protocol: 61 x 61 kernel, std 3.0 truncated at 4 std "
                "(scipy gaussian_filter), reflect boundaries"
            ),
        ),
        Preset(
            "motion61", "motion_blur", {"kernel_size": 61, "intensity": 0.5, "padding": "reflect"},
            seeded=True,
            description=(
                "motion deblurring, DPS and DAPS protocol: 61 x 61 kernel of the motionblur generator, "
                "intensity 0.5, drawn once per run, reflect boundaries"
            ),
        ),
    )
}


def presets() -> list[str]:
    """The preset names."""
    return list(PRESETS)


def preset(name: str) -> Preset:
    """The benchmark preset ``name`` (``sr4``, ``box128``, ``box128_daps``, ``random70``, ``gauss61``, ``motion61``).

    ``operators.preset("box128").build(seed=3)`` gives the operator;
    ``.noise_sigma`` (0.05 on [-1, 1]) the noise to measure with.
    """
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None
