"""The bundled prior ``natural-64``: found by name offline, a real denoiser of held-out photos."""

from __future__ import annotations

import json

import pytest
import skimage.data
import torch

from invsolve.io import load_image
from invsolve.metrics import psnr
from priors import GaussianMixturePrior, load_prior
from priors.bundled import assets_root, bundled, bundled_path
from priors.clipped import ClippedPrior

NAME = "natural-64"
SIGMA = 0.2


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.chdir(tmp_path_factory.mktemp("elsewhere"))  # no relative folder named natural-64
        return load_prior(NAME)


@pytest.fixture(scope="module")
def heldout():
    """Two held-out 128x128 crops: the demo image and chelsea's eye (chelsea is not in the training set)."""
    eye = torch.from_numpy(skimage.data.chelsea()[60:188, 110:238].copy()).permute(2, 0, 1).float() / 127.5 - 1
    demo = load_image(assets_root() / "images" / "chelsea-128.png")
    return torch.cat([demo, eye[None]])


def noisy_copy(x: torch.Tensor, seed: int) -> torch.Tensor:
    return x + SIGMA * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def test_bundled_names_and_folder():
    assert NAME in bundled()
    folder = bundled_path(NAME)
    assert folder is not None and (folder / "model_index.json").is_file()
    assert bundled_path("no-such-prior") is None
    weights = list(folder.rglob("*.safetensors"))
    assert len(weights) == 1 and weights[0].stat().st_size <= 20 * 2**20
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")), "weights must be safetensors only"


def test_unet_is_attention_free():
    config = json.loads((bundled_path(NAME) / "unet" / "config.json").read_text())
    blocks = config["down_block_types"] + config["up_block_types"]
    assert all("Attn" not in block for block in blocks)
    assert config["add_attention"] is False


def test_loads_offline_by_name(prior):
    assert prior.data_shape is None  # fully convolutional
    assert prior.sigma_min < 0.05 and prior.sigma_max > 50  # the 1000-step linear DDPM table


def test_denoises_heldout_crops_better_than_the_noisy_input(prior, heldout):
    noisy = noisy_copy(heldout, seed=0)
    with torch.no_grad():
        denoised = prior.denoise(noisy, torch.full((heldout.shape[0],), SIGMA))
    gain = psnr(denoised, heldout) - psnr(noisy, heldout)
    assert (gain > 3.0).all(), f"PSNR gains {gain.tolist()} dB"


def test_applies_to_non_square_images(prior, heldout):
    clean = heldout[:1, :, 3:121, 10:102]  # 118 x 92: not square, height not a multiple of the UNet's 4
    noisy = noisy_copy(clean, seed=1)
    with torch.no_grad():
        denoised = prior.denoise(noisy, torch.full((1,), SIGMA))
    assert denoised.shape == clean.shape and torch.isfinite(denoised).all()
    assert (psnr(denoised, clean) - psnr(noisy, clean)).item() > 3.0


class OffsetDenoiser:
    """An imperfect denoiser: the exact one of ``prior`` plus a fixed error."""

    def __init__(self, prior, error):
        self.prior, self.error = prior, error
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max

    def denoise(self, x, sigma):
        return self.prior.denoise(x, sigma) + self.error


def boxed_mixture() -> GaussianMixturePrior:
    """Point masses inside [-0.9, 0.9]^6: the exact posterior mean stays in the box."""
    means = torch.rand(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.8 - 0.9
    return GaussianMixturePrior(torch.tensor([0.1, 0.2, 0.3, 0.4]), means, covs=0.0)


def test_clipping_keeps_an_exact_denoiser_and_never_moves_away_from_it():
    mixture = boxed_mixture()
    x = 3 * torch.randn(32, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma = torch.logspace(-1, 2, 32, dtype=torch.float64)
    exact = mixture.denoise(x, sigma)
    assert exact.abs().max() <= 0.9 + 1e-12
    torch.testing.assert_close(ClippedPrior(mixture).denoise(x, sigma), exact)

    error = 2 * torch.randn(32, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    raw = OffsetDenoiser(mixture, error).denoise(x, sigma)
    clipped = ClippedPrior(OffsetDenoiser(mixture, error)).denoise(x, sigma)
    assert clipped.abs().max() <= 1.0
    assert ((clipped - exact).abs() <= (raw - exact).abs() + 1e-12).all()
    assert ((clipped - exact).abs() < (raw - exact).abs() - 0.1).any()


def test_clipping_rejects_an_empty_range_and_a_start_level_outside_the_prior():
    with pytest.raises(ValueError, match="low < high"):
        ClippedPrior(boxed_mixture(), low=1.0, high=-1.0)
    with pytest.raises(ValueError, match="sigma_max must lie in"):
        ClippedPrior(boxed_mixture(), sigma_max=1000.0)


def test_a_lower_start_level_keeps_the_floor_and_the_denoiser():
    mixture = boxed_mixture()
    clipped = ClippedPrior(mixture, sigma_max=10.0)
    assert (clipped.sigma_min, clipped.sigma_max) == (mixture.sigma_min, 10.0)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigma = torch.tensor([0.1, 10.0, 50.0], dtype=torch.float64)
    torch.testing.assert_close(clipped.denoise(x, sigma), mixture.denoise(x, sigma))
