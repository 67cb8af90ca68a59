"""Do the cheap metrics rank connections the way cutting them does? Agreement with ablation.

Ablation is the ground truth of "is this connection used": the loss increase when it alone
is cut. For every other metric and every dense block this module gives Spearman's ρ
between the metric's raw values and ablation's loss increase over all connections of the
block (its layer columns and its transition or classifier column), over all blocks
together, and the mean ρ within target columns with at least three sources — the ranking
that per-column pruning relies on. Spearman's ρ is the Pearson correlation of average
ranks (ties share their mean rank). Pure pandas and numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from reuse_analysis.tables import value_column

COLUMNS = ["block", "metric", "spearman", "within_column", "connections"]
_MIN_SOURCES = 3


def spearman(a: pd.Series | np.ndarray, b: pd.Series | np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN if either is constant."""
    ra = pd.Series(np.asarray(a, dtype=float)).rank(method="average").to_numpy()
    rb = pd.Series(np.asarray(b, dtype=float)).rank(method="average").to_numpy()
    if len(ra) < 2 or np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _within_columns(merged: pd.DataFrame) -> float:
    values = [
        spearman(g["value"], g["reference"])
        for _, g in merged.groupby(["block", "target"])
        if len(g) >= _MIN_SOURCES
    ]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def agreement_table(
    tables: Mapping[str, pd.DataFrame], reference: str = "ablation"
) -> pd.DataFrame:
    """Rank agreement of every metric's table with the ``reference`` table, per block.

    ``tables`` maps metric names to reuse tables of one model (same connections). Returns
    one row per (block, metric), then per metric a row with ``block == "all"``: columns
    ``block, metric, spearman, within_column, connections``.
    """
    if reference not in tables:
        raise ValueError(f"agreement needs the {reference!r} table")
    keys = ["block", "source", "target"]
    ref = tables[reference]
    ref = ref[keys].assign(reference=ref[value_column(ref)].to_numpy())
    rows = []
    for metric, table in tables.items():
        if metric == reference:
            continue
        merged = table[keys].assign(value=table[value_column(table)].to_numpy()).merge(ref, on=keys)
        if len(merged) != len(ref) or len(merged) != len(table):
            raise ValueError(f"the {metric} and {reference} tables cover different connections")
        groups = [(int(b), g) for b, g in merged.groupby("block")] + [("all", merged)]
        for block, g in groups:
            rho = spearman(g["value"], g["reference"])
            rows.append((block, metric, rho, _within_columns(g), len(g)))
    return pd.DataFrame(rows, columns=COLUMNS)


def agreement_text(df: pd.DataFrame) -> str:
    """A plain-text table: one row per metric, ρ per block, over all blocks, within columns."""
    blocks = [b for b in dict.fromkeys(df["block"]) if b != "all"]
    header = (
        f"{'metric':<12}"
        + "".join(f"{f'block {b}':>9}" for b in blocks)
        + f"{'all':>9}{'within col.':>13}"
    )
    lines = [header]
    for metric, g in df.groupby("metric", sort=False):
        by_block = g.set_index(g["block"].astype(str))
        cells = "".join(f"{by_block.loc[str(b), 'spearman']:>9.2f}" for b in blocks)
        lines.append(
            f"{metric:<12}{cells}{by_block.loc['all', 'spearman']:>9.2f}"
            f"{by_block.loc['all', 'within_column']:>13.2f}"
        )
    return "\n".join(lines)
