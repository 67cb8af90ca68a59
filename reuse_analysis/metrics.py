"""The weight-only reuse metrics: weights + structure → a tidy DataFrame.

``weight`` (the paper's, Huang et al. §5): ``w(s, t) = mean(|W_t[:, S_s, :, :]|)``, the
average absolute weight that target ``t``'s first convolution (or the transition conv, or
the classifier) gives to the channels that came from source ``s``.

``bn-weight``: in a pre-activation layer (BN → ReLU → conv) input channel ``c`` reaches the
conv as ``relu(γ_c·x̂_c + β_c)``, so its weights act on a signal scaled by ``|γ_c|/√(σ_c²+ε)``
relative to the raw feature map. This metric multiplies each input channel's mean |w| by
that factor of the batch norm in front of the conv before averaging over the slice.

One row per (block, source, target); nothing is drawn here. The metrics that run the model
on images live in :mod:`reuse_analysis.probes`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from reuse_analysis.errors import StructureError
from reuse_analysis.structure import (
    Classifier,
    ConcatOrder,
    DenseBlock,
    DenseNetStructure,
    Transition,
)
from reuse_analysis.tables import WEIGHT_METRICS, build_table, column_minmax, value_column

__all__ = [
    "BN_EPS",
    "COLUMNS",
    "block_rows",
    "bn_scale",
    "channel_usage",
    "column_minmax",
    "input_channel_usage",
    "reuse_table",
    "value_column",
]

#: The ``table`` command's columns, in order (DESIGN §3), for ``--metric weight``.
COLUMNS = ["block", "source", "target", "target_kind", "mean_abs_weight", "normalized"]
#: nn.BatchNorm2d's default ε; a state_dict does not store it, and every common DenseNet
#: implementation keeps the default.
BN_EPS = 1e-5


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


def _target_weights(block: DenseBlock) -> list[tuple[int, str, str, str | None]]:
    """``(target, kind, weight key, norm in front)`` for every target column of the block."""
    targets = [(layer.index, "layer", layer.first_conv.key, layer.norm) for layer in block.layers]
    if isinstance(block.extra, Transition):
        t = block.extra
        targets.append((block.num_layers + 1, "transition", t.conv.key, t.norm))
    elif isinstance(block.extra, Classifier):
        c = block.extra
        targets.append((block.num_layers + 1, "classifier", c.key, c.norm))
    return targets


def bn_scale(
    state_dict: Mapping[str, torch.Tensor], norm: str | None, weight_key: str, width: int
) -> np.ndarray:
    """``|γ|/√(σ²+ε)`` per channel of the batch norm ``norm`` that feeds ``weight_key``.

    Raises StructureError when there is no such norm or it lacks running statistics
    (the scale is what the trained network applies at inference).
    """
    gamma = state_dict.get(f"{norm}.weight") if norm else None
    var = state_dict.get(f"{norm}.running_var") if norm else None
    if gamma is None or var is None or gamma.numel() != width or var.numel() != width:
        what = f"`{norm}` has no running variance" if gamma is not None else "none was found"
        raise StructureError(
            f"--metric bn-weight needs the batch norm in front of {weight_key} ({width} "
            f"channels, with weight and running_var); {what}: use --metric weight"
        )
    g = gamma.detach().double().numpy()
    v = var.detach().double().numpy()
    return np.abs(g) / np.sqrt(v + BN_EPS)


def _check_width(key: str, weight: torch.Tensor, expected: int) -> None:
    if weight.shape[1] != expected:
        raise ValueError(
            f"{key} reads {weight.shape[1]} channels but the structure says {expected}; "
            "the weights and the structure do not belong together"
        )


def _usage(
    state_dict: Mapping[str, torch.Tensor],
    key: str,
    norm: str | None,
    metric: str,
    weight: torch.Tensor | None = None,
) -> np.ndarray:
    usage = channel_usage(state_dict[key] if weight is None else weight)
    if metric == "bn-weight":
        usage = usage * bn_scale(state_dict, norm, key, len(usage))
    return usage


def _check_metric(metric: str) -> None:
    if metric not in WEIGHT_METRICS:
        raise ValueError(
            f"metric {metric!r} runs the model on images: use "
            "reuse_analysis.analysis.analyze(..., metric=…) or reuse_analysis.probes; "
            f"weight-only metrics: {', '.join(WEIGHT_METRICS)}"
        )


def block_rows(
    state_dict: Mapping[str, torch.Tensor],
    block: DenseBlock,
    concat_order: ConcatOrder = "oldest-first",
    metric: str = "weight",
) -> list[tuple[int, int, int, str, float]]:
    """Raw ``(block, source, target, kind, value)`` rows of one dense block."""
    _check_metric(metric)
    rows = []
    for target, kind, key, norm in _target_weights(block):
        slices = block.source_slices(target, concat_order)
        weight = state_dict[key]
        width = max(stop for _, _, stop in slices)
        if weight.dim() == 2 and weight.shape[1] > width and weight.shape[1] % width == 0:
            # A classifier on the flattened map: channel c owns features c·p … c·p+p−1.
            weight = weight.reshape(weight.shape[0], width, -1)
        _check_width(key, weight, width)
        usage = _usage(state_dict, key, norm, metric, weight)
        for source, start, stop in slices:
            rows.append((block.index, source, target, kind, float(usage[start:stop].mean())))
    return rows


def reuse_table(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    concat_order: ConcatOrder = "oldest-first",
    metric: str = "weight",
) -> pd.DataFrame:
    """The reuse matrix of every block as a tidy DataFrame (``weight`` or ``bn-weight``).

    With ``metric="weight"`` the columns are exactly :data:`COLUMNS`; ``bn-weight`` names
    its value column ``mean_abs_bn_weight``. ``attrs`` records the concat order, the metric
    and the structure summary, so that every output derived from the table can state what
    it assumed.
    """
    _check_metric(metric)
    rows = [
        r for block in structure.blocks for r in block_rows(state_dict, block, concat_order, metric)
    ]
    return build_table(rows, metric, concat_order=concat_order, structure=structure.summary())


def input_channel_usage(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    concat_order: ConcatOrder = "oldest-first",
    metric: str = "weight",
) -> pd.DataFrame:
    """Per block and input channel of ``x_0``: the mean |w| its layers give that channel.

    For blocks after the first, ``x_0`` is the previous transition's output, so this is
    how much the next block uses each channel a transition writes (its redundancy). With
    ``metric="bn-weight"`` each layer's weights are scaled by its batch norm first.
    """
    _check_metric(metric)
    frames = []
    for block in structure.blocks:
        per_layer = []
        for layer in block.layers:
            (_, start, stop), *_ = block.source_slices(layer.index, concat_order)
            usage = _usage(state_dict, layer.first_conv.key, layer.norm, metric)
            per_layer.append(usage[start:stop])
        usage = np.mean(per_layer, axis=0)
        frames.append(
            pd.DataFrame({"block": block.index, "channel": np.arange(len(usage)), "usage": usage})
        )
    return pd.concat(frames, ignore_index=True)
