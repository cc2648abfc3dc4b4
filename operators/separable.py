r"""Separable operators ``y = R_H x R_W^T``: exact SVD, pseudo-inverse and prox from two small SVDs."""

from __future__ import annotations

import torch
from torch import Tensor

from operators.svd import SVD


class SeparableSVD(SVD):
    r"""SVD of a separable operator ``y = R_H x R_W^T`` on images ``(C, H, W)``.

    With ``R_H = U_H S_H V_H^T`` (``h x H``) and ``R_W = U_W S_W V_W^T`` (``w x W``),
    full SVDs in float64, the spectral coordinates of ``x`` are
    ``V_H^T x V_W`` and ``U_H^T (A x) U_W = S_H (V_H^T x V_W)[:h, :w] S_W``: the
    singular value of coordinate ``(i, j)`` is ``s_H[i] s_W[j]`` for ``i < h, j < w``
    and every other coordinate lies in the null space (the structure DDRM uses for
    bicubic super-resolution; Kawar et al., NeurIPS 2022, App. B).  ``V^T x`` lists the
    ``C h w`` paired coordinates (channel, then row-major ``(i, j)``) and then the rest.

    The same factors give the pseudo-inverse and the prox in closed form
    (:meth:`pinv`, :meth:`prox`) with four or six ``n x n`` matrix products.  The
    factors are cast to each input's device and dtype once and kept.

    ``factor_rcond`` truncates each 1-D factor: its singular values at or below
    ``factor_rcond * max`` become 0, so the coordinates they pair with count as null
    space in :attr:`singular_values` and :meth:`pinv` (the ``ZERO = 3e-2`` rule of the
    ``Deblurring`` / ``SRConv`` classes of DDRM's ``functions/svd_replacement.py``, which
    DDNM and NVlabs/RED-diff's ΠGDM share).  The SVD is then that of the truncated
    operator ``A_t``, ``||A - A_t|| <= factor_rcond * ||A||``; :meth:`prox` stays the
    exact prox of ``A``.
    """

    def __init__(self, rows: Tensor, cols: Tensor, channels: int, factor_rcond: float = 0.0):
        self.channels = channels
        (self.low_h, self.height), (self.low_w, self.width) = rows.shape, cols.shape
        uh, s_h, vh_t = torch.linalg.svd(rows.double(), full_matrices=True)
        uw, s_w, vw_t = torch.linalg.svd(cols.double(), full_matrices=True)
        self._factors = {"uh": uh, "vh": vh_t.T, "uw": uw, "vw": vw_t.T}
        self.factor_rcond = float(factor_rcond)
        #: ``s_H[i] s_W[j]`` as an ``(h, w)`` float64 grid (exact; the prox uses it).
        self.exact_grid = s_h[:, None] * s_w[None, :]
        s_h = torch.where(s_h > self.factor_rcond * s_h.max(), s_h, 0)
        s_w = torch.where(s_w > self.factor_rcond * s_w.max(), s_w, 0)
        #: the same grid with truncated factors: the spectrum of :attr:`singular_values` and :meth:`pinv`.
        self.grid = s_h[:, None] * s_w[None, :]
        self._s = self.grid.flatten().repeat(channels).to(torch.get_default_dtype())
        kept = torch.zeros(self.height, self.width, dtype=torch.bool)
        kept[: self.low_h, : self.low_w] = True
        self._order = torch.cat([kept.flatten().nonzero().flatten(), (~kept).flatten().nonzero().flatten()])
        self._cache: dict[tuple, Tensor] = {}

    def _get(self, name: str, like: Tensor) -> Tensor:
        """Factor ``name`` (``uh``, ``vh``, ``uw``, ``vw``, ``grid``, ``exact_grid``, ``order``) on ``like``'s device and dtype."""
        key = (name, like.device, like.dtype)
        if key not in self._cache:
            if name == "order":
                self._cache[key] = self._order.to(like.device)
            else:
                source = {"grid": self.grid, "exact_grid": self.exact_grid}.get(name, self._factors.get(name))
                self._cache[key] = source.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    @property
    def singular_values(self) -> Tensor:
        return self._s

    def Vt(self, x: Tensor) -> Tensor:
        coords = (self._get("vh", x).T @ x @ self._get("vw", x)).flatten(2)[..., self._get("order", x)]
        paired = self.low_h * self.low_w
        return torch.cat([coords[..., :paired].flatten(1), coords[..., paired:].flatten(1)], dim=1)

    def V(self, c: Tensor) -> Tensor:
        batch, paired = c.shape[0], self.low_h * self.low_w
        k = self.channels * paired
        ordered = torch.cat(
            [c[:, :k].reshape(batch, self.channels, paired), c[:, k:].reshape(batch, self.channels, -1)], dim=2
        )
        coords = torch.empty_like(ordered)
        coords[..., self._get("order", c)] = ordered
        coords = coords.reshape(batch, self.channels, self.height, self.width)
        return self._get("vh", c) @ coords @ self._get("vw", c).T

    def Ut(self, y: Tensor) -> Tensor:
        return (self._get("uh", y).T @ y @ self._get("uw", y)).flatten(1)

    def U(self, c: Tensor) -> Tensor:
        low = c.reshape(c.shape[0], self.channels, self.low_h, self.low_w)
        return self._get("uh", c) @ low @ self._get("uw", c).T

    def pinv(self, y: Tensor, rcond: float) -> Tensor:
        r"""``A^+ y = V_H[:, :h] ((U_H^T y U_W) / S) V_W[:, :w]^T``, dropping ``S <= rcond max S`` (truncated SVD)."""
        grid = self._get("grid", y)
        keep = (grid > rcond * grid.max()) & (grid > 0)
        inverse = torch.where(keep, 1 / torch.where(keep, grid, 1), 0)
        coords = (self._get("uh", y).T @ y @ self._get("uw", y)) * inverse
        return self._get("vh", y)[:, : self.low_h] @ coords @ self._get("vw", y)[:, : self.low_w].T

    def prox(self, x0: Tensor, y: Tensor, rho: Tensor) -> Tensor:
        r"""``argmin ||y - A x||^2 + rho ||x - x0||^2`` in the singular bases.

        Coordinates ``c = V_H^T x0 V_W``, ``d = U_H^T y U_W``: on the paired block
        ``(S d + rho c) / (S^2 + rho)``, elsewhere ``c`` (null space); then ``V_H c V_W^T``.
        ``rho`` is positive, a scalar or shaped to broadcast per item.
        """
        vh, vw = self._get("vh", x0), self._get("vw", x0)
        grid = self._get("exact_grid", x0)
        coords = vh.T @ x0 @ vw
        measured = self._get("uh", y).T @ y @ self._get("uw", y)
        block = coords[..., : self.low_h, : self.low_w]
        paired = (grid * measured + rho * block) / (grid.square() + rho)
        if (self.low_h, self.low_w) == (self.height, self.width):
            coords = paired
        else:
            coords = coords.clone()
            coords[..., : self.low_h, : self.low_w] = paired
        return vh @ coords @ vw.T
