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

CONCAT_HELP = (
    "How each layer concatenates its inputs: oldest-first is [x0, x1, …] (torchvision, "
    "most code); newest-first is torch.cat([new, old]) (e.g. kuangliu/pytorch-cifar). "
    "A weight file cannot tell which; every output states the order used."
)
HEATMAP_FORMATS = (".png", ".pdf", ".svg")
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


def _analyze(
    model: Path, arch: str | None, input_size: int | None, concat_order: str, trust_pickle: bool
) -> Any:
    """The weight-name analysis, or the traced one when ``--arch`` names the network."""
    if arch is None:
        if input_size is not None:
            fail("--input-size applies to --arch only")
        from reuse_analysis.analysis import analyze

        return analyze(model, concat_order=concat_order, trust_pickle=trust_pickle)
    from reuse_analysis.traced import analyze_traced

    return analyze_traced(model, arch, input_size=input_size, trust_pickle=trust_pickle)


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
    "Default: reports/MODEL-heatmap.png.",
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
    trust_pickle: bool,
) -> None:
    """Draw the paper's Figure 5 for MODEL: one panel per dense block."""
    output = output or _default_output(model, "-heatmap.png")
    if output.suffix.lower() not in HEATMAP_FORMATS:
        fail(f"cannot write {output}: use one of {', '.join(HEATMAP_FORMATS)} as the extension")
    import matplotlib

    if cmap not in matplotlib.colormaps:
        fail(f"unknown colour map {cmap!r}; try viridis, magma or jet")

    from reuse_analysis._io import atomic_path
    from reuse_analysis.plotting import plot_reuse_heatmap

    result = _analyze(model, arch, input_size, concat_order, trust_pickle)
    fig = plot_reuse_heatmap(
        result.table, normalize=normalize, cmap=cmap, title=title, annotate=annotate
    )
    with atomic_path(output) as tmp:
        fmt = output.suffix[1:].lower()
        # Fast zlib level for PNG: the large flat areas compress well anyway.
        extra = {"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}
        fig.savefig(tmp, dpi=dpi, format=fmt, **extra)
    _note(f"{result.structure.summary()}; concat order {result.table.attrs['concat_order']}")
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
@trust_option
@handles_bad_input
def table(
    model: Path,
    fmt: str | None,
    output: Path | None,
    concat_order: str,
    arch: str | None,
    input_size: int | None,
    trust_pickle: bool,
) -> None:
    """Print the reuse matrix of MODEL, one row per (block, source, target).

    Columns: block, source, target, target_kind, mean_abs_weight, normalized. Source 0
    is the block input; target L+1 is the transition (or classifier) after the block.
    """
    if fmt is None:
        fmt = "json" if output is not None and output.suffix.lower() == ".json" else "csv"
    result = _analyze(model, arch, input_size, concat_order, trust_pickle)
    text = _table_text(result, fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        from reuse_analysis._io import write_text_atomic

        write_text_atomic(output, text)
        click.echo(str(output))
    order = result.table.attrs["concat_order"]
    _note(f"{result.structure.summary()}; concat order {order}" + " (assumed)" * (arch is None))
    _notes(result)


def _table_text(result: Any, fmt: str) -> str:
    df = result.table
    if fmt == "csv":
        return df.to_csv(index=False, float_format="%.9g", lineterminator="\n")
    payload = {
        "model": result.model_name,
        "structure": df.attrs["structure"],
        "concat_order": df.attrs["concat_order"],
        "metric": df.attrs["metric"],
        **({"layout": df.attrs["layout"]} if "layout" in df.attrs else {}),
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
            lines.append(
                f"      classifier {extra['name']}: {extra['in_features']} features → "
                f"{extra['num_classes']} classes"
            )
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
@trust_option
@handles_bad_input
def report(
    models: tuple[Path, ...], output: Path | None, concat_order: str, trust_pickle: bool
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

    results = [analyze(m, concat_order=concat_order, trust_pickle=trust_pickle) for m in models]
    names = [r.model_name for r in results]
    for i, r in enumerate(results):
        if names.count(r.model_name) > 1:
            r.model_name = f"{r.model_name} ({models[i]})"
            r.table.attrs["model"] = r.model_name
    write_report([model_report(r) for r in results], output)
    _note(f"{len(results)} model(s); concat order {concat_order}")
    click.echo(str(output))


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


@cli.command()
@model_argument
@click.option(
    "--command", "train_command", required=True, help="The exact command that trained MODEL."
)
@click.option("--notes", default="", help="Free text: how far the schedule was shortened, etc.")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True
)
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
def interrupted_exits() -> Iterator[None]:
    """Stop long work on Ctrl-C or SIGTERM alike: the library saves its state on
    KeyboardInterrupt, then the process exits with status 130 and no traceback.

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
@click.option(
    "--data-dir",
    default="data",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where data sets are downloaded, extracted and cached.",
)
@click.option("--epochs", type=click.IntRange(1), default=300, show_default=True)
@click.option(
    "--batch-size", type=click.IntRange(1), default=64, show_default=True, help="Per process."
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=0.1,
    show_default=True,
    help="Initial learning rate; divided by 10 at 50 % and 75 % of the epochs.",
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
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    show_default=True,
)
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
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False))
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option(
    "--limit", type=click.IntRange(1), help="Evaluate on a fixed random subset of N test images."
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default="auto",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
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
    trust_pickle: bool,
) -> None:
    """Print MODEL's top-1 accuracy and loss on a data set's test split."""
    from reuse_analysis.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(
        model,
        dataset=dataset,
        data_dir=data_dir,
        batch_size=batch_size,
        limit=limit,
        device=device,
        trust_pickle=trust_pickle,
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
@click.option(
    "--data-dir",
    default="data",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where data sets are cached.",
)
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
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True
)
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
    import contextlib

    from reuse_analysis.compare import CompareConfig, write_outputs
    from reuse_analysis.compare import compare as run_compare

    cfg = CompareConfig(archs=archs, **kwargs)
    try:
        # Training reports each epoch on stdout; here stdout is for the output paths.
        with contextlib.redirect_stdout(sys.stderr):
            df = run_compare(cfg, log=_note)
    except KeyboardInterrupt:
        _note("interrupted: rerun the same command to resume")
        raise SystemExit(130) from None
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
