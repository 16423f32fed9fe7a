"""slt_companion: the companion library of *Singular Learning Theory, by running it*.

Every number in the book is computed by a function in this package. Modules, one idea each:

- :mod:`slt_companion.config`   -- ``QUICK`` (from ``SLT_QUICK``), ``default_device()``, ``size()``
- :mod:`slt_companion.cache`    -- results on disk keyed by config + package version
- :mod:`slt_companion.plot`     -- the book's figure style and reusable plots
- :mod:`slt_companion.symbolic` -- exact computations with SymPy (Fisher information, ...)
- :mod:`slt_companion.bayes`    -- exact Bayesian posteriors and free energies of low-dimensional models
"""

__version__ = "0.1.0"

from . import config  # noqa: E402  (cheap; everything else is imported on demand)

__all__ = ["__version__", "config"]
