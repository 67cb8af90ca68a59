"""Cutting connections: which to cut, masks, pruned checkpoints, fine-tuning, sweeps.

Cutting s → t zeroes ``W_t[:, S_s]``, the slice of target t's first convolution (or the
transition conv, or the classifier) that reads source s — the same as zeroing that input
slice after BN-ReLU. A pruned checkpoint holds the zeroed weights *and* the list of cut
connections (plain data, ``{"block": [...], "source": [...], "target": [...]}``), so any
command loads it as a normal model and ``prune`` can keep the cut weights at zero while
fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from reuse_analysis.errors import ReuseAnalysisError
from reuse_analysis.structure import Classifier, DenseNetStructure, Transition
from reuse_analysis.tables import KEYS, value_column

SCOPES = ("column", "global")
CUT_KEYS = ["block", "source", "target"]


class PruneError(ReuseAnalysisError):
    """A pruning request that cannot be carried out as asked."""


# ----------------------------------------------------------------------------- selection
def select_cuts(table: pd.DataFrame, fraction: float, scope: str = "column") -> pd.DataFrame:
    """The connections to cut: the weakest ``fraction`` by the table's metric.

    ``column`` (default): every target column keeps its strongest ``⌈(1−F)·n⌉`` of its
    ``n`` sources, at least one. ``global``: the strongest ``⌈(1−F)·N⌉`` of all ``N``
    connections are kept, compared by raw value across columns, and every column still
    keeps its strongest source. Ties go to the older source. Returns the cut rows of the
    table (with their values), in table order.
    """
    if not 0.0 <= fraction < 1.0:
        raise PruneError(f"--fraction must be in [0, 1), got {fraction}")
    if scope not in SCOPES:
        raise PruneError(f"--scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    value = value_column(table)
    ranked = table.sort_values(
        ["block", "target", value, "source"], ascending=[True, True, False, True], kind="stable"
    )
    rank = ranked.groupby(["block", "target"]).cumcount()
    if scope == "column":
        sizes = ranked.groupby(["block", "target"])["source"].transform("size")
        keep = sizes.map(lambda n: max(1, math.ceil((1 - fraction) * n - 1e-9)))
        kept = rank < keep
    else:
        budget = max(1, math.ceil((1 - fraction) * len(table) - 1e-9))
        strongest = rank == 0
        rest = ranked[~strongest].sort_values(
            [value, "block", "target", "source"],
            ascending=[False, True, True, True],
            kind="stable",
        )
        extra = rest.index[: max(0, budget - int(strongest.sum()))]
        kept = strongest | ranked.index.isin(extra)
    cut_index = ranked.index[~kept.to_numpy()]
    return table.loc[table.index.isin(cut_index)]


def cuts_record(cuts: pd.DataFrame) -> dict[str, list[int]]:
    """Cut connections as plain lists (what a pruned checkpoint stores)."""
    return {k: [int(v) for v in cuts[k]] for k in CUT_KEYS}


def cuts_from_record(record: Mapping[str, Any]) -> pd.DataFrame:
    """The DataFrame of cut connections stored by :func:`cuts_record`."""
    try:
        df = pd.DataFrame({k: list(record[k]) for k in CUT_KEYS}, dtype="int64")
    except (KeyError, TypeError, ValueError):
        raise PruneError(
            "the checkpoint's prune record is not a {block, source, target} list"
        ) from None
    return df


# ----------------------------------------------------------------------------- masks
def connection_slice(
    structure: DenseNetStructure,
    block: int,
    source: int,
    target: int,
    concat_order: str = "oldest-first",
) -> tuple[str, int, int]:
    """``(weight key, start, stop)``: the input channels of target's weight from source."""
    if not 1 <= block <= len(structure.blocks):
        raise PruneError(f"the model has no block {block}")
    b = structure.blocks[block - 1]
    if 1 <= target <= b.num_layers:
        key = b.layers[target - 1].first_conv.key
    elif target == b.num_layers + 1 and isinstance(b.extra, Transition):
        key = b.extra.conv.key
    elif target == b.num_layers + 1 and isinstance(b.extra, Classifier):
        key = b.extra.key
    else:
        raise PruneError(f"block {block} has no target {target}")
    for s, start, stop in b.source_slices(target, concat_order):
        if s == source:
            return key, start, stop
    raise PruneError(f"target {target} of block {block} reads no source {source}")


def keep_masks(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    cuts: pd.DataFrame,
    concat_order: str = "oldest-first",
) -> dict[str, torch.Tensor]:
    """Per weight key with a cut: a 0/1 tensor of the weight's shape (0 = cut)."""
    masks: dict[str, torch.Tensor] = {}
    for block, source, target in cuts[CUT_KEYS].itertuples(index=False):
        key, start, stop = connection_slice(structure, block, source, target, concat_order)
        if key not in masks:
            masks[key] = torch.ones_like(state_dict[key])
        masks[key][:, start:stop] = 0
    return masks


def apply_cuts(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    cuts: pd.DataFrame,
    concat_order: str = "oldest-first",
) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` with the cut slices zeroed (the other tensors shared)."""
    out = dict(state_dict)
    for key, mask in keep_masks(state_dict, structure, cuts, concat_order).items():
        out[key] = state_dict[key] * mask
    return out


def cut_summary(
    cuts: pd.DataFrame, table: pd.DataFrame, structure: DenseNetStructure
) -> dict[str, Any]:
    """How much was cut: connections, and input channels of the 1×1 layer convs.

    ``bottleneck_inputs_cut`` is the share of the layers' first-conv input channels (the
    1×1 bottleneck in DenseNet-B/-BC) whose weights were zeroed — the quantity that
    CondenseNet's learned group convolutions prune (75 % there).
    """
    merged = cuts.merge(table[KEYS], on=CUT_KEYS, how="left")
    channels_total = channels_cut = 0
    for block in structure.blocks:
        for layer in block.layers:
            channels_total += layer.in_channels
            for s, start, stop in block.source_slices(layer.index):
                hit = (
                    (merged.block == block.index)
                    & (merged.target == layer.index)
                    & (merged.source == s)
                )
                if hit.any():
                    channels_cut += stop - start
    layer_rows = table[table.target_kind == "layer"]
    layer_cuts = merged[merged.target_kind == "layer"]
    return {
        "connections": len(table),
        "connections_cut": len(cuts),
        "share_cut": len(cuts) / len(table) if len(table) else 0.0,
        "layer_connections_cut": len(layer_cuts),
        "layer_share_cut": len(layer_cuts) / len(layer_rows) if len(layer_rows) else 0.0,
        "layer_input_channels": channels_total,
        "layer_input_channels_cut": channels_cut,
        "bottleneck_inputs_cut": channels_cut / channels_total if channels_total else 0.0,
    }
