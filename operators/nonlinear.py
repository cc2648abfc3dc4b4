"""Nonlinear imaging operators: Fourier phase retrieval and high-dynamic-range clipping."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from operators.arguments import as_float
from operators.base import Operator
from operators.registry import register

#: The largest ``oversample`` accepted (the canvas grows with its square; papers use 1.5-2).
MAX_OVERSAMPLE = 16.0


def _image_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int, int]:
    if len(shape) != 4:
        raise ValueError(f"{name} takes image batches (B, C, H, W), got shape {tuple(shape)}")
    return tuple(shape)


@register("phase_retrieval")
class PhaseRetrieval(Operator):
    r"""Fourier phase retrieval: the magnitude of the oversampled 2-D Fourier transform.

    .. math::
        A(x) = \bigl|\,\mathrm{shift}\,\mathcal{F}\bigl(\mathrm{pad}((x + 1) / 2)\bigr)\bigr|

    per channel, where ``pad`` zero-pads the image to a canvas ``oversample`` times
    its size in each dimension (the image centred, ``(oversample - 1) H / 2``
    pixels on each side, rounded half up), ``F`` is the orthonormal 2-D DFT (``norm="ortho"``, so
    Parseval holds: ``||A(x)||^2 = ||(x + 1) / 2||^2``) and ``shift`` moves the zero
    frequency to the centre.  Output shape ``(B, C, H + 2 p_h, W + 2 p_w)``.

    Conventions, and how they relate to the papers:

    * Input scale: the image is mapped to [0, 1] before the transform, as in DAPS
      (Zhang et al., CVPR 2025) — a non-negative object, the physical setting of
      coherent diffraction imaging.  DPS (Chung et al., ICLR 2023) transforms the
      [-1, 1] image directly.
    * ``oversample`` is the ratio of canvas to image side.  Uniqueness needs a
      canvas of at least twice the object's pixel count (Miao, Sayre and Chapman
      1998); 2 per side gives 4.  The DPS and DAPS configurations call their
      setting "oversample 2.0" but pad ``oversample / 8 * H`` pixels per side, a
      1.5x canvas: ``oversample=1.5`` here reproduces them.

    Differentiable almost everywhere (not where a Fourier coefficient is exactly 0).
    The measurement is invariant to circular shifts of the padded canvas and to the
    point reflection of the image (the "twin image"), so solutions are only defined
    up to these ambiguities.
    """

    kind = "phase_retrieval"
    output_in_image_range = False

    def __init__(self, oversample: float = 2.0):
        super().__init__()
        try:
            self.oversample = as_float("oversample", oversample, minimum=1.0, maximum=MAX_OVERSAMPLE)
        except ValueError as error:
            raise ValueError(f"oversample is the canvas / image size ratio: {error}") from None

    def padding(self, height: int, width: int) -> tuple[int, int]:
        """Zero pixels added on each side, ``(p_h, p_w)``."""
        return int((self.oversample - 1) * height / 2 + 0.5), int((self.oversample - 1) * width / 2 + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        _image_shape(tuple(x.shape), type(self).__name__)
        p_h, p_w = self.padding(x.shape[-2], x.shape[-1])
        canvas = F.pad((x + 1) / 2, (p_w, p_w, p_h, p_h))
        spectrum = torch.fft.fftshift(torch.fft.fft2(canvas, norm="ortho"), dim=(-2, -1))
        return spectrum.abs()

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        b, c, h, w = _image_shape(shape, type(self).__name__)
        p_h, p_w = self.padding(h, w)
        return (b, c, h + 2 * p_h, w + 2 * p_w)

    def __repr__(self) -> str:
        return f"PhaseRetrieval(oversample={self.oversample})"


@register("hdr")
class HighDynamicRange(Operator):
    r"""High-dynamic-range imaging: a sensor that saturates, ``y = clip(scale * x, -1, 1)``.

    The scene ``x`` in [-1, 1] is recorded with exposure gain ``scale`` > 1, so
    every pixel with ``|x| > 1 / scale`` saturates at the sensor's limits; recovering
    it means inpainting the clipped highlights and shadows from the prior.  This is
    the HDR task of DAPS (Zhang et al., CVPR 2025), whose benchmark uses
    ``scale = 2``.  Pixel-wise and monotone non-decreasing; the derivative is
    ``scale`` on unsaturated pixels and 0 on saturated ones (a gradient method sees
    no signal from clipped pixels; derivative-free methods are unaffected).
    """

    kind = "hdr"
    output_in_image_range = True

    def __init__(self, scale: float = 2.0):
        super().__init__()
        self.scale = as_float("scale", scale, minimum=0.0, strict_minimum=True)

    def forward(self, x: Tensor) -> Tensor:
        return (self.scale * x).clamp(-1.0, 1.0)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def __repr__(self) -> str:
        return f"HighDynamicRange(scale={self.scale})"
