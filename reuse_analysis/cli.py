"""The ``reuse-analysis`` command line: parse, call the library, print.

Every argument is checked while click parses, a missing MODEL file included, before a
command imports torch, pandas or matplotlib; then the command calls the library and prints
what it returned: paths and ``--json`` on stdout, notes on stderr. The shared options live
in :mod:`reuse_analysis.options`, the printed text and JSON in :mod:`reuse_analysis.text`,
the commands that chain several library steps in :mod:`reuse_analysis.workflows`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from reuse_analysis import __version__, text
from reuse_analysis._io import save_figure_atomic
from reuse_analysis.options import (
    DEFAULT_REPORTS,
    arch_option,
    batch_size_option,
    compared_metrics,
    concat_option,
    cut_options,
    data_dir_option,
    dataset_option,
    dataset_stem,
    device_option,
    fail,
    handles_bad_input,
    heatmap_options,
    input_size_option,
    int_list,
    interrupted_exits,
    json_option,
    measure_options,
    metric_option,
    model_argument,
    models_argument,
    normalisation_options,
    output_option,
    probe_options,
    recipe_options,
    speed_options,
    test_images_option,
    training_options,
    trust_option,
)
from reuse_analysis.options import check_exists as _check_exists
from reuse_analysis.options import check_figure_path as _check_figure_path
from reuse_analysis.options import default_output as _default_output
from reuse_analysis.text import measured as _measured

#: What ``table -o`` writes: CSV or JSON (no extension: the --format's text).
TABLE_SUFFIXES = (".csv", ".json", "")


def _settings(probe: dict[str, Any]) -> Any:
    from reuse_analysis.probes import ProbeSettings

    return ProbeSettings(**probe)


def _note(message: str) -> None:
    click.echo(message, err=True)


def _notes(result: Any) -> None:
    """After the output is written: what inference could not make sense of, a concat order
    the weights contradict, and weights that look untrained (nothing is left out silently;
    printed last, so that a command that fails prints its one ``Error:`` line only)."""
    for note in result.structure.notes:
        _note(f"note: {note}")
    if result.state_dict is not None and hasattr(result.structure, "blocks"):
        from reuse_analysis.nulls import checkpoint_warnings

        attrs = result.table.attrs
        for line in checkpoint_warnings(result.state_dict, result.structure, attrs):
            _note(f"warning: {line}")


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
        result = analyze(
            model,
            concat_order=concat_order,
            trust_pickle=trust_pickle,
            metric=metric,
            probe=settings,
        )
        return result
    if metric != "weight":
        fail(
            f"--metric {metric} runs a DenseNet found by its weight names; the traced "
            "analysis (--arch) reads weights only: drop --arch, or use --metric weight"
        )
    from reuse_analysis.traced import analyze_traced

    return analyze_traced(model, arch, input_size=input_size, trust_pickle=trust_pickle)


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
@heatmap_options
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
    cmap: str | None,
    style: str,
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

    if cmap is not None and cmap not in matplotlib.colormaps:
        fail(f"unknown colour map {cmap!r}; try viridis, magma or jet")

    from reuse_analysis.plotting import plot_reuse_heatmap

    result = _analyze(model, arch, input_size, concat_order, trust_pickle, metric, probe)
    fig = plot_reuse_heatmap(
        result.table, normalize=normalize, cmap=cmap, style=style, title=title, annotate=annotate
    )
    save_figure_atomic(fig, output, dpi)
    order = text.order_text(result.table.attrs)
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
@json_option("the table with its metadata (the same as --format json)")
@output_option("File to write (default: standard output).")
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
    as_json: bool,
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
    if output is not None and output.suffix.lower() not in TABLE_SUFFIXES:
        fail(f"{output}: unknown table extension {output.suffix!r}; use .csv or .json")
    if as_json and fmt == "csv":
        fail("--json and --format csv contradict each other; give one of them")
    if as_json or (fmt is None and output is not None and output.suffix.lower() == ".json"):
        fmt = "json"
    result = _analyze(model, arch, input_size, concat_order, trust_pickle, metric, probe)
    rendered = _table_text(result, fmt or "csv")
    if output is None:
        click.echo(rendered, nl=False)
    else:
        from reuse_analysis._io import write_text_atomic

        write_text_atomic(output, rendered)
        click.echo(str(output))
    order = text.order_text(result.table.attrs)
    _note(f"{result.structure.summary()}; concat order {order}; {_measured(result)}")
    _notes(result)


def _table_text(result: Any, fmt: str) -> str:
    return result.to_csv() if fmt == "csv" else result.to_json()


@cli.command()
@model_argument
@json_option("the structure")
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
        traced = text.traced_payload(model, arch, result.structure)
        click.echo(text.to_json(traced) if as_json else text.traced_text(traced))
        return
    from reuse_analysis.analysis import load_structure
    from reuse_analysis.concat_order import detect_concat_order

    state_dict, structure, checkpoint = load_structure(model, trust_pickle=trust_pickle)
    order = detect_concat_order(state_dict, structure)
    described = text.info_payload(model, structure, checkpoint, order)
    click.echo(text.to_json(described) if as_json else text.info_text(described))


@cli.command()
@json_option("the list, with each model's full config")
def models(as_json: bool) -> None:
    """List the models `train --arch` and `compare --arch` build: the paper's DenseNets and
    the textbook's CNNs, with parameters (at the default classes) and default input size."""
    from reuse_analysis.models.catalog import catalog

    entries = [entry.to_dict() for entry in catalog()]
    click.echo(text.to_json(entries) if as_json else text.models_text(entries))


@cli.command()
@models_argument
@output_option("PDF to write (default: reports/MODEL-report.pdf, after the first model).")
@concat_option
@metric_option
@click.option(
    "--agreement",
    is_flag=True,
    help="Add a page on how well each metric agrees with ablation (runs the data-driven "
    "metrics on --images images, or reuses their cached results).",
)
@click.option(
    "--sweep",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_check_exists,
    help="Add the pruning sweep of the first MODEL from the CSV that `prune --sweep` wrote.",
)
@probe_options
@trust_option
@handles_bad_input
def report(
    models: tuple[Path, ...], output: Path | None, probe: dict[str, Any], **kwargs: Any
) -> None:
    """Write a PDF report on one or more MODELS: heatmap, the paper's four observations
    tested with numbers, transition redundancy, classifier focus and the full table.

    With several models it adds difference heatmaps against the first (e.g. two seeds,
    or epoch 10 against epoch 300) and their statistics side by side.
    """
    output = output or _default_output(models[0], "-report.pdf")
    if output.suffix.lower() != ".pdf":
        fail(f"cannot write {output}: a report is a PDF, use the .pdf extension")
    from reuse_analysis.workflows import write_model_report

    reports = write_model_report(models, output, probe=_settings(probe), **kwargs)
    for rep in reports:
        for line in rep.warnings:
            _note(f"warning: {rep.name}: {line}")
    order = text.order_text(reports[0].table.attrs)
    _note(f"{len(reports)} model(s); concat order {order}; {_measured(reports[0])}")
    click.echo(str(output))


@cli.command()
@model_argument
@json_option("the analysis")
@concat_option
@click.option(
    "--dataset",
    help="Also measure the PCA dimensionality of each transition's outputs on this data "
    "set's training images (runs the model and five fresh copies of it).",
)
@data_dir_option()
@click.option(
    "--images",
    type=click.IntRange(2),
    default=256,
    show_default=True,
    help="Training images the PCA of --dataset runs on.",
)
@trust_option
@handles_bad_input
def redundancy(
    model: Path,
    as_json: bool,
    concat_order: str,
    dataset: str | None,
    data_dir: str,
    images: int,
    trust_pickle: bool,
) -> None:
    """How many directions of each transition's output the next block reads (MODEL).

    Per transition: the fraction of singular directions holding 90 % of the energy of the
    next block's weights on the transition's output, and of the transition conv's own
    weight, each next to a freshly initialised network of the same shapes; the compression
    θ' this suggests, or none when the weights are no lower-rank than untrained ones.
    """
    result = _analyze(model, None, None, concat_order, trust_pickle)
    reds = result.redundancy()
    pca = {}
    if dataset is not None:
        from reuse_analysis.redundancy import activation_redundancy

        found = activation_redundancy(
            result.state_dict, result.structure, result.checkpoint, dataset, data_dir, images
        )
        pca = {a.transition: a for a in found}
    attrs = result.table.attrs
    if as_json:
        order = text.order_payload(attrs)
        summary = result.structure.summary()
        click.echo(text.redundancy_json(result.model_name, summary, order, reds, pca))
        return _notes(result)
    summary = result.structure.summary()
    for line in text.redundancy_lines(str(model), summary, text.order_text(attrs), reds, pca):
        click.echo(line)
    _notes(result)


@cli.command("observations")
@model_argument
@json_option("the verdicts")
@concat_option
@trust_option
@handles_bad_input
def observations_command(model: Path, as_json: bool, concat_order: str, trust_pickle: bool) -> None:
    """The paper's four observations on MODEL, per block, with a bootstrap interval, next to
    the same architecture freshly initialised and to its weights with shuffled input
    channels (20 seeds each). A verdict holds only beyond both at p ≤ 0.05."""
    from reuse_analysis.observations import observations_payload

    result = _analyze(model, None, None, concat_order, trust_pickle)
    obs = result.observations()
    attrs = result.table.attrs
    if as_json:
        payload = {
            "model": result.model_name,
            **observations_payload(obs, text.order_payload(attrs)),
        }
        click.echo(json.dumps(payload, indent=2))
        return _notes(result)
    click.echo(f"{model}: {result.structure.summary()} (concat order {text.order_text(attrs)})")
    for o in obs:
        click.echo(f"Observation {o.number}: {o.verdict} — {o.claim}")
        click.echo(f"  {o.detail}")
    _notes(result)


@cli.command()
@model_argument
@click.option(
    "--metrics",
    callback=compared_metrics,
    help="Metrics to compare with ablation, comma-separated (default: all of "
    "weight, bn-weight, activation, taylor).",
)
@output_option("Figure to write (.png, .pdf, .svg; default: reports/MODEL-agreement.png).")
@json_option("the agreement table")
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
    from reuse_analysis.agreement import agreement_text
    from reuse_analysis.plotting import agreement_figure
    from reuse_analysis.workflows import metric_agreement

    df = metric_agreement(model, metrics=metrics, probe=_settings(probe), trust_pickle=trust_pickle)
    title = text.agreement_title(df)
    save_figure_atomic(agreement_figure(df, title=title), output)
    if as_json:
        click.echo(text.to_json(text.agreement_payload(df)))
    else:
        order = text.order_text({"concat_order": "oldest-first", **df.attrs})
        click.echo(f"{' '.join(title.split())}; Spearman ρ (concat order {order})")
        click.echo(agreement_text(df))
    _note(f"figure: {output}")


@cli.command()
@model_argument
@cut_options
@output_option(
    "Pruned model to write (OUT.pt); with --sweep the figure (default: "
    "reports/MODEL-prune-sweep.png), its numbers beside it as .csv."
)
@json_option()
@probe_options
@trust_option
@handles_bad_input
def prune(
    model: Path,
    do_sweep: bool,
    metrics: tuple[str, ...],
    fractions: tuple[float, ...],
    output: Path | None,
    as_json: bool,
    probe: dict[str, Any],
    seeds: int | None,
    **cut: Any,
) -> None:
    """Cut MODEL's weakest source→target connections and measure what it costs.

    Cutting s → t zeroes the input slice of target t's first conv (or the transition, or
    the classifier) that reads source s. Accuracy is measured on the test split before and
    after (and after --finetune-epochs, masks kept); the pruned model is saved with its
    config and the list of cut connections, and loads in every command.
    """
    limit, trust_pickle = cut.pop("limit_test"), cut.pop("trust_pickle")
    if do_sweep:
        output = output or _default_output(model, "-prune-sweep.png")
        _check_figure_path(output)
        from reuse_analysis.prune import DEFAULT_SEEDS, sweep, sweep_summary
        from reuse_analysis.workflows import write_sweep_outputs

        with interrupted_exits("interrupted: rerun the same command to continue the sweep"):
            df = sweep(
                str(model),
                metrics=list(metrics),
                fractions=list(fractions),
                scope=cut["scope"],
                settings=_settings(probe),
                limit=limit,
                trust_pickle=trust_pickle,
                seeds=DEFAULT_SEEDS if seeds is None else seeds,
            )
            figure, csv = write_sweep_outputs(df, output)
        summary = sweep_summary(df)
        for line in text.sweep_lines(summary):
            _note(line)
        click.echo(text.to_json(text.sweep_payload(df, summary)) if as_json else f"{figure}\n{csv}")
        return
    if seeds is not None:
        fail("--seeds applies to --sweep (the random baseline's seeds)")
    if cut["fraction"] is None or output is None:
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
            settings=_settings(probe),
            limit=limit,
            trust_pickle=trust_pickle,
            **cut,
        )
    _note(text.prune_summary(record, cut["metric"]))
    click.echo(text.to_json({"model": str(output), **record}) if as_json else str(output))


@cli.command()
@model_argument
@click.option(
    "--command", "train_command", required=True, help="The exact command that trained MODEL."
)
@click.option("--notes", default="", help="Free text: how far the schedule was shortened, etc.")
@data_dir_option()
@device_option
@output_option("Card to write (default: MODEL with the extension .card.json).")
@json_option("the card (it is written to the file as well)")
@handles_bad_input
def card(model: Path, train_command: str, output: Path | None, as_json: bool, **kw: Any) -> None:
    """Write a model card (JSON) for a checkpoint made by `train`: config, data, epochs,
    accuracy on the whole test split, the command, hardware and wall time."""
    from reuse_analysis.modelcard import make_card, write_card

    output = output or model.with_suffix(".card.json")
    made = make_card(model, command=train_command, **kw)
    write_card(made, output)
    _note(text.card_line(made))
    click.echo(text.to_json(made) if as_json else str(output))


@cli.command()
@click.option("--arch", required=True, help="Model name, e.g. densenet_bc_100 (see `models`).")
@training_options(
    epochs=300,
    lr_help="Learning rate per batch of 64: the initial one of --schedule paper, the peak of "
    "onecycle and cosine.",
)
@recipe_options
@output_option(
    "Model file to write (default: trained_models/ARCH_DATASET.pt); the training state "
    "goes beside it as .train.pt and the log as .log.csv.",
    old=("--out",),
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its .train.pt.")
@click.option(
    "--snapshot-epochs",
    callback=int_list,
    help="Also keep a copy of the model after these epochs, e.g. 1,2,5,10.",
)
@speed_options
@json_option("the summary (model file, epochs, test accuracy, seconds)")
@handles_bad_input
def train(output: Path | None, as_json: bool, **kwargs: Any) -> None:
    """Train a model with the paper's recipe (SGD, Nesterov 0.9, wd 1e-4, batch 64).

    Runs on several processes with `torchrun --nproc-per-node N -m reuse_analysis train …`.
    """
    from reuse_analysis.train import TrainConfig
    from reuse_analysis.train import train as run_training

    default = Path("trained_models") / f"{kwargs['arch']}_{dataset_stem(kwargs['dataset'])}.pt"
    cfg = TrainConfig(out=str(output or default), **kwargs)
    with interrupted_exits():
        summary = run_training(cfg)
    if summary.get("replicas_identical"):
        _note("all ranks ended with identical weights")
    if summary.get("test_acc") is not None:  # the main process only
        _note(text.training_line(summary))
        click.echo(text.to_json(summary) if as_json else summary["out"])


@cli.command()
@click.argument("log", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@output_option("Figure to write (.png, .pdf or .svg; default: reports/RUN-dynamics.png).")
@click.option(
    "--arch",
    help="The architecture the run trained (a name from `models`), for the untrained "
    "reference; default: read from NAME.pt or NAME.train.pt beside the log, else the log's "
    "arch column.",
)
@json_option("the statistics per epoch and the untrained reference")
@handles_bad_input
def dynamics(log: Path, output: Path | None, arch: str | None, as_json: bool) -> None:
    """When does the paper's pattern appear? LOG is a run's NAME.reuse.csv (`train` writes
    it for DenseNets): per epoch the correlation with Figure 5 (DenseNet-40), observation
    3's row-0 share and observation 4's classifier focus, each next to a band of what 20
    untrained networks of the run's architecture give (epoch 0, the run's initialisation,
    is one of those)."""
    from reuse_analysis.workflows import write_dynamics

    output = output or _default_output(log.with_suffix("").with_suffix(""), "-dynamics.png")
    _check_figure_path(output)
    table, reference, found = write_dynamics(log, output, arch=arch)
    _note(f"untrained reference: {reference.attrs['seeds']} seeds of {found.describe()}")
    payload = text.dynamics_payload(str(log), table, reference, found)
    click.echo(text.to_json(payload) if as_json else str(output))


@cli.command()
@model_argument
@dataset_option("Data set to evaluate on (default: the one recorded in the checkpoint).")
@data_dir_option()
@batch_size_option(256, "Images per forward pass (bounds memory).")
@test_images_option(
    "Evaluate on a fixed random subset of N test images (default: all).", old=("--limit",)
)
@device_option
@json_option()
@normalisation_options
@trust_option
@handles_bad_input
def evaluate(model: Path, limit_test: int | None, as_json: bool, **kwargs: Any) -> None:
    """Print MODEL's top-1 accuracy and loss on a data set's test split.

    A checkpoint not written by `train` is rebuilt from its own tensors; a batch-norm check
    on the data refuses a rebuild or an input normalisation that does not fit.
    """
    from reuse_analysis.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(model, limit=limit_test, **kwargs)
    click.echo(text.to_json(result) if as_json else text.evaluation_line(model, result))


@cli.command()
@click.option(
    "--arch",
    "archs",
    multiple=True,
    required=True,
    help="An architecture to compare (repeat the option), e.g. --arch resnet18 "
    "--arch densenet_bc_100 --arch d2l_densenet (see `models`).",
)
@training_options(
    epochs=3,
    lr_help="Initial learning rate for every architecture; ÷10 at 50 % and 75 % of the epochs.",
)
@measure_options
@click.option(
    "--work-dir",
    default="trained_models/compare",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where each architecture's checkpoint goes; a rerun of the same command reuses "
    "finished ones and resumes the one that was interrupted.",
)
@output_option(
    "Table to write, .md or .csv; the figure goes beside it as .png "
    "(default: reports/compare-DATASET.md)."
)
@json_option("the table (after writing it and the figure)")
@handles_bad_input
def compare(archs: tuple[str, ...], output: Path | None, as_json: bool, **kwargs: Any) -> None:
    """Compare architectures on one data set: parameters, FLOPs, peak training memory,
    training and inference images/s, and accuracy after the same training budget.

    Everything runs in one go on this machine; progress goes to stderr, the paths of the
    table and the figure to stdout.
    """
    output = output or DEFAULT_REPORTS / f"compare-{dataset_stem(kwargs['dataset'])}.md"
    if output.suffix.lower() not in (".md", ".csv"):
        fail(f"cannot write {output}: use .md or .csv as the extension")
    from reuse_analysis.compare import CompareConfig, write_outputs
    from reuse_analysis.compare import compare as run_compare

    cfg = CompareConfig(archs=archs, **kwargs)
    # Training reports each epoch on stdout; here stdout is for the output paths.
    resume = "interrupted: rerun the same command to resume"
    with interrupted_exits(resume), contextlib.redirect_stdout(sys.stderr):
        df = run_compare(cfg, log=_note)
    table_path, figure = write_outputs(df, output)
    payload = text.compare_payload(df, table_path, figure)
    click.echo(text.to_json(payload) if as_json else f"{table_path}\n{figure}")


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
