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
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from reuse_analysis.errors import ReuseAnalysisError
from reuse_analysis.structure import Classifier, DenseNetStructure, Transition
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
    """``(weight key, start, stop)``: the input channels of target's weight from source."""
    if not 1 <= block <= len(structure.blocks):
        raise PruneError(f"the model has no block {block}")
    b = structure.blocks[block - 1]
    if 1 <= target <= b.num_layers:
        key = b.layers[target - 1].first_conv.key
    elif target == b.num_layers + 1 and isinstance(b.extra, Transition):
        key = b.extra.conv.key
    elif target == b.num_layers + 1 and isinstance(b.extra, Classifier):
        key = b.extra.key
    else:
        raise PruneError(f"block {block} has no target {target}")
    # A classifier on the flattened map: channel c owns features c·p … c·p+p−1.
    p = b.extra.positions if isinstance(b.extra, Classifier) and key == b.extra.key else 1
    for s, start, stop in b.source_slices(target, concat_order):
        if s == source:
            return key, start * p, stop * p
    raise PruneError(f"target {target} of block {block} reads no source {source}")


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


def connection_values(
    metric: str,
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    checkpoint: Any = None,
    settings: Any = None,
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """The reuse table that ranks connections for pruning (concat order oldest-first: the
    order of the model that runs). ``random`` gives seeded uniform values instead."""
    from reuse_analysis.metrics import reuse_table
    from reuse_analysis.tables import WEIGHT_METRICS

    if metric == RANDOM:
        import numpy as np

        table = reuse_table(state_dict, structure, "oldest-first", "weight")
        table["mean_abs_weight"] = np.random.default_rng(seed).random(len(table))
        return table
    if metric in WEIGHT_METRICS:
        return reuse_table(state_dict, structure, "oldest-first", metric)
    from reuse_analysis.probes import probe_table

    return probe_table(metric, state_dict, structure, checkpoint, settings)


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

    With ``cache_dir``, results are kept in ``evaluations.json`` there, keyed by the
    weights' hash and the test images, so the same weights are never evaluated twice
    (repeated ``prune`` runs all measure the same unpruned model first).
    """
    import json
    from pathlib import Path

    from reuse_analysis._io import write_text_atomic
    from reuse_analysis.probes import state_hash
    from reuse_analysis.train import eval_subset, evaluate

    if ds.test is None or len(ds.test) == 0:
        raise PruneError(f"{ds.name} has no test split to measure accuracy on")
    test = eval_subset(ds.test, limit)
    store = Path(cache_dir) / "evaluations.json" if cache_dir is not None else None
    where = json.dumps([ds.name, len(test), list(ds.mean), list(ds.std)])

    def run(state_dict: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        key = f"{state_hash(state_dict)}|{where}"
        saved = json.loads(store.read_text()) if store is not None and store.is_file() else {}
        if key in saved:
            return tuple(saved[key])  # type: ignore[return-value]
        model.load_state_dict(dict(state_dict))
        result = evaluate(model, test, ds, device, batch_size=batch_size, progress=True)
        if store is not None:
            saved = json.loads(store.read_text()) if store.is_file() else {}
            write_text_atomic(store, json.dumps({**saved, key: list(result)}))
        return result

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
    from pathlib import Path

    from reuse_analysis.analysis import load_structure
    from reuse_analysis.checkpoint import save_checkpoint
    from reuse_analysis.probes import ProbeSettings, load_data, runnable_model, state_hash
    from reuse_analysis.rebuild import model_weights
    from reuse_analysis.train import pick_device

    settings = settings or ProbeSettings()
    state_dict, structure, ckpt = load_structure(path, trust_pickle=trust_pickle)
    if finetune_epochs > 0:
        check_finetunable(ckpt)
    model = runnable_model(state_dict, structure, ckpt)
    state_dict, structure = model_weights(model, state_dict, structure)
    meta = ckpt.meta if ckpt is not None else {}
    ds = load_data(
        model, ckpt, settings.dataset, settings.data_dir, mean=settings.mean, std=settings.std
    )
    device = pick_device(settings.device)
    model.to(device)
    table = connection_values(metric, state_dict, structure, ckpt, settings)
    cuts = select_cuts(table, fraction, scope)[CUT_KEYS]
    previous = meta.get("prune", {}).get("cut") if isinstance(meta.get("prune"), dict) else None
    if previous:
        cuts = (
            pd.concat([cuts_from_record(previous), cuts])
            .drop_duplicates()
            .sort_values(CUT_KEYS)
            .reset_index(drop=True)
        )
    masks = keep_masks(state_dict, structure, cuts)
    pruned = apply_cuts(state_dict, structure, cuts)
    evaluate = _evaluator(model, ds, limit, device, settings.batch_size, settings.cache_path())
    loss_before, acc_before = evaluate(state_dict)
    loss_pruned, acc_pruned = evaluate(pruned)
    record: dict[str, Any] = {
        "metric": metric,
        "fraction": fraction,
        "scope": scope,
        "concat_order": "oldest-first",
        "cut": cuts_record(cuts),
        **cut_summary(cuts, table, structure),
        "source_model": str(path),
        "source_sha256": state_hash(state_dict),
        "test": {"dataset": ds.name, "images": evaluate.images},
        "accuracy_before": acc_before,
        "loss_before": loss_before,
        "accuracy_pruned": acc_pruned,
        "loss_pruned": loss_pruned,
    }
    if table.attrs.get("images"):
        record["probe"] = {k: table.attrs.get(k) for k in ("dataset", "split", "images")}
    final, acc_after, loss_after = pruned, acc_pruned, loss_pruned
    if finetune_epochs > 0:
        work = Path(out).with_name(Path(out).stem + ".finetune.pt")
        final, summary = finetune(
            ckpt,
            pruned,
            masks,
            dataset=ds.name,
            data_dir=settings.data_dir,
            work=str(work),
            epochs=finetune_epochs,
            images=finetune_images,
            lr=finetune_lr,
            limit=limit,
            resume=resume,
            device=settings.device,
        )
        acc_after = summary["test_acc"]
        loss_after = summary["history"][-1]["test_loss"] if summary["history"] else None
        record["finetune"] = {
            "epochs": finetune_epochs,
            "images": finetune_images,
            "lr": finetune_lr,
            "history": summary["history"],
        }
    record.update(accuracy_after=acc_after, loss_after=loss_after)
    config = ckpt.config if ckpt is not None and ckpt.config else model.config.to_dict()
    keep = {k: v for k, v in meta.items() if k not in ("format", "arch", "config", "prune")}
    keep.update(test_acc=acc_after, prune=record)
    save_checkpoint(out, final, arch=ckpt.arch if ckpt else None, config=config, **keep)
    if finetune_epochs > 0:
        # The pruned checkpoint holds everything the fine-tuning files did; the log stays.
        for leftover in (work, Path(f"{work.with_suffix('')}.train.pt")):
            leftover.unlink(missing_ok=True)
    return record


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
#: The row of a sweep that holds the unpruned model's accuracy.
UNPRUNED = "unpruned"


def sweep(
    path: str,
    *,
    metrics: list[str],
    fractions: list[float],
    scope: str = "column",
    settings: Any = None,
    limit: int | None = None,
    trust_pickle: bool = False,
) -> pd.DataFrame:
    """Test accuracy without fine-tuning after cutting each fraction by each metric.

    Returns one row per (metric, fraction) with :data:`SWEEP_COLUMNS`, after a first row
    ``unpruned`` (fraction 0) for the original model. Each accuracy is kept in a JSON file
    under the probe cache, keyed by the weights and settings, as soon as it is measured, so
    an interrupted sweep continues where it stopped.
    """
    import hashlib
    import json
    from pathlib import Path

    from tqdm import tqdm

    from reuse_analysis._io import write_text_atomic
    from reuse_analysis.analysis import load_structure
    from reuse_analysis.probes import ProbeSettings, load_data, runnable_model, state_hash
    from reuse_analysis.rebuild import model_weights
    from reuse_analysis.tables import DATA_METRICS, METRICS
    from reuse_analysis.train import pick_device

    settings = settings or ProbeSettings()
    unknown = [m for m in metrics if m not in METRICS and m != RANDOM]
    if unknown or not metrics:
        raise PruneError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}; use "
            f"{', '.join([*METRICS, RANDOM])}"
        )
    for f in fractions:
        check_request(f, scope)
    state_dict, structure, ckpt = load_structure(path, trust_pickle=trust_pickle)
    model = runnable_model(state_dict, structure, ckpt)
    state_dict, structure = model_weights(model, state_dict, structure)
    ds = load_data(
        model, ckpt, settings.dataset, settings.data_dir, mean=settings.mean, std=settings.std
    )
    device = pick_device(settings.device)
    model.to(device)
    evaluate = _evaluator(model, ds, limit, device, settings.batch_size, settings.cache_path())
    key = {
        "weights": state_hash(state_dict),
        "test": [ds.name, evaluate.images, list(ds.mean), list(ds.std)],
        "scope": scope,
        "probe": [settings.dataset or ds.name, settings.split, settings.images],
    }
    store_path = None
    cache = settings.cache_path()
    if cache is not None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        store_path = Path(cache) / f"sweep-{digest}.json"
    done: dict[str, Any] = {}
    if store_path is not None and store_path.is_file():
        saved = json.loads(store_path.read_text())
        done = saved.get("results", {}) if saved.get("key") == key else {}

    def keep(name: str, row: dict[str, Any]) -> None:
        done[name] = row
        if store_path is not None:
            write_text_atomic(store_path, json.dumps({"key": key, "results": done}))

    if UNPRUNED not in done:
        loss, acc = evaluate(state_dict)
        keep(UNPRUNED, {"metric": UNPRUNED, "fraction": 0.0, "connections_cut": 0,
                        "share_cut": 0.0, "bottleneck_inputs_cut": 0.0, "accuracy": acc,
                        "loss": loss})  # fmt: skip
    data_metrics = [m for m in metrics if m in DATA_METRICS]
    tables = {}
    if any(f"{m}@{f:g}" not in done for m in data_metrics for f in fractions):
        from reuse_analysis.probes import probe_tables

        tables = probe_tables(data_metrics, state_dict, structure, ckpt, settings)
    todo = [(m, f) for m in metrics for f in fractions]
    bar = tqdm(total=len(todo), desc="sweep", unit="model", dynamic_ncols=True)
    for metric, fraction in todo:
        name = f"{metric}@{fraction:g}"
        if name not in done:
            table = tables.get(metric)
            if table is None:
                table = connection_values(metric, state_dict, structure, ckpt, settings)
            cuts = select_cuts(table, fraction, scope)
            summary = cut_summary(cuts, table, structure)
            loss, acc = evaluate(apply_cuts(state_dict, structure, cuts))
            keep(name, {"metric": metric, "fraction": fraction,
                        "connections_cut": summary["connections_cut"],
                        "share_cut": summary["share_cut"],
                        "bottleneck_inputs_cut": summary["bottleneck_inputs_cut"],
                        "accuracy": acc, "loss": loss})  # fmt: skip
        bar.update(1)
    bar.close()
    names = [UNPRUNED] + [f"{m}@{f:g}" for m, f in todo]
    df = pd.DataFrame([done[n] for n in names], columns=SWEEP_COLUMNS)
    df.attrs.update(
        model=Path(path).stem,
        dataset=ds.name,
        test_images=evaluate.images,
        scope=scope,
        probe_images=settings.images,
        probe_split=settings.split,
    )
    return df


def read_sweep(path: str) -> pd.DataFrame:
    """A sweep table written by ``prune --sweep`` (its CSV), checked."""
    from pathlib import Path

    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise PruneError(f"{path}: cannot read a sweep CSV ({exc})") from None
    missing = [c for c in SWEEP_COLUMNS if c not in df.columns]
    if missing:
        raise PruneError(
            f"{path} is not a sweep written by `prune --sweep` (no {', '.join(missing)} column)"
        )
    base = df[df.metric == UNPRUNED]
    df.attrs.update(model=Path(path).stem, test_images=None)
    if "test_images" in df.columns and len(base):
        df.attrs["test_images"] = int(base["test_images"].iloc[0])
    scopes = set(df["scope"].dropna()) if "scope" in df.columns else {"column"}
    if len(scopes) != 1 or not scopes <= set(SCOPES):
        raise PruneError(f"{path}: the sweep's scope column must hold one of {', '.join(SCOPES)}")
    df.attrs["scope"] = scopes.pop()
    return df
