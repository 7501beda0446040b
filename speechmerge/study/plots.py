"""The report's plots as PNG bytes, drawn with matplotlib's object-oriented API on the Agg canvas
(no pyplot, no global backend switch; matplotlib is imported only when a plot is drawn).

Each function takes plain numbers prepared by the report and returns one PNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

DPI = 110
MERGE_COLOUR = "#3b6fb6"
REFERENCE_COLOUR = "#b0b0b0"
LABEL_ITERATIONS = 1000


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def ranking_bars(names: Sequence[str], values: Sequence[float], is_reference: Sequence[bool], label: str) -> bytes:
    """Horizontal bars, best at the top; reference lines (base, experts, baselines) in grey."""
    order = sorted(range(len(names)), key=lambda i: values[i])
    figure = _figure(7, 0.9 + 0.32 * len(names))
    axes = figure.add_subplot()
    colours = [REFERENCE_COLOUR if is_reference[i] else MERGE_COLOUR for i in order]
    bars = axes.barh([names[i] for i in order], [values[i] for i in order], color=colours)
    axes.bar_label(bars, labels=[f"{values[i]:.1f}" for i in order], padding=2, fontsize=8)
    axes.axvline(100, color="#444", linewidth=0.8, linestyle="--")
    axes.set_xlabel(label)
    axes.margins(x=0.12)
    return _png(figure)


def heatmap(
    row_names: Sequence[str], column_names: Sequence[str], values: Sequence[Sequence[float | None]], label: str
) -> bytes:
    """A row x column grid of values (None shown blank), each cell annotated when the grid is small."""
    import numpy as np

    grid = np.array([[math.nan if v is None else v for v in row] for row in values], dtype=float)
    figure = _figure(1.6 + 0.62 * len(column_names), 1.0 + 0.34 * len(row_names))
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(column_names)), column_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(row_names)), row_names, fontsize=8)
    if grid.size <= 600:
        finite = grid[np.isfinite(grid)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for (r, c), value in np.ndenumerate(grid):
            if math.isfinite(value):
                axes.text(
                    c,
                    r,
                    f"{value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value < middle else "black",
                )
    figure.colorbar(image, ax=axes, label=label)
    return _png(figure)


def scatter(points: Sequence[tuple[str, float, float, bool]], x_label: str, y_label: str) -> bytes:
    """One labelled point per (name, x, y, is_reference); references in grey squares."""
    return _png(scatter_figure(points, x_label, y_label))


def scatter_figure(points: Sequence[tuple[str, float, float, bool]], x_label: str, y_label: str):
    """The scatter's figure. Labels are moved apart until none overlaps another (adjustText), a
    thin line joining a moved label to its point."""
    figure = _figure(6.5, 5)
    axes = figure.add_subplot()
    for _, x, y, is_reference in points:
        axes.scatter(
            [x],
            [y],
            marker="s" if is_reference else "o",
            color=REFERENCE_COLOUR if is_reference else MERGE_COLOUR,
            zorder=3,
        )
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.margins(0.15)
    axes.grid(alpha=0.3)
    labels = [axes.text(x, y, name, fontsize=8) for name, x, y, _ in points]
    place_labels(axes, labels, [p[1] for p in points], [p[2] for p in points])
    return figure


def place_labels(axes, labels: list, xs: Sequence[float], ys: Sequence[float]) -> None:
    """Move text labels apart, and off the points, with adjustText's repulsion: a fixed number of
    iterations from its seeded random start, so the same plot always comes out the same. Its
    crossing removal is off: it swaps labels after the overlap test and can put two back on each other."""
    from adjustText import adjust_text

    figure = axes.figure
    figure.draw_without_rendering()  # the constrained layout settles the axes before labels move
    figure.set_layout_engine("none")  # and keeps them there, so the placement holds in the PNG
    adjust_text(
        labels,
        x=list(xs),
        y=list(ys),
        ax=axes,
        iter_lim=LABEL_ITERATIONS,
        prevent_crossings=False,
        force_text=(0.5, 1.0),
        force_static=(0.3, 0.5),
        force_pull=(0.001, 0.001),
        expand=(1.2, 1.6),
        arrowprops={"arrowstyle": "-", "color": "#888888", "linewidth": 0.5},
    )


def curves(
    parameter: str, panels: Sequence[tuple[str, dict[str, list[tuple[object, float]]]]], chosen: dict[str, object]
) -> bytes:
    """One panel per (y label, {method: [(parameter value, y)]}), one line per method (its own colour
    and marker, one legend for the figure), each method's `chosen` value ringed. Numeric parameter
    values make a numeric axis; otherwise the values are categories in sorted order."""
    from matplotlib import colormaps

    methods = sorted({method for _, series in panels for method in series})
    palette = colormaps["tab20"].colors
    styles = {method: (palette[i % len(palette)], "os^Dv<>p"[i % 8]) for i, method in enumerate(methods)}
    figure = _figure(4.6 * len(panels) + 1.8, 4)
    handles = {}
    for index, (label, series) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        xs = sorted({x for points in series.values() for x, _ in points}, key=str)
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        for method, points in sorted(series.items()):
            colour, marker = styles[method]
            points = sorted(points, key=lambda p: p[0] if numeric else xs.index(p[0]))
            positions = [x if numeric else xs.index(x) for x, _ in points]
            (handles[method],) = axes.plot(positions, [y for _, y in points], marker=marker, color=colour, label=method)
            ringed = [
                (position, y) for position, (x, y) in zip(positions, points) if method in chosen and x == chosen[method]
            ]
            if ringed:
                axes.scatter(*zip(*ringed), s=160, facecolors="none", edgecolors=colour, linewidths=1.5, zorder=3)
        if not numeric:
            axes.set_xticks(range(len(xs)), [str(x) for x in xs])
        axes.set_xlabel(parameter)
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    figure.legend([handles[m] for m in methods], methods, loc="outside right upper", fontsize=7)
    return _png(figure)
