"""Forward operators: blur, inpainting, super-resolution, denoising, matrices."""

from operators.base import FunctionOperator, LinearOperator, Operator
from operators.matrix import MatrixOperator
from operators.registry import available, build, get, register
from operators.svd import SVD

__all__ = [
    "FunctionOperator",
    "LinearOperator",
    "MatrixOperator",
    "Operator",
    "SVD",
    "available",
    "build",
    "get",
    "register",
]
