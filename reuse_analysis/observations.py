"""The paper's four observations on Figure 5, and transition redundancy, as tested numbers.

Huang et al. read four observations off Figure 5 by eye (§5). Each becomes a statistic
with a threshold and a verdict here, computed from the reuse table alone (pure pandas),
so that any model can be checked and a reader can recompute every number:

1. *Spread within blocks* — for every layer with at least three sources, the share of its
   sources that get at least half of its strongest source's weight. Statistic: the median
   share over all layers. Holds at ≥ 0.5, fails below 0.3, inconclusive between.
2. *Transitions spread over the whole block* — the same share for each transition
   column. Statistic: the smallest share over all transitions. Same thresholds.
3. *Transition outputs get the least weight* — in blocks 2…B, for every layer with at
   least three sources, whether source 0 (the transition output) gets the least weight of
   all its sources. Statistic: the share of such layers. Holds at ≥ 0.5, fails below 0.25.
4. *The classifier concentrates on the last layers* — the classifier's mean weight on the
   sources of the last quarter of the final block divided by its mean weight on the other
   sources. Holds at ≥ 1.25, fails at ≤ 1.0.

Transition redundancy (per transition) uses per-channel usage of the transition's output
channels by the next block: see :func:`transition_redundancy`.

"Weight" above is the table's value column, whatever the metric (:func:`value_column`):
the same statistics test the observations on BN-scaled weights, activations or ablation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from reuse_analysis.tables import value_column

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Observation:
    """One observation of the paper, tested: a statistic, its thresholds and a verdict."""

    number: int
    claim: str
    statistic: str  # what was measured, in words
    value: float  # NaN when the model has nothing to measure (e.g. one block only)
    holds_at: str  # the threshold, in words
    verdict: str
    detail: str  # the numbers behind the value

    def to_dict(self) -> dict:
        return asdict(self)


def _verdict(value: float, hold: float, fail: float, *, inclusive_fail: bool = False) -> str:
    if math.isnan(value):
        return INCONCLUSIVE
    if value >= hold:
        return HOLDS
    if value < fail or (inclusive_fail and value <= fail):
        return FAILS
    return INCONCLUSIVE


def spread(df: pd.DataFrame) -> pd.DataFrame:
    """Per target column: number of sources and the share getting ≥ half the column max."""

    value = value_column(df)

    def share(group: pd.DataFrame) -> float:
        w = group[value]
        return float((w >= 0.5 * w.max()).mean()) if w.max() > 0 else 1.0

    rows = [
        (block, target, group["target_kind"].iat[0], len(group), share(group))
        for (block, target), group in df.groupby(["block", "target"], sort=True)
    ]
    return pd.DataFrame(rows, columns=["block", "target", "target_kind", "sources", "spread"])


def least_weight_source(df: pd.DataFrame) -> pd.DataFrame:
    """Per layer column: the source with the least weight and row 0's weight ratio."""
    rows = []
    value = value_column(df)
    layers = df[df["target_kind"] == "layer"]
    for (block, target), group in layers.groupby(["block", "target"], sort=True):
        w = group.set_index("source")[value]
        others = w.drop(index=0)
        ratio = float(w[0] / others.median()) if len(others) and others.median() > 0 else math.nan
        rows.append((block, target, len(w), int(w.idxmin()), ratio))
    return pd.DataFrame(
        rows, columns=["block", "target", "sources", "least_source", "row0_vs_median"]
    )


def classifier_focus(df: pd.DataFrame) -> dict[str, float] | None:
    """Mean classifier weight on the last quarter of the final block against the rest.

    Also returns ``share_last``: the classifier's total weight on those sources divided by
    its total weight, next to ``uniform_share``, what equal weights would give.
    """
    col = df[df["target_kind"] == "classifier"]
    if col.empty:
        return None
    w = col.set_index("source")[value_column(df)].sort_index()
    n_layers = len(w) - 1
    last = max(1, math.ceil(n_layers / 4))
    tail, rest = w.iloc[-last:], w.iloc[:-last]
    return {
        "last_sources": last,
        "ratio": float(tail.mean() / rest.mean()) if rest.mean() > 0 else math.inf,
        "share_last": float(tail.sum() / w.sum()),
        "uniform_share": last / len(w),
        "spread": float((w >= 0.5 * w.max()).mean()),
    }


def observations(df: pd.DataFrame) -> list[Observation]:
    """Test the paper's four observations on a reuse table (see the module docstring)."""
    sp = spread(df)
    layers = sp[(sp.target_kind == "layer") & (sp.sources >= 3)]
    obs1 = float(layers["spread"].median()) if len(layers) else math.nan
    trans = sp[sp.target_kind == "transition"]
    obs2 = float(trans["spread"].min()) if len(trans) else math.nan
    least = least_weight_source(df)
    later = least[(least.block >= 2) & (least.sources >= 3)]
    obs3 = float((later.least_source == 0).mean()) if len(later) else math.nan
    focus = classifier_focus(df)
    obs4 = focus["ratio"] if focus else math.nan

    per_block = ", ".join(
        f"block {b}: {g['spread'].median():.2f}" for b, g in layers.groupby("block")
    )
    per_trans = ", ".join(f"after block {r.block}: {r.spread:.2f}" for r in trans.itertuples())
    per_block3 = ", ".join(
        f"block {b}: {(g.least_source == 0).mean():.2f} "
        f"(row 0 / median source {g.row0_vs_median.median():.2f})"
        for b, g in later.groupby("block")
    )
    return [
        Observation(
            1,
            "Within a block, every layer spreads its weight over many inputs.",
            "median over layers (≥ 3 sources) of the share of sources with ≥ ½ the "
            "layer's strongest weight",
            obs1,
            "≥ 0.50 holds; < 0.30 does not hold",
            _verdict(obs1, 0.5, 0.3),
            per_block or "no layer with three or more sources",
        ),
        Observation(
            2,
            "Transition layers spread their weight across all layers of the preceding block.",
            "smallest share, over transitions, of sources with ≥ ½ the strongest weight",
            obs2,
            "≥ 0.50 holds; < 0.30 does not hold",
            _verdict(obs2, 0.5, 0.3),
            per_trans or "the model has no transition layer",
        ),
        Observation(
            3,
            "In blocks 2 and later, layers give the least weight to the transition outputs "
            "(row 0).",
            "share of layers (≥ 3 sources) in blocks ≥ 2 whose weakest source is row 0",
            obs3,
            "≥ 0.50 holds; < 0.25 does not hold",
            _verdict(obs3, 0.5, 0.25),
            per_block3 or "the model has a single dense block",
        ),
        Observation(
            4,
            "The classifier uses the whole last block but concentrates on its last layers.",
            "classifier's mean weight on the last quarter of the block's sources ÷ its mean "
            "weight on the others",
            obs4,
            "≥ 1.25 holds; ≤ 1.00 does not hold",
            _verdict(obs4, 1.25, 1.0, inclusive_fail=True),
            (
                f"last {focus['last_sources']} sources carry {100 * focus['share_last']:.1f} % "
                f"of the weight (uniform: {100 * focus['uniform_share']:.1f} %); "
                f"{100 * focus['spread']:.0f} % of sources get ≥ ½ the strongest weight"
            )
            if focus
            else "no classifier found after the last block",
        ),
    ]


def observations_table(obs: list[Observation]) -> pd.DataFrame:
    """One row per observation: number, claim, statistic, value, threshold, verdict."""
    return pd.DataFrame([o.to_dict() for o in obs])


@dataclass(frozen=True)
class TransitionRedundancy:
    """How much of a transition's output the next block uses."""

    transition: int  # the block the transition follows
    channels: int  # its output channels (the next block's c0)
    compression: float  # its θ
    row0_vs_other: float  # next block's mean weight on row 0 ÷ on the other sources
    weak_share: float  # share of channels used < 1/10 as much as the median channel
    channels_for_90: int  # fewest channels that carry 90 % of the total usage
    suggested_theta: float  # θ · channels_for_90 / channels
    theta_half_supported: bool | None  # plain DenseNet: would θ = 0.5 keep 90 %? (else None)

    def to_dict(self) -> dict:
        return asdict(self)


def transition_redundancy(
    df: pd.DataFrame, usage: pd.DataFrame, compressions: dict[int, float]
) -> list[TransitionRedundancy]:
    """Per transition: use of its outputs by the next block, and the θ that use suggests.

    ``usage`` has one row per (block, channel): the mean |w| that the layers of ``block``
    give to channel ``channel`` of their block input (the previous transition's output),
    as :func:`reuse_analysis.metrics.input_channel_usage` computes. ``compressions`` maps
    the block a transition follows to its θ.
    """
    out = []
    value = value_column(df)
    layer_rows = df[(df.target_kind == "layer") & (df.target >= 2)]
    for b, theta in sorted(compressions.items()):
        nxt = b + 1
        u = usage[usage.block == nxt]["usage"].to_numpy()
        if len(u) == 0:
            continue
        rows = layer_rows[layer_rows.block == nxt]
        row0 = rows[rows.source == 0][value].mean()
        other = rows[rows.source > 0][value].mean()
        median = float(np.median(u))
        ordered = np.sort(u)[::-1]
        cum = np.cumsum(ordered) / ordered.sum()
        needed = int(np.searchsorted(cum, 0.9) + 1)
        suggested = theta * needed / len(u)
        out.append(
            TransitionRedundancy(
                transition=b,
                channels=len(u),
                compression=theta,
                row0_vs_other=float(row0 / other) if other > 0 else math.nan,
                weak_share=float((u < 0.1 * median).mean()),
                channels_for_90=needed,
                suggested_theta=round(float(suggested), 3),
                theta_half_supported=(suggested <= 0.5) if theta >= 0.99 else None,
            )
        )
    return out
