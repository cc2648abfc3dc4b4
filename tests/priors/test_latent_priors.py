"""Latent priors: the tiny LDM (VQ / KL) and Stable Diffusion pipelines of ``helpers.latent_pipelines``.

Every expectation is written out from the components themselves (the DDPM
parametrisation from ``alphas_cumprod``, the autoencoders' own encode / decode,
classifier-free guidance from two separate UNet calls), never from the wrapper.
"""

from __future__ import annotations

import json

import pytest
import torch

from invsolve import solve
from operators import Inpainting
from priors import DiffusersLatentPrior, load_prior
from tests.helpers.latent_pipelines import NETWORK_TOLERANCE, ddpm_x0, table_sigma


def test_vq_ldm_pipeline_loads_and_matches_its_components(latent_pipelines) -> None:
    root, parts = latent_pipelines
    prior = load_prior(root / "ldm-vq")
    vq, unet = parts["vq"], parts["unet3"]
    assert isinstance(prior, DiffusersLatentPrior) and prior.is_vq and prior.scaling_factor == 0.5
    assert prior.latent_shape((2, 3, 16, 12)) == (2, 3, 8, 6)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    torch.testing.assert_close(prior.encode(x), 0.5 * vq.encode(x).latents, **NETWORK_TOLERANCE)
    z = torch.randn(2, 3, 8, 8, generator=g)
    torch.testing.assert_close(prior.decode(z), vq.decode(z / 0.5).sample, **NETWORK_TOLERANCE)
    assert not torch.allclose(prior.decode(z), vq.decode(z / 0.5, force_not_quantize=True).sample)
    for t in (10, 60):
        abar, sigma = table_sigma(t)
        expected = ddpm_x0(unet(abar**0.5 * z, torch.tensor([t, t]), return_dict=False)[0], z, abar, "epsilon")
        torch.testing.assert_close(prior.denoise(z, torch.full((2,), sigma)), expected, **NETWORK_TOLERANCE)
    assert (prior.encode_calls, prior.decode_calls) == (2, 4)


def test_kl_pipeline_uses_the_posterior_mean_and_v_prediction(latent_pipelines) -> None:
    root, parts = latent_pipelines
    prior = load_prior(root / "ldm-kl")
    kl, unet = parts["kl"], parts["unet4"]
    assert not prior.is_vq and prior.scaling_factor == 0.3
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.testing.assert_close(prior.encode(x), 0.3 * kl.encode(x).latent_dist.mean, **NETWORK_TOLERANCE)
    z = prior.encode(x)
    torch.testing.assert_close(prior.decode(z), kl.decode(z / 0.3).sample, **NETWORK_TOLERANCE)
    abar, sigma = table_sigma(40)
    expected = ddpm_x0(unet(abar**0.5 * z, torch.tensor([40]), return_dict=False)[0], z, abar, "v_prediction")
    torch.testing.assert_close(prior.denoise(z, torch.tensor([sigma])), expected, **NETWORK_TOLERANCE)


def test_stable_diffusion_pipeline_applies_classifier_free_guidance(latent_pipelines) -> None:
    root, parts = latent_pipelines
    unet, tokenizer, encoder = parts["cond"], parts["tokenizer"], parts["text_encoder"]

    def embed(text: str) -> torch.Tensor:
        ids = tokenizer(text, padding="max_length", max_length=8, truncation=True, return_tensors="pt").input_ids
        return encoder(ids)[0]

    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    abar, sigma = table_sigma(50)
    t = torch.tensor([50, 50])

    def eps(text: str) -> torch.Tensor:
        return unet(abar**0.5 * z, t, encoder_hidden_states=embed(text).expand(2, -1, -1), return_dict=False)[0]

    guided = eps("") + 3.0 * (eps("face") - eps(""))
    prior = load_prior(root / "sd", prompt="face", guidance_scale=3.0)
    assert prior.text_conditioned and prior.data_shape is None
    sig = torch.full((2,), sigma)
    torch.testing.assert_close(prior.denoise(z, sig), ddpm_x0(guided, z, abar, "epsilon"), **NETWORK_TOLERANCE)
    prior.set_prompt()
    torch.testing.assert_close(prior.denoise(z, sig), ddpm_x0(eps(""), z, abar, "epsilon"), **NETWORK_TOLERANCE)
    default = load_prior(root / "sd")
    torch.testing.assert_close(default.denoise(z, sig), prior.denoise(z, sig))


def test_decoder_is_differentiable_through_the_quantiser(latent_pipelines) -> None:
    root, _ = latent_pipelines
    prior = load_prior(root / "ldm-vq")
    z = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    (grad,) = torch.autograd.grad(prior.decode(prior.denoise(z, torch.tensor([0.5]))).square().sum(), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_latent_and_pixel_mismatches_get_clear_errors(latent_pipelines, tmp_path) -> None:
    root, _ = latent_pipelines
    prior = load_prior(root / "ldm-vq")
    with pytest.raises(ValueError, match="multiple of 2"):
        prior.latent_shape((1, 3, 15, 16))
    with pytest.raises(ValueError, match="latent_shape"):
        prior.denoise(torch.zeros(1, 3, 16, 16)[:, :2], torch.tensor([1.0]))
    with pytest.raises(ValueError, match="text-conditioned"):
        load_prior(root / "ldm-vq", prompt="a face")
    with pytest.raises(ValueError, match="no text encoder"):
        prior.set_prompt("a face")
    op = Inpainting(torch.ones(16, 16).tril())
    y = op(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="method 'dps' needs pixel.*latent_dps"):
        solve(y, op, prior, method="dps", steps=2, progress=False)
    index = json.loads((root / "ldm-vq" / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError) as err:
        load_prior(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value) and "latent pipeline" in str(err.value)
