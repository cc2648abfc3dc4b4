"""Image-quality metrics on the [0, 1] scale: PSNR, SSIM and LPIPS.

Every function takes images ``(B, C, H, W)`` on the project's [-1, 1] scale, maps
them to [0, 1] with ``(x + 1) / 2`` and returns one value per item, shape ``(B,)``.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: Gaussian-window SSIM settings (Wang et al. 2004): window std, truncation (in stds), constants.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(x: Tensor, ref: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(ref, Tensor):
        raise TypeError("metrics take torch tensors of shape (B, C, H, W) on the [-1, 1] scale")
    if x.shape != ref.shape or x.ndim != 4:
        raise ValueError(
            f"metrics need two (B, C, H, W) tensors of the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}"
        )


def to_unit_range(x: Tensor) -> Tensor:
    """Map an image from [-1, 1] to [0, 1] (no clamping)."""
    return (x + 1) / 2


def psnr(x: Tensor, ref: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per item on the [0, 1] scale (data range 1).

    ``PSNR = 10 log10(1 / MSE)`` with the mean squared error over channels and
    pixels of each item, computed in float64; ``inf`` for identical images.
    """
    _check_pair(x, ref)
    mse = (to_unit_range(x.double()) - to_unit_range(ref.double())).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse)).to(x.dtype)


def _gaussian_window(sigma: float, truncate: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    window = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return window / window.sum()


def _filter_valid(x: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian filter per channel, keeping only the fully covered ("valid") pixels."""
    channels = x.shape[1]
    k = window.numel()
    rows = window.reshape(1, 1, k, 1).expand(channels, 1, k, 1)
    cols = window.reshape(1, 1, 1, k).expand(channels, 1, 1, k)
    return F.conv2d(F.conv2d(x, rows, groups=channels), cols, groups=channels)


def ssim(x: Tensor, ref: Tensor) -> Tensor:
    r"""Structural similarity per item (Wang et al., "Image quality assessment: from
    error visibility to structural similarity", IEEE TIP 2004), on the [0, 1] scale.

    Gaussian window of standard deviation 1.5 truncated at 3.5 std (11 x 11),
    ``K1 = 0.01``, ``K2 = 0.03``, data range 1, population (not sample) covariances:

    .. math::
        \mathrm{SSIM} = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
        {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},
        \quad C_1 = K_1^2,\ C_2 = K_2^2,

    averaged over the pixels whose window lies inside the image and over channels.
    This is ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=...)``.
    Images must be at least 11 x 11.
    """
    _check_pair(x, ref)
    a, b = to_unit_range(x.double()), to_unit_range(ref.double())
    window = _gaussian_window(SSIM_SIGMA, SSIM_TRUNCATE, a.dtype, a.device)
    if min(a.shape[-2:]) < window.numel():
        side = window.numel()
        raise ValueError(f"SSIM needs images of at least {side}x{side} pixels, got {tuple(a.shape[-2:])}")
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_a, mu_b = _filter_valid(a, window), _filter_valid(b, window)
    var_a = _filter_valid(a * a, window) - mu_a**2
    var_b = _filter_valid(b * b, window) - mu_b**2
    cov = _filter_valid(a * b, window) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.flatten(1).mean(1).to(x.dtype)


#: LPIPS backbones and the torchvision weights each needs.
LPIPS_BACKBONES = ("vgg", "alex")


def _backbone_weights_file(net: str) -> str:
    """Where torchvision keeps the ImageNet weights of ``net`` in the torch hub cache."""
    import torchvision

    weights = {"vgg": torchvision.models.VGG16_Weights, "alex": torchvision.models.AlexNet_Weights}[net]
    filename = os.path.basename(weights.IMAGENET1K_V1.url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


class LPIPS:
    """Learned perceptual image patch similarity (Zhang et al., "The Unreasonable
    Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018), per item.

    Uses the ``lpips`` package (v0.1 linear heads, which ship inside the package)
    on a VGG-16 backbone by default, as the inverse-problem papers (DPS, DDRM,
    DAPS ...) report it; ``net="alex"`` selects AlexNet.  Inputs are on [-1, 1],
    which the ``lpips`` networks take directly (the same as [0, 1] images with
    ``normalize=True``).  Lower is better.

    The backbone's torchvision ImageNet weights are read from the torch hub cache
    (``torch.hub.get_dir()/checkpoints``) and the linear heads from the ``lpips``
    package, both with ``weights_only=True``; nothing is downloaded here.  When
    they are missing the metric is *unavailable*:
    ``available`` is ``False``, ``reason`` says why, one warning is issued, and
    ``__call__`` returns ``None`` — never a made-up number.  Fetch the weights
    once on a connected machine with
    ``python -c "import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')"``.
    """

    def __init__(self, net: str = "vgg", device: torch.device | str | None = None):
        if net not in LPIPS_BACKBONES:
            raise ValueError(f"unknown LPIPS backbone {net!r}; choose one of {LPIPS_BACKBONES}")
        self.net_name = net
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model: Any = None
        self.reason = ""
        path = _backbone_weights_file(net)
        if not os.path.isfile(path):
            self.reason = f"{net} ImageNet weights not found at {path} (offline?)"
        else:
            self.model = self._build(path)
        if self.model is None:
            warnings.warn(f"LPIPS unavailable: {self.reason}; it is reported as n/a", RuntimeWarning, stacklevel=2)

    @property
    def available(self) -> bool:
        return self.model is not None

    def _build(self, path: str) -> Any:
        import lpips

        heads = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", f"{self.net_name}.pth")
        try:
            trunk_state = torch.load(path, map_location="cpu", weights_only=True)
            head_state = torch.load(heads, map_location="cpu", weights_only=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = lpips.LPIPS(net=self.net_name, pretrained=False, pnet_rand=True, verbose=False)
            unexpected = model.load_state_dict(head_state, strict=False).unexpected_keys
            if unexpected or not head_state:
                raise KeyError(f"unexpected LPIPS head weights {unexpected}")
            _load_trunk(model.net, trunk_state)
        except (OSError, RuntimeError, KeyError, ValueError) as err:
            self.reason = f"cannot load the {net_label(self.net_name)} LPIPS weights: {err}"
            return None
        return model.to(self.device).eval().requires_grad_(False)

    def __call__(self, x: Tensor, ref: Tensor) -> Tensor | None:
        """LPIPS distance per item, shape ``(B,)``; ``None`` when unavailable."""
        _check_pair(x, ref)
        if self.model is None:
            return None
        with torch.no_grad():
            value = self.model(x.to(self.device, torch.float32), ref.to(self.device, torch.float32))
        return value.flatten().to(x.device)


def net_label(net: str) -> str:
    """Human name of an LPIPS backbone."""
    return {"vgg": "VGG-16", "alex": "AlexNet"}.get(net, net)


def _load_trunk(trunk: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Copy torchvision ``features.<i>.*`` weights into the lpips trunk's slices.

    The lpips trunks keep torchvision's feature layers under their original
    indices, split into ``slice1`` .. ``sliceN``; every layer with parameters
    must be found in ``state`` with matching shapes.
    """
    features: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith("features."):
            index, param = key[len("features.") :].split(".", 1)
            features.setdefault(index, {})[param] = value
    loaded = 0
    for name, child in trunk.named_children():
        if not name.startswith("slice"):
            continue
        for index, layer in child.named_children():
            if any(True for _ in layer.parameters()):
                if index not in features:
                    raise KeyError(f"layer features.{index} missing from the backbone weights")
                layer.load_state_dict(features[index], strict=True)
                loaded += 1
    if loaded == 0:
        raise ValueError("no backbone layer was loaded")
