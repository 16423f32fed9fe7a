"""The book's figure style and small reusable plots.

Convention: labelled axes with units, the theory line drawn beside every estimate
(:func:`theory_line`), one colour per idea (:data:`COLORS`).
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

#: Named colours used across the book (colour-blind safe, Okabe-Ito).
COLORS = {
    "estimate": "#0072B2",  # blue: what we measured
    "theory": "#D55E00",    # vermillion: what theory says
    "regular": "#009E73",   # green: the regular (BIC / Laplace) answer
    "accent": "#CC79A7",    # purple
    "muted": "#999999",     # grey
    "yellow": "#E69F00",
}

STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10.5,
    "axes.titlesize": 11,
    "axes.labelsize": 10.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "image.cmap": "viridis",
    "axes.prop_cycle": mpl.cycler(color=[COLORS[k] for k in ("estimate", "theory", "regular",
                                                             "accent", "yellow", "muted")]),
}


def use_book_style() -> None:
    """Apply the book's matplotlib style (call once at the top of a chapter)."""
    mpl.rcParams.update(STYLE)


def theory_line(ax, value: float, label: str, *, orientation: str = "horizontal", **kwargs):
    """Draw a dashed reference line at ``value`` labelled ``label`` (the theory beside the estimate)."""
    style = {"color": COLORS["theory"], "linestyle": "--", "linewidth": 1.5, "label": label}
    style.update(kwargs)
    if orientation == "horizontal":
        return ax.axhline(value, **style)
    if orientation == "vertical":
        return ax.axvline(value, **style)
    raise ValueError(f"orientation must be 'horizontal' or 'vertical', got {orientation!r}")


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float | None = None, height: float | None = None,
               **kwargs):
    """``plt.subplots`` in the book style, sized by panel count unless ``width``/``height`` are given."""
    use_book_style()
    w = width if width is not None else min(3.4 * ncols + 0.6, 13.0)
    h = height if height is not None else 3.2 * nrows + 0.4
    return plt.subplots(nrows, ncols, figsize=(w, h), **kwargs)


def llc_curve(ax, steps, mean, err=None, converged=None, *, label: str = r"$\hat\lambda(w_t)$", color=None,
              **kwargs):
    r"""An LLC curve over training with its error band, **unconverged checkpoints drawn hollow**.

    ``converged`` (a boolean per checkpoint, e.g. ``llc_over_trajectory(...)["converged"]``) marks the estimates
    whose chains reached R̂ ≤ 1.01 and ESS ≥ 400; the others are not results (:mod:`slt_companion.convergence`)
    and get open markers and their own legend entry, so a reader never mistakes them for measurements. Returns the
    number of unconverged points drawn.
    """
    import numpy as np

    steps, mean = np.asarray(steps), np.asarray(mean, dtype=float)
    color = COLORS["estimate"] if color is None else color
    if err is not None:
        err = np.asarray(err, dtype=float)
        ax.fill_between(steps, mean - err, mean + err, color=color, alpha=0.2, lw=0)
    ok = np.ones(len(mean), dtype=bool) if converged is None else np.asarray(converged, dtype=bool)
    ax.plot(steps, mean, "-", color=color, lw=1.2, **kwargs)
    ax.plot(steps[ok], mean[ok], "o", ms=3.5, color=color, label=label)
    if (~ok).any():
        ax.plot(steps[~ok], mean[~ok], "o", ms=5, mfc="white", mec=color, mew=1.2,
                label=r"not converged ($\hat R > 1.01$ or ESS $< 400$)")
    return int((~ok).sum())
