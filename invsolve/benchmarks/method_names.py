"""The one check every benchmark configuration makes of the method names it is given."""

from __future__ import annotations

from typing import Iterable

from invsolve.samplers import registered


def check_method_names(methods: Iterable[str] | None) -> None:
    """Raise ``ValueError`` naming the registered methods when ``methods`` (``None``: all) holds an unknown one."""
    known = registered()
    unknown = sorted(set(methods or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
