"""Latent priors: tiny LDM (VQ / KL) and Stable Diffusion pipelines built, saved and loaded here.

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

T = 100
#: Two computations of one float32 network output (fused vs separate calls, other batch shapes)
#: agree to float32 rounding of activations of size ~1, amplified through the layers; the
#: project rule is >= 1e-4.  The x0 formulas multiply the network output by sigma < 1 at the
#: timesteps used here, so no larger scale is needed.
NETWORK_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def tiny_autoencoder(kind: str):
    from diffusers import AutoencoderKL, VQModel

    common = dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(1)
        if kind == "vq":
            model = VQModel(latent_channels=3, num_vq_embeddings=16, vq_embed_dim=3, scaling_factor=0.5, **common)
        else:
            model = AutoencoderKL(latent_channels=4, sample_size=16, scaling_factor=0.3, **common)
    return model.eval().requires_grad_(False)


def tiny_latent_unet(channels: int):
    from diffusers import UNet2DModel

    with torch.random.fork_rng():
        torch.manual_seed(2)
        unet = UNet2DModel(
            sample_size=8,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D",) * 2,
            up_block_types=("UpBlock2D",) * 2,
            add_attention=False,
        )
    return unet.eval().requires_grad_(False)


def tiny_text_model(folder):
    """A CLIP tokenizer over single letters and a one-layer CLIP text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c + "</w>": i + 2 for i, c in enumerate(letters)})
    vocab.update({c: i + 28 for i, c in enumerate(letters)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    with torch.random.fork_rng():
        torch.manual_seed(3)
        encoder = CLIPTextModel(config)
    return tokenizer, encoder.eval().requires_grad_(False)


def tiny_conditional_unet():
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng():
        torch.manual_seed(4)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16,
            norm_num_groups=4,
            attention_head_dim=4,
        )
    return unet.eval().requires_grad_(False)


def save_latent_pipelines(root) -> dict:
    """LDM (VQ) and Stable Diffusion folders by diffusers' own save_pretrained; a KL LDM by hand."""
    from diffusers import DDPMScheduler, LDMPipeline, StableDiffusionPipeline

    parts = {"vq": tiny_autoencoder("vq"), "kl": tiny_autoencoder("kl"), "unet3": tiny_latent_unet(3),
             "unet4": tiny_latent_unet(4), "cond": tiny_conditional_unet()}
    scheduler = DDPMScheduler(num_train_timesteps=T, clip_sample=False, steps_offset=1)
    LDMPipeline(vqvae=parts["vq"], unet=parts["unet3"], scheduler=scheduler).save_pretrained(root / "ldm-vq")
    kl = root / "ldm-kl"
    parts["kl"].save_pretrained(kl / "vae")
    parts["unet4"].save_pretrained(kl / "unet")
    DDPMScheduler(num_train_timesteps=T, prediction_type="v_prediction", clip_sample=False).save_pretrained(kl / "scheduler")
    index = {"_class_name": "LDMPipeline", "vae": ["diffusers", "AutoencoderKL"],
             "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}
    (kl / "model_index.json").write_text(json.dumps(index))
    tokenizer, encoder = tiny_text_model(root / "tokenizer-files")
    parts["tokenizer"], parts["text_encoder"] = tokenizer, encoder
    StableDiffusionPipeline(
        vae=parts["kl"], text_encoder=encoder, tokenizer=tokenizer, unet=parts["cond"], scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(root / "sd")
    return parts


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    return root, save_latent_pipelines(root)


def linear_abar() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float32)
    return torch.cumprod(1 - betas, 0).double()


def ddpm_x0(out: torch.Tensor, x: torch.Tensor, abar: float, prediction: str) -> torch.Tensor:
    """``x0`` from a network output at ``x_vp = sqrt(abar) x`` (Ho et al. 2020; Salimans & Ho 2022)."""
    x_vp = abar**0.5 * x
    if prediction == "epsilon":
        return (x_vp - (1 - abar) ** 0.5 * out) / abar**0.5
    return abar**0.5 * x_vp - (1 - abar) ** 0.5 * out


def table_sigma(t: int) -> tuple[float, float]:
    abar = float(linear_abar()[t])
    return abar, ((1 - abar) / abar) ** 0.5


def test_vq_ldm_pipeline_loads_and_matches_its_components(pipelines) -> None:
    root, parts = pipelines
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


def test_kl_pipeline_uses_the_posterior_mean_and_v_prediction(pipelines) -> None:
    root, parts = pipelines
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


def test_stable_diffusion_pipeline_applies_classifier_free_guidance(pipelines) -> None:
    root, parts = pipelines
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


def test_decoder_is_differentiable_through_the_quantiser(pipelines) -> None:
    root, _ = pipelines
    prior = load_prior(root / "ldm-vq")
    z = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    (grad,) = torch.autograd.grad(prior.decode(prior.denoise(z, torch.tensor([0.5]))).square().sum(), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_latent_and_pixel_mismatches_get_clear_errors(pipelines, tmp_path) -> None:
    root, _ = pipelines
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
