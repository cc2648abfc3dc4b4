"""Measuring instruments of the speed benchmark: a prior proxy that records every network call
(shape, and whether a gradient flowed back through it), an operator proxy that times every
operator call, isolated timings of the same calls, and resettable peak memory."""

from __future__ import annotations

import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from priors.base import is_latent_prior
from priors.wrapper import PriorWrapper

try:
    import resource
except ImportError:  # Windows has no resource module
    resource = None

#: Network entry points of a prior that count as network time.
NETWORK_CALLS = ("denoise", "decode", "encode")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RecordingPrior(PriorWrapper):
    """Forwards to ``prior`` and records each network call by ``(entry, input shape)``.

    ``forwards[key]`` counts the calls; ``backwards[key]`` counts the calls whose output
    received a gradient (a hook on the output fires when autograd reaches it), so a
    method that backpropagates through the network (DPS) is told apart from one that
    only evaluates it (DDRM) by what actually happened, not by what it declares.
    Latent priors get :class:`RecordingLatent` (``decode`` and ``encode`` recorded too).
    """

    def __new__(cls, prior: Any) -> RecordingPrior:
        if cls is RecordingPrior and is_latent_prior(prior):
            cls = RecordingLatent
        return super().__new__(cls)

    def __init__(self, prior: Any):
        self.prior = prior
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max
        self.data_shape = getattr(prior, "data_shape", None)
        self.forwards: Counter = Counter()
        self.backwards: Counter = Counter()

    def _record(self, entry: str, x: Tensor, out: Tensor) -> Tensor:
        key = (entry, tuple(x.shape))
        self.forwards[key] += 1
        if out.requires_grad:
            out.register_hook(lambda grad: self.backwards.update([key]))
        return out

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self._record("denoise", x, self.prior.denoise(x, sigma))


class RecordingLatent(RecordingPrior):
    """:class:`RecordingPrior` of a latent prior: ``decode`` and ``encode`` are network calls too."""

    def decode(self, z: Tensor) -> Tensor:
        return self._record("decode", z, self.prior.decode(z))

    def encode(self, x: Tensor) -> Tensor:
        return self._record("encode", x, self.prior.encode(x))

    def latent_shape(self, pixel_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.prior.latent_shape(pixel_shape)


class _Timed:
    """Times every method call on ``target`` into ``clock`` (shared by nested proxies)."""

    def __init__(self, target: Any, clock: OperatorClock):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_clock", clock)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name.startswith("_") or not callable(attr):
            return attr
        return lambda *args, **kwargs: self._clock.run(name, attr, args, kwargs)


class OperatorClock:
    """Wall time spent inside an operator's methods (and inside the SVD objects it returns)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0
        self.calls: Counter = Counter()
        self.vjps = 0
        self._depth = 0

    def run(self, name: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
        if self._depth:
            return fn(*args, **kwargs)
        self._depth += 1
        synchronize(self.device)
        start = time.perf_counter()
        try:
            out = fn(*args, **kwargs)
            synchronize(self.device)
        finally:
            self.seconds += time.perf_counter() - start
            self._depth -= 1
        self.calls[name] += 1
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(self._count_vjp)
        if hasattr(out, "Vt") and hasattr(out, "Ut"):
            return _Timed(out, self)
        return out

    def _count_vjp(self, grad: Tensor) -> None:
        self.vjps += 1


class TimedOperator(_Timed):
    """An operator proxy: calls (``op(x)``, ``adjoint``, ``pinv``, ``prox``, SVD factors ...)
    run the real operator and add their wall time to ``clock``; ``clock.vjps`` counts the
    outputs that autograd later backpropagated through (their backward runs outside the
    call and is estimated separately)."""

    def __init__(self, operator: Any, device: torch.device):
        super().__init__(operator, OperatorClock(device))

    @property
    def clock(self) -> OperatorClock:
        return self._clock

    def __call__(self, x: Tensor) -> Tensor:
        return self._clock.run("__call__", self._target, (x,), {})


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Mean wall seconds of ``fn()`` over ``repeats`` calls (CUDA synchronised)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def network_call(prior: Any, entry: str, shape: tuple[int, ...], backward: bool, device: torch.device,
                 dtype: torch.dtype) -> Callable[[], None]:
    """One isolated call of the prior's ``entry`` on random input of ``shape`` (sigma 1 for
    ``denoise``), with the vector-Jacobian product to the input when ``backward``."""
    x = torch.randn(shape, device=device, dtype=dtype)
    sigma = torch.ones(shape[0], device=device, dtype=dtype)

    def call() -> None:
        with torch.set_grad_enabled(backward):
            inputs = x.detach().requires_grad_(backward)
            out = prior.denoise(inputs, sigma) if entry == "denoise" else getattr(prior, entry)(inputs)
            if backward:
                torch.autograd.grad(out, inputs, grad_outputs=torch.ones_like(out))

    return call


def operator_call(operator: Any, shape: tuple[int, ...], backward: bool, device: torch.device,
                  dtype: torch.dtype) -> Callable[[], None]:
    """One isolated ``operator(x)`` on random input, with its vector-Jacobian product when ``backward``."""
    x = torch.randn(shape, device=device, dtype=dtype)

    def call() -> None:
        with torch.set_grad_enabled(backward):
            inputs = x.detach().requires_grad_(backward)
            out = operator(inputs)
            if backward:
                torch.autograd.grad(out, inputs, grad_outputs=torch.ones_like(out))

    return call


_STATUS_FIELD = re.compile(r"^(VmRSS|VmHWM):\s+(\d+)\s+kB", re.MULTILINE)


def _status_mib() -> dict[str, float]:
    with open("/proc/self/status", encoding="ascii") as status:
        return {name: int(kb) / 1024 for name, kb in _STATUS_FIELD.findall(status.read())}


class PeakMemory:
    """Peak memory of a code region: CUDA ``max_memory_allocated``, or on a CPU the peak
    resident set size (``VmHWM``), which Linux lets a process reset (``/proc/self/clear_refs``,
    value 5).  Where it cannot be reset (other systems) the process's lifetime peak
    (``ru_maxrss``) is reported and ``resettable`` is ``False``.

    ``start()`` resets the peak and notes the current use; ``stop()`` returns
    ``(peak MiB, peak minus the use at start MiB)``.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.resettable = device.type == "cuda" or self._can_reset()
        self._base = 0.0

    @staticmethod
    def _can_reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")
            return "VmHWM" in _status_mib()
        except OSError:
            return False

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "CUDA max_memory_allocated"
        if not self.resettable:
            return "process peak RSS (ru_maxrss, not reset)"
        threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        if threshold:
            return f"peak RSS (VmHWM, reset per region; freed blocks >= {threshold} bytes returned to the system)"
        return "peak RSS (VmHWM, reset per region; memory the allocator kept after earlier frees is not seen)"

    def start(self) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
        elif self.resettable:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")
            self._base = _status_mib()["VmRSS"]
        else:
            self._base = self._ru_maxrss()

    def stop(self) -> tuple[float, float]:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.resettable:
            peak = _status_mib()["VmHWM"]
        else:
            peak = self._ru_maxrss()
        return peak, peak - self._base

    @staticmethod
    def _ru_maxrss() -> float:
        if resource is None:
            return float("nan")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
