"""The four observations and transition redundancy on synthetic tables built to hold or fail."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reuse_analysis.metrics import COLUMNS, column_minmax
from reuse_analysis.observations import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    classifier_focus,
    observations,
    spread,
    transition_redundancy,
)


def _table(weight, blocks=3, layers=6):
    """A reuse table whose raw values come from ``weight(block, source, target, L)``."""
    rows = []
    for b in range(1, blocks + 1):
        for t in range(1, layers + 2):
            kind = "layer" if t <= layers else ("classifier" if b == blocks else "transition")
            for s in range(t):
                rows.append((b, s, t, kind, float(weight(b, s, t, layers))))
    df = pd.DataFrame(rows, columns=COLUMNS[:-1])
    df["normalized"] = column_minmax(df.mean_abs_weight, df.block * 1000 + df.target)
    return df


def _paper_like(b, s, t, n):
    """Broad use, row 0 weakest in later blocks, classifier favouring the last layers."""
    if t == n + 1 and b == 3:
        return 1.0 + (2.0 if s > n - 2 else 0.0)
    if s == 0 and b >= 2:
        return 0.3
    return 1.0 - 0.05 * (t - s)


def _concentrated(b, s, t, n):
    """Each target reads mainly its predecessor; row 0 above the rest; flat classifier."""
    if t == n + 1 and b == 3:
        return 2.0 if s == 0 else 1.0
    if s == 0:
        return 1.0 if t == 1 else 0.4
    return 1.0 if s == t - 1 else 0.05


def _by_number(obs):
    return {o.number: o for o in obs}


def test_paper_like_weights_make_every_observation_hold():
    obs = _by_number(observations(_table(_paper_like)))
    assert [obs[i].verdict for i in (1, 2, 3, 4)] == [HOLDS] * 4
    assert obs[3].value == 1.0
    assert obs[4].value == pytest.approx(3.0)  # last 2 sources at 3.0 vs 1.0 elsewhere


def test_concentrated_weights_make_every_observation_fail():
    obs = _by_number(observations(_table(_concentrated)))
    assert [obs[i].verdict for i in (1, 2, 3, 4)] == [FAILS] * 4
    assert obs[3].value == 0.0
    assert obs[4].value == pytest.approx(1 / ((2.0 + 4 * 1.0) / 5))


def test_exact_spread_values():
    df = _table(lambda b, s, t, n: [1.0, 0.4, 0.6, 0.5][s] if t == 4 else 1.0, blocks=1, layers=3)
    sp = spread(df).set_index(["block", "target"])["spread"]
    # column t = 4 (classifier): 1.0, 0.4, 0.6, 0.5 -> three of four reach 0.5
    assert sp[(1, 4)] == 0.75
    focus = classifier_focus(df)
    assert focus["last_sources"] == 1
    assert focus["ratio"] == pytest.approx(0.5 / np.mean([1.0, 0.4, 0.6]))


def test_single_block_model_is_inconclusive_where_nothing_to_measure():
    obs = _by_number(observations(_table(_paper_like, blocks=1)))
    assert obs[2].verdict == INCONCLUSIVE and math.isnan(obs[2].value)
    assert obs[3].verdict == INCONCLUSIVE and "single dense block" in obs[3].detail


def test_transition_redundancy_numbers():
    df = _table(_paper_like, blocks=2, layers=4)
    # block 2's input: 10 channels, two of them almost unused
    usage = pd.DataFrame({"block": 2, "channel": range(10), "usage": [1.0] * 8 + [0.01, 0.02]})
    (red,) = transition_redundancy(df, usage, {1: 1.0})
    assert red.channels == 10
    assert red.weak_share == 0.2
    # sorted usage 1×8 then 0.02, 0.01: 8 channels carry 8/8.03 ≥ 90 %
    assert red.channels_for_90 == 8
    assert red.suggested_theta == 0.8
    assert red.theta_half_supported is False
    assert red.row0_vs_other == pytest.approx(
        0.3
        / df[(df.block == 2) & (df.target.between(2, 4)) & (df.source > 0)].mean_abs_weight.mean()
    )
    skewed = usage.assign(usage=[1.0, 1.0, 1.0, 1.0] + [0.01] * 6)
    (red,) = transition_redundancy(df, skewed, {1: 1.0})
    assert red.channels_for_90 == 4 and red.theta_half_supported is True
    (red,) = transition_redundancy(df, skewed, {1: 0.5})
    assert red.suggested_theta == 0.2 and red.theta_half_supported is None
