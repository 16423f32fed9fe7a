"""Regenerate book/images/free_energy_vs_bic.png, the README's figure (the same computation as Chapter 1).

    .venv/bin/python book/images/make_readme_figure.py

The fitted slope is asserted, as in the chapter, so the figure cannot show a wrong estimate.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from slt_companion import plot as slt_plot  # noqa: E402
from slt_companion.bayes import ProductModel, fit_free_energy  # noqa: E402
from slt_companion.theory import bic, free_energy  # noqa: E402

ns = np.unique(np.logspace(1, 9, 33).astype(int))
F = np.array([ProductModel(true_product=0.5).free_energy(int(n)) for n in ns])
fit = fit_free_energy(ns[ns >= 1000], F[ns >= 1000], multiplicity=1)
assert abs(fit["lam"] - 0.5) < 0.02, fit

fig, ax = slt_plot.new_figure(width=6.0, height=3.6)
ax.plot(np.log(ns), F, "o", ms=4, label=r"Bayes free energy $F^0_n$ (exact quadrature)")
ax.plot(np.log(ns), free_energy(ns, 0.0, 0.5) + fit["intercept"], color=slt_plot.COLORS["theory"], ls="--",
        label=rf"Watanabe: $\lambda\log n$, $\lambda = 1/2$ (fit: {fit['lam']:.3f})")
ax.plot(np.log(ns), bic(ns, 0.0, 2), color=slt_plot.COLORS["regular"], ls="-.",
        label=r"BIC: $\frac{d}{2}\log n$, $d = 2$")
ax.set_xlabel(r"$\log n$")
ax.set_ylabel("free energy (nats)")
ax.set_title(r"$y = abx + \varepsilon$: a singular model's free energy grows like $\frac{1}{2}\log n$, not $\log n$")
ax.title.set_fontsize(9.5)
ax.legend(fontsize=8.5)
out = Path(__file__).with_name("free_energy_vs_bic.png")
fig.savefig(out, dpi=110)
print(f"wrote {out} (fitted lambda = {fit['lam']:.4f})")
