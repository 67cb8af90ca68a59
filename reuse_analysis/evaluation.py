"""Rebuild a model from a checkpoint alone and measure it on a data set's test split."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from reuse_analysis.checkpoint import load_checkpoint
from reuse_analysis.data import DataError, load_dataset
from reuse_analysis.errors import ReuseAnalysisError
from reuse_analysis.runtime import eval_subset, evaluate, pick_device


def rebuild_model(checkpoint: Any):
    """The nn.Module a checkpoint describes, with its weights loaded (strict)."""
    from reuse_analysis.models import model_from_config

    if checkpoint.config is None:
        raise ReuseAnalysisError(
            f"{checkpoint.path} records no model config, so the network cannot be rebuilt; "
            "evaluate needs a checkpoint written by `reuse-analysis train`"
        )
    try:
        model = model_from_config(checkpoint.config, arch=checkpoint.arch)
    except (ValueError, TypeError) as exc:
        raise ReuseAnalysisError(
            f"{checkpoint.path}: the recorded config does not describe "
            f"{checkpoint.arch or 'a DenseNet'} ({exc})"
        ) from None
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as exc:
        raise ReuseAnalysisError(
            f"{checkpoint.path}: weights do not fit the recorded config ({str(exc)[:200]})"
        ) from None
    return model


def check_model_fits_data(
    path: str | os.PathLike[str], config: Mapping[str, Any], name: str, ds: Any
) -> None:
    """Raise if the data set's images or labels cannot go through the recorded model."""
    channels, classes = config.get("in_channels"), config.get("num_classes")
    mismatch = None
    if channels is not None and channels != ds.in_channels:
        mismatch = f"{channels}-channel images", f"{ds.in_channels}-channel images"
    elif classes is not None and ds.num_classes > classes:
        mismatch = f"{classes} classes", f"{ds.num_classes} classes"
    if mismatch:
        built_for, has = mismatch
        raise ReuseAnalysisError(
            f"{path} was built for {built_for} but {name} has {has}; "
            "use the data set it was trained on (the default)"
        )


def recorded_data(
    path: str | os.PathLike[str],
    meta: Mapping[str, Any],
    dataset: str | None,
    data_dir: str | os.PathLike[str],
    config: Mapping[str, Any] | None = None,
) -> Any:
    """The data set named (default: the one the checkpoint records), standardised with the
    statistics the model was trained with when the checkpoint records them, and checked
    against the model's input channels and classes (``config``)."""
    recorded = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    name = dataset or recorded.get("name")
    if name is None:
        raise ReuseAnalysisError(f"{path} records no data set; pass --dataset NAME")
    try:
        ds = load_dataset(name, data_dir)
    except DataError as exc:
        if dataset is not None:
            raise
        raise DataError(
            f"{exc} (the data set recorded in {path}); pass --dataset NAME where it is"
        ) from None
    if recorded.get("mean") and len(recorded["mean"]) == ds.in_channels:
        # The model was trained on inputs standardised with these statistics.
        ds.mean, ds.std = tuple(recorded["mean"]), tuple(recorded["std"])
    if config is not None:
        check_model_fits_data(path, config, name, ds)
    return ds


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    data_dir: str = "data",
    batch_size: int = 256,
    limit: int | None = None,
    device: str = "auto",
    trust_pickle: bool = False,
    checkpoint: Any = None,
) -> dict[str, Any]:
    """Top-1 accuracy and mean loss of a checkpoint; the data set defaults to the recorded one.

    ``checkpoint``: the file already loaded (``load_checkpoint(path)``), so it is read once."""
    ckpt = checkpoint or load_checkpoint(path, trust_pickle=trust_pickle)
    model = rebuild_model(ckpt)
    ds = recorded_data(path, ckpt.meta, dataset, data_dir, ckpt.config)
    if ds.test is None:
        raise ReuseAnalysisError(f"{ds.name}: no in-memory test split to evaluate on")
    test = eval_subset(ds.test, limit)
    dev = pick_device(device)
    loss, acc = evaluate(model.to(dev), test, ds, dev, batch_size=batch_size, progress=True)
    return {
        "model": str(path),
        "dataset": ds.name,
        "images": len(test),
        "accuracy": acc,
        "loss": loss,
    }
