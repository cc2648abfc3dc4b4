"""Per-image work: load, measure, restore with each pending method, score, save."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from invsolve import io
from invsolve.api import solve
from invsolve.evaluation.baseline import NO_LEARNING, no_learning
from invsolve.evaluation.batch import stacked_operator
from invsolve.evaluation.dataset import ImageEntry, image_seed
from invsolve.evaluation.layout import OutputLayout
from invsolve.evaluation.memory import peak_memory_mib, reset_peak_memory
from invsolve.metrics import LPIPS, psnr, ssim

#: What decoding a broken or non-image file can raise (PIL reports most problems as OSError).
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass
class ImageEvaluator:
    """Runs a pending method on one image (:meth:`restore`) or on a batch of images in one
    solve (:meth:`restore_batch`) and returns one ``metrics.csv`` row per image.

    The measurement ``y = A(x) + noise`` is simulated on the CPU from a generator
    seeded by the image's key and ``seed`` (:func:`dataset.image_seed`), so every
    method, rerun and process sees the same ``y``; the samplers get their own seed
    from the same key.  Restorations are clamped to [-1, 1] and scored against the
    ground truth on the [0, 1] scale; a restoration with NaN or infinite values raises
    ``FloatingPointError`` (a diverged solve raises its ``DivergenceError``) before
    anything is written.  With a per-image ``preset`` (random masks of
    the benchmarks) each image gets its own operator, built from the seed
    ``image_seed(key, seed, "operator")``; otherwise every image uses ``operator``.
    """

    operator: Any
    prior: Any
    layout: OutputLayout
    noise_sigma: float
    seed: int
    size: tuple[int, int]
    mode: str
    steps: int | None
    metrics: tuple[str, ...]
    lpips: LPIPS | None
    device: torch.device
    progress: bool = False
    preset: Any = None
    _current: tuple[str, Any] | None = field(default=None, init=False, repr=False)

    def operator_for(self, entry: ImageEntry) -> Any:
        """The operator of ``entry``'s image: the shared one, or the per-image preset's (built once per image)."""
        if self.preset is None:
            return self.operator
        if self._current is None or self._current[0] != entry.key:
            self._current = (entry.key, self.preset.build(seed=image_seed(entry.key, self.seed, "operator")))
        return self._current[1]

    def read(self, entry: ImageEntry) -> Tensor:
        """The ground truth ``(1, C, H, W)`` in [-1, 1], centre-cropped and resized; raises on unreadable files."""
        return io.load_image(entry.path, size=self.size, mode=self.mode)

    def measure(self, entry: ImageEntry, x: Tensor) -> Tensor:
        """The seeded measurement of ``x``; writes ``x`` to ``OUT/ground_truth`` and, when it is an
        image, the measurement to ``OUT/measurement``."""
        io.save_image(x, self.layout.claim(self.layout.ground_truth(entry.name)))
        generator = torch.Generator().manual_seed(image_seed(entry.key, self.seed, "measurement"))
        operator = self.operator_for(entry)
        y = operator.measure(x, self.noise_sigma, generator=generator)
        if is_image(y) and getattr(operator, "output_in_image_range", False):
            io.save_image(y, self.layout.claim(self.layout.measurement(entry.name)))
        return y

    def restore(self, entry: ImageEntry, x: Tensor, y: Tensor, method: str) -> dict[str, Any] | None:
        """Restore with ``method``, save the PNG and return its row (``None``: no baseline exists)."""
        reset_peak_memory(self.device)
        operator = self.operator_for(entry)
        if method == NO_LEARNING:
            start = time.perf_counter()
            restored = no_learning(operator, y, tuple(x.shape))
            seconds, nfe = time.perf_counter() - start, 0.0
            if restored is None:
                return None
        else:
            result = solve(
                y.to(self.device), operator, self.prior, method=method, steps=self.steps,
                seed=image_seed(entry.key, self.seed, "sampler"), noise_sigma=self.noise_sigma,
                progress=self.progress, x_shape=tuple(x.shape),
            )
            restored, seconds, nfe = result.image, result.seconds, float(result.nfe)
        return self._finish(entry, x, restored, method, nfe, seconds)

    def restore_batch(
        self, batch: list[tuple[ImageEntry, Tensor, Tensor]], method: str
    ) -> list[tuple[ImageEntry, dict[str, Any] | None | FloatingPointError]]:
        """Restore the images of ``batch`` (``(entry, x, y)`` of one size) with ``method`` in one solve.

        Each image keeps its own sampler seed (``solve(seed=[...])``), so its restoration
        is the one :meth:`restore` gives, to float rounding; ``seconds`` is the solve's
        time shared equally among the images.  When the solve diverges, or the images
        have no joint operator (:func:`~invsolve.evaluation.batch.stacked_operator`),
        each image is restored alone, so one diverging image costs no other its row.
        Returns each entry with its row, ``None`` (no baseline) or the error it raised.
        """
        operator = None
        if method != NO_LEARNING and len(batch) > 1:
            shape = tuple(batch[0][1].shape)
            operator = stacked_operator([self.operator_for(entry) for entry, _, _ in batch], shape)
        if operator is None:
            return [(entry, self._restore_alone(entry, x, y, method)) for entry, x, y in batch]
        reset_peak_memory(self.device)
        try:
            result = solve(
                torch.cat([y for _, _, y in batch]).to(self.device), operator, self.prior, method=method,
                steps=self.steps, seed=[image_seed(entry.key, self.seed, "sampler") for entry, _, _ in batch],
                noise_sigma=self.noise_sigma, progress=self.progress,
                x_shape=(len(batch), *batch[0][1].shape[1:]),
            )
            if not bool(torch.isfinite(result.image).all()):
                raise FloatingPointError(f"{method} returned NaN or infinite values")
        except FloatingPointError:
            return [(entry, self._restore_alone(entry, x, y, method)) for entry, x, y in batch]
        seconds = result.seconds / len(batch)
        return [
            (entry, self._finish(entry, x, result.image[b:b + 1], method, float(result.nfe), seconds))
            for b, (entry, x, _) in enumerate(batch)
        ]

    def _restore_alone(self, entry: ImageEntry, x: Tensor, y: Tensor, method: str):
        try:
            return self.restore(entry, x, y, method)
        except FloatingPointError as err:  # a DivergenceError, or NaN / inf in the restoration
            return err

    def _finish(
        self, entry: ImageEntry, x: Tensor, restored: Tensor, method: str, nfe: float, seconds: float
    ) -> dict[str, Any]:
        """Check, clamp, save and score one restoration; its ``metrics.csv`` row."""
        restored = restored.detach().float().cpu()
        if not bool(torch.isfinite(restored).all()):
            raise FloatingPointError(f"{method} returned NaN or infinite values")
        restored = restored.clamp(-1, 1)
        io.save_image(restored, self.layout.claim(self.layout.restoration(method, entry.name)))
        return {
            "image": entry.key, "name": entry.name, "method": method, **self.score(restored, x),
            "nfe": nfe, "seconds": seconds, "peak_memory_mib": peak_memory_mib(self.device),
        }

    def score(self, restored: Tensor, x: Tensor) -> dict[str, float | None]:
        """PSNR, SSIM and LPIPS of ``restored`` against ``x`` (``None``: not asked for or unavailable)."""
        scores: dict[str, float | None] = {"psnr": None, "ssim": None, "lpips": None}
        if "psnr" in self.metrics:
            scores["psnr"] = float(psnr(restored, x)[0])
        if "ssim" in self.metrics:
            scores["ssim"] = float(ssim(restored, x)[0])
        if "lpips" in self.metrics and self.lpips is not None and self.lpips.available:
            scores["lpips"] = float(self.lpips(restored, x)[0])
        return scores


def is_image(y: Tensor) -> bool:
    """Whether ``y`` can be written as a picture: ``(1, C, H, W)`` with 1 or 3 channels."""
    return y.ndim == 4 and y.shape[0] == 1 and y.shape[1] in (1, 3)
