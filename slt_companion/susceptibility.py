r"""Susceptibilities: the linear response of posterior expectations to a change in the data,
:math:`\chi = -n\beta\,\mathrm{Cov}(\phi, \Delta L)`, from the local posterior and sampler of the LLC estimator
(Baker et al. 2025).

Used in: Part IV, "You are what you eat: data shapes structure".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .diagnostics import ess as _ess, rhat as _rhat
from .llc import (_config_from_dict, _config_to_dict, _extras_from_json, _extras_to_json, _resolve_step_size,
                  _sampling_defaults, default_nbeta)
from .sampling import SamplerConfig, _Problem, cpu_threads, sgld, threads_for

__all__ = ["susceptibility", "SusceptibilityEstimate", "loss_observable"]



def loss_observable(model: torch.nn.Module, loss_fn: Callable, data) -> Callable:
    r"""The observable :math:`\phi(w) = \ell(w; q')`: ``loss_fn(model(x), y)`` on ``data`` at parameters ``w``.

    Returns a callable of a parameter dict (see :func:`susceptibility`); with ``params=`` restricting the
    sampler to one component, it is that component's localized loss on the data slice. Used in: Part IV,
    "You are what you eat: data shapes structure".
    """
    from torch.func import functional_call

    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable as loss_fn(model(x), y), got {type(loss_fn).__name__}")
    prob = _checked_problem(model, loss_fn, data, None, None, "loss_observable's data")
    x, y = prob.x, prob.y

    def phi(p: dict) -> torch.Tensor:
        return loss_fn(functional_call(model, p, (x,)), y)

    return phi


def _checked_problem(model, loss_fn, data, params, device, what: str) -> _Problem:
    """``_Problem`` on ``data``, after the estimators' checks (dtypes, shapes that broadcast to a wrong loss, a summed
    loss, ...) on 8 rows; a failure is a ValueError that starts with ``what``."""
    try:
        prob = _Problem(model, loss_fn, data, params, device)
        prob.check(8)
    except Exception as err:
        raise ValueError(f"{what}: {err}") from err
    return prob


@dataclass
class SusceptibilityEstimate:
    r"""The result of :func:`susceptibility`: :math:`\chi[p, o] = -n\beta\,\mathrm{Cov}_\beta(\phi_o, \Delta L_p)`.

    - ``value`` ``(P, O)``: the estimate, the mean of the per-chain covariances (each chain centred on its own
      means); ``per_chain`` ``(chains, P, O)``; ``std`` ``(P, O)`` their spread across chains;
    - ``sem`` ``(P, O)``: Monte Carlo standard error, :math:`n\beta\,\mathrm{sd}(z)/\sqrt{\mathrm{ESS}(z)}` of the
      per-draw products :math:`z_t = (\phi_t - \bar\phi)(\Delta L_t - \overline{\Delta L})`;
    - ``perturbations`` (``P`` names), ``observables`` (``O`` names; a vector observable ``"f"`` gives ``"f[0]"``, ...);
    - ``observable_trace`` ``(chains, draws, O)`` and ``perturbation_trace`` ``(chains, draws, P)``: the
      per-draw :math:`\phi` and :math:`\Delta L` after burn-in (and thinning);
    - ``converged`` ``(P,)``: whether each perturbation's ΔL trace converged (R̂ ≤ 1.01, ESS ≥ 400);
    - ``mode``: ``"mixture"`` or ``"add"``; ``config``: the :class:`~slt_companion.sampling.SamplerConfig`;
      ``seconds``: sampling and evaluation wall time.
    """

    value: np.ndarray
    per_chain: np.ndarray
    std: np.ndarray
    sem: np.ndarray
    perturbations: list
    observables: list
    observable_trace: np.ndarray
    perturbation_trace: np.ndarray
    config: SamplerConfig
    mode: str = "mixture"
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)

    def __getitem__(self, key) -> float:
        """``est[perturbation_name, observable_name]`` -> :math:`\\chi` as a float."""
        if not isinstance(key, tuple) or len(key) != 2:
            raise KeyError("index with (perturbation name, observable name)")
        p, o = key
        if p not in self.perturbations or o not in self.observables:
            raise KeyError(f"unknown pair {key!r}; perturbations {self.perturbations}, observables {self.observables}")
        return float(self.value[self.perturbations.index(p), self.observables.index(o)])

    @property
    def converged(self) -> np.ndarray:
        """``(P,)`` booleans: the ΔL trace of each perturbation (which every χ in its row is a covariance with) has
        R̂ ≤ 1.01 and ESS ≥ 400; a constant or too short trace has nothing to diagnose and counts as converged (the
        rule :func:`susceptibility` warns by)."""
        return np.array([d[3] for d in _trace_diagnostics(self.perturbation_trace, self.perturbations)], dtype=bool)

    def __repr__(self) -> str:
        return (f"SusceptibilityEstimate(shape={self.value.shape}, perturbations={self.perturbations}, "
                f"observables={self.observables}, mode={self.mode!r}, chains={self.config.num_chains}, "
                f"draws={self.observable_trace.shape[1]}, nbeta={self.config.nbeta:.4g})")

    def to_dict(self) -> dict:
        """Numbers, strings and arrays only (for :func:`slt_companion.cache.cached`)."""
        return {"value": self.value, "per_chain": self.per_chain, "std": self.std, "sem": self.sem,
                "perturbations": list(self.perturbations), "observables": list(self.observables),
                "observable_trace": self.observable_trace, "perturbation_trace": self.perturbation_trace,
                "mode": self.mode, "seconds": self.seconds,
                "config": _config_to_dict(self.config), "extras_json": _extras_to_json(self.extras)}

    @classmethod
    def from_dict(cls, d: dict) -> "SusceptibilityEstimate":
        return cls(value=np.asarray(d["value"]), per_chain=np.asarray(d["per_chain"]), std=np.asarray(d["std"]),
                   sem=np.asarray(d["sem"]), perturbations=[str(s) for s in d["perturbations"]],
                   observables=[str(s) for s in d["observables"]],
                   observable_trace=np.asarray(d["observable_trace"]),
                   perturbation_trace=np.asarray(d["perturbation_trace"]), config=_config_from_dict(d["config"]),
                   mode=str(d["mode"]), seconds=float(d["seconds"]), extras=_extras_from_json(d.get("extras_json")))


def _named(obj, what: str, default_name: str, check: Callable) -> dict:
    if isinstance(obj, dict):
        if not obj:
            raise ValueError(f"{what} is an empty dict; give at least one")
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{what} keys must be strings (names), got {k!r}")
            out[k] = check(k, v)
        return out
    return {default_name: check(default_name, obj)}


def _eval_observables(prob, obs: dict, W: torch.Tensor, chunk: int = 256) -> tuple[np.ndarray, list]:
    """Every observable at every row of ``W`` (M, D) -> ``(M, O)`` float64 and the column names."""
    from torch.func import vmap

    cols, names = [], []
    for name, fn in obs.items():
        def one(p, fn=fn):
            return fn({**prob.frozen, **p})

        outs = []
        for s in range(0, W.shape[0], chunk):
            views = prob.views(W[s:s + chunk])
            try:
                with torch.no_grad():
                    val = vmap(one)(views)
            except Exception:   # an observable that vmap cannot run: one draw at a time
                with torch.no_grad():
                    val = torch.stack([torch.as_tensor(one({k: v[i] for k, v in views.items()}))
                                       for i in range(W[s:s + chunk].shape[0])])
            outs.append(torch.as_tensor(val).detach().double().cpu())
        val = torch.cat(outs)
        if val.ndim > 2:
            raise ValueError(f"observable {name!r} must return a scalar or a 1-D tensor, got shape "
                             f"{tuple(val.shape[1:])}")
        if not bool(torch.isfinite(val).all()):
            raise ValueError(f"observable {name!r} returned NaN or inf on some draws; check it (or use a smaller "
                             "step_size if the chains wandered far)")
        if val.ndim == 1:
            cols.append(val[:, None])
            names.append(name)
        elif val.shape[1] == 0:
            raise ValueError(f"observable {name!r} returned an empty tensor (shape (0,)): nothing to respond")
        else:
            cols.append(val)
            names.extend(f"{name}[{i}]" for i in range(val.shape[1]))
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two observables' columns are both named {twice} (a vector observable 'f' names its "
                         "columns 'f[0]', 'f[1]', ...): rename one of them")
    return torch.cat(cols, 1).numpy(), names


def _eval_losses(prob, W: torch.Tensor, budget: int = 2_000_000) -> np.ndarray:
    """The full-data loss of ``prob`` at every row of ``W`` (M, D) -> ``(M,)`` float64 (chunked over rows)."""
    per_row = max(1, prob.n * max(1, prob.x[0].numel()))
    chunk = max(1, budget // per_row)
    out = []
    with torch.no_grad():
        for s in range(0, W.shape[0], chunk):
            Wc = W[s:s + chunk]
            m = Wc.shape[0]
            out.append(prob.batched_losses(Wc, prob.x.expand(m, *prob.x.shape),
                                           prob.y.expand(m, *prob.y.shape)).double().cpu())
    return torch.cat(out).numpy()


def _trace_diagnostics(dL: np.ndarray, names: list) -> list:
    """``(name, R̂, ESS, converged)`` of each perturbation's ΔL trace ``dL[:, :, i]``; a trace with under 4 draws or
    no variation is not diagnosed (NaN, counted as converged)."""
    from .convergence import is_converged

    out = []
    for i, name in enumerate(names):
        tr = dL[:, :, i]
        if tr.shape[1] < 4 or np.ptp(tr) == 0:
            out.append((name, math.nan, math.nan, True))
            continue
        r, e = _rhat(tr), _ess(tr)
        out.append((name, r, e, is_converged(r, e)))
    return out


def _warn_if_unconverged(dL: np.ndarray, names: list, step_size) -> None:
    """One :class:`~slt_companion.convergence.LLCConvergenceWarning` if the ΔL trace of any perturbation (the
    quantity every χ is a covariance with) has R̂ > 1.01 or ESS < 400."""
    from .convergence import warn_unconverged

    bad = [(name, r, e) for name, r, e, ok in _trace_diagnostics(dL, names) if not ok]
    worst = max(bad, key=lambda d: d[1]) if bad else None
    if worst is not None:
        warn_unconverged(f"The susceptibility run (its ΔL trace for {worst[0]!r})", worst[1], worst[2], "fixed",
                         step_size=step_size if isinstance(step_size, float) else None)


def susceptibility(model: torch.nn.Module, loss_fn: Callable, data, perturbation_data, observables, *,
                   num_chains: int = 4, num_draws: int | None = None, num_burnin: int | None = None,
                   step_size="auto", localization: float = 1.0, nbeta: float | None = None,
                   batch_size: int = 500, params=None, seed: int = 0, device=None, progress: bool = True,
                   mode: str = "mixture", thin: int = 1) -> SusceptibilityEstimate:
    r"""Susceptibilities: how posterior expectations of observables respond to up-weighting a slice of data.

    Perturb the loss of the local tempered posterior of :func:`estimate_llc`,
    :math:`p_h(w)\propto\exp\{-n\beta\,(L_n(w) + h\,\Delta L(w)) - \frac\gamma2\|w-w^*\|^2\}`. Differentiating
    :math:`\E_h[\phi] = \int\phi\,p_h` at :math:`h = 0` gives the fluctuation--response identity

    .. math::
        \chi = \frac{d}{dh}\E_h[\phi]\Big|_{h=0} = -n\beta\,\mathrm{Cov}_{p_0}\big(\phi(w), \Delta L(w)\big),

    estimated from SGLD draws (:func:`slt_companion.sampling.sgld`, all chains at once). With
    ``mode="mixture"`` (default) :math:`\Delta L = L_{q'} - L_n`, the data distribution moved towards the slice
    :math:`q'`, :math:`q_h = (1-h)q + hq'` (Baker et al. 2025, "Structural inference: interpreting small
    language models with susceptibilities", up to their normalisation); with ``mode="add"``
    :math:`\Delta L = L_{q'}`, the slice's weight increased on top of the data. :math:`\chi < 0`: more of
    :math:`q'` lowers :math:`\E[\phi]`.

    Parameters
    ----------
    model, loss_fn, data, num_chains, num_draws, num_burnin, step_size, localization, nbeta, batch_size, params, seed, device, progress
        As in :func:`estimate_llc`: the posterior is the one whose LLC it estimates, centred at the model's
        current parameters.
    perturbation_data : ``(x, y)`` (or a ``TensorDataset``/object with ``.xy``), or a dict ``name -> data`` to
        get several susceptibilities from one sampling run. :math:`L_{q'}(w)` is evaluated on *all* of it at
        every draw.
    observables : a callable ``phi(p) -> tensor`` or a dict ``name -> phi``. ``p`` is a dict of the model's
        parameters (and buffers) by name, as in ``model.named_parameters()``; those being sampled hold the
        draw, the others their values at :math:`w^*`. ``phi`` returns a scalar or a 1-D tensor (one
        susceptibility per entry); it is run under ``torch.func.vmap`` over draws when it can be (else one
        draw at a time). :func:`loss_observable` builds a loss on a data set;
        ``torch.func.functional_call(model, p, (x,))`` evaluates the model at ``p``.
    mode : ``"mixture"`` or ``"add"`` (above).
    thin : use every ``thin``-th draw (the sampler still takes every step).

    Returns
    -------
    SusceptibilityEstimate
        ``value[p, o]`` for perturbation ``p`` and observable column ``o``, with per-chain values, standard
        errors and the configuration.

    Raises
    ------
    ValueError
        A bad argument, named, before sampling starts (and non-finite observables after it).

    Notes
    -----
    The sampler records every state (``chains × steps × parameters`` float64 numbers), so this is meant for
    small models or for ``params=`` restricted to a component. Used in: Part IV, "You are what you eat: data
    shapes structure" (validated there against the closed form of a linear-Gaussian model).
    """
    if mode not in ("mixture", "add"):
        raise ValueError(f"mode must be 'mixture' (ΔL = L_q' − L_n) or 'add' (ΔL = L_q'), got {mode!r}")
    if isinstance(thin, bool) or not isinstance(thin, (int, np.integer)) or thin < 1:
        raise ValueError(f"thin must be an integer ≥ 1, got {thin!r}")
    num_draws, num_burnin, device = _sampling_defaults(model, num_draws, num_burnin, device, auto_ok=False)
    if isinstance(num_draws, (int, np.integer)) and not isinstance(num_draws, bool) and num_draws // thin < 4:
        raise ValueError(f"num_draws // thin must be at least 4 to estimate a covariance, got "
                         f"num_draws={num_draws}, thin={thin}")
    prob = _Problem(model, loss_fn, data, params, device)
    if nbeta is None:
        nbeta = default_nbeta(prob.n)
    SamplerConfig(step_size=1.0, nbeta=nbeta, localization=localization, num_chains=num_chains,
                  num_draws=num_draws, num_burnin=num_burnin, batch_size=batch_size, seed=seed)

    def check_data(name, d):
        return _checked_problem(model, loss_fn, d, params, prob.device, f"perturbation_data[{name!r}]")

    def check_obs(name, fn):
        if not callable(fn):
            raise ValueError(f"observables[{name!r}] must be a callable phi(params_dict) -> tensor, "
                             f"got {type(fn).__name__}")
        return fn

    perts = _named(perturbation_data, "perturbation_data", "q'", check_data)
    obs = _named(observables, "observables", "phi", check_obs)
    # evaluate the observables once at w* so that a broken one fails before sampling
    _eval_observables(prob, obs, prob.center[None])
    with cpu_threads(threads_for(prob, num_chains, batch_size)):
        prob.check(batch_size)
        step_size, extras = _resolve_step_size(prob, step_size, nbeta=nbeta, localization=localization,
                                               batch_size=batch_size, seed=seed)
        cfg = SamplerConfig(step_size=step_size, nbeta=float(nbeta), localization=float(localization),
                            num_chains=int(num_chains), num_draws=int(num_draws), num_burnin=int(num_burnin),
                            batch_size=int(batch_size), seed=int(seed))
        t0 = time.perf_counter()
        res = sgld(model, loss_fn, None, cfg, progress=progress, center_loss=False, record_params=True,
                   num_threads=None, _problem=prob)
        kept = res.params[:, cfg.num_burnin::thin]                          # (C, T, D) float64
        C, T = kept.shape[:2]
        W = kept.reshape(C * T, -1).to(device=prob.device, dtype=prob.dtype)
        phi, names = _eval_observables(prob, obs, W)
        base = _eval_losses(prob, W) if mode == "mixture" else 0.0
        dL = np.stack([_eval_losses(p, W) - base for p in perts.values()], 1)
    phi = phi.reshape(C, T, -1)
    dL = dL.reshape(C, T, -1)
    pc = phi - phi.mean(1, keepdims=True)
    lc = dL - dL.mean(1, keepdims=True)
    z = lc[:, :, :, None] * pc[:, :, None, :]                               # (C, T, P, O)
    per_chain = -cfg.nbeta * z.sum(1) / (T - 1)
    value = per_chain.mean(0)
    std = per_chain.std(0, ddof=1) if C > 1 else np.full(value.shape, np.nan)
    sem = np.full(value.shape, np.nan)
    for i in range(z.shape[2]):
        for j in range(z.shape[3]):
            zz = z[:, :, i, j]
            if np.ptp(zz) > 0:
                e = _ess(zz)
                if e == e and e > 0:
                    sem[i, j] = cfg.nbeta * zz.std(ddof=1) / math.sqrt(e)
    _warn_if_unconverged(dL, list(perts), cfg.step_size)
    return SusceptibilityEstimate(value=value, per_chain=per_chain, std=std, sem=sem, perturbations=list(perts),
                                  observables=names, observable_trace=phi, perturbation_trace=dL, config=cfg,
                                  mode=mode, seconds=time.perf_counter() - t0, extras=extras)
