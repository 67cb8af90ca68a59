"""Statistics of a run's per-epoch reuse log, on hand-built tables with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reuse_analysis.dynamics import COLUMNS, epoch_statistics, reuse_dynamics
from reuse_analysis.figure5 import figure5


def _table(weight) -> pd.DataFrame:
    """Two blocks of 4 layers (a transition after block 1, the classifier after block 2);
    ``weight(block, source, target)`` gives each cell's mean |w|."""
    rows = [
        (
            b,
            s,
            t,
            "layer" if t <= 4 else ("transition" if b == 1 else "classifier"),
            weight(b, s, t),
        )
        for b in (1, 2)
        for t in range(1, 6)
        for s in range(t)
    ]
    return pd.DataFrame(
        rows, columns=["block", "source", "target", "target_kind", "mean_abs_weight"]
    )


def test_uniform_columns():
    stats = epoch_statistics(_table(lambda b, s, t: 0.5))
    assert stats["layer_unevenness"] == 0.0
    assert stats["row0_ratio"] == 1.0
    assert stats["classifier_focus"] == 1.0
    assert np.isnan(stats["fig5_block1"])  # not the figure's configuration


def test_row0_weakest_and_a_focused_classifier():
    def weight(b, s, t):
        if t == 5 and b == 2:  # classifier: sources 0..4, the last quarter is source 4
            return 3.0 if s == 4 else 1.0
        return 0.25 if s == 0 else 1.0 + 0.1 * s

    stats = epoch_statistics(_table(weight))
    # block 2's layers with ≥ 3 sources: targets 3 and 4; row 0 is the weakest in both
    assert stats["row0_weakest_share"] == 1.0
    # target 3: 0.25 / median(1.1, 1.2); target 4: 0.25 / median(1.1, 1.2, 1.3)
    assert stats["row0_ratio"] == pytest.approx(np.median([0.25 / 1.15, 0.25 / 1.2]))
    assert stats["classifier_focus"] == pytest.approx(3.0)
    cv = [np.std(w) / np.mean(w) for w in ([0.25, 1.1, 1.2], [0.25, 1.1, 1.2, 1.3])] * 2
    assert stats["layer_unevenness"] == pytest.approx(np.median(cv))


def test_dynamics_of_a_log_with_the_figure_itself():
    fig = figure5()
    rows = [
        (b, s, t, "transition" if t == 13 else "layer", 0.1 + fig[b][s, t - 1])
        for b in (1, 2, 3)
        for t in range(1, 14)
        for s in range(t)
    ]
    table = pd.DataFrame(
        rows, columns=["block", "source", "target", "target_kind", "mean_abs_weight"]
    )
    flat = table.assign(mean_abs_weight=0.3)
    log = pd.concat([flat.assign(epoch=0), table.assign(epoch=1)], ignore_index=True)
    dyn = reuse_dynamics(log)
    assert list(dyn.columns) == COLUMNS
    assert list(dyn["epoch"]) == [0, 1]
    np.testing.assert_allclose(dyn.loc[1, ["fig5_block1", "fig5_block2", "fig5_block3"]], 1.0)
    assert dyn.loc[0, ["fig5_block1", "fig5_block2", "fig5_block3"]].isna().all()
    assert dyn.loc[0, "layer_unevenness"] == 0.0 and dyn.loc[1, "layer_unevenness"] > 0.3


def test_dynamics_figure_draws_each_statistic_readably():
    from figure_checks import assert_readable

    from reuse_analysis.plotting import dynamics_figure

    fig = figure5()
    kinds = {1: "transition", 2: "transition", 3: "classifier"}
    table = pd.DataFrame(
        [
            (b, s, t, kinds[b] if t == 13 else "layer", 0.1 + fig[b][s, t - 1])
            for b in (1, 2, 3)
            for t in range(1, 14)
            for s in range(t)
        ],
        columns=["block", "source", "target", "target_kind", "mean_abs_weight"],
    )
    rng = np.random.default_rng(0)
    noisy = table.assign(mean_abs_weight=table["mean_abs_weight"] + rng.random(len(table)))
    dyn = reuse_dynamics(
        pd.concat([noisy.assign(epoch=0), table.assign(epoch=1)], ignore_index=True)
    )
    drawn = dynamics_figure(dyn, title="a run")
    assert_readable(drawn)
    left, middle, right = drawn.axes
    assert [line.get_label() for line in left.get_lines()[:3]] == ["block 1", "block 2", "block 3"]
    np.testing.assert_allclose(left.get_lines()[0].get_ydata(), dyn["fig5_block1"])
    np.testing.assert_allclose(middle.get_lines()[0].get_ydata(), dyn["row0_weakest_share"])
    np.testing.assert_allclose(right.get_lines()[0].get_ydata(), dyn["classifier_focus"])
    assert dyn["classifier_focus"].notna().all()
    low, high = left.get_xlim()
    assert [t for t in left.get_xticks() if low <= t <= high] == [0, 1]  # whole epochs
    # a run without a classifier column still draws a readable figure
    assert_readable(dynamics_figure(dyn.assign(classifier_focus=np.nan)))
