"""PDF reports: what the weights say about feature reuse, with numbers and verdicts.

One page per idea: a cover, the Figure 5 heatmap, one page per observation of the paper
(statistic, threshold, verdict, a small plot), transition redundancy, classifier focus,
optionally the agreement of every metric with ablation and a pruning sweep, and the full
table as an appendix. With several models: one heatmap per model, difference
heatmaps against the first, and the statistics side by side. Honours
``SOURCE_DATE_EPOCH`` so that the same inputs give a byte-identical PDF.
"""

from __future__ import annotations

import datetime as dt
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from reuse_analysis import __version__
from reuse_analysis._io import atomic_path
from reuse_analysis.analysis import Analysis
from reuse_analysis.figure5 import Figure5Match, figure5_match
from reuse_analysis.nulls import checkpoint_warnings
from reuse_analysis.observations import (
    ALPHA,
    FAILS,
    HOLDS,
    SEEDS,
    Observation,
    classifier_focus,
    least_weight_source,
    observations,
    spread,
)
from reuse_analysis.plotting import (
    plot_agreement,
    plot_classifier,
    plot_difference,
    plot_reuse_heatmap,
    plot_row0_ratio,
    plot_spread,
    plot_sweep,
)
from reuse_analysis.redundancy import TransitionRedundancy, transition_redundancy
from reuse_analysis.structure import default_input_size, estimate_macs
from reuse_analysis.tables import table_metric, value_column

PAGE = (11.69, 8.27)  # A4 landscape, inches
_VERDICT_COLOURS = {HOLDS: "tab:green", FAILS: "tab:red"}
_TABLE_ROWS_PER_COLUMN = 48


@dataclass
class ModelReport:
    """Everything one model contributes to a report (see :func:`model_report`)."""

    name: str
    table: pd.DataFrame  # the reuse table (metrics.reuse_table)
    usage: pd.DataFrame  # per block input channel usage (metrics.input_channel_usage)
    structure: dict[str, Any]  # DenseNetStructure.to_dict() plus "summary"
    compressions: dict[int, float]  # block index → θ of the transition after it
    macs: int
    input_size: int
    meta: dict[str, Any]  # what the checkpoint recorded (data set, accuracy, epoch…)
    verdicts: list[Observation]  # the four observations against their nulls (weights)
    transitions: list[TransitionRedundancy]  # redundancy.transition_redundancy
    warnings: list[str]  # why the results may not mean much (nulls.checkpoint_warnings)
    agreement: pd.DataFrame | None = None  # agreement.agreement_table, if asked for
    sweep: pd.DataFrame | None = None  # prune.sweep's table, if given
    figure5: Figure5Match | None = None  # DenseNet-40 configuration: r against Figure 5

    def observations(self) -> list[Observation]:
        return self.verdicts

    def redundancy(self) -> list[TransitionRedundancy]:
        return self.transitions


def model_report(
    result: Analysis,
    *,
    agreement: pd.DataFrame | None = None,
    sweep: pd.DataFrame | None = None,
) -> ModelReport:
    """Collect what the report needs from an analysis (and optional agreement / sweep).

    The observations and the redundancy are computed on the weights (the paper's metric)
    in the concat order the table used, whatever metric the table measures.
    """
    structure = result.structure
    order = result.table.attrs.get("concat_order", "oldest-first")
    sd = result.state_dict
    return ModelReport(
        name=result.model_name,
        table=result.table,
        usage=result.usage,
        structure={"summary": structure.summary(), **structure.to_dict()},
        compressions=result.compressions,
        macs=estimate_macs(structure),
        input_size=default_input_size(structure),
        meta=result.checkpoint.meta if result.checkpoint else {},
        verdicts=observations(sd, structure, order) if sd is not None else [],
        transitions=transition_redundancy(sd, structure, order) if sd is not None else [],
        warnings=checkpoint_warnings(sd, structure, result.table.attrs),
        agreement=agreement,
        sweep=sweep,
        figure5=_figure5(result, order),
    )


def _figure5(result: Analysis, order: str) -> Figure5Match | None:
    """The Figure-5 correlation of a weight table of the paper's configuration."""
    if result.state_dict is None or result.table.attrs.get("metric", "weight") != "weight":
        return None
    return figure5_match(result.table, result.state_dict, result.structure, order)


def report_date() -> dt.datetime:
    """``SOURCE_DATE_EPOCH`` when set (reproducible builds), else now; always UTC."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return dt.datetime.fromtimestamp(int(epoch), tz=dt.timezone.utc)
    return dt.datetime.now(tz=dt.timezone.utc)


def _text_page(title: str) -> Figure:
    fig = Figure(figsize=PAGE)
    fig.text(0.06, 0.93, title, fontsize=18, weight="bold", va="top")
    return fig


def _lines(fig: Figure, lines: Sequence[str], *, top: float = 0.85, size: float = 11) -> float:
    """Write lines (wrapped) from ``top`` down; return where the text ended. Lines that
    would run off the page are set smaller, so that all of them fit above its margin."""
    parts = [part for line in lines for part in textwrap.wrap(line, 120) or [""]]
    step = size / 72 / PAGE[1] * 1.45
    if parts and top - len(parts) * step < 0.04:
        scale = (top - 0.04) / (len(parts) * step)
        size, step = size * scale, step * scale
    y = top
    for part in parts:
        fig.text(0.06, y, part, fontsize=size, va="top", family="DejaVu Sans")
        y -= step
    return y


def _accuracy(meta: dict[str, Any]) -> str:
    for key in ("test_acc", "accuracy", "acc", "best_acc", "best_acc1", "top1"):
        value = meta.get(key)
        if isinstance(value, (int, float)):
            pct = 100 * value if value <= 1 else value
            return f"{pct:.2f} % top-1 ({key} recorded in the checkpoint{_test_images(meta)})"
    return "not recorded in the checkpoint"


def _test_images(meta: dict[str, Any]) -> str:
    """How many test images the recorded accuracy was measured on, when the file says."""
    training = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    counts = [c for c in (training.get("limit_test"), dataset.get("test_size")) if c]
    count = meta.get("test_images") or (min(counts) if counts else None)
    return f", on {count:,} test images" if isinstance(count, int) else ""


def _dataset(meta: dict[str, Any]) -> str:
    """The data set's name and the sizes of its splits (not what training used of them)."""
    ds = meta.get("dataset")
    if not isinstance(ds, dict):
        return "not recorded in the checkpoint"
    sizes = [
        f"{n:,} {split} images"
        for split, n in (("training", ds.get("train_size")), ("test", ds.get("test_size")))
        if isinstance(n, int)
    ]
    return f"{ds.get('name')} ({' and '.join(sizes)})" if sizes else str(ds.get("name"))


#: What each of ``train --schedule``'s learning-rate schedules does, in words.
_SCHEDULES = {
    "paper": "lr {lr}, ÷10 at 50 % and 75 % of the epochs (the paper's schedule)",
    "onecycle": "one-cycle lr (15 % warm-up to {lr}, cosine to 0)",
    "cosine": "cosine lr from {lr} to 0",
}


def _training(meta: dict[str, Any]) -> tuple[str, str]:
    """How the weights were trained, from the ``train_config`` the checkpoint records: which
    training images for how many epochs, and the recipe (schedule, batch, regularisation)."""
    cfg = meta.get("train_config")
    epoch = meta.get("epoch")
    if not isinstance(cfg, dict):
        done = f"{epoch} epoch(s)" if isinstance(epoch, int) else "not recorded in the checkpoint"
        return done, "not recorded in the checkpoint"
    ds = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    size, limit = ds.get("train_size"), cfg.get("limit_train")
    if isinstance(limit, int) and (not isinstance(size, int) or limit < size):
        of = f" of {size:,}" if isinstance(size, int) else ""
        images = f"{limit:,} training images{of} (a fixed random subset, seed {cfg.get('seed')})"
    else:
        images = f"all {size:,} training images" if isinstance(size, int) else "all training images"
    planned = cfg.get("epochs")
    if isinstance(epoch, int) and isinstance(planned, int) and epoch < planned:
        epochs = f"{epoch} of {planned} planned epochs (saved before the end of the run)"
    else:
        epochs = f"{epoch if isinstance(epoch, int) else planned} epochs"
    # Checkpoints from before --schedule existed were all trained with the paper's.
    schedule = cfg.get("schedule") or "paper"
    recipe = [
        _SCHEDULES.get(schedule, f"{schedule} schedule (peak lr {{lr}})").format(lr=cfg.get("lr")),
        f"batch {cfg.get('batch_size')}",
    ]
    if cfg.get("label_smoothing"):
        recipe.append(f"label smoothing {cfg['label_smoothing']}")
    if "augment" in cfg:
        recipe.append("random crops and flips" if cfg["augment"] else "no augmentation")
    return f"{images}, {epochs}", ", ".join(recipe)


def cover_page(models: Sequence[ModelReport], when: dt.datetime) -> Figure:
    fig = _text_page("Feature reuse in " + ", ".join(m.name for m in models))
    lines = [
        "Which earlier layers does each layer use? The average absolute weight that each",
        "layer's first convolution gives to each earlier layer (Huang et al., 'Densely",
        "Connected Convolutional Networks', §5 and Figure 5).",
        "",
    ]
    for m in models:
        s = m.structure
        lines += [
            f"Model: {m.name}",
            f"    structure: {s['summary']} (depth {s['depth']})",
            f"    parameters: {s['num_parameters']:,}",
            f"    compute: {m.macs / 1e6:,.1f} M multiply-adds per {m.input_size}×"
            f"{m.input_size} image (estimated from the weights' shapes)",
            f"    input channels: {s['input_channels']}, classes: {s['num_classes']}",
            f"    data set: {_dataset(m.meta)}",
            f"    trained on: {_training(m.meta)[0]}",
            f"    recipe: {_training(m.meta)[1]}",
            f"    accuracy: {_accuracy(m.meta)}",
            f"    concat order: {_order(m.table)}",
            f"    metric: {_metric_line(m.table)}",
            *(
                [f"    Figure 5 correlation (Pearson r per block): {m.figure5.line()}"]
                if m.figure5 is not None
                else []
            ),
            *[f"    WARNING: {w}" for w in m.warnings],
            "",
        ]
    lines += [
        f"Date: {when:%Y-%m-%d %H:%M} UTC",
        f"reuse-analysis {__version__}",
    ]
    _lines(fig, lines)
    return fig


def _order(df: pd.DataFrame) -> str:
    """``oldest-first (detected: 36 of 36 batch-norm pairs, 0 against)``."""
    a = df.attrs
    if a.get("concat_order_text"):
        return str(a["concat_order_text"])
    basis = a.get("concat_order_basis")
    return f"{a.get('concat_order')} ({basis})" if basis else str(a.get("concat_order"))


def _metric_line(df: pd.DataFrame) -> str:
    """``ablation — exact increase … (on 1000 train images of cifar10)``."""
    info = table_metric(df)
    on = ""
    if "images" in df.attrs:
        where = f" of {df.attrs['dataset']}" if df.attrs.get("dataset") else ""
        on = f" (on {df.attrs['images']} {df.attrs.get('split', '')} images{where})"
    return f"{info.name}: {info.description}{on}"


def _fmt(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _null_text(o_null: dict) -> str:
    u, p = o_null["untrained"], o_null["permuted"]
    return (
        f"untrained {_fmt(u.mean)} ± {_fmt(u.sd)} (p = {_fmt(u.p_value)}), "
        f"permuted {_fmt(p.mean)} ± {_fmt(p.sd)} (p = {_fmt(p.p_value)})"
    )


def observation_page(m: ModelReport, o: Observation) -> Figure:
    """One observation: its verdict, the statistic with interval and nulls, per block."""
    fig = _text_page(f"Observation {o.number}: {o.verdict.upper()}")
    fig.texts[0].set_color(_VERDICT_COLOURS.get(o.verdict, "tab:orange"))
    lines = [
        f"Claim (paper §5): {o.claim}",
        f"Statistic: {o.measure}.",
        f"Verdict rule: {o.threshold}. Nulls: {SEEDS} fresh initialisations of the same "
        f"shapes, and {SEEDS} shuffles of each target's input channels; p one-sided, level "
        f"{ALPHA}.",
        f"Value for {m.name}: {_fmt(o.value)}  95 % interval [{_fmt(o.interval[0])}, "
        f"{_fmt(o.interval[1])}]  Null: {_null_text(o.null)}  Verdict: {o.verdict}",
    ]
    for b in o.blocks:
        mb = b.measured
        extra = "".join(
            f"; {name.replace('_', ' ')} {_fmt(x.value)} (untrained "
            f"{_fmt(x.null['untrained'].mean)}, permuted {_fmt(x.null['permuted'].mean)})"
            for name, x in b.extra.items()
        )
        parts = "".join(f"; {k.replace('_', ' ')}: {v}" for k, v in b.parts.items())
        lines.append(
            f"Block {b.block}: {_fmt(mb.value)} [{_fmt(mb.interval[0])}, {_fmt(mb.interval[1])}]"
            f", {_null_text(mb.null)}{extra}{parts} → {b.verdict}"
        )
    if not o.blocks:
        lines.append("Nothing to measure in this model.")
    y = _lines(fig, lines, size=9)
    ax = fig.add_axes((0.1, 0.08, 0.8, max(0.15, y - 0.14)))
    sp = spread(m.table)
    if o.number == 1:
        plot_spread(sp[sp.target_kind == "layer"], ax)
    elif o.number == 2:
        trans = sp[sp.target_kind == "transition"]
        ax.bar(trans["block"].astype(str), trans["spread"], color="tab:blue")
        ax.axhline(0.5, color="grey", ls="--", lw=0.8)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("transition after block")
        ax.set_ylabel("share of sources ≥ ½ max")
    elif o.number == 3:
        plot_row0_ratio(least_weight_source(m.table), ax)
    else:
        focus = classifier_focus(m.table)
        plot_classifier(m.table, ax, highlight_last=focus["last_sources"] if focus else 0)
    return fig


def redundancy_page(m: ModelReport) -> Figure:
    """Per transition: read-in rank and transition-conv rank against untrained, and θ'."""
    reds = m.redundancy()
    fig = _text_page("Transition redundancy")
    if not reds:
        _lines(fig, [f"{m.name} has no transition layer."])
        return fig
    lines = [
        "Does the next block read fewer directions of a transition's output than an untrained "
        "network would? Read-in = the next block's first-conv weights on the transition's "
        "output channels, stacked; its rank fraction = fewest singular directions holding 90 % "
        f"of the squared singular values ÷ channels, next to {SEEDS} fresh initialisations. "
        "Suggested θ' = θ × fraction ÷ untrained fraction, only when the model is below the "
        "untrained reference (p ≤ 0.05) by ≥ 0.05.",
        "",
    ]
    for r in reds:
        lines.append(r.describe()[0].upper() + r.describe()[1:])
    y = _lines(fig, lines, size=10)
    width = 0.84 / len(reds)
    for i, r in enumerate(reds):
        ax = fig.add_axes((0.08 + i * width, 0.08, width - 0.06, max(0.2, y - 0.18)))
        _energy_plot(ax, r)
    return fig


def _energy_plot(ax: Any, r: TransitionRedundancy) -> None:
    """Cumulative energy of the read-in's singular values against the share of directions."""
    for curve, label, style in (
        (r.read_in.curve, "model", {"color": "tab:blue"}),
        (r.read_in.untrained_curve, "untrained", {"color": "grey", "ls": "--"}),
    ):
        if curve:
            x = np.arange(1, len(curve) + 1) / r.channels
            ax.plot(x, curve, label=label, lw=1.2, **style)
    ax.axhline(0.9, color="tab:red", lw=0.7, ls=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("share of directions\n(of the channels)")
    ax.set_ylabel("cumulative energy of the read-in")
    ax.set_title(f"transition after block {r.transition}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")


def classifier_page(m: ModelReport) -> Figure:
    fig = _text_page("Classifier focus")
    focus = classifier_focus(m.table)
    if focus is None:
        _lines(fig, ["No classifier was found after the last block."])
        return fig
    y = _lines(
        fig,
        [
            f"The classifier's weight on the last {focus['last_sources']} sources of the last "
            f"block (its last quarter): {100 * focus['share_last']:.1f} % of its total weight, "
            f"against {100 * focus['uniform_share']:.1f} % if every source weighed the same "
            f"(mean weight ratio {focus['ratio']:.2f}).",
            f"{100 * focus['spread']:.0f} % of the sources get at least half of the strongest "
            "source's weight.",
        ],
    )
    plot_classifier(
        m.table,
        fig.add_axes((0.1, 0.08, 0.8, max(0.2, y - 0.16))),
        highlight_last=focus["last_sources"],
    )
    return fig


def agreement_page(m: ModelReport) -> Figure:
    """Spearman's ρ of every metric with ablation, per block: which cheap metric to trust."""
    from reuse_analysis.agreement import agreement_text

    df = m.agreement
    assert df is not None
    fig = _text_page("Which metric finds the connections that matter?")
    attrs = df.attrs
    on = f" on {attrs['images']} {attrs.get('split', '')} images of {attrs.get('dataset')}"
    y = _lines(
        fig,
        [
            "Ground truth: ablation, the exact increase of the loss when a connection alone is "
            f"cut{on if 'images' in attrs else ''}. Each metric's agreement with it is "
            "Spearman's rank correlation ρ over the connections of a block (layer columns "
            "and the transition or classifier column), over all blocks, and the mean ρ within "
            "target columns with at least three sources (the ranking per-column pruning uses).",
        ],
        size=10,
    )
    text = agreement_text(df)
    fig.text(0.06, y - 0.01, text, family="DejaVu Sans Mono", fontsize=9, va="top")
    rows = text.count("\n") + 1
    top = y - 0.04 - rows * 9 / 72 / PAGE[1] * 1.3
    plot_agreement(df, fig.add_axes((0.1, 0.08, 0.8, max(0.2, top - 0.12))))
    return fig


_SWEEP_SCOPES = {
    "column": "Each target column keeps its strongest ⌈(1−F)·n⌉ sources by the metric; the others",
    "global": "The strongest ⌈(1−F)·N⌉ of all N connections by the metric's raw value are kept "
    "(at least one per target column); the others",
}


def _sweep_lines(summary: pd.DataFrame) -> list[str]:
    """Per fraction: the metric with the best mean accuracy, and the random baseline's mean
    with its range over seeds (what chance gives at the same budget)."""
    lines = []
    for fraction, group in summary.groupby("fraction", sort=True):
        ranked = group[group.metric != "random"]
        chance = group[group.metric == "random"]
        line = f"F = {fraction:g} ({100 * group.share_cut.iloc[0]:.0f} % of connections cut):"
        if len(ranked):
            best = ranked.loc[ranked.accuracy_mean.idxmax()]
            line += f" best {best.metric} {100 * best.accuracy_mean:.2f} %"
        if len(chance):
            r = chance.iloc[0]
            spread = (
                f" (mean of {r.runs} seeds, {100 * r.accuracy_min:.2f}–"
                f"{100 * r.accuracy_max:.2f} %)"
                if r.runs > 1
                else ""
            )
            line += f"{';' if len(ranked) else ''} random {100 * r.accuracy_mean:.2f} %{spread}"
        lines.append(line)
    return lines


def sweep_page(m: ModelReport) -> Figure:
    """Accuracy after cutting the weakest F of the connections by each metric."""
    from reuse_analysis.prune import UNPRUNED, sweep_summary

    df = m.sweep
    assert df is not None
    fig = _text_page("Pruning sweep: accuracy against the fraction cut")
    base = df[df.metric == UNPRUNED]
    rest = df[df.metric != UNPRUNED]
    baseline = float(base.accuracy.iloc[0]) if len(base) else None
    a = df.attrs
    lines = [
        _SWEEP_SCOPES[a.get("scope", "column")]
        + " are cut (their weight slices zeroed); accuracy without fine-tuning"
        + (f" on {a['test_images']} test images" if a.get("test_images") else "")
        + (f"; unpruned: {100 * baseline:.2f} %" if baseline is not None else "")
        + (
            ". 'random' ranks connections at random (the chance baseline)."
            if "random" in set(rest.metric)
            else "."
        )
        + (f" Concat order: {a['concat_order_text']}." if a.get("concat_order_text") else ""),
    ]
    lines += _sweep_lines(sweep_summary(rest))
    y = _lines(fig, lines, size=10)
    plot_sweep(rest, fig.add_axes((0.1, 0.08, 0.8, max(0.2, y - 0.14))), baseline=baseline)
    return fig


def table_pages(m: ModelReport) -> list[Figure]:
    """The full reuse table, two columns of rows per page, monospaced."""
    df = m.table
    value = value_column(df)
    heading = {"mean_abs_weight": "mean |w|"}.get(value, value[:10])
    header = f"{'blk':>3} {'s':>3} {'t':>3} {'kind':<10} {heading:>10} {'norm':>6}"
    rows = [
        f"{r.block:>3} {r.source:>3} {r.target:>3} {r.target_kind:<10} "
        f"{_number(v):>10} {r.normalized:>6.3f}"
        for r, v in zip(df.itertuples(), df[value], strict=True)
    ]
    per_page = 2 * _TABLE_ROWS_PER_COLUMN
    pages = []
    for start in range(0, len(rows), per_page):
        n = start // per_page + 1
        fig = _text_page(f"Appendix: reuse table of {m.name} ({n})")
        fig.texts[0].set_fontsize(12)
        chunk = rows[start : start + per_page]
        for col in range(2):
            part = chunk[col * _TABLE_ROWS_PER_COLUMN : (col + 1) * _TABLE_ROWS_PER_COLUMN]
            if part:
                fig.text(
                    0.06 + 0.46 * col,
                    0.88,
                    "\n".join([header, *part]),
                    family="DejaVu Sans Mono",
                    fontsize=7,
                    va="top",
                )
        pages.append(fig)
    return pages


def _number(v: float) -> str:
    """Ten characters: fixed point for the weights' range, scientific for tiny or signed."""
    return f"{v:10.6f}" if 1e-3 <= abs(v) < 1e3 or v == 0 else f"{v:10.3e}"


def comparison_page(models: Sequence[ModelReport]) -> Figure:
    fig = _text_page("Statistics per model")
    lines = []
    for m in models:
        obs = m.observations()
        lines.append(
            f"{m.name}: "
            + "; ".join(
                f"obs. {o.number} {o.verdict} ({'n/a' if np.isnan(o.value) else f'{o.value:.2f}'})"
                for o in obs
            )
        )
        for r in m.redundancy():
            theta = "none" if r.suggested_compression is None else f"{r.suggested_compression:.2f}"
            lines.append(
                f"    transition after block {r.transition}: read-in rank fraction "
                f"{r.read_in.fraction:.2f} (untrained {r.read_in.untrained_mean:.2f}), "
                f"suggested θ' {theta}"
            )
    _lines(fig, lines, size=10)
    return fig


def pages(models: Sequence[ModelReport], when: dt.datetime) -> list[Figure]:
    """All pages of the report, in order."""
    out = [cover_page(models, when)]
    for m in models:
        out.append(plot_reuse_heatmap(m.table, normalize="column", page=PAGE))
        out += [observation_page(m, o) for o in m.observations()]
        out += [redundancy_page(m), classifier_page(m)]
        if m.agreement is not None:
            out.append(agreement_page(m))
        if m.sweep is not None:
            out.append(sweep_page(m))
    if len(models) > 1:
        first = models[0]
        for other in models[1:]:
            try:
                out.append(
                    plot_difference(
                        first.table, other.table, labels=(first.name, other.name), page=PAGE
                    )
                )
            except ValueError as exc:
                fig = _text_page(f"{other.name} − {first.name}")
                _lines(fig, [f"No difference heatmap: {exc}."])
                out.append(fig)
        out.append(comparison_page(models))
    for m in models:
        out += table_pages(m)
    return out


def write_report(models: Sequence[ModelReport], path: str | os.PathLike[str]) -> Path:
    """Write the multi-page PDF atomically; returns its path."""
    when = report_date()
    metadata = {
        "Title": "Feature reuse: " + ", ".join(m.name for m in models),
        "Author": f"reuse-analysis {__version__}",
        "Subject": "DenseNet feature reuse (Huang et al. 2017, §5, Fig. 5)",
        "CreationDate": when,
        "ModDate": when,
    }
    path = Path(path)
    with atomic_path(path) as tmp, PdfPages(tmp, metadata=metadata) as pdf:
        for fig in pages(models, when):
            pdf.savefig(fig)
    return path
