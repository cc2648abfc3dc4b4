"""Flower, FlowChef and FlowDPS against transcriptions of their official loops and against closed forms.

Sources (read line by line; transcribed in :mod:`tests.helpers.official_flow_rules_b`):

* Flower: mehrsapo/Flower ``pnpflow/methods/flower.py``, ``config/method_config/flower.yaml``,
  ``scripts/script_test_celeba_flower_1_ot.sh``;
* FlowChef: FlowChef/FlowChef ``inverseproblems/pixel_models/rfpp/generate_inverseproblems_flowchef.py``,
  ``inverseproblems_flowchef.sh``;
* FlowDPS: FlowDPS-Inverse/FlowDPS ``sd3_sampler.py`` (``SD3FlowDPS``), ``solve.py``.

The parity tests run invsolve on the exact Gaussian mixture given as a velocity field
(:func:`priors.flow.from_velocity`) and the transcription on the same velocity, in float64:
the same seed gives the same samples to float rounding.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from invsolve import solve
from invsolve.samplers import Problem, registered
from invsolve.samplers.flowdps import flowdps_times
from operators import GaussianBlur, Inpainting, MatrixOperator, SuperResolution
from priors import GaussianPrior, load_prior
from priors.flow import VelocityPrior, from_velocity
from tests.helpers.linear_latent import make_linear_problem
from tests.helpers.official_flow_rules_b import (
    batched_velocity,
    data_to_noise_time,
    mixture_velocity,
    official_flowchef,
    official_flowdps,
    official_flower,
    official_sd3_sigmas,
)
from tests.helpers.posterior_problems import make_gmm_problem, sliced_wasserstein

F64 = torch.float64
N = 16
#: float64 runs of the same arithmetic in another order (per-row vs batched reductions, the
#: VE round trip ``x_t / (1 - t) * (1 - t)``): measured <= 2e-14 on samples of size ~20.
PARITY = {"rtol": 1e-10, "atol": 1e-10}

pytestmark = pytest.mark.filterwarnings("ignore:.* has no defaults for task:UserWarning")


def grid(prior, steps: int) -> list[float]:
    return Problem(y=torch.zeros(1, 1, dtype=F64), operator=None, prior=prior, x_shape=(1, 1), noise_sigma=0.0,
                   steps=steps, generator=torch.Generator()).flow_times()


def sw_and_floor(samples: torch.Tensor, posterior, n: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(7)
    exact, second = posterior.sample(n, generator=g), posterior.sample(n, generator=g)
    sw = sliced_wasserstein(samples.reshape(n, -1), exact, 500, torch.Generator().manual_seed(8))
    return sw, sliced_wasserstein(second, exact, 500, torch.Generator().manual_seed(8))


# ------------------------------------------------------------------ Flower


@pytest.mark.parametrize("d_y", [1, 4])
def test_flower_matches_the_official_loop(d_y):
    prior, op, y, sigma_y, _ = make_gmm_problem(8, d_y, seed=0)
    v = mixture_velocity(prior)
    flow = from_velocity(batched_velocity(v))
    # cg_tolerance 0: all 50 iterations, as the official stop test never fires
    ours = solve(y, op, flow, method="flower", steps=20, seed=1, noise_sigma=sigma_y, num_samples=N, progress=False,
                 cg_tolerance=0.0).samples.reshape(N, -1)
    official = official_flower(data_to_noise_time(v, flow.t_min, flow.t_max), op.A, y, sigma_y, 20, N,
                               torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, official, **PARITY)


def test_flower_cg_tolerance_moves_the_result_by_little():
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, seed=0)
    flow = from_velocity(batched_velocity(mixture_velocity(prior)))
    run = lambda **o: solve(y, op, flow, method="flower", steps=20, seed=1, noise_sigma=sigma_y,  # noqa: E731
                            num_samples=N, progress=False, **o).samples
    full, stopped = run(cg_tolerance=0.0), run()
    assert (full - stopped).abs().max() < 1e-3 * full.abs().max()


def test_flower_gives_the_exact_posterior_mean_for_standard_normal_data():
    # For x1 ~ N(0, I), lambda_t = (1 - t)^2 / (t^2 + (1 - t)^2) is Var[x1 | x_t], so each refinement is
    # the exact E[x1 | x_t, y] and the samples' mean is the posterior mean.  The isotropic
    # re-noising (gamma = 0) under-disperses: the covariance is not the posterior's.
    g = torch.Generator().manual_seed(3)
    d, sigma_y = 4, 0.5
    A = torch.randn(2, d, generator=g, dtype=F64)
    y = (A @ torch.randn(d, generator=g, dtype=F64) + sigma_y * torch.randn(2, generator=g, dtype=F64))[None]
    gain = A.T @ torch.linalg.inv(A @ A.T + sigma_y**2 * torch.eye(2, dtype=F64))
    mean, cov = gain @ y[0], torch.eye(d, dtype=F64) - gain @ A
    prior = GaussianPrior(torch.zeros(d, dtype=F64), torch.eye(d, dtype=F64))
    n = 4000
    x = solve(y, MatrixOperator(A), prior, method="flower", steps=50, num_samples=n, noise_sigma=sigma_y, seed=0,
              progress=False).samples.reshape(n, d)
    # standard error <= sqrt(0.94 / 4000) = 0.015; the prior mean is |mean| = 0.9 away
    assert (x.mean(0) - mean).abs().max() < 0.06 < 0.5 * mean.abs().max()
    assert (torch.cov(x.T).diag() < cov.diag()).all()


def test_flower_noiseless_data_ends_on_the_measurement():
    # sigma_y = 0: the refinement is the projection of x_hat onto {A x = y}, and the last step returns it.
    prior, op, y, _, _ = make_gmm_problem(8, 4, seed=2)
    flow = from_velocity(batched_velocity(mixture_velocity(prior)))
    x = solve(y, op, flow, method="flower", steps=10, seed=0, num_samples=8, progress=False).samples.reshape(8, -1)
    torch.testing.assert_close(x @ op.A.T, y.expand(8, -1), rtol=0, atol=1e-8)


# ------------------------------------------------------------------ FlowChef


def test_flowchef_matches_the_official_loop():
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, seed=0)
    v = mixture_velocity(prior)
    flow = VelocityPrior(batched_velocity(v), t_max=1 - 1e-5)  # the script's first time, 1 - 1e-5
    steps, scale = 30, 1.5  # 2 * scale / m * s_max^2 < 1 for m = 4 measurements: a stable step
    times = grid(flow, steps)
    ours = solve(y, op, flow, method="flowchef", steps=steps, seed=1, noise_sigma=sigma_y, num_samples=N,
                 progress=False, gradient_scale=scale).samples.reshape(N, -1)
    official = official_flowchef(v, op.A, y, scale, times[:-1], N, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, official, **PARITY)


def test_flowchef_never_differentiates_the_network():
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, seed=0)
    v = batched_velocity(mixture_velocity(prior))

    def guarded(x_t, t):
        assert not torch.is_grad_enabled() and not x_t.requires_grad
        return v(x_t, t)

    result = solve(y, op, from_velocity(guarded), method="flowchef", steps=10, seed=0, noise_sigma=sigma_y,
                   progress=False, gradient_scale=1.5)
    assert torch.isfinite(result.samples).all()


def test_flowchef_steers_samples_onto_the_measurement():
    # The unguided Euler flow (gradient_scale 0) samples the prior; the steered samples fit y.
    prior, op, y, sigma_y, _ = make_gmm_problem(8, 4, seed=0)
    flow = from_velocity(batched_velocity(mixture_velocity(prior)))
    residual = {}
    for scale in (0.0, 1.5):
        x = solve(y, op, flow, method="flowchef", steps=100, seed=0, noise_sigma=sigma_y, num_samples=64,
                  progress=False, gradient_scale=scale).samples.reshape(64, -1)
        residual[scale] = float((x @ op.A.T - y).norm(dim=1).median())
    assert residual[1.5] < 2 * sigma_y < 0.2 * residual[0.0]


# ------------------------------------------------------------------ FlowDPS


@pytest.mark.parametrize("residual, task", [("adjoint", "deblur_gauss"), ("pinv", "sr_avgpool")])
def test_flowdps_matches_the_official_loop(residual, task):
    prior, op, y, sigma_y, _ = make_linear_problem()
    steps, step_size = 10, 0.5
    times = flowdps_times(Problem(y=y, operator=op, prior=prior, x_shape=(1, 12), noise_sigma=sigma_y, steps=steps,
                                  generator=torch.Generator()), steps, 4.0)
    ours = solve(y, op, prior, method="flowdps", steps=steps, seed=1, noise_sigma=sigma_y, num_samples=N,
                 progress=False, residual=residual, step_size=step_size).samples.reshape(N, -1)
    official = official_flowdps(mixture_velocity(prior.latent), prior.decode, op.A, y, times[:-1], step_size, task,
                                8, N, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, official, **PARITY)


def test_flowdps_grid_is_the_sd3_scheduler_with_shift_4():
    # A flow prior built like SD3's scheduler (shift 3, 1000 training steps): its smallest time is the
    # scheduler's sigma_min; the official sample() sets config.shift = 4.0 before set_timesteps(28).
    flow = VelocityPrior(lambda x, t: x, shift=3.0)
    ours = flowdps_times(Problem(y=torch.zeros(1, 1), operator=None, prior=flow, x_shape=(1, 1), noise_sigma=0.0,
                                 steps=28, generator=torch.Generator()), 28, 4.0)
    official = official_sd3_sigmas(28, shift_init=3.0)
    assert len(ours) == 29 and ours[-1] == 0.0
    assert ours[0] == pytest.approx(min(official[0], flow.t_max), rel=1e-12)  # t = 1 has no VE level
    # the prior's t_min is float32 on main (a 4e-8 relative change at the last time): 1e-6 relative
    assert ours[1:-1] == pytest.approx(official[1:], rel=1e-6)


def test_flowdps_reaches_the_noise_floor_of_a_linear_latent_posterior():
    prior, op, y, sigma_y, posterior = make_linear_problem()
    n = 256
    x = solve(y, op, prior, method="flowdps", seed=0, noise_sigma=sigma_y, num_samples=n, progress=False).samples
    sw, floor = sw_and_floor(prior.encode(x.reshape(n, -1)), posterior, n)
    weak = solve(y, op, prior, method="flowdps", seed=0, noise_sigma=sigma_y, num_samples=n, progress=False,
                 step_size=1.0).samples
    weak_sw, _ = sw_and_floor(prior.encode(weak.reshape(n, -1)), posterior, n)
    assert sw < 2 * floor < weak_sw  # the check can fail: too small a step is 30x the floor away


@pytest.mark.parametrize("layout", ["ldm-vq", "sd"])
def test_flowdps_runs_end_to_end_on_a_saved_latent_pipeline(latent_pipelines, layout):
    # Real diffusers folders (tests/helpers/latent_pipelines.py): one NFE per step, dc_steps decoder
    # passes per step and the final decode.
    prior = load_prior(latent_pipelines[0] / layout)
    op = Inpainting("box", size=8, shape=(16, 16))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = op.measure(x, 0.05, torch.Generator().manual_seed(1))
    runs = [solve(y, op, prior, method="flowdps", steps=4, seed=3, noise_sigma=0.05, progress=False) for _ in range(2)]
    assert runs[0].image.shape == (1, 3, 16, 16) and torch.isfinite(runs[0].image).all()
    torch.testing.assert_close(runs[0].image, runs[1].image, rtol=0, atol=0)
    assert runs[0].nfe == 4 and runs[0].decoder_calls == 4 * 3 + 1 == prior.decode_calls / 2


# ------------------------------------------------------------------ defaults


def test_defaults_are_the_official_settings():
    cls = registered()
    assert (cls["flower"].default_steps, cls["flower"]().cg_iterations, cls["flower"]().cg_tolerance) == (100, 50, 1e-5)
    assert (cls["flowchef"].default_steps, cls["flowchef"]().gradient_scale) == (100, 500.0)
    dps = cls["flowdps"]()
    assert (cls["flowdps"].default_steps, dps.step_size, dps.dc_steps, dps.shift) == (28, 15.0, 3, 4.0)


def test_per_task_rows_follow_the_official_scripts():
    chef, dps = registered()["flowchef"], registered()["flowdps"]
    box = Inpainting("box", size=20, shape=(64, 64))
    for operator in (GaussianBlur(11, 1.0), SuperResolution(4), box):
        row = chef.defaults_row(operator.task, operator.kind)
        assert chef.task_options(row, 0.0)["gradient_scale"] == 500.0, operator
    assert dps.task_options(dps.defaults_row("super_resolution", "super_resolution"), 0.03)["residual"] == "pinv"
    assert dps.task_options(dps.defaults_row("gaussian_blur", "blur"), 0.03)["residual"] == "adjoint"


def test_flowdps_rejects_an_unknown_residual():
    prior, op, y, sigma_y, _ = make_linear_problem()
    with warnings.catch_warnings(), pytest.raises(ValueError, match="residual"):
        warnings.simplefilter("ignore")
        solve(y, op, prior, method="flowdps", steps=2, noise_sigma=sigma_y, progress=False, residual="transpose")
