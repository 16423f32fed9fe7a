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
