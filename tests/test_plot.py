"""slt_companion.plot: the book's style is applied and the theory line is drawn where asked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from slt_companion import plot  # noqa: E402


def test_use_book_style_sets_rcparams():
    plt.rcdefaults()
    plot.use_book_style()
    assert matplotlib.rcParams["axes.spines.top"] is False
    assert matplotlib.rcParams["axes.grid"] is True
    first = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][0]
    assert first.lower() == plot.COLORS["estimate"].lower()


def test_new_figure_sizes_by_panels():
    fig, axes = plot.new_figure(3, 2)
    try:
        assert axes.shape == (2, 3)
        w, h = fig.get_size_inches()
        assert w > h > 0 and w == pytest.approx(3.4 * 3 + 0.6)
    finally:
        plt.close(fig)


def test_theory_line_horizontal_and_vertical():
    fig, ax = plot.new_figure()
    try:
        h = plot.theory_line(ax, 0.5, "λ = 1/2")
        v = plot.theory_line(ax, 2.0, "n*", orientation="vertical")
        assert h.get_ydata()[0] == 0.5 and h.get_label() == "λ = 1/2" and h.get_linestyle() == "--"
        assert v.get_xdata()[0] == 2.0
        with pytest.raises(ValueError, match="orientation"):
            plot.theory_line(ax, 1.0, "x", orientation="diagonal")
    finally:
        plt.close(fig)
