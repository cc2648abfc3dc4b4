"""PSNR and SSIM against scikit-image; LPIPS offline (unavailable, never a number) and its weight loading."""

import os
import warnings

import numpy as np
import pytest
import torch
import torchvision
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from invsolve.metrics import LPIPS, psnr, ssim


def noisy_pair(shape, seed, noise=0.2):
    """A random image in [-1, 1] and a clamped noisy copy, float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    y = (x + noise * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return y, x


def unit_hwc(image):
    """One (C, H, W) tensor on [-1, 1] as an (H, W, C) array on [0, 1], as scikit-image takes it."""
    return ((image + 1) / 2).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("shape", [(3, 3, 16, 20), (2, 1, 11, 11), (1, 3, 33, 17)])
def test_psnr_and_ssim_match_scikit_image_per_item(shape):
    restored, reference = noisy_pair(shape, seed=sum(shape))
    ours_psnr, ours_ssim = psnr(restored, reference), ssim(restored, reference)
    assert ours_psnr.shape == ours_ssim.shape == (shape[0],)
    for i in range(shape[0]):
        a, b = unit_hwc(restored[i]), unit_hwc(reference[i])
        expected_psnr = peak_signal_noise_ratio(b, a, data_range=1)
        expected_ssim = structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=2
        )
        assert abs(ours_psnr[i].item() - expected_psnr) < 1e-9
        assert abs(ours_ssim[i].item() - expected_ssim) < 1e-6


def test_ssim_matches_scikit_image_on_structured_float32_images():
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, 40), torch.linspace(-1, 1, 40), indexing="ij")
    clean = torch.stack([torch.sin(9 * rows), torch.cos(7 * cols), torch.sin(5 * rows * cols)]).unsqueeze(0).float()
    blurred = torch.nn.functional.avg_pool2d(clean, 5, stride=1, padding=2, count_include_pad=False)
    expected = structural_similarity(
        unit_hwc(blurred[0].double()), unit_hwc(clean[0].double()), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1, channel_axis=2,
    )
    assert abs(ssim(blurred, clean).item() - expected) < 1e-3
    assert 0.3 < expected < 0.99


def test_metrics_of_identical_images_and_bad_inputs():
    _, x = noisy_pair((2, 3, 12, 12), seed=1)
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=x.dtype))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[..., :10, :10], x[..., :10, :10])
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, x[:1])
    with pytest.raises(TypeError, match="torch tensors"):
        ssim(x.numpy(), x)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub cache: the machine is offline as far as LPIPS knows."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    assert torch.hub.get_dir() == str(tmp_path / "hub")
    return checkpoints


def test_lpips_offline_is_unavailable_with_one_warning(hub_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metric = LPIPS()
    assert [str(w.message).count("LPIPS unavailable") for w in caught] == [1]
    assert not metric.available and "vgg16" in metric.reason
    _, x = noisy_pair((1, 3, 16, 16), seed=2)
    assert metric(x.float(), x.float()) is None


def test_lpips_loads_backbone_from_the_hub_cache_and_bundled_heads(hub_dir):
    """Plumbing only: the backbone here is *randomly initialised*, so its values are not LPIPS scores."""
    import lpips

    trunk = torchvision.models.alexnet(weights=None).state_dict()
    filename = os.path.basename(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url)
    torch.save(trunk, hub_dir / filename)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric = LPIPS("alex")
    assert metric.available
    assert torch.equal(metric.model.net.slice1[0].weight, trunk["features.0.weight"])
    assert torch.equal(getattr(metric.model.net.slice5, "10").bias, trunk["features.10.bias"])
    heads_file = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "alex.pth")
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    assert torch.equal(metric.model.lin0.model[1].weight, heads["lin0.model.1.weight"])
    a, b = noisy_pair((2, 3, 64, 64), seed=3)
    a, b = a.float(), b.float()
    assert torch.allclose(metric(b, b), torch.zeros(2), atol=1e-7)
    forward, backward = metric(a, b), metric(b, a)
    assert forward.shape == (2,) and (forward > 0).all()
    assert torch.allclose(forward, backward, rtol=1e-4)  # float32 network outputs


def test_lpips_with_a_corrupt_backbone_file_is_unavailable_not_a_crash(hub_dir):
    (hub_dir / os.path.basename(torchvision.models.VGG16_Weights.IMAGENET1K_V1.url)).write_bytes(b"half a download")
    with pytest.warns(RuntimeWarning, match="LPIPS unavailable"):
        metric = LPIPS("vgg")
    assert not metric.available and "cannot load" in metric.reason
    np.testing.assert_equal(metric(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)), None)
