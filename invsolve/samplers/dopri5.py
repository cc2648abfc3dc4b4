"""An adaptive Dormand-Prince 5(4) integrator for one state tensor (D-Flow's ODE inversion).

The embedded Runge-Kutta pair of Dormand & Prince (1980) with the usual error control:
the error is the RMS of ``err / (atol + rtol max(|x|, |x'|))``, a step is accepted when
it is at most 1, and the next step is ``h * clip(0.9 * error^(-1/5), 0.2, 10)``; the
first step is chosen as in Hairer, Norsett & Wanner (1993), II.4.  These are the rules of
``torchdiffeq``'s ``dopri5``, which the PnP-Flow repository calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
#: fifth-order weights (also the last stage's row: first same as last)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
#: fifth- minus fourth-order weights: the error estimate
_E = (
    35 / 384 - 5179 / 57600,
    0.0,
    500 / 1113 - 7571 / 16695,
    125 / 192 - 393 / 640,
    -2187 / 6784 + 92097 / 339200,
    11 / 84 - 187 / 2100,
    -1 / 40,
)


def _rms(x: Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def _initial_step(f: Callable[[float, Tensor], Tensor], t0: float, x0: Tensor, f0: Tensor, rtol: float,
                  atol: float) -> float:
    scale = atol + rtol * x0.abs()
    d0, d1 = _rms(x0 / scale), _rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    d2 = _rms((f(t0 + h0, x0 + h0 * f0) - f0) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1)


def dopri5(f: Callable[[float, Tensor], Tensor], x: Tensor, t0: float, t1: float, rtol: float = 1e-5,
           atol: float = 1e-5) -> Tensor:
    """``x(t1)`` for ``dx/dt = f(t, x)``, ``x(t0) = x`` (``t1 < t0`` integrates backwards).

    A non-finite step is returned as it is (the caller's divergence check reports it); a
    step size below ``1e-12 |t1 - t0|`` raises ``FloatingPointError``."""
    sign = 1.0 if t1 >= t0 else -1.0
    t, k1 = t0, f(t0, x)
    h = _initial_step(lambda s, z: sign * f(sign * s, z), sign * t0, x, sign * k1, rtol, atol)
    while sign * (t1 - t) > 0:
        last = h >= sign * (t1 - t)
        h = min(h, sign * (t1 - t))
        dt = sign * h
        stages = [k1]
        for c, row in zip(_C[1:], _A[1:]):
            stages.append(f(t + c * dt, x + dt * sum(a * k for a, k in zip(row, stages))))
        x_new = x + dt * sum(b * k for b, k in zip(_B, stages))
        stages.append(f(t + dt, x_new))
        error = dt * sum(e * k for e, k in zip(_E, stages))
        ratio = _rms(error / (atol + rtol * torch.maximum(x.abs(), x_new.abs())))
        if not math.isfinite(ratio):
            return x_new
        if ratio <= 1.0:
            t, x, k1 = t1 if last else t + dt, x_new, stages[-1]
        factor = 10.0 if ratio == 0 else min(10.0, max(0.2, 0.9 * ratio ** (-1 / 5)))
        h = h * factor
        if h < 1e-12 * abs(t1 - t0):
            raise FloatingPointError(f"dopri5: the step size underflowed at t = {t:.6g}")
    return x
