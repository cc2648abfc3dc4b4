"""The text-conditioning state that Stable Diffusion and the flow transformers (SD3, FLUX) share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor


def check_guidance(guidance_scale: float) -> None:
    """Refuse a negative (or NaN) classifier-free guidance weight."""
    if not guidance_scale >= 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")


class PromptConditioning:
    """``set_prompt`` / ``conditioning`` over ``prompt_embeds``, ``negative_embeds`` (the empty
    prompt's) and ``guidance_scale``; the class provides ``encode_text(prompt)`` returning a
    ``(1, tokens, width)`` tensor."""

    prompt_embeds: Tensor
    negative_embeds: Tensor
    prompt: str
    guidance_scale: float

    def encode_text(self, prompt: str) -> Tensor:
        raise NotImplementedError

    def set_prompt(self, prompt: str = "", guidance_scale: float = 1.0) -> None:
        """Condition on ``prompt`` with classifier-free guidance weight ``guidance_scale`` (1: none;
        Stable Diffusion's own default is 7.5)."""
        check_guidance(guidance_scale)
        self.prompt_embeds = self.encode_text(prompt)
        self.negative_embeds = self.encode_text("")
        self.prompt = prompt
        self.guidance_scale = float(guidance_scale)

    @contextmanager
    def conditioning(
        self,
        prompt_embeds: Tensor | None = None,
        negative_embeds: Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> Iterator[None]:
        """Inside the block, guide with these embeddings and weight (``None`` keeps the current one).

        Embeddings are ``(1 or N, tokens, width)`` tensors like :meth:`encode_text`'s, for
        example a tuned prompt or a negated null text; gradients flow to them.  The
        previous conditioning is restored on exit.
        """
        width = tuple(self.prompt_embeds.shape[1:])
        for label, embeds in (("prompt_embeds", prompt_embeds), ("negative_embeds", negative_embeds)):
            if embeds is not None and (embeds.ndim != 3 or tuple(embeds.shape[1:]) != width):
                raise ValueError(
                    f"{label} must have shape (rows, {', '.join(map(str, width))}) like encode_text's, "
                    f"got {tuple(embeds.shape)}"
                )
        if guidance_scale is not None:
            check_guidance(guidance_scale)
        saved = (self.prompt_embeds, self.negative_embeds, self.guidance_scale)
        self.prompt_embeds = saved[0] if prompt_embeds is None else prompt_embeds
        self.negative_embeds = saved[1] if negative_embeds is None else negative_embeds
        self.guidance_scale = saved[2] if guidance_scale is None else float(guidance_scale)
        try:
            yield
        finally:
            self.prompt_embeds, self.negative_embeds, self.guidance_scale = saved
