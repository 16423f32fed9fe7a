r"""Models used across the book: plain :class:`torch.nn.Module` s with *functional* forwards.

"Functional" means the forward reads its parameters only through registered ``nn.Parameter`` s and changes
no state, so :func:`torch.func.functional_call` and :func:`torch.func.vmap` can run many copies at once
(see :mod:`slt_companion.sampling`).

- :class:`DeepLinearNetwork` -- :math:`f(x) = W_L \cdots W_1 x`; reduced-rank regression is the case
  ``widths=[in, hidden, out]``. Known learning coefficients: :func:`slt_companion.theory.rrr_rlct`,
  :func:`slt_companion.theory.dln_rlct`. Used in: Part II, all chapters.
- :class:`MonomialModel` -- :math:`f(x; w) = x\prod_j w_j^{k_j}`, the normal-crossing toy potentials of
  Lau et al. (2025). Used in: Part II, "Validation against known λ".
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["DeepLinearNetwork", "MonomialModel", "rank_constrained_least_squares"]


def _positive_ints(name: str, values: Sequence[int], *, min_len: int) -> list[int]:
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a sequence of positive integers, got {values!r}") from err
    if len(out) < min_len or any(v < 1 or v != w for v, w in zip(out, values)):
        raise ValueError(f"{name} must be a list of at least {min_len} positive integers, got {list(values)!r}")
    return out


def rank_constrained_least_squares(x: torch.Tensor, y: torch.Tensor, rank: int) -> torch.Tensor:
    r"""The matrix :math:`\hat W` (out × in) minimising :math:`\frac1{2n}\sum_i\|y_i - Wx_i\|^2` over rank ≤ ``rank``.

    The reduced-rank regression estimator (Izenman 1975): ordinary least squares
    :math:`\hat B = (X^\top X)^{-1}X^\top Y`, then projection of the fitted values onto their top ``rank``
    right singular vectors :math:`V_r`: :math:`\hat W = (\hat B V_r V_r^\top)^\top`. Computed in float64.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must be 2-D with the same number of rows; got {tuple(x.shape)} and {tuple(y.shape)}")
    X, Y = x.double(), y.double()
    B = torch.linalg.lstsq(X, Y).solution  # (in, out)
    fitted = X @ B
    _, _, Vh = torch.linalg.svd(fitted, full_matrices=False)
    r = min(int(rank), Vh.shape[0])
    P = Vh[:r].T @ Vh[:r]
    return (B @ P).T.contiguous()


class DeepLinearNetwork(nn.Module):
    r"""A deep linear network :math:`f(x) = W_L \cdots W_2 W_1 x` without biases.

    ``widths = [input, hidden_1, ..., hidden_{L-1}, output]``; layer ``j`` is ``self.layers[j]`` (an
    ``nn.Linear`` of shape ``widths[j+1] × widths[j]``). With ``widths=[M, H, N]`` this is reduced-rank
    regression. The product :math:`W = W_L\cdots W_1` (:meth:`product`) has rank at most ``min(widths)``.

    Its learning coefficient at a true parameter of product rank ``r`` is
    :func:`slt_companion.theory.dln_rlct` (Aoyagi 2024) -- for ``L = 2``, :func:`~slt_companion.theory.rrr_rlct`
    (Aoyagi & Watanabe 2005). Used in: Part II.
    """

    def __init__(self, widths: Sequence[int], *, seed: int | None = 0, init_scale: float = 1.0):
        super().__init__()
        self.widths = _positive_ints("widths", widths, min_len=2)
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        layers = []
        for fan_in, fan_out in zip(self.widths[:-1], self.widths[1:]):
            lin = nn.Linear(fan_in, fan_out, bias=False)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(fan_out, fan_in, generator=gen) * init_scale / fan_in ** 0.5)
            layers.append(lin)
        self.layers = nn.ModuleList(layers)

    @property
    def depth(self) -> int:
        """Number of weight matrices ``L``."""
        return len(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def product(self) -> torch.Tensor:
        """The end-to-end matrix :math:`W_L \\cdots W_1` (output × input), detached."""
        with torch.no_grad():
            W = self.layers[0].weight
            for layer in self.layers[1:]:
                W = layer.weight @ W
        return W.detach().clone()

    @torch.no_grad()
    def set_product(self, W: torch.Tensor) -> "DeepLinearNetwork":
        r"""Set the layers to a *balanced* factorisation of ``W`` (output × input); returns ``self``.

        With :math:`W = U S V^\top` (rank :math:`k \le` ``min(widths)``) every layer carries :math:`S^{1/L}`:
        :math:`W_1 = [S^{1/L}V_k^\top; 0]`, :math:`W_j = \mathrm{diag}(S^{1/L}, 0)`, :math:`W_L = [U_k S^{1/L}, 0]`,
        so that :math:`W_{j+1}^\top W_{j+1} = W_j W_j^\top` (all layers the same scale). Raises if the
        rank of ``W`` exceeds the narrowest width.
        """
        out_dim, in_dim = self.widths[-1], self.widths[0]
        if tuple(W.shape) != (out_dim, in_dim):
            raise ValueError(f"W must have shape (output, input) = ({out_dim}, {in_dim}), got {tuple(W.shape)}")
        U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
        k = min(self.widths)
        rel = 1e-10 if W.dtype == torch.float64 else 1e-5
        tol = S.max().item() * rel if S.numel() else 0.0
        if (S[k:] > tol).any():
            raise ValueError(f"W has rank {int((S > tol).sum())}, more than the narrowest width {k}; "
                             "the network cannot represent it")
        U, S, Vh = U[:, :k], S[:k], Vh[:k]
        root = S ** (1.0 / self.depth)
        dtype = self.layers[0].weight.dtype
        for j, layer in enumerate(self.layers):
            fan_out, fan_in = layer.weight.shape
            M = torch.zeros(fan_out, fan_in, dtype=torch.float64)
            if j == 0:
                block = root[:, None] * Vh
                M[:k, :] = block if self.depth > 1 else (U * S) @ Vh
            elif j == self.depth - 1:
                M[:, :k] = U * root
            else:
                M[:k, :k] = torch.diag(root)
            layer.weight.copy_(M.to(dtype))
        if self.depth == 1:
            self.layers[0].weight.copy_(W.to(dtype))
        return self

    def fit_least_squares(self, x: torch.Tensor, y: torch.Tensor) -> "DeepLinearNetwork":
        """Move to the empirical minimiser of ½·mean‖y − f(x)‖² (balanced factors); returns ``self``.

        The network's function class is the matrices of rank ≤ ``min(widths)``, so the minimiser is
        :func:`rank_constrained_least_squares` with that rank, then :meth:`set_product`.
        """
        if x.shape[-1] != self.widths[0] or y.shape[-1] != self.widths[-1]:
            raise ValueError(f"x must have {self.widths[0]} columns and y {self.widths[-1]}; "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        return self.set_product(rank_constrained_least_squares(x, y, min(self.widths)))

    def extra_repr(self) -> str:
        return f"widths={self.widths}"


class MonomialModel(nn.Module):
    r"""The one-output regression model :math:`f(x; w) = x\,\prod_j w_j^{k_j}` (``x`` of shape ``(batch, 1)``).

    With truth :math:`w = 0` and the loss :math:`\tfrac12(y - f)^2`, the population loss is the normal crossing
    :math:`K(w) = \tfrac12 E[x^2] \prod_j w_j^{2k_j}`, whose learning coefficient with a prior positive at 0 is
    :math:`\lambda = \min_j 1/(2k_j)` (Lau et al. 2025, toy potentials). ``w`` starts at ``init`` (0 by default).
    """

    def __init__(self, exponents: Sequence[int], init: Sequence[float] | None = None):
        super().__init__()
        self.exponents = _positive_ints("exponents", exponents, min_len=1)
        start = torch.zeros(len(self.exponents)) if init is None else torch.as_tensor(init, dtype=torch.float32)
        if start.shape != (len(self.exponents),):
            raise ValueError(f"init must have one value per exponent ({len(self.exponents)}), got {list(start.shape)}")
        self.w = nn.Parameter(start.clone())
        self.register_buffer("_k", torch.tensor(self.exponents, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coef = torch.prod(self.w ** self._k.to(self.w.dtype))
        return x * coef

    def extra_repr(self) -> str:
        return f"exponents={self.exponents}"


# ---------------------------------------------------------------------------------------------------------
# Toy model of superposition (Part III; issue 6). Owned by the TMS chapters: see slt_companion/tms.py.
# ---------------------------------------------------------------------------------------------------------

class ToyModelOfSuperposition(nn.Module):
    r"""The toy model of superposition :math:`f(x) = \mathrm{ReLU}(W^\top W x + b)`, :math:`W\in\mathbb R^{r\times c}`.

    ``n_features`` = :math:`c` (default 6), ``n_hidden`` = :math:`r` (default 2, the paper's case); parameters
    ``W`` (``n_hidden × n_features``) and ``b`` (``n_features``). Initialisation: :math:`W_{ij}\sim\mathcal N(0,
    \text{init\_scale}^2)` from ``seed``, :math:`b = 0`. Elhage et al. (2022); Chen et al. (2023), whose k-gon
    critical points, exact population loss and classifier live in :mod:`slt_companion.tms`.
    Used in: Part III, the TMS chapters.
    """

    def __init__(self, n_features: int = 6, n_hidden: int = 2, *, seed: int | None = 0, init_scale: float = 0.5,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        for name, val in (("n_features", n_features), ("n_hidden", n_hidden)):
            if isinstance(val, bool) or int(val) != val or int(val) < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        if not init_scale >= 0:
            raise ValueError(f"init_scale must be ≥ 0, got {init_scale!r}")
        self.n_features, self.n_hidden = int(n_features), int(n_hidden)
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        W = torch.randn(self.n_hidden, self.n_features, generator=gen, dtype=torch.float64) * init_scale
        self.W = nn.Parameter(W.to(dtype))
        self.b = nn.Parameter(torch.zeros(self.n_features, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.n_features:
            raise ValueError(f"x must have n_features = {self.n_features} columns, got shape {tuple(x.shape)}")
        return torch.relu((x @ self.W.T) @ self.W + self.b)

    @torch.no_grad()
    def set_params(self, W, b) -> "ToyModelOfSuperposition":
        """Copy ``W`` (``n_hidden × n_features``) and ``b`` (``n_features``) in, e.g. from :func:`slt_companion.tms.k_gon`."""
        W, b = torch.as_tensor(W), torch.as_tensor(b)
        if tuple(W.shape) != tuple(self.W.shape):
            raise ValueError(f"W must have shape {tuple(self.W.shape)}, got {tuple(W.shape)}")
        if tuple(b.shape) != tuple(self.b.shape):
            raise ValueError(f"b must have shape {tuple(self.b.shape)}, got {tuple(b.shape)}")
        self.W.copy_(W.to(self.W))
        self.b.copy_(b.to(self.b))
        return self

    @classmethod
    def from_params(cls, W, b, *, dtype: torch.dtype = torch.float32) -> "ToyModelOfSuperposition":
        """A model holding the given ``(W, b)``."""
        W = torch.as_tensor(W)
        if W.ndim != 2:
            raise ValueError(f"W must have shape (n_hidden, n_features), got {tuple(W.shape)}")
        return cls(W.shape[1], W.shape[0], seed=None, init_scale=0.0, dtype=dtype).set_params(W, b)

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Detached copies of ``(W, b)``."""
        return self.W.detach().clone(), self.b.detach().clone()

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, n_hidden={self.n_hidden}"


__all__ += ["ToyModelOfSuperposition"]
