"""Correlation with the paper's Figure 5: known answers on tables made from the figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reuse_analysis.figure5 import figure5, figure5_correlation


def _table_from(fig: dict[int, np.ndarray]) -> pd.DataFrame:
    rows = [
        (b, s, t, "transition" if t == 13 else "layer", fig[b][s, t - 1])
        for b in (1, 2, 3)
        for t in range(1, 14)
        for s in range(t)
    ]
    df = pd.DataFrame(rows, columns=["block", "source", "target", "target_kind", "normalized"])
    return df.assign(mean_abs_weight=df["normalized"])


def test_the_figure_itself_correlates_perfectly():
    r = figure5_correlation(_table_from(figure5()))
    assert r == pytest.approx({1: 1.0, 2: 1.0, 3: 1.0})


def _by_hand(table: pd.DataFrame, block: int) -> float:
    """Pearson r computed independently: column min-max by loops, then np.corrcoef."""
    rows = table[table.block == block]
    values = rows["mean_abs_weight"].to_numpy()
    cols = rows["target"].to_numpy()
    scaled = np.empty_like(values)
    for t in np.unique(cols):
        v = values[cols == t]
        span = v.max() - v.min()
        scaled[cols == t] = (v - v.min()) / span if span > 0 else 1.0
    theirs = figure5()[block][rows["source"].to_numpy(), cols - 1]
    return float(np.corrcoef(scaled, theirs)[0, 1])


def test_correlation_of_transformed_figures_matches_a_hand_computation():
    """Raw values (no ``normalized`` column) are column-scaled first: an affine copy of the
    figure still gives 1; a reversed and a random one give what a direct computation does."""
    rng = np.random.default_rng(0)
    fig = figure5()
    transformed = {
        1: 0.5 * fig[1] + 0.2,
        2: 1 - fig[2],
        3: np.where(np.isnan(fig[3]), np.nan, rng.random(fig[3].shape)),
    }
    table = _table_from(transformed).drop(columns="normalized")
    r = figure5_correlation(table)
    assert r[1] == pytest.approx(1.0)
    assert r[2] == pytest.approx(_by_hand(table, 2)) and r[2] < -0.8
    assert r[3] == pytest.approx(_by_hand(table, 3)) and abs(r[3]) < 0.3


def test_other_configurations_are_not_compared():
    table = _table_from(figure5())
    assert figure5_correlation(table[table.block < 3]) is None
    assert figure5_correlation(table[table.target < 13]) is None
