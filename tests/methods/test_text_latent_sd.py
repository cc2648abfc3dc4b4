"""TReg and P2L end to end on a tiny Stable-Diffusion-type pipeline and CLIP image encoder
(:mod:`tests.helpers.tiny_sd`), saved and loaded from disk; text conditioning and CLIP loading
checked against the components called directly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from invsolve import solve
from invsolve.samplers.treg import negated_null_text
from operators import Inpainting
from priors import load_prior
from priors.clip_image import CLIP_MEAN, CLIP_STD, load_clip_image_encoder
from tests.helpers.latent_pipelines import NETWORK_TOLERANCE, ddpm_x0, table_sigma
from tests.helpers.tiny_sd import CLIP_IMAGE_SIZE, save_tiny_sd

STEPS = 12
NULL = "out of focus, depth of field"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd")
    return root, save_tiny_sd(root)


def embed(parts, text: str) -> torch.Tensor:
    tokenizer, encoder = parts["tokenizer"], parts["text_encoder"]
    ids = tokenizer(text, padding="max_length", max_length=8, truncation=True, return_tensors="pt").input_ids
    return encoder(ids)[0]


def inpainting_problem():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    op = Inpainting(torch.ones(16, 16).tril())
    return op, op.measure(x, 0.05, torch.Generator().manual_seed(1))


def record_unet_text(unet) -> tuple[list[torch.Tensor], object]:
    """Every ``encoder_hidden_states`` the UNet receives (a forward pre-hook)."""
    seen: list[torch.Tensor] = []
    handle = unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].detach().clone()), with_kwargs=True
    )
    return seen, handle


def test_conditioning_guides_per_row_embeddings_and_restores(tiny):
    root, parts = tiny
    prior = load_prior(root / "sd", prompt="face")
    unet = prior.denoiser.unet
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    abar, sigma = table_sigma(50)
    rows = torch.cat([embed(parts, "cat"), embed(parts, "dog")])
    null = embed(parts, "blur")

    def eps(text_rows):
        return unet(abar**0.5 * z, torch.tensor([50, 50]), encoder_hidden_states=text_rows, return_dict=False)[0]

    sig = torch.full((2,), sigma)
    with prior.text_conditioning(rows, null, 2.5):
        guided = prior.denoise(z, sig)
        with prior.text_conditioning(guidance_scale=0.0):
            negative_only = prior.denoise(z, sig)
    expected = eps(null.expand(2, -1, -1)) + 2.5 * (eps(rows) - eps(null.expand(2, -1, -1)))
    torch.testing.assert_close(guided, ddpm_x0(expected, z, abar, "epsilon"), **NETWORK_TOLERANCE)
    torch.testing.assert_close(negative_only, ddpm_x0(eps(null.expand(2, -1, -1)), z, abar, "epsilon"),
                               **NETWORK_TOLERANCE)
    assert prior.prompt == "face" and prior.guidance_scale == 1.0
    torch.testing.assert_close(prior.denoise(z, sig), ddpm_x0(eps(embed(parts, "face").expand(2, -1, -1)), z, abar,
                                                              "epsilon"), **NETWORK_TOLERANCE)
    torch.testing.assert_close(prior.encode_text("cat"), embed(parts, "cat"), **NETWORK_TOLERANCE)
    with pytest.raises(ValueError, match="3 rows for a batch of 2"), prior.text_conditioning(torch.cat([rows, null])):
        prior.denoise(z, sig)
    with pytest.raises(ValueError, match="must have shape"), prior.text_conditioning(rows[:, :3]):
        pass


def test_clip_image_encoder_loads_from_a_folder_and_preprocesses_like_latent_diffusion(tiny, tmp_path):
    root, parts = tiny
    model = parts["clip"]
    images = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(3)) * 2 - 1
    resized = F.interpolate(images, size=(CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE), mode="bicubic", align_corners=True)
    pixel_values = ((resized + 1) / 2 - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    expected = model(pixel_values=pixel_values).image_embeds
    encoder = load_clip_image_encoder(root / "clip")
    assert encoder.projection_dim == 16 and load_clip_image_encoder(root / "clip") is encoder
    torch.testing.assert_close(encoder(images), expected, **NETWORK_TOLERANCE)
    with pytest.raises(ValueError, match="no such folder.*huggingface-cli download openai/clip-vit-large-patch14"):
        load_clip_image_encoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="cannot load the CLIP image encoder 'openai/clip-vit-large-patch14'"):
        load_clip_image_encoder("openai/clip-vit-large-patch14", local_files_only=True, cache_dir=str(tmp_path))


def test_adaptive_negation_is_adam_on_a_linear_similarity():
    """The loss is linear in the null text, so every Adam step moves each entry by
    ``lr g / (|g| + 1e-8)`` with ``g = f / tokens`` (the row's unit CLIP feature over the token count)."""
    g = torch.Generator().manual_seed(4)
    null = torch.randn(2, 8, 16, generator=g)
    features = torch.randn(2, 16, generator=g)
    grad = (features / features.norm(dim=1, keepdim=True) / 8)[:, None, :].expand(2, 8, 16)
    expected = null - 10 * 8e-4 * grad / (grad.abs() + 1e-8)
    torch.testing.assert_close(negated_null_text(null, 3.0 * features, 8e-4, 10), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="matches the text encoder"):
        negated_null_text(null, features[:, :8], 8e-4, 10)


def test_treg_end_to_end_counts_calls_and_respects_the_prompt(tiny):
    root, parts = tiny
    prior = load_prior(root / "sd", prompt="face")
    op, y = inpainting_problem()
    seen, handle = record_unet_text(prior.denoiser.unet)
    try:
        result = solve(y, op, prior, method="treg", steps=STEPS, seed=0, num_samples=2, noise_sigma=0.05,
                       progress=False, clip_model=str(root / "clip"))
        calls_face = len(seen)
        solve(y, op, prior, method="treg", steps=2, seed=0, noise_sigma=0.05, progress=False, prompt="cat",
              clip_model=str(root / "clip"))
    finally:
        handle.remove()
    assert result.samples.shape == (2, 1, 3, 16, 16) and torch.isfinite(result.samples).all()
    # Steps 0, 3, 6, 9 of 12 are consistency steps: decode + encode each, and the final decode.
    assert (result.nfe, result.decoder_calls, result.encoder_calls) == (STEPS, 5, 4)
    assert result.options["guidance_scale"] == 4.0 and result.options["null_prompt"] == NULL
    assert calls_face == STEPS and all(s.shape[0] == 4 for s in seen[:calls_face])
    null_rows, cond_rows = seen[0].chunk(2)
    torch.testing.assert_close(cond_rows, embed(parts, "face").expand(2, -1, -1))
    torch.testing.assert_close(null_rows, embed(parts, NULL).expand(2, -1, -1))
    negated = seen[calls_face - 1].chunk(2)[0]
    assert (negated - embed(parts, NULL)).abs().amax() > 1e-3 and not torch.equal(negated[0], negated[1])
    torch.testing.assert_close(seen[calls_face].chunk(2)[1], embed(parts, "cat"))
    assert prior.prompt == "face" and prior.guidance_scale == 1.0


def test_treg_without_the_clip_model_fails_before_sampling(tiny, tmp_path):
    root, _ = tiny
    prior = load_prior(root / "sd")
    op, y = inpainting_problem()
    with pytest.raises(ValueError, match="CLIP image encoder.*huggingface-cli download"):
        solve(y, op, prior, method="treg", steps=3, seed=0, progress=False, clip_model=str(tmp_path / "no-clip"))
    result = solve(y, op, prior, method="treg", steps=3, seed=0, progress=False, adaptive_negation=False,
                   clip_model=str(tmp_path / "no-clip"), use_dps=True)
    # Step 0 is a consistency step; steps 1 and 2 take DPS gradients through the decoder.
    assert torch.isfinite(result.image).all() and (result.nfe, result.decoder_calls, result.encoder_calls) == (3, 4, 1)


def test_p2l_end_to_end_tunes_the_prompt_embedding(tiny):
    root, parts = tiny
    prior = load_prior(root / "sd", prompt="face")
    op, y = inpainting_problem()
    seen, handle = record_unet_text(prior.denoiser.unet)
    try:
        result = solve(y, op, prior, method="p2l", steps=6, seed=0, num_samples=2, noise_sigma=0.05, progress=False)
    finally:
        handle.remove()
    assert torch.isfinite(result.samples).all()
    # Per step one tuning pass and one guided pass (each a decode); projections at steps 0 and 3.
    assert (result.nfe, result.decoder_calls, result.encoder_calls) == (12, 13, 2)
    start = embed(parts, "face").expand(2, -1, -1)
    torch.testing.assert_close(seen[0], start)
    step = (seen[1] - start).abs()
    assert step.amax() <= 1e-4 + 1e-6 and step.median() > 0.9e-4
    assert (seen[-1] - start).abs().amax() > 4e-4
