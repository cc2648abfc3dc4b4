"""Running one speed-benchmark cell in fresh processes, so that no cell inherits another's
memory, caches or allocator state.

On a CPU a cell runs twice: once for the timings (normal allocator), once for the peak
memory with glibc told to hand every freed block of 64 KiB or more back to the operating
system (``MALLOC_MMAP_THRESHOLD_=65536``).  Without that, memory freed by the warm-up
stays in the process and later peaks of the resident set size read as ~0 MiB; with it,
allocations page-fault afresh and run up to twice as slowly, which is why the timings
come from the other process.  On CUDA ``max_memory_allocated`` is exact and one process
measures both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

#: The record fields the memory measurement fills in.
MEMORY_FIELDS = ("peak_mib", "peak_increment_mib", "reference_peak_mib", "reference_increment_mib",
                 "memory_ratio", "memory_kind")
#: glibc setting of the CPU memory process: freed blocks of this many bytes or more go back to the system.
MMAP_THRESHOLD = 65536


def _spawn(config: Any, cell: dict[str, Any], measure: tuple[str, ...], env: dict[str, str] | None) -> dict:
    spec = {"prior": dataclasses.asdict(config.prior), "threads": config.threads, "measure": list(measure), **cell}
    try:
        done = subprocess.run([sys.executable, "-m", "invsolve.benchmarks.speed_cell", json.dumps(spec)],
                              capture_output=True, text=True, timeout=config.cell_timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**cell, "status": "timeout", "reason": f"stopped after {config.cell_timeout:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        error = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**cell, "status": "failed", "reason": f"cell process exited with {done.returncode}: {error}"}
    return json.loads(lines[-1])


def run_isolated(config: Any, cell: dict[str, Any]) -> dict[str, Any]:
    """The cell's record from fresh processes (see the module docstring); ``config`` is a
    :class:`~invsolve.benchmarks.speed.SpeedConfig`."""
    cuda = config.prior.device.startswith("cuda")
    if cuda:
        return _spawn(config, cell, ("time", "memory") if config.memory else ("time",), None)
    record = _spawn(config, cell, ("time",), None)
    if record.get("status") != "ok" or not config.memory:
        return record
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    memory = _spawn(config, cell, ("memory",), env)
    if memory.get("status") != "ok":
        return {**record, "memory_error": memory.get("reason", memory.get("status"))}
    return {**record, **{name: memory.get(name) for name in MEMORY_FIELDS}}
