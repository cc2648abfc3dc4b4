"""Forward operators: blur, inpainting, super-resolution, denoising, matrices."""

from operators.base import FunctionOperator, LinearOperator, Operator
from operators.blur import Blur, GaussianBlur, MotionBlur, UniformBlur
from operators.denoising import Denoising
from operators.inpainting import Inpainting, box_mask, load_mask, random_mask
from operators.kernels import gaussian_kernel, motion_kernel, uniform_kernel
from operators.matrix import MatrixOperator
from operators.registry import available, build, get, register
from operators.separable import SeparableSVD
from operators.super_resolution import SuperResolution
from operators.svd import SVD

__all__ = [
    "Blur",
    "Denoising",
    "FunctionOperator",
    "GaussianBlur",
    "Inpainting",
    "LinearOperator",
    "MatrixOperator",
    "MotionBlur",
    "Operator",
    "SVD",
    "SeparableSVD",
    "SuperResolution",
    "UniformBlur",
    "available",
    "box_mask",
    "build",
    "gaussian_kernel",
    "get",
    "load_mask",
    "motion_kernel",
    "random_mask",
    "register",
    "uniform_kernel",
]

from operators.blackbox import BlackBox  # noqa: E402
from operators.nonlinear import HighDynamicRange, PhaseRetrieval  # noqa: E402

__all__ += ["BlackBox", "HighDynamicRange", "PhaseRetrieval"]

from operators.presets import PRESETS, Preset, preset, presets  # noqa: E402

__all__ += ["PRESETS", "Preset", "preset", "presets"]
