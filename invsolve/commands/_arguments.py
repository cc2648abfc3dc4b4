"""Argument parsing shared by the subcommands: ``key=value`` options and devices."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch

import operators

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BOOLEANS = {"true": True, "false": False}


def parse_value(text: str) -> int | float | bool | str:
    """``"3"`` → 3, ``"0.5"`` / ``"1e-3"`` → float, ``"true"`` / ``"false"`` → bool, else the string."""
    if text.lower() in _BOOLEANS:
        return _BOOLEANS[text.lower()]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def parse_key_values(items: Iterable[str], option: str) -> dict[str, Any]:
    """``["kernel_size=5", "sigma=1.5"]`` → ``{"kernel_size": 5, "sigma": 1.5}``.

    ``option`` names the command-line flag in error messages.
    """
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key) or not value.strip():
            raise ValueError(f"{option} expects KEY=VALUE with a Python name as KEY, got {item!r}")
        if key in parsed:
            raise ValueError(f"{option} {key} is given twice")
        parsed[key] = parse_value(value.strip())
    return parsed


def noise_level(text: str) -> float:
    """argparse type of ``--noise-sigma``: a finite number >= 0 (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (a std on the [-1, 1] scale), got {text!r}")
    return value


def whole_number(least: int, most: int | None = None) -> Callable[[str], int]:
    """argparse type of a count such as ``--steps``: a whole number in ``[least, most]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least or (most is not None and value > most):
            bound = f"between {least} and {most}" if most is not None else f">= {least}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def name_list(text: str) -> tuple[str, ...]:
    """argparse type of a comma-separated list of names: ``"a,b"`` -> ``("a", "b")``, at least one."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected at least one name")
    return names


def int_list(text: str) -> tuple[int, ...]:
    """argparse type of a comma-separated list of integers: ``"64,128"`` -> ``(64, 128)``, at least one."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def resolve_device(name: str | None) -> torch.device:
    """``None`` → CUDA when available, else CPU; otherwise the named device, checked."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; use cpu or cuda")
    return device


def add_task_arguments(parser: argparse.ArgumentParser, preset_note: str) -> None:
    """``--operator`` / ``--preset`` (one of them), ``--operator-arg`` and ``--noise-sigma``.

    ``preset_note`` says how the command draws a preset's random mask or kernel.
    """
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--operator", metavar="NAME", help="forward operator (see 'invsolve list')")
    task.add_argument(
        "--preset", choices=operators.presets(), metavar="NAME",
        help=f"a published benchmark task ({', '.join(operators.presets())}): operator and noise 0.05; {preset_note}",
    )
    parser.add_argument(
        "--operator-arg", action="append", default=[], metavar="KEY=VALUE",
        help="operator argument, repeatable (values parse as int, float, true/false, else text); not with --preset",
    )
    parser.add_argument(
        "--noise-sigma", type=noise_level, default=None,
        help="measurement noise std on the [-1, 1] scale (default 0.05, or the preset's; given, it overrides the preset's)",
    )


#: ``--dtype`` choices: the network's precision (the sampler state stays float32).
NETWORK_DTYPES = ("float32", "float16", "bfloat16")


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--compile`` and ``--channels-last``: how the prior's network runs."""
    parser.add_argument(
        "--dtype", choices=NETWORK_DTYPES, default="float32",
        help="precision of the network (default float32); the sampler state and the operator stay float32",
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="run the network under torch.compile (the first call of each shape compiles; where torch.compile "
        "is unavailable a warning says why and the network runs uncompiled)",
    )
    parser.add_argument(
        "--channels-last", action="store_true",
        help="network weights and inputs in the channels-last (NHWC) layout, often faster for convolutions",
    )


def network_dtype(name: str) -> torch.dtype | None:
    """The ``dtype`` to give ``load_prior`` for ``--dtype name`` (``None``: as the checkpoint loads, float32)."""
    return None if name == "float32" else getattr(torch, name)
