"""The one check every benchmark configuration makes of the method names it is given."""

from __future__ import annotations

from collections.abc import Iterable

from invsolve.samplers import method_class


def check_method_names(methods: Iterable[str] | None) -> None:
    """:func:`~invsolve.samplers.method_class` of each of ``methods`` (``None``: all registered)."""
    for name in methods or ():
        method_class(name)
