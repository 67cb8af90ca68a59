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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch

from reuse_analysis.errors import StructureError
from reuse_analysis.structure import ConcatOrder, DenseBlock, DenseNetStructure, Target
from reuse_analysis.tables import (
    METRICS,
    WEIGHT_METRICS,
    MetricInfo,
    build_table,
    column_minmax,
    value_column,
)

__all__ = [
    "BN_EPS",
    "COLUMNS",
    "REGISTRY",
    "Metric",
    "MetricInputs",
    "block_rows",
    "bn_scale",
    "channel_usage",
    "column_minmax",
    "compute_tables",
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


def _no_scale(
    state_dict: Mapping[str, torch.Tensor], norm: str | None, weight_key: str, width: int
) -> np.ndarray:
    return np.ones(width)


#: Per weight-only metric: the per-input-channel factor applied to the mean |w|.
_CHANNEL_SCALES = {"weight": _no_scale, "bn-weight": bn_scale}


def _channel_weight(state_dict: Mapping[str, torch.Tensor], target: Target) -> torch.Tensor:
    """The target's weight with one axis-1 entry per input channel: a classifier on the
    flattened map, ``[out, C·p]``, becomes ``[out, C, p]`` (channel c owns features
    c·p … c·p+p−1; ``target.positions`` is p), checked against the structure's width."""
    key, weight = target.weight_key, state_dict[target.weight_key]
    width = max(stop for _, _, stop in target.slices)
    _check_width(key, weight, width * target.positions)
    if target.positions > 1:
        weight = weight.reshape(weight.shape[0], width, target.positions)
    return weight


def _usage(state_dict: Mapping[str, torch.Tensor], target: Target, metric: str) -> np.ndarray:
    usage = channel_usage(_channel_weight(state_dict, target))
    return usage * _CHANNEL_SCALES[metric](state_dict, target.norm, target.weight_key, len(usage))


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
    for target in block.targets(concat_order):
        usage = _usage(state_dict, target, metric)
        for source, start, stop in target.slices:
            value = float(usage[start:stop].mean())
            rows.append((block.index, source, target.index, target.kind, value))
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
        for target in block.targets(concat_order)[: block.num_layers]:
            start, stop = target.slice_of(0)
            per_layer.append(_usage(state_dict, target, metric)[start:stop])
        usage = np.mean(per_layer, axis=0)
        frames.append(
            pd.DataFrame({"block": block.index, "channel": np.arange(len(usage)), "usage": usage})
        )
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- registry
class MetricInputs:
    """What a metric may need: the weights and their structure, and for the data-driven
    metrics the checkpoint they came from and the probe settings (which images, device).

    The runnable model and the images are built once, on first use, and shared by every
    data-driven metric computed from the same inputs (``setup``: a model and data set
    already built, :class:`reuse_analysis.probes.ProbeSetup`). ``seed`` seeds the random
    baseline of pruning sweeps.
    """

    def __init__(
        self,
        state_dict: Mapping[str, torch.Tensor],
        structure: DenseNetStructure,
        checkpoint: Any = None,
        settings: Any = None,
        *,
        concat_order: ConcatOrder = "oldest-first",
        progress: bool = True,
        setup: Any = None,
        seed: int = 0,
    ) -> None:
        self.state_dict = state_dict
        self.structure = structure
        self.checkpoint = checkpoint
        self.settings = settings
        self.concat_order = concat_order
        self.progress = progress
        self.setup = setup
        self.seed = seed

    @cached_property
    def probe(self) -> Any:
        """``(model, images, labels, data key)`` for the data-driven metrics (built once)."""
        from reuse_analysis.probes import ProbeSettings, probe_inputs

        self.settings = self.settings or ProbeSettings()
        return probe_inputs(
            self.state_dict, self.structure, self.checkpoint, self.settings, self.setup
        )


@dataclass(frozen=True)
class Metric:
    """A registered metric: what it measures (:class:`MetricInfo`) and how it is computed."""

    info: MetricInfo
    compute: Callable[[MetricInputs], pd.DataFrame]

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def data_driven(self) -> bool:
        return self.info.data_driven


def _weight_metric(name: str) -> Callable[[MetricInputs], pd.DataFrame]:
    def compute(inputs: MetricInputs) -> pd.DataFrame:
        return reuse_table(inputs.state_dict, inputs.structure, inputs.concat_order, name)

    return compute


def _data_metric(name: str) -> Callable[[MetricInputs], pd.DataFrame]:
    def compute(inputs: MetricInputs) -> pd.DataFrame:
        from reuse_analysis.probes import measured_table

        model, x, y, data_key = inputs.probe
        return measured_table(name, model, x, y, data_key, inputs.settings, inputs.progress)

    return compute


#: Every ``--metric``, by name: its description and the function that computes its table.
REGISTRY: dict[str, Metric] = {
    name: Metric(info, (_data_metric if info.data_driven else _weight_metric)(name))
    for name, info in METRICS.items()
}


def compute_tables(names: Sequence[str], inputs: MetricInputs) -> dict[str, pd.DataFrame]:
    """The reuse table of each metric in ``names`` on the same inputs (images shared)."""
    return {name: REGISTRY[name].compute(inputs) for name in names}
