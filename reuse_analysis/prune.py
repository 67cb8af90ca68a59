"""Cutting connections: which to cut, masks, pruned checkpoints, fine-tuning, sweeps.

Cutting s → t zeroes ``W_t[:, S_s]``, the slice of target t's first convolution (or the
transition conv, or the classifier) that reads source s — the same as zeroing that input
slice after BN-ReLU. A pruned checkpoint holds the zeroed weights *and* the list of cut
connections (plain data, ``{"block": [...], "source": [...], "target": [...]}``), so any
command loads it as a normal model and ``prune`` can keep the cut weights at zero while
fine-tuning.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from reuse_analysis.concat_order import OrderDecision, detect_concat_order
from reuse_analysis.errors import ReuseAnalysisError
from reuse_analysis.metrics import REGISTRY, MetricInputs, reuse_table
from reuse_analysis.structure import DenseNetStructure
from reuse_analysis.tables import KEYS, value_column

SCOPES = ("column", "global")
CUT_KEYS = ["block", "source", "target"]


class PruneError(ReuseAnalysisError):
    """A pruning request that cannot be carried out as asked."""


# ----------------------------------------------------------------------------- selection
def select_cuts(table: pd.DataFrame, fraction: float, scope: str = "column") -> pd.DataFrame:
    """The connections to cut: the weakest ``fraction`` by the table's metric.

    ``column`` (default): every target column keeps its strongest ``⌈(1−F)·n⌉`` of its
    ``n`` sources, at least one. ``global``: the strongest ``⌈(1−F)·N⌉`` of all ``N``
    connections are kept, compared by raw value across columns, and every column still
    keeps its strongest source. Ties go to the older source. Returns the cut rows of the
    table (with their values), in table order.
    """
    check_request(fraction, scope)
    value = value_column(table)
    ranked = table.sort_values(
        ["block", "target", value, "source"], ascending=[True, True, False, True], kind="stable"
    )
    rank = ranked.groupby(["block", "target"]).cumcount()
    if scope == "column":
        sizes = ranked.groupby(["block", "target"])["source"].transform("size")
        keep = sizes.map(lambda n: max(1, math.ceil((1 - fraction) * n - 1e-9)))
        kept = rank < keep
    else:
        budget = max(1, math.ceil((1 - fraction) * len(table) - 1e-9))
        strongest = rank == 0
        rest = ranked[~strongest].sort_values(
            [value, "block", "target", "source"],
            ascending=[False, True, True, True],
            kind="stable",
        )
        extra = rest.index[: max(0, budget - int(strongest.sum()))]
        kept = strongest | ranked.index.isin(extra)
    cut_index = ranked.index[~kept.to_numpy()]
    return table.loc[table.index.isin(cut_index)]


def check_request(fraction: float, scope: str) -> None:
    """Raise PruneError for a fraction outside [0, 1) or an unknown scope."""
    if not 0.0 <= fraction < 1.0:
        raise PruneError(f"--fraction must be in [0, 1), got {fraction}")
    if scope not in SCOPES:
        raise PruneError(f"--scope must be one of {', '.join(SCOPES)}, not {scope!r}")


def cuts_record(cuts: pd.DataFrame) -> dict[str, list[int]]:
    """Cut connections as plain lists (what a pruned checkpoint stores)."""
    return {k: [int(v) for v in cuts[k]] for k in CUT_KEYS}


def cuts_from_record(record: Mapping[str, Any]) -> pd.DataFrame:
    """The DataFrame of cut connections stored by :func:`cuts_record`."""
    try:
        df = pd.DataFrame({k: list(record[k]) for k in CUT_KEYS}, dtype="int64")
    except (KeyError, TypeError, ValueError):
        raise PruneError(
            "the checkpoint's prune record is not a {block, source, target} list"
        ) from None
    return df


# ----------------------------------------------------------------------------- masks
def connection_slice(
    structure: DenseNetStructure,
    block: int,
    source: int,
    target: int,
    concat_order: str = "oldest-first",
) -> tuple[str, int, int]:
    """``(weight key, start, stop)``: the inputs of target's weight from source (its
    channels; for a classifier on the flattened map, their features: ``positions`` each)."""
    try:
        column = structure.target(block, target, concat_order)
        start, stop = column.feature_slice_of(source)
    except ValueError as exc:
        raise PruneError(str(exc)) from None
    return column.weight_key, start, stop


def keep_masks(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    cuts: pd.DataFrame,
    concat_order: str = "oldest-first",
) -> dict[str, torch.Tensor]:
    """Per weight key with a cut: a 0/1 tensor of the weight's shape (0 = cut)."""
    masks: dict[str, torch.Tensor] = {}
    for block, source, target in cuts[CUT_KEYS].itertuples(index=False):
        key, start, stop = connection_slice(structure, block, source, target, concat_order)
        if key not in masks:
            masks[key] = torch.ones_like(state_dict[key])
        masks[key][:, start:stop] = 0
    return masks


def apply_cuts(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    cuts: pd.DataFrame,
    concat_order: str = "oldest-first",
) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` with the cut slices zeroed (the other tensors shared)."""
    out = dict(state_dict)
    for key, mask in keep_masks(state_dict, structure, cuts, concat_order).items():
        out[key] = state_dict[key] * mask
    return out


def cut_summary(
    cuts: pd.DataFrame, table: pd.DataFrame, structure: DenseNetStructure
) -> dict[str, Any]:
    """How much was cut: connections, and input channels of the 1×1 layer convs.

    ``bottleneck_inputs_cut`` is the share of the layers' first-conv input channels (the
    1×1 bottleneck in DenseNet-B/-BC) whose weights were zeroed — the quantity that
    CondenseNet's learned group convolutions prune (75 % there).
    """
    merged = cuts[CUT_KEYS].merge(table[KEYS], on=CUT_KEYS, how="left")
    channels_total = channels_cut = 0
    for block in structure.blocks:
        for layer in block.layers:
            channels_total += layer.in_channels
            for s, start, stop in block.source_slices(layer.index):
                hit = (
                    (merged.block == block.index)
                    & (merged.target == layer.index)
                    & (merged.source == s)
                )
                if hit.any():
                    channels_cut += stop - start
    layer_rows = table[table.target_kind == "layer"]
    layer_cuts = merged[merged.target_kind == "layer"]
    return {
        "connections": len(table),
        "connections_cut": len(cuts),
        "share_cut": len(cuts) / len(table) if len(table) else 0.0,
        "layer_connections_cut": len(layer_cuts),
        "layer_share_cut": len(layer_cuts) / len(layer_rows) if len(layer_rows) else 0.0,
        "layer_input_channels": channels_total,
        "layer_input_channels_cut": channels_cut,
        "bottleneck_inputs_cut": channels_cut / channels_total if channels_total else 0.0,
    }


# ----------------------------------------------------------------------------- values
#: A pseudo-metric for sweeps: uniformly random values (seeded), the chance baseline.
RANDOM = "random"


def _random_values(inputs: MetricInputs) -> pd.DataFrame:
    """The weight table's connections with seeded uniform values: the chance ranking."""
    import numpy as np

    table = reuse_table(inputs.state_dict, inputs.structure, "oldest-first", "weight")
    table["mean_abs_weight"] = np.random.default_rng(inputs.seed).random(len(table))
    return table


#: What can rank connections for pruning: every metric, and the random baseline.
RANKINGS: dict[str, Callable[[MetricInputs], pd.DataFrame]] = {
    **{name: m.compute for name, m in REGISTRY.items()},
    RANDOM: _random_values,
}


def connection_values(
    metric: str,
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    checkpoint: Any = None,
    settings: Any = None,
    *,
    seed: int = 0,
    inputs: MetricInputs | None = None,
) -> pd.DataFrame:
    """The reuse table that ranks connections for pruning (concat order oldest-first: the
    order of the model that runs). ``random`` gives seeded uniform values instead.
    ``inputs`` shares a model and images already built between several rankings."""
    if metric not in RANKINGS:
        raise PruneError(f"unknown metric {metric!r}; use {', '.join(RANKINGS)}")
    inputs = inputs or MetricInputs(state_dict, structure, checkpoint, settings, seed=seed)
    return RANKINGS[metric](inputs)


# ----------------------------------------------------------------------------- evaluation
def _evaluator(
    model: torch.nn.Module,
    ds: Any,
    limit: int | None,
    device: Any,
    batch_size: int,
    cache_dir: Any = None,
):
    """``evaluate(state_dict) → (loss, accuracy)`` on a fixed subset of the test split.

    With ``cache_dir``, results are kept there (:mod:`reuse_analysis.cache`), keyed by the
    weights' hash and the test images, so the same weights are never evaluated twice
    (repeated ``prune`` runs all measure the same unpruned model first).
    """
    from reuse_analysis.cache import Cache, weights_hash
    from reuse_analysis.runtime import eval_subset, evaluate

    if ds.test is None or len(ds.test) == 0:
        raise PruneError(f"{ds.name} has no test split to measure accuracy on")
    test = eval_subset(ds.test, limit)
    cache = Cache(cache_dir)
    where = [ds.name, len(test), list(ds.mean), list(ds.std)]

    def measure(state_dict: Mapping[str, torch.Tensor]) -> list[float]:
        model.load_state_dict(dict(state_dict))
        return list(evaluate(model, test, ds, device, batch_size=batch_size, progress=True))

    def run(state_dict: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        inputs = {"weights": weights_hash(state_dict), "test": where}
        loss, acc = cache.compute("evaluation", inputs, lambda: measure(state_dict))
        return loss, acc

    run.images = len(test)  # type: ignore[attr-defined]
    return run


# ----------------------------------------------------------------------------- fine-tuning
def check_finetunable(checkpoint: Any) -> None:
    """Raise PruneError unless the checkpoint records what training needs."""
    if checkpoint is None or checkpoint.arch is None or checkpoint.config is None:
        raise PruneError(
            "fine-tuning needs a checkpoint written by `reuse-analysis train` (it records "
            "the architecture and training set); prune without --finetune-epochs instead"
        )


def finetune(
    checkpoint: Any,
    state_dict: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    *,
    dataset: str,
    data_dir: str,
    work: str,
    epochs: int,
    images: int | None,
    lr: float,
    limit: int | None,
    resume: bool,
    device: str,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the pruned weights further with ``train.train``, cut weights held at zero.

    The masks multiply the gradients of the cut weights, so that neither the gradient, nor
    weight decay, nor momentum moves them. ``work`` names the training files (``WORK``,
    ``WORK.train.pt`` for ``resume``, ``WORK.log.csv``). Returns the tuned weights and the
    training summary with its history.
    """
    from reuse_analysis.checkpoint import load_checkpoint
    from reuse_analysis.train import TrainConfig, train

    check_finetunable(checkpoint)
    trained = checkpoint.meta.get("train_config", {})
    cfg = TrainConfig(
        arch=checkpoint.arch,
        dataset=dataset,
        data_dir=data_dir,
        epochs=epochs,
        batch_size=int(trained.get("batch_size", 64)),
        lr=lr,
        augment=bool(trained.get("augment", True)),
        drop_rate=checkpoint.config.get("drop_rate"),
        out=work,
        resume=resume,
        seed=int(trained.get("seed", 0)),
        device=device,
        limit_train=images,
        limit_test=limit,
        model_overrides=dict(checkpoint.config),
    )

    def init(model: torch.nn.Module) -> None:
        model.load_state_dict(dict(state_dict), strict=True)
        params = dict(model.named_parameters())
        for key, mask in masks.items():
            keep = mask.to(params[key].dtype)
            params[key].register_hook(lambda grad, keep=keep: grad * keep.to(grad.device))

    # The training loop writes a line per epoch to stdout; here it is progress: stderr.
    with contextlib.redirect_stdout(sys.stderr):
        summary = train(cfg, init=init)
    tuned = load_checkpoint(work).state_dict
    for key, mask in masks.items():
        if torch.count_nonzero(tuned[key] * (1 - mask)):
            raise PruneError(f"fine-tuning moved cut weights of {key}; this is a bug")
    history = load_checkpoint(work).meta.get("history", [])
    return {k: v.clone() for k, v in tuned.items()}, {**summary, "history": history}


# ----------------------------------------------------------------------------- set-up
@dataclass
class _Setup:
    """A checkpoint ready to prune: weights, structure, the model on its device, the data
    set, the shared inputs of the ranking metrics, and the test-set evaluator."""

    state_dict: dict[str, torch.Tensor]
    structure: DenseNetStructure
    checkpoint: Any
    settings: Any
    model: torch.nn.Module
    data: Any
    inputs: MetricInputs
    evaluate: Callable[[Mapping[str, torch.Tensor]], tuple[float, float]]
    #: The checkpoint's concat order and what it rests on (detected or assumed).
    order: OrderDecision
    #: Whether the model that runs (a rebuild) permuted the checkpoint's channels into
    #: oldest-first order: cuts and the saved file then follow the rebuild's order.
    reordered: bool

    def order_record(self) -> dict[str, Any]:
        """What a prune record and a sweep say about the order (:func:`order_record`)."""
        return order_record(self.order, self.reordered)


def _prepare(
    path: str,
    settings: Any,
    limit: int | None,
    trust_pickle: bool,
    check: Callable[[Any], None] | None = None,
) -> _Setup:
    """Load the checkpoint and build the model and its data set once, for the rankings
    (data-driven metrics run the same model on the same data set) and the evaluations.
    ``check(checkpoint)`` runs before anything is built."""
    from reuse_analysis.analysis import load_structure
    from reuse_analysis.probes import ProbeSettings, probe_setup
    from reuse_analysis.rebuild import model_weights

    settings = settings or ProbeSettings()
    state_dict, structure, ckpt = load_structure(path, trust_pickle=trust_pickle)
    if check is not None:
        check(ckpt)
    order = detect_concat_order(state_dict, structure)
    setup = probe_setup(state_dict, structure, ckpt, settings)
    reordered = getattr(setup.model, "concat_order", "oldest-first") != "oldest-first"
    # Cuts, evaluations and the saved file work in the running model's key space (a
    # rebuild's own names, oldest first), so that a cut slice is the one the model reads.
    state_dict, structure = model_weights(setup.model, state_dict, structure)
    inputs = MetricInputs(state_dict, structure, ckpt, settings, setup=setup)
    evaluate = _evaluator(
        setup.model, setup.data, limit, setup.device, settings.batch_size, settings.cache_path()
    )
    return _Setup(
        state_dict, structure, ckpt, settings, setup.model, setup.data, inputs, evaluate,
        order, reordered,
    )  # fmt: skip


def order_record(decision: OrderDecision, reordered: bool) -> dict[str, Any]:
    """The concat order of a pruned or swept checkpoint: ``concat_order`` (the order of the
    model that runs, which the cut list refers to: always oldest-first),
    ``checkpoint_concat_order`` (the file's, with what it rests on), ``reordered`` (a
    rebuild permuted the file's channels) and ``concat_order_text``, the line outputs print."""
    text = decision.describe()
    if reordered:
        text = f"checkpoint {text}, run and cut in the rebuild's oldest-first order"
    return {
        "concat_order": "oldest-first",
        "checkpoint_concat_order": decision.to_dict(),
        "reordered": reordered,
        "concat_order_text": text,
    }


# ----------------------------------------------------------------------------- prune
def prune_checkpoint(
    path: str,
    out: str,
    *,
    metric: str,
    fraction: float,
    scope: str = "column",
    settings: Any = None,
    limit: int | None = None,
    finetune_epochs: int = 0,
    finetune_images: int | None = None,
    finetune_lr: float = 0.01,
    resume: bool = False,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """Cut the weakest ``fraction`` of connections of a checkpoint by ``metric``, measure
    test accuracy before and after (and after fine-tuning), and save the pruned model.

    The saved checkpoint keeps the architecture, config and data set of the original, holds
    the zeroed weights, and records under ``prune`` the cut connections, the metric and the
    accuracies. Returns that record.
    """
    check = check_finetunable if finetune_epochs > 0 else None
    s = _prepare(path, settings, limit, trust_pickle, check)
    table = connection_values(metric, s.state_dict, s.structure, inputs=s.inputs)
    cuts = _with_previous_cuts(select_cuts(table, fraction, scope)[CUT_KEYS], s.checkpoint)
    pruned = apply_cuts(s.state_dict, s.structure, cuts)
    record = _prune_record(s, table, cuts, pruned, metric, fraction, scope, str(path))
    final = pruned
    if finetune_epochs > 0:
        final = _finetune_pruned(
            s, pruned, cuts, record, out, finetune_epochs, finetune_images, finetune_lr,
            limit, resume,
        )  # fmt: skip
    else:
        record.update(accuracy_after=record["accuracy_pruned"], loss_after=record["loss_pruned"])
    _save_pruned(s, out, final, record)
    return record


def _with_previous_cuts(cuts: pd.DataFrame, checkpoint: Any) -> pd.DataFrame:
    """``cuts`` together with those an already pruned checkpoint records."""
    meta = checkpoint.meta if checkpoint is not None else {}
    previous = meta.get("prune", {}).get("cut") if isinstance(meta.get("prune"), dict) else None
    if not previous:
        return cuts
    return (
        pd.concat([cuts_from_record(previous), cuts])
        .drop_duplicates()
        .sort_values(CUT_KEYS)
        .reset_index(drop=True)
    )


def _prune_record(
    s: _Setup,
    table: pd.DataFrame,
    cuts: pd.DataFrame,
    pruned: Mapping[str, torch.Tensor],
    metric: str,
    fraction: float,
    scope: str,
    path: str,
) -> dict[str, Any]:
    """What was cut and the test accuracy before and after cutting."""
    from reuse_analysis.probes import state_hash

    loss_before, acc_before = s.evaluate(s.state_dict)
    loss_pruned, acc_pruned = s.evaluate(pruned)
    record: dict[str, Any] = {
        "metric": metric,
        "fraction": fraction,
        "scope": scope,
        **s.order_record(),
        "cut": cuts_record(cuts),
        **cut_summary(cuts, table, s.structure),
        "source_model": path,
        "source_sha256": state_hash(s.state_dict),
        "test": {"dataset": s.data.name, "images": s.evaluate.images},  # type: ignore[attr-defined]
        "accuracy_before": acc_before,
        "loss_before": loss_before,
        "accuracy_pruned": acc_pruned,
        "loss_pruned": loss_pruned,
    }
    if table.attrs.get("images"):
        record["probe"] = {k: table.attrs.get(k) for k in ("dataset", "split", "images")}
    return record


def _finetune_work(out: str) -> Path:
    return Path(out).with_name(Path(out).stem + ".finetune.pt")


def _finetune_pruned(
    s: _Setup,
    pruned: Mapping[str, torch.Tensor],
    cuts: pd.DataFrame,
    record: dict[str, Any],
    out: str,
    epochs: int,
    images: int | None,
    lr: float,
    limit: int | None,
    resume: bool,
) -> dict[str, torch.Tensor]:
    """Fine-tune the pruned weights (cuts held at zero); the results go into ``record``."""
    final, summary = finetune(
        s.checkpoint,
        pruned,
        keep_masks(s.state_dict, s.structure, cuts),
        dataset=s.data.name,
        data_dir=s.settings.data_dir,
        work=str(_finetune_work(out)),
        epochs=epochs,
        images=images,
        lr=lr,
        limit=limit,
        resume=resume,
        device=s.settings.device,
    )
    history = summary["history"]
    record["finetune"] = {"epochs": epochs, "images": images, "lr": lr, "history": history}
    record.update(
        accuracy_after=summary["test_acc"],
        loss_after=history[-1]["test_loss"] if history else None,
    )
    return final


def _save_pruned(
    s: _Setup, out: str, weights: Mapping[str, torch.Tensor], record: dict[str, Any]
) -> None:
    """The pruned checkpoint: the original's config and meta, the weights, the record."""
    from reuse_analysis.checkpoint import save_checkpoint

    ckpt = s.checkpoint
    meta = ckpt.meta if ckpt is not None else {}
    config = ckpt.config if ckpt is not None and ckpt.config else s.model.config.to_dict()
    keep = {k: v for k, v in meta.items() if k not in ("format", "arch", "config", "prune")}
    keep.update(test_acc=record["accuracy_after"], prune=record)
    save_checkpoint(out, dict(weights), arch=ckpt.arch if ckpt else None, config=config, **keep)
    if "finetune" in record:
        # The pruned checkpoint holds everything the fine-tuning files did; the log stays.
        work = _finetune_work(out)
        for leftover in (work, Path(f"{work.with_suffix('')}.train.pt")):
            leftover.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- sweep
SWEEP_COLUMNS = [
    "metric",
    "fraction",
    "connections_cut",
    "share_cut",
    "bottleneck_inputs_cut",
    "accuracy",
    "loss",
]
#: The random baseline's seed of a sweep row (empty for the deterministic metrics); a
#: column of :func:`sweep` results and of sweeps written since the baseline has several.
SEED = "seed"
#: The row of a sweep that holds the unpruned model's accuracy.
UNPRUNED = "unpruned"
#: Seeds of the random baseline in a sweep: chance has a spread, one draw is no baseline.
DEFAULT_SEEDS = 5
#: Per (metric, fraction), what :func:`sweep_summary` adds: runs and the accuracy's spread.
SUMMARY_COLUMNS = ["runs", "accuracy_mean", "accuracy_sd", "accuracy_min", "accuracy_max"]


def sweep(
    path: str,
    *,
    metrics: list[str],
    fractions: list[float],
    scope: str = "column",
    settings: Any = None,
    limit: int | None = None,
    trust_pickle: bool = False,
    seeds: int = DEFAULT_SEEDS,
) -> pd.DataFrame:
    """Test accuracy without fine-tuning after cutting each fraction by each metric.

    Returns one row per (metric, fraction) with :data:`SWEEP_COLUMNS` and :data:`SEED`,
    after a first row ``unpruned`` (fraction 0) for the original model; the ``random``
    baseline has one row per seed ``0 … seeds-1`` at each fraction (summarised by
    :func:`sweep_summary`). Each accuracy is kept in a JSON file under the probe cache,
    keyed by the weights and settings, as soon as it is measured, so an interrupted sweep
    continues where it stopped (and a rerun with more seeds measures only the new ones).
    """
    from tqdm import tqdm

    _check_sweep_request(metrics, fractions, scope, seeds)
    s = _prepare(path, settings, limit, trust_pickle)
    done, keep = _sweep_store(s, scope)
    if UNPRUNED not in done:
        keep(UNPRUNED, _unpruned_row(s))
    todo = [(m, f, seed) for m in metrics for f in fractions for seed in _seeds(m, seeds)]
    # Every ranking is computed before the first pruned model is evaluated: evaluating
    # loads pruned weights into the model that the data-driven metrics run.
    tables = {
        (m, seed): _ranking(s, m, seed)
        for m, seed in dict.fromkeys(
            (m, seed) for m, f, seed in todo if _sweep_name(m, f, seed) not in done
        )
    }
    bar = tqdm(total=len(todo), desc="sweep", unit="model", dynamic_ncols=True)
    for metric, fraction, seed in todo:
        name = _sweep_name(metric, fraction, seed)
        if name not in done:
            keep(name, _sweep_row(s, tables[metric, seed], metric, fraction, scope))
        bar.update(1)
    bar.close()
    rows = [{**done[UNPRUNED], SEED: None}]
    rows += [{**done[_sweep_name(m, f, seed)], SEED: seed} for m, f, seed in todo]
    df = pd.DataFrame(rows, columns=[*SWEEP_COLUMNS, SEED]).astype({SEED: "Int64"})
    df.attrs.update(
        model=Path(path).stem,
        dataset=s.data.name,
        test_images=s.evaluate.images,  # type: ignore[attr-defined]
        scope=scope,
        probe_images=s.settings.images,
        probe_split=s.settings.split,
        random_seeds=seeds if RANDOM in metrics else 0,
        **s.order_record(),
    )
    return df


def _seeds(metric: str, seeds: int) -> list[int | None]:
    """The seeds a metric runs with: ``0 … seeds-1`` for the random baseline, else none."""
    return list(range(seeds)) if metric == RANDOM else [None]


def _ranking(s: _Setup, metric: str, seed: int | None) -> pd.DataFrame:
    """The table that ranks connections by ``metric`` (the random one with ``seed``)."""
    if seed is None:
        return connection_values(metric, s.state_dict, s.structure, inputs=s.inputs)
    return connection_values(metric, s.state_dict, s.structure, seed=seed)


def sweep_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (metric, fraction) of a sweep, in its order: the runs (the random
    baseline's seeds, else 1), the accuracy's mean, sample sd (NaN for one run), min and
    max, and the mean of the other measures (the random cuts differ by seed)."""
    measures = ["connections_cut", "share_cut", "bottleneck_inputs_cut", "loss"]
    grouped = df.groupby(["metric", "fraction"], sort=False)
    out = grouped[measures].mean()
    acc = grouped["accuracy"]
    out = out.assign(
        runs=acc.size(),
        accuracy_mean=acc.mean(),
        accuracy_sd=acc.std(ddof=1),
        accuracy_min=acc.min(),
        accuracy_max=acc.max(),
    ).reset_index()
    out.attrs.update(df.attrs)
    return out[["metric", "fraction", *SUMMARY_COLUMNS, *measures]]


def _check_sweep_request(
    metrics: list[str], fractions: list[float], scope: str, seeds: int = 1
) -> None:
    unknown = [m for m in metrics if m not in RANKINGS]
    if unknown or not metrics:
        raise PruneError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}; use {', '.join(RANKINGS)}"
        )
    if seeds < 1:
        raise PruneError(f"--seeds must be at least 1, got {seeds}")
    for f in fractions:
        check_request(f, scope)


def _sweep_name(metric: str, fraction: float, seed: int | None = None) -> str:
    """A row's name in the sweep's cache record; the random baseline's seed 0 keeps the
    name it had when the baseline ran one seed, so older records still count."""
    name = f"{metric}@{fraction:g}"
    return name if not seed else f"{name}/seed{seed}"


def _sweep_store(s: _Setup, scope: str):
    """The sweep's finished rows (from the cache) and ``keep(name, row)``, which adds one."""
    from reuse_analysis.cache import Cache, weights_hash

    settings, ds = s.settings, s.data
    key = {
        "weights": weights_hash(s.state_dict),
        "test": [ds.name, s.evaluate.images, list(ds.mean), list(ds.std)],  # type: ignore[attr-defined]
        "scope": scope,
        "probe": [settings.dataset or ds.name, settings.split, settings.images],
    }
    done = Cache(settings.cache_path()).record("sweep", key)
    return done, done.put


def _unpruned_row(s: _Setup) -> dict[str, Any]:
    """The sweep's baseline row: the unpruned model's test accuracy."""
    loss, acc = s.evaluate(s.state_dict)
    return {"metric": UNPRUNED, "fraction": 0.0, "connections_cut": 0, "share_cut": 0.0,
            "bottleneck_inputs_cut": 0.0, "accuracy": acc, "loss": loss}  # fmt: skip


def _sweep_row(
    s: _Setup, table: pd.DataFrame, metric: str, fraction: float, scope: str
) -> dict[str, Any]:
    """Cut ``fraction`` by ``table``'s ranking and measure the pruned model."""
    cuts = select_cuts(table, fraction, scope)
    summary = cut_summary(cuts, table, s.structure)
    loss, acc = s.evaluate(apply_cuts(s.state_dict, s.structure, cuts))
    return {"metric": metric, "fraction": fraction,
            "connections_cut": summary["connections_cut"], "share_cut": summary["share_cut"],
            "bottleneck_inputs_cut": summary["bottleneck_inputs_cut"],
            "accuracy": acc, "loss": loss}  # fmt: skip


def write_sweep(df: pd.DataFrame, path: str) -> None:
    """Write a :func:`sweep` result as the CSV that :func:`read_sweep` reads, atomically.

    One row per run: :data:`SWEEP_COLUMNS`, the random baseline's ``seed``, then per
    (metric, fraction) the runs and the accuracy's mean, sd, min and max
    (:data:`SUMMARY_COLUMNS`, from :func:`sweep_summary`), then ``test_images``, ``scope``
    and ``concat_order`` (the checkpoint's order and what it rests on) from the result's
    attrs, so that the file alone says what each accuracy was measured on.
    """
    from reuse_analysis._io import write_text_atomic

    runs = df if SEED in df.columns else df.assign(**{SEED: pd.NA})
    summary = sweep_summary(df)[["metric", "fraction", *SUMMARY_COLUMNS]]
    table = runs[[*SWEEP_COLUMNS, SEED]].merge(summary, on=["metric", "fraction"], how="left")
    table = table.assign(test_images=df.attrs["test_images"], scope=df.attrs["scope"])
    if df.attrs.get("concat_order_text"):
        table = table.assign(concat_order=df.attrs["concat_order_text"])
    write_text_atomic(path, table.to_csv(index=False, float_format="%.6g"))


def read_sweep(path: str) -> pd.DataFrame:
    """A sweep table written by ``prune --sweep`` (its CSV), checked."""
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise PruneError(f"{path}: cannot read a sweep CSV ({exc})") from None
    missing = [c for c in SWEEP_COLUMNS if c not in df.columns]
    if missing:
        raise PruneError(
            f"{path} is not a sweep written by `prune --sweep` (no {', '.join(missing)} column)"
        )
    if SEED in df.columns:
        df[SEED] = df[SEED].astype("Int64")
    base = df[df.metric == UNPRUNED]
    df.attrs.update(model=Path(path).stem, test_images=None)
    if "test_images" in df.columns and len(base):
        df.attrs["test_images"] = int(base["test_images"].iloc[0])
    scopes = set(df["scope"].dropna()) if "scope" in df.columns else {"column"}
    if len(scopes) != 1 or not scopes <= set(SCOPES):
        raise PruneError(f"{path}: the sweep's scope column must hold one of {', '.join(SCOPES)}")
    df.attrs["scope"] = scopes.pop()
    orders = set(df["concat_order"].dropna()) if "concat_order" in df.columns else set()
    if len(orders) == 1:
        df.attrs["concat_order_text"] = orders.pop()
    return df
