r"""Data generators for the book's experiments. Deterministic for a fixed ``seed``.

- :func:`teacher_student` -- linear teacher of a given rank, Gaussian inputs and noise: the data for
  reduced-rank regression and deep linear networks (Part II).
- :func:`monomial_data` -- inputs for the normal-crossing toy models :class:`~slt_companion.models.MonomialModel`.

Each returns a :class:`RegressionData`; ``data.xy`` is the ``(x, y)`` pair that
:func:`slt_companion.llc.estimate_llc` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["RegressionData", "teacher_student", "random_low_rank", "monomial_data"]


@dataclass(frozen=True)
class RegressionData:
    """Inputs ``x`` (n × in), targets ``y`` (n × out), the ``teacher`` that made them and the noise level."""

    x: torch.Tensor
    y: torch.Tensor
    teacher: object
    noise_std: float

    @property
    def xy(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def __len__(self) -> int:
        return self.n


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def random_low_rank(out_dim: int, in_dim: int, rank: int, *, singular_values: Sequence[float] | None = None,
                    seed: int = 0) -> torch.Tensor:
    """A random (out × in) matrix of exactly ``rank`` with the given singular values (default: evenly from 1 to 2).

    Singular vectors are Haar-random (QR of Gaussian matrices) from ``torch.Generator().manual_seed(seed)``.
    """
    out_dim, in_dim = _check_int("out_dim", out_dim, 1), _check_int("in_dim", in_dim, 1)
    rank = _check_int("rank", rank, 0)
    if rank > min(out_dim, in_dim):
        raise ValueError(f"rank={rank} exceeds min(out_dim, in_dim) = {min(out_dim, in_dim)}")
    if rank == 0:
        return torch.zeros(out_dim, in_dim)
    if singular_values is None:
        s = torch.linspace(2.0, 1.0, rank, dtype=torch.float64) if rank > 1 else torch.tensor([1.5], dtype=torch.float64)
    else:
        s = torch.as_tensor(singular_values, dtype=torch.float64)
        if s.shape != (rank,) or (s <= 0).any():
            raise ValueError(f"singular_values must be {rank} positive numbers, got {list(singular_values)}")
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
    n = _check_int("n", n, 1)
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be ≥ 0, got {noise_std!r}")
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
    n = _check_int("n", n, 1)
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
    n = _check_int("n", n, 1)
    c = _check_int("n_features", n_features, 1)
    gen = torch.Generator().manual_seed(int(seed))
    a = torch.randint(0, c, (n,), generator=gen)
    mu = torch.rand(n, generator=gen, dtype=torch.float64)
    x = torch.zeros(n, c, dtype=torch.float64)
    x[torch.arange(n), a] = mu
    x = x.to(dtype)
    return RegressionData(x, x.clone(), None, 0.0)


__all__ += ["tms_data"]
