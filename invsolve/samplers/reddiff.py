"""RED-Diff: regularisation by denoising diffusion, a variational sampler."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from invsolve.samplers.base import Defaults, Method, Problem, register
from invsolve.samplers.updates import misfit_gradient, spectral_misfit_gradient
from invsolve.schedules import strided_timesteps

#: Denoiser weightings ``w(sigma)`` of the paper's code; ``sigma = 1/sqrt(SNR)`` in VE.
REDDIFF_WEIGHTINGS: dict[str, Callable[[float], float]] = {
    "linear": lambda s: s,
    "sqrt": math.sqrt,
    "square": lambda s: s * s,
    "log": math.log1p,
    "trunc_linear": lambda s: min(s, 1.0),
    "power2over3": lambda s: s ** (2 / 3),
    "const": lambda s: 1.0,
}
REDDIFF_INITS = ("auto", "pinv", "tikhonov", "adjoint", "zeros")
#: The operator method each start needs.
INIT_NEEDS = {"tikhonov": "prox", "pinv": "pinv", "adjoint": "adjoint"}
_REDDIFF = "NVlabs/RED-diff "
_BATCH = _REDDIFF + "sample_batch.sh (grad_term_weight=1.0; lr from _configs/algo/reddiff.yaml)"
_TEST = _REDDIFF + "sample_test.sh"

#: ``(lam, lr)`` of the official scripts; tasks they do not run (motion blur, ...) get the
#: field defaults, ``_configs/algo/reddiff.yaml``: ``grad_term_weight: 0.25``, ``lr: 0.1``.
REDDIFF_TASK_DEFAULTS = MappingProxyType(
    {
        "super_resolution": Defaults({"lam": 1.0, "lr": 0.1}, _BATCH + ", sr4"),
        "inpainting": Defaults(
            {"lam": 1.0, "lr": 0.1},
            _BATCH + ", in2_20ff",
            noisy={"lr": 0.25},
            noisy_source=_TEST + ", in2_20ff with algo.sigma_y=0.1, lr 0.25, grad_term_weight 1.0",
        ),
        "gaussian_blur": Defaults(
            {"lam": 0.25, "lr": 0.5},
            _TEST + ", deblur_gauss",
            noisy_warning="the scripts run it at sigma_y = 0 only, where nothing weighs the data term against noise; "
            "for noisy blur use diffpir or ddrm",
        ),
        "nonlinear_blur": Defaults({"lam": 0.25, "lr": 0.5}, _TEST + ", deblur_nl"),
        "phase_retrieval": Defaults({"lam": 0.25, "lr": 0.5}, _TEST + ", phase_retrieval"),
        "hdr": Defaults({"lam": 0.25, "lr": 0.5}, _TEST + ", hdr"),
    }
)


@register
@dataclass
class REDDiff(Method):
    r"""RED-Diff (Mardani, Song, Kautz & Vahdat, "A Variational Perspective on Solving Inverse
    Problems with Diffusion Models", ICLR 2024).

    Official code: NVlabs/RED-diff (``algos/reddiff.py``, ``utils/functions.py``,
    ``_configs/algo/reddiff.yaml``, ``sample_batch.sh``, ``sample_test.sh``).  A point estimate
    :math:`\mu` is optimised with Adam while the noise level descends the timesteps
    ``range(0, T, T // steps)`` from high to low (``get_timesteps``; the EDM grid for priors
    without a table), one NFE each.  At level :math:`\sigma`, with fresh :math:`\epsilon` and
    :math:`D` without gradient,

    .. math::
        \ell(\mu) = \lambda\, w(\sigma)\, \operatorname{mean}\bigl(\operatorname{sg}[\hat\epsilon - \epsilon]
        \odot \mu\bigr) + \frac{v}{2} \operatorname{mean}\bigl((y - A(\mu))^2\bigr),
        \qquad \hat\epsilon = \frac{\mu + \sigma\epsilon - D(\mu + \sigma\epsilon, \sigma)}{\sigma},

    so with ``weighting = "linear"`` (:math:`w = \sigma`) the prior gradient is the RED residual
    :math:`\lambda(\mu - D)`.  The gradient is formed directly,
    :math:`\nabla\ell = \lambda w(\sigma)(\hat\epsilon - \epsilon)/n + v J_A^T (A(\mu) - y)/m`: only
    :math:`A` is differentiated, never the network.  The misfit gradient goes through
    ``operator.svd`` when the operator has one
    (:func:`~invsolve.samplers.updates.spectral_misfit_gradient`), as the official code applies
    every linear operator through its SVD class (``utils/degredations.py``; for the Gaussian blur
    DDRM's ``Deblurring``, whose 1-D singular values below 3e-2 are zeroed, like the separable
    reflect blurs' ``factor_rcond``).  The result is ``x0_pred``, the iterate *before* the last
    Adam step (``sigma_x0 = 0``), as in the official loop.  ``noise_sigma`` does not enter the
    update: ``obs_weight`` (:math:`v`) stands in for :math:`1/\sigma_y^2`, so the method is
    MAP-like and its samples vary only through the optimisation noise.

    Start ``init``: ``"pinv"`` (:math:`A^+ y`, the official ``H.H_pinv(y_0)``), ``"tikhonov"``
    (:math:`\arg\min_x \|y - A x\|^2 + \sigma_y^2 \|x\|^2`, the operator's ``prox`` at 0; it
    amplifies noise at most ``1 / (2 sigma_y)`` times where :math:`A^+ y` amplifies it by the
    inverse of the smallest kept singular value), ``"adjoint"`` (:math:`A^T y`), ``"zeros"``;
    ``"auto"`` takes ``pinv``, ``adjoint`` or zeros, whichever the operator offers first.
    Defaults: ``weighting = "linear"``, ``obs_weight = 1``, Adam betas (0.9, 0.99), 1000 steps;
    ``lam`` / ``lr`` per task from :attr:`task_defaults` (the Gaussian-deblur row comes from
    noiseless runs, ``sample_test.sh``; see the notes for its behaviour with noise).

    Deviations from the official code:

    * means are per row and the row losses summed, so every sample is an independent
      optimisation (the official means span the batch, almost immaterial under Adam's scale
      invariance);
    * the last level's network call and Adam step, which cannot change the returned estimate,
      are skipped (``steps - 1`` NFE); the callback reports that level with ``denoised`` the
      returned estimate;
    * not implemented: ``sigma_x0`` (0 in every official setting but one commented line) and the
      ``cond_awd`` / ``awd`` variants (the defaults use the network's epsilon).
    """

    name = "reddiff"
    needs = ("vjp", "pixel")
    default_steps = 1000
    cost = (
        "1 network call and 1 misfit gradient through A (the SVD where it has one) per step, plus 1 Adam "
        "update; no backprop through the network"
    )
    summary = "RED-Diff: Adam on a point estimate with denoiser (score-matching) regularisation"

    task_defaults = REDDIFF_TASK_DEFAULTS

    lam: float = 0.25
    obs_weight: float = 1.0
    lr: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    weighting: str = "linear"
    init: str = "auto"

    def resolved(self, problem: Problem) -> REDDiff:
        if self.weighting not in REDDIFF_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {sorted(REDDIFF_WEIGHTINGS)}, got {self.weighting!r}")
        if self.init not in REDDIFF_INITS:
            raise ValueError(f"init must be one of {REDDIFF_INITS}, got {self.init!r}")
        if self.lr <= 0 or self.lam < 0 or self.obs_weight < 0:
            raise ValueError("need lr > 0, lam >= 0 and obs_weight >= 0")
        return self

    def initial_estimate(self, problem: Problem) -> Tensor:
        """``A^+ y``, the Tikhonov solution, ``A^T y`` or zeros, as ``init`` asks and the operator allows."""
        caps = getattr(problem.operator, "capabilities", frozenset())
        init = self.init
        if init == "auto":
            init = next((name for name in ("pinv", "adjoint") if INIT_NEEDS[name] in caps), "zeros")
        if init != "zeros" and INIT_NEEDS[init] not in caps:
            raise ValueError(f"init={init!r} needs an operator with {INIT_NEEDS[init]}(); use init='zeros' or 'auto'")
        with torch.no_grad():
            if init == "tikhonov":
                zeros = torch.zeros(problem.x_shape, device=problem.y.device, dtype=problem.y.dtype)
                return problem.operator.prox(zeros, problem.y, problem.noise_sigma**2).reshape(problem.x_shape)
            if init == "pinv":
                return problem.operator.pinv(problem.y).reshape(problem.x_shape)
            if init == "adjoint":
                return problem.operator.adjoint(problem.y).reshape(problem.x_shape)
        return torch.zeros(problem.x_shape, device=problem.y.device, dtype=problem.y.dtype)

    def data_gradient(self, problem: Problem) -> Callable[[Tensor], Tensor]:
        """``x -> J_A^T (A(x) - y)``: through the operator's SVD where it has one, as the
        official code's ``H.H`` (a truncated SVD for separable reflect blurs), else through
        the operator."""
        if "svd" in getattr(problem.operator, "capabilities", ()):
            svd = problem.operator.svd(problem.x_shape)
            if svd is not None:
                return spectral_misfit_gradient(svd, problem.y, problem.x_shape)
        return lambda x: misfit_gradient(problem.operator, x, problem.y)

    def run(self, problem: Problem) -> Tensor:
        sigmas = problem.timestep_sigmas(strided_timesteps)[:-1]
        data_gradient = self.data_gradient(problem)
        weight = REDDIFF_WEIGHTINGS[self.weighting]
        mu = self.initial_estimate(problem).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([mu], lr=self.lr, betas=(self.beta1, self.beta2))
        n, m = mu[0].numel(), problem.y[0].numel()
        last = len(sigmas) - 1
        for i in problem.iterate(range(last), self.name):
            sigma = sigmas[i]
            with torch.no_grad():
                estimate = mu.detach()
                x0 = problem.denoise(estimate + sigma * problem.randn(), sigma)
                eps_gap = (estimate - x0) / sigma  # eps_hat - eps, without gradient
                prior_grad = (self.lam * weight(sigma) / n) * eps_gap
                data_grad = (self.obs_weight / m) * data_gradient(estimate)
                mu.grad = prior_grad + data_grad
            optimizer.step()
            problem.report(i, sigma, mu.detach(), x0)
        estimate = mu.detach()
        problem.report(last, sigmas[last], estimate, estimate)
        return estimate
