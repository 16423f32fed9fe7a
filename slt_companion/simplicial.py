r"""The 2-simplicial transformer of Clift, Doryn, Murfet & Wallbridge (2020), at CPU scale.

Ordinary (1-simplicial) attention scores *pairs* of positions with a bilinear form :math:`q_i\cdot k_j`.
2-simplicial attention scores *triples* with the **unsigned scalar triple product**

.. math::
    \langle a, b, c\rangle = \big\|(a\cdot b)\,c - (a\cdot c)\,b + (b\cdot c)\,a\big\|,\qquad
    \langle a,b,c\rangle^2 = (a\cdot b)^2\|c\|^2 + (b\cdot c)^2\|a\|^2 + (a\cdot c)^2\|b\|^2
    - 2(a\cdot b)(a\cdot c)(b\cdot c),

which is symmetric in its arguments, zero exactly when they are pairwise orthogonal and maximal
(:math:`\|a\|\|b\|\|c\|`) exactly when they are linearly dependent; equivalently
:math:`\langle a,b,c\rangle^2 = \|a\|^2\|b\|^2\|c\|^2 - \det G(a,b,c)` with :math:`G` the Gram matrix (in
:math:`\mathbb R^3`, :math:`\det G = (a\cdot(b\times c))^2`). The update of position :math:`i` is

.. math::
    v_i' = \mathrm{LayerNorm}\Big(\sum_{j,k}\mathrm{softmax}_{jk}\big(\langle p_i, \ell^1_j, \ell^2_k\rangle/\sqrt{d}\big)\,
    B(u_j\otimes u_k)\Big)

with a learned tensor :math:`B: \mathbb R^{d_u}\otimes\mathbb R^{d_u}\to\mathbb R^{d_\text{model}}` (the paper's
LayerNorm on the 2-simplicial output, without which it reports training is unstable).

The module also holds the comparison the chapter runs: :class:`SimplicialTransformer` (one attention block,
``kind=1`` or ``kind=2``, an MLP, a per-position classifier), :func:`matched_mlp_width` to give the
1-simplicial model the same number of parameters, the relational task :func:`pair_sum_task` ("is there a
pair :math:`j \ne k`, both :math:`\ne i`, with :math:`x_j + x_k \equiv x_i \pmod p`?"), and :func:`train_classifier`.

Used in: Part IV, "The 2-simplicial transformer".
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import config as _config
from .sampling import cpu_threads

__all__ = ["scalar_triple_product", "triple_product_logits", "TwoSimplicialAttention", "OneSimplicialAttention",
           "SimplicialTransformer", "matched_mlp_width", "pair_sum_task", "train_classifier", "token_ce",
           "accuracy", "num_params", "sequence_nll"]

_EPS = 1e-6


def scalar_triple_product(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    r"""The unsigned scalar triple product :math:`\|(a\cdot b)c - (a\cdot c)b + (b\cdot c)a\|` over the last
    dimension (the other dimensions broadcast)."""
    for name, t in (("a", a), ("b", b), ("c", c)):
        if not torch.is_tensor(t) or t.dim() < 1:
            raise ValueError(f"{name} must be a tensor with a vector dimension last, got {type(t).__name__}")
    if not a.shape[-1] == b.shape[-1] == c.shape[-1]:
        raise ValueError(f"a, b, c must have the same last dimension, got {a.shape[-1]}, {b.shape[-1]}, {c.shape[-1]}")
    dot = lambda u, v: (u * v).sum(-1, keepdim=True)   # noqa: E731
    return torch.linalg.vector_norm(dot(a, b) * c - dot(a, c) * b + dot(b, c) * a, dim=-1)


def triple_product_logits(p: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    r"""All triple products :math:`\langle p_i, \ell^1_j, \ell^2_k\rangle` at once, ``(..., N, N, N)`` from
    ``(..., N, d)`` inputs, through the Gram-entry formula (a smoothed square root,
    :math:`\sqrt{x + 10^{-6}}`, keeps the gradient finite where the product vanishes)."""
    ab = p @ l1.transpose(-1, -2)             # (.., i, j)
    ac = p @ l2.transpose(-1, -2)             # (.., i, k)
    bc = l1 @ l2.transpose(-1, -2)            # (.., j, k)
    na, nb, nc = (t.pow(2).sum(-1) for t in (p, l1, l2))
    sq = (ab.pow(2)[..., :, :, None] * nc[..., None, None, :]
          + bc.pow(2)[..., None, :, :] * na[..., :, None, None]
          + ac.pow(2)[..., :, None, :] * nb[..., None, :, None]
          - 2 * ab[..., :, :, None] * ac[..., :, None, :] * bc[..., None, :, :])
    return torch.sqrt(sq.clamp_min(0) + _EPS)


def _linear(d_in, d_out, gen, bias=False):
    lin = nn.Linear(d_in, d_out, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(d_out, d_in, generator=gen) / math.sqrt(d_in))
        if bias:
            lin.bias.zero_()
    return lin


class TwoSimplicialAttention(nn.Module):
    r"""2-simplicial attention (Clift et al. 2020): trilinear scalar-triple-product logits over pairs
    :math:`(j, k)`, values :math:`B(u_j\otimes u_k)`, LayerNorm on the output. Input and output ``(..., N, d_model)``.

    ``exclude_self=True`` masks the pairs with :math:`j = k`, :math:`j = i` or :math:`k = i`.
    """

    def __init__(self, d_model: int, d_head: int = 8, d_value: int = 6, *, exclude_self: bool = True,
                 seed: int = 0):
        super().__init__()
        for name, v in (("d_model", d_model), ("d_head", d_head), ("d_value", d_value)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        gen = torch.Generator().manual_seed(seed)
        self.d_head, self.exclude_self = d_head, exclude_self
        self.p, self.l1, self.l2 = (_linear(d_model, d_head, gen) for _ in range(3))
        self.u = _linear(d_model, d_value, gen)
        self.B = nn.Parameter(torch.randn(d_value, d_value, d_model, generator=gen) / d_value)
        self.norm = nn.LayerNorm(d_model)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights ``(..., N, N, N)`` (query i, pair j, k); each ``[i]`` sums to 1 over (j, k)."""
        N = x.shape[-2]
        if self.exclude_self and N < 3:
            raise ValueError(f"with exclude_self=True every query needs two other positions: N must be ≥ 3, got {N}")
        logits = triple_product_logits(self.p(x), self.l1(x), self.l2(x)) / math.sqrt(self.d_head)
        if self.exclude_self:
            ar = torch.arange(N, device=x.device)
            i, j, k = ar[:, None, None], ar[None, :, None], ar[None, None, :]
            logits = logits.masked_fill((i == j) | (i == k) | (j == k), float("-inf"))
        return torch.softmax(logits.flatten(-2), -1).view(logits.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.u(x)
        pairs = torch.einsum("...ijk,...ja,...kb->...iab", self.attention(x), u, u)     # sum_jk A u_j (x) u_k
        return self.norm(torch.einsum("...iab,abo->...io", pairs, self.B))


class OneSimplicialAttention(nn.Module):
    r"""Ordinary single-head dot-product attention :math:`\sum_j \mathrm{softmax}_j(q_i\cdot k_j/\sqrt d)\,W_o v_j`,
    with LayerNorm on the output as in :class:`TwoSimplicialAttention` (``exclude_self`` masks :math:`j = i`)."""

    def __init__(self, d_model: int, d_head: int = 8, *, exclude_self: bool = True, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.d_head, self.exclude_self = d_head, exclude_self
        self.q, self.k, self.v = (_linear(d_model, d_head, gen) for _ in range(3))
        self.o = _linear(d_head, d_model, gen)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.q(x) @ self.k(x).transpose(-1, -2) / math.sqrt(self.d_head)
        if self.exclude_self:
            N = x.shape[-2]
            if N < 2:
                raise ValueError(f"with exclude_self=True every query needs another position: N must be ≥ 2, got {N}")
            logits = logits.masked_fill(torch.eye(N, dtype=torch.bool, device=x.device), float("-inf"))
        return self.norm(self.o(torch.softmax(logits, -1) @ self.v(x)))


class SimplicialTransformer(nn.Module):
    r"""A one-block classifier: token + position embedding, ``x + Attn(x)`` with 1- or 2-simplicial attention
    (``kind``), ``x + MLP(x)``, and a linear read-out of 2 classes at every position.
    ``forward(tokens (..., N)) -> logits (..., N, 2)``."""

    def __init__(self, kind: int, vocab: int, seq_len: int, *, d_model: int = 24, d_head: int = 8, d_value: int = 6,
                 d_mlp: int = 48, seed: int = 0):
        super().__init__()
        if kind not in (1, 2):
            raise ValueError(f"kind must be 1 (ordinary attention) or 2 (2-simplicial), got {kind!r}")
        for name, v in (("vocab", vocab), ("seq_len", seq_len), ("d_mlp", d_mlp)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        gen = torch.Generator().manual_seed(seed)
        self.kind = kind
        self.embed = nn.Parameter(torch.randn(vocab, d_model, generator=gen))
        self.pos = nn.Parameter(0.1 * torch.randn(seq_len, d_model, generator=gen))
        self.attn = (TwoSimplicialAttention(d_model, d_head, d_value, seed=seed + 1) if kind == 2
                     else OneSimplicialAttention(d_model, d_head, seed=seed + 1))
        self.mlp_in = _linear(d_model, d_mlp, gen, bias=True)
        self.mlp_out = _linear(d_mlp, d_model, gen, bias=True)
        self.readout = _linear(d_model, 2, gen, bias=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.is_floating_point():
            raise ValueError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        x = F.embedding(tokens, self.embed) + self.pos
        x = x + self.attn(x)
        x = x + self.mlp_out(F.gelu(self.mlp_in(x)))
        return self.readout(x)


def num_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_mlp_width(vocab: int, seq_len: int, *, d_model: int = 24, d_head: int = 8, d_value: int = 6,
                      d_mlp: int = 48) -> int:
    """The MLP width that gives the 1-simplicial :class:`SimplicialTransformer` the parameter count closest
    to the 2-simplicial one with MLP width ``d_mlp`` (each hidden unit costs ``2 d_model + 1``)."""
    target = num_params(SimplicialTransformer(2, vocab, seq_len, d_model=d_model, d_head=d_head,
                                              d_value=d_value, d_mlp=d_mlp))
    base = num_params(SimplicialTransformer(1, vocab, seq_len, d_model=d_model, d_head=d_head, d_mlp=1))
    return max(1, 1 + round((target - base) / (2 * d_model + 1)))


def pair_sum_task(num: int, *, seq_len: int = 6, modulus: int = 11, seed: int = 0):
    r"""``num`` sequences of ``seq_len`` residues mod ``modulus`` and per-position labels
    :math:`y_i = [\exists\, j \ne k,\ j, k \ne i:\ x_j + x_k \equiv x_i \pmod{p}]`.
    Returns ``(x, y)``, both long ``(num, seq_len)``."""
    for name, v, lo in (("num", num, 1), ("seq_len", seq_len, 3), ("modulus", modulus, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, modulus, (num, seq_len), generator=gen)
    s = (x[:, :, None] + x[:, None, :]) % modulus                       # (num, j, k)
    ar = torch.arange(seq_len)
    valid = (ar[:, None, None] != ar[None, :, None]) & (ar[:, None, None] != ar[None, None, :]) \
        & (ar[None, :, None] != ar[None, None, :])                        # (i, j, k)
    hit = (s[:, None, :, :] == x[:, :, None, None]) & valid
    return x, hit.flatten(-2).any(-1).long()


def token_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over sequences and positions (the per-sequence NLL divided by the length)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Per-position classification accuracy."""
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).double().mean())


def train_classifier(model: nn.Module, train, test, *, steps: int | None = None, lr: float = 3e-3,
                     batch_size: int = 128, eval_every: int | None = None, seed: int = 0,
                     progress: bool = True) -> dict:
    """Adam on :func:`token_ce` with minibatches drawn by a seeded generator (same seed, same run on CPU).
    Returns ``{"steps", "train_loss", "test_acc", "train_acc"}`` sampled every ``eval_every`` steps
    (default: 40 evaluations); ``steps`` defaults to 3000 (150 in quick mode)."""
    from tqdm.auto import tqdm
    steps = _config.size(3000, 150) if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    eval_every = eval_every or max(1, steps // 40)
    (xtr, ytr), (xte, yte) = train, test
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    log = {"steps": [], "train_loss": [], "test_acc": [], "train_acc": []}
    with cpu_threads(1 if next(model.parameters()).device.type == "cpu" else None):
        for t in tqdm(range(1, steps + 1), disable=not progress, desc=f"train kind={getattr(model, 'kind', '?')}"):
            _train_step(model, opt, xtr, ytr, xte, yte, t, steps, eval_every, batch_size, gen, log)
    return {k: np.array(v) for k, v in log.items()}


def _train_step(model, opt, xtr, ytr, xte, yte, t, steps, eval_every, batch_size, gen, log):
    idx = torch.randint(0, len(xtr), (batch_size,), generator=gen)
    loss = token_ce(model(xtr[idx]), ytr[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    if t % eval_every == 0 or t == steps:
        with torch.no_grad():
            log["steps"].append(t)
            log["train_loss"].append(float(token_ce(model(xtr), ytr)))
        log["test_acc"].append(accuracy(model, xte, yte))
        log["train_acc"].append(accuracy(model, xtr, ytr))


def sequence_nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of the summed per-position cross-entropy: the NLL of one sample (a whole
    labelled sequence), the scale :func:`slt_companion.llc.estimate_llc` needs."""
    return token_ce(logits, y) * y.shape[-1]
