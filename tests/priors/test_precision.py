"""Half precision and compilation of the network: same restorations as float32 (to 0.1 dB),
a clear fallback where torch.compile cannot run, and the wrapper leaves the prior intact."""

from __future__ import annotations

import warnings

import pytest
import torch

from invsolve import solve
from invsolve.io import load_image
from invsolve.metrics import psnr
from operators import preset
from priors import GaussianPrior, VPDenoiser, load_prior
from priors.adm import linear_alphas_cumprod
from priors.bundled import assets_root
from priors.compiled import CompiledLatent, CompiledPrior, accelerated

#: The throughput issue's bar: a precision or compilation option may cost at most 0.1 dB PSNR.
MAX_PSNR_LOSS_DB = 0.1
#: Channels-last runs other convolution kernels on the same float32 weights: equal to float32
#: rounding amplified through the network, not bit-equal (the project rule for network outputs).
NETWORK_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def sr_problem():
    """Two 32 x 32 crops of the demo image, bicubic SR x4 with noise 0.05 (preset sr4)."""
    image = load_image(assets_root() / "images" / "chelsea-128.png", size=64)
    x = torch.cat([image[..., :32, :32], image[..., 32:, 32:]])
    op = preset("sr4").build()
    y = op.measure(x, 0.05, torch.Generator().manual_seed(1))
    return x, op, y


def restore(prior, problem):
    x, op, y = problem
    result = solve(y, op, prior, method="ddrm", steps=20, seed=0, noise_sigma=0.05, progress=False)
    assert torch.isfinite(result.image).all()
    return result.image, psnr(result.image, x)


@pytest.fixture(scope="module")
def float32_result(sr_problem):
    return restore(load_prior("natural-64"), sr_problem)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_network_stays_within_a_tenth_of_a_db_of_float32(sr_problem, float32_result, dtype):
    prior = load_prior("natural-64", dtype=dtype)
    assert prior.dtype == dtype
    image, value = restore(prior, sr_problem)
    reference_image, reference = float32_result
    assert image.dtype == torch.float32  # the sampler state stays float32
    assert not torch.equal(image, reference_image)  # the half-precision network really ran
    assert (value - reference).abs().max() <= MAX_PSNR_LOSS_DB


def test_channels_last_network_gives_float32_results_to_rounding(sr_problem, float32_result):
    image, value = restore(accelerated(load_prior("natural-64"), channels_last=True), sr_problem)
    reference_image, reference = float32_result
    assert (value - reference).abs().max() <= MAX_PSNR_LOSS_DB
    torch.testing.assert_close(image, reference_image, rtol=0, atol=1e-3)


def test_compiled_network_stays_within_a_tenth_of_a_db_of_float32(sr_problem, float32_result):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prior = CompiledPrior(load_prior("natural-64"))
        image, value = restore(prior, sr_problem)
    if prior.status.startswith("eager (compile unavailable"):
        assert any("torch.compile is unavailable here" in str(w.message) for w in caught)
    else:
        assert prior.status == "compiled"
    reference_image, reference = float32_result
    assert (value - reference).abs().max() <= MAX_PSNR_LOSS_DB
    torch.testing.assert_close(image, reference_image, rtol=0, atol=1e-3)


class TinyNetwork(torch.nn.Module):
    """A two-convolution epsilon network ``net(x, t)`` (weights from seed 0)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 3, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=generator) * 0.1
        self.seen_channels_last: list[bool] = []

    def forward(self, x, t):
        self.seen_channels_last.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.b(torch.tanh(self.a(x))) * (1 + 0 * t.reshape(-1, 1, 1, 1))


def tiny_prior() -> VPDenoiser:
    return VPDenoiser(TinyNetwork().eval().requires_grad_(False), linear_alphas_cumprod(100), channels=3,
                      data_shape=None, data_range=(-1.0, 1.0))


def _inputs():
    g = torch.Generator().manual_seed(2)
    return torch.randn(2, 3, 8, 8, generator=g), torch.tensor([0.5, 3.0])


def failing_backend(graph, example_inputs):
    raise RuntimeError("no C++ compiler found")


def test_a_failing_compiler_falls_back_to_eager_with_one_clear_warning():
    prior = tiny_prior()
    x, sigma = _inputs()
    expected = prior.denoise(x, sigma)
    wrapped = CompiledPrior(prior, backend=failing_backend)
    with pytest.warns(RuntimeWarning, match=r"torch.compile is unavailable here .*no C\+\+ compiler.*uncompiled"):
        out = wrapped.denoise(x, sigma)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert wrapped.status.startswith("eager (compile unavailable") and "no C++ compiler" in wrapped.status
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # later calls run eagerly without warning again
        torch.testing.assert_close(wrapped.denoise(x, sigma), expected, rtol=0, atol=0)


def test_torch_compile_refusing_the_platform_falls_back_at_construction(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    with pytest.warns(RuntimeWarning, match="Dynamo is not supported"):
        wrapped = CompiledPrior(tiny_prior())
    x, sigma = _inputs()
    torch.testing.assert_close(wrapped.denoise(x, sigma), tiny_prior().denoise(x, sigma), rtol=0, atol=0)


def test_a_real_network_error_is_not_hidden_by_the_fallback():
    wrapped = CompiledPrior(tiny_prior(), backend=failing_backend)
    with pytest.raises(RuntimeError, match="channels"):
        wrapped.prior.unet(torch.zeros(1, 5, 8, 8), torch.zeros(1))


def test_channels_last_gives_the_same_denoiser_and_leaves_the_original_prior_working():
    prior = tiny_prior()
    x, sigma = _inputs()
    expected = prior.denoise(x, sigma)
    wrapped = accelerated(prior, channels_last=True)
    assert isinstance(wrapped, CompiledPrior) and wrapped.status == "eager"
    torch.testing.assert_close(wrapped.denoise(x, sigma), expected, **NETWORK_TOLERANCE)
    assert prior.unet.seen_channels_last[-1] is True
    torch.testing.assert_close(prior.denoise(x, sigma), expected, **NETWORK_TOLERANCE)
    assert prior.unet.seen_channels_last[-1] is False
    assert (wrapped.sigmas is prior.sigmas) and wrapped.data_range == (-1.0, 1.0) and wrapped.device == prior.device


def test_accelerated_without_options_is_the_prior_itself_and_priors_without_a_network_are_refused():
    prior = tiny_prior()
    assert accelerated(prior) is prior
    with pytest.raises(TypeError, match="no network CompiledPrior can compile"):
        CompiledPrior(GaussianPrior(torch.zeros(3), torch.ones(3)))


def test_a_latent_prior_keeps_encode_and_decode():
    class Latent:
        sigma_min, sigma_max, data_shape = 0.01, 80.0, None

        def __init__(self):
            self.denoiser = tiny_prior()

        def denoise(self, z, sigma):
            return self.denoiser.denoise(z, sigma)

        def encode(self, x):
            return x[..., ::2, ::2]

        def decode(self, z):
            return z.repeat_interleave(2, -1).repeat_interleave(2, -2)

        def latent_shape(self, shape):
            return (shape[0], shape[1], shape[2] // 2, shape[3] // 2)

    latent = Latent()
    wrapped = CompiledPrior(latent, compile=False, channels_last=True)
    assert isinstance(wrapped, CompiledLatent)
    x, sigma = _inputs()
    torch.testing.assert_close(wrapped.denoise(x, sigma), latent.denoise(x, sigma), **NETWORK_TOLERANCE)
    assert wrapped.latent_shape((1, 3, 8, 8)) == (1, 3, 4, 4)
    assert wrapped.decode(wrapped.encode(x)).shape == x.shape
    assert latent.denoiser.unet is not wrapped.prior.denoiser.unet  # the original keeps its own network
