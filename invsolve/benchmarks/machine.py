"""What a benchmark ran on: date, processor, threads, library versions."""

from __future__ import annotations

import datetime
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch


def processor_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` for a CUDA device, the CPU's model name otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return processor_name()


def environment(device: torch.device | str) -> dict[str, Any]:
    """Date (UTC), device, CPU cores and torch threads, and the versions of Python, torch and invsolve."""
    try:
        package = version("invsolve")
    except PackageNotFoundError:
        package = "unknown"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "invsolve": package,
    }


def describe(env: dict[str, Any]) -> str:
    """One line for a report's header."""
    return (
        f"{env['date']}, {env['device']} ({env['device_name']}), {env['cpu_cores']} CPU cores, "
        f"{env['torch_threads']} torch threads, torch {env['torch']}, Python {env['python']}"
    )


def first_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``, for report cells."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
