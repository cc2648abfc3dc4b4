"""Analytic Gaussian and Gaussian-mixture priors with exact denoisers."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from priors.base import Prior


class GaussianMixturePrior(Prior):
    r"""Mixture ``p(x0) = sum_k w_k N(x0; mu_k, C_k)`` with its exact denoiser.

    Noised by ``x = x0 + sigma * eps`` the density stays a mixture,
    ``p_sigma(x) = sum_k w_k N(x; mu_k, C_k + sigma^2 I)``, and the MMSE denoiser is

    .. math::
        D(x, \sigma) = \sum_k \gamma_k(x) [\mu_k + C_k (C_k + \sigma^2 I)^{-1} (x - \mu_k)],
        \quad \gamma_k \propto w_k N(x; \mu_k, C_k + \sigma^2 I).

    Each ``C_k`` is eigendecomposed once, ``C_k = Q_k diag(lambda_k) Q_k^T``, so any
    ``sigma`` costs one projection.  Covariances may be

    * full ``(K, d, d)`` for vector data ``(d,)``;
    * diagonal, shaped like the means ``(K, *data_shape)`` (images);
    * isotropic ``(K,)`` or a float shared by all components.

    ``means`` has shape ``(K, *data_shape)``; the data are ``(N, *data_shape)``.

    ``alphas_cumprod`` makes the same mixture a discrete-time DDPM model: the prior
    then exposes the timestep table ``sigmas = sqrt((1 - abar_t) / abar_t)`` (and its
    ends as ``sigma_min`` / ``sigma_max``), so methods run on their official timestep
    grids exactly as on a DDPM network whose epsilon prediction is the exact
    ``(x - D(x, sigma_t)) / sigma_t`` (Ho et al. 2020).  The denoiser stays exact at
    every sigma.
    """

    def __init__(
        self,
        weights: Tensor,
        means: Tensor,
        covs: Tensor | float = 1.0,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        alphas_cumprod: Tensor | None = None,
    ):
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        if weights.ndim != 1 or means.shape[0] != weights.shape[0]:
            raise ValueError("weights must be (K,) and means (K, *data_shape)")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("mixture weights must be non-negative with a positive sum")
        self.weights = weights / weights.sum()
        self.means = means
        self.data_shape = tuple(means.shape[1:])
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.alphas_cumprod = None
        if alphas_cumprod is not None:
            abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).reshape(-1)
            if abar.numel() < 2 or not ((abar > 0) & (abar < 1)).all() or not (abar[1:] < abar[:-1]).all():
                raise ValueError("alphas_cumprod must decrease strictly inside (0, 1)")
            self.alphas_cumprod = abar
            self.sigmas = ((1 - abar) / abar).sqrt()
            self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])
        K, n = means.shape[0], means[0].numel()
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.ndim == 3 and len(self.data_shape) == 1 and covs.shape == (K, n, n):
            self.eigvals, self.eigvecs = torch.linalg.eigh(covs)
            self.eigvals = self.eigvals.clamp_min(0)
        elif covs.shape == means.shape or covs.ndim <= 1:
            if covs.shape != means.shape:
                covs = covs.reshape(-1, *([1] * len(self.data_shape))).expand(means.shape)
            self.eigvals = covs.reshape(K, n).clone()
            self.eigvecs = None
        else:
            raise ValueError(
                f"covs of shape {tuple(covs.shape)} do not fit means {tuple(means.shape)}: "
                "use (K, d, d), (K, *data_shape), (K,) or a float"
            )
        if (self.eigvals < 0).any():
            raise ValueError("covariances must be positive semi-definite")

    @property
    def num_components(self) -> int:
        return self.weights.shape[0]

    def _params(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        cast = dict(device=like.device, dtype=like.dtype)
        Q = None if self.eigvecs is None else self.eigvecs.to(**cast)
        return self.weights.to(**cast), self.means.flatten(1).to(**cast), self.eigvals.to(**cast), Q

    def _to_eigenbasis(self, diff: Tensor, Q: Tensor | None) -> Tensor:
        """``Q_k^T (x - mu_k)`` for ``diff`` of shape ``(N, K, n)``."""
        return diff if Q is None else torch.einsum("kij,nki->nkj", Q, diff)

    def _from_eigenbasis(self, u: Tensor, Q: Tensor | None) -> Tensor:
        return u if Q is None else torch.einsum("kij,nkj->nki", Q, u)

    def _component_terms(
        self, x: Tensor, sigma: Tensor, scale: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Log responsibilities (unnormalised), eigen-coordinates ``Q_k^T (x - a mu_k)`` and
        variances ``a^2 lambda_k + sigma^2`` of ``x = a x0 + sigma eps`` (``a = scale``, default 1)."""
        w, mu, lam, Q = self._params(x)
        a = 1.0 if scale is None else scale.reshape(-1, 1, 1).to(x)
        var = a**2 * lam[None] + sigma.reshape(-1, 1, 1).to(x) ** 2  # (N, K, n)
        u = self._to_eigenbasis(x.flatten(1)[:, None] - a * mu[None], Q)
        n = u.shape[-1]
        log_lik = -0.5 * ((u**2 / var).sum(-1) + var.log().sum(-1) + n * math.log(2 * math.pi))
        return log_lik + w.log()[None], u, var, Q

    @property
    def shared_isotropic_variance(self) -> float | None:
        """``c`` when every component has covariance ``c I``, else ``None``."""
        if self.eigvecs is not None or not bool((self.eigvals == self.eigvals.flatten()[0]).all()):
            return None
        return float(self.eigvals.flatten()[0])

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        c = self.shared_isotropic_variance
        if c is not None:
            return self._denoise_shared_isotropic(x, sigma, c)
        log_r, u, var, Q = self._component_terms(x, sigma)
        _, mu, lam, _ = self._params(x)
        gamma = torch.softmax(log_r, dim=1)  # (N, K)
        shrunk = self._from_eigenbasis(lam[None] / var * u, Q) + mu[None]
        return (gamma[..., None] * shrunk).sum(1).reshape(x.shape)

    def _denoise_shared_isotropic(self, x: Tensor, sigma: Tensor, c: float) -> Tensor:
        """The same denoiser in two matrix products when all ``C_k = c I``: with
        ``v = c + sigma^2``, ``gamma = softmax_k(log w_k + (x.mu_k - |mu_k|^2 / 2) / v)`` (the
        ``|x|^2`` and determinant terms cancel) and ``D = (c / v) x + (sigma^2 / v) sum_k gamma_k mu_k``."""
        w, mu, _, _ = self._params(x)
        flat = x.flatten(1)
        sigma2 = sigma.to(x).reshape(-1, 1) ** 2
        v = c + sigma2
        gamma = torch.softmax(w.log() + (flat @ mu.T - 0.5 * (mu**2).sum(1)) / v, dim=1)
        return (c / v * flat + sigma2 / v * (gamma @ mu)).reshape(x.shape)

    def velocity(self, x_t: Tensor, t: float | Tensor) -> Tensor:
        r"""The exact rectified-flow velocity ``E[eps - x0 | x_t]`` on ``x_t = (1 - t) x0 + t eps``.

        Along the path the mixture stays a mixture,
        ``p_t = sum_k w_k N((1 - t) mu_k, S_k)`` with ``S_k = (1 - t)^2 C_k + t^2 I``; as
        ``Cov(x0, x_t | k) = (1 - t) C_k`` and ``Cov(eps, x_t | k) = t I``,

        .. math::
            v(x_t, t) = \sum_k \gamma_k(x_t)\,[(t I - (1 - t) C_k) S_k^{-1} (x_t - (1 - t)\mu_k) - \mu_k],
            \quad \gamma_k \propto w_k N(x_t; (1 - t)\mu_k, S_k),

        one projection per component in ``C_k``'s eigenbasis.  ``t`` is a scalar or one
        value per row in (0, 1] (at ``t = 1``, ``v = x_t - E[x0]``; ``t = 0`` needs full-rank
        covariances).  Equals ``(x_t - D(x_t / (1 - t), t / (1 - t))) / t`` for ``t < 1``.
        """
        t = torch.as_tensor(t, device=x_t.device, dtype=x_t.dtype)
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        log_r, u, var, Q = self._component_terms(x_t, t, scale=1 - t)
        _, mu, lam, _ = self._params(x_t)
        gamma = torch.softmax(log_r, dim=1)  # (N, K)
        b, a = t.reshape(-1, 1, 1), (1 - t).reshape(-1, 1, 1)
        per_component = self._from_eigenbasis((b - a * lam[None]) / var * u, Q) - mu[None]
        return (gamma[..., None] * per_component).sum(1).reshape(x_t.shape)

    def log_prob(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """``log p_sigma(x)`` per item (``sigma = 0`` needs full-rank covariances)."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).expand(x.shape[0])
        log_r, _, _, _ = self._component_terms(x, sigma)
        return torch.logsumexp(log_r, dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact draws, shape ``(n, *data_shape)`` in float64 on the CPU."""
        w, mu, lam, Q = self._params(self.means)
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, mu.shape[1], generator=generator, dtype=mu.dtype) * lam[k].sqrt()
        if Q is not None:
            z = torch.einsum("nij,nj->ni", Q[k], z)
        return (mu[k] + z).reshape(n, *self.data_shape)

    def posterior(self, A: Tensor, y: Tensor, noise_sigma: float) -> GaussianMixturePrior:
        r"""Exact posterior ``p(x0 | y)`` for ``y = A x0 + noise_sigma * eps`` (vector data).

        Each component updates as a linear-Gaussian model (Bishop 2006, §2.3.3), written
        with the Kalman gain so that singular (PSD) covariances work too:
        ``G_k = C_k A^T (A C_k A^T + s^2 I)^{-1}``, ``m_k = mu_k + G_k (y - A mu_k)``,
        ``S_k = (I - G_k A) C_k (I - G_k A)^T + s^2 G_k G_k^T`` (Joseph form, PSD by
        construction), weight ``∝ w_k N(y; A mu_k, A C_k A^T + s^2 I)``.
        """
        if len(self.data_shape) != 1:
            raise ValueError("posterior() is defined for vector data (d,)")
        if noise_sigma <= 0:
            raise ValueError("posterior() needs noise_sigma > 0")
        A = torch.as_tensor(A, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        w, mu, lam, Q = self._params(self.means)
        d = mu.shape[1]
        Q = torch.eye(d, dtype=mu.dtype).expand(len(w), d, d) if Q is None else Q
        C = Q @ torch.diag_embed(lam) @ Q.transpose(1, 2)
        s2 = noise_sigma**2
        cov_y = A @ C @ A.T + s2 * torch.eye(A.shape[0], dtype=A.dtype)
        gain = torch.linalg.solve(cov_y, A @ C).transpose(1, 2)
        m = mu + torch.einsum("kij,kj->ki", gain, y[None] - mu @ A.T)
        keep = torch.eye(d, dtype=mu.dtype) - gain @ A
        S = keep @ C @ keep.transpose(1, 2) + s2 * gain @ gain.transpose(1, 2)
        log_w = w.log() + torch.distributions.MultivariateNormal(mu @ A.T, cov_y).log_prob(y)
        return GaussianMixturePrior(
            torch.softmax(log_w, 0), m, (S + S.transpose(1, 2)) / 2, self.sigma_min, self.sigma_max,
            self.alphas_cumprod,
        )


class GaussianPrior(GaussianMixturePrior):
    """A single Gaussian ``N(mean, cov)``: ``D(x, sigma) = mu + C (C + sigma^2 I)^{-1} (x - mu)``.

    ``cov`` is ``(d, d)`` for vectors, shaped like ``mean`` (diagonal) for images,
    or a float (isotropic).
    """

    def __init__(
        self,
        mean: Tensor,
        cov: Tensor | float = 1.0,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        alphas_cumprod: Tensor | None = None,
    ):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        super().__init__(torch.ones(1), mean[None], cov[None], sigma_min, sigma_max, alphas_cumprod)
