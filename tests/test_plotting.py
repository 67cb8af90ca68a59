"""Plots are checked by their computed state (data, mask, limits, labels), not by pixels,
and every figure the toolkit makes is checked to be readable: nothing cut at the canvas
edges, no tick labels or other texts on top of each other (tests/figure_checks.py)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from figure_checks import assert_readable, problems
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from matplotlib.text import Annotation

from reuse_analysis.metrics import COLUMNS, column_minmax
from reuse_analysis.plotting import (
    agreement_figure,
    block_grid,
    display_values,
    plot_channel_usage,
    plot_classifier,
    plot_compare,
    plot_difference,
    plot_reuse_heatmap,
    plot_spread,
    sweep_figure,
)

FIG5 = Path("../shared/data/fig5/fig5_digitized.json")
PAGE = (11.69, 8.27)


def _table(
    layers=(3, 3),
    extra=("transition", "classifier"),
    value=lambda b, s, t: b + s / t,
):
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


def _densenet(layers, value=None):
    """A reuse table shaped like a DenseNet with these blocks (transitions, a classifier)."""
    rng = np.random.default_rng(sum(layers))
    value = value or (lambda b, s, t: 0.002 + 0.004 * rng.random())  # small raw weights
    extra = ("transition",) * (len(layers) - 1) + ("classifier",)
    return _table(layers=layers, extra=extra, value=value)


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_title().startswith("Dense Block")]


def _image(ax) -> AxesImage:
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    return image


def _outlines(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_fill() is False]


def _ticks(ax, axis="x"):
    getter = ax.get_xticklabels if axis == "x" else ax.get_yticklabels
    return [t.get_text() for t in getter()]


# ----------------------------------------------------------------------------- grid and values
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


# ----------------------------------------------------------------------------- heatmap state
@pytest.mark.parametrize("normalize", ["column", "none", "global"])
def test_heatmap_panels_show_the_tables_values(normalize):
    df = _table()
    fig = plot_reuse_heatmap(df, normalize=normalize)
    panels = _panels(fig)
    assert len(panels) == 2 and len(fig.axes) == 3  # two blocks and one colour bar
    shown = display_values(df, normalize)
    limits = (0.0, 1.0) if normalize != "none" else (0.0, df.mean_abs_weight.max())
    for block, ax in enumerate(panels, start=1):
        data = _image(ax).get_array()
        rows = df[df.block == block]
        expected = np.full((4, 4), np.nan)
        expected[rows.source, rows.target - 1] = shown[rows.index]
        mask = np.array([[s >= t for t in range(1, 5)] for s in range(4)])
        assert (data.mask == mask).all()  # empty where source >= target
        np.testing.assert_allclose(data.filled(np.nan), expected)
        assert _image(ax).get_clim() == pytest.approx(limits)
        bottom, top = ax.get_ylim()
        assert top < bottom  # row 0 at the top
        (outline,) = _outlines(ax)  # the transition / classifier column, outlined
        assert (outline.get_x(), outline.get_width()) == (pytest.approx(2.5), 1)
        assert outline.get_height() == 4
        assert _ticks(ax)[-1] == ("T" if block == 1 else "C")
        assert ax.get_xlabel() == "Target layer (t)"
    assert panels[0].get_ylabel() == "Source layer (s)"
    assert "toy" in fig.get_suptitle() and "newest-first" in fig.get_suptitle()
    bar = fig.axes[-1]
    assert bar.get_ylim() == pytest.approx(limits)
    assert bar.get_ylabel().startswith("average |w|")


def test_heatmap_annotation_rules():
    df = _table()
    fig = plot_reuse_heatmap(df, normalize="none")
    assert len(_panels(fig)[0].texts) == 6 + 4  # small blocks: every cell annotated
    assert _panels(fig)[0].texts[0].get_text() == f"{df.mean_abs_weight.iloc[0]:.2f}"
    big = _table(layers=(12,), extra=("classifier",))
    assert len(_panels(plot_reuse_heatmap(big))[0].texts) == 0
    assert len(_panels(plot_reuse_heatmap(big, annotate=True))[0].texts) == 13 * 14 // 2


def test_block_without_extra_column_renders():
    df = _table(layers=(3,), extra=(None,))
    (ax,) = _panels(plot_reuse_heatmap(df))
    assert len(ax.patches) == 0
    assert _ticks(ax) == ["1", "2", "3"]


def test_bad_input():
    with pytest.raises(ValueError, match="lacks the columns"):
        plot_reuse_heatmap(pd.DataFrame({"block": [1]}))
    with pytest.raises(ValueError, match="empty"):
        plot_reuse_heatmap(_table().iloc[:0])
    with pytest.raises(ValueError, match="style must be one of default, paper"):
        plot_reuse_heatmap(_table(), style="nature")


def test_difference_of_two_tables():
    a, b = _table(), _table(value=lambda blk, s, t: (s + 1.0) ** 2)
    fig = plot_difference(a, b, labels=("epoch 1", "epoch 5"))
    assert "epoch 5 − epoch 1" in fig.get_suptitle()
    image = _image(_panels(fig)[0])
    np.testing.assert_allclose(
        image.get_array().filled(0),
        (block_grid(b, 1, "normalized") - block_grid(a, 1, "normalized")).filled(0),
    )
    low, high = image.get_clim()
    assert low == -high  # symmetric about no change
    with pytest.raises(ValueError, match="different structures"):
        plot_difference(a, _table(layers=(3, 4)))


@pytest.mark.parametrize("layers", [(3, 5), (6, 12, 64, 48)], ids=["small", "densenet264"])
@pytest.mark.parametrize("style", ["default", "paper"])
def test_heatmap_fits_a_page_with_square_cells(layers, style):
    fig = plot_reuse_heatmap(_densenet(layers), page=PAGE, style=style)
    assert tuple(fig.get_size_inches()) == pytest.approx(PAGE)
    cells = set()
    for ax, n in zip(_panels(fig), layers, strict=True):
        x0, y0, w, h = ax.get_position().bounds
        assert x0 >= 0 and x0 + w <= 1 and y0 >= 0 and y0 + h <= 1  # nothing off the page
        cells.add(round(w * PAGE[0] / (n + 1), 6))  # inches per column, extra column included
        assert h * PAGE[1] / (n + 1) == pytest.approx(w * PAGE[0] / (n + 1))  # square cells
    assert len(cells) == 1  # one cell size in every panel
    assert_readable(fig)


# ----------------------------------------------------------------------------- paper style
def _fig5_table():
    if not FIG5.is_file():
        pytest.skip(f"{FIG5} is not on this machine")
    digitised = json.loads(FIG5.read_text())
    rows = []
    for b in (1, 2, 3):
        for s, row in enumerate(digitised[f"B{b}"]):
            for t, v in enumerate(row, start=1):
                if v is not None:
                    kind = "layer" if t < 13 else ("transition" if b < 3 else "classifier")
                    rows.append((b, s, t, kind, v, v))
    return pd.DataFrame(rows, columns=COLUMNS), digitised


def test_paper_style_reproduces_figure_5():
    df, digitised = _fig5_table()
    fig = plot_reuse_heatmap(df, style="paper", title="")
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == ["Dense Block 1", "Dense Block 2", "Dense Block 3"]
    names = ["Transition layer 1", "Transition layer 2", "Classification layer"]
    for ax, block, name in zip(panels, (1, 2, 3), names, strict=True):
        image = _image(ax)
        expected = np.array(digitised[f"B{block}"], dtype=float)  # null -> nan
        np.testing.assert_allclose(image.get_array().filled(np.nan), expected)
        cmap = image.get_cmap()
        assert cmap.name.startswith("jet") and cmap.N == 64  # MATLAB's jet(64)
        # the paper's ticks: even targets, odd sources, none on the outlined column
        assert list(ax.get_xticks()) == [1, 3, 5, 7, 9, 11]
        assert _ticks(ax) == ["2", "4", "6", "8", "10", "12"]
        assert _ticks(ax, "y") == ["1", "3", "5", "7", "9", "11"]
        (outline,) = _outlines(ax)
        assert outline.get_x() == pytest.approx(11.5)
        (arrow,) = [t for t in ax.texts if isinstance(t, Annotation)]
        assert arrow.get_text() == name
        assert arrow.xy == pytest.approx((11.5, 12))  # points at the outlined column's last cell
        assert ax.get_xlabel() == r"Target layer ($\ell$)"
        assert not ax.spines["top"].get_visible() and not ax.spines["right"].get_visible()
    assert panels[0].get_ylabel() == r"Source layer ($s$)"
    bar = fig.axes[-1]
    assert [t.get_text() for t in bar.get_yticklabels()] == [
        "0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1",
    ]  # fmt: skip
    assert bar.get_ylabel() == ""  # the paper's colour bar has no label
    assert fig.get_suptitle() == ""
    assert_readable(fig)


def test_paper_style_keeps_the_scale_label_and_a_chosen_map():
    fig = plot_reuse_heatmap(_densenet((12, 12, 12)), style="paper", normalize="none", cmap="magma")
    assert _image(_panels(fig)[0]).get_cmap().name.startswith("magma")
    assert fig.axes[-1].get_ylabel().startswith("average |w|")
    assert_readable(fig)


def test_paper_style_on_blocks_too_small_for_the_name_falls_back_to_a_tick():
    fig = plot_reuse_heatmap(_densenet((3, 3)), style="paper")
    for ax, letter in zip(_panels(fig), "TC", strict=True):
        assert not [t for t in ax.texts if isinstance(t, Annotation)]
        assert _ticks(ax)[-1] == letter
    assert_readable(fig)


# ----------------------------------------------------------------------------- the checker
def test_the_readability_check_finds_cut_and_overlapping_text():
    fig = Figure(figsize=(3, 2))
    ax = fig.add_axes((0.2, 0.2, 0.7, 0.5))
    ax.set_xticks([0, 0.01, 0.02], ["0.0025000", "0.0050000", "0.0075000"])
    fig.text(0.9, 0.5, "a label running off the right edge")
    ax.set_title("title")
    ax.text(0.5, 1.02, "on the title", transform=ax.transAxes, ha="center")
    found = "\n".join(problems(fig))
    assert "'a label running off the right edge'" in found and "leaves" in found
    assert "tick labels '0.0025000' and '0.0050000' overlap" in found
    assert "'title' and 'on the title' overlap" in found or "'on the title' and 'title'" in found
    clean = Figure(figsize=(4, 3))
    clean.add_subplot().set_title("fine")
    clean.subplots_adjust(left=0.15, bottom=0.15)
    assert problems(clean) == []


# ----------------------------------------------------------------------------- every figure
HEATMAPS = {
    "two small blocks": (3, 3),
    "densenet_bc_100": (16, 16, 16),
    "densenet121": (6, 12, 24, 16),
}  # DenseNet-264's blocks are drawn on a page in test_heatmap_fits_a_page_with_square_cells


@pytest.mark.parametrize("normalize", ["column", "none", "global"])
@pytest.mark.parametrize("style", ["default", "paper"])
@pytest.mark.parametrize("layers", HEATMAPS.values(), ids=HEATMAPS.keys())
def test_every_heatmap_is_readable(layers, style, normalize):
    df = _densenet(layers)
    fig = plot_reuse_heatmap(df, normalize=normalize, style=style)
    assert len(_panels(fig)) == len(layers)
    assert_readable(fig)


def _branches(groups=9):
    """A traced table of Inception-like groups: 4 branches read by 4 branches, all cells."""
    rows = [
        (g, s, t, "classifier" if (g == groups and t == 1) else "layer", 0.01 * (s + t + g), 0.5)
        for g in range(1, groups + 1)
        for t in range(1, 2 if g == groups else 5)
        for s in range(4)
    ]
    df = pd.DataFrame(rows, columns=COLUMNS)
    names = [f"inception{i}" for i in range(1, groups + 1)] + ["classifier"]
    df.attrs.update(
        layout=dict.fromkeys(range(1, groups + 1), "matrix"),
        block_titles={g: f"{names[g - 1]}\n→ {names[g]}" for g in range(1, groups + 1)},
        source_labels={g: ["b1", "b2", "b3", "b4"] for g in range(1, groups + 1)},
        target_labels={
            g: ["classifier"] if g == groups else ["b1", "b2", "b3", "b4"]
            for g in range(1, groups + 1)
        },
    )
    return df


@pytest.mark.parametrize("style", ["default", "paper"])
def test_branch_matrices_are_readable(style):
    fig = plot_reuse_heatmap(_branches(), style=style)
    panels = [ax for ax in fig.axes if "→" in ax.get_title()]
    assert len(panels) == 9 and _ticks(panels[0]) == ["b1", "b2", "b3", "b4"]
    assert_readable(fig)


@pytest.mark.parametrize("page", [None, PAGE], ids=["figure", "page"])
@pytest.mark.parametrize("layers", [(16, 16, 16), (6, 12, 24, 16)], ids=["bc100", "densenet121"])
def test_difference_heatmaps_are_readable(layers, page):
    a = _densenet(layers)
    b = _densenet(layers, value=lambda blk, s, t: 0.001 * (s + 1))
    assert_readable(plot_difference(a, b, labels=("seed 0", "seed 1"), page=page))


def _sweep(seeds=3):
    rng = np.random.default_rng(0)
    rows = [("unpruned", 0.0, 0.63)]
    for metric in ("weight", "bn-weight", "activation", "taylor", "ablation"):
        rows += [(metric, f, 0.63 * (1 - f) + 0.1 * f) for f in (0.1, 0.25, 0.5, 0.75, 0.9)]
    for _ in range(seeds):
        rows += [("random", f, 0.5 * (1 - f) + 0.1 + 0.02 * rng.random()) for f in (0.1, 0.5, 0.9)]
    df = pd.DataFrame(rows, columns=["metric", "fraction", "accuracy"])
    return df.assign(
        connections_cut=(df.fraction * 400).astype(int),
        share_cut=df.fraction,
        bottleneck_inputs_cut=df.fraction,
        loss=2 - df.accuracy,
    )


def test_sweep_draws_the_random_baselines_spread():
    df = _sweep()
    title = (  # the command line's title
        "densenet_bc_100_cifar10: accuracy after cutting the weakest connections, no fine-tuning\n"
        "2000 test images; data-driven metrics on 1000 train images; scope column; "
        "concat order oldest-first"
    )
    fig = sweep_figure(df[df.metric != "unpruned"], baseline=0.63, title=title)
    (ax,) = fig.axes
    random = df[df.metric == "random"]
    bands = [c.get_paths()[0].vertices[:, 1] for c in ax.collections if c.get_paths()]
    (ys,) = [y for y in bands if np.ptp(y) > 0]  # only the repeated metric has a band
    assert ys.min() == pytest.approx(100 * random.accuracy.min())
    assert ys.max() == pytest.approx(100 * random.accuracy.max())
    (line,) = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 3]  # random: 3 fractions
    means = random.groupby("fraction").accuracy.mean()
    np.testing.assert_allclose(line.get_ydata(), 100 * means.to_numpy())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "random (mean; band: range over 3 runs)" in labels and "unpruned" in labels
    assert "weight" in labels
    assert_readable(fig)


def _agreement():
    rows = [
        (b, m, rho, rho / 2, 40)
        for b in (1, 2, 3, "all")
        for m, rho in (("weight", 0.3), ("bn-weight", 0.5), ("activation", -0.2), ("taylor", 0.8))
    ]
    df = pd.DataFrame(rows, columns=["block", "metric", "spearman", "within_column", "connections"])
    df.attrs.update(images=1000, split="train", dataset="cifar10")
    return df


def test_agreement_bars_hold_each_metrics_rho():
    df = _agreement()
    title = "densenet_bc_100_cifar10: rank agreement with ablation\n(1000 train images of cifar10)"
    fig = agreement_figure(df, title=title)
    (ax,) = fig.axes
    heights = sorted(round(p.get_height(), 6) for p in ax.patches if p.get_height() != 0)
    assert heights == sorted(round(v, 6) for v in df.spearman)
    assert _ticks(ax) == ["block 1", "block 2", "block 3", "all blocks"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "weight", "bn-weight", "activation", "taylor",
    ]  # fmt: skip
    assert_readable(fig)


def test_compare_figure_is_readable():
    df = pd.DataFrame(
        {
            "arch": ["resnet18", "densenet_bc_100", "d2l_densenet"],
            "params": [11.18e6, 0.77e6, 0.76e6],
            "budget_minutes": [10.0, 20.0, 5.0],
            "test_acc": [0.5, 0.45, 0.4],
        }
    )
    df.attrs["speed_basis"] = "per CPU core"
    title = (
        "imagefolder:../shared/data/cifar10: 3 epoch(s) × 2,000 images each\n"
        "AMD EPYC 7B13, 2 cores (AVX2), torch 2.14.1 on the CPU, shared with other jobs"
    )
    assert_readable(plot_compare(df, title=title))


def test_spread_points_per_layer_and_the_median_per_block():
    spread = pd.DataFrame(
        [(b, t, "layer", t, 1.0) for b in (1, 2, 3) for t in range(1, 9)],
        columns=["block", "target", "target_kind", "sources", "spread"],
    )
    fig = Figure(figsize=(8, 4))
    ax = plot_spread(spread, fig.add_subplot())
    points = ax.collections[0]
    assert len(points.get_offsets()) == 3 * 6  # layers with >= 3 sources
    colours = {tuple(c) for c in points.get_facecolors()}
    assert len(colours) == 3  # every value is 1.0, yet each block shows in its colour
    assert _ticks(ax) == ["block 1", "block 2", "block 3"]
    assert_readable(fig)


def test_classifier_bars_have_a_legend():
    df = _densenet((16, 16, 16))
    fig = Figure(figsize=(10, 5))
    ax = plot_classifier(df, fig.add_axes((0.1, 0.1, 0.8, 0.7)), highlight_last=4)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "mean over all sources (equal use)", "earlier sources", "last quarter (sources 13–16)",
    ]  # fmt: skip
    assert_readable(fig)


@pytest.mark.parametrize("scale", [0.005, 0.05, 1.0])
def test_channel_usage_ticks_never_overlap(scale):
    rng = np.random.default_rng(1)
    fig = Figure(figsize=(11.69, 8.27))
    for i in range(3):
        usage = scale * rng.lognormal(0, 0.2 + i, 200)
        ax = fig.add_axes((0.08 + 0.28 * i, 0.08, 0.22, 0.5))
        plot_channel_usage(usage, ax, title=f"transition after block {i + 1}", reference=usage / 2)
        assert ax.get_xscale() == "log"
    assert_readable(fig)


# ----------------------------------------------------------------------------- report pages
@pytest.fixture(scope="module")
def report_pages():
    """Every page of a two-model report with agreement and sweep pages, and of a 4-block
    ImageNet-style model's report (real analyses of initialised networks)."""
    import torch

    from reuse_analysis.analysis import analyze
    from reuse_analysis.models import create_model
    from reuse_analysis.report import model_report, pages

    def model(name, seed):
        torch.manual_seed(seed)
        return analyze(create_model(name).state_dict(), name=f"{name}-seed{seed}")

    a, b = model("densenet_bc_100", 0), model("densenet_bc_100", 1)
    first = model_report(a, agreement=_agreement(), sweep=_sweep())
    first.sweep.attrs.update(test_images=2000, scope="column")
    when = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    two = pages([first, model_report(b)], when)
    four = pages([model_report(model("densenet121", 0))], when)
    return _first_of_each_kind(two, "bc100") + _first_of_each_kind(four, "densenet121")


def _first_of_each_kind(figures, name):
    """The pages, but of the appendix only its first page per model (the others are the
    same layout with other rows)."""
    kept, seen = [], set()
    for i, page in enumerate(figures):
        heading = page.texts[0].get_text() if page.texts else ""
        kind = heading.rsplit("(", 1)[0] if heading.startswith("Appendix") else i
        if kind not in seen:
            seen.add(kind)
            kept.append((f"{name} page {i}", page))
    return kept


def test_every_report_page_is_readable(report_pages):
    assert sum("Appendix" in p.texts[0].get_text() for _, p in report_pages if p.texts) == 3
    found = [f"{name}: {line}" for name, page in report_pages for line in problems(page, dpi=100)]
    assert not found, "\n".join(found)
    titles = [page.get_suptitle() for _, page in report_pages]
    assert any("seed1 − densenet_bc_100-seed0" in t for t in titles)  # the difference page


def test_plotting_never_imports_torch_or_seaborn():
    loaded = "'torch' in sys.modules, 'seaborn' in sys.modules"
    code = f"import sys, reuse_analysis.plotting; print({loaded})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [
        "False",
        "False",
    ]  # seaborn loads with the first plot that needs it
