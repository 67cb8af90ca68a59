"""The ``reuse-analysis`` command line: parse, call the library, print paths.

Heavy libraries (torch, pandas, matplotlib) are imported inside the commands so that
``reuse-analysis --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from reuse_analysis import __version__
from reuse_analysis._io import FIGURE_FORMATS, save_figure_atomic
from reuse_analysis.tables import METRICS

CONCAT_HELP = (
    "How each layer concatenates its inputs: oldest-first is [x0, x1, …] (torchvision, "
    "most code); newest-first is torch.cat([new, old]) (e.g. kuangliu/pytorch-cifar). "
    "A weight file cannot tell which; every output states the order used."
)
DEFAULT_REPORTS = Path("reports")


class InputError(click.ClickException):
    """Bad input: one ``Error:`` line on stderr and exit status 2."""

    exit_code = 2


def fail(message: str) -> NoReturn:
    raise InputError(message)


def handles_bad_input(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's input errors into ``Error: …`` lines with exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from reuse_analysis.errors import ReuseAnalysisError

        try:
            return func(*args, **kwargs)
        except ReuseAnalysisError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))

    return wrapper


model_argument = click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
concat_option = click.option(
    "--concat-order",
    type=click.Choice(["oldest-first", "newest-first"]),
    default="oldest-first",
    show_default=True,
    help=CONCAT_HELP,
)
trust_option = click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow loading files that contain pickled Python objects (a whole nn.Module, "
    "custom classes). This runs code from the file: only for files you trust.",
)

arch_option = click.option(
    "--arch",
    help="Trace this network instead of reading weight names: a registered model "
    "(d2l_densenet, googlenet, densenet121, …) or module:function returning an nn.Module. "
    "MODEL's weights are loaded into it (strict); works for any network whose layers read "
    "a torch.cat of earlier tensors, in the order the graph concatenates them.",
)
input_size_option = click.option(
    "--input-size",
    type=click.IntRange(1),
    help="Side of the example image the --arch model is traced with "
    "(default: the size the checkpoint records, else 32).",
)


DEVICES = ("auto", "cpu", "cuda", "mps")
device_option = click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="Where the model runs (auto: CUDA, then MPS, then the CPU).",
)


def data_dir_option(what: str = "Where data sets are downloaded, extracted and cached.") -> Any:
    """``--data-dir`` (default ``data``), with what the command keeps there."""
    return click.option(
        "--data-dir", default="data", show_default=True, type=click.Path(file_okay=False), help=what
    )


def _analyze(
    model: Path,
    arch: str | None,
    input_size: int | None,
    concat_order: str,
    trust_pickle: bool,
    metric: str = "weight",
    probe: dict[str, Any] | None = None,
) -> Any:
    """The weight-name analysis, or the traced one when ``--arch`` names the network."""
    if arch is None:
        if input_size is not None:
            fail("--input-size applies to --arch only")
        from reuse_analysis.analysis import analyze

        settings = _settings(probe) if probe is not None else None
        return analyze(
            model,
            concat_order=concat_order,
            trust_pickle=trust_pickle,
            metric=metric,
            probe=settings,
        )
    if metric != "weight":
        fail(
            f"--metric {metric} runs a DenseNet found by its weight names; the traced "
            "analysis (--arch) reads weights only: drop --arch, or use --metric weight"
        )
    from reuse_analysis.traced import analyze_traced

    return analyze_traced(model, arch, input_size=input_size, trust_pickle=trust_pickle)


METRIC_HELP = (
    "What the table measures. weight: mean |w| per source slice (the paper's); bn-weight: "
    "|w| scaled by |γ|/√(σ²+ε) of the batch norm in front; activation: mean |contribution| "
    "to the target's first-conv output on real images; ablation: loss increase when the "
    "connection alone is cut; taylor: first-order estimate of ablation. The last three run "
    "the model (--dataset, --images)."
)
metric_option = click.option(
    "--metric",
    type=click.Choice(list(METRICS)),
    default="weight",
    show_default=True,
    help=METRIC_HELP,
)


def _floats(value: str | None, option: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{option} takes numbers separated by commas, not {value!r}"
        ) from None


# --mean/--std: the input normalisation of a model rebuilt from weights alone.
normalisation_options = [
    click.option(
        "--mean",
        callback=lambda ctx, param, value: _floats(value, "--mean"),
        help="Input normalisation per channel, e.g. 0.5,0.5,0.5 (default: the recorded one, "
        "else the data set's usual statistics); checked against the batch norms.",
    ),
    click.option(
        "--std", callback=lambda ctx, param, value: _floats(value, "--std"), help="See --mean."
    ),
]
# Options of the metrics that run the model; a command gets them as one `probe` dict.
_PROBE_KEYS = ("dataset", "data_dir", "images", "split", "batch_size", "device", "mean", "std")


def probe_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the data-driven metrics' options; pass them on as ``probe=dict(...)``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, probe={k: kwargs.pop(k) for k in _PROBE_KEYS}, **kwargs)

    options = [
        click.option(
            "--dataset",
            help="Images for the data-driven metrics (default: the data set recorded in the "
            "checkpoint): cifar10, …, npz:PATH or imagefolder:PATH.",
        ),
        data_dir_option(
            "Where data sets are cached; results of data-driven metrics are kept in "
            "DATA_DIR/probe-cache so that reruns and interrupted runs continue."
        ),
        click.option(
            "--images",
            type=click.IntRange(1),
            default=1000,
            show_default=True,
            help="How many images (a fixed random subset of the split) the model runs on.",
        ),
        click.option(
            "--split",
            type=click.Choice(["train", "test"]),
            default="train",
            show_default=True,
            help="Which split those images come from (train keeps the test set unseen).",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(1),
            default=256,
            show_default=True,
            help="Images per forward pass (bounds memory).",
        ),
        device_option,
        *normalisation_options,
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _settings(probe: dict[str, Any]) -> Any:
    from reuse_analysis.probes import ProbeSettings

    return ProbeSettings(**probe)


def _measured(result: Any) -> str:
    """``metric ablation on 1000 train images of cifar10`` for notes on stderr."""
    a = result.table.attrs
    on = (
        f" on {a['images']} {a.get('split', '')} images of {a.get('dataset')}"
        if "images" in a
        else ""
    )
    return f"metric {a.get('metric', 'weight')}{on}"


def _check_figure_path(output: Path) -> None:
    if output.suffix.lower() not in FIGURE_FORMATS:
        fail(f"cannot write {output}: use one of {', '.join(FIGURE_FORMATS)} as the extension")


def _default_output(model: Path, suffix: str) -> Path:
    return DEFAULT_REPORTS / f"{model.stem}{suffix}"


def _note(message: str) -> None:
    click.echo(message, err=True)


def _notes(result: Any) -> None:
    """What inference could not make sense of, so that nothing is left out silently."""
    for note in result.structure.notes:
        _note(f"note: {note}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reuse-analysis")
def cli() -> None:
    """Which earlier layers does each layer of a DenseNet use?

    Reads a DenseNet checkpoint from any common PyTorch implementation, infers its
    blocks from the weight shapes, and computes the paper's feature-reuse matrix
    (Huang et al., "Densely Connected Convolutional Networks", §5, Figure 5).
    """


@cli.command()
@model_argument
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Image to write; the extension picks the format (.png, .pdf, .svg). "
    "Default: reports/MODEL-heatmap.png (MODEL-METRIC-heatmap.png for other metrics).",
)
@click.option(
    "--normalize",
    type=click.Choice(["column", "none", "global"]),
    default="column",
    show_default=True,
    help="column: each target column min–max scaled to [0, 1], as in the paper; "
    "none: raw average |w|; global: one min–max over all blocks.",
)
@concat_option
@click.option(
    "--cmap",
    default="viridis",
    show_default=True,
    help="Matplotlib colour map; 'jet' matches the paper's figure.",
)
@click.option("--title", help="Figure title (default: model, structure, concat order).")
@click.option(
    "--annotate/--no-annotate",
    default=None,
    help="Write the value in each cell (default: only when every block is small).",
)
@click.option(
    "--dpi", type=click.IntRange(50, 1200), default=150, show_default=True, help="PNG resolution."
)
@arch_option
@input_size_option
@metric_option
@probe_options
@trust_option
@handles_bad_input
def heatmap(
    model: Path,
    output: Path | None,
    normalize: str,
    concat_order: str,
    cmap: str,
    title: str | None,
    annotate: bool | None,
    dpi: int,
    arch: str | None,
    input_size: int | None,
    metric: str,
    probe: dict[str, Any],
    trust_pickle: bool,
) -> None:
    """Draw the paper's Figure 5 for MODEL: one panel per dense block."""
    suffix = "-heatmap.png" if metric == "weight" else f"-{metric}-heatmap.png"
    output = output or _default_output(model, suffix)
    _check_figure_path(output)
    import matplotlib

    if cmap not in matplotlib.colormaps:
        fail(f"unknown colour map {cmap!r}; try viridis, magma or jet")

    from reuse_analysis.plotting import plot_reuse_heatmap

    result = _analyze(model, arch, input_size, concat_order, trust_pickle, metric, probe)
    fig = plot_reuse_heatmap(
        result.table, normalize=normalize, cmap=cmap, title=title, annotate=annotate
    )
    save_figure_atomic(fig, output, dpi)
    order = result.table.attrs["concat_order"]
    _note(f"{result.structure.summary()}; concat order {order}; {_measured(result)}")
    _notes(result)
    click.echo(str(output))


@cli.command()
@model_argument
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "json"]),
    default=None,
    help="Output format (default: from the -o extension, else csv).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (default: standard output).",
)
@concat_option
@arch_option
@input_size_option
@metric_option
@probe_options
@trust_option
@handles_bad_input
def table(
    model: Path,
    fmt: str | None,
    output: Path | None,
    concat_order: str,
    arch: str | None,
    input_size: int | None,
    metric: str,
    probe: dict[str, Any],
    trust_pickle: bool,
) -> None:
    """Print the reuse matrix of MODEL, one row per (block, source, target).

    Columns: block, source, target, target_kind, mean_abs_weight, normalized. Source 0
    is the block input; target L+1 is the transition (or classifier) after the block.
    With another --metric the 5th column is named for what it holds (mean_abs_bn_weight,
    mean_abs_contribution, loss_increase, taylor_loss_increase); ablation adds
    accuracy_drop after normalized.
    """
    if fmt is None:
        fmt = "json" if output is not None and output.suffix.lower() == ".json" else "csv"
    result = _analyze(model, arch, input_size, concat_order, trust_pickle, metric, probe)
    text = _table_text(result, fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        from reuse_analysis._io import write_text_atomic

        write_text_atomic(output, text)
        click.echo(str(output))
    order = result.table.attrs["concat_order"]
    assumed = " (assumed)" * (arch is None)
    _note(f"{result.structure.summary()}; concat order {order}{assumed}; {_measured(result)}")
    _notes(result)


def _table_text(result: Any, fmt: str) -> str:
    df = result.table
    if fmt == "csv":
        return df.to_csv(index=False, float_format="%.9g", lineterminator="\n")
    data = {k: df.attrs[k] for k in ("dataset", "split", "images") if k in df.attrs}
    payload = {
        "model": result.model_name,
        "structure": df.attrs["structure"],
        "concat_order": df.attrs["concat_order"],
        "metric": df.attrs["metric"],
        **({"layout": df.attrs["layout"]} if "layout" in df.attrs else {}),
        **({"data": data} if data else {}),
        "columns": list(df.columns),
        "rows": json.loads(df.to_json(orient="records", double_precision=15)),
    }
    return json.dumps(payload, indent=2) + "\n"


@cli.command()
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Print the structure as JSON.")
@arch_option
@input_size_option
@trust_option
@handles_bad_input
def info(
    model: Path, as_json: bool, arch: str | None, input_size: int | None, trust_pickle: bool
) -> None:
    """Show the structure inferred from MODEL's weights: blocks, layers, k, θ, classifier.

    With --arch: the concatenation groups found by tracing that network.
    """
    if arch is not None:
        result = _analyze(model, arch, input_size, "oldest-first", trust_pickle)
        traced = {"file": str(model), "arch": arch, **result.structure.to_dict()}
        click.echo(json.dumps(traced, indent=2) if as_json else _traced_text(traced))
        return
    from reuse_analysis.analysis import load_structure

    _, structure, checkpoint = load_structure(model, trust_pickle=trust_pickle)
    described = {
        "file": str(model),
        "container": checkpoint.container if checkpoint else None,
        "arch": checkpoint.arch if checkpoint else None,
        "summary": structure.summary(),
        **structure.to_dict(),
        "meta": checkpoint.meta if checkpoint else {},
    }
    if as_json:
        click.echo(json.dumps(described, indent=2, default=str))
        return
    click.echo(_info_text(described))


def _traced_text(d: dict[str, Any]) -> str:
    lines = [f"{d['file']}: {d['summary']}", f"  concat order    {d['concat_order']}"]
    for g in d["groups"]:
        kinds = [t["kind"] for t in g["targets"]]
        counted = ", ".join(
            f"{kinds.count(k)} {k}" + ("es" if k.endswith("ch") else "s") * (kinds.count(k) > 1)
            for k in dict.fromkeys(kinds)
        )
        title = g["title"].replace("\n", " ")
        lines.append(
            f"  group {g['index']} ({g['layout']}) {title}: {len(g['sources'])} sources "
            f"read by {counted}"
        )
    lines += [f"  note: {n}" for n in d["notes"]]
    return "\n".join(lines)


def _head_lines(extra: dict[str, Any], channels: int) -> list[str]:
    """The head: which Linear is the classifier column, its layers, its real outputs."""
    positions = extra.get("positions", 1)
    reads = (
        f"{extra['in_features']} features = {channels} channels × {positions} positions of "
        "the flattened map"
        if positions > 1
        else f"{extra['in_features']} pooled features"
    )
    layers = extra.get("head") or [
        {"kind": "linear", "in": extra["in_features"], "out": extra["num_classes"]}
    ]
    chain = " → ".join(
        f"Linear {h['in']}→{h['out']}" if h["kind"] == "linear" else f"BatchNorm1d {h['out']}"
        for h in layers
    )
    outputs = (
        f"{extra['num_classes']} outputs, an embedding ({extra['embedding']})"
        if extra.get("embedding")
        else f"{extra['num_classes']} classes"
    )
    return [
        f"      classifier {extra['name']}: reads {reads} (the classifier column)",
        f"      head            {chain}: {outputs}",
    ]


def _info_text(d: dict[str, Any]) -> str:
    from reuse_analysis.checkpoint import human_count

    lines = [
        f"{d['file']}: {d['summary']}",
        f"  stored as       {d['container']}" + (f" (arch {d['arch']})" if d["arch"] else ""),
        f"  depth           {d['depth']} weighted layers",
        f"  parameters      {human_count(d['num_parameters'])} ({d['num_parameters']:,})",
        f"  input channels  {d['input_channels'] if d['input_channels'] else 'unknown'}",
        f"  classes         {d['num_classes'] if d['num_classes'] else 'unknown'}",
    ]
    head = d["blocks"][-1]["extra"] if d["blocks"] else None
    if head and head["kind"] == "classifier" and head.get("embedding"):
        lines[-1] = f"  outputs         {d['num_classes']} (an embedding, not classes)"
    for b in d["blocks"]:
        width = b["bottleneck_width"]
        lines.append(
            f"  block {b['index']}  {b['name'] or '(root)'}: {b['num_layers']} layers, "
            f"k={b['growth_rate']}, {b['in_channels']}→{b['out_channels']} channels, "
            + (f"bottleneck {width}" if width else "no bottleneck")
        )
        extra = b["extra"]
        if extra and extra["kind"] == "transition":
            lines.append(
                f"      transition {extra['name']}: {extra['in_channels']}→"
                f"{extra['out_channels']} channels (θ={extra['compression']:g})"
            )
        elif extra:
            lines += _head_lines(extra, b["out_channels"])
    lines += [f"  note: {n}" for n in d["notes"]]
    return "\n".join(lines)


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PDF to write (default: reports/MODEL-report.pdf, after the first model).",
)
@concat_option
@metric_option
@click.option(
    "--agreement",
    "with_agreement",
    is_flag=True,
    help="Add a page on how well each metric agrees with ablation (runs the data-driven "
    "metrics on --images images, or reuses their cached results).",
)
@click.option(
    "--sweep",
    "sweep_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Add the pruning sweep of the first MODEL from the CSV that `prune --sweep` wrote.",
)
@probe_options
@trust_option
@handles_bad_input
def report(
    models: tuple[Path, ...],
    output: Path | None,
    concat_order: str,
    metric: str,
    with_agreement: bool,
    sweep_file: Path | None,
    probe: dict[str, Any],
    trust_pickle: bool,
) -> None:
    """Write a PDF report on one or more MODELS: heatmap, the paper's four observations
    tested with numbers, transition redundancy, classifier focus and the full table.

    With several models it adds difference heatmaps against the first (e.g. two seeds,
    or epoch 10 against epoch 300) and their statistics side by side.
    """
    output = output or _default_output(models[0], "-report.pdf")
    if output.suffix.lower() != ".pdf":
        fail(f"cannot write {output}: a report is a PDF, use the .pdf extension")
    from reuse_analysis.analysis import analyze
    from reuse_analysis.report import model_report, write_report

    sweep = None
    if sweep_file is not None:
        from reuse_analysis.prune import read_sweep

        sweep = read_sweep(str(sweep_file))
    settings = _settings(probe)
    results = [
        analyze(
            m, concat_order=concat_order, trust_pickle=trust_pickle, metric=metric, probe=settings
        )
        for m in models
    ]
    names = [r.model_name for r in results]
    for i, r in enumerate(results):
        if names.count(r.model_name) > 1:
            r.model_name = f"{r.model_name} ({models[i]})"
            r.table.attrs["model"] = r.model_name
    reports = []
    for i, (path, r) in enumerate(zip(models, results, strict=True)):
        agreement = _agreement(path, settings, trust_pickle) if with_agreement else None
        reports.append(model_report(r, agreement=agreement, sweep=sweep if i == 0 else None))
    write_report(reports, output)
    _note(f"{len(results)} model(s); concat order {concat_order}; {_measured(results[0])}")
    click.echo(str(output))


def _agreement(model: Path, settings: Any, trust_pickle: bool, metrics: tuple[str, ...] = ()):
    """Every metric's table of MODEL and their agreement with ablation."""
    from reuse_analysis.agreement import agreement_table
    from reuse_analysis.analysis import metric_tables

    names = [*(metrics or [m for m in METRICS if m != "ablation"]), "ablation"]
    tables = metric_tables(model, names, probe=settings, trust_pickle=trust_pickle)
    df = agreement_table(tables)
    df.attrs.update(
        {k: tables["ablation"].attrs.get(k) for k in ("dataset", "split", "images")},
        model=model.stem,
    )
    return df


@cli.command()
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
@concat_option
@trust_option
@handles_bad_input
def redundancy(model: Path, as_json: bool, concat_order: str, trust_pickle: bool) -> None:
    """How much of each transition layer's output the next block uses (MODEL).

    Per transition: weight on its outputs (row 0) against the other sources, the share
    of channels used less than a tenth as much as the median one, and the compression
    factor θ that keeps 90 % of the usage.
    """
    from reuse_analysis.analysis import analyze
    from reuse_analysis.report import model_report

    result = analyze(model, concat_order=concat_order, trust_pickle=trust_pickle)
    reds = model_report(result).redundancy()
    if as_json:
        payload = {
            "model": result.model_name,
            "structure": result.structure.summary(),
            "concat_order": concat_order,
            "transitions": [r.to_dict() for r in reds],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(f"{model}: {result.structure.summary()} (concat order {concat_order})")
    if not reds:
        click.echo("  no transition layer")
    for r in reds:
        theta = ""
        if r.theta_half_supported is not None:
            theta = f"; θ=0.5 {'supported' if r.theta_half_supported else 'not supported'}"
        click.echo(
            f"  transition after block {r.transition}: {r.channels} channels, θ={r.compression:g}, "
            f"row 0 / other sources {r.row0_vs_other:.2f}, weak channels "
            f"{100 * r.weak_share:.1f} %, 90 % of usage in {r.channels_for_90} channels → "
            f"suggested θ {r.suggested_theta:.2f}{theta}"
        )


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))


def _fractions(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        fractions = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(
            "give fractions as a comma-separated list, e.g. 0.25,0.5"
        ) from None
    if not fractions or any(not 0 <= f < 1 for f in fractions):
        raise click.BadParameter("fractions must lie in [0, 1)")
    return fractions


@cli.command()
@model_argument
@click.option(
    "--metrics",
    callback=_names,
    help="Metrics to compare with ablation, comma-separated (default: all of "
    "weight, bn-weight, activation, taylor).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Figure to write (.png, .pdf, .svg; default: reports/MODEL-agreement.png).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the agreement table as JSON.")
@probe_options
@trust_option
@handles_bad_input
def agreement(
    model: Path,
    metrics: tuple[str, ...],
    output: Path | None,
    as_json: bool,
    probe: dict[str, Any],
    trust_pickle: bool,
) -> None:
    """How well each metric ranks MODEL's connections the way cutting them does.

    Runs ablation (the exact loss increase when each connection alone is cut) on --images
    images and prints, per block, Spearman's ρ between each metric and ablation, over all
    blocks, and within target columns; plots the per-block values. Results are cached, so a
    rerun (or `report --agreement`) reuses them.
    """
    output = output or _default_output(model, "-agreement.png")
    _check_figure_path(output)
    unknown = [m for m in metrics if m not in METRICS or m == "ablation"]
    if unknown:
        fail(
            f"--metrics: unknown or reference metric {', '.join(unknown)}; choose from "
            + ", ".join(m for m in METRICS if m != "ablation")
        )
    from reuse_analysis.agreement import agreement_text
    from reuse_analysis.plotting import agreement_figure

    df = _agreement(model, _settings(probe), trust_pickle, metrics)
    a = df.attrs
    title = (
        f"{model.stem}: rank agreement with ablation\n({a['images']} {a['split']} images of "
        f"{a['dataset']})"
    )
    fig = agreement_figure(df, title=title)
    save_figure_atomic(fig, output)
    if as_json:
        payload = {
            "model": model.stem,
            "reference": "ablation",
            "data": {k: a[k] for k in ("dataset", "split", "images")},
            "concat_order": "oldest-first",
            "rows": json.loads(df.to_json(orient="records", double_precision=15)),
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(f"{' '.join(title.split())}; Spearman ρ (concat order oldest-first)")
        click.echo(agreement_text(df))
    _note(f"figure: {output}")


@cli.command()
@model_argument
@click.option(
    "--metric",
    type=click.Choice(list(METRICS)),
    default="weight",
    show_default=True,
    help="Rank connections by this metric (see `table --help`); cut the weakest.",
)
@click.option(
    "--fraction",
    type=click.FloatRange(0, 1, max_open=True),
    help="Fraction F of each target column's sources to cut (required unless --sweep).",
)
@click.option(
    "--scope",
    type=click.Choice(["column", "global"]),
    default="column",
    show_default=True,
    help="column: every target keeps its strongest ⌈(1−F)·n⌉ sources (at least one); "
    "global: the strongest (1−F) of all connections by raw value, at least one per target.",
)
@click.option(
    "--finetune-epochs",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Train the pruned model further, cut weights held at zero (resumable with --resume).",
)
@click.option(
    "--finetune-images",
    type=click.IntRange(1),
    help="Fine-tune on a fixed random subset of N training images (default: all).",
)
@click.option(
    "--finetune-lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True
)
@click.option("--resume", is_flag=True, help="Continue an interrupted fine-tuning run.")
@click.option(
    "--limit",
    type=click.IntRange(1),
    help="Measure accuracy on a fixed random subset of N test images (default: all).",
)
@click.option(
    "--sweep",
    "do_sweep",
    is_flag=True,
    help="Instead of one pruned model: accuracy (no fine-tuning) for every metric in "
    "--metrics at every fraction in --fractions, as a figure and a CSV.",
)
@click.option(
    "--metrics",
    callback=_names,
    default="weight,bn-weight,activation,taylor,ablation,random",
    show_default=True,
    help="Metrics the sweep compares ('random': the chance baseline).",
)
@click.option("--fractions", callback=_fractions, default="0.25,0.5,0.75,0.9", show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Pruned model to write (OUT.pt); with --sweep the figure (default: "
    "reports/MODEL-prune-sweep.png), its numbers beside it as .csv.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@probe_options
@trust_option
@handles_bad_input
def prune(
    model: Path,
    metric: str,
    fraction: float | None,
    scope: str,
    finetune_epochs: int,
    finetune_images: int | None,
    finetune_lr: float,
    resume: bool,
    limit: int | None,
    do_sweep: bool,
    metrics: tuple[str, ...],
    fractions: tuple[float, ...],
    output: Path | None,
    as_json: bool,
    probe: dict[str, Any],
    trust_pickle: bool,
) -> None:
    """Cut MODEL's weakest source→target connections and measure what it costs.

    Cutting s → t zeroes the input slice of target t's first conv (or the transition, or
    the classifier) that reads source s. Accuracy is measured on the test split before and
    after (and after --finetune-epochs, masks kept); the pruned model is saved with its
    config and the list of cut connections, and loads in every command.
    """
    if do_sweep:
        with interrupted_exits("interrupted: rerun the same command to continue the sweep"):
            _prune_sweep(
                model, metrics, fractions, scope, limit, output, as_json, probe, trust_pickle
            )
        return
    if fraction is None or output is None:
        fail("prune needs --fraction F and -o OUT.pt (or --sweep)")
    if output.suffix.lower() not in (".pt", ".pth"):
        fail(f"cannot write {output}: a pruned model is a checkpoint, use the .pt extension")
    from reuse_analysis.prune import prune_checkpoint

    with interrupted_exits(
        "interrupted: rerun the same command (with --resume while fine-tuning) to continue"
    ):
        record = prune_checkpoint(
            str(model),
            str(output),
            metric=metric,
            fraction=fraction,
            scope=scope,
            settings=_settings(probe),
            limit=limit,
            finetune_epochs=finetune_epochs,
            finetune_images=finetune_images,
            finetune_lr=finetune_lr,
            resume=resume,
            trust_pickle=trust_pickle,
        )
    summary = (
        f"cut {record['connections_cut']} of {record['connections']} connections "
        f"({100 * record['share_cut']:.1f} %; {100 * record['bottleneck_inputs_cut']:.1f} % of "
        f"the layers' first-conv input channels) by {metric} (concat order oldest-first); "
        "test accuracy on "
        f"{record['test']['images']} images: {100 * record['accuracy_before']:.2f} % → "
        f"{100 * record['accuracy_pruned']:.2f} %"
    )
    if finetune_epochs:
        summary += f" → {100 * record['accuracy_after']:.2f} % after fine-tuning"
    _note(summary)
    if as_json:
        click.echo(json.dumps({"model": str(output), **record}, indent=2))
    else:
        click.echo(str(output))


def _prune_sweep(model, metrics, fractions, scope, limit, output, as_json, probe, trust_pickle):
    output = output or _default_output(model, "-prune-sweep.png")
    _check_figure_path(output)
    from reuse_analysis._io import write_text_atomic
    from reuse_analysis.plotting import sweep_figure
    from reuse_analysis.prune import UNPRUNED, sweep

    df = sweep(
        str(model),
        metrics=list(metrics),
        fractions=list(fractions),
        scope=scope,
        settings=_settings(probe),
        limit=limit,
        trust_pickle=trust_pickle,
    )
    a = df.attrs
    base = df[df.metric == UNPRUNED]
    fig = sweep_figure(
        df[df.metric != UNPRUNED],
        baseline=float(base.accuracy.iloc[0]),
        title=f"{model.stem}: accuracy after cutting the weakest connections, no fine-tuning\n"
        f"{a['test_images']} test images; data-driven metrics on {a['probe_images']} "
        f"{a['probe_split']} images; scope {scope}; concat order oldest-first",
    )
    table = output.with_suffix(".csv")
    save_figure_atomic(fig, output)
    write_text_atomic(
        table,
        df.assign(test_images=a["test_images"], scope=scope).to_csv(
            index=False, float_format="%.6g"
        ),
    )
    if as_json:
        payload = {"model": model.stem, "scope": scope, **{k: a[k] for k in a if k != "model"}}
        payload["rows"] = json.loads(df.to_json(orient="records", double_precision=15))
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(str(output))
        click.echo(str(table))


@cli.command()
@model_argument
@click.option(
    "--command", "train_command", required=True, help="The exact command that trained MODEL."
)
@click.option("--notes", default="", help="Free text: how far the schedule was shortened, etc.")
@data_dir_option()
@device_option
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
    help="Card to write (default: MODEL with the extension .card.json).",
)  # fmt: skip
@handles_bad_input
def card(
    model: Path, train_command: str, notes: str, data_dir: str, device: str, output: Path | None
) -> None:
    """Write a model card (JSON) for a checkpoint made by `train`: config, data, epochs,
    accuracy on the whole test split, the command, hardware and wall time."""
    from reuse_analysis.modelcard import make_card, write_card

    output = output or model.with_suffix(".card.json")
    made = make_card(model, command=train_command, notes=notes, data_dir=data_dir, device=device)
    write_card(made, output)
    _note(f"test accuracy {100 * made['test_accuracy']:.2f} % on {made['test_images']} images")
    click.echo(str(output))


@contextlib.contextmanager
def interrupted_exits(note: str | None = None) -> Iterator[None]:
    """Stop long work on Ctrl-C or SIGTERM alike: the library saves its state on
    KeyboardInterrupt, then the process exits with status 130 and no traceback, after
    ``note`` (how to continue) on stderr.

    SIGTERM is what `kill`, job schedulers and container runtimes send; background jobs
    started from a script ignore SIGINT, so without this they could not stop cleanly.
    """

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    except KeyboardInterrupt:
        if note:
            _note(note)
        raise SystemExit(130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter("give epochs as a comma-separated list, e.g. 1,2,5,10") from None


@cli.command()
@click.option("--arch", required=True, help="Model name, e.g. densenet_bc_100 (see `models`).")
@click.option(
    "--dataset",
    required=True,
    help="cifar10, cifar100, svhn, mnist, fashion-mnist, npz:PATH or imagefolder:PATH.",
)
@data_dir_option()
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=300,
    show_default=True,
    help="Epochs to train (the paper: 300 on CIFAR, 40 on SVHN).",
)
@click.option(
    "--batch-size", type=click.IntRange(1), default=64, show_default=True, help="Per process."
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=0.1,
    show_default=True,
    help="Learning rate per batch of 64: the initial one of --schedule paper, the peak of "
    "onecycle and cosine.",
)
@click.option(
    "--schedule",
    type=click.Choice(["paper", "onecycle", "cosine"]),
    default="paper",
    show_default=True,
    help="paper: lr ÷10 at 50 % and 75 % of the epochs; cosine: half a cosine to 0 per "
    "step; onecycle: linear warm-up from lr/25 over 15 % of the steps, then cosine to 0.",
)
@click.option(
    "--label-smoothing",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Cross-entropy label smoothing (0.1 helps short schedules).",
)
@click.option(
    "--augment/--no-augment",
    default=True,
    show_default=True,
    help="Random crops (4-pixel padding) and flips; without it dropout 0.2 is used.",
)
@click.option(
    "--drop-rate",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Dropout after each conv but the first (default: 0 with augmentation, else 0.2); "
    "zoo models keep their own (0.5 in alexnet, vgg11, nin) unless this is given.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Model file to write (default: trained_models/ARCH_DATASET.pt); the training "
    "state goes beside it as .train.pt and the log as .log.csv.",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its .train.pt.")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
@click.option("--amp", is_flag=True, help="Mixed precision (fp16 on CUDA, bf16 on CPU).")
@click.option("--channels-last", is_flag=True, help="NHWC memory format (faster on most HW).")
@click.option(
    "--memory-efficient", is_flag=True, help="Recompute bottlenecks in backward to save memory."
)
@click.option(
    "--snapshot-epochs",
    callback=_int_list,
    help="Also keep a copy of the model after these epochs, e.g. 1,2,5,10.",
)
@click.option(
    "--limit-train", type=click.IntRange(1), help="Train on a fixed random subset of N images."
)
@click.option(
    "--limit-test",
    type=click.IntRange(1),
    help="Evaluate on a fixed random subset of N test images.",
)
@click.option(
    "--checkpoint-minutes",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Save the training state mid-epoch this often.",
)
@handles_bad_input
def train(**kwargs: Any) -> None:
    """Train a model with the paper's recipe (SGD, Nesterov 0.9, wd 1e-4, batch 64).

    Runs on several processes with `torchrun --nproc-per-node N -m reuse_analysis train …`.
    """
    from reuse_analysis.train import TrainConfig
    from reuse_analysis.train import train as run_training

    if kwargs["out"] is None:
        dataset = Path(kwargs["dataset"].split(":", 1)[-1]).stem.replace(".tar", "")
        kwargs["out"] = str(Path("trained_models") / f"{kwargs['arch']}_{dataset}.pt")
    cfg = TrainConfig(**kwargs)
    with interrupted_exits():
        summary = run_training(cfg)
    if summary.get("replicas_identical"):
        _note("all ranks ended with identical weights")
    if summary.get("test_acc") is not None:
        _note(
            f"done: {summary['epochs']} epochs, test accuracy {100 * summary['test_acc']:.2f} % "
            f"(error {100 * (1 - summary['test_acc']):.2f} %), "
            f"{summary['seconds'] / 60:.1f} min of training"
        )
        click.echo(summary["out"])


@cli.command()
@model_argument
@click.option(
    "--dataset", help="Data set to evaluate on (default: the one recorded in the checkpoint)."
)
@data_dir_option()
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option(
    "--limit", type=click.IntRange(1), help="Evaluate on a fixed random subset of N test images."
)
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@normalisation_options[0]
@normalisation_options[1]
@trust_option
@handles_bad_input
def evaluate(
    model: Path,
    dataset: str | None,
    data_dir: str,
    batch_size: int,
    limit: int | None,
    device: str,
    as_json: bool,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    trust_pickle: bool,
) -> None:
    """Print MODEL's top-1 accuracy and loss on a data set's test split.

    A checkpoint not written by `train` is rebuilt from its own tensors; a batch-norm
    check on the data refuses a rebuild or an input normalisation that does not fit.
    """
    from reuse_analysis.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(
        model,
        dataset=dataset,
        data_dir=data_dir,
        batch_size=batch_size,
        limit=limit,
        device=device,
        trust_pickle=trust_pickle,
        mean=mean,
        std=std,
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(
            f"{model}: top-1 accuracy {100 * result['accuracy']:.2f} % "
            f"(error {100 * (1 - result['accuracy']):.2f} %), loss {result['loss']:.4f} "
            f"on {result['images']} images of {result['dataset']}"
        )


@cli.command()
@click.option(
    "--arch",
    "archs",
    multiple=True,
    required=True,
    help="An architecture to compare (repeat the option), e.g. --arch resnet18 "
    "--arch densenet_bc_100 --arch d2l_densenet.",
)
@click.option(
    "--dataset",
    required=True,
    help="cifar10, fashion-mnist, npz:PATH, imagefolder:PATH … (as for train).",
)
@data_dir_option()
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=0.1,
    show_default=True,
    help="Initial learning rate for every architecture; ÷10 at 50 % and 75 % of the epochs.",
)
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option(
    "--limit-train",
    type=click.IntRange(1),
    help="Train every architecture on the same fixed random subset of N images.",
)
@click.option(
    "--limit-test", type=click.IntRange(1), help="Evaluate on a fixed random subset of N images."
)
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
@click.option(
    "--measure-steps",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Timed training and inference steps per architecture and round.",
)
@click.option(
    "--measure-rounds",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Rounds of speed measurements, architectures in alternating order; the fastest "
    "step counts (other processes only slow steps down).",
)
@click.option(
    "--work-dir",
    default="trained_models/compare",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where each architecture's checkpoint goes; a rerun of the same command reuses "
    "finished ones and resumes the one that was interrupted.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Table to write, .md or .csv; the figure goes beside it as .png "
    "(default: reports/compare-DATASET.md).",
)
@handles_bad_input
def compare(archs: tuple[str, ...], output: Path | None, **kwargs: Any) -> None:
    """Compare architectures on one data set: parameters, FLOPs, peak training memory,
    training and inference images/s, and accuracy after the same training budget.

    Everything runs in one go on this machine; progress goes to stderr, the paths of the
    table and the figure to stdout.
    """
    if output is None:
        dataset = Path(kwargs["dataset"].split(":", 1)[-1]).stem.replace(".tar", "")
        output = DEFAULT_REPORTS / f"compare-{dataset}.md"
    if output.suffix.lower() not in (".md", ".csv"):
        fail(f"cannot write {output}: use .md or .csv as the extension")
    from reuse_analysis.compare import CompareConfig, write_outputs
    from reuse_analysis.compare import compare as run_compare

    cfg = CompareConfig(archs=archs, **kwargs)
    # Training reports each epoch on stdout; here stdout is for the output paths.
    resume = "interrupted: rerun the same command to resume"
    with interrupted_exits(resume), contextlib.redirect_stdout(sys.stderr):
        df = run_compare(cfg, log=_note)
    table, figure = write_outputs(df, output)
    click.echo(str(table))
    click.echo(str(figure))


def main() -> None:
    """Console-script entry point.

    Ends the process with ``os._exit`` once the command has returned: every output is
    already written, renamed into place and closed, and tearing down torch, pandas and
    matplotlib module by module would take longer than the analysis of most models.
    """
    try:
        cli.main(prog_name="reuse-analysis")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
