"""Sampler strategies; every module in this package registers its methods on import."""

import importlib
import pkgutil

from invsolve.samplers.base import DivergenceError, Method, Problem, method_class, register, registered

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DivergenceError", "Method", "Problem", "method_class", "register", "registered"]
