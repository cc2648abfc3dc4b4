"""Official timestep grids, data-range clamping and divergence handling shared by all methods."""

from __future__ import annotations

import pytest
import torch

from invsolve import solve
from invsolve.samplers import DivergenceError
from invsolve.schedules import respaced_timesteps, strided_timesteps, table_grid
from operators import MatrixOperator
from priors import ClippedPrior, GaussianMixturePrior
from priors.adm import linear_alphas_cumprod


def test_strided_grid_is_the_ddrm_and_ddnm_sequence() -> None:
    # DDRM runners/diffusion.py: skip = 1000 // 20, seq = range(0, 1000, skip) -> 950, 900, ..., 0
    assert strided_timesteps(1000, 20) == list(range(950, -1, -50))
    # DDNM (T_sampling = 100): t = 990, 980, ..., 0
    assert strided_timesteps(1000, 100) == list(range(990, -1, -10))
    # a step count that does not divide T keeps the official range(0, T, T // steps)
    assert strided_timesteps(1000, 300) == list(range(0, 1000, 3))[::-1]


def test_respaced_grid_is_guided_diffusions_space_timesteps() -> None:
    assert respaced_timesteps(1000, 1000) == list(range(999, -1, -1))
    assert respaced_timesteps(1000, 4) == [999, 666, 333, 0]
    assert respaced_timesteps(1000, 1) == [0]
    with pytest.raises(ValueError, match="between 1 and the prior's 1000"):
        respaced_timesteps(1000, 1001)


def test_table_grid_ends_at_zero() -> None:
    table = torch.tensor([0.1, 0.2, 0.4, 0.8], dtype=torch.float64)
    assert table_grid(table, [3, 1, 0]) == [0.8, 0.2, 0.1, 0.0]


def _mixture(table: bool) -> GaussianMixturePrior:
    abar = linear_alphas_cumprod() if table else None
    return GaussianMixturePrior(torch.ones(2), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.3, alphas_cumprod=abar)


def test_methods_visit_the_official_sigmas_of_a_discrete_prior() -> None:
    prior = _mixture(table=True)
    op = MatrixOperator(torch.tensor([[1.0, 0.0]]))
    seen: list[float] = []
    solve(torch.tensor([[1.0]]), op, prior, method="ddrm", seed=0, noise_sigma=0.1, progress=False,
          callback=lambda state: seen.append(state["sigma"]))
    expected = [float(prior.sigmas[t]) for t in range(950, -1, -50)]
    assert seen == pytest.approx(expected, rel=1e-12)


def test_clamping_follows_the_data_range_and_the_official_code() -> None:
    op = MatrixOperator(torch.tensor([[1.0, 0.0]]))
    y = torch.tensor([[1.0]])
    unbounded = solve(y, op, _mixture(False), method="dps", steps=20, seed=0, noise_sigma=0.1, progress=False)
    assert unbounded.options["clip_denoised"] is False  # no data range: never clamped
    bounded = ClippedPrior(_mixture(False), -3.0, 3.0)
    assert solve(y, op, bounded, method="ddrm", steps=5, seed=0, noise_sigma=0.1, progress=False).options[
        "clip_denoised"
    ] is True  # the prior's own sampler clamps (clip_sample)
    with pytest.raises(ValueError, match="declares none"):
        solve(y, op, _mixture(False), method="ddrm", seed=0, progress=False, clip_denoised=True)


class _ExplodingPrior:
    """A mixture whose denoiser returns NaN below sigma 1."""

    def __init__(self) -> None:
        self.inner = _mixture(False)
        self.sigma_min, self.sigma_max = self.inner.sigma_min, self.inner.sigma_max

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = self.inner.denoise(x, sigma)
        return torch.where(sigma.reshape(-1, 1) < 1, torch.nan, out)


def test_a_diverging_solve_stops_at_the_step_with_method_and_sigma() -> None:
    op = MatrixOperator(torch.tensor([[1.0, 0.0]]))
    with pytest.raises(DivergenceError, match=r"ddrm diverged.*step \d+ \(sigma 0\.\d+"):
        solve(torch.tensor([[1.0]]), op, _ExplodingPrior(), method="ddrm", steps=10, seed=0, progress=False)
    with pytest.warns(RuntimeWarning, match="diverged"):
        result = solve(torch.tensor([[1.0]]), op, _ExplodingPrior(), method="ddrm", steps=10, seed=0,
                       progress=False, on_nan="warn")
    assert result.diverged and torch.isfinite(result.samples).all()
    with pytest.raises(ValueError, match="on_nan"):
        solve(torch.tensor([[1.0]]), op, _mixture(False), method="ddrm", on_nan="ignore")
