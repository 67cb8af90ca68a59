"""How closely a reuse table matches the paper's Figure 5 (Huang et al. 2017, DenseNet-40).

The digitised figure (``reference/fig5_digitized.json``) holds, per dense block, the
column-scaled weight of each (source, target) cell of the paper's trained DenseNet-40. A
table of a model of the same configuration (3 blocks of 12 layers) is compared with it by
the Pearson correlation of its ``normalized`` column against the figure's values, per
block, over the cells both define. For scale, blocks 1 / 2 / 3: a freshly initialised
DenseNet-40 gives 0.04 ± 0.10 / 0.04 ± 0.17 / 0.00 ± 0.09 (mean ± sd over 10 seeds; up
to 0.34), a public DenseNet-40 that someone else trained on C10+ 0.34 / 0.74 / 0.77.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from reuse_analysis.tables import column_minmax

#: Layers per block and blocks of the figure's model.
LAYERS, BLOCKS = 12, 3


@cache
def figure5() -> dict[int, np.ndarray]:
    """The digitised figure: block → 13×13 array (source × target, NaN where empty)."""
    text = resources.files("reuse_analysis").joinpath("reference/fig5_digitized.json").read_text()
    raw = json.loads(text)
    return {
        b: np.array([[np.nan if v is None else v for v in row] for row in raw[f"B{b}"]])
        for b in range(1, BLOCKS + 1)
    }


def matches_figure5(table: pd.DataFrame) -> bool:
    """Whether ``table`` has the figure's shape: 3 blocks, each with targets 1…13."""
    blocks = sorted(table["block"].unique())
    if blocks != list(range(1, BLOCKS + 1)):
        return False
    return all(table.loc[table["block"] == b, "target"].max() == LAYERS + 1 for b in blocks)


def _normalized(table: pd.DataFrame) -> pd.Series:
    if "normalized" in table:
        return table["normalized"]
    columns = table["block"].astype(str) + "/" + table["target"].astype(str)
    return column_minmax(table["mean_abs_weight"], columns)


def figure5_correlation(table: pd.DataFrame) -> dict[int, float] | None:
    """Per block, Pearson r of the table's column-scaled values against Figure 5.

    ``None`` when the table is not of the figure's configuration. Every cell both define
    counts, the single-source column (target 1, drawn as 1 in both) included; a block whose
    columns are all constant gets NaN.
    """
    if not matches_figure5(table):
        return None
    fig = figure5()
    values = _normalized(table)
    result = {}
    for b in range(1, BLOCKS + 1):
        rows = table[table["block"] == b]
        ours = values.loc[rows.index].to_numpy(dtype=float)
        theirs = fig[b][rows["source"].to_numpy(), rows["target"].to_numpy() - 1]
        keep = ~np.isnan(theirs)
        flat = np.ptp(ours[keep]) == 0  # every column constant: no correlation to speak of
        result[b] = float("nan") if flat else float(np.corrcoef(ours[keep], theirs[keep])[0, 1])
    return result


@dataclass(frozen=True)
class Figure5Match:
    """A model's per-block correlation with Figure 5, next to untrained networks'."""

    r: dict[int, float]
    untrained_mean: dict[int, float]
    untrained_sd: dict[int, float]
    seeds: int

    def line(self) -> str:
        """``0.21 / 0.14 / 0.64 (untrained: 0.04 ± 0.10 / …, 20 seeds)`` for reports."""
        ours = " / ".join(f"{self.r[b]:.2f}" for b in sorted(self.r))
        null = " / ".join(
            f"{self.untrained_mean[b]:.2f} ± {self.untrained_sd[b]:.2f}" for b in sorted(self.r)
        )
        return f"{ours} (the same shapes untrained: {null}, {self.seeds} seeds)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "r": {str(b): v for b, v in self.r.items()},
            "untrained_mean": {str(b): v for b, v in self.untrained_mean.items()},
            "untrained_sd": {str(b): v for b, v in self.untrained_sd.items()},
            "seeds": self.seeds,
        }


def figure5_match(
    table: pd.DataFrame,
    state_dict: Mapping[str, Any],
    structure: Any,
    concat_order: str = "oldest-first",
    *,
    seeds: int = 20,
) -> Figure5Match | None:
    """:func:`figure5_correlation` of ``table`` with what ``seeds`` freshly initialised
    networks of the same shapes give (:func:`reuse_analysis.nulls.untrained_like`), or
    ``None`` when the model is not of the figure's configuration."""
    r = figure5_correlation(table)
    if r is None:
        return None
    from reuse_analysis.metrics import reuse_table
    from reuse_analysis.nulls import untrained_like

    nulls = [
        figure5_correlation(
            reuse_table(untrained_like(state_dict, structure, seed), structure, concat_order)
        )
        for seed in range(seeds)
    ]
    samples = {b: np.array([n[b] for n in nulls if n is not None]) for b in r}
    return Figure5Match(
        r,
        {b: float(v.mean()) for b, v in samples.items()},
        {b: float(v.std(ddof=1)) for b, v in samples.items()},
        seeds,
    )
