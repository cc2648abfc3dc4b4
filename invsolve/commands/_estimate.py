"""What a solve will cost, told before it starts: method, steps, NFE and the expected time (issue 22.4).

The time is ``overhead + NFE x t_call x factor``:

* ``t_call``: the faster of two timed ``prior.denoise`` calls under ``torch.no_grad`` at the run's
  size (all samples in one batch; tiled as ``solve()`` tiles), with the speed benchmark's
  instruments (:func:`invsolve.benchmarks.probes.network_call`, :func:`~invsolve.benchmarks.probes.time_calls`);
* ``NFE``, whether the method backpropagates through the network, and the time spent outside the
  network (operator, SVD, decoder, the method's own arithmetic): two dry runs of ``solve()`` with
  :data:`DRY_STEPS` steps on the real measurement and operator, the network replaced by the exact
  denoiser of ``N(0, I)`` data on the prior's own grid (no network call).  NFE is extrapolated
  linearly to the run's steps, the time outside the network in proportion to them (per step as
  in the second dry run, after the first has filled the operator's caches such as its SVD);
* ``factor``: :data:`BACKPROP_FACTOR` for a method whose dry run sent a gradient back through the
  denoiser (found by a hook on its output, as :class:`invsolve.benchmarks.probes.RecordingPrior`
  does), else 1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from invsolve.api import solve, working_dtype
from invsolve.benchmarks.probes import network_call, time_calls
from invsolve.method_choice import choose_method
from invsolve.samplers import method_class
from invsolve.validation import needs_tiling
from priors.base import is_latent_prior, is_prior
from priors.tiled import Tiled
from priors.vp import learned_range_variance

#: A network call with its vector-Jacobian product to the input costs about three forward calls.
BACKPROP_FACTOR = 3.0
#: A run expected to take longer than this says so and names a faster method.
LONG_RUN_SECONDS = 600.0
#: Step counts of the two dry runs that NFE and the time outside the network are extrapolated from
#: (some grids repeat a level at 2 or 3 steps; from 4 on NFE grows by a fixed amount per step).
DRY_STEPS = (4, 5)


@dataclass(frozen=True)
class Estimate:
    """The expected cost of one solve."""

    method: str
    steps: int
    nfe: float
    backprop: bool
    seconds_per_call: float
    seconds: float

    def line(self) -> str:
        gradient = ", each with a backward pass" if self.backprop else ""
        return (f"{self.method}, {self.steps} steps, NFE {self.nfe:.0f}{gradient}: about {duration(self.seconds)} "
                f"(one network call takes {self.seconds_per_call:.3g} s here)")


def duration(seconds: float) -> str:
    """``"0.4 s"``, ``"12 s"``, ``"3.5 min"``, ``"2.1 h"``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class _GaussianStandIn:
    """The prior with its network replaced by the exact denoiser of ``N(0, I)`` data,
    ``D(x, sigma) = x / (1 + sigma^2)``; every other attribute (grid, data range, data shape,
    autoencoder) is the prior's.  ``backprop`` records whether a gradient reached ``D``."""

    def __init__(self, prior: Any):
        self.prior = prior
        self.backprop = False

    def __getattr__(self, name: str) -> Any:
        if name == "prior":
            raise AttributeError(name)
        return getattr(self.prior, name)

    def _seen(self, grad: Tensor) -> None:
        self.backprop = True

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        out = x / (1 + sigma.reshape(-1, *[1] * (x.ndim - 1)).to(x) ** 2)
        if out.requires_grad:
            out.register_hook(self._seen)
        return out

    def denoise_with_variance(self, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
        sigma_next = torch.as_tensor(sigma_next).to(sigma).expand_as(sigma)
        return self.denoise(x, sigma), learned_range_variance(torch.full_like(sigma, 0.5), sigma, sigma_next)


def seconds_per_call(prior: Any, x_shape: tuple[int, ...], num_samples: int) -> float:
    """The faster of two timed ``prior.denoise`` calls (no gradient) on the batch a solve sends."""
    rows = (x_shape[0] * num_samples, *x_shape[1:])
    probe = Tiled(prior) if needs_tiling(prior, rows) else prior
    shape = tuple(prior.latent_shape(rows)) if is_latent_prior(prior) else rows
    device = torch.device(getattr(prior, "device", None) or "cpu")
    call = network_call(probe, "denoise", shape, False, device, working_dtype(torch.float32, getattr(prior, "dtype", None)))
    return min(time_calls(call, device, 1) for _ in range(2))


def estimate(
    y: Tensor, operator: Any, prior: Any, method: str, steps: int | None, num_samples: int, noise_sigma: float,
    x_shape: tuple[int, ...], options: dict[str, Any],
) -> Estimate | None:
    """The expected cost of ``solve(y, operator, prior, method, steps, ...)``; ``None`` for priors
    that are not diffusion denoisers (restorer and proximal priors), whose cost is not NFE, and
    where a dry run fails (the real run then reports the error)."""
    if not is_prior(prior):
        return None
    steps = method_class(method).default_steps if steps is None else steps
    runs = []
    for dry in DRY_STEPS:
        stand_in = _GaussianStandIn(prior)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                result = solve(y, operator, stand_in, method=method, steps=dry, seed=0, num_samples=num_samples,
                               noise_sigma=noise_sigma, progress=False, x_shape=x_shape, on_nan="warn", **options)
            except (ValueError, RuntimeError, FloatingPointError):  # the real run reports its own errors
                return None
        runs.append((result.nfe, result.seconds, stand_in.backprop))
    (nfe_a, _, backprop), (nfe_b, seconds_b, _) = runs
    nfe = max(0.0, nfe_a + (steps - DRY_STEPS[0]) * (nfe_b - nfe_a))
    overhead = seconds_b * steps / DRY_STEPS[1]  # per step as in the second dry run (the first fills caches)
    per_call = seconds_per_call(prior, x_shape, num_samples)
    total = overhead + nfe * per_call * (BACKPROP_FACTOR if backprop else 1.0)
    return Estimate(method, steps, nfe, backprop, per_call, total)


def announce(
    y: Tensor, operator: Any, prior: Any, method: str, steps: int | None, num_samples: int, noise_sigma: float,
    x_shape: tuple[int, ...], options: dict[str, Any], device: torch.device, images: int = 1,
) -> Estimate | None:
    """Print the plan of a solve (``images`` of them for ``evaluate``) and warn when one solve is
    expected to exceed :data:`LONG_RUN_SECONDS`, naming a faster method that fits the operator."""
    cost = estimate(y, operator, prior, method, steps, num_samples, noise_sigma, x_shape, options)
    if cost is None:
        shown = method_class(method).default_steps if steps is None else steps
        print(f"plan: {method}, {shown} steps (no time estimate for this prior or problem)")
        return None
    each = f" per image, about {duration(images * cost.seconds)} for {images} images" if images > 1 else ""
    print(f"plan: {cost.line()}{each}")
    if cost.seconds > LONG_RUN_SECONDS:
        faster = _faster(cost, y, operator, prior, num_samples, noise_sigma, x_shape)
        instead = (f"{faster.method} fits this operator and should take about {duration(faster.seconds)} "
                   f"(--method {faster.method})" if faster else "fewer --steps, a smaller --size or a GPU would shorten it")
        warnings.warn(f"{method} is expected to take about {duration(cost.seconds)} per image on {device}, more than "
                      f"{LONG_RUN_SECONDS / 60:.0f} minutes; {instead}", UserWarning, stacklevel=2)
    return cost


def _faster(
    cost: Estimate, y: Tensor, operator: Any, prior: Any, num_samples: int, noise_sigma: float, x_shape: tuple[int, ...]
) -> Estimate | None:
    """The default method for this operator (:func:`invsolve.method_choice.choose_method`) with its own
    defaults, when it is another method and is expected to be faster."""
    try:
        default, _ = choose_method(operator, prior)
    except ValueError:
        return None
    if default == cost.method:
        return None
    other = estimate(y, operator, prior, default, None, num_samples, noise_sigma, x_shape, {})
    return other if other is not None and other.seconds < cost.seconds else None
