"""Transcriptions of the official loops of Flower, FlowChef and FlowDPS, for the parity tests.

Each function follows one official sampling loop statement by statement, in the official
time convention, on a velocity model and a dense matrix ``A`` acting on row vectors
``(N, d)``; the noise comes from one ``torch.Generator`` in the order the official code
draws it.  A batch of ``N`` rows is ``N`` of the official batch-1 runs: where the official
loss spans the batch, it is summed here over per-row losses, so rows do not interact.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Velocity = Callable[[Tensor, float], Tensor]


def mixture_velocity(prior) -> Velocity:
    """The exact flow velocity of a VE prior in invsolve's time (``t = 1`` noise):
    ``v(x_t, t) = (x_t - D(x_t / (1 - t), t / (1 - t))) / t`` (scalar ``t`` in (0, 1))."""

    def v(x_t: Tensor, t: float) -> Tensor:
        t = float(t)
        sigma = torch.full((x_t.shape[0],), t / (1 - t), dtype=x_t.dtype)
        return (x_t - prior.denoise(x_t / (1 - t), sigma)) / t

    return v


def batched_velocity(v: Velocity) -> Callable[[Tensor, Tensor], Tensor]:
    """``v`` as :func:`priors.from_velocity` calls it: ``t`` one value per row (all equal here)."""
    return lambda x_t, t: v(x_t, float(t[0]))


def data_to_noise_time(v: Velocity, low: float, high: float) -> Velocity:
    """The network of a paper whose time runs from noise (0) to data (1), predicting ``x1 - x0``:
    ``-v(x, 1 - t)``, asked at ``1 - t`` clamped to ``[low, high]`` (a network trained on that range)."""
    return lambda x, t: -v(x, min(max(1.0 - float(t), low), high))


def official_flower(
    v: Velocity, A: Tensor, y: Tensor, sigma_noise: float, steps: int, n: int, generator: torch.Generator,
    max_iter: int = 50, eps: float = 1e-5,
) -> Tensor:
    """mehrsapo/Flower ``pnpflow/methods/flower.py``: ``FLOWER.solve_ip`` with ``num_samples`` 1
    (one run per row), its ``cg`` and ``BtB``; ``v(x, t)`` in its time (``t = 0`` noise)."""
    H, H_adj = (lambda x: x @ A.T), (lambda r: r @ A)

    def BtB(x: Tensor, lam: float) -> Tensor:
        return H_adj(H(x)) / sigma_noise**2 + x / lam

    def cg(b: Tensor, x0: Tensor, lam: float) -> Tensor:
        x = x0.clone()
        r = b - BtB(x, lam)
        p = r.clone()
        r_norm = (r**2).sum(dim=1, keepdim=True)
        for _ in range(max_iter):
            BTBp = BtB(p, lam)
            alpha = r_norm / (p * BTBp).sum(dim=1, keepdim=True)
            x = x + alpha * p
            r_norm_old = r_norm.clone()
            r = r - alpha * BTBp
            r_norm = (r**2).sum(dim=1, keepdim=True)
            if r_norm.sqrt().all() < eps:
                break
            beta = r_norm / r_norm_old
            p = r + beta * p
        return x

    delta = 1 / steps
    x = torch.randn(n, A.shape[1], generator=generator, dtype=A.dtype)
    for iteration in range(steps):
        t = delta * iteration
        sigma_r = (1 - t) / math.sqrt(t**2 + (1 - t) ** 2)
        x_hat_1 = x + (1 - t) * v(x, t)
        lam = sigma_r**2
        b = H_adj(y) / sigma_noise**2 + x_hat_1 / lam
        x_star = cg(b, x_hat_1, lam)
        z0 = torch.randn(x.shape, generator=generator, dtype=A.dtype)
        estimated_iso_cov = 1 - t - delta
        x = (t + delta) * x_star + estimated_iso_cov * z0
    return x


def official_flowchef(
    v: Velocity, A: Tensor, y: Tensor, gradient_scale: float, t_steps: list[float], n: int,
    generator: torch.Generator,
) -> Tensor:
    """FlowChef/FlowChef ``inverseproblems/pixel_models/rfpp/generate_inverseproblems_flowchef.py``:
    ``sample`` and ``sample_ode_generative`` with ``--solver euler``, the ``--t_steps`` schedule
    ``t_steps`` (``N = len(t_steps)``), mask of ones (deblurring / super-resolution) and no
    ``--likebaseline``; ``v(z, t)`` in its time (``t = 1`` noise, ``v ~ eps - x0``)."""
    N = len(t_steps)
    t_steps = list(t_steps)
    t_steps[0] = 1 - 1e-5
    z = torch.randn(n, A.shape[1], generator=generator, dtype=A.dtype)
    z = z * (1 - 1e-5)
    time_schedule = t_steps + [0]
    for i in range(len(time_schedule[:-1])):
        t = time_schedule[i]
        dt = time_schedule[i + 1] - t
        vt = v(z, t)
        if i < N - 1:
            with torch.enable_grad():
                z = z.detach().requires_grad_()
                z_h = z - t * vt
                # torch.mean over the batch of one: the mean over each row's measurement
                loss = ((z_h @ A.T - y) ** 2).mean(dim=1).sum()
                grads = torch.autograd.grad(loss, z)[0]
                z = z.detach() - gradient_scale * grads
        z = z.detach().clone() + vt * dt
    return z


def official_sd3_sigmas(NFE: int, shift_init: float, shift: float = 4.0, T: int = 1000) -> list[float]:
    """The ``sigmas`` of ``SD3FlowDPS.sample``: ``scheduler.config.shift = 4.0``, then diffusers
    0.30.1's ``FlowMatchEulerDiscreteScheduler.set_timesteps(NFE)`` (``requirements.txt``) on a
    scheduler built with ``shift_init`` (SD3: 3.0): ``linspace`` between the ends of its
    training sigmas (already shifted by ``shift_init``), shifted by ``config.shift``."""
    train = torch.linspace(1, T, T, dtype=torch.float64).flip(0) / T
    train = shift_init * train / (1 + (shift_init - 1) * train)
    sigma_max, sigma_min = float(train[0]), float(train[-1])
    timesteps = torch.linspace(sigma_max * T, sigma_min * T, NFE, dtype=torch.float64)
    sigmas = timesteps / T
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas.tolist()


def official_flowdps(
    v: Velocity, decode: Callable[[Tensor], Tensor], A: Tensor, y: Tensor, sigmas: list[float], step_size: float,
    task: str, latent_dim: int, n: int, generator: torch.Generator, num_iters: int = 3,
) -> Tensor:
    """FlowDPS-Inverse/FlowDPS ``sd3_sampler.py``: ``SD3FlowDPS.sample`` and ``data_consistency`` on
    the scheduler's ``sigmas`` (its "custom timesteps" hook), ``cfg_scale`` 1 (guidance is the
    prior's), ``v(z, t)`` in its time (``t = 1`` noise); ``At`` is ``A^T``, ``A_pinv`` the
    pseudo-inverse."""
    At, A_pinv = (lambda r: r @ A), (lambda r: r @ torch.linalg.pinv(A).T)
    op_A = lambda x: x @ A.T  # noqa: E731

    def data_consistency(z0t: Tensor) -> Tensor:
        z0t = z0t.detach().requires_grad_(True)
        for _ in range(num_iters):
            x0t = decode(z0t)
            M = A_pinv if "sr" in task else At
            loss = (M(y) - M(op_A(x0t))).norm(dim=1).sum()
            grad = torch.autograd.grad(loss, z0t)[0]
            z0t = z0t - step_size * grad
        return z0t.detach()

    NFE = len(sigmas)
    z = torch.randn(n, latent_dim, generator=generator, dtype=A.dtype)
    for i in range(NFE):
        pred_v = v(z, sigmas[i])
        sigma = sigmas[i]
        sigma_next = sigmas[i + 1] if i + 1 < NFE else 0.0
        z0t = z - sigma * pred_v
        z1t = z + (1 - sigma) * pred_v
        delta = sigma - sigma_next
        z0y = data_consistency(z0t)
        z0y = (1 - sigma) * z0t + sigma * z0y
        noise = math.sqrt(sigma_next) * z1t + math.sqrt(1 - sigma_next) * torch.randn(
            z1t.shape, generator=generator, dtype=A.dtype
        )
        z = z0y + (sigma - delta) * (noise - z0y)
    return decode(z)
