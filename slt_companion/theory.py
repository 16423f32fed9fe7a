r"""Closed forms from the literature.

- :func:`free_energy` -- Watanabe's asymptotic expansion of the Bayes free energy.

Used in: Part I, chapter "Why deep learning is singular".
"""

from __future__ import annotations

import numpy as np

__all__ = ["free_energy", "bic"]


def free_energy(n, loss, lam, multiplicity: int = 1):
    r"""Watanabe's asymptotic free energy :math:`F_n \approx nL_n(w_0) + \lambda\log n - (m-1)\log\log n`.

    Watanabe (2009), *Algebraic Geometry and Statistical Learning Theory*, Thm 6.7 (the :math:`O_p(1)`
    remainder is dropped). ``n`` may be an array; ``loss`` is :math:`L_n(w_0)` (0 for the normalised
    free energy), ``lam`` the learning coefficient :math:`\lambda`, ``multiplicity`` its order :math:`m`.
    """
    n = np.asarray(n, dtype=float)
    if np.any(n <= 1):
        raise ValueError("n must exceed 1 (log log n must be defined)")
    if int(multiplicity) != multiplicity or multiplicity < 1:
        raise ValueError(f"multiplicity must be a positive integer, got {multiplicity!r}")
    lam = float(lam)
    out = n * loss + lam * np.log(n)
    if multiplicity > 1:
        out = out - (multiplicity - 1) * np.log(np.log(n))
    return out


def bic(n, loss, num_params: int):
    r"""The Bayesian information criterion :math:`nL_n(\hat w) + \tfrac d2\log n` (Schwarz 1978).

    Correct to :math:`O_p(1)` for regular models only; for singular models it overstates the
    complexity, :math:`d/2 > \lambda`.
    """
    n = np.asarray(n, dtype=float)
    return n * loss + num_params / 2 * np.log(n)
