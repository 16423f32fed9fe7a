r"""Models used across the book: plain :class:`torch.nn.Module` s with *functional* forwards.

"Functional" means the forward reads its parameters only through registered ``nn.Parameter`` s and changes
no state, so :func:`torch.func.functional_call` and :func:`torch.func.vmap` can run many copies at once
(see :mod:`slt_companion.sampling`).

- :class:`DeepLinearNetwork` -- :math:`f(x) = W_L \cdots W_1 x`; reduced-rank regression is the case
  ``widths=[in, hidden, out]``. Known learning coefficients: :func:`slt_companion.theory.rrr_rlct`,
  :func:`slt_companion.theory.dln_rlct`. Used in: Part II, all chapters.
- :class:`MonomialModel` -- :math:`f(x; w) = x\prod_j w_j^{k_j}`, the normal-crossing toy potentials of
  Lau et al. (2025). Used in: Part II, "Validation against known λ".
- :class:`MLP` -- a fully connected ReLU (or tanh) network with biases, for classification on digits and
  MNIST-1D. Used in: Part II, "Degeneracy in real networks".
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_int, check_positive, check_symbols

__all__ = ["DeepLinearNetwork", "MonomialModel", "MLP", "rank_constrained_least_squares", "monomial_batched_vjp",
           "tms_forward_batched_vjp"]


def _positive_ints(name: str, values: Sequence[int], *, min_len: int) -> list[int]:
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a sequence of positive integers, got {values!r}") from err
    if any(isinstance(v, (bool, np.bool_)) for v in values):        # int(True) == 1 == True: a flag is not a size
        raise ValueError(f"{name} must be positive integers, not booleans; got {list(values)!r}")
    if len(out) < min_len or any(v < 1 or v != w for v, w in zip(out, values)):
        raise ValueError(f"{name} must be a list of at least {min_len} positive integers, got {list(values)!r}")
    return out


def rank_constrained_least_squares(x: torch.Tensor, y: torch.Tensor, rank: int) -> torch.Tensor:
    r"""The matrix :math:`\hat W` (out × in) minimising :math:`\frac1{2n}\sum_i\|y_i - Wx_i\|^2` over rank ≤ ``rank``.

    The reduced-rank regression estimator (Izenman 1975): ordinary least squares
    :math:`\hat B = (X^\top X)^{-1}X^\top Y`, then projection of the fitted values onto their top ``rank``
    right singular vectors :math:`V_r`: :math:`\hat W = (\hat B V_r V_r^\top)^\top`. Computed in float64.
    ``rank`` is a whole number ≥ 0; one above ``min(in, out)`` is ordinary least squares.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must be 2-D with the same number of rows; got {tuple(x.shape)} and {tuple(y.shape)}")
    rank = check_int("rank", rank, 0)                      # a rank above min(in, out) is no constraint
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
        check_positive("init_scale", init_scale, allow_zero=True)
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
        try:
            out = x
            for layer in self.layers:
                out = layer(out)
            return out
        except RuntimeError as err:     # checked only on failure: the forward runs in hot loops
            w = self.layers[0].weight
            if x.ndim == 0 or x.shape[-1] != self.widths[0]:
                raise ValueError(f"x must have shape (batch, widths[0] = {self.widths[0]}), got shape "
                                 f"{tuple(x.shape)}") from err
            if x.dtype != w.dtype:
                also = f" (or convert the network with .to({x.dtype}))" if x.is_floating_point() else ""
                raise TypeError(f"x must have the weights' dtype {w.dtype}, got {x.dtype}: pass "
                                f"x.to({w.dtype}){also}") from err
            raise

    def forward_batched(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """All chains at once: ``params[name]`` of shape ``(C, out, in)``, ``x`` of shape ``(C, B, in)``.

        The fast path of :mod:`slt_companion.sampling` (a chain of ``torch.bmm``); equal to ``vmap`` of
        :meth:`forward`, which the sampler checks before using it.
        """
        for j in range(self.depth):
            x = torch.bmm(x, params[f"layers.{j}.weight"].transpose(1, 2))
        return x

    def forward_batched_vjp(self, params: dict, x: torch.Tensor):
        """:meth:`forward_batched` and its backward pass by hand: ``(out, vjp)``, where ``vjp(g)`` maps the
        gradient ``g`` ``(C, B, out)`` of a scalar with respect to ``out`` to ``{name: gradient (C, out, in)}`` for
        every weight. The sampler's fastest path for small networks (``slt_companion.sampling``, "Fast paths"):
        autograd's fixed cost per step is most of a small network's step. The same matmuls, in the same layouts, as
        autograd's backward of :meth:`forward_batched`, so the gradients equal autograd's to the bit (tested)."""
        hs = [x]
        for j in range(self.depth):
            hs.append(torch.bmm(hs[-1], params[f"layers.{j}.weight"].transpose(1, 2)))

        def vjp(g: torch.Tensor) -> dict:
            grads = {}
            for j in reversed(range(self.depth)):
                w = params[f"layers.{j}.weight"]
                grads[f"layers.{j}.weight"] = hs[j].transpose(1, 2).bmm(g).transpose(1, 2)   # (x^T g)^T
                if j:
                    g = g.bmm(w)
            return grads

        return hs[-1], vjp

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
        rank of ``W`` exceeds the narrowest width. ``W`` may be a tensor, a NumPy array or nested lists; it must be
        finite.
        """
        try:
            W = torch.as_tensor(W)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"W must be a matrix (a tensor, NumPy array or nested lists), "
                            f"got {type(W).__name__}") from err
        out_dim, in_dim = self.widths[-1], self.widths[0]
        if tuple(W.shape) != (out_dim, in_dim):
            raise ValueError(f"W must have shape (output, input) = ({out_dim}, {in_dim}), got {tuple(W.shape)}")
        if W.is_complex() or not bool(torch.isfinite(W).all()):
            raise ValueError("W must be a finite real matrix, got " + ("a complex one" if W.is_complex() else
                             f"{int((~torch.isfinite(W)).sum())} NaN/inf entries"))
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


def monomial_batched_vjp(w: torch.Tensor, k: torch.Tensor, x: torch.Tensor):
    r""":math:`f = x\prod_j w_j^{k_j}` for every chain at once (``w`` ``(C, m)``, exponents ``k`` ``(m,)``, ``x``
    ``(C, B, ...)``) and its backward pass by hand: ``(out, vjp)``, ``vjp(g)`` the gradient ``(C, m)`` with respect
    to ``w`` of a scalar whose gradient with respect to ``out`` is ``g``. ``∂f/∂w_j = x\,k_j w_j^{k_j-1}
    \prod_{i\ne j} w_i^{k_i}``, formed without dividing by ``w_j`` (the chains start at ``w = 0``); 0 where
    ``k_j = 0``."""
    k = k.to(w.dtype)
    p = w ** k                                                          # (C, m)
    coef = torch.prod(p, dim=1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    out = x * coef.view(shape)

    def vjp(g: torch.Tensor) -> torch.Tensor:
        g_coef = (g * x).reshape(g.shape[0], -1).sum(1)                 # (C,)
        m = p.shape[1]
        if m == 1:
            others = torch.ones_like(p)
        elif m == 2:
            others = p.flip(1)
        else:                   # prod_{i<j} p_i * prod_{i>j} p_i, from running products (no division by w_j)
            one = torch.ones_like(p[:, :1])
            left = torch.cumprod(torch.cat([one, p[:, :-1]], dim=1), dim=1)
            right = torch.cumprod(torch.cat([one, p.flip(1)[:, :-1]], dim=1), dim=1).flip(1)
            others = left * right
        dpow = torch.where(k == 0, torch.zeros_like(w), k * w ** (k - 1))
        return g_coef[:, None] * dpow * others

    return out, vjp


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

    def forward_batched(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """All chains at once: ``params["w"]`` of shape ``(C, k)``, ``x`` of shape ``(C, B, 1)``."""
        return monomial_batched_vjp(params["w"], self._k, x)[0]

    def forward_batched_vjp(self, params: dict, x: torch.Tensor):
        """:meth:`forward_batched` and its backward pass by hand, ``(out, vjp)`` (see
        :meth:`DeepLinearNetwork.forward_batched_vjp`); equal to autograd's up to rounding (tested)."""
        out, vjp = monomial_batched_vjp(params["w"], self._k, x)
        return out, lambda g: {"w": vjp(g)}

    def extra_repr(self) -> str:
        return f"exponents={self.exponents}"


# ---------------------------------------------------------------------------------------------------------
# Toy model of superposition (Part III; issue 6). Owned by the TMS chapters: see slt_companion/tms.py.
# ---------------------------------------------------------------------------------------------------------

def tms_forward_batched_vjp(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor):
    r"""The TMS :math:`\mathrm{ReLU}(xW^\top W + b)` of ``R`` models at once (``W`` ``(R, r, c)``, ``b`` ``(R, c)``,
    ``x`` ``(R, B, c)``) and its backward pass by hand: ``(out, vjp)``, ``vjp(g) = (grad_W, grad_b)`` for the
    gradient ``g`` of a scalar with respect to ``out``. With :math:`h = xW^\top`, :math:`z = hW + b`,
    :math:`g_z = g\,[z > 0]`: :math:`\nabla_W = h^\top g_z + (g_z W^\top)^\top x`, :math:`\nabla_b = \sum_B g_z`.
    Used by :meth:`ToyModelOfSuperposition.forward_batched_vjp` (SGLD) and :func:`slt_companion.tms.train_sgd`."""
    h = torch.bmm(x, W.transpose(1, 2))                                      # (R, B, r)
    z = torch.baddbmm(b[:, None, :], h, W)                                   # (R, B, c)

    def vjp(g: torch.Tensor):
        gz = torch.where(z > 0, g, torch.zeros_like(g))
        gW = torch.baddbmm(torch.bmm(h.transpose(1, 2), gz), torch.bmm(gz, W.transpose(1, 2)).transpose(1, 2), x)
        return gW, gz.sum(1)

    return torch.relu(z), vjp


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
        check_int("n_features", n_features)
        check_int("n_hidden", n_hidden)
        check_positive("init_scale", init_scale, allow_zero=True)
        self.n_features, self.n_hidden = int(n_features), int(n_hidden)
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        W = torch.randn(self.n_hidden, self.n_features, generator=gen, dtype=torch.float64) * init_scale
        self.W = nn.Parameter(W.to(dtype))
        self.b = nn.Parameter(torch.zeros(self.n_features, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.n_features:
            raise ValueError(f"x must have n_features = {self.n_features} columns, got shape {tuple(x.shape)}")
        return torch.relu((x @ self.W.T) @ self.W + self.b)

    def forward_batched(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """All chains at once: ``params["W"]`` ``(C, r, c)``, ``params["b"]`` ``(C, c)``, ``x`` ``(C, B, c)`` ->
        ``(C, B, c)``: the sampler's fast path (two batched matmuls); equal to ``vmap`` of :meth:`forward` up to
        rounding, which the sampler checks before using it."""
        return tms_forward_batched_vjp(params["W"], params["b"], x)[0]

    def forward_batched_vjp(self, params: dict, x: torch.Tensor):
        r""":meth:`forward_batched` and its backward pass by hand, ``(out, vjp)`` (see
        :meth:`DeepLinearNetwork.forward_batched_vjp`): with :math:`h = xW^\top`, :math:`z = hW + b` and
        :math:`g_z = g\,[z > 0]`, the gradients are :math:`h^\top g_z + (g_z W^\top)^\top x` for :math:`W` and
        :math:`\sum_B g_z` for :math:`b`. Equal to autograd's up to rounding (tested)."""
        out, vjp = tms_forward_batched_vjp(params["W"], params["b"], x)
        return out, lambda g: dict(zip(("W", "b"), vjp(g)))

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


# ---------------------------------------------------------------------------------------------------------
# Transformers for the developmental-landscape chapters (Part III; issue 7). Owned by the ICL / LM chapters.
# Both forwards are functional (no state changes, no data-dependent Python control flow), so
# slt_companion.llc.estimate_llc can vmap over chains; attention patterns are returned, never stored.
# ---------------------------------------------------------------------------------------------------------

import math as _math



def _causal_mask(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


# Chain-batched pieces of the transformers' ``forward_batched`` (the sampler's fast path): every parameter arrives
# as a ``(C, *shape)`` tensor, one slice per chain; a parameter that SGLD does not move is the same tensor for every
# chain, expanded (batch stride 0), and is applied as one shared matrix instead of C copies.

def _chain_matmul(x: torch.Tensor, M: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ M[c] + b[c]`` for every chain c: ``x`` ``(C, N, i)``, ``M`` ``(C, i, o)``, ``b`` ``(C, o)``."""
    out = x @ M[0] if M.stride(0) == 0 else torch.bmm(x, M)
    return out if b is None else out + b[:, None, :]


def _chain_cat(tensors: list, dim: int) -> torch.Tensor:
    """``torch.cat`` of ``(C, ...)`` tensors along ``dim``; shared (expanded) inputs give a shared output."""
    if all(t.stride(0) == 0 for t in tensors):
        shared = torch.cat([t[0] for t in tensors], dim=dim - 1)
        return shared.expand(tensors[0].shape[0], *shared.shape)
    return torch.cat(tensors, dim=dim)


def _chain_layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last axis of ``x`` ``(C, N, d)``, each chain with its own gain ``w`` and bias ``b``
    ``(C, d)``."""
    if w.stride(0) == 0 and b.stride(0) == 0:
        return F.layer_norm(x, x.shape[-1:], w[0], b[0], eps)
    return torch.addcmul(b[:, None, :], F.layer_norm(x, x.shape[-1:], eps=eps), w[:, None, :])


def _causal_heads(q: list, k: list, v: list, rows: int, T: int, mask: torch.Tensor) -> torch.Tensor:
    """Causal attention of every head: ``q[j], k[j], v[j]`` ``(C, B·T, d_head)`` (strided views of a fused
    projection; no copies); returns ``(C·B, T, H·d_head)``, heads side by side. The scale and the mask enter the
    score matmul (``baddbmm``)."""
    d_head = q[0].shape[-1]
    bias = torch.zeros(T, T, dtype=q[0].dtype, device=q[0].device).masked_fill_(~mask[:T, :T], float("-inf"))
    outs = []
    for qj, kj, vj in zip(q, k, v):
        qj, kj, vj = (t.reshape(rows, T, d_head) for t in (qj, kj, vj))
        scores = torch.baddbmm(bias, qj, kj.transpose(1, 2), alpha=1.0 / _math.sqrt(d_head))
        outs.append(torch.bmm(scores.softmax(-1), vj))
    return torch.cat(outs, dim=-1)


class _CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with fused projections (``qkv``: d → 3d, ``proj``: d → d)."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads, self.d_head = num_heads, d_model // num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (t.reshape(B, T, self.num_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / _math.sqrt(self.d_head)          # (B, H, T, T)
        pattern = scores.masked_fill(~mask[:T, :T], float("-inf")).softmax(-1)
        out = (pattern @ v).transpose(1, 2).reshape(B, T, d)
        return self.proj(out), pattern


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, d_model: int, num_heads: int, d_mlp: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = _CausalSelfAttention(d_model, num_heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, d_model))

    def forward(self, x, mask):
        a, pattern = self.attn(self.ln1(x), mask)
        x = x + a
        return x + self.mlp(self.ln2(x)), pattern


class ICLTransformer(nn.Module):
    r"""A pre-LayerNorm decoder-only transformer for in-context linear regression (Hoogland et al. 2025).

    **Input.** ``xy`` of shape ``(batch, K, D + 1)``: row ``k`` is the pair :math:`(x_k, y_k)` (as made by
    :func:`slt_companion.data.icl_regression`, ``data.tokens``). The model interleaves them into ``2K`` tokens
    of width ``D + 1``: :math:`x`-tokens :math:`(0, x_k)` and :math:`y`-tokens :math:`(y_k, 0, \dots, 0)`, the
    paper's encoding. **Output.** ``(batch, K)``: the read-out at the :math:`x_k` token, the prediction of
    :math:`y_k` from :math:`x_1, y_1, \dots, x_{k-1}, y_{k-1}, x_k` (causal attention; :math:`y_k` comes after
    :math:`x_k`, so the model never sees it).

    Architecture (the paper's ``L2H4Minf``): linear token embedding, learned positional embedding, ``num_layers``
    pre-LN blocks (``num_heads`` heads, width ``d_model``, GELU MLP of width ``d_mlp``), final LayerNorm, linear
    read-out. Defaults D = 4, K = 16, 2 layers, 4 heads, width 64: 53,057 parameters (the paper: "~50k"). Initialisation from ``seed``.
    ``forward(xy, return_attention=True)`` also returns the attention patterns, a list (one per layer) of
    ``(batch, heads, 2K, 2K)`` tensors. Used in: Part III, "Stages in in-context linear regression".
    """

    def __init__(self, task_dim: int = 4, num_examples: int = 16, *, num_layers: int = 2, num_heads: int = 4,
                 d_model: int = 64, d_mlp: int = 64, seed: int | None = 0):
        super().__init__()
        self.task_dim = check_int("task_dim", task_dim)
        self.num_examples = check_int("num_examples", num_examples)
        self.num_layers = check_int("num_layers", num_layers)
        self.num_heads = check_int("num_heads", num_heads)
        self.d_model = check_int("d_model", d_model)
        self.d_mlp = check_int("d_mlp", d_mlp)
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        with torch.random.fork_rng(devices=[]):      # PyTorch's default initialisation, from our seed only
            if seed is not None:
                torch.manual_seed(int(seed))
            self.embed = nn.Linear(task_dim + 1, d_model)
            self.pos = nn.Parameter(torch.randn(2 * num_examples, d_model) * 0.02)
            self.blocks = nn.ModuleList(_Block(d_model, num_heads, d_mlp) for _ in range(num_layers))
            self.ln_f = nn.LayerNorm(d_model)
            self.unembed = nn.Linear(d_model, 1)
        self.register_buffer("_mask", _causal_mask(2 * num_examples), persistent=False)

    def tokens(self, xy: torch.Tensor) -> torch.Tensor:
        """The interleaved token sequence ``(batch, 2K, D + 1)`` for input ``xy`` ``(batch, K, D + 1)``."""
        if xy.ndim != 3 or xy.shape[-1] != self.task_dim + 1 or xy.shape[1] > self.num_examples:
            raise ValueError(f"xy must have shape (batch, K ≤ {self.num_examples}, D + 1 = {self.task_dim + 1}), "
                             f"got {tuple(xy.shape)}")
        x, y = xy[..., :-1], xy[..., -1:]
        zx, zy = torch.zeros_like(y), torch.zeros_like(x)
        x_tok = torch.cat([zx, x], dim=-1)                      # (0, x_k)
        y_tok = torch.cat([y, zy], dim=-1)                      # (y_k, 0, ..., 0)
        B, K, W = xy.shape
        return torch.stack([x_tok, y_tok], dim=2).reshape(B, 2 * K, W)

    def forward(self, xy: torch.Tensor, return_attention: bool = False):
        tok = self.tokens(xy)
        T = tok.shape[1]
        h = self.embed(tok) + self.pos[:T]
        patterns = []
        for block in self.blocks:
            h, p = block(h, self._mask)
            patterns.append(p)
        pred = self.unembed(self.ln_f(h))[:, 0::2, 0]           # read out at the x-tokens
        return (pred, patterns) if return_attention else pred

    def forward_batched(self, params: dict, xy: torch.Tensor) -> torch.Tensor:
        """All chains at once: ``params[name]`` of shape ``(C, *shape)`` for every parameter, ``xy`` of shape
        ``(C, B, K, D + 1)`` -> ``(C, B, K)``. The fast path of :mod:`slt_companion.sampling` (batched matmuls, no
        ``vmap``; ``benchmarks/fast_paths.py`` times it); equal to ``vmap`` of :meth:`forward` up to rounding,
        which the sampler checks before using it."""
        C, B = xy.shape[:2]
        tok = self.tokens(xy.reshape(C * B, *xy.shape[2:]))
        T, d, H = tok.shape[1], self.d_model, self.num_heads

        def lin(x, name):                                   # nn.Linear: x @ W^T + b
            return _chain_matmul(x, params[name + ".weight"].transpose(1, 2), params[name + ".bias"])

        h = lin(tok.reshape(C, B * T, -1), "embed")
        h = (h.view(C, B, T, d) + params["pos"][:, None, :T]).view(C, B * T, d)
        for i, blk in enumerate(self.blocks):
            p = f"blocks.{i}."
            x = _chain_layer_norm(h, params[p + "ln1.weight"], params[p + "ln1.bias"], blk.ln1.eps)
            pieces = lin(x, p + "attn.qkv").split(d // H, dim=-1)                  # [q heads | k heads | v heads]
            att = _causal_heads(pieces[:H], pieces[H:2 * H], pieces[2 * H:], C * B, T, self._mask)
            h = h + lin(att.view(C, B * T, d), p + "attn.proj")
            x = _chain_layer_norm(h, params[p + "ln2.weight"], params[p + "ln2.bias"], blk.ln2.eps)
            h = h + lin(F.gelu(lin(x, p + "mlp.0")), p + "mlp.2")
        out = lin(_chain_layer_norm(h, params["ln_f.weight"], params["ln_f.bias"], self.ln_f.eps), "unembed")
        return out.view(C, B, T)[:, :, 0::2]

    def extra_repr(self) -> str:
        return (f"task_dim={self.task_dim}, num_examples={self.num_examples}, num_layers={self.num_layers}, "
                f"num_heads={self.num_heads}, d_model={self.d_model}, d_mlp={self.d_mlp}")


class AttentionHead(nn.Module):
    r"""One attention head with its own named parameters ``W_Q, W_K, W_V`` (``d_model × d_head``) and ``W_O``
    (``d_head × d_model``), so that ``params="blocks.0.heads.3"`` selects exactly this head (refined LLC)."""

    def __init__(self, d_model: int, d_head: int, gen: torch.Generator | None):
        super().__init__()
        s = 1.0 / _math.sqrt(d_model)
        self.W_Q = nn.Parameter(torch.randn(d_model, d_head, generator=gen) * s)
        self.W_K = nn.Parameter(torch.randn(d_model, d_head, generator=gen) * s)
        self.W_V = nn.Parameter(torch.randn(d_model, d_head, generator=gen) * s)
        self.W_O = nn.Parameter(torch.randn(d_head, d_model, generator=gen) / _math.sqrt(d_head))

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        T = x.shape[1]
        q, k, v = x @ self.W_Q, x @ self.W_K, x @ self.W_V
        scores = (q @ k.transpose(-2, -1)) / _math.sqrt(q.shape[-1])
        pattern = scores.masked_fill(~mask[:T, :T], float("-inf")).softmax(-1)     # (B, T, T)
        return (pattern @ v) @ self.W_O, pattern


class AttentionOnlyLM(nn.Module):
    r"""A two-layer attention-only transformer language model (the paper's LM setting, scaled down).

    :math:`h_0 = E[t] + P[\text{pos}]`; each layer adds its heads' outputs, :math:`h_{l+1} = h_l + \sum_j
    \mathrm{head}_{l,j}(\mathrm{LN}(h_l))`; logits :math:`= U\,\mathrm{LN}(h_L) + b`. No MLPs, so the model's
    circuits are bigram statistics (the direct path), attention-mediated n-grams, previous-token heads and
    induction heads (Elhage et al. 2021; Olsson et al. 2022). Every head is an :class:`AttentionHead` named
    ``blocks.{layer}.heads.{head}`` with its own ``W_Q, W_K, W_V, W_O``.

    ``forward(tokens)`` maps ``(batch, T)`` integer tokens (``T ≤ n_ctx``) to ``(batch, T, vocab_size)``
    logits; ``forward(tokens, return_attention=True)`` also returns the patterns as one tensor
    ``(batch, layers, heads, T, T)`` (:meth:`attention_patterns` is a shortcut). Used in: Part III,
    "Stages in a small language model".
    """

    def __init__(self, vocab_size: int, *, n_ctx: int = 64, d_model: int = 64, num_heads: int = 4,
                 d_head: int | None = None, num_layers: int = 2, layer_norm: bool = True, seed: int | None = 0):
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size)
        self.n_ctx = check_int("n_ctx", n_ctx)
        self.d_model = check_int("d_model", d_model)
        self.num_heads = check_int("num_heads", num_heads)
        self.num_layers = check_int("num_layers", num_layers)
        self.d_head = check_int("d_head", d_head if d_head is not None else max(1, d_model // num_heads))
        self.layer_norm = bool(layer_norm)
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        self.embed = nn.Parameter(torch.randn(vocab_size, d_model, generator=gen) * 0.02)
        self.pos = nn.Parameter(torch.randn(n_ctx, d_model, generator=gen) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(num_layers):
            layer = nn.Module()
            layer.ln = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
            layer.heads = nn.ModuleList(AttentionHead(d_model, self.d_head, gen) for _ in range(num_heads))
            self.blocks.append(layer)
        self.ln_f = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.unembed = nn.Parameter(torch.randn(d_model, vocab_size, generator=gen) / _math.sqrt(d_model))
        self.unembed_bias = nn.Parameter(torch.zeros(vocab_size))
        self.register_buffer("_mask", _causal_mask(n_ctx), persistent=False)

    def head_names(self) -> list[str]:
        """``["blocks.0.heads.0", ...]``: the parameter prefix of every head (for ``params=`` in estimate_llc)."""
        return [f"blocks.{l}.heads.{h}" for l in range(self.num_layers) for h in range(self.num_heads)]

    def forward(self, tokens: torch.Tensor, return_attention: bool = False):
        if tokens.ndim != 2 or tokens.shape[1] > self.n_ctx or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor of shape (batch, T ≤ n_ctx = {self.n_ctx}), got "
                             f"{tuple(tokens.shape)} of dtype {tokens.dtype}")
        check_symbols("tokens", tokens, self.vocab_size, f"vocab_size = {self.vocab_size}")
        T = tokens.shape[1]
        h = self.embed[tokens] + self.pos[:T]
        patterns = []
        for layer in self.blocks:
            x = layer.ln(h)
            outs = [head(x, self._mask) for head in layer.heads]
            h = h + sum(o for o, _ in outs)
            patterns.append(torch.stack([p for _, p in outs], dim=1))      # (B, H, T, T)
        logits = self.ln_f(h) @ self.unembed + self.unembed_bias
        return (logits, torch.stack(patterns, dim=1)) if return_attention else logits

    def forward_batched(self, params: dict, tokens: torch.Tensor) -> torch.Tensor:
        """All chains at once: ``params[name]`` of shape ``(C, *shape)`` for every parameter, ``tokens`` of shape
        ``(C, B, T)`` -> logits ``(C, B, T, vocab_size)``. The fast path of :mod:`slt_companion.sampling` (each
        layer's heads in one fused q/k/v matmul, no ``vmap``); equal to ``vmap`` of :meth:`forward` up to rounding,
        which the sampler checks before using it."""
        C, B, T = tokens.shape
        d, H, V = self.d_model, self.num_heads, self.vocab_size
        E = params["embed"]
        if E.stride(0) == 0:
            h = E[0][tokens]
        else:
            offset = torch.arange(C, device=tokens.device)[:, None, None] * V
            h = E.reshape(C * V, d)[(tokens + offset).reshape(-1)].view(C, B, T, d)
        h = (h + params["pos"][:, None, :T]).reshape(C, B * T, d)
        for l, layer in enumerate(self.blocks):
            p = f"blocks.{l}."
            x = _chain_layer_norm(h, params[p + "ln.weight"], params[p + "ln.bias"], layer.ln.eps) \
                if self.layer_norm else h
            heads = [f"{p}heads.{j}." for j in range(H)]
            # the heads SGLD leaves alone (shared weights) in one plain matmul, the sampled ones in one batched matmul
            shared = [all(params[hd + w].stride(0) == 0 for w in ("W_Q", "W_K", "W_V", "W_O")) for hd in heads]
            for group in ([hd for hd, s_ in zip(heads, shared) if s_], [hd for hd, s_ in zip(heads, shared) if not s_]):
                if not group:
                    continue
                n = len(group)
                qkv = _chain_matmul(x, _chain_cat([params[hd + w] for w in ("W_Q", "W_K", "W_V") for hd in group], 2))
                pieces = qkv.split(self.d_head, dim=-1)
                att = _causal_heads(pieces[:n], pieces[n:2 * n], pieces[2 * n:], C * B, T, self._mask)
                W_O = _chain_cat([params[hd + "W_O"] for hd in group], dim=1)              # (C, n·d_head, d)
                h = h + _chain_matmul(att.view(C, B * T, -1), W_O)
        if self.layer_norm:
            h = _chain_layer_norm(h, params["ln_f.weight"], params["ln_f.bias"], self.ln_f.eps)
        return _chain_matmul(h, params["unembed"], params["unembed_bias"]).view(C, B, T, V)

    @torch.no_grad()
    def attention_patterns(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention patterns ``(batch, layers, heads, T, T)`` on ``tokens`` (row = query, column = key)."""
        return self.forward(tokens, return_attention=True)[1]

    def extra_repr(self) -> str:
        return (f"vocab_size={self.vocab_size}, n_ctx={self.n_ctx}, d_model={self.d_model}, "
                f"num_heads={self.num_heads}, d_head={self.d_head}, num_layers={self.num_layers}, "
                f"layer_norm={self.layer_norm}")


__all__ += ["ICLTransformer", "AttentionOnlyLM", "AttentionHead"]


class MLP(nn.Module):
    """A multilayer perceptron ``widths = [input, hidden..., output]`` with biases and ``activation``
    (``"relu"`` or ``"tanh"``) between layers; outputs are logits. PyTorch's default initialisation, seeded
    (``seed=None``: drawn from, and advancing, torch's global generator).

    Has the batched fast path ``forward_batched`` (``torch.baddbmm`` per layer) used by
    :mod:`slt_companion.sampling` when every parameter is sampled.
    """

    _ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}

    def __init__(self, widths: Sequence[int], *, activation: str = "relu", seed: int | None = 0):
        super().__init__()
        self.widths = _positive_ints("widths", widths, min_len=2)
        if activation not in self._ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(self._ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        # seed=None: torch's global generator, which it advances (as DeepLinearNetwork does)
        with contextlib.nullcontext() if seed is None else torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.widths[:-1], self.widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self._ACTIVATIONS[self.activation]
        for j, layer in enumerate(self.layers):
            x = layer(x)
            if j < len(self.layers) - 1:
                x = act(x)
        return x

    def forward_batched(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """All chains at once: ``params`` of shape ``(C, ...)``, ``x`` of shape ``(C, B, input)``."""
        act = self._ACTIVATIONS[self.activation]
        for j in range(len(self.layers)):
            W, b = params[f"layers.{j}.weight"], params[f"layers.{j}.bias"]
            x = torch.baddbmm(b[:, None, :], x, W.transpose(1, 2))
            if j < len(self.layers) - 1:
                x = act(x)
        return x

    def extra_repr(self) -> str:
        return f"widths={self.widths}, activation={self.activation!r}"


from .program_synthesis import SmoothTuringMachine  # noqa: E402
from .simplicial import TwoSimplicialAttention  # noqa: E402
