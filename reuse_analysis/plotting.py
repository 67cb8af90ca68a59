"""Reuse table → matplotlib figures (the paper's Figure 5 and the report's small plots).

Never imports torch: everything here reads the tidy DataFrame that
:func:`reuse_analysis.metrics.reuse_table` (or a data-driven metric) returns, one row per
block, source and target, through its value column (:func:`reuse_analysis.tables.value_column`),
so every metric draws the same way.
Functions that draw one thing take ``ax`` and return it (seaborn style); the figure
builders return a :class:`matplotlib.figure.Figure` without touching pyplot's state.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from reuse_analysis.tables import KEYS, table_metric, value_column

NORMALIZE_MODES = ("column", "none", "global")
_REQUIRED = [*KEYS, "normalized"]
_SCALING = {
    "column": " (each target column min–max scaled)",
    "global": " (min–max over all blocks)",
    "none": "",
}
_EXTRA_LABELS = {"transition": "T", "classifier": "C"}
_ANNOTATE_MAX_LAYERS = 8


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

    The last position (the extra column, or the last source) is always labelled.
    """
    step = _step(n, cell)
    keep = [i for i in range(n) if (i + first) % step == 0 or i == 0]
    keep = [i for i in keep if n - 1 - i >= max(1, step // 2) or i == 0]
    return [*keep, n - 1]


def plot_block(
    ax: Axes,
    grid: np.ma.MaskedArray,
    *,
    block: int,
    vmin: float,
    vmax: float,
    cmap: str = "viridis",
    extra_label: str | None = None,
    annotate: bool = False,
    cell: float = 0.3,
    title: str | None = None,
    source_labels: Sequence[str] | None = None,
    target_labels: Sequence[str] | None = None,
) -> Axes:
    """Draw one block's matrix into ``ax``: row 0 on top, extra column outlined in black.

    With ``source_labels``/``target_labels`` every row/column is labelled by name (the
    branches of a concatenation) instead of by number.
    """
    colormap = mpl.colormaps[cmap].with_extremes(bad="white")
    n_src, n_tgt = grid.shape
    ax.imshow(
        grid,
        cmap=colormap,
        vmin=vmin,
        vmax=vmax,
        origin="upper",
        interpolation="nearest",
        aspect="equal",
    )
    xt = list(range(n_tgt)) if target_labels else _ticks(n_tgt, first=1, cell=cell)
    ax.set_xticks(xt)
    labels = list(target_labels) if target_labels else [str(t + 1) for t in xt]
    if extra_label:
        labels[-1] = extra_label
        ax.add_patch(
            Rectangle((n_tgt - 1.5, -0.5), 1, n_src, fill=False, edgecolor="black", linewidth=1.5)
        )
    ax.set_xticklabels(labels)
    if source_labels:
        ax.set_yticks(range(n_src))
        ax.set_yticklabels(source_labels)
    else:
        ax.set_yticks(_ticks(n_src, first=0, cell=cell))
    ax.set_anchor("N")
    ax.set_title(title or f"Dense Block {block}", fontsize=None if title is None else 9)
    ax.tick_params(labelsize=7 if max(n_src, n_tgt) > 20 else 8, length=2)
    if annotate:
        span = vmax - vmin if vmax > vmin else 1.0
        for (s, t), v in np.ndenumerate(grid.filled(np.nan)):
            if not np.isnan(v):
                dark = (v - vmin) / span < 0.6
                ax.text(
                    t, s, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if dark else "black",
                )  # fmt: skip
    return ax


def default_title(df: pd.DataFrame, normalize: str) -> str:
    """Title naming the model, the inferred config, concat order, metric and scaling."""
    a = df.attrs
    first = " — ".join(x for x in (a.get("model"), a.get("structure")) if x)
    second = (
        f"metric: {a.get('metric', 'weight')} · concat order: {a.get('concat_order', '?')} · "
        f"normalisation: {normalize}"
    )
    return f"{first}\n{second}" if first else second


# Fixed margins of the panel layout, in inches (computed by hand: constrained layout
# would cost more than everything else in `reuse-analysis heatmap`).
_LEFT, _GAP, _TOP, _BOTTOM, _BAR, _BAR_ROOM = 0.75, 0.5, 0.95, 0.7, 0.22, 0.9
_MAX_WIDTH = 22.0


def _panel_layout(
    fig: Figure | None,
    shapes: Sequence[tuple[int, int]],
    bar_label: str = "",
    page: tuple[float, float] | None = None,
) -> tuple[Figure, list[Axes], Axes, float, str]:
    """Side-by-side axes with square cells of one size, top-aligned, and a colour-bar axes.

    With ``page`` (width, height in inches) the figure has exactly that size and the panels
    are scaled to fit inside it, centred; otherwise the figure grows with the blocks. Also
    returns the colour-bar label wrapped to the bar's height (short blocks), with room on
    the right for its extra lines.
    """
    cols = sum(c for _, c in shapes)
    rows = max(r for r, _ in shapes)
    fixed = _LEFT + _GAP * (len(shapes) - 1) + _BAR_ROOM
    if page is None:
        cell = float(np.clip((_MAX_WIDTH - fixed) / cols, 0.08, 0.42))
        bar_label = _fit_label(bar_label, rows * cell)
        width = max(fixed + 0.15 * bar_label.count("\n") + cols * cell, 5.0)
        height = _TOP + rows * cell + _BOTTOM
        left, top = _LEFT, _TOP
    else:
        width, height = page
        cell = min(0.42, (width - fixed) / cols, (height - _TOP - _BOTTOM) / rows)
        bar_label = _fit_label(bar_label, rows * cell)
        fixed += 0.15 * bar_label.count("\n")
        cell = min(cell, (width - fixed) / cols)
        left = _LEFT + (width - fixed - cols * cell) / 2
        top = _TOP + (height - _TOP - _BOTTOM - rows * cell) / 2
    if fig is None:
        fig = Figure(figsize=(width, height))
    else:
        fig.set_size_inches(width, height)
    axes, x = [], left
    for r, c in shapes:
        rect = (x / width, (height - top - r * cell) / height, c * cell / width, r * cell / height)
        axes.append(fig.add_axes(rect))
        x += c * cell + _GAP
    x += 0.15 - _GAP
    bar = fig.add_axes(
        (x / width, (height - top - rows * cell) / height, _BAR / width, rows * cell / height)
    )
    return fig, axes, bar, cell, bar_label


def _fit_label(label: str, inches: float, fontsize: float = 8) -> str:
    """Wrap a colour-bar label onto lines no longer than the bar (short blocks)."""
    chars = max(12, int(inches * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.wrap(label, chars)) if len(label) > chars else label


def _draw_blocks(
    fig: Figure | None,
    df: pd.DataFrame,
    values: pd.Series,
    *,
    vmin: float,
    vmax: float,
    cmap: str,
    annotate: bool | None,
    bar_label: str,
    page: tuple[float, float] | None = None,
) -> Figure:
    blocks = sorted(int(b) for b in df["block"].unique())
    grids = [block_grid(df, b, values) for b in blocks]
    if annotate is None:
        annotate = all(g.shape[0] - 1 <= _ANNOTATE_MAX_LAYERS for g in grids)
    fig, axes, bar_ax, cell, bar_label = _panel_layout(
        fig, [g.shape for g in grids], bar_label, page
    )
    for ax, b, g in zip(axes, blocks, grids, strict=True):
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
            )
            ax.set_xlabel("Reading layer", fontsize=9)
            continue
        extra = _extra_kind(df, b)
        plot_block(
            ax,
            g,
            block=b,
            vmin=vmin,
            vmax=vmax,
            cmap=cmap,
            extra_label=_EXTRA_LABELS.get(extra) if extra else None,
            annotate=annotate,
            cell=cell,
        )
        ax.set_xlabel("Target layer (t)", fontsize=9)
    first_dense = block_layout(df, blocks[0]) == "dense"
    axes[0].set_ylabel("Source layer (s)" if first_dense else "Source", fontsize=9)
    mappable = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(vmin, vmax), cmap=cmap)
    bar = fig.colorbar(mappable, cax=bar_ax)
    bar.set_label(bar_label, fontsize=8)
    bar.ax.tick_params(labelsize=8)
    return fig


def plot_reuse_heatmap(
    df: pd.DataFrame,
    *,
    normalize: str = "column",
    cmap: str = "viridis",
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
    grows with the blocks.
    """
    _check(df)
    values = display_values(df, normalize)
    vmin = 0.0 if normalize != "none" else min(0.0, float(values.min()))
    vmax = 1.0 if normalize != "none" else float(values.max())
    fig = _draw_blocks(
        fig,
        df,
        values,
        vmin=vmin,
        vmax=vmax if vmax > vmin else vmin + 1.0,
        cmap=cmap,
        annotate=annotate,
        bar_label=bar_label(df, normalize),
        page=page,
    )
    fig.suptitle(
        title if title is not None else default_title(df, normalize),
        fontsize=10,
        y=1 - 0.12 / fig.get_figheight(),
        va="top",
    )
    return fig


# ----------------------------------------------------------------------------- report plots
def plot_difference(
    a: pd.DataFrame,
    b: pd.DataFrame,
    *,
    labels: Sequence[str] = ("A", "B"),
    cmap: str = "RdBu_r",
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
    fig = _draw_blocks(
        None,
        diff,
        diff["normalized"],
        vmin=-limit,
        vmax=limit,
        cmap=cmap,
        annotate=False,
        bar_label=f"difference of column-scaled {table_metric(a).label}",
        page=page,
    )
    fig.suptitle(
        f"{labels[1]} − {labels[0]} (column-normalised reuse)",
        fontsize=10,
        y=1 - 0.12 / fig.get_figheight(),
        va="top",
    )
    return fig


def plot_spread(spread: pd.DataFrame, ax: Axes) -> Axes:
    """Share of sources each target uses (≥ ½ its max), per block, layers then extra column."""
    for block, g in spread.groupby("block"):
        ax.plot(g["target"], g["spread"], marker="o", ms=3, label=f"block {block}")
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("target (last point: transition / classifier)")
    ax.set_ylabel("share of sources ≥ ½ max")
    ax.legend(fontsize=7)
    return ax


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
    """The classifier's raw value per source of the last block (last ones highlighted)."""
    col = df[df["target_kind"] == "classifier"].sort_values("source")
    colours = ["tab:blue"] * len(col)
    for i in range(max(0, len(col) - highlight_last), len(col)):
        colours[i] = "tab:orange"
    ax.bar(col["source"], col[value_column(df)], color=colours)
    ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("source layer of the last block (0 = block input)")
    ax.set_ylabel(f"classifier: {table_metric(df).label}")
    return ax


def plot_channel_usage(usage: np.ndarray, ax: Axes, *, title: str = "") -> Axes:
    """Histogram of per-channel usage, with the median and ⅒ of it marked."""
    median = float(np.median(usage))
    ax.hist(usage, bins=min(40, max(10, len(usage) // 4)), color="tab:gray")
    ax.axvline(median, color="black", lw=1, label="median")
    ax.axvline(0.1 * median, color="tab:red", lw=1, ls="--", label="⅒ median")
    ax.set_xlabel("mean |w| the next block gives the channel")
    ax.set_ylabel("channels")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
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
    """Spearman correlation of each metric with ablation, per block (grouped bars).

    ``agreement`` has the columns ``block`` (an int, or ``"all"``), ``metric`` and
    ``spearman`` (see :func:`reuse_analysis.agreement.agreement_table`).
    """
    if ax is None:
        ax = Figure(figsize=(7, 4)).add_subplot()
    blocks = list(dict.fromkeys(agreement["block"].astype(str)))
    metrics = list(dict.fromkeys(agreement["metric"]))
    width = 0.8 / max(len(metrics), 1)
    for i, metric in enumerate(metrics):
        rows = agreement[agreement["metric"] == metric]
        rows = rows.set_index(rows["block"].astype(str))
        values = [float(rows["spearman"].get(b, np.nan)) for b in blocks]
        xs = np.arange(len(blocks)) + (i - (len(metrics) - 1) / 2) * width
        ax.bar(xs, values, width, label=metric, color=_METRIC_COLOURS.get(metric))
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(blocks)))
    ax.set_xticklabels([f"block {b}" if b != "all" else "all blocks" for b in blocks])
    ax.set_ylim(-1, 1)
    ax.set_ylabel("Spearman ρ with ablation")
    ax.legend(fontsize=8, ncol=min(len(metrics), 4), loc="lower right")
    return ax


def agreement_figure(agreement: pd.DataFrame, *, title: str = "") -> Figure:
    """A figure of :func:`plot_agreement` with a title."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    plot_agreement(agreement, fig.add_subplot())
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_sweep(
    sweep: pd.DataFrame, ax: Axes | None = None, *, baseline: float | None = None
) -> Axes:
    """Accuracy against the fraction of connections cut, one line per metric.

    ``sweep`` has the columns ``metric``, ``fraction`` and ``accuracy`` (0..1); ``baseline``
    is the unpruned accuracy, drawn as a horizontal reference line.
    """
    if ax is None:
        ax = Figure(figsize=(7, 4.5)).add_subplot()
    for metric, rows in sweep.groupby("metric", sort=False):
        rows = rows.sort_values("fraction")
        ax.plot(
            rows["fraction"],
            100 * rows["accuracy"],
            marker="o",
            ms=4,
            label=metric,
            color=_METRIC_COLOURS.get(str(metric)),
        )
    if baseline is not None:
        ax.axhline(100 * baseline, color="black", ls="--", lw=1, label="unpruned")
    ax.set_xlabel("fraction F of source→target connections cut (weakest first)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.xaxis.set_major_formatter(mpl.ticker.PercentFormatter(1.0))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def sweep_figure(sweep: pd.DataFrame, *, baseline: float | None = None, title: str = "") -> Figure:
    """A figure of :func:`plot_sweep` with a title."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    plot_sweep(sweep, fig.add_subplot(), baseline=baseline)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


__all__ = [
    "NORMALIZE_MODES",
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
