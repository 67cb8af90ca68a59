"""Reuse table → matplotlib figures (the paper's Figure 5 and the report's small plots).

Never imports torch: everything here reads the tidy DataFrame that
:func:`reuse_analysis.metrics.reuse_table` (or a data-driven metric) returns, one row per
block, source and target, through its value column (:func:`reuse_analysis.tables.value_column`),
so every metric draws the same way.
Functions that draw one thing take ``ax`` and return it (seaborn style); the figure
builders return a :class:`matplotlib.figure.Figure` without touching pyplot's state.

seaborn draws the statistical plots (values with bootstrap intervals, distributions, grouped
bars, lines with a spread band), imported inside them so that ``reuse-analysis heatmap``
does not pay for it. The heatmap stays on ``imshow``: ``sns.heatmap`` draws one colour bar
per axes (Figure 5 shares one), a mesh instead of an image, and adds its import (~0.2 s)
to the command's latency budget. Heatmap margins are measured on the drawn labels, so
nothing is cut at the figure's edges.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import Bbox

from reuse_analysis.tables import KEYS, table_metric, value_column

NORMALIZE_MODES = ("column", "none", "global")
STYLES = ("default", "paper")
_REQUIRED = [*KEYS, "normalized"]
_SCALING = {
    "column": " (each target column min–max scaled)",
    "global": " (min–max over all blocks)",
    "none": "",
}
_EXTRA_LABELS = {"transition": "T", "classifier": "C"}
_ANNOTATE_MAX_LAYERS = 8
_ANNOTATE_MIN_CELL = 0.25  # inches: "0.00" at 6 points needs this much


def _check(df: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"reuse table lacks the columns {', '.join(missing)}")
    value_column(df)
    if df.empty:
        raise ValueError("reuse table is empty: nothing to plot")


def bar_label(df: pd.DataFrame, normalize: str) -> str:
    """Colour-bar label: what the table's metric measures and how it is scaled."""
    return table_metric(df).label + _SCALING[normalize]


def display_values(df: pd.DataFrame, normalize: str = "column") -> pd.Series:
    """The values the heatmap shows: column min–max, raw, or one min–max over all blocks."""
    if normalize == "column":
        return df["normalized"]
    raw = df[value_column(df)]
    if normalize == "none":
        return raw
    if normalize == "global":
        low, high = raw.min(), raw.max()
        return (raw - low) / (high - low) if high > low else raw * 0 + 1.0
    raise ValueError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, not {normalize!r}")


def block_grid(df: pd.DataFrame, block: int, values: str | pd.Series) -> np.ma.MaskedArray:
    """Sources × targets matrix of one block; cells with no (source, target) row are masked.

    Row ``s`` is source ``s`` (row 0, the block input, first); column ``j`` is target
    ``j + 1``. The mask comes from the rows present, not from a triangle recipe.
    """
    rows = df[df["block"] == block]
    if rows.empty:
        raise ValueError(f"the reuse table has no block {block}")
    vals = rows[values] if isinstance(values, str) else values.loc[rows.index]
    n_sources = int(rows["source"].max()) + 1
    n_targets = int(rows["target"].max())
    grid = np.full((n_sources, n_targets), np.nan)
    grid[rows["source"].to_numpy(), rows["target"].to_numpy() - 1] = vals.to_numpy(float)
    return np.ma.masked_invalid(grid)


def block_layout(df: pd.DataFrame, block: int) -> str:
    """``dense`` (a lower triangle, Figure 5) or ``matrix`` (every target reads every source,
    e.g. Inception branches), as the traced analysis records in ``attrs["layout"]``."""
    return df.attrs.get("layout", {}).get(block, "dense")


def _extra_kind(df: pd.DataFrame, block: int) -> str | None:
    kinds = set(df.loc[df["block"] == block, "target_kind"]) - {"layer"}
    return kinds.pop() if kinds else None


def _step(n: int, cell: float) -> int:
    """Label every cell when cells are wide enough for a label, else every 2nd, 5th, 10th."""
    step = 1 if cell >= 0.2 else 2 if cell >= 0.1 else 5
    return max(step, 1 if n <= 20 else 5 if n <= 50 else 10)


def _ticks(n: int, first: int, cell: float = 0.3) -> list[int]:
    """Tick positions 0..n-1 for labels first..first+n-1: every label if few, else round ones.

    The last position (the extra column, or the last source) is always labelled, and so is
    source 0 (the block input); target 1 only when every target is.
    """
    step = _step(n, cell)
    keep = [i for i in range(n) if (i + first) % step == 0 or (i == 0 and first == 0)]
    keep = [i for i in keep if n - 1 - i >= max(1, step // 2) or i == 0]
    return [*keep, n - 1]


def _paper_ticks(n: int, first: int, cell: float, fontsize: float) -> list[int]:
    """Figure 5's ticks among positions 0..n-1 (labels first..first+n-1): every second
    label, even targets (2, 4, …) and odd sources (1, 3, …); every 4th, 10th, 20th… where
    cells are too small for that, so that labels never touch."""
    room = (len(str(first + n - 1)) * 0.62 + 0.4) * fontsize / 72  # inches a label needs
    step = next(s for s in (2, 4, 10, 20, 50, 100, 200) if s * cell >= room or s >= n)
    offset = 1 if (first == 0 and step == 2) else 0  # odd sources, as in the paper
    return [i for i in range(n) if i + first > 0 and (i + first - offset) % step == 0]


def _colormap(cmap: str | None, style: str) -> mpl.colors.Colormap:
    """The named map (default: viridis; jet for the paper), with white for empty cells.

    The paper's jet is MATLAB's ``jet(64)``: 64 bands, as its colour bar shows.
    """
    name = cmap or ("jet" if style == "paper" else "viridis")
    colormap = mpl.colormaps[name]
    if style == "paper" and name == "jet":
        colormap = colormap.resampled(64)
    return colormap.with_extremes(bad="white")


def plot_block(
    ax: Axes,
    grid: np.ma.MaskedArray,
    *,
    block: int,
    vmin: float,
    vmax: float,
    cmap: str | mpl.colors.Colormap = "viridis",
    extra_label: str | None = None,
    annotate: bool = False,
    cell: float = 0.3,
    title: str | None = None,
    source_labels: Sequence[str] | None = None,
    target_labels: Sequence[str] | None = None,
    style: str = "default",
) -> Axes:
    """Draw one block's matrix into ``ax``: row 0 on top, extra column outlined in black.

    ``extra_label`` names the last (transition / classifier) column: its tick label in the
    default style; in the paper's style the text written beside it with an arrow ("Transition
    layer 1 →"), the column itself left without a tick. With ``source_labels`` /
    ``target_labels`` every row/column is labelled by name (the branches of a concatenation)
    instead of by number.
    """
    colormap = mpl.colormaps[cmap] if isinstance(cmap, str) else cmap
    colormap = colormap.with_extremes(bad="white")
    n_src, n_tgt = grid.shape
    paper = style == "paper" and not (source_labels or target_labels)
    ax.imshow(
        grid,
        cmap=colormap,
        vmin=vmin,
        vmax=vmax,
        origin="upper",
        interpolation="nearest",
        aspect="equal",
    )
    labelsize = 7 if max(n_src, n_tgt) > 20 else 8
    if extra_label:
        ax.add_patch(
            Rectangle(
                (n_tgt - 1.5, -0.5), 1, n_src, fill=False, edgecolor="black",
                linewidth=2.0 if paper else 1.5, clip_on=False,
            )
        )  # fmt: skip
    if target_labels:
        ax.set_xticks(range(n_tgt), list(target_labels))
    elif paper:
        layers = n_tgt - 1 if extra_label else n_tgt
        xt = _paper_ticks(layers, 1, cell, labelsize)
        ax.set_xticks(xt, [str(t + 1) for t in xt])
    else:
        xt = _ticks(n_tgt, first=1, cell=cell)
        labels = [str(t + 1) for t in xt]
        if extra_label:
            labels[-1] = extra_label
        ax.set_xticks(xt, labels)
    if source_labels:
        ax.set_yticks(range(n_src), list(source_labels))
    elif paper:
        ax.set_yticks(_paper_ticks(n_src, 0, cell, labelsize))
    else:
        ax.set_yticks(_ticks(n_src, first=0, cell=cell))
    ax.set_anchor("N")
    heading, size = _fitting(
        title or f"Dense Block {block}",
        n_tgt * cell + 0.6 * _GAP,
        9.0 if title is not None or paper else 12.0,
    )
    ax.set_title(heading, fontsize=size)
    ax.tick_params(labelsize=labelsize, length=2)
    if paper:
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(direction="in", length=3)
        if extra_label and not _name_extra_column(ax, extra_label, n_src, n_tgt, cell):
            near = (len(str(n_tgt)) * _EM + 0.5) * labelsize / 72 / cell  # cells a label needs
            xt = [t for t in xt if n_tgt - 1 - t >= near]
            ax.set_xticks([*xt, n_tgt - 1], [*(str(t + 1) for t in xt), extra_label[0]])
    if annotate:
        span = vmax - vmin if vmax > vmin else 1.0
        number = min(6.0, 0.9 * cell * 72 / (4 * _EM))  # "0.00" inside its cell
        for (s, t), v in np.ndenumerate(grid.filled(np.nan)):
            if not np.isnan(v):
                dark = (v - vmin) / span < 0.6
                ax.text(
                    t, s, f"{v:.2f}", ha="center", va="center", fontsize=number,
                    color="white" if dark else "black",
                )  # fmt: skip
    return ax


_EM = 0.62  # width of an average character of DejaVu Sans, in ems (a safe upper bound)


def _fitting(text: str, inches: float, fontsize: float, smallest: float = 6.0) -> tuple[str, float]:
    """``text`` and a font size at which it spans at most ``inches``: the given size or a
    smaller one; below ``smallest``, the text on two lines (split at the middle space)."""

    def size(t: str) -> float:
        longest = max(len(line) for line in t.split("\n"))
        return min(fontsize, inches * 72 / (_EM * longest))

    if size(text) >= smallest or " " not in text:
        return text, size(text)
    spaces = [i for i, c in enumerate(text) if c == " "]
    cut = min(spaces, key=lambda i: abs(i - len(text) / 2))
    two = text[:cut] + "\n" + text[cut + 1 :]
    return two, size(two)


def _name_extra_column(ax: Axes, text: str, n_src: int, n_tgt: int, cell: float) -> bool:
    """Figure 5's "Transition layer 1 →": the name in the empty bottom row(s), an arrow to
    the outlined column's last cell. Returns False (nothing drawn) where the block is too
    small for a readable name."""
    arrow = min(2.5, max(1.0, 0.2 * (n_tgt - 1)))  # cells
    room = (n_tgt - 1 - arrow - 0.3) * cell  # inches left of the arrow
    one = min(8.0, 0.65 * cell * 72, room * 72 / (_EM * len(text)))
    label, size, y = text, one, n_src - 1
    if one < 6 and " " in text and n_src > _ANNOTATE_MAX_LAYERS + 1:  # two bottom rows
        label, two = _fitting(text, room, 8.0, smallest=8.0)
        size, y = min(two, 0.65 * cell * 72), n_src - 1.5
    if size < 4.5:
        return False
    ax.annotate(
        label,
        xy=(n_tgt - 1.5, n_src - 1),
        xytext=(n_tgt - 1.5 - arrow, y),
        ha="right",
        va="center",
        fontsize=size,
        arrowprops={"arrowstyle": "->", "lw": 0.8, "color": "black", "shrinkA": 1, "shrinkB": 0},
    )
    return True


def default_title(df: pd.DataFrame, normalize: str) -> str:
    """Title naming the model, the inferred config, metric, scaling and the concat order
    with what it rests on (detected, given or assumed; ``attrs["concat_order_text"]``)."""
    a = df.attrs
    first = " — ".join(x for x in (a.get("model"), a.get("structure")) if x)
    order = a.get("concat_order_text") or a.get("concat_order", "?")
    second = f"metric: {a.get('metric', 'weight')} · normalisation: {normalize}"
    lines = [first, second, f"concat order: {order}"]
    return "\n".join(line for line in lines if line)


# The panel layout, in inches: gaps between panels, the colour bar, the padding around
# everything, and the range of cell sizes. The margins that labels need are measured on
# the drawn figure (constrained layout would cost more than everything else in
# `reuse-analysis heatmap`); the provisional ones only start the measurement.
_GAP, _BAR_GAP, _BAR, _PAD, _TITLE_GAP = 0.5, 0.15, 0.22, 0.1, 0.12
_MAX_WIDTH, _MIN_CELL, _MAX_CELL = 22.0, 0.08, 0.42
# Figure 5 is compact: cells about as tall as its text, panels close together.
_PAPER_CELL, _PAPER_GAP = 0.17, 0.3
_LEFT, _RIGHT, _TOP, _BOTTOM = 0.75, 0.9, 0.95, 0.7

Rect = tuple[float, float, float, float]


def _frame(
    shapes: Sequence[tuple[int, int]], cell: float, gap: float = _GAP
) -> tuple[list[Rect], float, float]:
    """Rectangles (x, y, width, height in inches from the bottom left of the panels' frame)
    of the panels, side by side, top-aligned, square cells of side ``cell``, then the colour
    bar's; and the frame's width and height."""
    rows = max(r for r, _ in shapes)
    rects, x = [], 0.0
    for r, c in shapes:
        rects.append((x, (rows - r) * cell, c * cell, r * cell))
        x += c * cell + gap
    x += _BAR_GAP - gap
    rects.append((x, 0.0, _BAR, rows * cell))
    return rects, x + _BAR, rows * cell


def _place(fig: Figure, axes: Sequence[Axes], rects: Sequence[Rect], x0: float, y0: float):
    """Put each axes at its rectangle, the frame's bottom left at (x0, y0) inches."""
    width, height = fig.get_size_inches()
    for ax, (x, y, w, h) in zip(axes, rects, strict=True):
        ax.set_position(((x0 + x) / width, (y0 + y) / height, w / width, h / height))


def _renderer(fig: Figure):
    """A renderer that measures text as the saved figure will draw it (Agg; the PDF and
    SVG backends use the same font metrics)."""
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def _extents(fig: Figure, artists: Sequence[Any]) -> Bbox:
    """The union of the artists' drawn extents (tight boxes), in inches."""
    renderer = _renderer(fig)
    boxes = [a.get_tightbbox(renderer) for a in artists]
    return Bbox.union([b for b in boxes if b is not None]).transformed(
        fig.dpi_scale_trans.inverted()
    )


def _fit_label(label: str, inches: float, fontsize: float = 8) -> str:
    """Wrap a colour-bar label onto lines no longer than the bar (short blocks)."""
    chars = max(12, int(inches * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(label, chars)) if len(label) > chars else label


def _start_cell(
    shapes: Sequence[tuple[int, int]], page: tuple[float, float] | None, gap: float, largest: float
) -> float:
    cols = sum(c for _, c in shapes)
    rows = max(r for r, _ in shapes)
    fixed = _LEFT + _RIGHT + gap * (len(shapes) - 1) + _BAR_GAP + _BAR
    if page is None:
        return float(np.clip((_MAX_WIDTH - fixed) / cols, _MIN_CELL, largest))
    return min(largest, (page[0] - fixed) / cols, (page[1] - _TOP - _BOTTOM) / rows)


def _draw_blocks(
    fig: Figure | None,
    df: pd.DataFrame,
    values: pd.Series,
    *,
    vmin: float,
    vmax: float,
    cmap: str | mpl.colors.Colormap,
    annotate: bool | None,
    bar_label: str,
    title: str,
    page: tuple[float, float] | None = None,
    style: str = "default",
    bar_ticks: Sequence[float] | None = None,
) -> Figure:
    """Draw every block and the colour bar, then size the figure (or, with ``page``, the
    cells) so that every label lies inside it, measured on the drawn text."""
    blocks = sorted(int(b) for b in df["block"].unique())
    grids = [block_grid(df, b, values) for b in blocks]
    shapes = [g.shape for g in grids]
    if annotate is None:
        annotate = all(g.shape[0] - 1 <= _ANNOTATE_MAX_LAYERS for g in grids) and (
            _start_cell(shapes, page, _PAPER_GAP if style == "paper" else _GAP,
                        _PAPER_CELL if style == "paper" else _MAX_CELL) >= _ANNOTATE_MIN_CELL
        )  # fmt: skip
    cols, rows = sum(c for _, c in shapes), max(r for r, _ in shapes)
    fig = fig if fig is not None else Figure()
    paper = style == "paper"
    gap = _PAPER_GAP if paper else _GAP
    cell = _start_cell(shapes, page, gap, _PAPER_CELL if paper else _MAX_CELL)
    for _ in range(4):  # with a page: shrink the cells until the labels fit (1–2 rounds)
        fig.clear()
        rects, frame_w, frame_h = _frame(shapes, cell, gap)
        fig.set_size_inches(page or (_LEFT + frame_w + _RIGHT, _TOP + frame_h + _BOTTOM))
        axes = [fig.add_axes((0, 0, 1, 1)) for _ in rects]
        _place(fig, axes, rects, _LEFT, _BOTTOM)
        _draw_panels(
            fig, axes, df, blocks, grids, vmin=vmin, vmax=vmax, cmap=cmap, annotate=annotate,
            bar_label=_fit_label(bar_label, frame_h), cell=cell, style=style,
            bar_ticks=bar_ticks,
        )  # fmt: skip
        heading = fig.suptitle(title, fontsize=10, va="top")
        box = _extents(fig, axes)
        left, bottom = _LEFT - box.x0, _BOTTOM - box.y0
        right, top = box.x1 - _LEFT - frame_w, box.y1 - _BOTTOM - frame_h
        head = _extents(fig, [heading]) if title else Bbox.from_bounds(0, 0, 0, 0)
        head_h = head.height + _TITLE_GAP if title else 0.0
        if page is None:
            width = max(left + frame_w + right, head.width) + 2 * _PAD
            height = bottom + frame_h + top + head_h + 2 * _PAD
            fig.set_size_inches(width, height)
            _place(fig, axes, rects, _PAD + left, _PAD + bottom)
            break
        fixed_w = left + right + (frame_w - cols * cell) + 2 * _PAD
        fixed_h = bottom + top + head_h + 2 * _PAD
        fits = min((page[0] - fixed_w) / cols, (page[1] - fixed_h) / rows)
        if fits >= cell * 0.999 or cell <= _MIN_CELL / 4:
            x0 = (page[0] - (left + frame_w + right)) / 2 + left
            y0 = (page[1] - head_h - (bottom + frame_h + top)) / 2 + bottom
            _place(fig, axes, rects, x0, y0)
            break
        cell = max(_MIN_CELL / 4, 0.98 * fits)
    heading.set_y(1 - _PAD / fig.get_figheight())
    return fig


def _draw_panels(
    fig: Figure,
    axes: Sequence[Axes],
    df: pd.DataFrame,
    blocks: Sequence[int],
    grids: Sequence[np.ma.MaskedArray],
    *,
    vmin: float,
    vmax: float,
    cmap: str | mpl.colors.Colormap,
    annotate: bool,
    bar_label: str,
    cell: float,
    style: str,
    bar_ticks: Sequence[float] | None,
) -> None:
    paper = style == "paper"
    gap = _PAPER_GAP if paper else _GAP
    for ax, b, g in zip(axes, blocks, grids, strict=False):
        if block_layout(df, b) == "matrix":
            plot_block(
                ax,
                g,
                block=b,
                vmin=vmin,
                vmax=vmax,
                cmap=cmap,
                annotate=annotate,
                cell=cell,
                title=df.attrs.get("block_titles", {}).get(b, f"Group {b}"),
                source_labels=df.attrs.get("source_labels", {}).get(b),
                target_labels=df.attrs.get("target_labels", {}).get(b),
                style=style,
            )
            label, size = _fitting("Reading layer", g.shape[1] * cell + max(0.0, gap - 0.4), 9.0)
            ax.set_xlabel(label, fontsize=size)
            continue
        extra = _extra_kind(df, b)
        plot_block(
            ax,
            g,
            block=b,
            vmin=vmin,
            vmax=vmax,
            cmap=cmap,
            extra_label=_extra_label(extra, b, style),
            annotate=annotate,
            cell=cell,
            style=style,
        )
        target = r"Target layer ($\ell$)" if paper else "Target layer (t)"
        # No wider than the panel and the part of the gaps the neighbours' ticks leave free.
        label, size = _fitting(target, g.shape[1] * cell + max(0.0, gap - 0.4), 9.0)
        ax.set_xlabel(label, fontsize=size)
    first_dense = block_layout(df, blocks[0]) == "dense"
    source = r"Source layer ($s$)" if paper else "Source layer (s)"
    label, size = _fitting(source if first_dense else "Source", grids[0].shape[0] * cell, 9.0)
    axes[0].set_ylabel(label, fontsize=size)
    mappable = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(vmin, vmax), cmap=cmap)
    bar = fig.colorbar(mappable, cax=axes[-1])
    if bar_ticks is not None:
        room = _height_inches(axes[-1]) * 72 / (1.5 * 8)  # 8-point labels, space between
        step = next(k for k in (1, 2, 5, 10) if len(bar_ticks[::k]) <= room or k == 10)
        bar_ticks = bar_ticks[::step]
        bar.set_ticks(list(bar_ticks), labels=[f"{t:g}" for t in bar_ticks])
    if bar_label:
        bar.set_label(bar_label, fontsize=8)
    bar.ax.tick_params(labelsize=8)


def _height_inches(ax: Axes) -> float:
    """Height of an axes' box in inches."""
    return ax.get_position().height * ax.figure.get_figheight()


def _extra_label(kind: str | None, block: int, style: str) -> str | None:
    """The transition / classifier column's name: ``T``/``C`` ticks, or the paper's words."""
    if kind is None:
        return None
    if style == "paper":
        return f"Transition layer {block}" if kind == "transition" else "Classification layer"
    return _EXTRA_LABELS.get(kind)


def plot_reuse_heatmap(
    df: pd.DataFrame,
    *,
    normalize: str = "column",
    cmap: str | None = None,
    style: str = "default",
    title: str | None = None,
    annotate: bool | None = None,
    fig: Figure | None = None,
    page: tuple[float, float] | None = None,
) -> Figure:
    """The paper's Figure 5: one panel per dense block, one shared colour bar.

    Cells are squares of one size in every panel, so blocks of different depth keep
    their proportions; x is the target layer (then the outlined transition/classifier
    column), y the source layer with the block input (row 0) at the top. ``page`` fits
    the panels into a page of that size in inches (the report's A4), else the figure
    grows with the blocks. ``style="paper"`` draws Figure 5's look: MATLAB's jet(64)
    (unless ``cmap`` names another map), even targets and odd sources ticked, no tick on
    the outlined column but "Transition layer 1 →" / "Classification layer →" beside it,
    ℓ and s on the axis labels, axis lines left and below only, the colour bar ticked every
    0.1 and, for the paper's column scaling, unlabelled. The default is viridis.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, not {style!r}")
    _check(df)
    values = display_values(df, normalize)
    vmin = 0.0 if normalize != "none" else min(0.0, float(values.min()))
    vmax = 1.0 if normalize != "none" else float(values.max())
    paper_scale = style == "paper" and normalize != "none"
    return _draw_blocks(
        fig,
        df,
        values,
        vmin=vmin,
        vmax=vmax if vmax > vmin else vmin + 1.0,
        cmap=_colormap(cmap, style),
        annotate=annotate,
        bar_label="" if style == "paper" and normalize == "column" else bar_label(df, normalize),
        title=title if title is not None else default_title(df, normalize),
        page=page,
        style=style,
        bar_ticks=np.round(np.linspace(0, 1, 11), 1) if paper_scale else None,
    )


# ----------------------------------------------------------------------------- report plots
def plot_difference(
    a: pd.DataFrame,
    b: pd.DataFrame,
    *,
    labels: Sequence[str] = ("A", "B"),
    cmap: str | mpl.colors.Colormap = "RdBu_r",
    page: tuple[float, float] | None = None,
) -> Figure:
    """Column-normalised B − A per block (same structure), on a symmetric colour scale."""
    _check(a)
    _check(b)
    value = value_column(a)
    if value_column(b) != value:
        raise ValueError("the two tables hold different metrics: no cell-by-cell difference")
    key = ["block", "source", "target"]
    merged = a.merge(b, on=key, suffixes=("_a", "_b"))
    if len(merged) != len(a) or len(merged) != len(b):
        raise ValueError("the two models have different structures: no cell-by-cell difference")
    diff = merged.assign(
        normalized=merged["normalized_b"] - merged["normalized_a"],
        target_kind=merged["target_kind_a"],
        **{value: merged[f"{value}_b"] - merged[f"{value}_a"]},
    )[[*KEYS, value, "normalized"]]
    diff.attrs["metric"] = a.attrs.get("metric", "weight")
    limit = float(np.nanmax(np.abs(diff["normalized"]))) or 1.0
    return _draw_blocks(
        None,
        diff,
        diff["normalized"],
        vmin=-limit,
        vmax=limit,
        cmap=mpl.colormaps[cmap] if isinstance(cmap, str) else cmap,
        annotate=False,
        bar_label=f"difference of column-scaled {table_metric(a).label}",
        title=f"{labels[1]} − {labels[0]} (column-normalised reuse)",
        page=page,
    )


_MIN_SOURCES = 3  # observation 1 counts layers with at least this many sources


def _strip_positions(n: int, centre: float, half_width: float = 0.15) -> np.ndarray:
    """x positions of ``n`` points spread evenly around ``centre`` (a deterministic
    jitter: reports must be byte-reproducible, seaborn's strip jitter is random)."""
    return centre + (np.linspace(-half_width, half_width, n) if n > 1 else np.zeros(n))


def plot_spread(
    spread: pd.DataFrame,
    ax: Axes,
    *,
    baselines: Mapping[str, pd.DataFrame] | None = None,
    threshold: float = 0.5,
) -> Axes:
    """Observation 1 per block: each layer's share of sources getting ≥ ½ its strongest
    weight (one point per layer with ≥ 3 sources, in layer order), and the median with its
    95 % bootstrap interval (seaborn's estimator, seeded), the statistic the verdict reads.

    ``baselines`` maps names ("untrained", "shuffled") to spread tables of the same shape,
    drawn beside each block in grey, so that the reader sees what no learning gives.
    """
    import seaborn as sns

    models = {"this model": spread, **(baselines or {})}
    blocks = sorted(int(b) for b in spread["block"].unique())
    width = 0.8 / len(models)
    frames = []
    for i, (name, table) in enumerate(models.items()):
        rows = table[table["sources"] >= _MIN_SOURCES] if "sources" in table else table
        offset = (i - (len(models) - 1) / 2) * width
        for j, block in enumerate(blocks):
            g = rows[rows["block"] == block].sort_values("target")
            frames.append(
                g.assign(
                    model=name, x=j + offset, px=_strip_positions(len(g), j + offset, 0.3 * width)
                )
            )
    data = pd.concat(frames, ignore_index=True)
    colours = _block_colours(blocks)
    for i, name in enumerate(models):
        part = data[data["model"] == name]
        colour = [colours[b] for b in part["block"]] if i == 0 else _BASELINE_GREYS[(i - 1) % 3]
        ax.scatter(part["px"], part["spread"], s=9, c=colour, alpha=0.7, linewidths=0,
                   label=name if baselines else None)  # fmt: skip
    if len(data):
        sns.pointplot(
            data=data, x="x", y="spread", native_scale=True, estimator="median",
            errorbar=("ci", 95), seed=0, color="black", linestyle="none", marker="D",
            markersize=4, capsize=0.1, err_kws={"linewidth": 1}, ax=ax,
        )  # fmt: skip
    ax.plot([], [], "D", color="black", ms=4, label="median, 95 % interval")
    ax.axhline(threshold, color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(blocks)), [f"block {b}" for b in blocks])
    ax.set_xlim(-0.6, len(blocks) - 0.4)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel(f"dense block (each point: a layer with ≥ {_MIN_SOURCES} sources)")
    ax.set_ylabel("share of sources ≥ ½ max")
    ax.legend(fontsize=7, loc="lower right")
    return ax


_BASELINE_GREYS = ("0.55", "0.75", "0.35")


def _block_colours(blocks: Sequence[int]) -> dict[int, str]:
    return {b: f"C{i % 10}" for i, b in enumerate(blocks)}


def plot_row0_ratio(least: pd.DataFrame, ax: Axes) -> Axes:
    """Row 0's weight relative to the median other source, per layer, blocks ≥ 2."""
    later = least[least["block"] >= 2]
    for block, g in later.groupby("block"):
        ax.plot(g["target"], g["row0_vs_median"], marker="o", ms=3, label=f"block {block}")
    ax.axhline(1.0, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("target layer")
    ax.set_ylabel("row 0 ÷ median other source")
    if len(later):
        ax.legend(fontsize=7)
    return ax


def plot_classifier(df: pd.DataFrame, ax: Axes, *, highlight_last: int = 0) -> Axes:
    """The classifier's raw value per source of the last block: the last ``highlight_last``
    sources highlighted, and the mean over all sources (what equal use would give)."""
    col = df[df["target_kind"] == "classifier"].sort_values("source")
    values = col[value_column(df)].to_numpy(float)
    sources = col["source"].to_numpy()
    last = np.arange(len(col)) >= len(col) - highlight_last
    ax.bar(sources[~last], values[~last], color="tab:blue", label="earlier sources")
    if last.any():
        first = int(sources[last][0])
        ax.bar(sources[last], values[last], color="tab:orange",
               label=f"last quarter (sources {first}–{int(sources[-1])})")  # fmt: skip
    if len(values):
        ax.axhline(values.mean(), color="black", ls="--", lw=0.8,
                   label="mean over all sources (equal use)")  # fmt: skip
    ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("source layer of the last block (0 = block input)")
    ax.set_ylabel(f"classifier: {table_metric(df).label}")
    # Above the axes, not over the bars.
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=3, frameon=False)
    return ax


def _log_ticks(low: float, high: float, inches: float, fontsize: Any) -> list[float]:
    """Ticks for a log axis from ``low`` to ``high`` that fit side by side in ``inches``:
    1-2-5 in each decade, else every decade, else every 2nd, 3rd… decade."""
    points = mpl.font_manager.FontProperties(size=fontsize).get_size_in_points()
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    candidates = [[m * 10.0**d for d in decades for m in (1, 2, 5)]]
    candidates += [[10.0**d for d in decades if d % step == 0] for step in (1, 2, 3, 5, 10)]
    for ticks in candidates:
        ticks = [v for v in ticks if low <= v <= high]
        need = sum(len(f"{v:g}") * _EM * points / 72 + 0.12 for v in ticks)
        if need <= inches:
            return ticks
    return ticks[:1]


def plot_channel_usage(
    usage: np.ndarray,
    ax: Axes,
    *,
    title: str = "",
    reference: np.ndarray | None = None,
    reference_label: str = "untrained",
) -> Axes:
    """Distribution of per-channel usage (seaborn histogram on a log axis, where "a tenth
    of the median" is a fixed distance), with the median and ⅒ of it marked. ``reference``
    (e.g. an untrained network's usage) is drawn as an outline on the same bins."""
    import seaborn as sns

    usage = np.asarray(usage, dtype=float)
    positive = usage[usage > 0]
    median = float(np.median(usage))
    unused = len(usage) - len(positive)
    label = "channels" + (f" ({unused} unused, not drawn)" if unused else "")
    drawn = [positive] + ([] if reference is None else [reference[reference > 0]])
    if len(positive):
        low = min(float(d.min()) for d in drawn if len(d))
        high = max(float(d.max()) for d in drawn if len(d))
        count = min(40, max(10, len(positive) // 4))
        bins = np.geomspace(low * 0.98, high * 1.02, count + 1)  # bins over the data only
        sns.histplot(x=positive, bins=bins, color="tab:gray", ax=ax, label=label)
        if reference is not None:
            sns.histplot(x=drawn[1], bins=bins, element="step", fill=False,
                         color="tab:blue", ax=ax, label=reference_label)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlim(min(low, 0.1 * median) / 1.3, high * 1.3)
    ax.axvline(median, color="black", lw=1, label="median")
    ax.axvline(0.1 * median, color="tab:red", lw=1, ls="--", label="⅒ median")
    if len(positive):
        inches = ax.get_position().width * ax.figure.get_figwidth()
        ticks = _log_ticks(*ax.get_xlim(), inches, mpl.rcParams["xtick.labelsize"])
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.xaxis.set_minor_formatter(mpl.ticker.NullFormatter())
    ax.set_xlabel("usage: mean |w| from the next block")
    ax.set_ylabel("channels")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return ax


# ----------------------------------------------------------------------------- comparisons
def plot_compare(df: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Test accuracy against parameters and against training time (the budget at each
    architecture's measured training speed), one point per architecture (a table from
    :func:`reuse_analysis.compare.compare`)."""
    missing = [c for c in ("arch", "params", "budget_minutes", "test_acc") if c not in df.columns]
    if missing:
        raise ValueError(f"comparison table lacks the columns {', '.join(missing)}")
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    accuracy = 100 * df["test_acc"].astype(float)
    panels = [
        (axes[0], df["params"] / 1e6, "parameters (millions, log scale)", True),
        (
            axes[1],
            df["budget_minutes"].astype(float),
            "training budget at the measured speed (minutes"
            + (", one core)" if df.attrs.get("speed_basis", "").startswith("per CPU") else ")"),
            False,
        ),
    ]
    for ax, x, label, log in panels:
        ax.scatter(x, accuracy, s=40, color="tab:blue", zorder=3)
        rightmost = float(x.max())
        for xi, yi, name in zip(x, accuracy, df["arch"], strict=True):
            # The rightmost label goes to the left of its point, inside the axes.
            left = len(x) > 1 and float(xi) == rightmost
            ax.annotate(
                name,
                (xi, yi),
                textcoords="offset points",
                xytext=(-5 if left else 5, 4),
                ha="right" if left else "left",
                fontsize=8,
            )
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.25, y=0.2)
    axes[0].set_ylabel("test accuracy (%)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.13, top=0.83, wspace=0.08)
    return fig


# ----------------------------------------------------------------------------- data-driven
_METRIC_COLOURS = {
    "weight": "tab:blue",
    "bn-weight": "tab:orange",
    "activation": "tab:green",
    "taylor": "tab:purple",
    "ablation": "tab:red",
    "random": "tab:gray",
}


def plot_agreement(agreement: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Spearman correlation of each metric with ablation, per block (grouped bars, seaborn).

    ``agreement`` has the columns ``block`` (an int, or ``"all"``), ``metric`` and
    ``spearman`` (see :func:`reuse_analysis.agreement.agreement_table`). Where it holds
    several rows per (block, metric) (repeated probes, seeds), the bar is their mean with a
    95 % bootstrap interval.
    """
    import seaborn as sns

    if ax is None:
        ax = Figure(figsize=(7, 4)).add_subplot()
    data = agreement.assign(
        where=[f"block {b}" if str(b) != "all" else "all blocks" for b in agreement["block"]]
    )
    metrics = list(dict.fromkeys(data["metric"]))
    sns.barplot(
        data=data, x="where", y="spearman", hue="metric", hue_order=metrics,
        palette=_palette(metrics), errorbar=("ci", 95), seed=0, err_kws={"linewidth": 1},
        capsize=0.1, ax=ax,
    )  # fmt: skip
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("")
    ax.set_ylim(-1, 1)
    ax.set_ylabel("Spearman ρ with ablation")
    ax.legend(fontsize=8, ncol=min(len(metrics), 4), loc="lower right")
    return ax


def _palette(metrics: Sequence[str]) -> dict[str, str]:
    spare = iter(f"C{i}" for i in range(5, 10))
    return {m: _METRIC_COLOURS.get(m) or next(spare, "black") for m in metrics}


def agreement_figure(agreement: pd.DataFrame, *, title: str = "") -> Figure:
    """A figure of :func:`plot_agreement` with a title."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    plot_agreement(agreement, fig.add_subplot())
    if title:
        fig.suptitle(_wrap(title, fig.get_figwidth() - 0.3, 10), fontsize=10)
    return fig


def plot_sweep(
    sweep: pd.DataFrame, ax: Axes | None = None, *, baseline: float | None = None
) -> Axes:
    """Accuracy against the fraction of connections cut, one line per metric (seaborn).

    ``sweep`` has the columns ``metric``, ``fraction`` and ``accuracy`` (0..1); ``baseline``
    is the unpruned accuracy, drawn as a horizontal reference line. A metric with several
    rows per fraction (the random baseline over several seeds) is drawn as its mean with a
    band from the lowest to the highest accuracy: the spread that chance gives.
    """
    import seaborn as sns

    if ax is None:
        ax = Figure(figsize=(7, 4.5)).add_subplot()
    data = sweep.assign(percent=100 * sweep["accuracy"].astype(float))
    metrics = list(dict.fromkeys(data["metric"].astype(str)))
    sns.lineplot(
        data=data, x="fraction", y="percent", hue="metric", hue_order=metrics,
        palette=_palette(metrics), marker="o", markersize=5, markeredgewidth=0,
        errorbar=("pi", 100), ax=ax,
    )  # fmt: skip
    if baseline is not None:
        ax.axhline(100 * baseline, color="black", ls="--", lw=1, label="unpruned")
    repeated = data.groupby(["metric", "fraction"]).size()
    spread = sorted({m for (m, _), n in repeated.items() if n > 1})
    ax.set_xlabel("fraction F of source→target connections cut (weakest first)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.xaxis.set_major_formatter(mpl.ticker.PercentFormatter(1.0))
    handles, labels = ax.get_legend_handles_labels()
    labels = [
        f"{name} (mean; band: range over {int(repeated[name].max())} runs)"
        if name in spread else name
        for name in labels
    ]  # fmt: skip
    ax.legend(handles, labels, fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def sweep_figure(sweep: pd.DataFrame, *, baseline: float | None = None, title: str = "") -> Figure:
    """A figure of :func:`plot_sweep` with a title."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    plot_sweep(sweep, fig.add_subplot(), baseline=baseline)
    if title:
        fig.suptitle(_wrap(title, fig.get_figwidth() - 0.3, 10), fontsize=10)
    return fig


def _wrap(text: str, inches: float, fontsize: float) -> str:
    """Each line of ``text`` wrapped to at most ``inches`` at ``fontsize`` points."""
    chars = max(20, int(inches * 72 / (_EM * fontsize)))
    return "\n".join("\n".join(textwrap.wrap(line, chars) or [""]) for line in text.split("\n"))


__all__ = [
    "NORMALIZE_MODES",
    "STYLES",
    "agreement_figure",
    "bar_label",
    "block_grid",
    "default_title",
    "display_values",
    "plot_agreement",
    "plot_block",
    "plot_channel_usage",
    "plot_classifier",
    "plot_compare",
    "plot_difference",
    "plot_reuse_heatmap",
    "plot_row0_ratio",
    "plot_spread",
    "plot_sweep",
    "sweep_figure",
]


def _reference_band(
    ax: Axes, reference: pd.DataFrame | None, statistic: str, x: Sequence[float], colour: Any
) -> bool:
    """The untrained networks' range of ``statistic`` as a band over ``x`` and their mean
    as a dotted line, in ``colour``; False (nothing drawn) where the reference has none."""
    if reference is None or statistic not in reference.index:
        return False
    row = reference.loc[statistic]
    if not np.isfinite([row["min"], row["max"], row["mean"]]).all():
        return False
    ax.fill_between(x, row["min"], row["max"], color=colour, alpha=0.15, lw=0, zorder=0)
    ax.plot(x, [row["mean"]] * len(x), color=colour, ls=":", lw=1, zorder=1)
    return True


def dynamics_figure(
    dynamics: pd.DataFrame, *, reference: pd.DataFrame | None = None, title: str = ""
) -> Figure:
    """A run's reuse statistics per epoch (:func:`reuse_analysis.dynamics.reuse_dynamics`):
    the correlation with the paper's Figure 5 per block, observation 3's row-0 share and
    observation 4's classifier focus. ``reference`` (per statistic the ``mean``, ``min``
    and ``max`` of untrained networks of the run's architecture,
    :func:`reuse_analysis.dynamics.reference_summary`) is drawn behind each curve as a
    band over its range with its mean dotted, in the curve's colour."""
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    epochs = dynamics["epoch"]
    span = [float(epochs.min()) - 0.3, float(epochs.max()) + 0.3]
    seeds = reference.attrs.get("seeds") if reference is not None else None
    untrained = f"untrained ({seeds} seeds)" if seeds else "untrained"
    fig5 = [c for c in ("fig5_block1", "fig5_block2", "fig5_block3") if dynamics[c].notna().any()]
    ax = axes[0]
    banded = False
    for i, column in enumerate(fig5):
        ax.plot(epochs, dynamics[column], marker=".", color=f"C{i}", label=f"block {column[-1]}")
    for i, column in enumerate(fig5):
        banded |= _reference_band(ax, reference, column, span, f"C{i}")
    ax.axhline(0, color="0.6", lw=0.7)
    ax.set_ylim(-0.4, 1)
    ax.set_title("correlation with Figure 5" if fig5 else "not Figure 5's configuration")
    ax.set_ylabel("Pearson r")
    if banded:
        ax.fill_between([], [], color="0.5", alpha=0.3, label=untrained)
    if fig5:
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    panels = [
        (axes[1], "row0_weakest_share", "tab:purple"),
        (axes[2], "classifier_focus", "tab:green"),
    ]
    for ax, column, colour in panels:
        ax.plot(epochs, dynamics[column], marker=".", color=colour, label="this run")
        if _reference_band(ax, reference, column, span, colour):
            ax.fill_between([], [], color=colour, alpha=0.3, label=untrained)
            ax.legend(fontsize=7, loc="upper left")
    axes[1].set_ylim(-0.03, 1.03)
    axes[1].set_title("obs. 3: row 0 the weakest source")
    axes[1].set_ylabel("share of layers, blocks ≥ 2")
    ax = axes[2]
    ax.axhline(1, color="0.6", lw=0.7)
    ax.set_title("obs. 4: classifier focus")
    ax.set_ylabel("last quarter ÷ other sources")
    if dynamics["classifier_focus"].isna().all():
        ax.set_title("obs. 4: no classifier column")
        ax.set_ylim(0, 2)
    for ax in axes:
        ax.set_xlabel("epoch (0 = initialisation)")
        ax.set_xlim(*span)
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True, nbins=8))
        ax.title.set_fontsize(10)
    if title:
        fig.suptitle(_wrap(title, fig.get_figwidth() - 0.3, 10), fontsize=10)
    return fig
