"""solve() refuses bad input before any work, checks user operators and priors against their contracts,
stops a diverging solve at the step where it happened, and bounds memory with the estimate in the message."""

from __future__ import annotations

import math

import pytest
import torch

import invsolve.resources as resources
from invsolve import solve
from invsolve.samplers import DivergenceError, registered
from invsolve.validation import check_methods_fit
from operators import Inpainting, MatrixOperator, Operator
from priors import GaussianMixturePrior, GaussianPrior, LatentPrior

SIDE = 8


@pytest.fixture(scope="module")
def vector_problem():
    """A 2-component mixture on R^4 and a 2 x 4 matrix."""
    g = torch.Generator().manual_seed(0)
    prior = GaussianMixturePrior(torch.tensor([0.5, 0.5]), torch.randn(2, 4, generator=g), 0.5)
    operator = MatrixOperator(torch.randn(2, 4, generator=g))
    return prior, operator, operator(prior.sample(1, generator=g).float())


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"noise_sigma": float("nan")}, ValueError, "noise_sigma must be a finite number >= 0 .*got nan"),
        ({"noise_sigma": math.inf}, ValueError, "noise_sigma must be a finite number >= 0 .*got inf"),
        ({"noise_sigma": -0.1}, ValueError, "noise_sigma must be a finite number >= 0"),
        ({"noise_sigma": True}, TypeError, "noise_sigma must be a number"),
        ({"steps": 2.7}, TypeError, "steps must be a whole number, got 2.7"),
        ({"steps": True}, TypeError, "steps must be a whole number"),
        ({"steps": 10**20}, ValueError, "steps must be between 1 and 100000"),
        ({"num_samples": 2.5}, TypeError, "num_samples must be a whole number, got 2.5"),
        ({"num_samples": 0}, ValueError, "num_samples must be >= 1"),
        ({"seed": -1}, ValueError, "seed must be between 0 and"),
        ({"step_size": -1}, ValueError, "method 'dps' option step_size must be >= 0, got -1.0"),
        ({"step_size": True}, TypeError, "option step_size must be a number, got True"),
        ({"step_size": "abc"}, TypeError, "option step_size must be a number, got 'abc'"),
        ({"step_size": float("nan")}, ValueError, "option step_size must be a finite number, got nan"),
        ({"eta": None}, TypeError, "option eta must be a number, got None"),
        ({"learned_variance": 1}, TypeError, "option learned_variance must be true or false or None, got 1"),
        ({"bogus": 1}, ValueError, "has no option.*bogus"),
    ],
)
def test_bad_arguments_are_refused_with_one_line(vector_problem, options, error, message):
    prior, operator, y = vector_problem
    arguments = {"method": "dps", "steps": 3, "progress": False, **options}
    with pytest.raises(error, match=message) as caught:
        solve(y, operator, prior, **arguments)
    assert "\n" not in str(caught.value)


def test_whole_numbers_and_integral_floats_of_other_types(vector_problem):
    prior, operator, y = vector_problem
    result = solve(y, operator, prior, method="dps", steps=torch.tensor(3), seed=0, num_samples=2, progress=False,
                   step_size=1)
    assert result.options["steps"] == 3 and result.options["step_size"] == 1.0
    assert isinstance(result.options["step_size"], float)
    with pytest.raises(TypeError, match="travel_length must be a whole number, got 2.5"):
        solve(y, operator, prior, method="ddnm", steps=3, progress=False, travel_length=2.5)


def test_empty_and_integer_measurements_are_refused(vector_problem):
    prior, operator, y = vector_problem
    with pytest.raises(ValueError, match="empty"):
        solve(y[:0], operator, prior, method="dps", steps=2, progress=False)
    with pytest.raises((TypeError, ValueError), match="uint8"):
        solve(torch.zeros(1, 2, dtype=torch.uint8), operator, prior, method="dps", steps=2, progress=False)


class DropsRows(Operator):
    """Declares ``(N, 2)`` but returns one row whatever N is: right for batch 1 only."""

    output_in_image_range = False

    def forward(self, x):
        return x[:1, :2]

    def output_shape(self, shape):
        return (shape[0], 2)


def test_an_operator_is_probed_with_the_real_batch(vector_problem):
    prior, _, _ = vector_problem
    y = torch.zeros(1, 2)
    solve(y, DropsRows(), prior, method="dps", steps=2, progress=False, x_shape=(1, 4))  # batch 1 is fine
    with pytest.raises(ValueError, match=r"returned shape \(1, 2\) for an input of shape \(3, 4\), but declares \(3, 2\)"):
        solve(y, DropsRows(), prior, method="dps", steps=2, num_samples=3, progress=False, x_shape=(1, 4))
    with pytest.raises(ValueError, match="declared output_shape for every batch size"):
        solve(torch.zeros(2, 2), DropsRows(), prior, method="dps", steps=2, progress=False, x_shape=(2, 4))


class FirstRowPrior(GaussianMixturePrior):
    def denoise(self, x, sigma):
        return super().denoise(x, sigma)[:1]


class IntegerPrior(GaussianMixturePrior):
    def denoise(self, x, sigma):
        return super().denoise(x, sigma).round().long()


class DetachedPrior(GaussianMixturePrior):
    def denoise(self, x, sigma):
        return super().denoise(x.detach(), sigma)


def test_a_prior_breaking_the_denoise_contract_is_named(vector_problem):
    prior, operator, y = vector_problem
    args = (torch.tensor([0.5, 0.5]), prior.means.clone(), 0.5)
    with pytest.raises(ValueError, match=r"FirstRowPrior.denoise\(x, sigma\) returned shape \(1, 4\) for x of shape \(2, 4\); a prior's denoise"):
        solve(y, operator, FirstRowPrior(*args), method="ddnm", steps=2, num_samples=2, progress=False)
    with pytest.raises(TypeError, match=r"IntegerPrior.denoise\(x, sigma\) returned dtype torch.int64"):
        solve(y, operator, IntegerPrior(*args), method="ddnm", steps=2, progress=False)
    with pytest.raises(TypeError, match="without a gradient .* keep it differentiable"):
        solve(y, operator, DetachedPrior(*args), method="dps", steps=2, progress=False)


class FlatLatentPrior(LatentPrior):
    """A user latent prior whose latent_shape forgets the batch axis."""

    sigma_min, sigma_max = 0.01, 10.0

    def denoise(self, z, sigma):
        return z / (1 + sigma.reshape(-1, 1) ** 2)

    def encode(self, x):
        return x.reshape(x.shape[0], -1)

    def decode(self, z):
        return z.reshape(z.shape[0], 1, 2, 4)

    def latent_shape(self, pixel_shape):
        return (8,)


def test_a_latent_shape_without_the_batch_axis_is_named():
    operator = Inpainting(mask=torch.ones(1, 2, 4))
    with pytest.raises(ValueError, match=r"FlatLatentPrior.latent_shape\(\(1, 1, 2, 4\)\) returned \(8,\); .* batch axis first"):
        solve(torch.zeros(1, 1, 2, 4), operator, FlatLatentPrior(), method="latent_dps", steps=2, progress=False)


class NaNPrior(GaussianPrior):
    def denoise(self, x, sigma):
        return x * float("nan")


def pixel_methods_for(operator, prior):
    """Every registered method that works with ``operator`` and ``prior``."""
    classes = registered()
    fits = []
    for name in sorted(classes):
        try:
            check_methods_fit([name], classes, operator, prior)
        except ValueError:
            continue
        fits.append(name)
    return fits


def test_a_nan_prior_stops_every_pixel_method_with_a_divergence_error():
    prior = NaNPrior(torch.zeros(1, SIDE, SIDE), 0.25)
    mask = torch.ones(1, SIDE, SIDE)
    mask[:, 2:6, 2:6] = 0
    operator = Inpainting(mask=mask)
    y = operator(torch.zeros(1, 1, SIDE, SIDE))
    names = pixel_methods_for(operator, prior)
    assert {"dps", "ddnm", "ddrm", "pigdm", "reddiff", "daps", "diffpir", "mcg", "enkg"} <= set(names)
    for name in names:  # at their default steps: the NaN stops them at once
        options = {"ensemble_size": 8, "batch_size": 8} if name == "enkg" else {}
        with pytest.raises(DivergenceError, match=rf"{name} diverged: .* at step \d+ \(sigma") as caught:
            solve(y, operator, prior, method=name, seed=0, progress=False, **options)
        assert caught.value.method == name
        # EnKG reports its state only to a callback (samplers/enkg.py), so solve()'s final check catches it.
        assert caught.value.step <= 1 or name == "enkg", (name, caught.value.step)
        with pytest.warns(RuntimeWarning, match="diverged"):
            result = solve(y, operator, prior, method=name, seed=0, progress=False, on_nan="warn", **options)
        assert result.diverged, name


def test_memory_is_bounded_before_allocation_with_the_estimate(monkeypatch, vector_problem):
    prior = GaussianPrior(torch.zeros(3, 64, 64), 0.25)
    y = torch.zeros(1, 3, 64, 64)
    operator = Inpainting(mask=torch.ones(1, 64, 64))
    monkeypatch.setattr(resources, "available_memory", lambda device=None: 2**20)  # 1 MiB free
    needed = 64 * 64 * 3 * 4 * resources.WORKING_COPIES * 2 / 2**30
    with pytest.raises(ValueError, match=rf"1x3x64x64 with 2 sample\(s\) needs an estimated {needed:.1f} GiB .* 0.0 GiB free"):
        solve(y, operator, prior, method="ddnm", steps=2, num_samples=2, progress=False)
    monkeypatch.setenv("INVSOLVE_SKIP_MEMORY_CHECK", "1")
    assert solve(y, operator, prior, method="ddnm", steps=2, num_samples=2, progress=False).samples.shape[0] == 2


def test_network_activations_are_measured_per_pixel():
    """A single 3 x 3 convolution (padding 1) keeps its input for the weight gradient: 3 float32 values per pixel."""

    class ConvPrior:
        sigma_min, sigma_max, data_shape = 0.01, 10.0, None

        def __init__(self):
            self.net = torch.nn.Conv2d(3, 3, 3, padding=1).requires_grad_(False)

        def denoise(self, x, sigma):
            return self.net(x)

    assert resources.network_bytes_per_pixel(ConvPrior()) == pytest.approx(3 * 4)
    assert resources.network_bytes_per_pixel(GaussianPrior(torch.zeros(3, 4, 4))) == 0


def test_a_network_that_cannot_take_the_probe_sizes_gives_no_estimate_rather_than_an_error():
    class Picky:
        sigma_min, sigma_max, data_shape = 0.01, 10.0, None

        def __init__(self):
            self.net = torch.nn.Identity()

        def denoise(self, x, sigma):
            raise RuntimeError("this network takes multiples of 128 only")

    assert resources.network_bytes_per_pixel(Picky()) == 0
