"""Transcriptions of the flow solvers of github ``annegnx/PnP-Flow`` (``pnpflow/methods/``).

Each function follows one official loop statement by statement in the official time
(``t = 0`` noise, ``t = 1`` data) on a velocity model ``v(x, t) ~ x1 - x0``, for a dense
matrix ``A`` and row-vector samples ``(N, d)``; the data gradients and linear solves
are written with ``A`` as the code writes them with ``H``, ``H_adj``.  The parity tests
run invsolve on :func:`priors.from_velocity` of the same field.  Draws come from one
generator, in the order the official code draws them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from priors import GaussianMixturePrior

PaperVelocity = Callable[[Tensor, float], Tensor]

#: The time range of :func:`priors.from_velocity` (``t_min = 1 / train_steps``, ``t_max = 0.999``).
FLOW_T_MIN, FLOW_T_MAX = 1e-3, 0.999


def mixture_flow_velocity(prior: GaussianMixturePrior) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact mixture velocity in invsolve's time, ``(x_t - D(x_t / (1 - t), t / (1 - t))) / t``
    with ``t`` per row; what :func:`priors.from_velocity` takes."""

    def velocity(x_t: Tensor, t: Tensor) -> Tensor:
        t = t.reshape(-1, *([1] * (x_t.ndim - 1)))
        return (x_t - prior.denoise(x_t / (1 - t), (t / (1 - t)).reshape(-1))) / t

    return velocity


def paper_model(prior: GaussianMixturePrior) -> PaperVelocity:
    """The same field as the official code's network: ``v(x, t) = -v_flow(x, 1 - t)``, the flow
    time clamped to the range of :func:`priors.from_velocity` (the network is not asked at t = 0, 1)."""
    flow = mixture_flow_velocity(prior)

    def v(x: Tensor, t: float) -> Tensor:
        s = min(max(1.0 - t, FLOW_T_MIN), FLOW_T_MAX)
        return -flow(x, torch.full((x.shape[0],), s, dtype=x.dtype))

    return v


def official_pnp_flow(
    v: PaperVelocity, A: Tensor, y: Tensor, steps: int, lr_pnp: float, alpha: float, num_samples: int,
    sigma_noise: float, generator: torch.Generator,
) -> Tensor:
    """``PNP_FLOW.solve_ip`` (gaussian noise, ``gamma_style='alpha_1_minus_t'``)."""
    delta = 1 / steps
    lr = sigma_noise**2 * lr_pnp
    x = torch.ones_like(y) @ A  # H_adj(ones)
    for iteration in range(steps):
        t1 = delta * iteration
        lr_t = lr * (1 - t1) ** alpha
        z = x - lr_t * ((x @ A.T - y) @ A / sigma_noise**2)
        x_new = torch.zeros_like(x)
        for _ in range(num_samples):
            z_tilde = t1 * z + torch.randn(x.shape, generator=generator, dtype=x.dtype) * (1 - t1)
            x_new += z_tilde + (1 - t1) * v(z_tilde, t1)
        x_new /= num_samples
        x = x_new
    return x


def official_ot_ode(
    v: PaperVelocity, A: Tensor, y: Tensor, steps_ode: int, start_time: float, gamma: str, sigma_noise: float,
    generator: torch.Generator,
) -> Tensor:
    """``OT_ODE.solve_ip``, the generic branch (the linear system solved exactly instead of by GMRES)."""
    x = start_time * (y @ A) + (1 - start_time) * torch.randn(y.shape[0], A.shape[1], generator=generator,
                                                               dtype=y.dtype)
    delta = 1 / steps_ode
    for iteration in range(int(steps_ode * start_time), int(steps_ode)):
        t1 = delta * iteration
        with torch.no_grad():
            vt = v(x, t1)
            rt_squared = (1 - t1) ** 2 / ((1 - t1) ** 2 + t1**2)
            x1_hat = x + (1 - t1) * vt
            d = y - x1_hat @ A.T
            C = rt_squared * A @ A.T + sigma_noise**2 * torch.eye(A.shape[0], dtype=A.dtype)
            sol = torch.linalg.solve(C, d.T).T
            vec = sol @ A
        gamma_t = 1.0 if gamma == "constant" else math.sqrt(t1 / (t1**2 + (1 - t1) ** 2))
        g = torch.autograd.functional.vjp(lambda z: v(z, t1), inputs=x, v=vec)[1]
        with torch.no_grad():
            g = vec + (1 - t1) * g
            ratio = (1 - t1) / t1
            x = x + delta * (vt + ratio * gamma_t * g)
    return x


def scipy_inverse_flow(v: PaperVelocity, x: Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> Tensor:
    """``odeint(cnf, x, [1, 0], method='dopri5')`` of the code, by scipy's Dormand-Prince ``RK45``."""
    from scipy.integrate import solve_ivp

    def f(t: float, flat):
        z = torch.as_tensor(flat, dtype=x.dtype).reshape(x.shape)
        return v(z, float(t)).reshape(-1).numpy()

    out = solve_ivp(f, (1.0, 0.0), x.reshape(-1).numpy(), method="RK45", rtol=rtol, atol=atol)
    return torch.as_tensor(out.y[:, -1], dtype=x.dtype).reshape(x.shape)


def official_d_flow(
    v: PaperVelocity, A: Tensor, y: Tensor, steps_euler: int, lmbda: float, alpha: float, max_iter: int,
    lbfgs_iter: int, generator: torch.Generator, start_time: float = 0.0,
    invert: Callable[[PaperVelocity, Tensor], Tensor] = scipy_inverse_flow,
) -> Tensor:
    """``D_FLOW.solve_ip`` with ``forward_flow_matching`` (midpoint steps) and ``compute_norm``;
    ``invert(v, x)`` is the code's ``inverse_flow_matching`` (default: scipy's ``RK45``)."""

    def forward_flow_matching(z: Tensor) -> Tensor:
        delta = (1 - start_time) / (steps_euler - 1)
        for i in range(steps_euler - 1):
            t1 = delta * i + start_time
            z = z + delta * v(z + delta / 2 * v(z, t1), t1 + delta / 2)
        return z

    x = y @ A
    z = invert(v, x)
    z = math.sqrt(alpha) * z + math.sqrt(1 - alpha) * torch.randn(z.shape, generator=generator, dtype=z.dtype)
    z = z.detach().requires_grad_(True)
    optim_img = torch.optim.LBFGS([z], max_iter=lbfgs_iter, history_size=100, line_search_fn="strong_wolfe")
    d = z.shape[1]
    for _ in range(max_iter):

        def closure():
            optim_img.zero_grad()
            norm_x0 = torch.sqrt((z**2).sum(1))
            reg = 0.5 * torch.clamp(norm_x0**2, min=-1e6, max=1e6) - (d - 1) * torch.log(norm_x0 + 1e-5)
            loss = (torch.sum((forward_flow_matching(z) @ A.T - y) ** 2, dim=1) + lmbda * reg).sum()
            loss.backward()
            return loss

        optim_img.step(closure)
    return forward_flow_matching(z.detach())


def official_flow_priors(
    v: PaperVelocity, A: Tensor, y: Tensor, N: int, K: int, lmbda: float, eta: float, generator: torch.Generator,
    start_time: float = 0.0,
) -> Tensor:
    """``FLOW_PRIORS.solve_ip`` (gaussian noise) with ``utils.hut_estimator(1, ...)``; the probe is the sign
    of a normal draw (the code: ``rand < 0.5``, the same law)."""

    def hut_estimator(x: Tensor, t: float) -> Tensor:
        eps = torch.sign(torch.randn(x.shape, generator=generator, dtype=x.dtype))
        prod = torch.autograd.functional.jvp(lambda z: v(z, t), x, eps, create_graph=True)[1]
        return (prod * eps).sum(1)

    x_init = torch.randn(y.shape[0], A.shape[1], generator=generator, dtype=y.dtype)
    x = x_init.clone()
    x.requires_grad_(True)
    if start_time > 0.0:
        eps = 1 * start_time
        dt = (1 - eps) / N
    else:
        dt = 1.0 / N
        eps = 1e-3
    for iteration in range(N):
        num_t = iteration / N * (1 - eps) + eps
        t = num_t
        x = x.detach().clone()
        x.requires_grad = True
        optim_img = torch.optim.Adam([x], lr=eta)
        for _ in range(K):
            pred = v(x, num_t)
            x_next = x + pred * dt
            y_next = (t + dt) * y + (1 - (t + dt)) * (x_init @ A.T)
            trace_term = hut_estimator(x, num_t)
            loss = lmbda * torch.sum((x_next @ A.T - y_next) ** 2, dim=1)
            if iteration == 0:
                loss += 0.5 * torch.sum(x**2, dim=1) + trace_term * dt
            else:
                loss += trace_term * dt
            loss = loss.sum()
            optim_img.zero_grad()
            grad = torch.autograd.grad(loss, x, create_graph=False)[0]
            if iteration == 0:
                x.grad = grad
            else:
                x.grad = grad + (-1.0 / (1.0 - num_t) * (-x + num_t * pred.detach())).detach()
            optim_img.step()
        x = x + v(x, num_t) * dt
    return x.detach()
