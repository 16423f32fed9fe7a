r"""The ground-truth suite: models whose learning coefficient is known exactly, and the paper's toy potentials
integrated exactly. Every case is estimated with the defaults of :func:`slt_companion.llc.estimate_llc`.

Used in: Part II, "Validation against known λ"; ``tests/test_ground_truth.py``.
"""

from __future__ import annotations

import numpy as np

from . import config as _config
from .llc import default_nbeta, estimate_llc, half_mse

__all__ = ["GROUND_TRUTH", "ground_truth_problem", "run_ground_truth", "PAPER_TOY_POTENTIALS", "toy_potential_exact"]


# --------------------------------------------------------------------------------------------------
# The ground-truth suite: models whose learning coefficient is known exactly
# --------------------------------------------------------------------------------------------------

#: name -> definition. "monomial": f(x; w) = x·∏ w_j^{k_j} on noise-free data (L_n is the normal-crossing
#: potential itself), λ from :func:`slt_companion.symbolic.rlct`; "dln": teacher-student regression with
#: n = 10,000 and unit noise, centred at the empirical minimiser, λ from :func:`slt_companion.theory.dln_rlct`
#: (= :func:`~slt_companion.theory.rrr_rlct` for two layers).
GROUND_TRUTH = {
    "normal crossing w²": {"kind": "monomial", "exponents": (2,), "n": 100_000},
    "normal crossing w₁w₂²": {"kind": "monomial", "exponents": (1, 2), "n": 100_000},
    "RRR 4-3-4, rank 1": {"kind": "dln", "widths": (4, 3, 4), "rank": 1, "n": 10_000},
    "RRR 5-4-5, rank 2": {"kind": "dln", "widths": (5, 4, 5), "rank": 2, "n": 10_000},
    "DLN 5-4-3-4-5, rank 2": {"kind": "dln", "widths": (5, 4, 3, 4, 5), "rank": 2, "n": 10_000},
    "DLN 6-4-2-4-6, rank 1": {"kind": "dln", "widths": (6, 4, 2, 4, 6), "rank": 1, "n": 10_000},
}



def ground_truth_problem(name: str, *, seed: int = 0):
    """``(model, data, lam, multiplicity)`` for a case of :data:`GROUND_TRUTH`; ``lam`` an exact ``sympy.Rational``."""
    from .data import monomial_data, teacher_student
    from .models import DeepLinearNetwork, MonomialModel

    if name not in GROUND_TRUTH:
        raise ValueError(f"unknown ground-truth case {name!r}; the cases are {list(GROUND_TRUTH)}")
    case = GROUND_TRUTH[name]
    if case["kind"] == "monomial":
        import sympy as sp

        from .symbolic import rlct

        ws = sp.symbols(f"w1:{len(case['exponents']) + 1}", real=True)
        K = sp.Mul(*[w ** (2 * k) for w, k in zip(ws, case["exponents"])])
        lam, mult = rlct(K, list(ws))
        return MonomialModel(case["exponents"]), monomial_data(case["n"], seed=seed), lam, mult
    from .theory import dln_rlct

    d = teacher_student(case["n"], case["widths"][0], case["widths"][-1], case["rank"], seed=seed)
    model = DeepLinearNetwork(case["widths"]).fit_least_squares(d.x, d.y)
    lam, mult = dln_rlct(list(case["widths"]), case["rank"])
    return model, d, lam, mult


def run_ground_truth(names=None, *, num_chains: int | None = None, num_draws: int | None = None, seed: int = 0,
                     progress: bool = True) -> list[dict]:
    """Estimate λ with the defaults of :func:`estimate_llc` on every case of :data:`GROUND_TRUTH` (cached).

    Only the number of chains (8; 4 in ``SLT_QUICK`` mode) and draws (4000; 800) are set. Returns one dict
    per case: ``name``, ``theory``, ``mean``, ``std``, ``sem``, ``ess``, ``rhat``, ``rel_error``,
    ``step_size``, ``seconds``. Used in: Part II, "Validation against known λ".
    """
    from . import cache

    names = list(GROUND_TRUTH) if names is None else list(names)
    num_chains = _config.size(8, 4) if num_chains is None else int(num_chains)
    num_draws = _config.size(4000, 800) if num_draws is None else int(num_draws)
    rows = []
    for name in names:
        def compute(name=name):
            model, data, lam, mult = ground_truth_problem(name, seed=seed)
            est = estimate_llc(model, half_mse, data.xy, num_chains=num_chains, num_draws=num_draws, seed=seed,
                               progress=progress)
            return {"name": name, "theory": float(lam), "theory_str": str(lam), "multiplicity": int(mult),
                    "mean": est.mean, "std": est.std, "sem": est.sem, "ess": est.ess, "rhat": est.rhat,
                    "rel_error": est.mean / float(lam) - 1, "step_size": float(est.config.step_size),
                    "num_chains": num_chains, "num_draws": num_draws, "num_burnin": est.config.num_burnin,
                    "seconds": est.seconds}
        cfg = {"case": name, "definition": {k: list(v) if isinstance(v, tuple) else v
                                            for k, v in GROUND_TRUTH[name].items()},
               "num_chains": num_chains, "num_draws": num_draws, "seed": seed}
        rows.append(cache.cached("llc-ground-truth", cfg, compute))
    return rows


# --------------------------------------------------------------------------------------------------
# The paper's toy potentials, integrated exactly
# --------------------------------------------------------------------------------------------------

#: Lau et al. (2025), toy potentials y = x·w₁^{k₁}w₂^{k₂} + N(0, 0.5²), n = 1000, prior N(0, I), truth w = 0:
#: exponents -> (λ, MCMC λ̂ mean, sd over 10 seeds) from the authors' committed notebook (../shared/PAPERS.md §5).
PAPER_TOY_POTENTIALS = {
    (1, 3): (1 / 6, 0.12, 0.04),
    (1, 2): (1 / 4, 0.19, 0.11),
    (0, 1): (1 / 2, 0.41, 0.12),
    (1, 0): (1 / 2, 0.43, 0.12),
}


def toy_potential_exact(exponents, n: int, *, noise_std: float = 0.5, seed: int = 0, points: int | None = None,
                        nbeta: float | None = None) -> float:
    r"""The exact value of :math:`n\beta\,(\E_\beta[L_n(w)] - L_n(0))` for the toy potential
    :math:`y = x\,w_1^{k_1}w_2^{k_2} + \mathcal N(0,\sigma^2)` with truth :math:`w = 0` and prior :math:`\mathcal N(0, I_2)`,
    the quantity Lau et al. (2025) estimate with MCMC and SGLD in their toy-potential table.

    The loss is the Gaussian negative log-likelihood :math:`(y - f)^2/(2\sigma^2)` (up to a constant), so
    :math:`L_n(w) - L_n(0) = (p^2 S_{xx} - 2pS_{xy})/(2\sigma^2)` with :math:`p = w_1^{k_1}w_2^{k_2}` and the data's
    sufficient statistics :math:`S_{xx} = \overline{x^2}`, :math:`S_{xy} = \overline{xy}`; the posterior
    :math:`\propto\exp\{-n\beta(L_n(w) - L_n(0)) - \|w\|^2/2\}` is integrated on a 2-D grid graded towards the
    axes (``points`` per axis, default 401: the values agree with 1201 and 2401 points to 1e-8). Data from
    ``numpy.random.default_rng(seed)``. Used in: Part II, "Validation against known λ".
    """
    k = tuple(int(v) for v in exponents)
    if len(k) != 2 or min(k) < 0 or max(k) < 1:
        raise ValueError(f"exponents must be two non-negative integers, not both 0; got {exponents!r}")
    points = 401 if points is None else int(points)
    rng = np.random.default_rng(int(seed))
    x = rng.standard_normal(int(n))
    y = noise_std * rng.standard_normal(int(n))
    sxx, sxy = float((x * x).mean()), float((x * y).mean())
    nb = default_nbeta(int(n)) if nbeta is None else float(nbeta)
    scale = 1e-3
    u = np.linspace(-np.arcsinh(5 / scale), np.arcsinh(5 / scale), points)
    w = scale * np.sinh(u)
    weights = np.gradient(w)
    W1, W2 = np.meshgrid(w, w, indexing="ij")
    p = (W1 ** k[0] if k[0] else 1.0) * (W2 ** k[1] if k[1] else 1.0)
    dL = (p * p * sxx - 2 * p * sxy) / (2 * noise_std ** 2)
    logd = -nb * dL - 0.5 * (W1 ** 2 + W2 ** 2)
    dens = np.exp(logd - logd.max()) * weights[:, None] * weights[None, :]
    return float((nb * dL * dens).sum() / dens.sum())
