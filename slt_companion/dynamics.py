r"""Reading a training trajectory: stage boundaries from the LLC curve, and essential dynamics.

Two views of the same :class:`~slt_companion.train.Trajectory` (Hoogland et al. 2025):

- :func:`stage_boundaries` -- the **developmental stages** are the intervals between critical points of the
  LLC curve :math:`t \mapsto \hat\lambda(w_t)`: where it peaks, bottoms out or pauses (a plateau where its
  slope nearly vanishes without changing sign). The algorithm is written out in its docstring.
- :func:`essential_dynamics` -- **essential dynamics**: principal component analysis of the model's outputs on a
  fixed probe set, one row per checkpoint, and the trajectory's *turning points* in PC space.

Both work in :math:`\log t`: the stages of a training run are roughly evenly spread on a log axis.
Used in: Part III, "Stages in in-context linear regression" and "Stages in a small language model".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._checks import check_int, user_stacklevel
from .sampling import module_signature
from .train import checkpoint_index

__all__ = ["gaussian_smooth", "stage_boundaries", "StageBoundaries", "essential_dynamics", "EssentialDynamics",
           "model_outputs", "stages_from_boundaries"]


def gaussian_smooth(y, sigma: float) -> np.ndarray:
    r"""Gaussian smoothing of equally spaced values ``y`` with standard deviation ``sigma`` (in samples).

    The kernel is truncated at :math:`4\sigma` and renormalised where it overhangs the ends, so a constant stays
    constant and the ends are not pulled towards zero. ``sigma = 0`` returns a copy.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number ≥ 0, got {sigma!r}")
    if sigma == 0 or len(y) < 2:
        return y.copy()
    r = int(min(np.ceil(4 * sigma), len(y) - 1))      # no two samples lie further apart: the same result, bounded memory
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    num = np.convolve(y, k, mode="full")[r:r + len(y)]
    den = np.convolve(np.ones_like(y), k, mode="full")[r:r + len(y)]
    return num / den


@dataclass
class StageBoundaries:
    r"""The result of :func:`stage_boundaries`.

    - ``steps``: the boundary steps (rounded), sorted; ``kinds``: ``"max"``, ``"min"`` or ``"plateau"`` for each;
    - ``grid_steps``, ``smoothed``, ``slope``: the evaluation grid (uniform in :math:`\log_{10} t`), the smoothed
      curve on it and its slope :math:`d\hat\lambda/d\log_{10} t` (for plotting);
    - ``params``: the parameters used.
    """

    steps: np.ndarray
    kinds: list
    grid_steps: np.ndarray
    smoothed: np.ndarray
    slope: np.ndarray
    params: dict

    def __len__(self) -> int:
        return len(self.steps)


def _component_signs(V: np.ndarray) -> np.ndarray:
    """±1 per row of ``V`` (principal components), a sign convention that round-off cannot flip: a component's
    entries sum to > 0; where that sum is negligible (≤ 1e-6 of the entries' absolute sum: an antisymmetric component,
    whose sum's sign is round-off), its first entry that is not negligible (> 1e-6 of the largest) is > 0."""
    total = V.sum(1)
    scale = np.abs(V).sum(1)
    signs = np.where(total > 0, 1.0, -1.0)
    for i in np.flatnonzero(np.abs(total) <= 1e-6 * scale):
        big = np.flatnonzero(np.abs(V[i]) > 1e-6 * np.abs(V[i]).max())
        signs[i] = 1.0 if big.size == 0 or V[i, big[0]] > 0 else -1.0
    return signs


def _reversals(sign: np.ndarray) -> list:
    """``(p, q)`` for each reversal of direction in a sequence of signs: ``sign[p]`` and ``sign[q]`` are the nonzero
    signs on either side, opposite; between them (``q > p + 1``) an exactly flat run, one extremum, not several."""
    moving = np.flatnonzero(sign)
    return [(int(p), int(q)) for p, q in zip(moving[:-1], moving[1:]) if sign[p] != sign[q]]


def stage_boundaries(steps, llc, *, smoothing: float = 0.15, plateau: float = 0.1, min_separation: float = 0.3,
                     min_change: float = 0.0, edge: float | None = None, grid: int = 400) -> StageBoundaries:
    r"""Stage boundaries: the critical points of the LLC curve, found in :math:`u = \log_{10} t`.

    Algorithm (every parameter is in decades of training steps, except ``plateau``):

    1. Keep checkpoints with ``steps > 0`` and finite ``llc``; put :math:`\hat\lambda` on a grid of ``grid``
       points uniform in :math:`u` (linear interpolation).
    2. Smooth with a Gaussian of standard deviation ``smoothing`` decades (:func:`gaussian_smooth`): λ̂ is a noisy
       estimate, and a critical point of the noise is not a stage.
    3. Differentiate: :math:`s(u) = d\hat\lambda/du`.
    4. Candidates: every **sign change** of :math:`s` (a local maximum or minimum of λ̂), and every local minimum of
       :math:`|s|` below ``plateau`` :math:`\times \max|s|` where :math:`s` keeps its sign (a **plateau**: the curve
       pauses, then goes on in the same direction -- the paper's boundaries include these).
    5. Drop candidates within ``edge`` decades of either end (default: ``2·smoothing``; smoothing is unreliable there).
    6. Merge candidates closer than ``min_separation`` decades, keeping the one with the smallest :math:`|s|`
       relative to its neighbourhood (a sign change wins over a plateau).
    7. Significance: while some boundary differs in smoothed λ̂ by less than ``min_change`` from its neighbour on
       either side (the previous/next boundary, or the curve's first/last value), drop the one with the smallest
       such difference. Pass e.g. twice the standard error of λ̂: a "stage" over which λ̂ changes by less is chain
       noise. ``min_change = 0`` (default) keeps every critical point.

    Returns a :class:`StageBoundaries`. The stages are the intervals between consecutive boundaries (and the
    first checkpoint and the last). Used in: Part III, the developmental chapters.
    """
    t = np.asarray(steps, dtype=np.float64).reshape(-1)
    y = np.asarray(llc, dtype=np.float64).reshape(-1)
    if t.shape != y.shape:
        raise ValueError(f"steps and llc must have the same length, got {t.shape[0]} and {y.shape[0]}")
    for name, v, lo in (("smoothing", smoothing, 0.0), ("min_separation", min_separation, 0.0)):
        if not (np.isfinite(v) and v >= lo):
            raise ValueError(f"{name} must be a finite number ≥ {lo} (decades of steps), got {v!r}")
    if not 0 <= plateau < 1:
        raise ValueError(f"plateau must lie in [0, 1) (a fraction of the largest slope), got {plateau!r}")
    if isinstance(grid, bool) or int(grid) != grid or grid < 16:
        raise ValueError(f"grid must be an integer ≥ 16, got {grid!r}")
    ok = (t > 0) & np.isfinite(y)
    if ok.sum() < 4:
        raise ValueError(f"need at least 4 checkpoints with steps > 0 and a finite llc, got {int(ok.sum())}")
    order = np.argsort(t[ok])
    u, y = np.log10(t[ok][order]), y[ok][order]
    if np.any(np.diff(u) <= 0):
        raise ValueError("steps must be distinct")
    if edge is not None and not (np.isfinite(edge) and edge >= 0):
        raise ValueError(f"edge must be a finite number ≥ 0 (decades of steps) or None (2·smoothing), got {edge!r}")
    edge = 2 * smoothing if edge is None else float(edge)
    ug = np.linspace(u[0], u[-1], int(grid))
    du = ug[1] - ug[0]
    ys = gaussian_smooth(np.interp(ug, u, y), smoothing / du)
    s = np.gradient(ys, du)
    # a slope below round-off of the curve's scale is zero: an exactly flat stretch is flat, not a row of extrema
    s[np.abs(s) <= 1e-9 * (float(np.max(np.abs(ys))) + 1e-300) / max(u[-1] - u[0], 1e-300)] = 0.0
    smax = float(np.max(np.abs(s))) or 1.0
    cands = []  # (index, kind, score): lower score = stronger
    sign = np.sign(s)
    for p, q in _reversals(sign):
        # adjacent: the smaller slope of the two; across an exactly flat run: its middle
        j = (q if abs(s[q]) < abs(s[p]) else p) if q == p + 1 else (p + q) // 2
        cands.append((j, "max" if sign[p] > 0 else "min", -1.0))
    a = np.abs(s)
    for i in range(1, len(a) - 1):
        if a[i] <= a[i - 1] and a[i] < a[i + 1] and a[i] < plateau * smax:
            if a[i] == 0:                                   # the end of an exactly flat run: a pause between two moves
                before = np.flatnonzero(a[:i])
                if not before.size:                         # ... unless the curve starts flat: no move before it
                    continue
                i = (int(before[-1]) + 1 + i) // 2          # its middle
            if not any(abs(i - j) * du < min_separation / 2 and k != "plateau" for j, k, _ in cands):
                cands.append((i, "plateau", a[i] / smax))
    cands = [c for c in cands if ug[c[0]] - ug[0] >= edge and ug[-1] - ug[c[0]] >= edge]
    cands.sort(key=lambda c: c[2])
    chosen = []
    for c in cands:
        if all(abs(ug[c[0]] - ug[d[0]]) >= min_separation for d in chosen):
            chosen.append(c)
    chosen.sort(key=lambda c: c[0])
    if not (np.isfinite(min_change) and min_change >= 0):
        raise ValueError(f"min_change must be a finite number ≥ 0 (units of λ̂), got {min_change!r}")
    while chosen and min_change > 0:
        vals = [ys[0]] + [ys[c[0]] for c in chosen] + [ys[-1]]
        gaps = [min(abs(vals[k + 1] - vals[k]), abs(vals[k + 2] - vals[k + 1])) for k in range(len(chosen))]
        k = int(np.argmin(gaps))
        if gaps[k] >= min_change:
            break
        chosen.pop(k)
    return StageBoundaries(steps=np.round(10 ** ug[[c[0] for c in chosen]]).astype(np.int64),
                           kinds=[c[1] for c in chosen], grid_steps=10 ** ug, smoothed=ys, slope=s,
                           params={"smoothing": smoothing, "plateau": plateau, "min_separation": min_separation,
                                   "min_change": min_change, "edge": edge, "grid": int(grid)})


def stages_from_boundaries(boundaries, first_step: int, last_step: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]``: the stages between ``first_step``, each boundary, and ``last_step``.

    The boundaries must be whole steps, sorted, and lie in ``[first_step, last_step]``."""
    cuts = np.asarray([first_step, *np.asarray(boundaries, dtype=np.float64).reshape(-1), last_step], dtype=np.float64)
    if not np.all(np.isfinite(cuts)) or np.any(cuts != np.round(cuts)):
        raise ValueError(f"first_step, the boundaries and last_step must be whole steps, got {first_step!r}, "
                         f"{list(boundaries)!r}, {last_step!r}")
    if np.any(np.diff(cuts) < 0):
        raise ValueError(f"the boundaries must be sorted and lie in [first_step, last_step] = [{first_step}, "
                         f"{last_step}], got {list(boundaries)!r}")
    cuts = [int(c) for c in cuts]
    return list(zip(cuts[:-1], cuts[1:]))


@torch.no_grad()
def model_outputs(trajectory, template: torch.nn.Module, probe, *, chunk: int = 1024) -> np.ndarray:
    """The outputs of every checkpoint on ``probe`` (a tensor of inputs), flattened: shape ``(checkpoints, features)``."""
    chunk = check_int("chunk", chunk)
    rows = []
    for i in range(len(trajectory)):
        model = trajectory.model_at(i, template)
        outs = [model(probe[j:j + chunk]).reshape(-1) for j in range(0, probe.shape[0], chunk)]
        rows.append(torch.cat(outs).double().cpu().numpy())
    return np.stack(rows)


@dataclass
class EssentialDynamics:
    r"""The result of :func:`essential_dynamics`.

    - ``pcs`` ``(C, n_components)``: the trajectory in PC space (the projections of the centred outputs);
      ``smoothed``: the same, smoothed along the trajectory;
    - ``explained_variance_ratio`` ``(n_components,)``; ``components`` ``(n_components, features)``;
    - ``turning_points``: checkpoint indices where a smoothed PC coordinate reverses direction (sorted);
      ``turning_steps``: their steps (if ``steps`` were given); ``params``: the settings.
    """

    pcs: np.ndarray
    smoothed: np.ndarray
    explained_variance_ratio: np.ndarray
    components: np.ndarray
    turning_points: np.ndarray
    turning_steps: np.ndarray | None
    params: dict


def essential_dynamics(outputs, *, n_components: int = 3, steps=None, smoothing: float = 1.0,
                       prominence: float = 0.05, min_separation: int = 2) -> EssentialDynamics:
    r"""Essential dynamics: PCA of the model's outputs across checkpoints (Hoogland et al. 2025, §4).

    ``outputs`` ``(C, F)`` holds, for each of ``C`` checkpoints, the model's outputs on a fixed probe set,
    concatenated (:func:`model_outputs`). The columns are centred over checkpoints and the top ``n_components``
    right singular vectors give the principal directions; ``pcs = U S`` is the trajectory projected on them.

    **Turning points.** Each PC coordinate is smoothed along the trajectory (Gaussian, ``smoothing`` checkpoints;
    with log-spaced checkpoints that is smoothing in :math:`\log t`), and a turning point is a checkpoint where
    a smoothed coordinate has a local extremum whose prominence (the smaller rise on either side, up to the next
    extremum) exceeds ``prominence`` × that coordinate's range (an exactly flat extremum counts once, at its middle;
    a component beyond the outputs' numerical rank has none). These are the cusps and turns of the curves in the
    PC1–PC2, PC1–PC3 … planes, the paper's developmental milestones. Turning points closer than
    ``min_separation`` checkpoints are merged (the earlier kept). The first and last checkpoints never count.
    """
    X = np.asarray(outputs, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 3:
        raise ValueError(f"outputs must be (checkpoints ≥ 3, features), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("outputs contain NaN or inf; a checkpoint diverged")
    C = X.shape[0]
    if isinstance(n_components, bool) or int(n_components) != n_components or not 1 <= n_components <= min(X.shape):
        raise ValueError(f"n_components must be an integer in [1, {min(X.shape)}], got {n_components!r}")
    if steps is not None and len(steps) != C:
        raise ValueError(f"steps has {len(steps)} entries but outputs has {C} rows (checkpoints)")
    Xc = X - X.mean(0, keepdims=True)
    U, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    k = int(n_components)
    sign = _component_signs(Vt[:k])
    pcs = U[:, :k] * S[:k] * sign
    comps = Vt[:k] * sign[:, None]
    evr = S[:k] ** 2 / max(float((S ** 2).sum()), 1e-300)
    sm = np.stack([gaussian_smooth(pcs[:, j], smoothing) for j in range(k)], axis=1)
    tps = []
    floor = (S[0] if S.size else 0.0) * max(X.shape) * np.finfo(np.float64).eps
    for j in range(k):
        if S[j] <= floor:                 # a numerically zero component (beyond the outputs' rank): round-off only
            continue
        z = sm[:, j]
        rng = float(z.max() - z.min()) or 1.0
        ext = [(p + 1 + q) // 2 for p, q in _reversals(np.sign(np.diff(z)))]     # the middle of a flat run
        marks = [0] + ext + [C - 1]
        for a, i, b in zip(marks[:-2], marks[1:-1], marks[2:]):
            prom = min(abs(z[i] - z[a]), abs(z[i] - z[b]))
            if prom >= prominence * rng:
                tps.append(i)
    merged = []
    for i in sorted(set(tps)):
        if not merged or i - merged[-1] >= min_separation:
            merged.append(i)
    tp = np.asarray(merged, dtype=np.int64)
    return EssentialDynamics(pcs=pcs, smoothed=sm, explained_variance_ratio=evr, components=comps,
                             turning_points=tp,
                             turning_steps=None if steps is None else np.asarray(steps)[tp],
                             params={"n_components": k, "smoothing": smoothing, "prominence": prominence,
                                     "min_separation": min_separation})


def _relaxation(estimates) -> np.ndarray:
    """The chains' mean λ̂ per step, burn-in and draws, one row per estimate (NaN-padded to the longest run)."""
    rows = [np.concatenate([e.burnin_llc_trace, e.llc_trace], axis=1).mean(0) for e in estimates]
    out = np.full((len(rows), max(len(r) for r in rows)), np.nan)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _data_digest(data) -> str:
    """A digest of the data's tensors (shapes, dtypes, contents): part of llc_over_trajectory's cache key."""
    import hashlib

    from .sampling import _as_xy, digest_tensor

    h = hashlib.blake2b(digest_size=16)
    for name, t in zip("xy", _as_xy(data, "cpu")):
        digest_tensor(h, name, t)
    return h.hexdigest()


_CURVE_KEYS = ("steps", "mean", "std", "sem", "init_loss", "rhat", "ess", "converged", "per_chain", "relaxation")


def _curve_problem(out, steps: list) -> str | None:
    """Why ``out`` is not an :func:`llc_over_trajectory` result for checkpoints at training ``steps`` (a key missing,
    an array of another length, other steps), or ``None``."""
    if not isinstance(out, dict):
        return f"a {type(out).__name__}, not a dict"
    missing = [k for k in _CURVE_KEYS if k not in out]
    if missing:
        return f"no {', '.join(missing)}"
    wrong = [f"{k} of shape {np.shape(out[k])}" for k in _CURVE_KEYS
             if np.ndim(out[k]) == 0 or np.shape(out[k])[0] != len(steps)]
    if wrong:
        return f"{', '.join(wrong[:3])} for {len(steps)} checkpoints"
    if [int(s) for s in np.asarray(out["steps"])] != list(steps):
        return f"steps {np.asarray(out['steps']).tolist()[:8]} instead of {list(steps)[:8]}"
    return None


def llc_over_trajectory(trajectory, template: torch.nn.Module, loss_fn, data, *, checkpoints=None,
                        cache_name: str | None = None, cache_config: dict | None = None, progress: bool = True,
                        **llc_kwargs) -> dict:
    r"""λ̂ at every checkpoint of ``trajectory``, all sampled together (:func:`slt_companion.llc.estimate_llcs`:
    checkpoints as chains, ``chunk_size`` of them per batched run; sharded over ranks under ``torchrun``).

    ``checkpoints``: integer indices into the trajectory (default: all; negative from the end). Each estimate is
    centred at that checkpoint's parameters, with the same ``data``, sampler settings (``llc_kwargs``, as for
    :func:`~slt_companion.llc.estimate_llc`) and ``seed``, and equals ``estimate_llc`` at that checkpoint. Returns
    ``{"steps", "mean", "std", "sem", "init_loss", "rhat", "ess", "converged", "per_chain", "relaxation"}`` as
    arrays (``per_chain``: checkpoints × chains; ``converged``: R̂ ≤ 1.01 and ESS ≥ 400 at that checkpoint, with
    chains that move, ``LLCEstimate.converged``; ``relaxation``: checkpoints × SGLD steps, the chains' mean λ̂ at every step
    from :math:`w^*` through the burn-in to the last draw, NaN after a checkpoint's last step -- how long its
    chains took to relax, from the run itself). Instead of one warning per checkpoint, a single
    :class:`~slt_companion.convergence.LLCConvergenceWarning` lists the unconverged checkpoints (also when the curve
    comes from the cache): a figure must mark them and no claim may rest on them. With ``cache_name`` the whole
    curve is cached under ``cache_config`` + the sampler settings + fingerprints of the trajectory, the data, the
    template's architecture and ``loss_fn``'s name and code (:func:`slt_companion.replicate.code_fingerprint`: its
    bytecode, constants, defaults, captured values and the globals and helpers beside it that it reads; ``chunk_size``
    and ``distributed`` are not part of the key: they do not change the numbers). The package's and other libraries'
    functions that ``loss_fn`` calls are not fingerprinted, nor is a callable object's code: describe a changed one in
    ``cache_config``. A cached entry that is not such a curve (a key missing, arrays
    of another length) is recomputed with a ``RuntimeWarning``, as an unreadable one is. A checkpoint that diverges raises
    :class:`~slt_companion.diagnostics.SGLDDivergenceError` naming its index and training step, with the estimates
    finished before it in ``err.completed`` (``{trajectory index: LLCEstimate}``).
    """
    import warnings

    from . import cache as _cache
    from .convergence import LLCConvergenceWarning
    from .diagnostics import SGLDDivergenceError
    from .llc import estimate_llcs
    from .replicate import code_fingerprint

    n = len(trajectory)
    if checkpoints is not None and np.ndim(checkpoints) != 1:
        raise ValueError(f"checkpoints must be a 1-D sequence of indices into the trajectory, e.g. [0, 5, -1], got "
                         f"{checkpoints!r}" + (f" (for the one checkpoint: [{checkpoints!r}])"
                                              if np.ndim(checkpoints) == 0 else ""))
    idx = list(range(n)) if checkpoints is None else [checkpoint_index(f"checkpoints[{k}]", i, n) for k, i in enumerate(checkpoints)]
    steps = [int(trajectory.steps[i]) for i in idx]

    def compute() -> dict:
        models = [trajectory.model_at(i, template) for i in idx]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LLCConvergenceWarning)   # summarised once below
                rows = estimate_llcs(models, loss_fn, data, progress=progress, **llc_kwargs)
        except SGLDDivergenceError as err:       # name the trajectory's checkpoint and its training step
            if err.checkpoint is None:
                raise
            j = idx[err.checkpoint]
            raise err.at_checkpoint(j, f"checkpoint {j} of the trajectory (training step {int(trajectory.steps[j])})",
                                    {idx[k]: e for k, e in err.completed.items()}) from err
        return {"steps": np.asarray(steps, dtype=np.int64),
                "mean": np.array([e.mean for e in rows]), "std": np.array([e.std for e in rows]),
                "sem": np.array([e.sem for e in rows]), "init_loss": np.array([e.init_loss for e in rows]),
                "rhat": np.array([e.rhat for e in rows]), "ess": np.array([e.ess for e in rows]),
                "converged": np.array([e.converged for e in rows], dtype=bool),
                "per_chain": np.stack([e.per_chain for e in rows]), "relaxation": _relaxation(rows)}

    if cache_name is None:
        out = compute()
    else:
        key = {"user": dict(cache_config or {}),
               "llc": {k: v for k, v in llc_kwargs.items() if k not in ("chunk_size", "distributed")},
               "checkpoints": idx, "trajectory": trajectory.fingerprint(), "data": _data_digest(data),
               "template": repr(module_signature(template, hook_ids=False)),
               "loss_fn": f"{getattr(loss_fn, '__module__', '')}.{getattr(loss_fn, '__qualname__', type(loss_fn).__name__)}"}
        code = code_fingerprint(loss_fn)     # two lambdas (or two `def mse` of two pages) are two losses
        if code is not None:
            key["loss_code"] = code
        # a readable entry that is not this curve is as corrupt as garbage: recomputed with a warning
        out = _cache.cached(cache_name, key, compute, check=lambda entry: _curve_problem(entry, steps))
    bad = np.flatnonzero(~np.asarray(out["converged"], dtype=bool))
    if bad.size:
        at = [int(out["steps"][k]) for k in bad]
        warnings.warn(f"λ̂ did not converge at {bad.size} of {len(out['steps'])} checkpoints (training steps "
                      f"{at[:8]}{' …' if len(at) > 8 else ''}; R̂ up to {np.nanmax(out['rhat'][bad]):.3f}, ESS "
                      f"down to {np.nanmin(out['ess'][bad]):.0f}): those points are not results. Mark them "
                      "(result['converged']), or sample longer (num_draws='auto' or more num_draws).",
                      LLCConvergenceWarning, stacklevel=user_stacklevel())
    return out


__all__ += ["llc_over_trajectory"]


# ---------------------------------------------------------------------------------------------------------
# Joint trajectory PCA over several training runs (Carroll et al. 2025). Used in: Part III, "The transient ridge".
# ---------------------------------------------------------------------------------------------------------


@dataclass
class JointTrajectoryPCA:
    r"""The result of :func:`joint_trajectory_pca`: every run, and the reference predictors, in one PC space.

    - ``pcs``: a list with one ``(C_r, n_components)`` array per run (its checkpoints' coordinates);
      ``labels``: one label per run;
    - ``references``: ``name -> (n_components,)``, the projected reference predictions (e.g. ridge, dMMSE);
    - ``explained_variance_ratio`` ``(n_components,)`` (of the stacked runs' variance), ``components``
      ``(n_components, F)``, ``mean`` ``(F,)``: the fitted PCA, so :meth:`project` maps any outputs
      ``(..., F)`` into the same space.
    """

    pcs: list
    labels: list
    references: dict
    explained_variance_ratio: np.ndarray
    components: np.ndarray
    mean: np.ndarray

    def project(self, outputs) -> np.ndarray:
        """Coordinates of ``outputs`` (``(F,)`` or ``(n, F)``, flattened predictions on the same probe)."""
        X = np.asarray(outputs, dtype=np.float64)
        F = self.mean.shape[0]
        if X.ndim == 0 or X.shape[-1] != F:
            raise ValueError(f"outputs must have {F} features (the probe's flattened predictions) in the last "
                             f"axis, got shape {X.shape}")
        return (X - self.mean) @ self.components.T


def joint_trajectory_pca(trajectories, template=None, probe=None, *, references: dict | None = None,
                         n_components: int = 3, labels=None) -> JointTrajectoryPCA:
    r"""Joint trajectory PCA: **one** PCA of the outputs of several training runs on a shared probe set.

    Essential dynamics (:func:`essential_dynamics`) gives each run its own principal axes; to compare runs --
    Carroll et al. (2025) train one transformer per task diversity :math:`M` -- stack all runs' output rows
    :math:`X = [X_1; \dots; X_R]` (each :math:`X_r` is ``checkpoints × features``, :func:`model_outputs`),
    centre by the mean row :math:`\bar x`, take the top right singular vectors :math:`V_k`, and place every run
    in the same space, :math:`P_r = (X_r - \bar x) V_k^\top`. Reference predictors on the same probe (ridge,
    dMMSE) are projected the same way, :math:`(y_{\rm ref} - \bar x) V_k^\top`, so one can see which of them a
    run approaches. Sign convention: each component sums to > 0 (as in :func:`essential_dynamics`).

    Parameters
    ----------
    trajectories : list
        One entry per run: a :class:`~slt_companion.train.Trajectory` (then ``template`` and ``probe`` are
        needed) or an already computed ``(C_r, F)`` array of outputs.
    template : nn.Module or list of nn.Module, optional
        A model of each run's architecture (one for all, or one per run).
    probe : tensor, optional
        The shared probe inputs (e.g. ``icl_regression(n).tokens``).
    references : dict, optional
        ``name -> predictions on the probe`` (any shape with ``F`` elements, e.g. ``(B, K)``).
    n_components : int
        Number of principal components.
    labels : list, optional
        A label per run (default ``0, 1, ...``).

    Returns
    -------
    JointTrajectoryPCA
    """
    if isinstance(trajectories, (np.ndarray, torch.Tensor)) or not hasattr(trajectories, "__len__") or \
            len(trajectories) == 0:
        raise ValueError("trajectories must be a non-empty list of Trajectory objects or (checkpoints, features) "
                         "arrays, one per run")
    R = len(trajectories)
    templates = template if isinstance(template, (list, tuple)) else [template] * R
    if len(templates) != R:
        raise ValueError(f"template is a list of {len(templates)} models but there are {R} trajectories; pass one "
                         "template for all or one per run")
    rows = []
    for r, (tr, tm) in enumerate(zip(trajectories, templates)):
        if hasattr(tr, "model_at"):
            if tm is None or probe is None:
                raise ValueError(f"trajectories[{r}] is a Trajectory: pass template= (the model class trained) and "
                                 "probe= (the shared probe inputs)")
            rows.append(model_outputs(tr, tm, probe))
        else:
            X = np.asarray(tr, dtype=np.float64)
            if X.ndim != 2:
                raise ValueError(f"trajectories[{r}] must be (checkpoints, features), got shape {X.shape}")
            rows.append(X)
    F = rows[0].shape[1]
    for r, X in enumerate(rows):
        if X.shape[1] != F:
            raise ValueError(f"all runs need outputs on the same probe: trajectories[{r}] has {X.shape[1]} "
                             f"features, trajectories[0] has {F}")
        if not np.all(np.isfinite(X)):
            raise ValueError(f"trajectories[{r}] outputs contain NaN or inf; a checkpoint diverged")
    allX = np.concatenate(rows, axis=0)
    if isinstance(n_components, bool) or int(n_components) != n_components or \
            not 1 <= n_components <= min(allX.shape):
        raise ValueError(f"n_components must be an integer in [1, {min(allX.shape)}], got {n_components!r}")
    labels = list(range(R)) if labels is None else list(labels)
    if len(labels) != R:
        raise ValueError(f"labels has {len(labels)} entries but there are {R} trajectories")
    mean = allX.mean(0)
    U, S, Vt = np.linalg.svd(allX - mean, full_matrices=False)
    k = int(n_components)
    sign = _component_signs(Vt[:k])
    comps = Vt[:k] * sign[:, None]
    evr = S[:k] ** 2 / max(float((S ** 2).sum()), 1e-300)
    out = JointTrajectoryPCA(pcs=[(X - mean) @ comps.T for X in rows], labels=labels, references={},
                             explained_variance_ratio=evr, components=comps, mean=mean)
    for name, ref in (references or {}).items():
        v = ref.detach().double().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, np.float64)
        if v.size != F:
            raise ValueError(f"references[{name!r}] has {v.size} values but the outputs have {F} features; "
                             "compute it on the same probe")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"references[{name!r}] holds NaN or inf; compute it again")
        out.references[name] = out.project(v.reshape(F))
    return out


__all__ += ["joint_trajectory_pca", "JointTrajectoryPCA"]
