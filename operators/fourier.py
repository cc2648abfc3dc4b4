"""FFT helpers for convolutions: fast sizes, kernels on a canvas, the real Fourier basis."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from operators.svd import SVD


@functools.cache
def fast_length(n: int) -> int:
    """The smallest integer ``>= n`` of the form ``2^a 3^b 5^c`` with ``a >= 2`` (fast FFT sizes).

    PyTorch's CPU FFT is 2-4x slower per point on sizes with fewer factors of 2 (measured;
    operator notes), so the padded canvas of a reflect blur is rounded up to such a size.
    """
    m = max(int(n), 4)
    while True:
        rest = m
        twos = 0
        while rest % 2 == 0:
            rest //= 2
            twos += 1
        for p in (3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1 and twos >= 2:
            return m
        m += 1


def kernel_on_canvas(kernel: Tensor, size: tuple[int, int], origin: tuple[int, int]) -> Tensor:
    """``kernel`` on an ``(H, W)`` canvas with its entry ``origin`` at pixel (0, 0).

    Entries are placed circularly (indices modulo ``H`` and ``W``); entries that
    land on the same pixel add up, so circular convolution with the canvas equals
    circular convolution with the kernel even when the kernel is larger than the canvas.
    """
    kh, kw = kernel.shape
    height, width = size
    rows = (torch.arange(kh, device=kernel.device) - origin[0]) % height
    cols = (torch.arange(kw, device=kernel.device) - origin[1]) % width
    canvas = torch.zeros(height, width, dtype=kernel.dtype, device=kernel.device)
    index = (rows[:, None].expand(kh, kw), cols[None, :].expand(kh, kw))
    return canvas.index_put_(index, kernel, accumulate=True)


class RealFourierBasis:
    r"""The real orthonormal Fourier basis of ``R^{H x W}``.

    With the unitary DFT ``X = fft2(x, norm="ortho")`` of a real image, ``X`` is
    Hermitian: ``X[-f] = conj(X[f])``.  Frequencies split into the self-conjugate
    set ``S`` (``f = -f`` mod the size: DC and the Nyquist rows/columns) and pairs
    ``{f, -f}``, of which ``P`` holds one representative each.  The map

    .. math::  x \mapsto (\mathrm{Re}\,X[S],\ \sqrt2\,\mathrm{Re}\,X[P],\ \sqrt2\,\mathrm{Im}\,X[P])

    is orthogonal (Parseval: ``||x||^2 = sum_S X^2 + 2 sum_P |X|^2``) and bijective,
    because ``|S| + 2|P| = HW``.  ``coords`` applies it to a Hermitian spectrum and
    ``spectrum`` inverts it.
    """

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        index = torch.arange(height * width)
        row, col = index // width, index % width
        partner = ((-row) % height) * width + ((-col) % width)
        self.self_conjugate = index[partner == index]
        self.pairs = index[index < partner]
        self.partners = partner[self.pairs]

    @property
    def size(self) -> int:
        return self.height * self.width

    def split(self, spectrum: Tensor) -> tuple[Tensor, Tensor]:
        """``(X[S], X[P])`` of a spectrum ``(..., H, W)``, flattened over frequencies."""
        flat = spectrum.flatten(-2)
        return flat[..., self.self_conjugate.to(flat.device)], flat[..., self.pairs.to(flat.device)]

    def coords(self, spectrum: Tensor) -> Tensor:
        """Real coordinates ``(..., H*W)`` of a Hermitian spectrum ``(..., H, W)``."""
        fixed, paired = self.split(spectrum)
        paired = paired * math.sqrt(2)
        return torch.cat([fixed.real, paired.real, paired.imag], dim=-1)

    def spectrum(self, coords: Tensor) -> Tensor:
        """The Hermitian spectrum ``(..., H, W)`` with real coordinates ``coords`` ``(..., H*W)``."""
        n_fixed, n_pairs = self.self_conjugate.numel(), self.pairs.numel()
        fixed, real, imag = coords.split([n_fixed, n_pairs, n_pairs], dim=-1)
        paired = torch.complex(real, imag) / math.sqrt(2)
        device = coords.device
        flat = torch.zeros(*coords.shape[:-1], self.size, dtype=paired.dtype, device=device)
        flat = flat.index_copy(-1, self.self_conjugate.to(device), torch.complex(fixed, torch.zeros_like(fixed)))
        flat = flat.index_copy(-1, self.pairs.to(device), paired)
        flat = flat.index_copy(-1, self.partners.to(device), paired.conj())
        return flat.unflatten(-1, (self.height, self.width))


class CirculantSVD(SVD):
    r"""Exact SVD of a per-channel circular convolution ``y = k (*) x`` on ``(B, C, H, W)``.

    With ``X = fft2(x, norm="ortho")`` the convolution multiplies by the
    unnormalised DFT ``K`` of the kernel placed at the origin: ``Y = K X``.  In the
    real Fourier basis (:class:`RealFourierBasis`) ``V^T x`` are the coordinates of
    ``X`` and ``U^T y`` those of ``Y * conj(K)/|K|`` (the phase of ``K`` removed; phase 1
    where ``K = 0``; a sign on the real self-conjugate frequencies), so that
    ``U^T A x = |K| * V^T x`` entry by entry: the singular values are ``|K|`` in the
    order ``S, P, P`` of the basis, repeated for each channel (``n = C H W``, no sorting).

    ``kernel_spectrum`` is the full ``fft2`` of the kernel on the ``(H, W)`` canvas.
    The singular values are returned in the default dtype on the CPU; cast them
    with ``.to(x)``.
    """

    def __init__(self, kernel_spectrum: Tensor, channels: int):
        height, width = kernel_spectrum.shape
        self.basis = RealFourierBasis(height, width)
        self.channels = channels
        fixed, paired = self.basis.split(kernel_spectrum)
        # K is real on self-conjugate frequencies; its sign is the phase there.
        fixed = fixed.real
        self._fixed_phase = torch.where(fixed < 0, -1.0, 1.0).to(fixed.dtype)
        magnitude = paired.abs()
        self._pair_phase = torch.where(magnitude > 0, paired.conj() / magnitude.clamp_min(1e-300), 1.0 + 0j)
        single = torch.cat([fixed.abs(), magnitude, magnitude])
        self._s = single.repeat(channels).to(torch.get_default_dtype())

    @property
    def singular_values(self) -> Tensor:
        return self._s

    def _image_shape(self, c: Tensor) -> tuple[int, ...]:
        return (c.shape[0], self.channels, self.basis.height, self.basis.width)

    def Vt(self, x: Tensor) -> Tensor:
        return self.basis.coords(torch.fft.fft2(x, norm="ortho")).flatten(1)

    def V(self, c: Tensor) -> Tensor:
        spectrum = self.basis.spectrum(c.reshape(c.shape[0], self.channels, -1))
        return torch.fft.ifft2(spectrum, norm="ortho").real.reshape(self._image_shape(c))

    def _phases(self, like: Tensor) -> tuple[Tensor, Tensor]:
        fixed = self._fixed_phase.to(device=like.device, dtype=like.dtype)
        return fixed, self._pair_phase.to(device=like.device, dtype=like.dtype.to_complex())

    def Ut(self, y: Tensor) -> Tensor:
        fixed_phase, pair_phase = self._phases(y)
        fixed, paired = self.basis.split(torch.fft.fft2(y, norm="ortho"))
        paired = paired * pair_phase * math.sqrt(2)
        return torch.cat([fixed.real * fixed_phase, paired.real, paired.imag], dim=-1).flatten(1)

    def U(self, c: Tensor) -> Tensor:
        fixed_phase, pair_phase = self._phases(c)
        n_fixed, n_pairs = self.basis.self_conjugate.numel(), self.basis.pairs.numel()
        fixed, real, imag = c.reshape(c.shape[0], self.channels, -1).split([n_fixed, n_pairs, n_pairs], dim=-1)
        rotated = torch.complex(real, imag) * pair_phase.conj()
        coords = torch.cat([fixed * fixed_phase, rotated.real, rotated.imag], dim=-1)
        spectrum = self.basis.spectrum(coords)
        return torch.fft.ifft2(spectrum, norm="ortho").real.reshape(self._image_shape(c))
