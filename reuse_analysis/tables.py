"""The reuse table's contract, shared by every metric: names, value columns, normalisation.

Every metric gives one row per (block, source, target) with the columns
``block, source, target, target_kind, <value>, normalized`` (then metric-specific extras),
where ``<value>`` names what the metric measures (``mean_abs_weight`` for the paper's
metric). ``df.attrs["metric"]`` records the metric, so that plots, observations and
reports read the value column through :func:`value_column` whatever the metric.

Pure pandas, no torch: plotting and reports import this, and the command line reads the
metric names from here without importing pandas (it is imported where a table is built).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class MetricInfo:
    """What a metric measures and how its table names it."""

    name: str  # the --metric value
    column: str  # the value column (the table's 5th)
    label: str  # axis / colour-bar label
    description: str  # one sentence for reports and --help
    data_driven: bool  # runs the model on images (needs a data set)


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo(
            "weight",
            "mean_abs_weight",
            "average |w|",
            "mean |w| of the first-conv weights on the source's channels (the paper's metric)",
            False,
        ),
        MetricInfo(
            "bn-weight",
            "mean_abs_bn_weight",
            "average |w|·|γ|/σ",
            "mean |w| with each input channel's weights scaled by |γ|/√(σ²+ε) of the batch "
            "norm in front of the conv",
            False,
        ),
        MetricInfo(
            "activation",
            "mean_abs_contribution",
            "mean |contribution|",
            "mean absolute contribution of the source's channels to the target's first-conv "
            "output (or logits) over real images",
            True,
        ),
        MetricInfo(
            "ablation",
            "loss_increase",
            "loss increase when cut",
            "exact increase of the mean loss on real images when the connection alone is cut",
            True,
        ),
        MetricInfo(
            "taylor",
            "taylor_loss_increase",
            "first-order loss increase",
            "first-order (Taylor) estimate of the ablation loss increase, −Σ (∂L/∂w)·w over "
            "the connection's weights",
            True,
        ),
    )
}
WEIGHT_METRICS: tuple[str, ...] = tuple(n for n, m in METRICS.items() if not m.data_driven)
DATA_METRICS: tuple[str, ...] = tuple(n for n, m in METRICS.items() if m.data_driven)

#: The key columns every table starts with.
KEYS = ["block", "source", "target", "target_kind"]
#: The columns of a run's ``NAME.reuse.csv``: the weight table after every epoch.
REUSE_LOG_COLUMNS = ["epoch", *KEYS, "mean_abs_weight"]
#: The optional last column of a reuse log: the model name the run trained (``--arch``),
#: written since the log's untrained reference needs it; older logs lack it.
REUSE_LOG_ARCH = "arch"


def metric_info(name: str) -> MetricInfo:
    """The metric called ``name``; ValueError naming the known ones otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}") from None


def value_column(df: pd.DataFrame) -> str:
    """The column holding the metric's raw values (``mean_abs_weight``, ``loss_increase`` …)."""
    recorded = METRICS.get(df.attrs.get("metric", ""))
    if recorded is not None and recorded.column in df.columns:
        return recorded.column
    for info in METRICS.values():
        if info.column in df.columns:
            return info.column
    names = ", ".join(m.column for m in METRICS.values())
    raise ValueError(f"reuse table lacks a value column (one of {names})")


def table_metric(df: pd.DataFrame) -> MetricInfo:
    """The metric a table holds, from its attrs or else from its value column."""
    column = value_column(df)
    return next(m for m in METRICS.values() if m.column == column)


def column_minmax(values: pd.Series, columns: pd.Series) -> pd.Series:
    """Min–max scale ``values`` to [0, 1] within each column (the paper's Figure 5 colours).

    A column with one source, or whose sources all have the same value, is 1.0.
    """
    grouped = values.groupby(columns)
    low, high = grouped.transform("min"), grouped.transform("max")
    span = high - low
    scaled = (values - low) / span.where(span > 0)
    return scaled.fillna(1.0)


def build_table(
    rows: Sequence[tuple[int, int, int, str, float]],
    metric: str,
    *,
    concat_order: str,
    structure: str,
    extra: dict[str, Sequence[float]] | None = None,
    attrs: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """A reuse table from raw ``(block, source, target, kind, value)`` rows.

    Adds the column-normalised values, then ``extra`` columns (same order as ``rows``), and
    records the metric, concat order and structure summary in ``attrs``.
    """
    import pandas as pd

    info = metric_info(metric)
    df = pd.DataFrame(list(rows), columns=[*KEYS, info.column])
    df[info.column] = df[info.column].astype("float64")
    df["normalized"] = column_minmax(
        df[info.column], df["block"].astype(str) + "/" + df["target"].astype(str)
    )
    for name, values in (extra or {}).items():
        df[name] = list(values)
    df = df.astype({"block": "int64", "source": "int64", "target": "int64"})
    df.attrs.update(concat_order=concat_order, metric=metric, structure=structure, **(attrs or {}))
    return df
