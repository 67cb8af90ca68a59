"""Is a drawn figure readable? Nothing cut at the canvas edges, no tick labels on top of
each other, no text on top of other text.

Used by the tests of every figure the toolkit makes. A figure is drawn once on an Agg
canvas at the resolution the command line saves PNGs with (150 dpi); text metrics are the
same font metrics that the PDF and SVG backends use, so what fits here fits there.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

DPI = 150
_TOLERANCE_PX = 0.5  # rounding of glyph extents


def _drawn(artist) -> bool:
    """Visible, and every parent up to the figure visible (a hidden axes hides its texts)."""
    while artist is not None:
        if not artist.get_visible():
            return False
        parent = getattr(artist, "axes", None)
        artist = parent if parent is not artist else None
    return True


def _tick_labels(axis: Axis) -> list[Text]:
    """The tick labels the axis draws: the ticks inside the view interval, labels on."""
    low, high = sorted(axis.get_view_interval())
    span = (high - low) or 1.0
    labels = []
    for ticks in (axis.get_major_ticks(), axis.get_minor_ticks()):
        for tick in ticks:
            loc = tick.get_loc()
            if loc is None or not (low - 1e-10 * span <= loc <= high + 1e-10 * span):
                continue
            labels += [t for t in (tick.label1, tick.label2) if _shown(t)]
    return labels


def _shown(text: Text) -> bool:
    return _drawn(text) and bool(text.get_text().strip())


def _all_ticks(fig: Figure) -> set[int]:
    out = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in [*axis.majorTicks, *axis.minorTicks]:
                out |= {id(tick.label1), id(tick.label2)}
    return out


def drawn_texts(fig: Figure) -> list[Text]:
    """Every text the figure draws: titles, labels, drawn tick labels, legends, annotations."""
    ticks = _all_ticks(fig)
    texts = [t for t in fig.findobj(Text) if id(t) not in ticks and _shown(t)]
    for ax in fig.axes:
        if _drawn(ax) and ax.axison:
            texts += _tick_labels(ax.xaxis) + _tick_labels(ax.yaxis)
    return list({id(t): t for t in texts}.values())


def _overlaps(a: Bbox, b: Bbox) -> bool:
    t = _TOLERANCE_PX
    return a.x0 < b.x1 - t and b.x0 < a.x1 - t and a.y0 < b.y1 - t and b.y0 < a.y1 - t


def _describe(text: Text) -> str:
    return repr(text.get_text())


def problems(fig: Figure, *, dpi: int = DPI) -> list[str]:
    """What makes ``fig`` unreadable, one line per problem (empty: it is fine).

    * a text (or an axes, a legend) reaching outside the canvas;
    * two drawn tick labels of one axis overlapping;
    * any two drawn texts overlapping (titles, axis labels, labels of neighbouring
      panels, legend entries, annotations).
    """
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = canvas.get_width_height()
    canvas_box = Bbox.from_extents(0, 0, width, height)
    found = []

    def inside(box: Bbox) -> bool:
        t = _TOLERANCE_PX
        return box.x0 >= -t and box.y0 >= -t and box.x1 <= width + t and box.y1 <= height + t

    texts = drawn_texts(fig)
    boxes = {id(t): t.get_window_extent(renderer) for t in texts}
    for t in texts:
        if not inside(boxes[id(t)]):
            found.append(f"text {_describe(t)} at {boxes[id(t)].extents} leaves {canvas_box}")
    for ax in fig.axes:
        if not _drawn(ax):
            continue
        if not inside(ax.get_window_extent(renderer)):
            found.append(f"axes {ax.get_title()!r} leaves the canvas")
        legend = ax.get_legend()
        if (
            legend is not None
            and legend.get_visible()
            and not inside(legend.get_window_extent(renderer))
        ):
            found.append(f"the legend of axes {ax.get_title()!r} leaves the canvas")
        for axis in (ax.xaxis, ax.yaxis):
            labels = _tick_labels(axis) if ax.axison else []
            found += [
                f"tick labels {_describe(a)} and {_describe(b)} overlap"
                for a, b in _pairs(labels)
                if _overlaps(boxes.get(id(a)) or a.get_window_extent(renderer),
                             boxes.get(id(b)) or b.get_window_extent(renderer))
            ]  # fmt: skip
    found += [
        f"texts {_describe(a)} and {_describe(b)} overlap" for a, b in _overlapping(texts, boxes)
    ]
    return list(dict.fromkeys(found))


def _pairs(items: list) -> Iterable[tuple]:
    for i, a in enumerate(items):
        for b in items[i + 1 :]:
            yield a, b


def _overlapping(texts: list[Text], boxes: dict[int, Bbox]) -> list[tuple[Text, Text]]:
    if len(texts) < 2:
        return []
    e = np.array([boxes[id(t)].extents for t in texts])  # x0, y0, x1, y1
    t = _TOLERANCE_PX
    hit = (
        (e[:, None, 0] < e[None, :, 2] - t)
        & (e[None, :, 0] < e[:, None, 2] - t)
        & (e[:, None, 1] < e[None, :, 3] - t)
        & (e[None, :, 1] < e[:, None, 3] - t)
    )
    i, j = np.nonzero(np.triu(hit, k=1))
    return [(texts[a], texts[b]) for a, b in zip(i, j, strict=True)]


def assert_readable(fig: Figure, *, dpi: int = DPI) -> None:
    """Fail with every problem :func:`problems` finds."""
    found = problems(fig, dpi=dpi)
    assert not found, "\n".join(found)
