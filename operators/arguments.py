"""Checked conversion of operator constructor arguments.

Operators are built from Python code and from the command line
(``--operator-arg size=32``), where numbers may arrive as strings.  These
helpers accept numbers and numeric strings and reject everything else with a
message that names the argument.
"""

from __future__ import annotations

import math
from typing import Any


def as_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (ints, integral floats and numeric strings), at least ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got the bool {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})") from None
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    result = int(number)
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {result}")
    return result


def as_float(
    name: str, value: Any, minimum: float | None = None, maximum: float | None = None, strict_minimum: bool = False
) -> float:
    """``value`` as a finite ``float`` in ``[minimum, maximum]`` (``(minimum, ...`` if ``strict_minimum``)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got the bool {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})") from None
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (result <= minimum if strict_minimum else result < minimum):
        raise ValueError(f"{name} must be {'>' if strict_minimum else '>='} {minimum}, got {result}")
    if maximum is not None and result > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {result}")
    return result
