"""Plots are checked by their computed state (data, mask, limits, labels), not by pixels."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from reuse_analysis.metrics import COLUMNS, column_minmax
from reuse_analysis.plotting import (
    block_grid,
    display_values,
    plot_difference,
    plot_reuse_heatmap,
)


def _table(layers=(3, 3), extra=("transition", "classifier"), value=lambda b, s, t: b + s / t):
    rows = []
    for b, n in enumerate(layers, start=1):
        last = n + (1 if extra[b - 1] else 0)
        for t in range(1, last + 1):
            kind = extra[b - 1] if t == n + 1 else "layer"
            rows += [(b, s, t, kind, float(value(b, s, t))) for s in range(t)]
    df = pd.DataFrame(rows, columns=COLUMNS[:-1])
    df["normalized"] = column_minmax(df.mean_abs_weight, df.block * 100 + df.target)
    df.attrs.update(model="toy", structure="2 blocks", concat_order="newest-first", metric="weight")
    return df


def test_block_grid_places_values_and_masks_from_the_index():
    df = _table()
    grid = block_grid(df, 2, "mean_abs_weight")
    assert grid.shape == (4, 4)  # sources 0..3, targets 1..4
    assert grid[0, 0] == pytest.approx(2.0)  # (s=0, t=1)
    assert grid[2, 3] == pytest.approx(2 + 2 / 4)  # (s=2, t=4)
    expected_mask = np.array([[s >= t for t in range(1, 5)] for s in range(4)])
    assert (grid.mask == expected_mask).all()
    # a missing row is masked even below the diagonal
    holes = df.drop(df[(df.block == 1) & (df.source == 1) & (df.target == 3)].index)
    assert block_grid(holes, 1, "mean_abs_weight").mask[1, 2]


def test_display_values_modes():
    df = _table(layers=(1,), extra=(None,), value=lambda b, s, t: 1.0)
    df = pd.concat([df, _table(layers=(2,), extra=("classifier",)).assign(block=2)])
    raw = df.mean_abs_weight
    assert display_values(df, "none").equals(raw)
    assert display_values(df, "column").equals(df.normalized)
    g = display_values(df, "global")
    assert g.min() == 0.0 and g.max() == 1.0
    assert g.to_numpy() == pytest.approx(((raw - raw.min()) / (raw.max() - raw.min())).to_numpy())
    with pytest.raises(ValueError, match="normalize"):
        display_values(df, "log")


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_title().startswith("Dense Block")]


def test_heatmap_layout():
    df = _table()
    fig = plot_reuse_heatmap(df)
    panels = _panels(fig)
    assert len(panels) == 2 and len(fig.axes) == 3  # two blocks and one colour bar
    for block, ax in enumerate(panels, start=1):
        (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
        data = image.get_array()
        expected = block_grid(df, block, "normalized")
        assert (data.mask == expected.mask).all()
        np.testing.assert_allclose(data.filled(-1), expected.filled(-1))
        assert image.get_clim() == (0.0, 1.0)
        bottom, top = ax.get_ylim()
        assert top < bottom  # row 0 at the top
        outlines = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_fill() is False]
        assert len(outlines) == 1 and outlines[0].get_x() == pytest.approx(expected.shape[1] - 1.5)
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[-1] == ("T" if block == 1 else "C")
    assert "toy" in fig.get_suptitle() and "newest-first" in fig.get_suptitle()
    colorbar = fig.axes[-1]
    assert colorbar.get_ylim() == pytest.approx((0.0, 1.0))


def test_heatmap_raw_scale_and_annotation_rules():
    df = _table()
    fig = plot_reuse_heatmap(df, normalize="none")
    image = next(a for a in _panels(fig)[0].get_children() if isinstance(a, AxesImage))
    assert image.get_clim() == pytest.approx((0.0, df.mean_abs_weight.max()))
    assert len(_panels(fig)[0].texts) == 6 + 4  # small blocks: every cell annotated
    big = _table(layers=(12,), extra=("classifier",))
    assert len(_panels(plot_reuse_heatmap(big))[0].texts) == 0
    assert len(_panels(plot_reuse_heatmap(big, annotate=True))[0].texts) == 13 * 14 // 2


def test_block_without_extra_column_renders():
    df = _table(layers=(3,), extra=(None,))
    (ax,) = _panels(plot_reuse_heatmap(df))
    assert len(ax.patches) == 0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]


def test_bad_tables():
    with pytest.raises(ValueError, match="lacks the columns"):
        plot_reuse_heatmap(pd.DataFrame({"block": [1]}))
    with pytest.raises(ValueError, match="empty"):
        plot_reuse_heatmap(_table().iloc[:0])


def test_difference_of_two_tables():
    a, b = _table(), _table(value=lambda blk, s, t: (s + 1.0) ** 2)
    fig = plot_difference(a, b, labels=("epoch 1", "epoch 5"))
    assert "epoch 5 − epoch 1" in fig.get_suptitle()
    image = next(x for x in _panels(fig)[0].get_children() if isinstance(x, AxesImage))
    np.testing.assert_allclose(
        image.get_array().filled(0),
        (block_grid(b, 1, "normalized") - block_grid(a, 1, "normalized")).filled(0),
    )
    with pytest.raises(ValueError, match="different structures"):
        plot_difference(a, _table(layers=(3, 4)))


@pytest.mark.parametrize("layers", [(3, 5), (6, 12, 64, 48)], ids=["small", "densenet264"])
def test_heatmap_fits_a_page_with_square_cells(layers):
    page = (11.69, 8.27)
    fig = plot_reuse_heatmap(
        _table(layers=layers, extra=("transition",) * (len(layers) - 1) + ("classifier",)),
        page=page,
    )
    assert tuple(fig.get_size_inches()) == pytest.approx(page)
    cells = set()
    for ax, n in zip(_panels(fig), layers, strict=True):
        x0, y0, w, h = ax.get_position().bounds
        assert x0 >= 0 and x0 + w <= 1 and y0 >= 0 and y0 + h <= 1  # nothing off the page
        cells.add(round(w * page[0] / (n + 1), 6))  # inches per column, extra column included
        assert h * page[1] / (n + 1) == pytest.approx(w * page[0] / (n + 1))  # square cells
    assert len(cells) == 1  # one cell size in every panel
    bar = fig.axes[-1].get_position()
    assert bar.x1 <= 1


def test_plotting_never_imports_torch():
    code = "import sys, reuse_analysis.plotting; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
