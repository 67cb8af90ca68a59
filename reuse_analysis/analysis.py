"""One call from a checkpoint (or a state_dict, or a model) to the reuse table.

This is the Python entry point behind the ``heatmap``, ``table`` and ``info`` commands::

    from reuse_analysis.analysis import analyze
    result = analyze("model.pt")
    result.table            # one row per (block, source, target)
    result.structure        # blocks, layers, growth rate, transitions, classifier

``metric=`` picks what the table measures: ``weight`` (the paper's), ``bn-weight``, or one
of the data-driven metrics ``activation``, ``ablation``, ``taylor`` (they run the model on
the images that ``probe=ProbeSettings(...)`` describes; see :mod:`reuse_analysis.probes`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from reuse_analysis.checkpoint import LoadedCheckpoint, check_finite, load_checkpoint
from reuse_analysis.errors import ReuseAnalysisError
from reuse_analysis.metrics import input_channel_usage, reuse_table
from reuse_analysis.structure import ConcatOrder, DenseNetStructure, infer_structure
from reuse_analysis.tables import METRICS, WEIGHT_METRICS

if TYPE_CHECKING:
    from reuse_analysis.probes import ProbeSettings


@dataclass
class Analysis:
    """The reuse table together with the structure and checkpoint it was computed from."""

    table: pd.DataFrame
    structure: DenseNetStructure
    checkpoint: LoadedCheckpoint | None
    model_name: str
    #: Per block and input channel, the mean |w| its layers give it (transition redundancy);
    #: BN-scaled for ``bn-weight``, plain |w| for the data-driven metrics.
    usage: pd.DataFrame
    #: The weights (a state_dict on the CPU), for commands that go on to run the model.
    state_dict: dict[str, torch.Tensor] | None = None


def _as_state_dict(source: Mapping[str, torch.Tensor] | torch.nn.Module) -> dict:
    if isinstance(source, torch.nn.Module):
        return dict(source.state_dict())
    return dict(source)


def load_structure(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor] | torch.nn.Module,
    *,
    trust_pickle: bool = False,
) -> tuple[dict[str, torch.Tensor], DenseNetStructure, LoadedCheckpoint | None]:
    """Load weights from a path, state_dict or module, check them, and infer the structure."""
    checkpoint = None
    if isinstance(source, (str, os.PathLike)):
        checkpoint = load_checkpoint(source, trust_pickle=trust_pickle)
        state_dict = checkpoint.state_dict
    else:
        state_dict = _as_state_dict(source)
    structure = infer_structure(state_dict)
    check_finite(state_dict)
    return state_dict, structure, checkpoint


def check_metric(metric: str, concat_order: str) -> None:
    """Raise an input error for an unknown metric, or a concat order a metric cannot honour."""
    if metric not in METRICS:
        raise ReuseAnalysisError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if metric not in WEIGHT_METRICS and concat_order != "oldest-first":
        raise ReuseAnalysisError(
            f"--metric {metric} runs the toolkit's DenseNet, which concatenates oldest-first; "
            "--concat-order newest-first applies to the weight-only metrics"
        )


def analyze(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor] | torch.nn.Module,
    *,
    concat_order: ConcatOrder = "oldest-first",
    trust_pickle: bool = False,
    name: str | None = None,
    metric: str = "weight",
    probe: ProbeSettings | None = None,
) -> Analysis:
    """Compute a reuse matrix for a checkpoint file, a state_dict or a model.

    ``metric`` is ``weight`` (the paper's), ``bn-weight``, ``activation``, ``ablation`` or
    ``taylor``; the last three run the model on the images ``probe`` describes (default:
    1,000 training images of the data set recorded in the checkpoint), with progress on
    stderr and results cached (:mod:`reuse_analysis.probes`).
    """
    check_metric(metric, concat_order)
    state_dict, structure, checkpoint = load_structure(source, trust_pickle=trust_pickle)
    if name is None:
        if checkpoint is not None:
            name = Path(checkpoint.path).stem
        else:
            name = type(source).__name__ if isinstance(source, torch.nn.Module) else "state_dict"
    if metric in WEIGHT_METRICS:
        table = reuse_table(state_dict, structure, concat_order, metric)
        usage = input_channel_usage(state_dict, structure, concat_order, metric)
    else:
        from reuse_analysis.probes import probe_table

        table = probe_table(metric, state_dict, structure, checkpoint, probe)
        usage = input_channel_usage(state_dict, structure, concat_order)
    table.attrs["model"] = name
    return Analysis(table, structure, checkpoint, name, usage, state_dict)


def metric_tables(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor] | torch.nn.Module,
    metrics: list[str] | tuple[str, ...],
    *,
    probe: ProbeSettings | None = None,
    trust_pickle: bool = False,
) -> dict[str, pd.DataFrame]:
    """Reuse tables of one model under several metrics (concat order oldest-first, the
    order of the model the data-driven metrics run); data-driven ones share the images."""
    for metric in metrics:
        check_metric(metric, "oldest-first")
    state_dict, structure, checkpoint = load_structure(source, trust_pickle=trust_pickle)
    from reuse_analysis.rebuild import detect_concat_order

    # The data-driven tables come from a rebuild in the order the statistics show.
    order = detect_concat_order(state_dict, structure) or "oldest-first"
    tables = {
        m: reuse_table(state_dict, structure, order, m) for m in metrics if m in WEIGHT_METRICS
    }
    data = [m for m in metrics if m not in WEIGHT_METRICS]
    if data:
        from reuse_analysis.probes import probe_tables

        tables.update(probe_tables(data, state_dict, structure, checkpoint, probe))
    return {m: tables[m] for m in metrics}
