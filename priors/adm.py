"""Published guided-diffusion (ADM) checkpoints as VE priors: ``ffhq_10m.pt``, ``256x256_diffusion_uncond.pt``.

The checkpoints are plain state dicts of :class:`~priors.adm_unet.ADMUNet`; they are
read with ``torch.load(..., weights_only=True)`` (never full unpickling) or from
``.safetensors`` files, loaded with ``strict=True`` and wrapped by :class:`ADMPrior`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from priors.adm_unet import ADMConfig, ADMUNet
from priors.vp import VPDenoiser

#: File suffixes read as ADM checkpoints.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")

#: The published configurations (guided-diffusion ``create_model`` arguments).
CONFIGS: dict[str, ADMConfig] = {
    # DPS authors' FFHQ 256 model (configs/model_config.yaml of the DPS repository).
    "ffhq256": ADMConfig(
        image_size=256, model_channels=128, num_res_blocks=1, attention_resolutions=(16,),
        channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64,
    ),
    # OpenAI's unconditional ImageNet 256 model (guided-diffusion README flags).
    "imagenet256": ADMConfig(
        image_size=256, model_channels=256, num_res_blocks=2, attention_resolutions=(32, 16, 8),
        channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64,
    ),
}

#: Where to get the checkpoints of :data:`CONFIGS` (for the missing-file error).
DOWNLOADS = {
    "ffhq256": "ffhq_10m.pt from the Google Drive link in the DPS repository's README "
    "(github.com/DPS2022/diffusion-posterior-sampling)",
    "imagenet256": "256x256_diffusion_uncond.pt from OpenAI's guided-diffusion release "
    "(https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt)",
}


def linear_alphas_cumprod(steps: int = 1000) -> Tensor:
    """``abar_t = prod_{s<=t} (1 - beta_s)`` of the DDPM linear schedule (float64).

    ``beta`` runs linearly from ``1e-4`` to ``0.02`` scaled by ``1000 / steps`` (Ho et al.
    2020; Nichol & Dhariwal 2021, ``get_named_beta_schedule("linear")``).
    """
    scale = 1000 / steps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


class ADMPrior(VPDenoiser):
    r"""An ADM UNet (Dhariwal & Nichol 2021) with its DDPM schedule as a VE denoiser.

    The network predicts ``eps`` at DDPM time ``t`` of the linear 1000-step schedule; with
    ``sigma_t = sqrt((1 - abar_t) / abar_t)``, ``x_vp = x / sqrt(1 + sigma^2)`` and
    ``t`` interpolated in ``log sigma`` over the exact table,
    ``D(x, sigma) = x - sigma * eps(x_vp, t)`` (see :class:`~priors.vp.VPDenoiser`).
    The attention layers tie the model to ``data_shape = (3, image_size, image_size)``.
    Images lie in ``data_range = (-1, 1)``; the checkpoint has no scheduler of its own,
    so clamping is each method's choice (DPS, MCG and DiffPIR clamp, as guided-diffusion's
    ``clip_denoised=True`` in their official code).

    Checkpoints trained with ``learn_sigma`` (both published ones) have three more output
    channels, guided-diffusion's learned-range variance ``v``.  ``denoise`` ignores them;
    the prior declares ``learned_variance = True`` and :meth:`denoise_with_variance` returns
    the ancestral-step variance they predict (:func:`priors.vp.learned_range_variance`),
    which DPS and MCG sample with, as their official ``p_sample`` does.
    """

    def __init__(self, unet: ADMUNet, alphas_cumprod: Tensor | None = None):
        config = unet.config
        super().__init__(
            unet,
            linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod,
            "epsilon",
            channels=config.in_channels,
            data_shape=(config.in_channels, config.image_size, config.image_size),
            downsampling=config.downsampling,
            data_range=(-1.0, 1.0),
            learned_variance=config.learn_sigma,
        )


def _resolve_config(config: str | ADMConfig) -> ADMConfig:
    if isinstance(config, ADMConfig):
        return config
    if isinstance(config, str) and config in CONFIGS:
        return CONFIGS[config]
    raise ValueError(f"unknown ADM config {config!r}; use one of {', '.join(CONFIGS)} or an ADMConfig")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or a ``torch.save``-d state dict (weights only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with anything but tensors and containers is refused
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot read {str(path)!r} as a weights-only checkpoint ({reason}); only state dicts of "
            "tensors are loaded, never arbitrary pickles"
        ) from None
    if isinstance(state, Mapping):
        for wrapper in ("state_dict", "model", "ema"):
            if isinstance(state.get(wrapper), Mapping) and "time_embed.0.weight" not in state:
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} is not a state dict of tensors")
    return dict(state)


def _mismatch(state: Mapping[str, Tensor], config: ADMConfig) -> list[str]:
    """How ``state`` differs from the parameters of ``ADMUNet(config)`` (empty when it matches)."""
    with torch.device("meta"):
        expected = {name: tuple(p.shape) for name, p in ADMUNet(config).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{name} {tuple(state[name].shape)} vs {expected[name]}"
        for name in set(expected) & set(state)
        if tuple(state[name].shape) != expected[name]
    )
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            problems.append(f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
    return problems


def _detect_config(state: Mapping[str, Tensor], path: Path) -> ADMConfig:
    for config in CONFIGS.values():
        if not _mismatch(state, config):
            return config
    hint = " it is class-conditional (label_emb), which is not supported;" if "label_emb.weight" in state else ""
    raise ValueError(
        f"{str(path)!r} matches none of the ADM configs {', '.join(CONFIGS)};{hint} pass config=ADMConfig(...) "
        "describing its architecture"
    )


def load_adm(
    path: str | os.PathLike,
    config: str | ADMConfig | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ADMPrior:
    """Load a guided-diffusion checkpoint (``.pt`` / ``.pth`` state dict or ``.safetensors``) as a prior.

    ``config`` is ``"ffhq256"`` (DPS's ``ffhq_10m.pt``), ``"imagenet256"`` (OpenAI's
    ``256x256_diffusion_uncond.pt``), an :class:`ADMConfig`, or ``None`` to pick the
    named config whose parameter names and shapes match the file exactly.  The
    weights load with ``strict=True``; ``device`` and ``dtype`` (e.g. ``torch.float16``
    or ``torch.bfloat16`` on a GPU; default float32) place the network, which is in
    eval mode with frozen parameters.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        names = {"ffhq_10m.pt": "ffhq256", "256x256_diffusion_uncond.pt": "imagenet256"}
        where = DOWNLOADS.get(names.get(path.name, "") or (config if isinstance(config, str) else ""))
        source = f"download {where}" if where else "; ".join(f"download {text}" for text in DOWNLOADS.values())
        raise FileNotFoundError(f"no ADM checkpoint at {str(path)!r}; {source}")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float16, got {dtype!r}")
    state = _read_state_dict(path)
    resolved = _detect_config(state, path) if config is None else _resolve_config(config)
    problems = _mismatch(state, resolved)
    if problems:
        raise ValueError(
            f"{str(path)!r} does not match the ADM config {config!r}: {'; '.join(problems)}; "
            f"check the config (named ones: {', '.join(CONFIGS)}) or pass config=None to detect it"
        )
    with torch.device("meta"):
        unet = ADMUNet(resolved)
    unet.load_state_dict(state, strict=True, assign=True)
    unet.to(device=device, dtype=dtype or torch.float32)
    unet.eval().requires_grad_(False)
    return ADMPrior(unet)


def resolve_adm_checkpoint(
    name_or_path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> ADMPrior | None:
    """``load_prior``'s resolver for ADM checkpoint files; ``None`` for anything else.

    A name ending in ``.pt``, ``.pth`` or ``.safetensors`` is loaded with
    :func:`load_adm` (``config`` may be given in ``kwargs``; a missing file raises
    with download instructions); folders, bundled names and Hub ids return ``None``.
    """
    name = os.fspath(name_or_path)
    if not name.lower().endswith(CHECKPOINT_SUFFIXES):
        return None
    unknown = sorted(set(kwargs) - {"config"})
    if unknown:
        raise TypeError(f"an ADM checkpoint takes the option config, not {', '.join(unknown)}")
    return load_adm(name, kwargs.get("config"), device=device, dtype=dtype)
