"""The paper's four observations on Figure 5, tested against untrained and shuffled networks.

Huang et al. read four observations off Figure 5 by eye (§5). An untrained DenseNet
already "spreads its weight over many inputs" (every slice of a freshly initialised conv
has the same expected |w|), so a statistic alone says nothing about learning. Here each
observation is measured per block, with a basic bootstrap interval (95 %) over the target
layers' output filters, next to two null models (:mod:`reuse_analysis.nulls`): the same shapes
freshly initialised (``SEEDS`` seeds) and the model's own weights with each target's input
channels permuted. A verdict needs the model *beyond both nulls* (one-sided permutation-
style p ≤ ``ALPHA``, and an effect of at least the stated size):

1. *Spread within blocks* — evenness of each layer column (``exp(entropy)/n`` of its
   source weights: 1 = all sources alike, 1/n = one source). Statistic per block: the
   median over layers with ≥ 3 sources. Learning gate: the columns' dispersion (CV,
   std/mean of the source weights, median over the layers) beyond both nulls by ≥
   ``CV_EFFECT``; without it the verdict is *not applicable* (spreading is what an
   untrained network does). With it: holds when the interval's low end is ≥ ``SPREAD``,
   does not hold when its high end is below.
2. *Transitions spread over the whole block* — the same for each transition column.
3. *Transition outputs get the least weight* (blocks ≥ 2) — the share of layers with ≥ 3
   sources whose weakest source is row 0; beyond both nulls (chance level) and interval
   low end ≥ ``ROW0_SHARE`` holds. Effect size: the median of row 0 ÷ median other source.
4. *The classifier uses the whole block (a) but concentrates on its last layers (b)* —
   (a) the share of sources with ≥ ``KEPT_LEVEL`` × the median source weight, gated like
   observation 1, holds at ≥ ``WHOLE_BLOCK``; (b) the mean weight on the last quarter of
   the sources ÷ the mean on the others, beyond both nulls and interval low end ≥
   ``FOCUS``. Observation 4 holds when both halves do.

An observation holds when every block holds; it does not hold when any block does not;
the statistic reported for 1–3 is the weakest block's (its interval and nulls likewise).
Everything is computed from the weights alone (the paper's metric, mean |w|).

The table helpers at the end (:func:`spread`, :func:`least_weight_source`,
:func:`classifier_focus`) read a reuse table of any metric, for the report's plots.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from reuse_analysis.nulls import init_like, targets
from reuse_analysis.structure import ConcatOrder, DenseNetStructure
from reuse_analysis.tables import value_column

HOLDS, FAILS, INCONCLUSIVE, NOT_APPLICABLE = (
    "holds",
    "does not hold",
    "inconclusive",
    "not applicable",
)
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_APPLICABLE)

#: Fresh initialisations and permutations per null model: with 20, the smallest one-sided
#: p-value (1 + 0) / (1 + 20) = 0.048 is below ALPHA.
SEEDS = 20
#: Bootstrap resamples of the target layers' output filters; interval = 2.5–97.5 %.
RESAMPLES = 200
ALPHA = 0.05
#: Least dispersion above both nulls' means for weights to count as shaped by training.
CV_EFFECT = 0.10
SPREAD = 0.5  # observations 1, 2: at least half of the inputs' worth of weight
ROW0_SHARE = 0.5  # observation 3: row 0 weakest in at least half of the layers
KEPT_LEVEL = 0.1  # observation 4a: a source under a tenth of the median source is unused
WHOLE_BLOCK = 0.9  # observation 4a: at least 90 % of the sources used
FOCUS = 1.25  # observation 4b: the last quarter gets ≥ 1.25× the others' mean weight


# ------------------------------------------------------------------------- columns
@dataclass(frozen=True)
class Column:
    """One target column: mean |w| per output filter (rows) and source (columns)."""

    block: int
    target: int
    kind: str
    filters: np.ndarray  # [out, sources]

    @property
    def sources(self) -> int:
        return self.filters.shape[1]


def _abs_inputs(weight: torch.Tensor) -> np.ndarray:
    """``[out, in]``: mean |w| of each output filter on each input channel (float64)."""
    w = weight.detach().to(torch.float64).abs()
    return w.reshape(w.shape[0], w.shape[1], -1).mean(dim=2).numpy()


def _by_source(a: np.ndarray, slices: Sequence[tuple[int, int, int]]) -> np.ndarray:
    return np.stack([a[:, start:stop].mean(axis=1) for _, start, stop in slices], axis=1)


def _plan(
    structure: DenseNetStructure, order: ConcatOrder
) -> list[tuple[int, int, str, str, list]]:
    return [
        (block.index, target, kind, key, block.source_slices(target, order))
        for block in structure.blocks
        for target, kind, key, _ in targets(block)
    ]


def weight_columns(
    state_dict: Mapping[str, torch.Tensor], structure: DenseNetStructure, order: ConcatOrder
) -> list[Column]:
    """Every target column of the model, per output filter and source."""
    return [
        Column(b, t, kind, _by_source(_abs_inputs(state_dict[key]), slices))
        for b, t, kind, key, slices in _plan(structure, order)
    ]


def untrained_columns(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    order: ConcatOrder,
    seed: int,
) -> list[Column]:
    """The columns of the same shapes freshly initialised (:func:`nulls.init_like`)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        Column(b, t, kind, _by_source(_abs_inputs(init_like(state_dict[key], generator)), slices))
        for b, t, kind, key, slices in _plan(structure, order)
    ]


def permuted_columns(
    abs_inputs: Sequence[np.ndarray],
    structure: DenseNetStructure,
    order: ConcatOrder,
    seed: int,
) -> list[Column]:
    """The model's columns with each target's input channels shuffled."""
    rng = np.random.default_rng(seed)
    return [
        Column(b, t, kind, _by_source(a[:, rng.permutation(a.shape[1])], slices))
        for (b, t, kind, _, slices), a in zip(_plan(structure, order), abs_inputs, strict=True)
    ]


# ------------------------------------------------------------------------- statistics
# Each takes source weights as rows [replicates, sources] and returns one value per row.
def evenness(w: np.ndarray) -> np.ndarray:
    """``exp(Shannon entropy) / n`` of each row's weights: 1 uniform, 1/n one source."""
    w = np.atleast_2d(w)
    p = w / w.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    return np.exp(h) / w.shape[1]


def dispersion(w: np.ndarray) -> np.ndarray:
    """Coefficient of variation (std / mean) of each row's weights."""
    w = np.atleast_2d(w)
    return w.std(axis=1) / w.mean(axis=1)


def row0_weakest(w: np.ndarray) -> np.ndarray:
    """1 where source 0 has the least weight of the row, else 0."""
    return (np.atleast_2d(w).argmin(axis=1) == 0).astype(float)


def row0_ratio(w: np.ndarray) -> np.ndarray:
    """Source 0's weight ÷ the median of the other sources'."""
    w = np.atleast_2d(w)
    return w[:, 0] / np.median(w[:, 1:], axis=1)


def kept_share(w: np.ndarray) -> np.ndarray:
    """Share of sources with at least ``KEPT_LEVEL`` × the row's median weight."""
    w = np.atleast_2d(w)
    return (w >= KEPT_LEVEL * np.median(w, axis=1, keepdims=True)).mean(axis=1)


def last_quarter(sources: int) -> int:
    """How many of the last sources (excluding row 0's count) form the last quarter."""
    return max(1, math.ceil((sources - 1) / 4))


def focus_ratio(w: np.ndarray) -> np.ndarray:
    """Mean weight on the last quarter of the sources ÷ mean weight on the others."""
    w = np.atleast_2d(w)
    last = last_quarter(w.shape[1])
    return w[:, -last:].mean(axis=1) / w[:, :-last].mean(axis=1)


# ------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Null:
    """What one null model gives on a statistic, and how far the model is from it."""

    mean: float
    sd: float
    p_value: float  # one-sided, in the direction the claim (or learning) moves
    z: float  # (model − mean) / sd

    def to_dict(self) -> dict:
        return {"mean": self.mean, "sd": self.sd, "p_value": self.p_value, "z": self.z}


@dataclass(frozen=True)
class Measured:
    """A statistic of the model, its bootstrap interval and both nulls."""

    value: float
    interval: tuple[float, float]
    null: dict[str, Null]  # "untrained", "permuted"

    def beyond(self, direction: str, effect: float = 0.0) -> bool:
        """Beyond both nulls at ``ALPHA``, by at least ``effect`` (absolute)."""
        sign = 1 if direction == "above" else -1
        return all(
            n.p_value <= ALPHA and sign * (self.value - n.mean) >= effect
            for n in self.null.values()
        )

    def to_dict(self) -> dict:
        return {
            "value": _num(self.value),
            "interval": [_num(v) for v in self.interval],
            "null": {k: {a: _num(b) for a, b in n.to_dict().items()} for k, n in self.null.items()},
        }


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def _null(value: float, samples: np.ndarray, direction: str) -> Null:
    samples = samples[np.isfinite(samples)]
    if not len(samples) or not math.isfinite(value):
        return Null(math.nan, math.nan, math.nan, math.nan)
    hits = (samples >= value) if direction == "above" else (samples <= value)
    sd = float(samples.std(ddof=1)) if len(samples) > 1 else 0.0
    z = (value - samples.mean()) / sd if sd > 0 else math.copysign(math.inf, value - samples.mean())
    if value == samples.mean():
        z = 0.0
    return Null(float(samples.mean()), sd, float((1 + hits.sum()) / (1 + len(samples))), float(z))


Select = Callable[[Column], bool]
Stat = Callable[[list[np.ndarray]], np.ndarray]  # column rows → one value per replicate


@dataclass
class _Sets:
    """The model's columns, their bootstrap replicates and both nulls' columns."""

    model: list[Column]
    boot: list[np.ndarray]  # per column [RESAMPLES, sources]
    untrained: list[list[Column]]
    permuted: list[list[Column]]


def _bootstrap(col: Column, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Source weights of ``resamples`` resamples (with replacement) of the output filters.

    Each resample is a vector of counts per filter, so a whole column is one matrix product
    (scipy.stats.bootstrap would loop in Python over thousands of columns' resamples).
    """
    out = col.filters.shape[0]
    counts = rng.multinomial(out, np.full(out, 1 / out), size=resamples)
    return counts @ col.filters / out


def _measure(
    sets: _Sets,
    select: Select,
    stat: Stat,
    direction: str,
    bounds: tuple[float, float] = (0, 1),
    *,
    share: bool = False,
) -> Measured:
    """The statistic on the model, its bootstrap interval and both nulls.

    Smooth statistics get the basic interval ``[2v − q97.5, 2v − q2.5]`` (clipped to
    ``bounds``): resampling filters adds noise to every source's mean, which biases
    evenness down and dispersion up, and the basic interval undoes that shift. Shares of
    columns (``share=True``) are counts, unbiased under resampling, and get the percentile
    interval, which stays honest at 0 and 1 where the basic one collapses.
    """
    idx = [i for i, c in enumerate(sets.model) if select(c)]
    value = float(stat([sets.model[i].filters.mean(axis=0)[None] for i in idx])[0])
    reps = stat([sets.boot[i] for i in idx])
    if np.isfinite(reps).any() and math.isfinite(value):
        q_lo, q_hi = np.nanpercentile(reps, [2.5, 97.5])
        if share:
            lo, hi = float(q_lo), float(q_hi)
        else:
            lo, hi = (float(np.clip(2 * value - q, *bounds)) for q in (q_hi, q_lo))
    else:
        lo = hi = math.nan
    nulls = {}
    for name, runs in (("untrained", sets.untrained), ("permuted", sets.permuted)):
        samples = np.array(
            [float(stat([run[i].filters.mean(axis=0)[None] for i in idx])[0]) for run in runs]
        )
        nulls[name] = _null(value, samples, direction)
    return Measured(value, (lo, hi), nulls)


def _median_of(fn: Callable[[np.ndarray], np.ndarray]) -> Stat:
    def stat(rows: list[np.ndarray]) -> np.ndarray:
        return np.median(np.stack([fn(r) for r in rows], axis=1), axis=1)

    return stat


def _mean_of(fn: Callable[[np.ndarray], np.ndarray]) -> Stat:
    def stat(rows: list[np.ndarray]) -> np.ndarray:
        return np.mean(np.stack([fn(r) for r in rows], axis=1), axis=1)

    return stat


# ------------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class BlockResult:
    """One observation in one block: the statistic, its nulls and the block's verdict."""

    block: int
    measured: Measured
    verdict: str
    extra: dict[str, Measured] = field(default_factory=dict)  # gate, effect size, part (a)
    parts: dict[str, str] = field(default_factory=dict)  # verdicts of an observation's halves

    def to_dict(self) -> dict:
        return {
            "block": self.block,
            "statistic": _num(self.measured.value),
            **self.measured.to_dict(),
            "verdict": self.verdict,
            **{k: m.to_dict() for k, m in self.extra.items()},
            **({"parts": dict(self.parts)} if self.parts else {}),
        }


@dataclass(frozen=True)
class Observation:
    """One observation of the paper, tested per block against both nulls."""

    number: int
    claim: str
    measure: str  # what the statistic is, in words
    threshold: str  # what a verdict needs, in words
    value: float  # the weakest block's statistic (NaN: nothing to measure)
    interval: tuple[float, float]
    null: dict[str, Null]
    verdict: str
    blocks: tuple[BlockResult, ...]
    detail: str  # the per-block numbers, in words

    def to_dict(self) -> dict:
        return {
            "number": self.number,
            "claim": self.claim,
            "measure": self.measure,
            "threshold": self.threshold,
            "verdict": self.verdict,
            "statistic": _num(self.value),
            "interval": [_num(v) for v in self.interval],
            "null": {k: {a: _num(b) for a, b in n.to_dict().items()} for k, n in self.null.items()},
            "blocks": [b.to_dict() for b in self.blocks],
            "detail": self.detail,
        }


def _claim_verdict(m: Measured, learned: bool, threshold: float, null_meets: bool) -> str:
    """Verdict of a "statistic ≥ threshold" claim once it is known whether training shows."""
    if not math.isfinite(m.value):
        return INCONCLUSIVE
    if not learned:
        return NOT_APPLICABLE if null_meets else FAILS
    lo, hi = m.interval
    if lo >= threshold:
        return HOLDS
    if hi < threshold:
        return FAILS
    return INCONCLUSIVE


def _combine(verdicts: Sequence[str]) -> str:
    if not verdicts:
        return INCONCLUSIVE
    if FAILS in verdicts:
        return FAILS
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    if all(v == NOT_APPLICABLE for v in verdicts):
        return NOT_APPLICABLE
    return INCONCLUSIVE


def _weakest(results: Sequence[BlockResult]) -> BlockResult | None:
    finite = [r for r in results if math.isfinite(r.measured.value)]
    return min(finite, key=lambda r: r.measured.value) if finite else None


def _summary(m: Measured) -> str:
    u, p = m.null["untrained"], m.null["permuted"]
    return (
        f"{m.value:.3f} [{m.interval[0]:.3f}, {m.interval[1]:.3f}] "
        f"(untrained {u.mean:.3f}, p={u.p_value:.3f}; permuted {p.mean:.3f}, p={p.p_value:.3f})"
    )


def _spread_obs(sets: _Sets, number: int, blocks: Sequence[int], kind: str) -> Observation:
    results = []
    for b in blocks:

        def sel(c: Column, b: int = b) -> bool:
            return c.block == b and c.kind == kind and c.sources >= 3

        if not any(sel(c) for c in sets.model):
            continue
        gate = _measure(sets, sel, _median_of(dispersion), "above", (0, math.inf))
        m = _measure(sets, sel, _median_of(evenness), "below")
        learned = gate.beyond("above", CV_EFFECT)
        null_meets = all(n.mean >= SPREAD for n in m.null.values())
        verdict = _claim_verdict(m, learned, SPREAD, null_meets)
        results.append(BlockResult(b, m, verdict, {"learning_gate": gate}))
    what = "layers" if kind == "layer" else "transition"
    if number == 1:
        claim = "Within a block, every layer spreads its weight over many inputs."
        measure = (
            "evenness exp(H)/n of each layer's source weights, median over the block's layers "
            "with ≥ 3 sources (1 = every source alike)"
        )
    else:
        claim = "Transition layers spread their weight across all layers of the preceding block."
        measure = "evenness exp(H)/n of the transition's source weights"
    return _observation(
        number,
        claim,
        measure,
        f"the {what}' dispersion (CV) beyond both nulls (p ≤ {ALPHA}) by ≥ {CV_EFFECT} "
        f"(else not applicable), then the 95 % interval ≥ {SPREAD} holds, < {SPREAD} does not",
        results,
    )


def _row0_obs(sets: _Sets, blocks: Sequence[int]) -> Observation:
    results = []
    for b in blocks:

        def sel(c: Column, b: int = b) -> bool:
            return c.block == b and c.kind == "layer" and c.sources >= 3

        if b < 2 or not any(sel(c) for c in sets.model):
            continue
        m = _measure(sets, sel, _mean_of(row0_weakest), "above", share=True)
        ratio = _measure(sets, sel, _median_of(row0_ratio), "below", (0, math.inf))
        null_meets = all(n.mean >= ROW0_SHARE for n in m.null.values())
        verdict = _claim_verdict(m, m.beyond("above"), ROW0_SHARE, null_meets)
        results.append(BlockResult(b, m, verdict, {"effect_row0_vs_median": ratio}))
    return _observation(
        3,
        "In blocks 2 and later, layers give the least weight to the transition outputs (row 0).",
        "share of the block's layers (≥ 3 sources) whose weakest source is row 0",
        f"beyond both nulls (p ≤ {ALPHA}) and the 95 % interval ≥ {ROW0_SHARE} holds; "
        f"at the nulls or the interval < {ROW0_SHARE} does not",
        results,
    )


def _classifier_obs(sets: _Sets) -> Observation:
    results = []
    for c in sets.model:
        if c.kind != "classifier" or c.sources < 3:
            continue

        def sel(x: Column, c: Column = c) -> bool:
            return x.block == c.block and x.kind == "classifier"

        gate = _measure(sets, sel, _median_of(dispersion), "above", (0, math.inf))
        whole = _measure(sets, sel, _median_of(kept_share), "below", share=True)
        focus = _measure(sets, sel, _median_of(focus_ratio), "above", (0, math.inf))
        part_a = _claim_verdict(
            whole,
            gate.beyond("above", CV_EFFECT),
            WHOLE_BLOCK,
            all(n.mean >= WHOLE_BLOCK for n in whole.null.values()),
        )
        part_b = _claim_verdict(
            focus, focus.beyond("above"), FOCUS, all(n.mean >= FOCUS for n in focus.null.values())
        )
        results.append(
            BlockResult(
                c.block,
                focus,
                _combine([part_a, part_b]),
                {"uses_whole_block": whole, "learning_gate": gate},
                {"uses_whole_block": part_a, "concentrates_on_last": part_b},
            )
        )
    obs = _observation(
        4,
        "The classifier uses the whole last block but concentrates on its last layers.",
        "(b) the classifier's mean weight on the last quarter of the block's sources ÷ its "
        "mean weight on the others; (a) the share of sources with ≥ "
        f"{KEPT_LEVEL:g}× the median source weight",
        f"(a) learning gate as in observation 1, then interval ≥ {WHOLE_BLOCK}; (b) beyond "
        f"both nulls (p ≤ {ALPHA}) and interval ≥ {FOCUS}; holds when both halves hold",
        results,
        weakest=False,
    )
    return obs


def _observation(
    number: int,
    claim: str,
    measure: str,
    threshold: str,
    results: list[BlockResult],
    *,
    weakest: bool = True,
) -> Observation:
    verdict = _combine([r.verdict for r in results])
    pick = _weakest(results) if weakest else (results[0] if results else None)
    if pick is None:
        nan = Null(math.nan, math.nan, math.nan, math.nan)
        value, interval, null = math.nan, (math.nan, math.nan), {"untrained": nan, "permuted": nan}
        detail = "nothing to measure in this model"
    else:
        value, interval, null = pick.measured.value, pick.measured.interval, pick.measured.null
        detail = "; ".join(f"block {r.block}: {_summary(r.measured)} {r.verdict}" for r in results)
    return Observation(
        number, claim, measure, threshold, value, interval, null, verdict, tuple(results), detail
    )


def column_sets(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    order: ConcatOrder,
    *,
    seeds: int = SEEDS,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> _Sets:
    """The model's columns, their bootstrap replicates, and ``seeds`` runs of each null."""
    model = weight_columns(state_dict, structure, order)
    rng = np.random.default_rng(seed)
    boot = [_bootstrap(c, rng, resamples) for c in model]
    abs_inputs = [_abs_inputs(state_dict[key]) for _, _, _, key, _ in _plan(structure, order)]
    return _Sets(
        model,
        boot,
        [untrained_columns(state_dict, structure, order, seed + 1 + s) for s in range(seeds)],
        [permuted_columns(abs_inputs, structure, order, seed + 1 + s) for s in range(seeds)],
    )


def observations(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    concat_order: ConcatOrder = "oldest-first",
    *,
    seeds: int = SEEDS,
    resamples: int = RESAMPLES,
) -> list[Observation]:
    """The four observations, per block, against both nulls (see the module docstring)."""
    sets = column_sets(state_dict, structure, concat_order, seeds=seeds, resamples=resamples)
    blocks = [b.index for b in structure.blocks]
    return [
        _spread_obs(sets, 1, blocks, "layer"),
        _spread_obs(sets, 2, blocks, "transition"),
        _row0_obs(sets, blocks),
        _classifier_obs(sets),
    ]


def observations_payload(obs: Sequence[Observation], concat_order: Mapping[str, object]) -> dict:
    """The ``observations --json`` document."""
    return {
        "concat_order": dict(concat_order),
        "level": ALPHA,
        "seeds": SEEDS,
        "resamples": RESAMPLES,
        "observations": [o.to_dict() for o in obs],
    }


def observations_table(obs: Sequence[Observation]) -> pd.DataFrame:
    """One row per observation: number, claim, measure, value, interval, nulls, verdict."""
    return pd.DataFrame(
        [
            {
                "number": o.number,
                "claim": o.claim,
                "measure": o.measure,
                "value": o.value,
                "low": o.interval[0],
                "high": o.interval[1],
                "untrained": o.null["untrained"].mean,
                "permuted": o.null["permuted"].mean,
                "verdict": o.verdict,
            }
            for o in obs
        ]
    )


# ------------------------------------------------------------------------- table helpers
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
    last = last_quarter(len(w))
    tail, rest = w.iloc[-last:], w.iloc[:-last]
    return {
        "last_sources": last,
        "ratio": float(tail.mean() / rest.mean()) if rest.mean() > 0 else math.inf,
        "share_last": float(tail.sum() / w.sum()),
        "uniform_share": last / len(w),
        "spread": float((w >= 0.5 * w.max()).mean()),
    }
