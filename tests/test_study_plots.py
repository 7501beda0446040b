"""The report's in-domain against out-of-domain scatter: labels of nearly coincident points are
placed apart (their boxes, measured by matplotlib's renderer, do not overlap), the same way on
every run."""

from __future__ import annotations

from speechmerge.study import plots

NAMES = [
    "model_stock",
    "iso_cts",
    "lors_mp",
    "ties",
    "dare",
    "soup",
    "karcher",
    "multislerp",
    "task_arithmetic",
    "breadcrumbs",
    "pcb",
    "tsv_m",
    "boosted_tsv_m",
    "lors",
    "lors_svp",
    "della",
    "sce",
    "emr",
]
# the merges within 0.02 points of each other (as on the demo), the references far off
POINTS = [(name, 50.0 + 0.001 * i, 51.0 + 0.001 * (i % 4), False) for i, name in enumerate(NAMES)] + [
    ("base (base)", 58.0, 60.0, True),
    ("experts (own sets)", 45.0, 47.0, True),
    ("baseline: joint", 52.0, 49.0, True),
]


def label_boxes(figure) -> dict[str, object]:
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    return {text.get_text(): text.get_window_extent(renderer) for text in figure.axes[0].texts}


def overlapping(boxes: dict) -> list[tuple[str, str]]:
    names = list(boxes)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if boxes[a].overlaps(boxes[b])]


def test_labels_left_where_their_points_are_would_overlap(monkeypatch):
    """The case is hard: without placement, the labels are drawn over each other."""
    monkeypatch.setattr(plots, "place_labels", lambda *args: None)
    assert len(overlapping(label_boxes(plots.scatter_figure(POINTS, "x", "y")))) > 10


def test_labels_of_nearly_coincident_points_do_not_overlap():
    figure = plots.scatter_figure(POINTS, "in-domain WER % ↓", "out-of-domain WER % ↓")
    boxes = label_boxes(figure)
    assert sorted(boxes) == sorted(name for name, *_ in POINTS)
    assert overlapping(boxes) == []
    # and every label stays inside the axes
    frame = figure.axes[0].get_window_extent(figure.canvas.get_renderer())
    assert all(
        frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        for box in boxes.values()
    )


def test_the_placement_is_the_same_on_every_run():
    first = plots.scatter(POINTS[:6], "x", "y")
    assert plots.scatter(POINTS[:6], "x", "y") == first
