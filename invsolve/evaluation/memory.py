"""Peak memory of a solve: CUDA allocator peak on GPUs, the process's peak RSS on CPUs."""

from __future__ import annotations

import sys

import torch

try:
    import resource
except ImportError:  # Windows has no resource module
    resource = None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new CUDA peak measurement (the CPU peak RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` on CUDA, else the process's peak resident set size, in MiB.

    ``None`` where neither can be measured (CPU on Windows).
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def memory_kind(device: torch.device) -> str:
    """What :func:`peak_memory_mib` measures on ``device``, for reports."""
    if device.type == "cuda":
        return "CUDA peak allocated memory per solve (torch.cuda.max_memory_allocated)"
    if resource is None:
        return "not measured (no resource module on this platform)"
    return "peak resident set size of the process so far (CPU; includes the model and everything loaded)"
