"""Commands that combine several library steps, as functions a script calls the same way:
each metric's agreement with ablation, one report on several models, a pruning sweep
written as a figure and a table. The command line parses, calls one of these, prints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reuse_analysis import text
from reuse_analysis.tables import METRICS, REUSE_LOG_COLUMNS

if TYPE_CHECKING:
    import pandas as pd


def metric_agreement(
    model: str | os.PathLike[str],
    *,
    metrics: Sequence[str] = (),
    probe: Any = None,
    trust_pickle: bool = False,
) -> pd.DataFrame:
    """How well each metric (default: all but ablation) ranks MODEL's connections the way
    ablation does (:func:`reuse_analysis.agreement.agreement_table`); the data-driven
    metrics run on ``probe``'s images, and ``attrs`` say which, and name the model."""
    from reuse_analysis.agreement import agreement_table
    from reuse_analysis.analysis import metric_tables

    names = [*(metrics or [m for m in METRICS if m != "ablation"]), "ablation"]
    tables = metric_tables(model, names, probe=probe, trust_pickle=trust_pickle)
    df = agreement_table(tables)
    # The order the file's weights were read in (weight tables); the data-driven ones ran a
    # model of the same connections (a rebuild permuted into oldest-first).
    read = [tables[m].attrs for m in names if not METRICS[m].data_driven]
    df.attrs.update(
        {k: tables["ablation"].attrs.get(k) for k in ("dataset", "split", "images")},
        model=Path(model).stem,
        concat_order=read[0]["concat_order"] if read else "oldest-first",
    )
    if read and read[0].get("concat_order_text"):
        df.attrs["concat_order_text"] = read[0]["concat_order_text"]
    return df


def write_model_report(
    models: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    concat_order: str = "auto",
    metric: str = "weight",
    probe: Any = None,
    agreement: bool = False,
    sweep: str | os.PathLike[str] | None = None,
    trust_pickle: bool = False,
) -> list[Any]:
    """Analyse ``models`` and write one PDF report on them; returns each model's
    :class:`reuse_analysis.report.ModelReport` (its name, table, observations …).

    Models with the same name are told apart by their paths. ``agreement`` adds each
    model's agreement page; ``sweep`` (a CSV of ``prune --sweep``) the first model's
    pruning sweep. Differences against the first model come with two or more models.
    """
    from reuse_analysis.analysis import analyze
    from reuse_analysis.prune import read_sweep
    from reuse_analysis.report import model_report, write_report

    swept = read_sweep(str(sweep)) if sweep is not None else None
    results = [
        analyze(m, concat_order=concat_order, trust_pickle=trust_pickle, metric=metric, probe=probe)
        for m in models
    ]
    names = [r.model_name for r in results]
    for path, r in zip(models, results, strict=True):
        if names.count(r.model_name) > 1:
            r.model_name = f"{r.model_name} ({path})"
            r.table.attrs["model"] = r.model_name
    reports = []
    for i, (path, r) in enumerate(zip(models, results, strict=True)):
        agreed = (
            metric_agreement(path, probe=probe, trust_pickle=trust_pickle) if agreement else None
        )
        reports.append(model_report(r, agreement=agreed, sweep=swept if i == 0 else None))
    write_report(reports, output)
    return reports


def write_sweep_outputs(df: pd.DataFrame, figure: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Draw a :func:`reuse_analysis.prune.sweep` result into ``figure`` (the unpruned
    accuracy as the baseline) and write its table beside it as .csv; returns both paths."""
    from reuse_analysis._io import save_figure_atomic
    from reuse_analysis.plotting import sweep_figure
    from reuse_analysis.prune import UNPRUNED, write_sweep

    figure = Path(figure)
    base = df[df.metric == UNPRUNED]
    fig = sweep_figure(
        df[df.metric != UNPRUNED],
        baseline=float(base.accuracy.iloc[0]),
        title=text.sweep_title(df),
    )
    table = figure.with_suffix(".csv")
    save_figure_atomic(fig, figure)
    write_sweep(df, str(table))
    return figure, table


def write_dynamics(
    log: str | os.PathLike[str], figure: str | os.PathLike[str], *, arch: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    """Draw the per-epoch statistics of a run's ``.reuse.csv`` into ``figure``, each next to
    what untrained networks of the run's architecture give; returns the statistics
    (:func:`reuse_analysis.dynamics.reuse_dynamics`), the untrained reference
    (:func:`~reuse_analysis.dynamics.reference_summary`) and the architecture it was drawn
    from (:func:`~reuse_analysis.dynamics.run_architecture`: ``arch``, else the files beside
    the log, else its arch column)."""
    import pandas as pd

    from reuse_analysis._io import save_figure_atomic
    from reuse_analysis.dynamics import (
        reference_summary,
        reuse_dynamics,
        run_architecture,
        untrained_samples,
    )
    from reuse_analysis.errors import ReuseAnalysisError
    from reuse_analysis.plotting import dynamics_figure

    try:
        df = pd.read_csv(log)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReuseAnalysisError(
            f"{log} is not a CSV file ({exc}); give a run's .reuse.csv"
        ) from None
    missing = [c for c in REUSE_LOG_COLUMNS if c not in df.columns]
    if missing or df.empty:
        raise ReuseAnalysisError(
            f"{log} is not a run's reuse log (columns {', '.join(missing) or 'present, no rows'}"
            " missing); `train` writes NAME.reuse.csv beside NAME.pt for DenseNets"
        )
    found = run_architecture(log, df, arch)
    table = reuse_dynamics(df)
    reference = reference_summary(untrained_samples(found.state_dict, found.structure))
    title = text.dynamics_title(Path(log).name, found.describe(), reference.attrs["seeds"])
    save_figure_atomic(dynamics_figure(table, reference=reference, title=title), figure, 150)
    return table, reference, found
