"""invsolve: imaging inverse problems with diffusion models as priors."""

from invsolve.api import methods, solve
from invsolve.result import Result

__all__ = ["Result", "methods", "solve"]
__version__ = "0.1.0"
