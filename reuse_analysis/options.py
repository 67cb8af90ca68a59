"""The command line's shared parts: options spelled one way in every command, the checks
that run while click parses, and how bad input and interrupts end the process.

Nothing here imports torch, pandas or matplotlib: every argument, a missing MODEL file
included, is checked before a command imports the library, so a typo is answered at once.

Concepts and their one spelling: ``-o/--output`` for every file a command writes,
``--json`` for machine-readable output on stdout, ``--images`` for the images a
data-driven metric runs on, ``--test-images`` / ``--train-images`` for subsets of the test
and training splits. Renamed options keep their old spelling for one release as a hidden
alias (:func:`option` with ``old=``).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from reuse_analysis._io import FIGURE_FORMATS
from reuse_analysis.tables import METRICS

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

#: Where figures, reports and tables go when -o is not given.
DEFAULT_REPORTS = Path("reports")


# ----------------------------------------------------------------------------- errors
class InputError(click.ClickException):
    """Bad input: one ``Error:`` line on stderr and exit status 2."""

    exit_code = 2


def fail(message: str) -> NoReturn:
    """End the command with ``Error: message`` and exit status 2."""
    raise InputError(message)


def handles_bad_input(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's input errors into ``Error: …`` lines with exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from reuse_analysis.errors import ReuseAnalysisError

        try:
            return func(*args, **kwargs)
        except ReuseAnalysisError as exc:
            fail(_one_line(str(exc)))
        except OSError as exc:
            fail(_one_line(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")))

    return wrapper


def _one_line(message: str) -> str:
    """The message with newlines and other unprintable characters escaped (a file name
    may hold them), so that it stays one ``Error:`` line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


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
            click.echo(note, err=True)
        raise SystemExit(130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- aliases
class AliasedOption(click.Option):
    """An option whose old spellings still parse but no longer appear in ``--help``.

    The old names are registered with the parser under the option's own destination, so
    either spelling sets the same value (the last one given wins, as with any repeat).
    """

    def __init__(self, *args: Any, old_names: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if old_names and self.is_flag:
            raise TypeError("old spellings are supported for options that take a value")
        self.old_names = tuple(old_names)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        if self.old_names:
            action = "append" if self.multiple else "store"
            parser.add_option(
                obj=self, opts=self.old_names, dest=self.name, action=action, nargs=self.nargs
            )


def stacked(options: Sequence[Decorator]) -> Decorator:
    """One decorator that adds ``options`` in the order listed (as ``--help`` shows them)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for add in reversed(options):
            func = add(func)
        return func

    return decorate


def option(*decls: str, old: Sequence[str] = (), **kwargs: Any) -> Decorator:
    """``click.option`` with hidden old spellings (``old=("--out",)``)."""
    return click.option(*decls, cls=AliasedOption, old_names=tuple(old), **kwargs)


# ----------------------------------------------------------------------------- checks
def check_exists(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Callback: every path given must exist (checked while parsing, before any import)."""
    if ctx.resilient_parsing or value is None:
        return value
    for path in value if isinstance(value, tuple) else (value,):
        if not Path(path).exists():
            fail(f"{path}: no such file; check the path")
    return value


def check_dataset(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Callback: the file or folder of ``npz:PATH`` / ``imagefolder:PATH`` must exist."""
    kind, _, arg = (value or "").partition(":")
    given = not ctx.resilient_parsing and kind in ("npz", "imagefolder") and arg
    if given and not Path(arg).expanduser().exists():
        fail(f"{arg}: no such file or folder (from --dataset {value}); check the path")
    return value


def check_figure_path(output: Path) -> None:
    """Refuse an output whose extension matplotlib would not write."""
    if output.suffix.lower() not in FIGURE_FORMATS:
        fail(f"cannot write {output}: use one of {', '.join(FIGURE_FORMATS)} as the extension")


def default_output(model: Path, suffix: str) -> Path:
    """``reports/MODEL<suffix>``: where a command writes when -o is not given."""
    return DEFAULT_REPORTS / f"{model.stem}{suffix}"


def dataset_stem(dataset: str) -> str:
    """``cifar10`` → ``cifar10``, ``npz:data/tiny.npz`` → ``tiny``: a data set in file names."""
    return Path(dataset.split(":", 1)[-1]).stem.replace(".tar", "")


def int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    """Callback: ``1,2,5,10`` → ``(1, 2, 5, 10)``, sorted and without repeats."""
    if not value:
        return ()
    try:
        return tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter("give epochs as a comma-separated list, e.g. 1,2,5,10") from None


def name_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    """Callback: ``a,b,a`` → ``("a", "b")``, in the order given."""
    if not value:
        return ()
    return tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))


def compared_metrics(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, ...]:
    """Callback: :func:`name_list` of metrics to compare with ablation (not ablation itself)."""
    names = name_list(ctx, param, value)
    unknown = [m for m in names if m not in METRICS or m == "ablation"]
    if unknown:
        fail(
            f"--metrics: unknown or reference metric {', '.join(unknown)}; choose from "
            + ", ".join(m for m in METRICS if m != "ablation")
        )
    return names


def fraction_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    """Callback: ``0.25,0.5`` → ``(0.25, 0.5)``, each in [0, 1)."""
    try:
        fractions = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(
            "give fractions as a comma-separated list, e.g. 0.25,0.5"
        ) from None
    if not fractions or any(not 0 <= f < 1 for f in fractions):
        raise click.BadParameter("fractions must lie in [0, 1)")
    return fractions


def float_list(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[float, ...] | None:
    """Callback: ``0.5,0.5,0.5`` → ``(0.5, 0.5, 0.5)``; None when not given."""
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        fail(f"--{param.name} takes numbers separated by commas, e.g. 0.5,0.5,0.5, not {value!r}")


# ----------------------------------------------------------------------------- options
model_argument = click.argument(
    "model", type=click.Path(dir_okay=True, path_type=Path), callback=check_exists
)
models_argument = click.argument(
    "models", nargs=-1, required=True, type=click.Path(path_type=Path), callback=check_exists
)


def output_option(help: str, *, old: Sequence[str] = ()) -> Decorator:
    """``-o/--output FILE``: the file the command writes (``old``: hidden old spellings)."""
    return option(
        "-o", "--output", old=old, type=click.Path(dir_okay=False, path_type=Path), help=help
    )


def json_option(what: str = "the result") -> Decorator:
    """``--json``: print ``what`` as JSON on stdout instead of text."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def test_images_option(help: str, *, old: Sequence[str] = ()) -> Decorator:
    """``--test-images N`` (parameter ``limit_test``): a fixed subset of the test split."""
    return option("--test-images", "limit_test", old=old, type=click.IntRange(1), help=help)


def train_images_option(help: str, *, old: Sequence[str] = ()) -> Decorator:
    """``--train-images N`` (parameter ``limit_train``): a fixed subset of the training split."""
    return option("--train-images", "limit_train", old=old, type=click.IntRange(1), help=help)


def dataset_option(help: str, *, required: bool = False) -> Decorator:
    """``--dataset NAME``, its npz:/imagefolder: path checked while parsing."""
    return click.option("--dataset", required=required, callback=check_dataset, help=help)


def data_dir_option(what: str = "Where data sets are downloaded, extracted and cached.") -> Any:
    """``--data-dir`` (default ``data``), with what the command keeps there."""
    return click.option(
        "--data-dir", default="data", show_default=True, type=click.Path(file_okay=False), help=what
    )


def batch_size_option(default: int, help: str) -> Decorator:
    """``--batch-size N``."""
    return click.option(
        "--batch-size", type=click.IntRange(1), default=default, show_default=True, help=help
    )


def seed_option() -> Decorator:
    """``--seed N``: the one seed of weights, data order and subsets."""
    return click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed of the initial weights, the data order and the random subsets.",
    )


concat_option = click.option(
    "--concat-order",
    type=click.Choice(["auto", "oldest-first", "newest-first"]),
    default="auto",
    show_default=True,
    help="How each layer concatenates its inputs: oldest-first is [x0, x1, …] (torchvision, "
    "most code); newest-first is torch.cat([new, old]) (e.g. kuangliu/pytorch-cifar). "
    "auto reads it from the batch-norm running statistics (assumes oldest-first when they "
    "decide nothing); every output states the order and whether it was detected or assumed.",
)
trust_option = click.option(
    "--trust-pickle",
    is_flag=True,
    help="Run the code of a file whose pickle would call Python code (refused otherwise; "
    "said on stderr before it runs). Whole pickled nn.Modules load without it, their "
    "tensors read without running their classes. Only for files you trust.",
)
arch_option = click.option(
    "--arch",
    help="Trace this network instead of reading weight names: a registered model "
    "(d2l_densenet, googlenet, densenet121, …; see `models`) or module:function returning "
    "an nn.Module. MODEL's weights are loaded into it (strict); works for any network whose "
    "layers read a torch.cat of earlier tensors, in the order the graph concatenates them.",
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
metric_option = click.option(
    "--metric",
    type=click.Choice(list(METRICS)),
    default="weight",
    show_default=True,
    help="What the table measures. weight: mean |w| per source slice (the paper's); "
    "bn-weight: |w| scaled by |γ|/√(σ²+ε) of the batch norm in front; activation: mean "
    "|contribution| to the target's first-conv output on real images; ablation: loss "
    "increase when the connection alone is cut; taylor: first-order estimate of ablation. "
    "The last three run the model (--dataset, --images).",
)

#: ``--mean/--std``: the input normalisation of a model rebuilt from weights alone.
normalisation_options = stacked(
    [
        click.option(
            "--mean",
            callback=float_list,
            help="Input normalisation per channel, e.g. 0.5,0.5,0.5 (default: the recorded "
            "one, else the data set's usual statistics); checked against the batch norms.",
        ),
        click.option("--std", callback=float_list, help="See --mean."),
    ]
)

# Options of the metrics that run the model; a command gets them as one `probe` dict.
PROBE_KEYS = ("dataset", "data_dir", "images", "split", "batch_size", "device", "mean", "std")


def probe_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the data-driven metrics' options; pass them on as ``probe=dict(...)``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, probe={k: kwargs.pop(k) for k in PROBE_KEYS}, **kwargs)

    options = [
        dataset_option(
            "Images for the data-driven metrics (default: the data set recorded in the "
            "checkpoint): cifar10, …, npz:PATH or imagefolder:PATH."
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
        batch_size_option(256, "Images per forward pass (bounds memory)."),
        device_option,
        normalisation_options,
    ]
    return stacked(options)(wrapper)


def training_options(epochs: int, lr_help: str) -> Decorator:
    """The training budget that `train` and `compare` share: data, epochs, batch, lr,
    augmentation, subsets, seed and device (``epochs``: the default)."""
    options = [
        dataset_option(
            "cifar10, cifar100, svhn, mnist, fashion-mnist, npz:PATH or imagefolder:PATH.",
            required=True,
        ),
        data_dir_option(),
        click.option(
            "--epochs",
            type=click.IntRange(1),
            default=epochs,
            show_default=True,
            help="Epochs to train (the paper: 300 on CIFAR, 40 on SVHN).",
        ),
        batch_size_option(64, "Images per training step and process (the paper: 64)."),
        click.option(
            "--lr",
            type=click.FloatRange(min=0, min_open=True),
            default=0.1,
            show_default=True,
            help=lr_help,
        ),
        click.option(
            "--augment/--no-augment",
            default=True,
            show_default=True,
            help="Random crops (4-pixel padding) and flips; without them dropout 0.2 is used "
            "(the paper's recipe).",
        ),
        train_images_option(
            "Train on a fixed random subset of N training images (the same for every run).",
            old=("--limit-train",),
        ),
        test_images_option(
            "Evaluate on a fixed random subset of N test images.", old=("--limit-test",)
        ),
        seed_option(),
        device_option,
    ]
    return stacked(options)


#: `heatmap`'s options: the figure to write, the concat order and how the figure looks.
heatmap_options = stacked(
    [
        output_option(
            "Image to write; the extension picks the format (.png, .pdf, .svg). "
            "Default: reports/MODEL-heatmap.png (MODEL-METRIC-heatmap.png for other metrics)."
        ),
        click.option(
            "--normalize",
            type=click.Choice(["column", "none", "global"]),
            default="column",
            show_default=True,
            help="column: each target column min–max scaled to [0, 1], as in the paper; "
            "none: raw average |w|; global: one min–max over all blocks.",
        ),
        concat_option,
        click.option(
            "--cmap",
            default=None,
            help="Matplotlib colour map (default: viridis; jet with --style paper).",
        ),
        click.option(
            "--style",
            type=click.Choice(["default", "paper"]),
            default="default",
            show_default=True,
            help="paper: Figure 5's look (jet, its ticks, 'Transition layer 1 →' labels).",
        ),
        click.option("--title", help="Figure title (default: model, structure, concat order)."),
        click.option(
            "--annotate/--no-annotate",
            default=None,
            help="Write the value in each cell (default: only when every block is small).",
        ),
        click.option(
            "--dpi",
            type=click.IntRange(50, 1200),
            default=150,
            show_default=True,
            help="PNG resolution.",
        ),
    ]
)

#: `prune`'s options: which connections to cut and how (or a whole --sweep), the
#: fine-tuning after the cut, and the test images accuracy is measured on.
cut_options = stacked(
    [
        click.option(
            "--metric",
            type=click.Choice(list(METRICS)),
            default="weight",
            show_default=True,
            help="Rank connections by this metric (see `table --help`); cut the weakest.",
        ),
        click.option(
            "--fraction",
            type=click.FloatRange(0, 1, max_open=True),
            help="Fraction F of each target column's sources to cut (required unless --sweep).",
        ),
        click.option(
            "--scope",
            type=click.Choice(["column", "global"]),
            default="column",
            show_default=True,
            help="column: every target keeps its strongest ⌈(1−F)·n⌉ sources (at least one); "
            "global: the strongest (1−F) of all connections by raw value, at least one per target.",
        ),
        click.option(
            "--finetune-epochs",
            type=click.IntRange(0),
            default=0,
            show_default=True,
            help="Train the pruned model further, cut weights held at zero "
            "(resumable with --resume).",
        ),
        click.option(
            "--finetune-images",
            type=click.IntRange(1),
            help="Fine-tune on a fixed random subset of N training images (default: all).",
        ),
        click.option(
            "--finetune-lr",
            type=click.FloatRange(min=0, min_open=True),
            default=0.01,
            show_default=True,
            help="Learning rate of the fine-tuning (the paper's schedule, ÷10 at 50 % and 75 %).",
        ),
        click.option("--resume", is_flag=True, help="Continue an interrupted fine-tuning run."),
        test_images_option(
            "Measure accuracy on a fixed random subset of N test images (default: all).",
            old=("--limit",),
        ),
        click.option(
            "--sweep",
            "do_sweep",
            is_flag=True,
            help="Instead of one pruned model: accuracy (no fine-tuning) for every metric in "
            "--metrics at every fraction in --fractions, as a figure and a CSV.",
        ),
        click.option(
            "--metrics",
            callback=name_list,
            default="weight,bn-weight,activation,taylor,ablation,random",
            show_default=True,
            help="Metrics the sweep compares ('random': the chance baseline).",
        ),
        click.option(
            "--fractions",
            callback=fraction_list,
            default="0.25,0.5,0.75,0.9",
            show_default=True,
            help="Fractions the sweep cuts, comma-separated, each in [0, 1).",
        ),
        click.option(
            "--seeds",
            type=click.IntRange(1),
            help="Seeds of the sweep's random baseline: its mean and spread per fraction "
            "(default: 5).",
        ),
    ]
)


#: `train`'s options on the recipe beyond the shared ones: schedule, smoothing, dropout.
recipe_options = stacked(
    [
        click.option(
            "--schedule",
            type=click.Choice(["paper", "onecycle", "cosine"]),
            default="paper",
            show_default=True,
            help="paper: lr ÷10 at 50 % and 75 % of the epochs; cosine: half a cosine to 0 "
            "per step; onecycle: linear warm-up from lr/25 over 15 % of the steps, then "
            "cosine to 0.",
        ),
        click.option(
            "--label-smoothing",
            type=click.FloatRange(0, 1, max_open=True),
            default=0.0,
            show_default=True,
            help="Cross-entropy label smoothing (0.1 helps short schedules).",
        ),
        click.option(
            "--drop-rate",
            type=click.FloatRange(0, 1, max_open=True),
            default=None,
            help="Dropout after each conv but the first (default: 0 with augmentation, else "
            "0.2); zoo models keep their own (0.5 in alexnet, vgg11, nin) unless this is given.",
        ),
    ]
)


#: `train`'s options on how a run uses the machine: precision, memory layout, recomputation
#: and how often the state is saved.
speed_options = stacked(
    [
        click.option("--amp", is_flag=True, help="Mixed precision (fp16 on CUDA, bf16 on CPU)."),
        click.option(
            "--channels-last", is_flag=True, help="NHWC memory format (faster on most HW)."
        ),
        click.option(
            "--memory-efficient",
            is_flag=True,
            help="Recompute bottlenecks in backward to save memory.",
        ),
        click.option(
            "--compile",
            is_flag=True,
            help="Compile what pays: the fused dense blocks' elementwise kernels (this "
            "project's DenseNets), torch.compile for other models; the first steps compile "
            "(seconds to minutes, cached in TORCHINDUCTOR_CACHE_DIR).",
        ),
        click.option(
            "--checkpoint-minutes",
            type=click.FloatRange(min=0),
            default=10.0,
            show_default=True,
            help="Save the training state mid-epoch this often.",
        ),
    ]
)

#: `compare`'s options on how speeds are measured.
measure_options = stacked(
    [
        click.option(
            "--measure-steps",
            type=click.IntRange(1),
            default=3,
            show_default=True,
            help="Timed training and inference steps per architecture and round.",
        ),
        click.option(
            "--measure-rounds",
            type=click.IntRange(1),
            default=2,
            show_default=True,
            help="Rounds of speed measurements, architectures in alternating order; the fastest "
            "step counts (other processes only slow steps down).",
        ),
    ]
)
