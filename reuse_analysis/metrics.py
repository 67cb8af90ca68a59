"""The paper's reuse metric (Huang et al. §5): weights + structure → a tidy DataFrame.

``w(s, t) = mean(|W_t[:, S_s, :, :]|)``: the average absolute weight that target ``t``'s
first convolution (or the transition conv, or the classifier) gives to the channels
that came from source ``s``. One row per (block, source, target); nothing is drawn here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from reuse_analysis.structure import (
    Classifier,
    ConcatOrder,
    DenseBlock,
    DenseNetStructure,
    Transition,
)

#: The ``table`` command's columns, in order (DESIGN §3).
COLUMNS = ["block", "source", "target", "target_kind", "mean_abs_weight", "normalized"]


def channel_usage(weight: torch.Tensor) -> np.ndarray:
    """Mean |w| per input channel of a conv ``[out, in, kh, kw]`` or linear ``[out, in]``.

    Every input channel owns the same number of weights, so the mean over a slice of
    channels equals the mean of their per-channel means.
    """
    w = weight.detach()
    w = (w.float() if w.dtype in (torch.float16, torch.bfloat16) else w).numpy()
    # |w| summed per input channel in float64: exact enough for hand-checked tables.
    per_channel = np.abs(w).swapaxes(0, 1).reshape(w.shape[1], -1)
    return per_channel.sum(axis=1, dtype=np.float64) / per_channel.shape[1]


def _target_weights(
    state_dict: Mapping[str, torch.Tensor], block: DenseBlock
) -> list[tuple[int, str, str]]:
    """``(target, kind, weight key)`` for every target column of the block."""
    targets = [(layer.index, "layer", layer.first_conv.key) for layer in block.layers]
    if isinstance(block.extra, Transition):
        targets.append((block.num_layers + 1, "transition", block.extra.conv.key))
    elif isinstance(block.extra, Classifier):
        targets.append((block.num_layers + 1, "classifier", block.extra.key))
    return targets


def _check_width(key: str, weight: torch.Tensor, expected: int) -> None:
    if weight.shape[1] != expected:
        raise ValueError(
            f"{key} reads {weight.shape[1]} channels but the structure says {expected}; "
            "the weights and the structure do not belong together"
        )


def block_rows(
    state_dict: Mapping[str, torch.Tensor],
    block: DenseBlock,
    concat_order: ConcatOrder = "oldest-first",
) -> list[tuple[int, int, int, str, float]]:
    """Raw ``(block, source, target, kind, w)`` rows of one dense block."""
    rows = []
    for target, kind, key in _target_weights(state_dict, block):
        slices = block.source_slices(target, concat_order)
        weight = state_dict[key]
        _check_width(key, weight, max(stop for _, _, stop in slices))
        usage = channel_usage(weight)
        for source, start, stop in slices:
            rows.append((block.index, source, target, kind, float(usage[start:stop].mean())))
    return rows


def column_minmax(values: pd.Series, columns: pd.Series) -> pd.Series:
    """Min–max scale ``values`` to [0, 1] within each column (the paper's Figure 5 colours).

    A column with one source, or whose sources all have the same value, is 1.0.
    """
    grouped = values.groupby(columns)
    low, high = grouped.transform("min"), grouped.transform("max")
    span = high - low
    scaled = (values - low) / span.where(span > 0)
    return scaled.fillna(1.0)


def reuse_table(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    concat_order: ConcatOrder = "oldest-first",
) -> pd.DataFrame:
    """The reuse matrix of every block as a tidy DataFrame with columns :data:`COLUMNS`.

    ``attrs`` records the concat order, the metric and the structure summary, so that
    every output derived from the table can state what it assumed.
    """
    rows = [r for block in structure.blocks for r in block_rows(state_dict, block, concat_order)]
    df = pd.DataFrame(rows, columns=COLUMNS[:-1])
    df["normalized"] = column_minmax(
        df["mean_abs_weight"], df["block"].astype(str) + "/" + df["target"].astype(str)
    )
    df = df.astype({"block": "int64", "source": "int64", "target": "int64"})
    df.attrs.update(
        concat_order=concat_order,
        metric="weight",
        structure=structure.summary(),
    )
    return df


def input_channel_usage(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    concat_order: ConcatOrder = "oldest-first",
) -> pd.DataFrame:
    """Per block and input channel of ``x_0``: the mean |w| its layers give that channel.

    For blocks after the first, ``x_0`` is the previous transition's output, so this is
    how much the next block uses each channel a transition writes (its redundancy).
    """
    frames = []
    for block in structure.blocks:
        per_layer = []
        for layer in block.layers:
            (_, start, stop), *_ = block.source_slices(layer.index, concat_order)
            per_layer.append(channel_usage(state_dict[layer.first_conv.key])[start:stop])
        usage = np.mean(per_layer, axis=0)
        frames.append(
            pd.DataFrame({"block": block.index, "channel": np.arange(len(usage)), "usage": usage})
        )
    return pd.concat(frames, ignore_index=True)
