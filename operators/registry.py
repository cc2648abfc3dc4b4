"""Name → operator class registry used by ``operators.build`` and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator registering an operator under ``name``."""

    def decorate(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"operator name {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return decorate


def available() -> list[str]:
    """Registered operator names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type:
    """The operator class registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown operator {name!r}; available: {', '.join(available())}") from None


def build(name: str, **kwargs: Any):
    """Instantiate the operator registered under ``name`` with keyword arguments."""
    cls = get(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for operator {name!r}: {err}") from None
