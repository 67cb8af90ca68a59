"""When does the paper's pattern appear during training? Statistics of a run's reuse log.

``reuse-analysis train`` records the weight reuse table of a DenseNet after every epoch in
``NAME.reuse.csv`` (epoch 0 = the initialisation). From each epoch's table this module
computes the statistics that distinguish a trained network from an untrained one, so that
a run's own epoch 0 is the untrained reference of every curve:

* the Pearson correlation with the paper's Figure 5, per block (DenseNet-40 only);
* observation 3: the share of layers in blocks 2 and up whose least-weighted source is the
  block input (row 0), and row 0's weight ÷ the median of the other sources';
* observation 4: the classifier's mean weight on the last quarter of the block's sources ÷
  its mean weight on the others;
* the unevenness of the layers' columns (coefficient of variation over sources, median
  over layers): near 0.1–0.2 at initialisation, growing as layers pick their inputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reuse_analysis.figure5 import figure5_correlation
from reuse_analysis.observations import dispersion, focus_ratio, row0_ratio, row0_weakest

COLUMNS = [
    "epoch",
    "fig5_block1",
    "fig5_block2",
    "fig5_block3",
    "row0_weakest_share",
    "row0_ratio",
    "classifier_focus",
    "layer_unevenness",
]


def _columns(table: pd.DataFrame, kind: str) -> list[tuple[int, np.ndarray]]:
    """``(block, per-source weights in source order)`` of every target column of ``kind``."""
    rows = table[table["target_kind"] == kind].sort_values(["block", "target", "source"])
    return [
        (int(block), group["mean_abs_weight"].to_numpy(dtype=float))
        for (block, _), group in rows.groupby(["block", "target"], sort=True)
    ]


def epoch_statistics(table: pd.DataFrame) -> dict[str, float]:
    """The statistics of one epoch's reuse table (NaN where the model has no such part)."""
    layers = [w for _, w in _columns(table, "layer") if len(w) >= 3]
    later = [w for b, w in _columns(table, "layer") if b >= 2 and len(w) >= 3]
    heads = [w for _, w in _columns(table, "classifier") if len(w) >= 3]
    r = figure5_correlation(table) or {}
    nan = float("nan")
    return {
        **{f"fig5_block{b}": r.get(b, nan) for b in (1, 2, 3)},
        "row0_weakest_share": float(np.mean([row0_weakest(w)[0] for w in later])) if later else nan,
        "row0_ratio": float(np.median([row0_ratio(w)[0] for w in later])) if later else nan,
        "classifier_focus": float(focus_ratio(heads[0])[0]) if heads else nan,
        "layer_unevenness": float(np.median([dispersion(w)[0] for w in layers])) if layers else nan,
    }


def reuse_dynamics(reuse_log: pd.DataFrame) -> pd.DataFrame:
    """One row of :func:`epoch_statistics` per epoch of a run's ``.reuse.csv``."""
    rows = [
        {"epoch": int(epoch), **epoch_statistics(table.reset_index(drop=True))}
        for epoch, table in reuse_log.groupby("epoch", sort=True)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)
