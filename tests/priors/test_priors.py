"""Priors: exact Gaussian / mixture denoisers, and diffusers DDPM UNets loaded as VE denoisers.

Every expectation is computed independently of the code under test: Tweedie's
identity by autograd, closed-form Gaussian formulas, importance weighting, and the
DDPM parametrisation written out from the ``alphas_cumprod`` table.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from priors import DiffusersPixelPrior, GaussianMixturePrior, GaussianPrior, load_prior

# ----------------------------------------------------------------------------- Gaussian priors


def random_spd(d: int, g: torch.Generator, rank: int | None = None) -> torch.Tensor:
    """A random covariance with eigenvalues in [0.3, 2] (``rank`` < d zeroes the smallest)."""
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = 0.3 + 1.7 * torch.rand(d, generator=g, dtype=torch.float64)
    if rank is not None:
        lam[rank:] = 0
    return Q @ torch.diag(lam) @ Q.T


def make_priors() -> dict[str, GaussianMixturePrior]:
    g = torch.Generator().manual_seed(0)
    image = (2, 3, 4)
    return {
        "gaussian-vector-full": GaussianPrior(torch.randn(4, generator=g), random_spd(4, g)),
        "gaussian-image-diagonal": GaussianPrior(
            torch.randn(image, generator=g), 0.2 + torch.rand(image, generator=g)
        ),
        "gaussian-image-isotropic": GaussianPrior(torch.randn(image, generator=g), 0.7),
        "gmm-vector-full": GaussianMixturePrior(
            torch.tensor([0.2, 0.5, 0.3]),
            2 * torch.randn(3, 4, generator=g),
            torch.stack([random_spd(4, g) for _ in range(3)]),
        ),
        "gmm-image-diagonal": GaussianMixturePrior(
            torch.tensor([0.6, 0.4]), torch.randn(2, *image, generator=g), 0.2 + torch.rand(2, *image, generator=g)
        ),
    }


PRIORS = make_priors()


@pytest.mark.parametrize("name", sorted(PRIORS))
@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0, 5.0])
def test_tweedie_identity(name: str, sigma: float) -> None:
    """``D(x, sigma) = x + sigma^2 grad log p_sigma(x)`` against autograd on ``log_prob``."""
    prior = PRIORS[name]
    g = torch.Generator().manual_seed(1)
    x = prior.sample(6, g) + sigma * torch.randn(6, *prior.data_shape, generator=g, dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(prior.log_prob(x, sigma).sum(), x)
    denoised = prior.denoise(x.detach(), torch.full((6,), sigma, dtype=torch.float64))
    torch.testing.assert_close(denoised, x.detach() + sigma**2 * grad, rtol=1e-9, atol=1e-9)


def test_gaussian_denoiser_and_density_match_closed_form() -> None:
    """Vector case: ``mu + C (C + s^2 I)^{-1} (x - mu)`` and the MultivariateNormal density."""
    g = torch.Generator().manual_seed(2)
    mean, cov = torch.randn(5, generator=g, dtype=torch.float64), random_spd(5, g)
    prior = GaussianPrior(mean, cov)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=torch.float64)
    for i in range(4):
        noised = cov + sigma[i] ** 2 * torch.eye(5, dtype=torch.float64)
        expected = mean + cov @ torch.linalg.solve(noised, x[i] - mean)
        torch.testing.assert_close(prior.denoise(x, sigma)[i], expected, rtol=1e-10, atol=1e-10)
        density = torch.distributions.MultivariateNormal(mean, noised).log_prob(x[i])
        torch.testing.assert_close(prior.log_prob(x[i : i + 1], sigma[i])[0], density, rtol=1e-10, atol=1e-10)


def test_diagonal_image_denoiser_is_per_pixel_shrinkage() -> None:
    g = torch.Generator().manual_seed(3)
    mean, var = torch.randn(3, 4, 5, generator=g, dtype=torch.float64), 0.1 + torch.rand(3, 4, 5, generator=g)
    prior = GaussianPrior(mean, var)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.2, 2.0], dtype=torch.float64)
    s2 = sigma.reshape(-1, 1, 1, 1) ** 2
    torch.testing.assert_close(prior.denoise(x, sigma), mean + var / (var + s2) * (x - mean), rtol=1e-12, atol=1e-12)


def mixture_moments(weights, means, covs) -> tuple[torch.Tensor, torch.Tensor]:
    mean = (weights[:, None] * means).sum(0)
    second = (weights[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None, :]


def test_gmm_sample_matches_moments_vector() -> None:
    g = torch.Generator().manual_seed(4)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = 2 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    covs = torch.stack([random_spd(3, g) for _ in range(3)])
    samples = GaussianMixturePrior(weights, means, covs).sample(200_000, torch.Generator().manual_seed(5))
    mean, cov = mixture_moments(weights, means, covs)
    assert samples.shape == (200_000, 3) and samples.dtype == torch.float64
    torch.testing.assert_close(samples.mean(0), mean, rtol=0, atol=0.02)
    torch.testing.assert_close(torch.cov(samples.T), cov, rtol=0, atol=0.05)


def test_gmm_sample_matches_moments_image_diagonal() -> None:
    g = torch.Generator().manual_seed(6)
    weights = torch.tensor([0.7, 0.3], dtype=torch.float64)
    means, var = torch.randn(2, 1, 3, 3, generator=g), 0.2 + torch.rand(2, 1, 3, 3, generator=g)
    samples = GaussianMixturePrior(weights, means, var).sample(100_000, torch.Generator().manual_seed(7))
    flat_means, flat_var = means.flatten(1).double(), var.flatten(1).double()
    mean, cov = mixture_moments(weights, flat_means, torch.diag_embed(flat_var))
    assert samples.shape == (100_000, 1, 3, 3)
    torch.testing.assert_close(samples.flatten(1).mean(0), mean, rtol=0, atol=0.02)
    torch.testing.assert_close(torch.cov(samples.flatten(1).T), cov, rtol=0, atol=0.03)


def prior_covariances(prior: GaussianMixturePrior) -> torch.Tensor:
    Q = prior.eigvecs
    return Q @ torch.diag_embed(prior.eigvals) @ Q.transpose(1, 2)


def test_gaussian_posterior_matches_kalman_formula() -> None:
    g = torch.Generator().manual_seed(8)
    mean, cov = torch.randn(4, generator=g, dtype=torch.float64), random_spd(4, g)
    A = torch.randn(2, 4, generator=g, dtype=torch.float64)
    y, s = torch.randn(2, generator=g, dtype=torch.float64), 0.3
    post = GaussianPrior(mean, cov).posterior(A, y, s)
    # Precision form, written independently: S = (C^-1 + A^T A / s^2)^-1, m = S (C^-1 mu + A^T y / s^2).
    S = torch.linalg.inv(torch.linalg.inv(cov) + A.T @ A / s**2)
    m = S @ (torch.linalg.solve(cov, mean) + A.T @ y / s**2)
    torch.testing.assert_close(post.means[0], m, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(prior_covariances(post)[0], S, rtol=1e-9, atol=1e-9)


def test_gmm_posterior_matches_importance_weighting() -> None:
    """Posterior moments against self-normalised importance weighting of prior draws.

    One component has a singular covariance (rank 2 in 3-D).
    """
    g = torch.Generator().manual_seed(9)
    weights = torch.tensor([0.4, 0.35, 0.25], dtype=torch.float64)
    means = 1.5 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    covs = torch.stack([random_spd(3, g), random_spd(3, g, rank=2), random_spd(3, g)])
    prior = GaussianMixturePrior(weights, means, covs)
    A = torch.randn(2, 3, generator=g, dtype=torch.float64)
    s = 0.4
    y = A @ prior.sample(1, g)[0] + s * torch.randn(2, generator=g, dtype=torch.float64)
    post = prior.posterior(A, y, s)

    draws = prior.sample(400_000, torch.Generator().manual_seed(10))
    log_w = -((y - draws @ A.T) ** 2).sum(1) / (2 * s**2)
    w = torch.softmax(log_w, 0)
    assert 1 / (w**2).sum() > 5_000  # effective sample size
    is_mean = (w[:, None] * draws).sum(0)
    centred = draws - is_mean
    is_cov = (w[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)

    mean, cov = mixture_moments(post.weights, post.means, prior_covariances(post))
    torch.testing.assert_close(mean, is_mean, rtol=0, atol=0.03)
    torch.testing.assert_close(cov, is_cov, rtol=0, atol=0.03)


def test_gaussian_prior_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        GaussianMixturePrior(torch.ones(2), torch.zeros(2, 3), torch.ones(2, 5, 5))
    with pytest.raises(ValueError, match="non-negative"):
        GaussianMixturePrior(torch.tensor([1.0, -1.0]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="noise_sigma > 0"):
        GaussianPrior(torch.zeros(2), 1.0).posterior(torch.eye(2), torch.zeros(2), 0.0)


# ----------------------------------------------------------------------------- diffusers UNets

T = 1000


def tiny_unet(
    seed: int = 0,
    out_channels: int = 3,
    levels: int = 2,
    attention: bool = False,
    **config,
):
    from diffusers import UNet2DModel

    channels = (8, 16, 16, 16)[:levels]
    down = ("AttnDownBlock2D" if attention else "DownBlock2D",) + ("DownBlock2D",) * (levels - 1)
    up = ("UpBlock2D",) * (levels - 1) + ("AttnUpBlock2D" if attention else "UpBlock2D",)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DModel(
            sample_size=16,
            in_channels=3,
            out_channels=out_channels,
            block_out_channels=channels,
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=down,
            up_block_types=up,
            add_attention=attention,
            attention_head_dim=8,
            **config,
        )
    return unet.eval().requires_grad_(False)


def linear_alphas_cumprod(beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule (Ho et al. 2020), written out."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    return torch.cumprod(1 - betas, 0).double()


def cosine_alphas_cumprod() -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule with betas clipped at 0.999, written out."""
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float32)
    return torch.cumprod(1 - betas, 0).double()


def network_tolerance(sigma: torch.Tensor) -> dict[str, float]:
    """Tolerances for a denoiser built on a float32 network: its output compares at 1e-4, and the
    epsilon parametrisation multiplies it by sigma in x0 (v and sample predictions by at most 1)."""
    return {"rtol": 1e-4, "atol": 1e-4 * max(1.0, float(sigma.max()))}


def expected_denoiser(unet, x: torch.Tensor, abar: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
    """``x0`` in the DDPM parametrisation: ``x_vp = sqrt(abar) x`` and the network at ``t``."""
    a = abar.reshape(-1, 1, 1, 1).to(x.dtype)
    x_vp = a.sqrt() * x
    out = unet(x_vp, t, return_dict=False)[0][:, :3]
    if prediction == "epsilon":
        return (x_vp - (1 - a).sqrt() * out) / a.sqrt()
    if prediction == "v_prediction":
        return a.sqrt() * x_vp - (1 - a).sqrt() * out
    return out


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, unet):
    """The tiny UNet saved as a plain folder (config + scheduler_config.json) and as pipelines."""
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

    root = tmp_path_factory.mktemp("priors")
    unet.save_pretrained(root / "plain")
    DDPMScheduler(num_train_timesteps=T).save_pretrained(root / "plain")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=T)).save_pretrained(root / "ddpm")
    cosine = DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    DDIMPipeline(unet=unet, scheduler=cosine).save_pretrained(root / "ddim")
    return root


@pytest.mark.parametrize("layout", ["plain", "ddpm"])
def test_load_prior_reproduces_the_unet(saved, unet, layout: str) -> None:
    prior = load_prior(saved / layout)
    assert isinstance(prior, DiffusersPixelPrior)
    assert list((saved / layout).rglob("*.safetensors"))
    assert prior.prediction_type == "epsilon" and prior.data_shape is None
    assert prior.device == torch.device("cpu") and prior.dtype == torch.float32
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3.0, 700.0])
    torch.testing.assert_close(prior.unet(x, t).sample, unet(x, t).sample, rtol=0, atol=0)
    abar = linear_alphas_cumprod()
    torch.testing.assert_close(prior.alphas_cumprod, abar, rtol=1e-6, atol=0)
    assert prior.sigma_min == pytest.approx(math.sqrt((1 - abar[0]) / abar[0]), rel=1e-5)
    assert prior.sigma_max == pytest.approx(math.sqrt((1 - abar[-1]) / abar[-1]), rel=1e-5)


def test_low_precision_network_returns_the_input_dtype(saved) -> None:
    """A bfloat16 network is called in bfloat16; float32 in, float32 out, close to the float32 prior."""
    low = load_prior(saved / "ddpm", dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(12))
    sigma = torch.tensor([0.3, 3.0])
    denoised = low.denoise(x, sigma)
    assert denoised.dtype == torch.float32
    reference = load_prior(saved / "ddpm").denoise(x, sigma)
    error = (denoised - reference).abs().flatten(1).max(1).values
    assert (error > 0).all() and (error < 0.05 * (1 + sigma)).all()


def test_low_precision_network_keeps_the_sampler_in_float32(saved) -> None:
    """With a bfloat16 network the sampler state and the FFT blur stay in float32 (no bfloat16 FFT exists)."""
    import operators
    from invsolve import solve

    low = load_prior(saved / "ddpm", dtype=torch.bfloat16)
    blur = operators.build("gaussian_blur", kernel_size=5, sigma=1.0, padding="circular")
    y = blur(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    result = solve(y, blur, low, method="pigdm", steps=3, seed=0, noise_sigma=0.05, progress=False)
    assert result.samples.dtype == torch.float32 and torch.isfinite(result.samples).all()


@pytest.mark.parametrize(
    ("measurement", "network", "expected"),
    [
        (torch.float32, torch.bfloat16, torch.float32),
        (torch.bfloat16, torch.float16, torch.float32),
        (torch.float32, torch.float64, torch.float64),
        (torch.float64, torch.float32, torch.float64),
        (torch.float32, None, torch.float32),
    ],
)
def test_working_dtype_is_the_more_precise_and_at_least_float32(measurement, network, expected) -> None:
    from invsolve.api import working_dtype

    assert working_dtype(measurement, network) == expected


def test_load_prior_takes_schedule_and_prediction_from_any_scheduler(saved) -> None:
    """A DDIMPipeline folder with a cosine schedule and v-prediction."""
    prior = load_prior(saved / "ddim", dtype="float64")
    assert prior.prediction_type == "v_prediction" and prior.dtype == torch.float64
    torch.testing.assert_close(prior.alphas_cumprod, cosine_alphas_cumprod(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_ve_conversion_at_table_timesteps(unet, prediction: str) -> None:
    abar = linear_alphas_cumprod()
    prior = DiffusersPixelPrior(unet, abar, prediction)
    steps = torch.tensor([20, 450])
    sigma = ((1 - abar[steps]) / abar[steps]).sqrt()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * (1 + sigma.reshape(-1, 1, 1, 1).float())
    expected = expected_denoiser(unet, x, abar[steps], steps.float(), prediction)
    torch.testing.assert_close(prior.denoise(x, sigma.float()), expected, **network_tolerance(sigma))


def test_sigma_to_timestep_interpolates_log_sigma(unet) -> None:
    abar = linear_alphas_cumprod()
    prior = DiffusersPixelPrior(unet, abar)
    table = ((1 - abar) / abar).sqrt()
    torch.testing.assert_close(prior.sigma_to_timestep(table), torch.arange(T, dtype=torch.float64), rtol=0, atol=1e-9)
    k, w = 300, 0.3
    between = torch.exp((1 - w) * table[k].log() + w * table[k + 1].log())
    midpoint = (table[k] * table[k + 1]).sqrt()
    t = prior.sigma_to_timestep(torch.stack([between, midpoint]))
    torch.testing.assert_close(t, torch.tensor([k + w, k + 0.5], dtype=torch.float64), rtol=0, atol=1e-9)
    ends = prior.sigma_to_timestep(torch.tensor([0.0, table[0] / 2, table[-1] * 2]))
    torch.testing.assert_close(ends, torch.tensor([0.0, 0.0, T - 1.0], dtype=torch.float64), rtol=0, atol=0)


def test_fractional_sigma_feeds_a_fractional_timestep(unet) -> None:
    abar = linear_alphas_cumprod()
    prior = DiffusersPixelPrior(unet, abar)
    table = ((1 - abar) / abar).sqrt()
    k, w = 300, 0.3
    sigma = torch.exp((1 - w) * table[k].log() + w * table[k + 1].log())
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    denoised = prior.denoise(x, sigma.float().reshape(1))
    abar_sigma = (1 / (1 + sigma**2)).reshape(1)
    expected = expected_denoiser(unet, x, abar_sigma, torch.tensor([k + w]), "epsilon")
    torch.testing.assert_close(denoised, expected, **network_tolerance(sigma))
    for neighbour in (k, k + 1):
        other = expected_denoiser(unet, x, abar_sigma, torch.tensor([float(neighbour)]), "epsilon")
        assert (denoised - other).abs().max() > 1e-4


def test_non_square_input_is_padded_and_cropped() -> None:
    net = tiny_unet(seed=3, levels=3)  # down-sampling factor 4
    abar = linear_alphas_cumprod()
    prior = DiffusersPixelPrior(net, abar)
    x = torch.randn(2, 3, 13, 22, generator=torch.Generator().manual_seed(4))
    with pytest.raises(RuntimeError):
        net(x, torch.tensor([5.0, 5.0]))  # the raw network cannot take this size
    sigma = torch.tensor([0.3, 4.0])
    denoised = prior.denoise(x, sigma)
    assert denoised.shape == x.shape
    s = sigma.reshape(-1, 1, 1, 1)
    x_vp = x / (1 + s**2).sqrt()
    padded = F.pad(x_vp, (1, 1, 1, 2), mode="reflect")  # 13 -> 16 rows, 22 -> 24 columns
    eps = net(padded, prior.sigma_to_timestep(sigma).float(), return_dict=False)[0][:, :, 1:14, 1:23]
    torch.testing.assert_close(denoised, x - s * eps, **network_tolerance(sigma))


def test_learned_variance_channels_are_dropped() -> None:
    net = tiny_unet(seed=5, out_channels=6)
    abar = linear_alphas_cumprod()
    prior = DiffusersPixelPrior(net, abar)
    steps = torch.tensor([100, 800])
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    sigma = ((1 - abar[steps]) / abar[steps]).sqrt()
    expected = expected_denoiser(net, x, abar[steps], steps.float(), "epsilon")
    # Compare the float32 network outputs eps = (x - D) / sigma at 1e-4: D multiplies them by sigma (up to 26 here).
    scale = sigma.float().reshape(-1, 1, 1, 1)
    got = (x - prior.denoise(x, sigma.float())) / scale
    torch.testing.assert_close(got, (x - expected) / scale, rtol=1e-4, atol=1e-4)


def test_attention_unet_has_a_fixed_data_shape() -> None:
    prior = DiffusersPixelPrior(tiny_unet(attention=True), linear_alphas_cumprod())
    assert prior.data_shape == (3, 16, 16)
    assert prior.denoise(torch.zeros(1, 3, 16, 16), torch.ones(1)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
        prior.denoise(torch.zeros(1, 3, 12, 20), torch.ones(1))


def test_denoise_is_differentiable_and_keeps_the_input_dtype(unet) -> None:
    """Autograd VJP against a central difference (float64 network), and dtype round trip."""
    net64 = tiny_unet().double()
    prior = DiffusersPixelPrior(net64, linear_alphas_cumprod())
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3, 10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    u = torch.randn(x.shape, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.7], dtype=torch.float64)
    (grad,) = torch.autograd.grad((prior.denoise(x, sigma) * v).sum(), x)
    with torch.no_grad():
        h = 1e-5
        plus, minus = prior.denoise(x + h * u, sigma), prior.denoise(x - h * u, sigma)
        assert plus.grad_fn is None
    torch.testing.assert_close((grad * u).sum(), ((plus - minus) * v).sum() / (2 * h), rtol=1e-6, atol=1e-8)
    float_prior = DiffusersPixelPrior(unet, linear_alphas_cumprod())
    assert float_prior.denoise(x.detach(), sigma).dtype == torch.float64


def test_zero_terminal_snr_table_drops_the_infinite_level(unet) -> None:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=T, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    assert scheduler.alphas_cumprod[-1] == 0
    prior = DiffusersPixelPrior.from_scheduler(unet, scheduler)
    abar = scheduler.alphas_cumprod.double()
    assert len(prior.sigmas) == T - 1
    assert prior.sigma_max == pytest.approx(math.sqrt((1 - abar[-2]) / abar[-2]), rel=1e-6)
    assert torch.isfinite(prior.denoise(torch.zeros(1, 3, 8, 8), torch.tensor([1e4]))).all()


def test_unsupported_networks_and_inputs_are_rejected(unet) -> None:
    abar = linear_alphas_cumprod()
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusersPixelPrior(unet, abar, "noise")
    with pytest.raises(ValueError, match="score-SDE"):
        DiffusersPixelPrior(tiny_unet(time_embedding_type="fourier"), abar)
    with pytest.raises(ValueError, match="class-conditional"):
        DiffusersPixelPrior(tiny_unet(num_class_embeds=10), abar)
    with pytest.raises(ValueError, match="decrease"):
        DiffusersPixelPrior(unet, abar.flip(0))
    prior = DiffusersPixelPrior(unet, abar)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        prior.denoise(torch.zeros(1, 1, 8, 8), torch.ones(1))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        prior.denoise(torch.zeros(2, 3, 8, 8), torch.ones(3))


def test_learned_time_embedding_uses_the_nearest_table_step() -> None:
    net = tiny_unet(seed=8, time_embedding_type="learned", num_train_timesteps=T)
    abar = linear_alphas_cumprod()
    prior = DiffusersPixelPrior(net, abar)
    table = ((1 - abar) / abar).sqrt()
    sigma = torch.exp(0.8 * table[40].log() + 0.2 * table[41].log()).reshape(1)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    a = 1 / (1 + sigma**2)
    expected = expected_denoiser(net, x, a, torch.tensor([40]), "epsilon")
    torch.testing.assert_close(prior.denoise(x, sigma.float()), expected, **network_tolerance(sigma))


# ----------------------------------------------------------------------------- load_prior errors


def assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_missing_folder_names_the_path(tmp_path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError) as err:
        load_prior(missing)
    assert_one_line(err, str(missing), "UNet2DModel")


def test_folder_without_a_unet_names_the_path(tmp_path, saved) -> None:
    (tmp_path / "scheduler_config.json").write_text((saved / "plain" / "scheduler_config.json").read_text())
    with pytest.raises(ValueError) as err:
        load_prior(tmp_path)
    assert_one_line(err, str(tmp_path), "no UNet2DModel")


def test_unet_without_a_scheduler_is_reported(tmp_path, unet) -> None:
    unet.save_pretrained(tmp_path)
    with pytest.raises(ValueError) as err:
        load_prior(tmp_path)
    assert_one_line(err, str(tmp_path), "no scheduler config")


def test_latent_pipelines_and_files_are_reported(tmp_path) -> None:
    index = {"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"], "vqvae": ["diffusers", "VQModel"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError) as err:
        load_prior(tmp_path)
    assert_one_line(err, str(tmp_path), "latent")
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"")
    with pytest.raises(ValueError) as err:
        load_prior(weights)
    assert_one_line(err, str(weights), "not a folder")
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(ValueError) as err:
        load_prior(checkpoint)
    assert_one_line(err, str(checkpoint), "weights-only checkpoint")
    with pytest.raises(TypeError, match="unexpected option"):
        load_prior(tmp_path, prediction="epsilon")


@pytest.fixture
def offline_hub(monkeypatch):
    """Hugging Face Hub offline mode: only the local cache answers, nothing waits on the network."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_unreachable_hub_id_is_a_one_line_error(tmp_path, offline_hub) -> None:
    with pytest.raises(ValueError) as err:
        load_prior("invsolve-tests/no-such-model", cache_dir=tmp_path)
    assert_one_line(err, "invsolve-tests/no-such-model", "Hugging Face Hub cannot be reached")


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
@pytest.mark.parametrize("layout", ["plain", "ddpm"])
def test_hub_id_loads_through_the_hub_cache(tmp_path, offline_hub, saved, layout: str) -> None:
    """The real ``hf_hub_download`` / ``from_pretrained`` path, served by a cache in the Hub's layout."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--invsolve-tests--tiny-ddpm"
    shutil.copytree(saved / layout, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    prior = load_prior("invsolve-tests/tiny-ddpm", cache_dir=tmp_path)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(11))
    sigma = torch.tensor([0.5])
    torch.testing.assert_close(prior.denoise(x, sigma), load_prior(saved / layout).denoise(x, sigma), rtol=0, atol=0)


def test_bundled_name_resolves_to_its_folder(tmp_path, monkeypatch, saved) -> None:
    import shutil

    import priors.bundled

    monkeypatch.setattr(priors.bundled, "assets_root", lambda: tmp_path)
    shutil.copytree(saved / "ddpm", tmp_path / "priors" / "tiny-16")
    (tmp_path / "priors" / "unfinished").mkdir()
    prior = load_prior("tiny-16")
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(10))
    sigma = torch.tensor([0.5])
    torch.testing.assert_close(prior.denoise(x, sigma), load_prior(saved / "ddpm").denoise(x, sigma), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError) as err:
        load_prior("unfinished")
    assert_one_line(err, "'unfinished'", "bundled name (tiny-16)")


def test_image_mode_and_fixed_size_follow_the_prior() -> None:
    """Grey for one channel, RGB for three (and for latent priors, which decode RGB); only a
    pixel prior with a data shape has a fixed size; other channel counts fit no image file."""
    from types import SimpleNamespace

    from priors import fixed_size, image_mode

    def pixel(**fields):
        return SimpleNamespace(denoise=lambda x, s: x, sigma_min=0.01, sigma_max=80.0, **fields)

    grey, colour, any_size = pixel(data_shape=(1, 32, 48)), pixel(data_shape=(3, 64, 64)), pixel(data_shape=None)
    latent = pixel(data_shape=(4, 8, 8), encode=None, decode=None, latent_shape=None)
    assert [image_mode(p) for p in (grey, colour, any_size, latent)] == ["L", "RGB", "RGB", "RGB"]
    assert image_mode(pixel(data_shape=None, channels=1)) == "L"
    assert [fixed_size(p) for p in (grey, colour, any_size, latent)] == [(32, 48), (64, 64), None, None]
    with pytest.raises(ValueError, match="2-channel"):
        image_mode(pixel(data_shape=(2, 8, 8)))
