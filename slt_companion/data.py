r"""Data generators for the book's experiments. Deterministic for a fixed ``seed``.

- :func:`teacher_student` -- linear teacher of a given rank, Gaussian inputs and noise: the data for
  reduced-rank regression and deep linear networks (Part II).
- :func:`monomial_data` -- inputs for the normal-crossing toy models :class:`~slt_companion.models.MonomialModel`.
- :func:`digits` -- scikit-learn's 8×8 handwritten digits (shipped inside the scikit-learn wheel).
- :func:`mnist1d` -- MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package.

The last two need optional packages (``scikit-learn``; ``mnist1d`` and ``scipy``) and raise an
``ImportError`` naming the package to install when they are missing.

Each returns a :class:`RegressionData`; ``data.xy`` is the ``(x, y)`` pair that
:func:`slt_companion.llc.estimate_llc` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ._checks import check_int, check_positive

__all__ = ["RegressionData", "ClassificationData", "teacher_student", "random_low_rank", "monomial_data",
           "digits", "mnist1d"]


class _Pairs:
    """What every (x, y) data set offers: ``xy`` (the pair that ``estimate_llc`` takes), ``n`` and ``len()``."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def xy(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class RegressionData(_Pairs):
    """Inputs ``x`` (n × in), targets ``y`` (n × out), the ``teacher`` that made them and the noise level."""

    x: torch.Tensor
    y: torch.Tensor
    teacher: object
    noise_std: float


def random_low_rank(out_dim: int, in_dim: int, rank: int, *, singular_values: Sequence[float] | None = None,
                    seed: int = 0) -> torch.Tensor:
    """A random (out × in) matrix of exactly ``rank`` with the given singular values (default: evenly from 1 to 2).

    Singular vectors are Haar-random (QR of Gaussian matrices) from ``torch.Generator().manual_seed(seed)``.
    """
    out_dim, in_dim = check_int("out_dim", out_dim, 1), check_int("in_dim", in_dim, 1)
    rank = check_int("rank", rank, 0)
    if rank > min(out_dim, in_dim):
        raise ValueError(f"rank={rank} exceeds min(out_dim, in_dim) = {min(out_dim, in_dim)}")
    if rank == 0:
        return torch.zeros(out_dim, in_dim)
    if singular_values is None:
        s = torch.linspace(2.0, 1.0, rank, dtype=torch.float64) if rank > 1 else torch.tensor([1.5], dtype=torch.float64)
    else:
        s = torch.as_tensor(singular_values, dtype=torch.float64)
        if s.shape != (rank,) or not (s > 0).all() or not torch.isfinite(s).all():
            raise ValueError(f"singular_values must be {rank} finite positive numbers, got {list(singular_values)}")
    gen = torch.Generator().manual_seed(int(seed))
    U, _ = torch.linalg.qr(torch.randn(out_dim, rank, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(in_dim, rank, generator=gen, dtype=torch.float64))
    return ((U * s) @ V.T).float()


def teacher_student(n: int, in_dim: int, out_dim: int, rank: int, *, noise_std: float = 1.0,
                    singular_values: Sequence[float] | None = None, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> RegressionData:
    r"""Teacher--student linear regression: :math:`y = W^* x + \sigma\,\xi`, :math:`x, \xi \sim \mathcal N(0, I)`.

    The teacher :math:`W^*` (``out_dim × in_dim``) has rank ``rank`` (:func:`random_low_rank`). With
    ``noise_std = 1`` the per-sample loss :math:`\tfrac12\|y - f(x)\|^2` is the negative log-likelihood of
    the Gaussian model up to a constant, the scale the LLC estimator assumes (Part II, "Estimating λ").
    """
    n = check_int("n", n, 1)
    check_positive("noise_std", noise_std, allow_zero=True)
    W = random_low_rank(out_dim, in_dim, rank, singular_values=singular_values, seed=seed)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    x = torch.randn(n, in_dim, generator=gen, dtype=torch.float64)
    y = x @ W.double().T + noise_std * torch.randn(n, out_dim, generator=gen, dtype=torch.float64)
    return RegressionData(x.to(dtype), y.to(dtype), W.to(dtype), float(noise_std))


def monomial_data(n: int, *, noise_std: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float32) -> RegressionData:
    r"""Data for :class:`~slt_companion.models.MonomialModel` with truth :math:`w = 0`: :math:`x\sim\mathcal N(0,1)`, :math:`y = \sigma\xi`.

    With the default ``noise_std = 0`` the empirical loss :math:`L_n(w) = \tfrac12 \overline{x^2}\prod_j w_j^{2k_j}`
    *is* the normal-crossing potential, with no sampling noise in the landscape (Part II, validation).
    """
    n = check_int("n", n, 1)
    check_positive("noise_std", noise_std, allow_zero=True)
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    y = noise_std * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    return RegressionData(x.to(dtype), y.to(dtype), None, float(noise_std))


# ---------------------------------------------------------------------------------------------------------
# Toy model of superposition (Part III; issue 6). The exact population loss is slt_companion.tms.population_loss.
# ---------------------------------------------------------------------------------------------------------

def tms_data(n: int, n_features: int = 6, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> RegressionData:
    r"""Inputs of the TMS in the high-sparsity limit: :math:`x = \mu e_a`, :math:`a\sim U\{1..c\}`, :math:`\mu\sim U[0,1]`.

    Chen et al. (2023), eq. (2). The target is the input itself (``y = x``: the model reconstructs it); with
    the loss :func:`slt_companion.tms.tms_loss` the population loss is :func:`slt_companion.tms.population_loss`.
    Deterministic for a fixed ``seed``. Used in: Part III, the TMS chapters.
    """
    n = check_int("n", n, 1)
    c = check_int("n_features", n_features, 1)
    gen = torch.Generator().manual_seed(int(seed))
    a = torch.randint(0, c, (n,), generator=gen)
    mu = torch.rand(n, generator=gen, dtype=torch.float64)
    x = torch.zeros(n, c, dtype=torch.float64)
    x[torch.arange(n), a] = mu
    x = x.to(dtype)
    return RegressionData(x, x.clone(), None, 0.0)


__all__ += ["tms_data"]


# ---------------------------------------------------------------------------------------------------------
# In-context linear regression and character corpora (Part III; issue 7). Owned by the ICL / LM chapters.
# ---------------------------------------------------------------------------------------------------------

import math as _math


@dataclass(frozen=True)
class ICLData:
    r"""A batch of in-context regression sequences: ``xs`` (B × K × D), ``ys`` (B × K), the ``tasks`` (B × D)
    that made them (:math:`y_k = t^\top x_k + \sigma\xi_k`) and ``noise_var`` :math:`\sigma^2`.

    ``tokens`` is ``(B, K, D + 1)``, each row ``(x_k, y_k)``: the input of
    :class:`slt_companion.models.ICLTransformer`; ``xy = (tokens, ys)`` is what :func:`slt_companion.llc.estimate_llc`
    and :func:`slt_companion.train.train` take.
    """

    xs: torch.Tensor
    ys: torch.Tensor
    tasks: torch.Tensor
    noise_var: float

    @property
    def tokens(self) -> torch.Tensor:
        return torch.cat([self.xs, self.ys[..., None]], dim=-1)

    @property
    def xy(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens, self.ys

    def __len__(self) -> int:
        return int(self.xs.shape[0])


class ICLTaskSampler:
    r"""Sequences for in-context linear regression (Garg et al. 2022; Raventós et al. 2023; Hoogland et al. 2025).

    Tasks :math:`t\sim\mathcal N(0, I_D)`, inputs :math:`x_k\sim\mathcal N(0, I_D)`, targets
    :math:`y_k = t^\top x_k + \varepsilon_k`, :math:`\varepsilon_k\sim\mathcal N(0,\sigma^2)`. ``num_tasks``
    is the task diversity :math:`M`: ``None`` (:math:`M=\infty`) draws a fresh task per sequence; an integer
    fixes a bank of :math:`M` tasks (drawn from ``task_seed``) and each sequence picks one uniformly.
    The paper's defaults: D = 4, K = 16, σ² = 0.125.

    :meth:`sample` ``(batch, generator)`` is deterministic given the generator state. Predicting zero has
    expected loss :math:`E[y^2] = D + \sigma^2` per token (4.125 for the defaults).
    """

    def __init__(self, task_dim: int = 4, num_examples: int = 16, *, noise_var: float = 0.125,
                 num_tasks: int | None = None, task_seed: int = 0, dtype: torch.dtype = torch.float32):
        self.task_dim = check_int("task_dim", task_dim, 1)
        self.num_examples = check_int("num_examples", num_examples, 1)
        if not (isinstance(noise_var, (int, float)) and _math.isfinite(noise_var) and noise_var >= 0):
            raise ValueError(f"noise_var must be a finite number ≥ 0, got {noise_var!r}")
        self.noise_var = float(noise_var)
        self.num_tasks = None if num_tasks is None else check_int("num_tasks", num_tasks, 1)
        self.dtype = dtype
        self.task_bank = None
        if self.num_tasks is not None:
            g = torch.Generator().manual_seed(int(task_seed))
            self.task_bank = torch.randn(self.num_tasks, self.task_dim, generator=g, dtype=torch.float64).to(dtype)

    @property
    def predict_zero_loss(self) -> float:
        """:math:`E[y^2] = D + \\sigma^2`: the per-token MSE of always predicting 0 (the prior mean)."""
        return self.task_dim + self.noise_var

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> ICLData:
        B = check_int("batch_size", batch_size, 1)
        D, K = self.task_dim, self.num_examples
        g = generator
        if self.task_bank is None:
            tasks = torch.randn(B, D, generator=g, dtype=torch.float64)
        else:
            tasks = self.task_bank.double()[torch.randint(0, self.num_tasks, (B,), generator=g)]
        xs = torch.randn(B, K, D, generator=g, dtype=torch.float64)
        noise = torch.randn(B, K, generator=g, dtype=torch.float64) * _math.sqrt(self.noise_var)
        ys = (xs @ tasks[:, :, None])[..., 0] + noise
        return ICLData(xs.to(self.dtype), ys.to(self.dtype), tasks.to(self.dtype), self.noise_var)

    def batch_fn(self, batch_size: int):
        """A ``batch_fn(generator) -> (tokens, ys)`` for :func:`slt_companion.train.train`."""
        return lambda gen: self.sample(batch_size, gen).xy


def icl_regression(n: int, task_dim: int = 4, num_examples: int = 16, *, noise_var: float = 0.125,
                   num_tasks: int | None = None, seed: int = 0, task_seed: int = 0) -> ICLData:
    """``n`` sequences from :class:`ICLTaskSampler` with a generator seeded by ``seed`` (a fixed data set)."""
    n = check_int("n", n, 1)
    sampler = ICLTaskSampler(task_dim, num_examples, noise_var=noise_var, num_tasks=num_tasks, task_seed=task_seed)
    return sampler.sample(n, torch.Generator().manual_seed(int(seed)))


def bayes_ridge_predictions(xs: torch.Tensor, ys: torch.Tensor, noise_var: float = 0.125,
                            prior_var: float = 1.0) -> torch.Tensor:
    r"""The Bayes-optimal in-context predictions for :math:`M=\infty`: at position :math:`k`, the posterior
    mean :math:`\hat y_k = x_k^\top (X_{<k}^\top X_{<k} + \tfrac{\sigma^2}{s^2} I)^{-1} X_{<k}^\top y_{<k}` (ridge
    regression on the first :math:`k-1` examples, :math:`s^2` = ``prior_var``). Position 1 predicts 0, the
    prior mean. ``xs`` (B × K × D), ``ys`` (B × K) → (B × K). Computed in float64.
    """
    if xs.ndim != 3 or ys.shape != xs.shape[:2]:
        raise ValueError(f"xs must be (B, K, D) and ys (B, K); got {tuple(xs.shape)} and {tuple(ys.shape)}")
    if not noise_var > 0 or not prior_var > 0:
        raise ValueError(f"noise_var and prior_var must be > 0, got {noise_var!r}, {prior_var!r}")
    X, Y = xs.double(), ys.double()
    B, K, D = X.shape
    out = torch.zeros(B, K, dtype=torch.float64)
    reg = (noise_var / prior_var) * torch.eye(D, dtype=torch.float64)
    for k in range(1, K):
        Xk, Yk = X[:, :k], Y[:, :k]
        A = Xk.transpose(1, 2) @ Xk + reg
        w = torch.linalg.solve(A, (Xk.transpose(1, 2) @ Yk[..., None]))[..., 0]
        out[:, k] = (X[:, k] * w).sum(-1)
    return out.to(xs.dtype)


def bayes_optimal_loss(task_dim: int = 4, num_examples: int = 16, noise_var: float = 0.125, *,
                       num_samples: int = 100_000, seed: int = 0) -> torch.Tensor:
    r"""Monte Carlo estimate of the Bayes risk per position, :math:`E[(y_k - \hat y_k)^2]` for
    :func:`bayes_ridge_predictions` (``num_examples`` values; the first is :math:`D + \sigma^2`)."""
    d = icl_regression(num_samples, task_dim, num_examples, noise_var=noise_var, seed=seed)
    pred = bayes_ridge_predictions(d.xs, d.ys, noise_var)
    return ((pred.double() - d.ys.double()) ** 2).mean(0)


__all__ += ["ICLData", "ICLTaskSampler", "icl_regression", "bayes_ridge_predictions", "bayes_optimal_loss"]


#: the printable ASCII characters plus newline: the corpora's alphabet; anything else maps to "?" (:func:`char_corpus`)
CHAR_VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))


@dataclass(frozen=True)
class CharCorpus:
    """A character-level corpus: ``train`` and ``val`` 1-D ``int64`` token tensors over :data:`CHAR_VOCAB`.

    ``kind`` (``"prose"`` or ``"code"``), ``sources`` (what the text came from). :meth:`encode`/:meth:`decode`
    convert text; :meth:`batch` draws random windows for language modelling.
    """

    kind: str
    train: torch.Tensor
    val: torch.Tensor
    sources: tuple

    vocab: str = CHAR_VOCAB

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """Tokens of ``text``: one per character, ``"?"`` for characters outside the vocabulary."""
        table = np.full(128, self.vocab.index("?"), dtype=np.int64)
        for i, c in enumerate(self.vocab):
            table[ord(c)] = i
        raw = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)   # one byte per character
        return torch.from_numpy(table[raw].copy())

    def decode(self, tokens) -> str:
        """The text of ``tokens`` (integers in ``[0, vocab_size)``; a negative one is an error, not the end's)."""
        ids = [int(t) for t in tokens]
        bad = [i for i in ids if not 0 <= i < len(self.vocab)]
        if bad:
            raise ValueError(f"tokens must lie in [0, vocab_size = {len(self.vocab)}), got {bad[:5]}")
        return "".join(self.vocab[i] for i in ids)

    def batch(self, batch_size: int, seq_len: int, generator: torch.Generator | None = None,
              split: str = "train", *, repeat_span: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: ``batch_size`` random windows of ``seq_len`` tokens and the same windows shifted by one.

        ``repeat_span=(lo, hi)``: in every window, ``ℓ ~ U{lo, …, hi − 1}`` uniformly random characters are
        written at a random position and again at a random later position (the two copies do not overlap), so
        the second copy can only be predicted by copying from the first -- the job of an induction head
        (Olsson et al. 2022 probe with the same repeated random tokens). Used in Part III, "Stages in a small
        language model", to make induction worth learning within a CPU-sized run.
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        B, T = check_int("batch_size", batch_size, 1), check_int("seq_len", seq_len, 1)
        data = self.train if split == "train" else self.val
        if T + 1 > len(data):
            raise ValueError(f"seq_len={T} is longer than the {split} split ({len(data)} tokens)")
        start = torch.randint(0, len(data) - T, (B,), generator=generator)
        idx = start[:, None] + torch.arange(T + 1)
        w = data[idx]
        if repeat_span is not None:
            w = _insert_repeats(w, repeat_span, self.vocab_size, generator)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def ngram_loss(self, order: int, *, alpha: float = 0.1) -> float:
        r"""Cross-entropy (nats per character) on ``val`` of the ``order``-gram model fitted on ``train``.

        :math:`p(c \mid h) = (N(h, c) + \alpha) / (N(h) + \alpha V)` with counts :math:`N` over the training
        split, history :math:`h` the previous ``order − 1`` characters (``order = 1``: unigram frequencies); the
        first ``order − 1`` validation characters are not scored. The baselines a language model's loss passes
        as it learns bigram and then longer statistics (the first stages of Hoogland et al. 2025).
        """
        order = check_int("order", order, 1)
        if order > 3:
            raise ValueError(f"order must be 1, 2 or 3 (a {order}-gram table over {self.vocab_size} characters is "
                             "too large to count densely), got {order}")
        if not (isinstance(alpha, (int, float)) and alpha > 0):
            raise ValueError(f"alpha (add-alpha smoothing) must be a number > 0, got {alpha!r}")
        V = self.vocab_size

        def index(tokens):
            idx = torch.zeros(len(tokens) - order + 1, dtype=torch.int64)
            for j in range(order):
                idx = idx * V + tokens[j:len(tokens) - order + 1 + j]
            return idx

        counts = torch.bincount(index(self.train), minlength=V ** order).double().reshape(-1, V)
        probs = (counts + alpha) / (counts.sum(1, keepdim=True) + alpha * V)
        return float(-probs.reshape(-1)[index(self.val)].log().mean())

    def batch_fn(self, batch_size: int, seq_len: int, *, repeat_span: tuple[int, int] | None = None):
        """A ``batch_fn(generator) -> (x, y)`` for :func:`slt_companion.train.train` (arguments as in :meth:`batch`)."""
        return lambda gen: self.batch(batch_size, seq_len, gen, repeat_span=repeat_span)


def _insert_repeats(w: torch.Tensor, repeat_span, vocab_size: int, generator) -> torch.Tensor:
    try:
        lo, hi = (check_int("repeat_span[0]", repeat_span[0], 1), check_int("repeat_span[1]", repeat_span[1], 2))
    except (TypeError, IndexError):
        raise ValueError(f"repeat_span must be a pair (lo, hi) of span lengths, got {repeat_span!r}") from None
    B, W = w.shape
    if not lo < hi or 2 * (hi - 1) > W:
        raise ValueError(f"repeat_span=(lo, hi) needs lo < hi and two copies of hi - 1 characters to fit in a window "
                         f"of {W} tokens (seq_len + 1); got {repeat_span!r}")
    lengths = torch.randint(lo, hi, (B,), generator=generator)
    u = torch.rand(B, 3, generator=generator, dtype=torch.float64)
    span = torch.randint(0, vocab_size, (B, hi - 1), generator=generator)
    free = W - 2 * lengths                                  # slack to share out before, between and after
    a = (u[:, 0] * (free + 1)).long()                       # first copy at a, the second at b >= a + length
    b = a + lengths + (u[:, 1] * (free - a + 1)).long()
    j = torch.arange(W)[None, :]
    ell = lengths[:, None]
    first = (j >= a[:, None]) & (j < a[:, None] + ell)
    second = (j >= b[:, None]) & (j < b[:, None] + ell)
    src = torch.where(first, j - a[:, None], j - b[:, None]).clamp(0, hi - 2)   # position within the span
    return torch.where(first | second, span.gather(1, src), w).to(w.dtype)


def repeated_tokens(n: int, half_length: int, vocab_size: int, *, seed: int = 0) -> torch.Tensor:
    """``(n, 2 * half_length)`` int64 tokens: uniformly random tokens followed by an exact copy of themselves.

    The induction-head probe of Olsson et al. (2022): on the second half the next token is known from the first,
    so a model that copies (an induction head) predicts it; bigram statistics cannot.
    """
    n, L, V = check_int("n", n), check_int("half_length", half_length, 2), check_int("vocab_size", vocab_size, 2)
    r = torch.randint(0, V, (n, L), generator=torch.Generator().manual_seed(int(seed)))
    return torch.cat([r, r], dim=1)


def _corpus_text(kind: str) -> tuple[str, tuple]:
    if kind == "prose":
        from pydoc_data.topics import topics
        keys = sorted(topics)
        return "\n\n".join(topics[k] for k in keys), tuple(f"pydoc_data.topics[{k!r}]" for k in keys)
    if kind == "code":
        import os
        import sysconfig
        root = sysconfig.get_paths()["stdlib"]
        names = sorted(f for f in os.listdir(root) if f.endswith(".py"))
        parts = []
        for name in names:
            with open(os.path.join(root, name), encoding="utf-8", errors="replace") as fh:
                parts.append(fh.read())
        return "\n\n".join(parts), tuple(names)
    raise ValueError(f"kind must be 'prose' (pydoc topics) or 'code' (stdlib .py sources), got {kind!r}")


def char_corpus(kind: str = "prose", *, max_chars: int | None = None, val_fraction: float = 0.1,
                block: int = 2048) -> CharCorpus:
    r"""A character-level corpus from text that ships with Python.

    ``kind="prose"``: the language reference topics of ``pydoc_data.topics`` (~0.46M characters), joined in
    sorted key order. ``kind="code"``: the top-level ``.py`` files of the standard library (~4.7M characters on
    3.11), in sorted file-name order. The text is cut to ``max_chars``, split into blocks of ``block``
    characters, and every block whose index ``i`` satisfies ``i % round(1 / val_fraction) == round(1 /
    val_fraction) - 1`` goes to validation: a deterministic split (the same on every machine with the same
    Python version) that spreads validation text across the whole corpus (with fewer than ``1 / val_fraction``
    blocks, the last block is the validation text; the two never share a block). Characters outside
    :data:`CHAR_VOCAB` (tabs, non-ASCII) become ``"?"``.
    """
    block = check_int("block", block, 16)        # first: max_chars is checked against 2 * block
    text, sources = _corpus_text(kind)
    if max_chars is not None:
        text = text[:check_int("max_chars", max_chars, 2 * block)]
    if not 0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must lie in (0, 0.5), got {val_fraction!r}")
    every = round(1 / val_fraction)
    tokens = CharCorpus(kind, torch.empty(0), torch.empty(0), sources).encode(text)
    blocks = list(torch.split(tokens, block))
    val = [b for i, b in enumerate(blocks) if i % every == every - 1]
    train = [b for i, b in enumerate(blocks) if i % every != every - 1]
    if not val:                      # fewer blocks than 1 / val_fraction: the last block validates, and trains not
        train, val = blocks[:-1], blocks[-1:]
    return CharCorpus(kind, torch.cat(train), torch.cat(val), sources)


__all__ += ["CHAR_VOCAB", "CharCorpus", "char_corpus", "repeated_tokens"]


@dataclass(frozen=True)
class ClassificationData(_Pairs):
    """A train/test split: inputs ``x`` (float), integer labels ``y``; ``xy`` and ``test_xy`` are the pairs."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def test_xy(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_test, self.y_test


def _split(x, y, test_fraction: float, seed: int, num_classes: int, dtype) -> ClassificationData:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))
    n_test = int(round(test_fraction * x.shape[0]))
    if not 1 <= n_test <= x.shape[0] - 2:
        raise ValueError(f"test_fraction={test_fraction!r} of {x.shape[0]} examples leaves {n_test} for testing and "
                         f"{x.shape[0] - n_test} for training: each needs at least 1 (training 2, for its standard "
                         "deviation); pick a fraction nearer 0.5")
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)   # standardise with training statistics
    z = ((x - mean) / std).to(dtype)
    return ClassificationData(z[train], y[train], z[test], y[test], num_classes)


def digits(*, test_fraction: float = 0.2, seed: int = 0, dtype: torch.dtype = torch.float32) -> ClassificationData:
    """scikit-learn's handwritten digits: 1,797 images of 8×8 pixels (64 inputs), 10 classes.

    Shipped inside the scikit-learn wheel, so it works offline. Inputs are standardised with the training
    split's statistics; the split is a seeded random permutation. Used in: Part II, "Degeneracy in real networks".
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("data.digits() needs scikit-learn: pip install scikit-learn==1.9.1") from err
    bunch = load_digits()
    return _split(bunch.data, bunch.target, test_fraction, seed, 10, dtype)


def mnist1d(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> ClassificationData:
    """MNIST-1D (Greydanus 2020): 4,000 training and 1,000 test signals of length 40, 10 classes.

    Generated offline from the package's built-in templates (``mnist1d.data.make_dataset`` with the
    default arguments; its ``get_dataset`` would download). ``seed`` sets the generator's seed
    (the standard data set has seed 42, the default of ``get_dataset_args``, when ``seed=None``).
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise ImportError("data.mnist1d() needs the mnist1d package (and scipy): "
                          "pip install mnist1d==0.0.2.post1 scipy==1.17.1") from err
    args = get_dataset_args()
    if seed is not None:
        args.seed = int(seed)
    raw = make_dataset(args)
    x = torch.as_tensor(raw["x"], dtype=torch.float64)
    x_test = torch.as_tensor(raw["x_test"], dtype=torch.float64)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    return ClassificationData(((x - mean) / std).to(dtype), torch.as_tensor(raw["y"], dtype=torch.long),
                              ((x_test - mean) / std).to(dtype), torch.as_tensor(raw["y_test"], dtype=torch.long),
                              10)
