"""One call from a checkpoint (or a state_dict, or a model) to the reuse table.

This is the Python entry point behind the ``heatmap``, ``table`` and ``info`` commands::

    from reuse_analysis.analysis import analyze
    result = analyze("model.pt")
    result.table            # one row per (block, source, target)
    result.structure        # blocks, layers, growth rate, transitions, classifier
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from reuse_analysis.checkpoint import LoadedCheckpoint, check_finite, load_checkpoint
from reuse_analysis.metrics import input_channel_usage, reuse_table
from reuse_analysis.structure import ConcatOrder, DenseNetStructure, infer_structure


@dataclass
class Analysis:
    """The reuse table together with the structure and checkpoint it was computed from."""

    table: pd.DataFrame
    structure: DenseNetStructure
    checkpoint: LoadedCheckpoint | None
    model_name: str
    #: Per block and input channel, the mean |w| its layers give it (transition redundancy).
    usage: pd.DataFrame


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


def analyze(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor] | torch.nn.Module,
    *,
    concat_order: ConcatOrder = "oldest-first",
    trust_pickle: bool = False,
    name: str | None = None,
) -> Analysis:
    """Compute the paper's reuse matrix for a checkpoint file, a state_dict or a model."""
    state_dict, structure, checkpoint = load_structure(source, trust_pickle=trust_pickle)
    if name is None:
        if checkpoint is not None:
            name = Path(checkpoint.path).stem
        else:
            name = type(source).__name__ if isinstance(source, torch.nn.Module) else "state_dict"
    table = reuse_table(state_dict, structure, concat_order)
    table.attrs["model"] = name
    usage = input_channel_usage(state_dict, structure, concat_order)
    return Analysis(table, structure, checkpoint, name, usage)
