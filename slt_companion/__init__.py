"""slt_companion: the companion library of *Singular Learning Theory, by running it*.

Every number in the book is computed by a function in this package. Modules, one idea each:

- :mod:`slt_companion.config`   -- ``QUICK`` (from ``SLT_QUICK``), ``default_device()``, ``size()``
- :mod:`slt_companion.cache`    -- results on disk keyed by config + package version
- :mod:`slt_companion.plot`     -- the book's figure style and reusable plots
- :mod:`slt_companion.symbolic` -- exact computations with SymPy: Fisher information, ``rlct``, Newton polyhedra, blow-ups
- :mod:`slt_companion.theory`   -- closed forms from the literature: free energy, ``rrr_rlct``, ``dln_rlct``
- :mod:`slt_companion.volume`   -- volume scaling V(eps) and free energies by quadrature
- :mod:`slt_companion.bayes`    -- exact Bayesian posteriors and free energies of low-dimensional models
- :mod:`slt_companion.sampling` -- SGLD over many chains at once (vmap over a stacked chain dimension)
- :mod:`slt_companion.llc`      -- ``estimate_llc``: the local learning coefficient and its diagnostics
- :mod:`slt_companion.convergence` -- ``num_draws="auto"``: sample until split-R-hat and ESS say the chains agree
- :mod:`slt_companion.arviz_interop` -- ``LLCEstimate.to_arviz()``: SGLD draws as an ArviZ ``InferenceData``
- :mod:`slt_companion.stepsize` -- the automatic SGLD step size (``step_size="auto"``)
- :mod:`slt_companion.groundtruth` -- the ground-truth suite: models whose λ is known exactly
- :mod:`slt_companion.calibration` -- λ̂ over a grid of step sizes and localisations
- :mod:`slt_companion.susceptibility` -- susceptibilities: posterior response to up-weighting data
- :mod:`slt_companion.diagnostics` -- ESS, R-hat, divergence detection
- :mod:`slt_companion.models`   -- the book's models (deep linear networks, the toy model of superposition, ...)
- :mod:`slt_companion.tms`      -- the toy model of superposition's k-gon critical points
- :mod:`slt_companion.interventions` -- the TMS trained on data whose feature frequencies are changed
- :mod:`slt_companion.predictors` -- the ridge and dMMSE predictors of in-context linear regression
- :mod:`slt_companion.heads`    -- what attention heads do: previous-token, induction and in-context-learning scores
- :mod:`slt_companion.data`     -- data generators for every experiment
- :mod:`slt_companion.train`    -- training with log-spaced checkpoints (``train() -> Trajectory``)
- :mod:`slt_companion.dynamics` -- LLC over a trajectory, stage boundaries, essential dynamics
- :mod:`slt_companion.optim`    -- optimizers compared in the book (Entropy-SGD)
- :mod:`slt_companion.program_synthesis` -- a smoothed Turing machine whose KL divergence is singular
- :mod:`slt_companion.simplicial` -- 2-simplicial attention and its scalar triple product
- :mod:`slt_companion.replicate` -- ``replicate(fn, seeds)``: a claim rerun over seeds, cached per seed
- :mod:`slt_companion.distributed` -- sharding checkpoints over ``torchrun`` processes (gloo on CPU, NCCL on GPU)
- :mod:`slt_companion.llc_trajectory` -- the command line: λ̂ at saved checkpoints (``python -m slt_companion.llc_trajectory``)
"""

__version__ = "0.1.0"

from . import config  # noqa: E402  (cheap; everything else is imported on demand)

__all__ = ["__version__", "config"]
