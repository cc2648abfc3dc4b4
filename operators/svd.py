"""The singular value decomposition contract used by spectral methods (DDRM)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor


class SVD(ABC):
    """An exact factorisation ``A = U diag(s) V^T`` for inputs of one shape.

    ``x`` has ``n`` entries per batch item and ``y`` has ``m``.  Spectral
    coordinates are flat ``(B, n)`` for ``V^T x`` and ``(B, m)`` for ``U^T y``;
    their first ``k`` entries pair with the singular values ``s`` (shape ``(k,)``
    or ``(B, k)``, entries may be zero), so that for every ``x``::

        Ut(A(x))[:, :k] == s * Vt(x)[:, :k]     and     Ut(A(x))[:, k:] == 0.

    ``V`` and ``U`` are orthogonal: ``V(Vt(x)) == x`` and ``U(Ut(y)) == y``.
    Coordinates ``k..n`` of ``V^T x`` span the null space of ``A``.
    """

    @property
    @abstractmethod
    def singular_values(self) -> Tensor:
        """``s``, shape ``(k,)`` or ``(B, k)``."""

    @abstractmethod
    def Vt(self, x: Tensor) -> Tensor:
        """``V^T x`` as ``(B, n)``."""

    @abstractmethod
    def V(self, c: Tensor) -> Tensor:
        """``V c`` for ``c`` of shape ``(B, n)``, returned in the input shape."""

    @abstractmethod
    def Ut(self, y: Tensor) -> Tensor:
        """``U^T y`` as ``(B, m)``."""

    @abstractmethod
    def U(self, c: Tensor) -> Tensor:
        """``U c`` for ``c`` of shape ``(B, m)``, returned in the measurement shape."""
