"""``load_prior``: a diffusion prior from a local folder, a bundled name or a Hugging Face Hub id.

A name is tried by each resolver of :data:`RESOLVERS` in turn; the first that
recognises it says where the model lives (a :class:`ModelLocation`).  The
location's layout is then read from its JSON configs: a diffusers pipeline folder
(``model_index.json`` with ``unet/`` and ``scheduler/``, plus ``vqvae/`` or ``vae/``
for latent pipelines) or a bare ``UNet2DModel`` folder with its scheduler config
beside it (``scheduler_config.json``) or in ``scheduler/``; a ``FlowMatchEulerDiscreteScheduler``
config makes the UNet a rectified-flow model.  diffusers is imported only when a model is actually loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from priors.adm import resolve_adm_checkpoint
from priors.base import Prior
from priors.bundled import bundled
from priors.diffusers_flow_latent import FlowLatentPrior
from priors.diffusers_flow_pixel import DiffusersFlowPixelPrior
from priors.diffusers_latent import AUTOENCODER_CLASSES, DiffusersLatentPrior, TextConditionedDenoiser
from priors.diffusers_pixel import DiffusersPixelPrior
from priors.flux import FluxDenoiser
from priors.locations import (
    DOWNLOAD_OPTIONS as _DOWNLOAD_OPTIONS,
)
from priors.locations import (
    EXPECTED as _EXPECTED,
)
from priors.locations import (
    RESOLVERS,
    ModelLocation,
    cache_only_when_offline,
)
from priors.locations import (
    first_line as _first_line,
)
from priors.network_priors import load_network_prior
from priors.sd3 import SD3Denoiser

#: Keyword arguments ``load_prior`` forwards to the Hub download and ``from_pretrained``.
HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "token", "variant", "use_safetensors")
_LATENT_COMPONENTS = ("vqvae", "vae")
_LATENT_UNETS = ("UNet2DModel", "UNet2DConditionModel")
#: Scheduler classes whose pixel UNet is a rectified-flow velocity model (:mod:`priors.diffusers_flow_pixel`).
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


def _is_flow(config: dict) -> bool:
    """Whether a scheduler config is a rectified-flow one (``FlowMatchEulerDiscreteScheduler``)."""
    return config.get("_class_name") in FLOW_SCHEDULERS


def _scheduler(location: ModelLocation, config: dict) -> Any:
    """The scheduler of ``config``: a ``FlowMatchEulerDiscreteScheduler`` for a flow config, else a
    ``DDPMScheduler`` (whose noise schedule is all that is read); an unusable config is a one-line error."""
    import diffusers

    cls = diffusers.FlowMatchEulerDiscreteScheduler if _is_flow(config) else diffusers.DDPMScheduler
    try:
        return cls.from_config(config)
    except (NotImplementedError, ValueError, TypeError, KeyError, ImportError) as err:
        raise location.error(f"its scheduler config cannot be used: {_first_line(err)}") from None


def _first_config(
    location: ModelLocation,
    filename: str,
    subfolders: tuple[str | None, ...],
    options: dict[str, Any],
    accept: Callable[[dict], bool] = lambda config: True,
) -> tuple[str | None, dict] | None:
    """The first ``(subfolder, config)`` holding an accepted ``filename``, else ``None``."""
    for subfolder in subfolders:
        config = location.read_json(filename, subfolder, options)
        if config is not None and accept(config):
            return subfolder, config
    return None


def _find_unet_and_scheduler(location: ModelLocation, options: dict[str, Any]) -> tuple[str | None, dict]:
    """The UNet's subfolder (``None`` = top level) and the scheduler config of a location."""
    index = location.read_json("model_index.json", None, options)
    unet_folders: tuple[str | None, ...] = (None, "unet")
    if index is not None:
        pipeline = index.get("_class_name", "unknown")
        if list(index.get("unet") or [None])[-1] != "UNet2DModel":
            raise location.error(f"its pipeline ({pipeline}) has no UNet2DModel 'unet' component")
        unet_folders = ("unet",)
    unet = _first_config(
        location, "config.json", unet_folders, options, lambda config: config.get("_class_name") == "UNet2DModel"
    )
    if unet is None:
        raise location.error(f"no UNet2DModel found; expected {_EXPECTED}")
    scheduler = _first_config(location, "scheduler_config.json", ("scheduler", None), options)
    if scheduler is None:
        raise location.error(
            "found a UNet2DModel but no scheduler config (scheduler_config.json beside it or in "
            "scheduler/), which holds the noise schedule"
        )
    return unet[0], scheduler[1]


def _load_diffusers_pixel(
    location: ModelLocation, options: dict[str, Any], dtype: torch.dtype | None
) -> DiffusersPixelPrior | DiffusersFlowPixelPrior:
    unet_folder, scheduler_config = _find_unet_and_scheduler(location, options)
    from diffusers import UNet2DModel  # after the configs are found: the import takes seconds
    weights_dtype = {} if dtype is None else {"torch_dtype": dtype}
    try:
        unet = UNet2DModel.from_pretrained(location.target, subfolder=unet_folder, **options, **weights_dtype)
    except OSError as err:
        raise location.error(f"its UNet2DModel weights cannot be loaded: {_first_line(err)}") from None
    scheduler = _scheduler(location, scheduler_config)
    unet.eval().requires_grad_(False)
    if _is_flow(scheduler_config):
        return DiffusersFlowPixelPrior.from_scheduler(unet, scheduler)
    return DiffusersPixelPrior.from_scheduler(unet, scheduler)


def _from_pretrained(location: ModelLocation, cls: Any, subfolder: str, options: dict[str, Any], what: str) -> Any:
    try:
        return cls.from_pretrained(location.target, subfolder=subfolder, **options)
    except OSError as err:
        raise location.error(f"its {what} ({subfolder}/) cannot be loaded: {_first_line(err)}") from None


def _text_components(
    location: ModelLocation, index: dict, options: dict[str, Any], dtype: torch.dtype | None
) -> tuple[Any, Any]:
    """The text encoder and tokenizer of a Stable Diffusion pipeline (transformers classes)."""
    pipeline = index.get("_class_name", "unknown")
    missing = [name for name in ("text_encoder", "tokenizer") if not (index.get(name) or [None])[-1]]
    if missing:
        raise location.error(f"its text-conditioned latent pipeline ({pipeline}) lacks {' and '.join(missing)}")
    try:
        import transformers
    except ImportError:
        raise location.error(
            f"its latent pipeline ({pipeline}) has a text encoder, which needs the transformers package: "
            "pip install 'invsolve[latent]'"
        ) from None
    classes = {name: getattr(transformers, index[name][-1], None) for name in ("text_encoder", "tokenizer")}
    unknown = [f"{name} {index[name][-1]}" for name, cls in classes.items() if cls is None]
    if unknown:
        raise location.error(f"its latent pipeline ({pipeline}) names unknown transformers classes: {', '.join(unknown)}")
    download = {k: v for k, v in options.items() if k in _DOWNLOAD_OPTIONS}
    encoder = _from_pretrained(location, classes["text_encoder"], "text_encoder", options, "text encoder")
    tokenizer = _from_pretrained(location, classes["tokenizer"], "tokenizer", download, "tokenizer")
    if dtype is not None:
        encoder.to(dtype)
    return encoder.eval().requires_grad_(False), tokenizer


def _load_diffusers_latent(
    location: ModelLocation,
    index: dict,
    options: dict[str, Any],
    dtype: torch.dtype | None,
    prompt: str | None,
    guidance_scale: float | None,
) -> DiffusersLatentPrior:
    """A latent pipeline: ``vqvae/`` or ``vae/``, ``unet/``, ``scheduler/`` (+ ``text_encoder/``, ``tokenizer/``)."""
    import diffusers

    pipeline = index.get("_class_name", "unknown")
    autoencoder_folder = next(name for name in _LATENT_COMPONENTS if name in index)
    autoencoder_class = (index[autoencoder_folder] or [None])[-1]
    unet_class = (index.get("unet") or [None])[-1]
    if autoencoder_class not in AUTOENCODER_CLASSES:
        raise location.error(
            f"its latent pipeline ({pipeline}) has a {autoencoder_class} autoencoder; supported: "
            f"{', '.join(AUTOENCODER_CLASSES)}"
        )
    if unet_class not in _LATENT_UNETS:
        raise location.error(
            f"its latent pipeline ({pipeline}) has no {' or '.join(_LATENT_UNETS)} 'unet' component"
        )
    scheduler_config = location.read_json("scheduler_config.json", "scheduler", options)
    if scheduler_config is None:
        raise location.error(f"its latent pipeline ({pipeline}) has no scheduler config (scheduler/scheduler_config.json)")
    weights_dtype = {} if dtype is None else {"torch_dtype": dtype}
    load = {**options, **weights_dtype}
    autoencoder = _from_pretrained(location, getattr(diffusers, autoencoder_class), autoencoder_folder, load, "autoencoder")
    unet = _from_pretrained(location, getattr(diffusers, unet_class), "unet", load, "UNet")
    autoencoder.eval().requires_grad_(False)
    unet.eval().requires_grad_(False)
    scheduler = _scheduler(location, scheduler_config)
    schedule = (unet, scheduler.alphas_cumprod, scheduler.config.prediction_type)
    if unet_class == "UNet2DConditionModel":
        text_encoder, tokenizer = _text_components(location, index, options, dtype)
        guidance = 1.0 if guidance_scale is None else guidance_scale
        denoiser = TextConditionedDenoiser(*schedule, text_encoder, tokenizer, prompt or "", guidance)
    else:
        if prompt is not None or guidance_scale is not None:
            raise ValueError(
                f"prompt and guidance_scale need a text-conditioned pipeline; {location.describe()} is an "
                f"unconditional latent pipeline ({pipeline})"
            )
        denoiser = DiffusersPixelPrior(*schedule, data_range=None)
    return DiffusersLatentPrior(denoiser, autoencoder)


#: Latent flow pipelines (``model_index.json`` ``_class_name``) and their components besides ``scheduler``.
_FLOW_LATENT_PIPELINES = {
    "StableDiffusion3Pipeline": ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3",
                                 "tokenizer", "tokenizer_2", "tokenizer_3"),
    "FluxPipeline": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
}


def _load_flow_latent(
    location: ModelLocation,
    index: dict,
    options: dict[str, Any],
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    prompt: str | None,
    guidance_scale: float | None,
) -> FlowLatentPrior:
    """An SD3 / SD3.5 or FLUX.1 pipeline: its components by the classes ``model_index.json`` names
    (diffusers or transformers), ``scheduler/`` as a ``FlowMatchEulerDiscreteScheduler``."""
    import importlib

    from diffusers import FlowMatchEulerDiscreteScheduler

    pipeline = index["_class_name"]
    scheduler_config = location.read_json("scheduler_config.json", "scheduler", options)
    if scheduler_config is None:
        raise location.error(f"its {pipeline} has no scheduler config (scheduler/scheduler_config.json)")
    download = {k: v for k, v in options.items() if k in _DOWNLOAD_OPTIONS}
    weights = {**options, **({} if dtype is None else {"torch_dtype": dtype})}
    parts: dict[str, Any] = {}
    for name in _FLOW_LATENT_PIPELINES[pipeline]:
        library, cls_name = (index.get(name) or [None, None])[-2:]
        if cls_name is None and name in ("text_encoder_3", "tokenizer_3"):  # SD3 runs without its T5
            parts[name] = None
            continue
        cls = getattr(importlib.import_module(library), cls_name, None) if library in ("diffusers", "transformers") else None
        if cls is None:
            raise location.error(f"its {pipeline} lacks a known {name} class (model_index.json names {library}.{cls_name})")
        if name.startswith("tokenizer"):
            parts[name] = _from_pretrained(location, cls, name, download, name)
            continue
        part = _from_pretrained(location, cls, name, weights if library == "diffusers" else options, name)
        if dtype is not None and library == "transformers":
            part.to(dtype)
        if device is not None:
            part.to(device)
        parts[name] = part.eval().requires_grad_(False)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    text = {"prompt": prompt or "", "guidance_scale": 1.0 if guidance_scale is None else guidance_scale}
    if pipeline == "FluxPipeline":
        denoiser = FluxDenoiser(parts["transformer"], scheduler, (parts["text_encoder"], parts["text_encoder_2"]),
                                (parts["tokenizer"], parts["tokenizer_2"]), **text)
    else:
        encoders = tuple(parts[f"text_encoder{s}"] for s in ("", "_2", "_3"))
        denoiser = SD3Denoiser(parts["transformer"], scheduler, encoders,
                               tuple(parts[f"tokenizer{s}"] for s in ("", "_2", "_3")), **text)
    return FlowLatentPrior(denoiser, parts["vae"])


def _adm_checkpoint(name_or_path: str | os.PathLike, device: Any, dtype: torch.dtype | None, **kwargs: Any) -> Prior | None:
    """:func:`priors.adm.resolve_adm_checkpoint`, with a corrupt ``.safetensors`` file as a one-line error."""
    from safetensors import SafetensorError

    try:
        return resolve_adm_checkpoint(name_or_path, device, dtype, **kwargs)
    except SafetensorError as err:
        raise ValueError(
            f"cannot read {os.fspath(name_or_path)!r} as a .safetensors checkpoint ({_first_line(err)}); "
            "the file is truncated or not a safetensors file"
        ) from None


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use a torch.dtype or a name such as 'float16'")
    return resolved


def load_prior(
    name_or_path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    prompt: str | None = None,
    guidance_scale: float | None = None,
    **kwargs: Any,
) -> Prior:
    """Load a pretrained diffusion prior as a VE denoiser.

    ``name_or_path`` is an ADM (guided-diffusion) checkpoint file (``.pt``, ``.pth``,
    ``.safetensors``; ``config`` may name its architecture, see :func:`priors.adm.load_adm`),
    a local folder (a saved diffusers ``DDPMPipeline`` /
    ``DDIMPipeline``, or a ``UNet2DModel`` folder with its scheduler config), the
    name of a bundled prior, or a Hugging Face Hub id such as
    ``"google/ddpm-celebahq-256"``.  Only the scheduler's noise schedule
    (``alphas_cumprod``) and ``prediction_type`` are used, whatever its class, except
    that a ``FlowMatchEulerDiscreteScheduler`` config makes the UNet a rectified-flow
    velocity model (:class:`~priors.diffusers_flow_pixel.DiffusersFlowPixelPrior`, with
    the scheduler's ``shift`` and ``num_train_timesteps``).
    ``device`` and ``dtype`` place the network (default: CPU, float32);
    ``kwargs`` go to the Hub download and ``from_pretrained`` (``revision``,
    ``cache_dir``, ``local_files_only``, ``token``, ``variant``, ``use_safetensors``).
    The network is in eval mode with frozen parameters.

    A latent pipeline folder (``model_index.json`` naming a ``vqvae`` / ``vae`` with a
    ``UNet2DModel``, e.g. ``LDMPipeline``, or a ``UNet2DConditionModel`` with its text
    encoder and tokenizer, e.g. ``StableDiffusionPipeline``) gives a
    :class:`~priors.diffusers_latent.DiffusersLatentPrior`; for text-conditioned ones
    ``prompt`` (default: the empty prompt) and ``guidance_scale`` (classifier-free
    guidance weight, default 1: no guidance) choose the conditioning.
    """
    if prompt is None and guidance_scale is None:
        adm = _adm_checkpoint(name_or_path, device, _as_dtype(dtype), **kwargs)
        if adm is not None:
            return adm
        network = load_network_prior(name_or_path, device, _as_dtype(dtype))  # restorer / LPN folders
        if network is not None:
            return network
    unknown = sorted(set(kwargs) - set(HUB_OPTIONS))
    if unknown:
        known = ", ".join(("device", "dtype", "prompt", "guidance_scale", *HUB_OPTIONS))
        raise TypeError(f"load_prior got unexpected option(s) {', '.join(unknown)}; known: {known}")
    name = os.fspath(name_or_path)
    location = next((found for resolver in RESOLVERS if (found := resolver(name)) is not None), None)
    if location is None:
        names = ", ".join(bundled()) or "none installed"
        raise FileNotFoundError(
            f"cannot load prior {name!r}: no such folder, bundled name ({names}) or Hub id; expected {_EXPECTED}"
        )
    kwargs = cache_only_when_offline(location, kwargs)
    index = location.read_json("model_index.json", None, kwargs)
    if index is not None and index.get("_class_name") in _FLOW_LATENT_PIPELINES:
        return _load_flow_latent(location, index, kwargs, _as_dtype(dtype), device, prompt, guidance_scale)
    if index is not None and any(component in index for component in _LATENT_COMPONENTS):
        latent = _load_diffusers_latent(location, index, kwargs, _as_dtype(dtype), prompt, guidance_scale)
        if device is not None:
            latent.autoencoder.to(device)
            latent.denoiser.unet.to(device)
            if latent.text_conditioned:
                latent.denoiser.text_encoder.to(device)
        return latent
    if prompt is not None or guidance_scale is not None:
        raise ValueError(
            f"prompt and guidance_scale need a text-conditioned latent pipeline; {location.describe()} is not one"
        )
    prior = _load_diffusers_pixel(location, kwargs, _as_dtype(dtype))
    if device is not None:
        prior.unet.to(device)
    return prior
