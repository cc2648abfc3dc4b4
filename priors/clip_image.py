"""A CLIP image encoder (Radford et al., "Learning Transferable Visual Models From Natural
Language Supervision", ICML 2021) loaded from a local folder or a Hugging Face Hub id.

TReg's adaptive negation compares CLIP image features with Stable Diffusion's text
embeddings, so the encoder must be the CLIP model whose width matches the text encoder:
OpenAI's ViT-L/14 (``openai/clip-vit-large-patch14``, 768 wide) for Stable Diffusion v1.x.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: The image encoder of the official TReg code (``clip.load("ViT-L/14")``) on the Hub.
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
#: OpenAI CLIP's input normalisation (``clip/clip.py``; also latent-diffusion's ``FrozenClipImageEmbedder``).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "token")


class ClipImageEncoder:
    """CLIP image features ``(N, projection_dim)`` of images ``(N, 3, H, W)`` in [-1, 1].

    The preprocessing is latent-diffusion's ``FrozenClipImageEmbedder``, which TReg runs:
    bicubic resize to the model's ``image_size`` (``align_corners=True``, no antialiasing),
    ``[-1, 1] -> [0, 1]``, normalisation by :data:`CLIP_MEAN` / :data:`CLIP_STD`; then the
    projected image embedding of a transformers ``CLIPVisionModelWithProjection``.  Runs
    under the caller's grad mode; the result has the input's device and dtype.
    """

    def __init__(self, model: Any):
        self.model = model
        self.image_size = int(model.config.image_size)
        self.projection_dim = int(model.config.projection_dim)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, images: Tensor) -> Tensor:
        """The model's ``pixel_values`` for ``images`` in [-1, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIP takes RGB images (N, 3, H, W), got shape {tuple(images.shape)}")
        size = (self.image_size, self.image_size)
        x = F.interpolate(images.to(device=self.device, dtype=torch.float32), size=size, mode="bicubic",
                          align_corners=True)
        mean = torch.tensor(CLIP_MEAN, device=x.device).reshape(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).reshape(1, 3, 1, 1)
        return (((x + 1) / 2 - mean) / std).to(self.dtype)

    def __call__(self, images: Tensor) -> Tensor:
        features = self.model(pixel_values=self.preprocess(images)).image_embeds
        return features.to(device=images.device, dtype=images.dtype)

    def __repr__(self) -> str:
        return f"ClipImageEncoder({self.image_size}px, {self.projection_dim}-wide features)"


def _missing(name: str, reason: str) -> ValueError:
    return ValueError(
        f"cannot load the CLIP image encoder {name!r}: {reason}; download {DEFAULT_CLIP_MODEL} once "
        f"(huggingface-cli download {DEFAULT_CLIP_MODEL}) or pass a local folder holding a transformers "
        "CLIPModel or CLIPVisionModelWithProjection (method option clip_model)"
    )


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` cannot be a Hub id (``owner/name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or "\\" in name


@functools.lru_cache(maxsize=2)
def _load(name: str, device: str | None, dtype: str | None, options: tuple) -> ClipImageEncoder:
    try:
        from transformers import CLIPVisionModelWithProjection
    except ImportError:
        raise _missing(name, "it needs the transformers package (pip install 'invsolve[latent]')") from None
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise _missing(name, "it is a file, not a folder")
    if not path.is_dir() and _looks_like_path(name):
        raise _missing(name, "no such folder")
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(str(path) if path.is_dir() else name, **dict(options))
    except (OSError, ValueError) as err:
        lines = str(err).strip().splitlines()
        raise _missing(name, lines[0] if lines else type(err).__name__) from None
    model.to(device=device, dtype=None if dtype is None else getattr(torch, dtype))
    return ClipImageEncoder(model.eval().requires_grad_(False))


def load_clip_image_encoder(
    name_or_path: str | os.PathLike = DEFAULT_CLIP_MODEL,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **hub_options: Any,
) -> ClipImageEncoder:
    """A :class:`ClipImageEncoder` from a local folder or a Hub id (like :func:`priors.load_prior`).

    The folder holds a transformers ``CLIPModel`` (its vision half and projection are used)
    or ``CLIPVisionModelWithProjection`` (``config.json`` and safetensors weights).
    ``hub_options`` (``revision``, ``cache_dir``, ``local_files_only``, ``token``) go to
    ``from_pretrained``.  A missing model raises a ``ValueError`` naming what to download.
    Loaded encoders are cached (two at most), so repeated solves load once.
    """
    unknown = sorted(set(hub_options) - set(_HUB_OPTIONS))
    if unknown:
        raise TypeError(
            f"load_clip_image_encoder got unexpected option(s) {', '.join(unknown)}; known: {', '.join(_HUB_OPTIONS)}"
        )
    device_name = None if device is None else str(torch.device(device))
    dtype_name = None if dtype is None else str(dtype).removeprefix("torch.")
    return _load(os.fspath(name_or_path), device_name, dtype_name, tuple(sorted(hub_options.items())))
