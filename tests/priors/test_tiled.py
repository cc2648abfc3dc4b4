"""Tiled denoising (priors.Tiled): exactness against a stationary Gaussian prior, seams,
determinism, batching, solve()'s automatic tiling, and the CLI on a 300 x 500 image.

The reference answers are independent of the code under test: the posterior mean of
a stationary Gaussian prior whose Wiener filter at ``SIGMA0`` is a known 3 x 3 kernel
(applied by circular convolution), hand-placed tile borders, and image gradients.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import operators
from invsolve import solve
from invsolve.cli import main
from invsolve.validation import infer_x_shape, needs_tiling
from priors import GaussianPrior, Tiled, TiledLatent, is_latent_prior

SIGMA0 = 0.5
KERNEL_TAP = 0.2  # 1-D kernel [a, 1 - 2a, a]
KERNEL_GAIN = 0.9  # H = gain * H1 (x) H1 stays in (0, 1)


def kernel_response(n: int, dtype: torch.dtype) -> torch.Tensor:
    """DFT of the circular 1-D kernel [a, 1 - 2a, a] on ``n`` samples: ``1 - 2a + 2a cos(2 pi k / n)``."""
    k = torch.arange(n, dtype=torch.float64)
    return (1 - 2 * KERNEL_TAP + 2 * KERNEL_TAP * torch.cos(2 * math.pi * k / n)).to(dtype)


class StationaryGaussianPrior:
    r"""A stationary (circulant) Gaussian prior with a constant mean ``mean``.

    Its power spectrum is ``S = sigma0^2 H / (1 - H)`` with ``H`` the DFT of the
    separable 3 x 3 kernel ``gain [a, 1-2a, a] (x) [a, 1-2a, a]``, so its exact
    posterior mean ``mean + F^-1[S / (S + sigma^2) F(x - mean)]`` is, at ``sigma0``,
    the circular convolution of ``x - mean`` with that short kernel.  ``data_shape``
    declares a fixed size to force tiling; the denoiser itself works at any size.
    """

    sigma_min, sigma_max = 0.01, 10.0

    def __init__(self, data_shape=None, mean: float = 0.1):
        self.data_shape = data_shape
        self.mean = mean
        self.calls: list[tuple[int, ...]] = []

    def spectrum(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        h = KERNEL_GAIN * kernel_response(height, dtype)[:, None] * kernel_response(width, dtype)[None, :]
        return SIGMA0**2 * h / (1 - h)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        spectrum = self.spectrum(*x.shape[-2:], x.dtype)
        gain = spectrum / (spectrum + sigma.reshape(-1, 1, 1, 1) ** 2)
        return self.mean + torch.fft.ifft2(gain * torch.fft.fft2(x - self.mean)).real


def wiener_at_sigma0(x: torch.Tensor, mean: float = 0.1) -> torch.Tensor:
    """The closed-form posterior mean at ``SIGMA0``: circular 3 x 3 convolution of ``x - mean``."""
    tap = torch.tensor([KERNEL_TAP, 1 - 2 * KERNEL_TAP, KERNEL_TAP], dtype=x.dtype)
    kernel = (KERNEL_GAIN * tap[:, None] * tap[None, :]).expand(x.shape[1], 1, 3, 3)
    padded = F.pad(x - mean, (1, 1, 1, 1), mode="circular")
    return mean + F.conv2d(padded, kernel, groups=x.shape[1])


def tile_edge_mask(size: int, offset: int, tile: int, overlap: int, band: int) -> torch.Tensor:
    """Image positions within ``band`` pixels of a tile's first or last pixel; the grid
    starts ``offset`` pixels before the image and steps by ``tile - overlap``."""
    mask = torch.zeros(size, dtype=torch.bool)
    for start in range(-offset, size, tile - overlap):
        for edge in (start, start + tile - band):
            mask[max(edge, 0) : max(edge + band, 0)] = True
    return mask


@pytest.mark.parametrize("shift", [True, False])
def test_tiled_equals_untiled_for_a_stationary_prior(shift):
    """Away from the image borders, pixels off the tile edges are exact to 1e-12; near tile
    edges the blend of a wrapped tile prediction costs at most 2% of the denoising change."""
    tile, overlap = 16, 4
    inner = StationaryGaussianPrior(data_shape=(2, tile, tile))
    tiled = Tiled(inner, batch_size=7, shift=shift, seed=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 45, 70, generator=g, dtype=torch.float64)
    sigma = torch.full((2,), SIGMA0, dtype=torch.float64)
    reference = wiener_at_sigma0(x)
    change = (reference - x)[..., 1:-1, 1:-1].abs().max()
    seen = set()
    for _ in range(3):
        out = tiled.denoise(x, sigma)
        top, left = tiled.last_offsets
        seen.add((top, left))
        edges = tile_edge_mask(45, top, tile, overlap, 1)[:, None] | tile_edge_mask(70, left, tile, overlap, 1)[None, :]
        error = (out - reference).abs()[..., 1:-1, 1:-1]
        off_edges = ~edges[1:-1, 1:-1]
        assert error[..., off_edges].max() < 1e-12
        assert error.max() < 0.02 * change, (error.max(), change)
        assert error[..., edges[1:-1, 1:-1]].max() > 1e-6  # the edge band does differ: the mask matters
    assert len(seen) == (3 if shift else 1)
    assert all(call[1:] == (2, tile, tile) and call[0] <= 7 for call in inner.calls)


def test_sigma_of_each_row_goes_to_its_tiles():
    """Rows with different sigmas, denoised together, equal each row denoised alone."""
    tiled = Tiled(StationaryGaussianPrior(data_shape=(1, 12, 12)), batch_size=5, shift=False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 30, 41, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 3.0], dtype=torch.float64)
    together = tiled.denoise(x, sigma)
    for i in range(3):
        alone = tiled.denoise(x[i : i + 1], sigma[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, rtol=0, atol=1e-13)
    assert not torch.allclose(together[0], tiled.denoise(x[:1], sigma[2:])[0], atol=1e-3)


class TileMeanPrior:
    """A deliberately non-stationary denoiser: it pulls each tile towards its own mean,
    ``D(x) = x - alpha (x - mean(x))``, so a gradient image gives each tile a different
    offset and hard tile borders would show as jumps."""

    sigma_min, sigma_max = 0.01, 10.0

    def __init__(self, size: int, alpha: float = 0.1):
        self.data_shape = (1, size, size)
        self.alpha = alpha

    def denoise(self, x, sigma):
        return x - self.alpha * (x - x.mean(dim=(-2, -1), keepdim=True))


def max_jump(image: torch.Tensor) -> float:
    """Largest difference between vertically or horizontally neighbouring pixels."""
    return max(image.diff(dim=-1).abs().max().item(), image.diff(dim=-2).abs().max().item())


@pytest.mark.parametrize("shift", [True, False])
def test_no_seams_on_a_smooth_gradient(shift):
    height, width = 96, 160
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    step = 2.0 / (height + width)
    x = (-1 + step * (rows + cols)).to(torch.float64)[None, None]
    sigma = torch.full((1,), 0.3, dtype=torch.float64)
    tiled = Tiled(TileMeanPrior(32), shift=shift, seed=0)
    for _ in range(4):
        assert max_jump(tiled.denoise(x, sigma)) < 2 * step
    # Hard tile borders (no overlap, flat windows) fail the same bound: the test sees seams.
    hard = Tiled(TileMeanPrior(32), overlap=0, shift=shift)
    assert max_jump(hard.denoise(x, sigma)) > 3 * step


def test_offsets_are_seeded_and_change_between_calls():
    inner = StationaryGaussianPrior(data_shape=(1, 16, 16))
    x = torch.randn(1, 1, 40, 50, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigma = torch.full((1,), 0.7, dtype=torch.float64)
    rng_state = torch.random.get_rng_state()

    def run(wrapper, calls=5):
        outputs, offsets = [], []
        for _ in range(calls):
            outputs.append(wrapper.denoise(x, sigma))
            offsets.append(wrapper.last_offsets)
        return outputs, offsets

    first, first_offsets = run(Tiled(inner, seed=11))
    again, again_offsets = run(Tiled(inner, seed=11))
    other, other_offsets = run(Tiled(inner, seed=12))
    assert first_offsets == again_offsets
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert len(set(first_offsets)) >= 4
    assert all(0 <= o < 12 for pair in first_offsets for o in pair)  # stride = 16 - 4
    assert other_offsets != first_offsets
    wrapper = Tiled(inner, seed=12)
    run(wrapper, 2)
    wrapper.reseed(11)
    assert run(wrapper)[1] == first_offsets
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is untouched


def test_inner_calls_hold_at_most_batch_size_tiles():
    inner = StationaryGaussianPrior(data_shape=(1, 16, 16))
    x = torch.randn(3, 1, 40, 50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigma = torch.tensor([0.2, 0.6, 1.5], dtype=torch.float64)
    small = Tiled(inner, batch_size=5, seed=4).denoise(x, sigma)
    sizes = [call[0] for call in inner.calls]
    assert max(sizes) == 5 and all(call[1:] == (1, 16, 16) for call in inner.calls)
    assert sum(sizes) % 3 == 0 and sum(sizes) >= 3 * 3 * 4  # 40 x 50 needs >= 3 x 4 tiles of 16, stride 12
    inner.calls.clear()
    large = Tiled(inner, batch_size=1000, seed=4).denoise(x, sigma)
    assert len(inner.calls) == 1
    torch.testing.assert_close(small, large, rtol=0, atol=1e-13)


def test_gradients_flow_through_the_tiles():
    """DPS-style methods backprop through the denoiser: gradcheck on the tiled map."""
    tiled = Tiled(StationaryGaussianPrior(data_shape=(1, 8, 8)), batch_size=3, shift=False)
    x = torch.randn(1, 1, 11, 13, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sigma = torch.full((1,), 0.4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: tiled.denoise(v, sigma), (x.requires_grad_(True),))


def test_backward_recomputes_each_tile_batch_instead_of_storing_it():
    """With checkpointing the inner network runs again, batch by batch, in the backward
    pass (so no batch's activations outlive its forward call); gradients are unchanged."""
    x = torch.randn(2, 1, 30, 40, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    sigma = torch.tensor([0.3, 0.9], dtype=torch.float64)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    grads, calls = [], []
    for recompute in (True, False):
        inner = StationaryGaussianPrior(data_shape=(1, 16, 16))
        tiled = Tiled(inner, batch_size=4, seed=1, checkpoint=recompute)
        v = x.clone().requires_grad_(True)
        loss = (weights * tiled.denoise(v, sigma)).sum()
        forward_calls = len(inner.calls)
        (grad,) = torch.autograd.grad(loss, v)
        grads.append(grad)
        calls.append((forward_calls, len(inner.calls)))
        assert max(call[0] for call in inner.calls) <= 4
    assert calls[0][1] == 2 * calls[0][0] and calls[1][1] == calls[1][0]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-13)


def test_images_smaller_than_the_tile_are_reflected_and_cropped():
    """A 5 x 7 image in one 16 x 16 tile: the tile holds the image extended by repeated
    reflection (numpy's ``reflect`` padding), and the result is its crop."""
    inner = StationaryGaussianPrior(data_shape=(1, 16, 16))
    x = torch.randn(2, 1, 5, 7, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    sigma = torch.full((2,), SIGMA0, dtype=torch.float64)
    out = Tiled(inner, shift=False).denoise(x, sigma)  # the grid starts at the top-left corner
    assert out.shape == x.shape and inner.calls == [(2, 1, 16, 16)]
    extended = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (0, 11), (0, 9)), mode="reflect"))
    torch.testing.assert_close(out, wiener_at_sigma0(extended)[..., :5, :7], rtol=0, atol=1e-12)


def test_bad_settings_raise_clear_errors():
    prior = StationaryGaussianPrior(data_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="differs from the prior's image size"):
        Tiled(prior, tile=32)
    with pytest.raises(ValueError, match="overlap"):
        Tiled(prior, overlap=9)
    with pytest.raises(ValueError, match="batch_size"):
        Tiled(prior, batch_size=0)
    with pytest.raises(TypeError, match="not a prior"):
        Tiled(object())
    with pytest.raises(ValueError, match="data_shape"):
        Tiled(GaussianPrior(torch.zeros(4), 1.0))
    with pytest.raises(ValueError, match="channels"):
        Tiled(prior).denoise(torch.zeros(1, 3, 20, 20), torch.ones(1))


# ----------------------------------------------------------------------------- solve()


@pytest.mark.parametrize("size", [(40, 56), (10, 12)])
def test_solve_tiles_a_fixed_size_prior_automatically(size):
    inner = StationaryGaussianPrior(data_shape=(1, 16, 16))
    operator = operators.build("denoising")
    x = 0.5 * torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(7))
    y = operator.measure(x, noise_sigma=0.1, generator=torch.Generator().manual_seed(8))
    result = solve(y, operator, inner, method="ddnm", steps=4, seed=9, noise_sigma=0.1, progress=False)
    assert result.image.shape == (1, 1, *size) and torch.isfinite(result.image).all()
    assert result.options["tiling"] == {"tile": [16, 16], "overlap": [4, 4], "batch_size": 8, "shift": True, "seed": 9,
                                         "checkpoint": True}
    assert inner.calls and all(call[1:] == (1, 16, 16) for call in inner.calls)
    again = solve(y, operator, inner, method="ddnm", steps=4, seed=9, noise_sigma=0.1, progress=False)
    other = solve(y, operator, inner, method="ddnm", steps=4, seed=10, noise_sigma=0.1, progress=False)
    assert torch.equal(result.image, again.image) and not torch.equal(result.image, other.image)


def test_solve_leaves_a_matching_prior_alone_and_keeps_a_users_tiling():
    operator = operators.build("denoising")
    y = torch.zeros(1, 1, 16, 16)
    inner = StationaryGaussianPrior(data_shape=(1, 16, 16))
    plain = solve(y, operator, inner, method="ddnm", steps=2, seed=0, progress=False)
    assert "tiling" not in plain.options and all(call[2:] == (16, 16) for call in inner.calls)
    mine = Tiled(StationaryGaussianPrior(), tile=8, overlap=2, batch_size=3, seed=123)
    result = solve(torch.zeros(1, 1, 20, 20), operator, mine, method="ddnm", steps=2, seed=5, progress=False)
    assert result.options["tiling"] == {"tile": [8, 8], "overlap": [2, 2], "batch_size": 3, "shift": True, "seed": 5,
                                         "checkpoint": True}


def test_shape_checks_say_what_cannot_be_tiled():
    operator = operators.build("denoising")
    with pytest.raises(ValueError, match="needs 1 channels"):
        infer_x_shape(torch.zeros(1, 3, 40, 40), operator, StationaryGaussianPrior(data_shape=(1, 16, 16)), None)
    with pytest.raises(ValueError, match="only image priors"):
        infer_x_shape(torch.zeros(1, 5), operator, GaussianPrior(torch.zeros(4), 1.0), None)


class PooledLatentPrior(StationaryGaussianPrior):
    """A latent prior with 2 x 2 average-pooling as encoder and nearest up-sampling as decoder."""

    def __init__(self):
        super().__init__(data_shape=(3, 8, 8))

    def encode(self, x):
        return F.avg_pool2d(x, 2)

    def decode(self, z):
        return F.interpolate(z, scale_factor=2, mode="nearest")

    def latent_shape(self, pixel_shape):
        n, c, h, w = pixel_shape
        return (n, c, h // 2, w // 2)


def test_latent_priors_tile_in_latent_space():
    prior = PooledLatentPrior()
    assert not needs_tiling(prior, (1, 3, 16, 16))  # latents 8 x 8: the prior's own size
    assert needs_tiling(prior, (1, 3, 40, 60))
    tiled = Tiled(prior)
    assert isinstance(tiled, TiledLatent) and is_latent_prior(tiled) and not is_latent_prior(Tiled(StationaryGaussianPrior()))
    x = torch.randn(2, 3, 40, 60, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    z = tiled.encode(x)
    assert z.shape == (2, 3, 20, 30) and tiled.latent_shape(tuple(x.shape)) == z.shape
    denoised = tiled.denoise(z, torch.full((2,), 0.3, dtype=torch.float64))
    assert denoised.shape == z.shape and all(call[1:] == (3, 8, 8) for call in prior.calls)
    torch.testing.assert_close(tiled.decode(z), F.interpolate(z, scale_factor=2, mode="nearest"))


def test_solve_tiles_a_fixed_size_latent_prior_in_latent_space(monkeypatch):
    """A KL autoencoder (factor 2) and an attention UNet on 8 x 8 latents: a 40 x 56 image
    (latents 20 x 28) is solved with latent DPS on 8 x 8 latent tiles."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    from priors import DiffusersLatentPrior, DiffusersPixelPrior

    with torch.random.fork_rng():
        torch.manual_seed(0)
        autoencoder = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        ).eval().requires_grad_(False)
        unet = UNet2DModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
            add_attention=True, attention_head_dim=8,
        ).eval().requires_grad_(False)
    denoiser = DiffusersPixelPrior.from_scheduler(unet, DDPMScheduler(num_train_timesteps=100))
    prior = DiffusersLatentPrior(denoiser, autoencoder)
    assert prior.data_shape == (4, 8, 8)
    assert not Tiled(prior).text_conditioned
    with pytest.raises(ValueError, match="no text encoder"):
        Tiled(prior).set_prompt("a photo")
    seen, original = [], DiffusersPixelPrior.denoise

    def spy(self, x, sigma):
        seen.append(tuple(x.shape))
        return original(self, x, sigma)

    monkeypatch.setattr(DiffusersPixelPrior, "denoise", spy)
    operator = operators.build("denoising")
    y = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(13)) * 2 - 1
    result = solve(y, operator, prior, method="latent_dps", steps=2, seed=0, noise_sigma=0.05, progress=False)
    assert result.image.shape == (1, 3, 40, 56) and torch.isfinite(result.image).all()
    assert result.options["tiling"]["tile"] == [8, 8]
    assert seen and all(shape[1:] == (4, 8, 8) for shape in seen)


# ----------------------------------------------------------------------------- CLI, 300 x 500


def tiny_unet(attention: bool):
    """Attention-free at 64 x 64 (fully convolutional, 8x down-sampling), or with a mid-block
    attention layer at 32 x 32 (a fixed-size prior)."""
    from diffusers import UNet2DModel

    levels = 2 if attention else 4
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return UNet2DModel(
            sample_size=32 if attention else 64,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16, 16, 16)[:levels],
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            add_attention=attention,
            attention_head_dim=8,
        )


@pytest.fixture(scope="module")
def saved_priors(tmp_path_factory):
    from diffusers import DDPMScheduler

    root = tmp_path_factory.mktemp("tiled-priors")
    for name, attention in (("convolutional-64", False), ("attention-32", True)):
        tiny_unet(attention).save_pretrained(root / name)
        DDPMScheduler(num_train_timesteps=100).save_pretrained(root / name)
    return root


@pytest.fixture(scope="module")
def photo_300x500(tmp_path_factory):
    rows, cols = np.meshgrid(np.linspace(0, 1, 300), np.linspace(0, 1, 500), indexing="ij")
    pixels = np.stack([rows, cols, 0.5 + 0.5 * np.sin(12 * rows) * np.cos(9 * cols)], axis=-1) * 255
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(pixels.round().astype(np.uint8)).save(path)
    return path


def restore(*args) -> str:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(["restore", *map(str, args), "--operator", "gaussian_blur", "--operator-arg", "kernel_size=5",
                       "--method", "dps", "--steps", "2", "--device", "cpu", "--quiet"])
    assert status == 0
    return stdout.getvalue()


@pytest.fixture
def tiled_calls(monkeypatch):
    """Shapes of the images that ``Tiled.denoise`` receives during a test."""
    calls, original = [], Tiled.denoise

    def spy(self, x, sigma):
        calls.append(tuple(x.shape))
        return original(self, x, sigma)

    monkeypatch.setattr(Tiled, "denoise", spy)
    return calls


def test_cli_restores_300x500_with_a_fully_convolutional_64px_prior(saved_priors, photo_300x500, tmp_path, tiled_calls):
    out = tmp_path / "restored.png"
    printed = restore(photo_300x500, "--prior", saved_priors / "convolutional-64", "--output", out)
    assert "restored:" in printed
    assert np.asarray(Image.open(out)).shape == (300, 500, 3)
    assert not tiled_calls  # the UNet pads and crops by itself


@pytest.mark.parametrize("source", ["clean input", "measurement"])
def test_cli_restores_300x500_with_a_fixed_size_prior(saved_priors, photo_300x500, tmp_path, tiled_calls, source):
    """A clean INPUT keeps its size too (no crop to the prior's 32x32); the prior is tiled."""
    out = tmp_path / "restored.png"
    image = [photo_300x500] if source == "clean input" else ["--measurement", photo_300x500]
    printed = restore(*image, "--prior", saved_priors / "attention-32", "--output", out)
    assert "restored:" in printed and "overlapping tiles" in printed
    assert np.asarray(Image.open(out)).shape == (300, 500, 3)
    assert tiled_calls and all(call[-2:] == (300, 500) for call in tiled_calls)
