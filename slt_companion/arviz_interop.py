r"""An LLC estimate as an ArviZ object, so the ecosystem's summaries and plots work on SGLD draws.

:func:`to_arviz` turns an :class:`slt_companion.llc.LLCEstimate` into what ArviZ's ``from_dict`` converter
returns -- a ``posterior`` group with the per-draw :math:`\hat\lambda` values (``llc``) and the minibatch
loss (``loss``), dims ``(chain, draw)``; a ``warmup_posterior`` group with the burn-in part of the loss; and
the sampler's settings as attributes -- so ``az.summary(idata)`` and ``az.plot_trace(idata)`` run on it.

ArviZ's bulk ESS and rank-normalised split :math:`\hat R` are the same algorithms as
:func:`slt_companion.diagnostics.ess` / :func:`~slt_companion.diagnostics.rhat` and agree with them to
rounding error on the same draws (``tests/test_arviz.py``); we keep ours (NumPy only, no ArviZ needed)
and use ArviZ for its summaries and plots.

Which object comes back depends on the ArviZ installed (``arviz`` is optional, imported only here):

- the refactored ArviZ (``arviz_base`` present: arviz 1.x, or arviz-base/-stats/-plots 0.x):
  an ``xarray.DataTree`` (``arviz_base.from_dict``);
- legacy ArviZ 0.x: an ``arviz.InferenceData`` (``arviz.from_dict``).

Used in: Part II, "Estimating λ and knowing when to trust it".
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_arviz"]

INSTALL_HINT = "pip install arviz==0.23.4 (the pin of requirements.txt; arviz 1.x needs Python ≥ 3.12)"


def _attrs(estimate) -> dict:
    """The sampler's settings as netCDF-safe attributes (numbers and strings only)."""
    cfg = estimate.config
    step = cfg.step_size
    attrs = {
        "inference_library": "slt_companion (SGLD)",
        "step_size": [float(s) for s in step] if isinstance(step, (tuple, list)) else float(step),
        "nbeta": float(cfg.nbeta),
        "localization": float(cfg.localization),
        "num_chains": int(cfg.num_chains),
        "num_draws": int(cfg.num_draws),
        "num_burnin": int(cfg.num_burnin),
        "batch_size": int(cfg.batch_size),
        "preconditioner": str(cfg.preconditioner or "none"),
        "seed": int(cfg.seed),
        "init_loss": float(estimate.init_loss),
        "llc_mean": float(estimate.mean),
        "llc_ess_bulk": float(estimate.ess),
        "llc_rhat": float(estimate.rhat),
    }
    for name in ("baseline", "stop_reason", "seconds"):
        if hasattr(estimate, name):
            value = getattr(estimate, name)
            attrs[name] = float(value) if isinstance(value, (int, float)) else str(value)
    return attrs


def to_arviz(estimate):
    """The draws of an :class:`~slt_companion.llc.LLCEstimate` as an ArviZ object (see the module docstring).

    Groups: ``posterior`` with ``llc`` (``estimate.llc_trace``) and ``loss`` (the post-burn-in part of
    ``estimate.trace``), both ``(chain, draw)``; ``warmup_posterior`` with the burn-in ``loss`` (if there was
    burn-in). Every group carries the sampler's settings (step size, nβ, localization, chains, draws, burn-in,
    batch size, seed, ``init_loss``) as attributes.

    Returns an ``xarray.DataTree`` with the refactored ArviZ (``arviz_base``), an ``arviz.InferenceData`` with
    legacy ArviZ 0.x. Raises ``ImportError`` if ArviZ is not installed.
    """
    try:
        import arviz_base as converter
    except ImportError:
        try:
            import warnings

            with warnings.catch_warnings():   # arviz 0.23 announces its 1.x refactor on import
                warnings.simplefilter("ignore", FutureWarning)
                import arviz as converter
        except ImportError as err:
            raise ImportError(f"to_arviz needs ArviZ, which is not installed: {INSTALL_HINT}") from err
    burn = int(estimate.config.num_burnin)
    llc = np.asarray(estimate.llc_trace, dtype=float)
    trace = np.asarray(estimate.trace, dtype=float)
    if llc.ndim != 2 or trace.ndim != 2 or trace.shape != (llc.shape[0], burn + llc.shape[1]):
        raise ValueError(f"llc_trace {llc.shape} and trace {trace.shape} do not match (chains, draws) "
                         f"with {burn} burn-in steps")
    posterior = {"llc": llc, "loss": trace[:, burn:]}
    warmup = {"loss": trace[:, :burn]} if burn > 0 else None
    attrs = _attrs(estimate)
    if converter.__name__ == "arviz_base":   # refactored API: one nested dict, a DataTree back
        data = {"posterior": posterior}
        group_attrs = {"posterior": attrs}
        if warmup is not None:
            data["warmup_posterior"] = warmup
            group_attrs["warmup_posterior"] = attrs
        return converter.from_dict(data, save_warmup=True, attrs=group_attrs)
    return converter.from_dict(posterior=posterior, warmup_posterior=warmup, save_warmup=True,  # legacy 0.x
                               posterior_attrs=attrs, posterior_warmup_attrs=dict(attrs), attrs=dict(attrs))
