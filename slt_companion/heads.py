r"""What attention heads do, measured from their attention patterns and losses.

Scores for every head of an :class:`slt_companion.models.AttentionOnlyLM` (or any model whose
``forward(tokens, return_attention=True)`` returns ``(logits, patterns)`` with patterns
``(batch, layers, heads, T, T)``, row = query, column = key), in the vocabulary of Elhage et al. (2021) and
Olsson et al. (2022), "In-context learning and induction heads":

- **previous-token score**: mean attention from position :math:`i` to :math:`i - 1`;
- **current-token score**: mean attention from :math:`i` to itself;
- **induction score**: on sequences that are random tokens followed by an exact copy
  (:func:`slt_companion.data.repeated_tokens`, half length :math:`L`), the mean attention from a position
  :math:`i \ge L` in the copy to :math:`i - L + 1`, the token *after* the earlier occurrence of the current token
  -- the one an induction head copies;
- **in-context learning score**: the per-token loss on the copy minus that on the first half (negative: the
  model uses the earlier occurrence).

Used in: Part III, "Stages in a small language model".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["attention_patterns", "previous_token_score", "current_token_score", "induction_score",
           "repeated_sequence_losses", "head_scores", "head_scores_over_trajectory"]


def _check_tokens(tokens) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
        got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be an integer tensor of shape (batch, T), got {got}")
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens need at least 2 positions, got T = {tokens.shape[1]}")
    if tokens.shape[0] < 1:
        raise ValueError("tokens hold no sequences (batch = 0): a score needs at least one")
    return tokens


def _check_repeated(tokens) -> int:
    tokens = _check_tokens(tokens)
    T = tokens.shape[1]
    L = T // 2
    if T % 2 or not torch.equal(tokens[:, :L], tokens[:, L:]):
        raise ValueError("tokens must be sequences followed by an exact copy of themselves (even length, second "
                         "half = first half); make them with slt_companion.data.repeated_tokens")
    if L < 2:
        raise ValueError(f"the repeated sequence needs at least 2 tokens (T ≥ 4) for a loss in each half, got T = {T}")
    return L


def _check_return_attention(model) -> None:
    """A TypeError, up front, for a model whose forward takes no ``return_attention`` argument."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):      # no forward, or a signature inspect cannot read: just try
        return
    if "return_attention" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    raise TypeError(f"the head scores of slt_companion.heads need a model whose forward accepts return_attention=True "
                    f"and then returns (logits, patterns), as AttentionOnlyLM does; {type(model).__name__}.forward"
                    f"{inspect.signature(model.forward)} has no return_attention argument")


@torch.no_grad()
def _forward(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, patterns)`` of ``model`` in eval mode (its training flag restored afterwards)."""
    tokens = _check_tokens(tokens)
    _check_return_attention(model)
    was_training = model.training
    model.eval()
    try:
        out = model(tokens, return_attention=True)
    finally:
        model.train(was_training)
    if not (isinstance(out, tuple) and len(out) == 2 and out[1].ndim == 5):
        raise TypeError("model(tokens, return_attention=True) must return (logits, patterns) with patterns of shape "
                        "(batch, layers, heads, T, T), as AttentionOnlyLM does")
    return out


def attention_patterns(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``(batch, layers, heads, T, T)`` attention patterns of ``model`` on ``tokens`` (row = query)."""
    return _forward(model, tokens)[1]


def _half_losses(logits: torch.Tensor, tokens: torch.Tensor, L: int) -> tuple[float, float]:
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:].long(), reduction="none")   # (B, 2L - 1); int32 too
    return float(nll[:, :L - 1].mean()), float(nll[:, L:].mean())


def _offset_score(patterns: torch.Tensor, queries: torch.Tensor, offset: int) -> np.ndarray:
    keys = queries + offset
    return patterns[..., queries, keys].mean(dim=(0, -1)).double().cpu().numpy()


def previous_token_score(model: torch.nn.Module, tokens: torch.Tensor) -> np.ndarray:
    """``(layers, heads)``: mean attention from each position ``i ≥ 1`` to ``i − 1``."""
    pat = attention_patterns(model, tokens)
    return _offset_score(pat, torch.arange(1, pat.shape[-1]), -1)


def current_token_score(model: torch.nn.Module, tokens: torch.Tensor) -> np.ndarray:
    """``(layers, heads)``: mean attention from each position ``i ≥ 1`` to itself (position 0 must attend to
    itself, so it is left out)."""
    pat = attention_patterns(model, tokens)
    return _offset_score(pat, torch.arange(1, pat.shape[-1]), 0)


def induction_score(model: torch.nn.Module, tokens: torch.Tensor) -> np.ndarray:
    r"""``(layers, heads)``: mean attention from :math:`i \in [L, 2L)` to :math:`i - L + 1` on repeated sequences.

    ``tokens``: random tokens followed by a copy (:func:`slt_companion.data.repeated_tokens`). A perfect
    induction head scores 1; a head attending uniformly scores about :math:`2/(3L)`.
    """
    L = _check_repeated(tokens)
    pat = attention_patterns(model, tokens)
    return _offset_score(pat, torch.arange(L, 2 * L), -L + 1)


def repeated_sequence_losses(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[float, float]:
    """``(first, second)``: mean next-token cross-entropy (nats) predicting positions ``1..L-1`` of the first half
    and positions ``L+1..2L-1`` of the copy (the copy's first token is left out: it is not yet repeated). The
    in-context learning score of Olsson et al. is ``second − first``."""
    L = _check_repeated(tokens)
    return _half_losses(_forward(model, tokens)[0], tokens, L)


def head_scores(model: torch.nn.Module, repeated: torch.Tensor, text: torch.Tensor | None = None) -> dict:
    """All scores at once: ``{"induction", "previous_token", "current_token"}`` as ``(layers, heads)`` arrays
    (the last two on ``text`` if given, else on ``repeated``) and ``{"loss_first", "loss_second", "icl"}``.
    One forward pass per probe: the same numbers as the single-score functions."""
    L = _check_repeated(repeated)
    logits, pat_rep = _forward(model, repeated)
    pat_text = pat_rep if text is None else _forward(model, text)[1]
    first, second = _half_losses(logits, repeated, L)
    q = torch.arange(1, pat_text.shape[-1])
    return {"induction": _offset_score(pat_rep, torch.arange(L, 2 * L), -L + 1),
            "previous_token": _offset_score(pat_text, q, -1), "current_token": _offset_score(pat_text, q, 0),
            "loss_first": first, "loss_second": second, "icl": second - first}


def head_scores_over_trajectory(trajectory, template: torch.nn.Module, repeated: torch.Tensor,
                                text: torch.Tensor | None = None) -> dict:
    """:func:`head_scores` at every checkpoint of a :class:`slt_companion.train.Trajectory`: arrays with a leading
    checkpoint axis (``(checkpoints, layers, heads)`` for head scores, ``(checkpoints,)`` for losses) and
    ``"steps"``."""
    rows = [head_scores(trajectory.model_at(i, template), repeated, text) for i in range(len(trajectory))]
    out = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
    out["steps"] = np.asarray(trajectory.steps, dtype=np.int64)
    return out
