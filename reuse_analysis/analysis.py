"""One call from a checkpoint (or a state_dict, or a model) to the reuse table.

This is the Python entry point behind the ``heatmap``, ``table`` and ``info`` commands::

    import reuse_analysis
    result = reuse_analysis.analyze("model.pt")
    result.table            # one row per (block, source, target)
    result.structure        # blocks, layers, growth rate, transitions, classifier
    result.heatmap()        # the paper's Figure 5 as a matplotlib Figure

``metric=`` picks what the table measures: ``weight`` (the paper's), ``bn-weight``, or one
of the data-driven metrics ``activation``, ``ablation``, ``taylor`` (they run the model on
the images that ``probe=ProbeSettings(...)`` describes; see :mod:`reuse_analysis.probes`).
:func:`reuse_analysis.traced.analyze_traced` returns the same :class:`Analysis` for any
network that concatenates earlier tensors, found by tracing instead of by weight names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch

from reuse_analysis.checkpoint import LoadedCheckpoint, check_finite, load_checkpoint
from reuse_analysis.concat_order import OrderDecision, order_attrs, resolve_concat_order
from reuse_analysis.errors import ReuseAnalysisError
from reuse_analysis.metrics import REGISTRY, MetricInputs, compute_tables, input_channel_usage
from reuse_analysis.structure import ConcatOrder, DenseNetStructure, infer_structure
from reuse_analysis.tables import METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from reuse_analysis.observations import Observation
    from reuse_analysis.probes import ProbeSettings
    from reuse_analysis.redundancy import TransitionRedundancy
    from reuse_analysis.traced import TracedStructure

#: The data attributes a data-driven table records, copied into the JSON under ``data``.
_DATA_ATTRS = ("dataset", "split", "images")


@dataclass(eq=False)
class Analysis:
    """A reuse table with the structure, weights and checkpoint it was computed from.

    Both :func:`analyze` (structure from weight names and shapes) and
    :func:`~reuse_analysis.traced.analyze_traced` (structure from the traced graph) return
    one. What costs time beyond the table, such as the per-channel usage behind
    :meth:`redundancy`, is computed on first use.
    """

    table: pd.DataFrame
    structure: DenseNetStructure | TracedStructure
    model_name: str
    checkpoint: LoadedCheckpoint | None = None
    #: The weights (a state_dict on the CPU), for commands that go on to run the model.
    state_dict: dict[str, torch.Tensor] | None = None
    #: The traced model (traced analysis only).
    model: torch.nn.Module | None = None
    #: Block index → θ of the transition after it.
    compressions: dict[int, float] = field(default_factory=dict)
    #: The concat order the table was read in, how it was chosen (detected from the
    #: batch-norm statistics, given, or assumed) and the evidence; None for a traced
    #: analysis, whose order comes from the graph (``table.attrs`` says so).
    order: OrderDecision | None = None
    _usage: Callable[[], pd.DataFrame] | None = field(default=None, repr=False)

    @cached_property
    def usage(self) -> pd.DataFrame:
        """Per block and input channel of ``x_0``: the mean |w| the block's layers give it
        (BN-scaled for ``bn-weight``, plain |w| for the data-driven metrics)."""
        if self._usage is None:
            raise ReuseAnalysisError("this analysis has no weights to measure channel usage on")
        return self._usage()

    def heatmap(self, **style: Any) -> Figure:
        """The paper's Figure 5 of this table (``normalize``, ``cmap``, ``title``,
        ``annotate``: see :func:`reuse_analysis.plotting.plot_reuse_heatmap`)."""
        from reuse_analysis.plotting import plot_reuse_heatmap

        return plot_reuse_heatmap(self.table, **style)

    def observations(self) -> list[Observation]:
        """The paper's four observations, each measured against an untrained and a
        channel-permuted network of the same shapes (:mod:`reuse_analysis.observations`)."""
        from reuse_analysis.observations import observations

        return observations(self._weights(), self._dense_structure(), self._order())

    def redundancy(self) -> list[TransitionRedundancy]:
        """Per transition: the effective rank of what the next block reads from it, against
        untrained networks (:mod:`reuse_analysis.redundancy`)."""
        from reuse_analysis.redundancy import transition_redundancy

        return transition_redundancy(self._weights(), self._dense_structure(), self._order())

    def _weights(self) -> dict[str, torch.Tensor]:
        if self.state_dict is None:
            if self.model is None:
                raise ReuseAnalysisError("this analysis holds no weights to measure")
            return {k: v.detach() for k, v in self.model.state_dict().items()}
        return self.state_dict

    def _dense_structure(self) -> DenseNetStructure:
        """The dense-block structure the weight statistics need; a traced analysis infers it
        from the traced model's weights (a network that is no DenseNet has none)."""
        if isinstance(self.structure, DenseNetStructure):
            return self.structure
        return infer_structure(self._weights())

    def _order(self) -> str:
        order = str(self.table.attrs.get("concat_order", "oldest-first"))
        return order.removesuffix(" (traced)") if "first" in order else "oldest-first"

    @property
    def concat_order_text(self) -> str:
        """``oldest-first (detected: 36 of 36 batch-norm pairs, 0 against)``: the order and
        what it rests on, as every output states it."""
        if self.order is not None:
            return self.order.describe()
        attrs = self.table.attrs
        return str(attrs.get("concat_order_text") or attrs.get("concat_order", "oldest-first"))

    def to_csv(self) -> str:
        """The table as CSV, exactly the columns of ``reuse-analysis table``."""
        return self.table.to_csv(index=False, float_format="%.9g", lineterminator="\n")

    def to_json(self) -> str:
        """The table as JSON (``table --format json``): what was assumed, then the rows.

        The same keys for every analysis: ``model, structure, concat_order,
        concat_order_basis`` (detected, assumed, requested or traced),
        ``concat_order_provenance`` (``detected``, ``given``, ``assumed`` or ``traced``),
        ``concat_order_text`` (the order and what it rests on, as the outputs print it),
        ``concat_order_evidence`` (the batch-norm pair counts; null when traced), ``metric``,
        ``layout`` (per block, ``dense`` or ``matrix``), ``data`` for a data-driven metric,
        ``columns`` and ``rows``.
        """
        df = self.table
        data = {k: df.attrs[k] for k in _DATA_ATTRS if k in df.attrs}
        layout = df.attrs.get("layout") or {int(b): "dense" for b in df["block"].unique()}
        payload = {
            "model": self.model_name,
            "structure": df.attrs["structure"],
            "concat_order": df.attrs["concat_order"],
            "concat_order_basis": df.attrs.get("concat_order_basis"),
            "concat_order_provenance": self.order.provenance if self.order else "traced",
            "concat_order_text": self.concat_order_text,
            "concat_order_evidence": self.order.evidence.to_dict() if self.order else None,
            "metric": df.attrs["metric"],
            "layout": layout,
            **({"data": data} if data else {}),
            "columns": list(df.columns),
            "rows": json.loads(df.to_json(orient="records", double_precision=15)),
        }
        return json.dumps(payload, indent=2) + "\n"


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


def check_metric(metric: str, concat_order: str, detected: str | None = None) -> None:
    """Raise an input error for an unknown metric, or a concat order a metric cannot honour.

    The data-driven metrics run the model in the order its batch-norm statistics show
    (``detected``; a file not written by ``train`` is rebuilt and permuted into oldest-first,
    :mod:`reuse_analysis.rebuild`), oldest-first when they show none: another order is
    refused for them."""
    if metric not in METRICS:
        raise ReuseAnalysisError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    runs = detected or "oldest-first"
    if METRICS[metric].data_driven and concat_order not in (runs, "auto"):
        raise ReuseAnalysisError(
            f"--metric {metric} runs the model in the order its batch-norm statistics show "
            f"({runs}{'' if detected else ': they show none'}), not {concat_order}; "
            "another order applies to the weight-only metrics (weight, bn-weight)"
        )


def _default_name(source: object, checkpoint: LoadedCheckpoint | None) -> str:
    if checkpoint is not None:
        return Path(checkpoint.path).stem
    return type(source).__name__ if isinstance(source, torch.nn.Module) else "state_dict"


def analyze(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor] | torch.nn.Module,
    *,
    concat_order: ConcatOrder | Literal["auto"] = "auto",
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

    ``concat_order="auto"`` reads the order from the batch-norm statistics
    (:mod:`reuse_analysis.concat_order`); the table's attrs record the order, how it was
    chosen (``concat_order_basis``), the evidence, and a warning when an explicit order
    contradicts the file.
    """
    check_metric(metric, "auto")
    state_dict, structure, checkpoint = load_structure(source, trust_pickle=trust_pickle)
    decision = resolve_concat_order(state_dict, structure, concat_order)
    concat_order = decision.order
    check_metric(metric, concat_order, decision.detected)
    name = name or _default_name(source, checkpoint)
    inputs = MetricInputs(state_dict, structure, checkpoint, probe, concat_order=concat_order)
    table = REGISTRY[metric].compute(inputs)
    table.attrs.update(model=name, **order_attrs(decision))
    # Channel usage is a weight statistic: BN-scaled for bn-weight, plain |w| otherwise.
    usage_metric = metric if not METRICS[metric].data_driven else "weight"

    def usage() -> pd.DataFrame:
        return input_channel_usage(state_dict, structure, concat_order, usage_metric)

    return Analysis(
        table,
        structure,
        name,
        checkpoint,
        state_dict,
        compressions=structure.compressions,
        order=decision,
        _usage=usage,
    )


def metric_tables(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor] | torch.nn.Module,
    metrics: list[str] | tuple[str, ...],
    *,
    probe: ProbeSettings | None = None,
    trust_pickle: bool = False,
) -> dict[str, pd.DataFrame]:
    """Reuse tables of one model under several metrics (concat order: the one the batch-norm
    statistics show, oldest-first when they show none); data-driven ones share the images."""
    for metric in metrics:
        check_metric(metric, "oldest-first")
    state_dict, structure, checkpoint = load_structure(source, trust_pickle=trust_pickle)
    # The weight tables read the file in the order its statistics show, as the model the
    # data-driven tables run does (a rebuild permuted into oldest-first): the same connections.
    decision = resolve_concat_order(state_dict, structure)
    inputs = MetricInputs(state_dict, structure, checkpoint, probe, concat_order=decision.order)
    tables = compute_tables(metrics, inputs)
    for metric, table in tables.items():
        if not METRICS[metric].data_driven:
            table.attrs.update(order_attrs(decision))
    return tables
