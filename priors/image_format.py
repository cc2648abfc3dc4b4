"""What image files hold a prior's data: their colour mode and, for fixed-size priors, their size."""

from __future__ import annotations

from priors.base import is_latent_prior


def image_mode(prior: object) -> str:
    """``"L"`` or ``"RGB"``: the image-file mode of the prior's data (latent priors decode to RGB).

    Raises ``ValueError`` for a pixel prior of another channel count, which no image file holds.
    """
    shape = getattr(prior, "data_shape", None)
    if is_latent_prior(prior):
        channels = 3
    elif shape is not None:
        channels = shape[0]
    else:
        channels = getattr(prior, "channels", 3)
    if channels not in (1, 3):
        raise ValueError(f"the prior models {channels}-channel data; image files give 1 or 3 channels")
    return "L" if channels == 1 else "RGB"


def fixed_size(prior: object) -> tuple[int, int] | None:
    """``(H, W)`` of a pixel prior trained at one size (e.g. an attention UNet); ``None`` for any size."""
    shape = getattr(prior, "data_shape", None)
    return None if is_latent_prior(prior) or shape is None else (int(shape[1]), int(shape[2]))
