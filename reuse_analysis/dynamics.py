"""When does the paper's pattern appear during training? Statistics of a run's reuse log.

``reuse-analysis train`` records the weight reuse table of a DenseNet after every epoch in
``NAME.reuse.csv`` (epoch 0 = the initialisation). From each epoch's table this module
computes the statistics that distinguish a trained network from an untrained one. Each
comes with what untrained networks of the run's architecture give (:func:`untrained_reference`:
``SEEDS`` fresh initialisations, :func:`reuse_analysis.nulls.untrained_like`, the same null
as the observations' and Figure 5's; the run's own epoch 0 is one such draw):

* the Pearson correlation with the paper's Figure 5, per block (DenseNet-40 only);
* observation 3: the share of layers in blocks 2 and up whose least-weighted source is the
  block input (row 0), and row 0's weight ÷ the median of the other sources';
* observation 4: the classifier's mean weight on the last quarter of the block's sources ÷
  its mean weight on the others;
* the unevenness of the layers' columns (coefficient of variation over sources, median
  over layers): near 0.1–0.2 at initialisation, growing as layers pick their inputs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from reuse_analysis.errors import ReuseAnalysisError
from reuse_analysis.figure5 import figure5_correlation
from reuse_analysis.observations import (
    SEEDS,
    dispersion,
    focus_ratio,
    row0_ratio,
    row0_weakest,
)
from reuse_analysis.structure import DenseNetStructure
from reuse_analysis.tables import KEYS, REUSE_LOG_ARCH

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


# ----------------------------------------------------------------------------- untrained reference
#: The statistics the reference covers (every column of :func:`reuse_dynamics` but epoch).
STATISTICS = COLUMNS[1:]


def untrained_samples(
    state_dict: Mapping[str, torch.Tensor], structure: DenseNetStructure, seeds: int = SEEDS
) -> pd.DataFrame:
    """:func:`epoch_statistics` of ``seeds`` fresh initialisations of the architecture
    (seeds ``0 … seeds-1`` of :func:`reuse_analysis.nulls.untrained_like`, as
    :func:`reuse_analysis.figure5.figure5_match` draws them), one row per seed.

    Not cached: twenty seeds of DenseNet-121 take about a second (only the tensors the
    weight table reads are drawn), less than reading a cache would save.
    """
    from reuse_analysis.metrics import reuse_table
    from reuse_analysis.nulls import untrained_like

    rows = []
    for seed in range(seeds):
        weights = untrained_like(state_dict, structure, seed)
        table = reuse_table(weights, structure, "oldest-first", "weight")
        rows.append({"seed": seed, **epoch_statistics(table)})
    return pd.DataFrame(rows, columns=["seed", *STATISTICS])


def reference_summary(samples: pd.DataFrame) -> pd.DataFrame:
    """Per statistic (the index): the untrained seeds' mean, sample sd, min and max (NaN
    where the architecture has no such part); ``attrs["seeds"]`` counts the seeds."""
    values = samples[STATISTICS]
    out = pd.DataFrame(
        {
            "mean": values.mean(),
            "sd": values.std(ddof=1),
            "min": values.min(),
            "max": values.max(),
        }
    )
    out.index.name = "statistic"
    out.attrs["seeds"] = len(samples)
    return out


@dataclass(frozen=True)
class RunArchitecture:
    """The architecture a run trained, as weights of its shapes, and where it was found."""

    name: str | None  # the registered model name, when known
    source: str  # "--arch", "m.pt beside the log", "the log's arch column"
    state_dict: dict[str, torch.Tensor]
    structure: DenseNetStructure

    def describe(self) -> str:
        """``densenet40 (from m.pt beside the log)``."""
        return f"{self.name or self.structure.summary()} ({self.source})"

    def to_dict(self) -> dict[str, object]:
        return {"arch": self.name, "source": self.source, "structure": self.structure.summary()}


def _built(name: str, source: str) -> RunArchitecture:
    from reuse_analysis.models import create_model
    from reuse_analysis.structure import infer_structure

    try:
        model = create_model(name)
    except (ValueError, TypeError) as exc:
        raise ReuseAnalysisError(f"{exc}; see `reuse-analysis models`") from None
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    try:
        structure = infer_structure(sd)
    except ReuseAnalysisError:
        raise ReuseAnalysisError(
            f"{name} ({source}) is no DenseNet: a reuse log comes from a DenseNet run"
        ) from None
    return RunArchitecture(name, source, sd, structure)


def _neighbour(path: Path, source: str) -> RunArchitecture | None:
    """The architecture of a checkpoint or training state beside the log, if it loads."""
    from reuse_analysis.checkpoint import load_checkpoint
    from reuse_analysis.structure import infer_structure

    try:
        ckpt = load_checkpoint(path)
        return RunArchitecture(ckpt.arch, source, ckpt.state_dict, infer_structure(ckpt.state_dict))
    except ReuseAnalysisError:
        return None


def run_architecture(
    log: str | os.PathLike[str], reuse_log: pd.DataFrame, arch: str | None = None
) -> RunArchitecture:
    """The architecture whose untrained networks are the reference of a run's reuse log.

    In this order: ``arch`` (a registered model name); the run's checkpoint or training
    state beside the log (``NAME.pt``, ``NAME.train.pt`` for ``NAME.reuse.csv``: the exact
    shapes, whatever config the run overrode); the log's ``arch`` column (logs written since
    it exists). Raises an input error when none names it, or when the one found does not
    have the log's blocks, sources and targets.
    """
    log = Path(log)
    stem = log.name.removesuffix(".csv").removesuffix(".reuse")
    found: RunArchitecture | None = None
    if arch is not None:
        found = _built(arch, "--arch")
    for name in (f"{stem}.pt", f"{stem}.train.pt"):
        if found is None and (log.parent / name).is_file():
            found = _neighbour(log.parent / name, f"{name} beside the log")
    if found is None and REUSE_LOG_ARCH in reuse_log.columns:
        names = set(reuse_log[REUSE_LOG_ARCH].dropna().astype(str)) - {""}
        if len(names) == 1:
            found = _built(names.pop(), "the log's arch column")
    if found is None:
        raise ReuseAnalysisError(
            f"cannot tell which architecture {log.name} comes from (no {stem}.pt or "
            f"{stem}.train.pt beside it, no arch column); give it with --arch NAME"
        )
    _check_matches(found, reuse_log)
    return found


def _check_matches(found: RunArchitecture, reuse_log: pd.DataFrame) -> None:
    """Raise an input error unless the architecture's reuse table has the log's cells."""
    from reuse_analysis.metrics import reuse_table

    table = reuse_table(found.state_dict, found.structure, "oldest-first", "weight")
    first = reuse_log[reuse_log["epoch"] == reuse_log["epoch"].min()]

    def cells(df: pd.DataFrame) -> set[tuple]:
        return set(df[KEYS].astype(str).itertuples(index=False, name=None))

    if cells(table) != cells(first):
        raise ReuseAnalysisError(
            f"the architecture {found.describe()} is {found.structure.summary()}, whose reuse "
            f"table ({len(table)} cells) is not the log's ({len(first)} cells); give the "
            "run's architecture with --arch NAME"
        )
